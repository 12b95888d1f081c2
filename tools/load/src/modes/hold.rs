//! The `hold` mode: N idle connections; server RSS per connection, and how many still answer a ping.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use super::{percentile, round};
use crate::client::{open_clients, ping_all};
use crate::procfs::{proc_status_kb, soft_fd_limit};
use crate::target::Target;
use crate::Common;

pub(super) async fn hold(
    common: &Common,
    target: &Target,
    n: usize,
    settle_secs: u64,
) -> Result<Value, String> {
    let own_limit = soft_fd_limit(None).unwrap_or(0);
    let server_limit = target.pid.and_then(|p| soft_fd_limit(Some(p)));
    println!("hold: {n} clients; fd limit here {own_limit}, server {server_limit:?}");
    if own_limit > 0 && (n as u64) + 64 > own_limit {
        println!("warning: {n} connections need more file descriptors than this tool's limit {own_limit} (raise it with `ulimit -n`)");
    }
    sleep(Duration::from_secs(1)).await;
    let pid = target.pid;
    let rss_before = proc_status_kb(pid, "VmRSS");
    let anon_before = proc_status_kb(pid, "RssAnon");
    let started = Instant::now();
    let (clients, failures, reasons) =
        open_clients(target, common, n, common.connect_concurrency).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let held = clients.len();
    println!("hold: {held} welcomed, {failures} failed in {connect_secs:.1} s {reasons:?}");
    let status_connections = match target
        .wait_status(Duration::from_secs(10), |s| {
            s["connections"].as_u64() == Some(held as u64)
        })
        .await
    {
        Some(_) => Some(held as u64),
        None => target.connections().await,
    };
    sleep(Duration::from_secs(settle_secs)).await;
    let rss_after = proc_status_kb(pid, "VmRSS");
    let anon_after = proc_status_kb(pid, "RssAnon");
    let per_conn = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if held > 0 => {
            Some(round((a as f64 - b as f64) * 1024.0 / held as f64, 0))
        }
        _ => None,
    };
    let bytes_per_conn = per_conn(rss_after, rss_before);
    println!(
        "hold: server VmRSS {rss_before:?} kB before, {rss_after:?} kB with {held} connections: {bytes_per_conn:?} bytes per connection (RssAnon {:?})",
        per_conn(anon_after, anon_before)
    );
    let t = Instant::now();
    let (answered, mut lat) = ping_all(&clients).await;
    lat.sort_unstable();
    println!(
        "hold: {answered} of {held} answered a ping in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    sleep(Duration::from_secs(1)).await;
    let rss_after_ping = proc_status_kb(pid, "VmRSS");
    let still = target.connections().await;
    let load_rss = proc_status_kb(None, "VmRSS");
    let threads = proc_status_kb(pid, "Threads");
    // Drop every client at once (no close handshake: the quickest way to end 19,000).
    for c in &clients {
        c.task.abort();
    }
    drop(clients);
    let gone = target
        .wait_status(Duration::from_secs(30), |s| {
            s["connections"].as_u64() == Some(0)
        })
        .await;
    sleep(Duration::from_secs(1)).await;
    let rss_after_close = proc_status_kb(pid, "VmRSS");
    println!("hold: all dropped ({gone:?}); server VmRSS {rss_after_close:?} kB after");
    Ok(json!({
        "mode": "hold",
        "clients": n,
        "held": held,
        "connect_failures": failures,
        "failure_reasons": reasons,
        "connect_secs": round(connect_secs, 2),
        "status_connections": status_connections,
        "answered_ping": answered,
        "connections_after_ping": still,
        "ping_all_p99_ms": percentile(&lat, 99.0),
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_after_ping_kb": rss_after_ping,
        "rss_after_close_kb": rss_after_close,
        "bytes_per_conn": bytes_per_conn,
        "anon_bytes_per_conn": per_conn(anon_after, anon_before),
        "bytes_per_conn_after_ping": per_conn(rss_after_ping, rss_before),
        "server_threads": threads,
        "server_fd_limit": server_limit,
        "load_tool_rss_kb": load_rss,
    }))
}
