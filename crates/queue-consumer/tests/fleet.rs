//! The queue consumer as a service of real processes on the stand-in ECS's fleet, against moto's
//! SQS server: what a deployment does to workers with a job in hand.
//!
//! The rule: an old worker stops receiving at once, finishes the job it has (within the drain
//! deadline), lets its protection go as the job ends, and ECS then stops it; the new workers take
//! the rest of the queue. No job is lost, none runs twice.

#![cfg(unix)]

mod support;

use std::time::{Duration, Instant};

use ecs_stand_in::{Fleet, FleetConfig, LastStatus, TaskKind};
use support::moto::Moto;

/// The longest a condition may take to come true on a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);

/// Waits until `f` holds, at most [`LIMIT`]; fails naming `what` (with the fleet's output).
async fn until(fleet: &Fleet, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > LIMIT {
            let output = fleet.output();
            let skip = output.len().saturating_sub(120);
            panic!(
                "timed out waiting for: {what}\n--- fleet output ---\n{}",
                output[skip..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines task `id` printed (the fleet tags each with the task ID's first 8 digits).
fn lines_of(fleet: &Fleet, id: &str) -> Vec<String> {
    let tag = format!("[{}]", &id[..8.min(id.len())]);
    fleet
        .output()
        .into_iter()
        .filter(|l| l.starts_with(&tag))
        .collect()
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_lets_the_old_workers_job_finish_takes_no_new_one_and_stops_it_unprotected() {
    let Some(moto) = Moto::start("fleet_deployment").await else {
        return;
    };
    let (queue, _) = moto.queue("fleet-jobs", 60, None).await;
    let mut config = FleetConfig::new(env!("CARGO_BIN_EXE_queue-consumer"), 1)
        .env("QUEUE_URL", queue.clone())
        .env("AWS_ENDPOINT_URL_SQS", moto.endpoint())
        // moto keeps queues per Region: the test made this one in us-east-1, and the fleet's
        // tasks run in eu-west-1.
        .env("QUEUE_REGION", "us-east-1")
        .env("WORKER_CONCURRENCY", "1")
        .env("RECEIVE_WAIT_SECS", "1")
        .env("DRAIN_WATCH_INTERVAL_SECS", "1")
        .env("DRAIN_DEADLINE_SECS", "60")
        .env("RUST_LOG", "info");
    config.kind = TaskKind::Worker;
    config.deregistration_delay = Duration::from_secs(1);
    config.stop_timeout = Duration::from_secs(20);
    config.tick = Duration::from_millis(300);
    let fleet = Fleet::start(config).await.expect("the fleet starts");
    until(&fleet, "the worker runs", || {
        fleet.tasks_in(LastStatus::Running).len() == 1
    })
    .await;
    let old = fleet.tasks_in(LastStatus::Running)[0].id.clone();

    // A long job in the old worker's hands, and more waiting.
    moto.send(&queue, "4000").await;
    until(&fleet, "the old worker works on the long job", || {
        count(&lines_of(&fleet, &old), "- Working for 4000") == 1
    })
    .await;
    until(&fleet, "the old worker is protected", || {
        fleet
            .ecs()
            .task(&old)
            .is_some_and(|t| t.protected_until.is_some())
    })
    .await;
    for _ in 0..3 {
        moto.send(&queue, "100").await;
    }

    let deployment = fleet.deploy();
    until(&fleet, "the old worker drains", || {
        count(&lines_of(&fleet, &old), "Draining: deployment in progress") == 1
    })
    .await;
    until(&fleet, "the old worker is stopped", || {
        fleet
            .ecs()
            .task(&old)
            .is_some_and(|t| t.last_status == LastStatus::Stopped)
    })
    .await;
    let lines = lines_of(&fleet, &old);
    let drained = lines
        .iter()
        .position(|l| l.contains("Draining: deployment in progress"))
        .expect("drained");
    let done = lines
        .iter()
        .position(|l| l.contains("- Done"))
        .unwrap_or_else(|| {
            panic!(
                "the long job finished on the old worker:\n{}",
                lines.join("\n")
            )
        });
    assert!(
        drained < done,
        "the job in hand finished after the drain began"
    );
    assert_eq!(
        count(&lines, "- Working for"),
        1,
        "the draining worker took no new job:\n{}",
        lines.join("\n")
    );
    assert_eq!(count(&lines, "Returned to the queue"), 0);
    assert_eq!(count(&lines, "Task protection released"), 1);
    let released = lines
        .iter()
        .position(|l| l.contains("Task protection released"))
        .expect("released");
    assert!(
        done < released,
        "protection went as the job ended:\n{}",
        lines.join("\n")
    );

    // The new worker takes the rest; nothing is left or run twice.
    until(&fleet, "the queue empties", || {
        fleet
            .tasks_in(LastStatus::Running)
            .iter()
            .map(|t| count(&lines_of(&fleet, &t.id), "- Done"))
            .sum::<usize>()
            == 3
    })
    .await;
    let running = fleet.tasks_in(LastStatus::Running);
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].started_by.as_deref(), Some(deployment.as_str()));
    let start = Instant::now();
    while moto.depth(&queue).await != (0, 0) {
        assert!(
            start.elapsed() < LIMIT,
            "messages left: {:?}",
            moto.depth(&queue).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.shutdown().await;
}
