//! The `outage` mode: the agent answers HTTP 500 for a window, then recovers; calls, notices, recovery.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ecs_stand_in::Fault;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};

use super::wait_until;
use crate::client::{close_all, open_clients, ping_all};
use crate::target::Target;
use crate::Common;

pub(super) async fn outage(
    common: &Common,
    target: &Target,
    n: usize,
    seconds: u64,
    recovery_limit: u64,
) -> Result<Value, String> {
    let agent = target
        .agent
        .as_ref()
        .ok_or("outage needs the spawned server: the stand-in agent must be in this process to inject the fault")?;
    let before = agent.put_calls().len();
    agent.set_fault(Fault::ServerError);
    let window_start = Instant::now();
    let (clients, failures, reasons) =
        open_clients(target, common, n, common.connect_concurrency).await;
    println!("outage: agent answers 500; {} of {n} clients connected, {failures} failed {reasons:?}; waiting {seconds} s", clients.len());
    sleep_until(window_start + Duration::from_secs(seconds)).await;
    let window: Vec<_> = agent.put_calls().into_iter().skip(before).collect();
    let put_calls = window.len();
    let ok_in_window = window.iter().filter(|c| c.ok).count();
    let notices: Vec<u32> = clients
        .iter()
        .map(|c| c.state.notices.load(Ordering::Relaxed))
        .collect();
    let notices_max = notices.iter().copied().max().unwrap_or(0);
    let notices_min = notices.iter().copied().min().unwrap_or(0);
    let connected_in_window = clients
        .iter()
        .filter(|c| !c.state.closed.load(Ordering::Acquire))
        .count();
    println!("outage: {put_calls} PUT calls in {seconds} s ({ok_in_window} succeeded); notices per client {notices_min}..={notices_max}");
    // The agent recovers.
    agent.set_fault(Fault::None);
    let recovered_at = Instant::now();
    let recovered = wait_until(Duration::from_secs(recovery_limit), || async {
        agent.is_protected()
    })
    .await;
    let recovery_ms = recovered.map(|_| recovered_at.elapsed().as_millis() as u64);
    let (pongs, _) = ping_all(&clients).await;
    let notices_after: Vec<u32> = clients
        .iter()
        .map(|c| c.state.notices.load(Ordering::Relaxed))
        .collect();
    println!(
        "outage: protection re-established {recovery_ms:?} ms after the agent recovered; {pongs} of {} clients answered a ping",
        clients.len()
    );
    close_all(clients).await;
    Ok(json!({
        "mode": "outage",
        "clients": n,
        "connected": n - failures,
        "connected_through_window": connected_in_window,
        "seconds": seconds,
        "put_calls_in_window": put_calls,
        "ok_calls_in_window": ok_in_window,
        "notices_max_per_client": notices_max,
        "notices_min_per_client": notices_min,
        "notices_max_after_recovery": notices_after.iter().copied().max().unwrap_or(0),
        "recovered": recovered.is_some(),
        "recovery_ms": recovery_ms,
        "pongs_after": pongs,
        "put_calls_total": agent.put_calls().len() - before,
    }))
}
