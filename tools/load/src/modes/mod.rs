//! The modes: the dispatch from the command line to each mode, and the helpers they share.

pub(crate) mod backplane;
mod churn;
mod hold;
mod jobs;
mod outage;
mod pingpong;
mod storm;

use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use crate::target::Target;
use crate::{Common, Mode};

use churn::churn;
use hold::hold;
pub(crate) use jobs::jobs;
use outage::outage;
use pingpong::pingpong;
use storm::storm;

pub(crate) async fn run_mode(
    mode: &Mode,
    common: &Common,
    target: &Target,
) -> Result<Value, String> {
    match mode {
        Mode::Summarize { .. } | Mode::Backplane(_) => {
            Err("this mode runs no single-server load".into())
        }
        Mode::Jobs(args) => jobs(args, common).await,
        &Mode::Hold {
            clients,
            settle_secs,
            ..
        } => hold(common, target, clients, settle_secs).await,
        &Mode::Storm { clients, .. } => storm(common, target, clients).await,
        &Mode::Churn { cycles, .. } => churn(common, target, cycles).await,
        &Mode::Pingpong {
            clients,
            seconds,
            warmup_secs,
            ..
        } => pingpong(common, target, clients, seconds, warmup_secs).await,
        &Mode::Outage {
            clients,
            seconds,
            recovery_timeout_secs,
            ..
        } => outage(common, target, clients, seconds, recovery_timeout_secs).await,
    }
}

async fn wait_until<F, Fut>(limit: Duration, cond: F) -> Option<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(20)).await;
    }
    None
}

fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(f64::from(sorted[rank.min(sorted.len()) - 1]) / 1000.0)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
