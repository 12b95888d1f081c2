//! The `pingpong` mode: C clients in closed loop for T seconds; round-trip latency and CPU cost.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::{sleep, sleep_until, Instant};

use super::{percentile, round};
use crate::client::{close_all, open_clients, Cmd};
use crate::procfs::{clock_ticks_per_sec, cpu_ticks, machine_ticks};
use crate::target::Target;
use crate::Common;

pub(super) async fn pingpong(
    common: &Common,
    target: &Target,
    n: usize,
    seconds: u64,
    warmup_secs: u64,
) -> Result<Value, String> {
    let (clients, failures, reasons) =
        open_clients(target, common, n, common.connect_concurrency).await;
    println!(
        "pingpong: {} of {n} connected, {failures} failed {reasons:?}",
        clients.len()
    );
    sleep(Duration::from_millis(500)).await;
    let begin = Instant::now() + Duration::from_millis(100);
    let measure_from = begin + Duration::from_secs(warmup_secs);
    let end = measure_from + Duration::from_secs(seconds);
    let mut replies = Vec::with_capacity(clients.len());
    for c in &clients {
        let (reply, rx) = oneshot::channel();
        if c.tx
            .send(Cmd::Loop {
                measure_from,
                end,
                reply,
            })
            .await
            .is_ok()
        {
            replies.push(rx);
        }
    }
    sleep_until(measure_from).await;
    let (cpu0, own0, all0, t0) = (
        cpu_ticks(target.pid),
        cpu_ticks(None),
        machine_ticks(),
        Instant::now(),
    );
    sleep_until(end).await;
    let (cpu1, own1, all1, wall) = (
        cpu_ticks(target.pid),
        cpu_ticks(None),
        machine_ticks(),
        t0.elapsed().as_secs_f64(),
    );
    let mut lat = Vec::new();
    let mut errors = 0u32;
    // Round trips per client: how evenly the server served them.
    let mut per_client = Vec::with_capacity(n);
    for r in futures_util::future::join_all(replies).await {
        match r {
            Ok((l, e)) => {
                per_client.push(l.len() as u64);
                lat.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    lat.sort_unstable();
    let round_trips = lat.len() as u64;
    let per_sec = round_trips as f64 / wall;
    let tick_us = 1e6 / clock_ticks_per_sec() as f64;
    let per_rt = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if round_trips > 0 => {
            Some(round((b - a) as f64 * tick_us / round_trips as f64, 2))
        }
        _ => None,
    };
    let server_cpu_us = per_rt(cpu0, cpu1);
    let server_cores = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(round((b - a) as f64 * tick_us / 1e6 / wall, 2)),
        _ => None,
    };
    let load_cpu_us = per_rt(own0, own1);
    // Everything else the machine ran meanwhile (other builds and tests), and the hypervisor's
    // steal: the noise in these figures.
    let cores = |ticks: u64| round(ticks as f64 * tick_us / 1e6 / wall, 2);
    let (other_cores, steal_cores) = match (all0, all1, cpu0, cpu1, own0, own1) {
        (Some(a), Some(b), Some(s0), Some(s1), Some(o0), Some(o1)) => (
            Some(cores((b.0 - a.0).saturating_sub((s1 - s0) + (o1 - o0)))),
            Some(cores(b.1 - a.1)),
        ),
        _ => (None, None),
    };
    let (p50, p90, p99) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    );
    let max = lat.last().map(|m| f64::from(*m) / 1000.0);
    println!(
        "pingpong: {round_trips} round trips in {wall:.1} s = {per_sec:.0}/s; p50 {p50:?} ms, p90 {p90:?} ms, p99 {p99:?} ms, max {max:?} ms; server CPU {server_cpu_us:?} µs per round trip ({server_cores:?} cores), this tool {load_cpu_us:?} µs; {errors} errors"
    );
    let still = target.connections().await;
    close_all(clients).await;
    Ok(json!({
        "mode": "pingpong",
        "clients": n,
        "connected": n - failures,
        "seconds": round(wall, 2),
        "round_trips": round_trips,
        "rt_per_sec": round(per_sec, 0),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max,
        "server_cpu_us_per_rt": server_cpu_us,
        "server_cpu_cores": server_cores,
        "load_cpu_us_per_rt": load_cpu_us,
        "other_cpu_cores": other_cores,
        "steal_cpu_cores": steal_cores,
        "errors": errors,
        "rt_per_client_min": per_client.iter().min(),
        "rt_per_client_max": per_client.iter().max(),
        "connections_at_end": still,
        "load_threads": common.threads,
    }))
}
