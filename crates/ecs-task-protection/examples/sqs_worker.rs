//! An SQS worker with a job handler written in Rust: the task stays protected from scale-in
//! while a job is in hand, and each message's fate follows what the handler answers.
//!
//! ```sh
//! moto_server -p 4566 &      # or any SQS: a real queue with your usual AWS credentials
//! export AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 \
//!        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
//! export QUEUE_URL=$(cargo run -q --bin queue-consumer -- create-queue jobs)
//! SEND_JOBS=3 cargo run -p ecs-task-protection --example sqs_worker --features sqs   # Ctrl-C to stop
//! ```
//!
//! The handler is a closure: a body `later` asks for a retry in 5 s, an empty body fails (SQS
//! delivers it again after a back-off until the queue's redrive policy moves it to the
//! dead-letter queue), and anything else is "resized" in half a second and done (deleted). It
//! stops early when the worker cancels it (shutdown, drain deadline, timeout). `SEND_JOBS=N`
//! first puts N jobs on the queue. Outside ECS the in-process local backend stands in for ECS;
//! inside an ECS task (where the agent sets `ECS_AGENT_URI`) the real task is protected.

use std::sync::Arc;
use std::time::Duration;

use ecs_task_protection::ecs::{self, agent::AgentBackend};
use ecs_task_protection::protection::{local::LocalBackend, ProtectionBackend, ProtectionManager};
use ecs_task_protection::worker::{
    send_jobs, Job, Outcome, Worker, WorkerSettings, PROTECTION_DEFAULTS,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let queue_url = std::env::var("QUEUE_URL").map_err(|_| "set QUEUE_URL to the queue's URL")?;
    let backend: Arc<dyn ProtectionBackend> = match std::env::var("ECS_AGENT_URI") {
        Ok(uri) => Arc::new(AgentBackend::new(&uri, Duration::from_secs(5))?),
        Err(_) => Arc::new(LocalBackend::new()),
    };
    let manager = ProtectionManager::start(backend, PROTECTION_DEFAULTS)?;
    let sdk_config = ecs::aws_config().await;

    if let Some(n) = std::env::var("SEND_JOBS").ok().and_then(|n| n.parse().ok()) {
        let bodies: Vec<String> = (1..=n).map(|i| format!("cat-{i}.png")).collect();
        let ids = send_jobs(&sdk_config, &queue_url, None, &bodies).await?;
        println!("sent {} jobs", ids.len());
    }

    let handler = |job: Job| async move {
        match job.body() {
            "" => Outcome::Failed("an empty body names no image".into()),
            "later" => Outcome::RetryAfter(Duration::from_secs(5)),
            image => {
                println!(
                    "{} - resizing {image} (receive {})",
                    job.message_id(),
                    job.receive_count()
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => Outcome::Done,
                    reason = job.cancelled() => Outcome::Failed(format!("stopped: {reason:?}")),
                }
            }
        }
    };
    let worker = Worker::builder(&sdk_config, &queue_url)
        .handler(handler)
        .settings(
            WorkerSettings::DEFAULT
                .with_concurrency(2)
                .with_job_timeout(Some(Duration::from_secs(60))),
        )
        .build(manager)?;
    worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    let status = worker.status();
    println!(
        "done {}, failed {}, retried {}, returned {}",
        status.done, status.failed, status.retried, status.returned
    );
    Ok(())
}
