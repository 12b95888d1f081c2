//! The `storm` mode: N clients connect at once, then all close; the protect/release calls.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use super::{round, wait_until};
use crate::client::{client_config, close_all, collect_clients, connect, spawn_client};
use crate::procfs::listen_overflows;
use crate::target::Target;
use crate::Common;

pub(super) async fn storm(common: &Common, target: &Target, n: usize) -> Result<Value, String> {
    let before = target.puts().await.map(|p| p.len()).unwrap_or(0);
    // Every client waits at the gate, connected to nothing, then all connect at once.
    let gate = Arc::new(tokio::sync::Notify::new());
    let config = client_config(common);
    let mut set = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
    for _ in 0..n {
        let gate = Arc::clone(&gate);
        let url = target.ws_url.clone();
        let addr = target.addr;
        let ready = ready_tx.clone();
        set.spawn(async move {
            let opened = gate.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let _ = ready.send(()).await;
            opened.await;
            Some(
                connect(addr, &url, config)
                    .await
                    .map(|(ws, _)| spawn_client(ws)),
            )
        });
    }
    drop(ready_tx);
    for _ in 0..n {
        let _ = ready_rx.recv().await;
    }
    let overflows_before = listen_overflows();
    let started = Instant::now();
    gate.notify_waiters();
    let (clients, failures, reasons) = collect_clients(set).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let overflows = match (overflows_before, listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    println!(
        "storm: {} of {n} connected in {connect_secs:.2} s, {failures} failed {reasons:?}; accept-queue overflows {overflows:?}",
        clients.len()
    );
    let protected = wait_until(Duration::from_secs(30), || async {
        target.agent_protected().await == Some(true)
    })
    .await
    .is_some();
    let status_connections = target.connections().await;
    // All close at once.
    let close_started = Instant::now();
    let clean = close_all(clients).await;
    let all_gone = target
        .wait_status(Duration::from_secs(30), |s| {
            s["connections"].as_u64() == Some(0)
        })
        .await;
    let released_ms = wait_until(Duration::from_secs(30), || async {
        target.agent_protected().await == Some(false)
    })
    .await
    .map(|_| close_started.elapsed().as_millis() as u64);
    // Any late, extra call would show here.
    sleep(Duration::from_secs(2)).await;
    let puts = target.puts_since(before).await;
    let protect_calls = puts.iter().filter(|c| c.enabled == Some(true)).count();
    let release_calls = puts.iter().filter(|c| c.enabled == Some(false)).count();
    let final_protected = target.agent_protected().await;
    println!(
        "storm: protect calls {protect_calls}, release calls {release_calls}; protected once all were in: {protected}, released {released_ms:?} ms after the closes began; final protected {final_protected:?}"
    );
    Ok(json!({
        "mode": "storm",
        "clients": n,
        "connected": n - failures,
        "connect_failures": failures,
        "failure_reasons": reasons,
        "connect_secs": round(connect_secs, 3),
        "status_connections": status_connections,
        "listen_overflows": overflows,
        "closed_cleanly": clean,
        "all_gone_ms": all_gone.map(|d| d.as_millis() as u64),
        "protect_calls": protect_calls,
        "release_calls": release_calls,
        "put_calls": puts.len(),
        "protected_with_all_connected": protected,
        "released_ms_after_close_start": released_ms,
        "final_protected": final_protected,
        "agent_delay_ms": common.agent_delay_ms,
    }))
}
