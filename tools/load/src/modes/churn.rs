//! The `churn` mode: one client at a time, K times; the PUT calls and the state after the hold-over.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use super::round;
use crate::client::{client_config, connect};
use crate::target::Target;
use crate::Common;

pub(super) async fn churn(
    common: &Common,
    target: &Target,
    cycles: usize,
) -> Result<Value, String> {
    let before = target.puts().await.map(|p| p.len()).unwrap_or(0);
    let config = client_config(common);
    let started = Instant::now();
    let mut completed = 0;
    let mut failures = Vec::new();
    for _ in 0..cycles {
        match connect(target.addr, &target.ws_url, config).await {
            Ok((mut ws, _)) => {
                let _ = timeout(Duration::from_secs(5), async {
                    ws.close(None).await.ok()?;
                    while let Some(Ok(_)) = ws.next().await {}
                    Some(())
                })
                .await;
                completed += 1;
            }
            Err(e) => {
                if failures.len() < 5 {
                    failures.push(e);
                }
            }
        }
    }
    let churn_secs = started.elapsed().as_secs_f64();
    let last_close = Instant::now();
    println!("churn: {completed} of {cycles} cycles in {churn_secs:.2} s; waiting for the hold-over to end");
    let puts_during = target.puts().await.map(|p| p.len().saturating_sub(before));
    // The hold-over is 10 % of the duration (6 s with the spawned server's 1-minute duration).
    let unprotected = target
        .wait_status(Duration::from_secs(60), |s| {
            s["connections"].as_u64() == Some(0)
                && s["protection"]["wanted"] == json!(false)
                && s["protection"]["state"] == json!("unprotected")
        })
        .await;
    let released_after = unprotected.map(|_| last_close.elapsed().as_secs_f64());
    sleep(Duration::from_secs(1)).await;
    let puts = target.puts_since(before).await;
    let status = target.status().await.ok();
    let final_state = status.as_ref().map(|s| s["protection"]["state"].clone());
    let final_protected = target.agent_protected().await;
    println!(
        "churn: {} PUT calls ({} during the cycles), final state {final_state:?}, agent protected {final_protected:?}, released {released_after:?} s after the last close",
        puts.len(),
        puts_during.unwrap_or(0)
    );
    Ok(json!({
        "mode": "churn",
        "cycles": cycles,
        "completed": completed,
        "failure_reasons": failures,
        "churn_secs": round(churn_secs, 2),
        "put_calls": puts.len(),
        "put_calls_during_cycles": puts_during,
        "protect_calls": puts.iter().filter(|c| c.enabled == Some(true)).count(),
        "release_calls": puts.iter().filter(|c| c.enabled == Some(false)).count(),
        "final_state": final_state,
        "final_protected": final_protected,
        "final_right": final_protected == Some(false) && final_state == Some(json!("unprotected")),
        "released_secs_after_last_close": released_after.map(|s| round(s, 2)),
    }))
}
