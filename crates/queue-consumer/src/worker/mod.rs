//! The queue consumer's side of the library's worker ([`ecs_task_protection::worker`], which
//! takes the jobs, runs a handler for each, keeps the messages hidden, deletes them, drains and
//! shuts down): what is this application's own.
//!
//! * `demo`: [`DemoJob`], the sample's job (a number of milliseconds of simulated work), the
//!   handler the worker runs by default;
//! * `status`: `/healthz` and `/status`; [`metrics`]: the worker's numbers as metric samples;
//!   [`on_sigusr1`]: an operator's drain;
//! * `sqs`: the SQS calls of the `create-queue` command, the queue's check at start-up
//!   ([`check_queue`]), and the shape of a queue URL and of a Region, checked at start-up.

mod demo;
mod sqs;
mod status;

use app_support::drain_signal::DrainSignal;
use app_support::metrics::{self, Sample};

pub use demo::DemoJob;
pub use ecs_task_protection::worker::is_fifo;
pub use ecs_task_protection::worker::{
    send_jobs, send_jobs_in_group, DrainKind, Worker, WorkerSettings, PROTECTION_DEFAULTS,
};
pub use sqs::{check_queue, create as create_queue, NewQueue};
pub use status::serve_status;

pub(crate) use sqs::{check_queue_url, check_region};

/// The worker's numbers for [`app_support::metrics`], counted as [`WorkerStatus`] counts them:
/// messages, not receives (a message delivered 3 times is received once and redelivered twice,
/// and its outcome counts once). `JobsInHand` (a gauge: the CDK app counts the tasks by its
/// samples), `MessagesReceived`, `MessagesRedelivered`, the outcomes (`JobsDone`, `JobsFailed`,
/// `JobsRetried`, `JobsTimedOut`, `JobsInvalid`, `JobsReturned`), the errors (`ReceiveErrors`,
/// `DeleteErrors`), the durations (`JobDuration`, `MessageAge`: summaries), and the protection
/// manager's (`Draining` among them).
///
/// [`WorkerStatus`]: ecs_task_protection::worker::WorkerStatus
pub fn metrics(worker: &Worker) -> Vec<Sample> {
    let status = worker.status();
    let mut samples = vec![
        Sample::gauge(
            "JobsInHand",
            "jobs_in_hand",
            "Messages in hand: waiting for protection, running, or being deleted",
            status.in_hand as f64,
        ),
        Sample::counter(
            "MessagesReceived",
            "messages_received",
            "Messages received for the first time",
            status.received,
        ),
        Sample::counter(
            "MessagesRedelivered",
            "messages_redelivered",
            "Deliveries of messages delivered before (retries, returns, lapsed visibility)",
            status.redelivered,
        ),
        Sample::counter(
            "JobsDone",
            "jobs_done",
            "Jobs done and deleted",
            status.done,
        ),
        Sample::counter(
            "JobsFailed",
            "jobs_failed",
            "Messages whose job failed (or panicked) on their first delivery: retried after a back-off, then the dead-letter queue",
            status.failed,
        ),
        Sample::counter(
            "JobsRetried",
            "jobs_retried",
            "Messages whose job asked for a retry after a delay on their first delivery",
            status.retried,
        ),
        Sample::counter(
            "JobsTimedOut",
            "jobs_timed_out",
            "Messages whose job was cancelled at its timeout on their first delivery",
            status.timed_out,
        ),
        Sample::counter(
            "JobsInvalid",
            "jobs_invalid",
            "Messages that are not jobs (unreadable), on their first delivery: left for the dead-letter queue",
            status.invalid,
        ),
        Sample::counter(
            "JobsReturned",
            "jobs_returned",
            "Messages handed back to the queue unfinished on their first delivery (shutdown, drain deadline)",
            status.returned,
        ),
        Sample::counter(
            "ReceiveErrors",
            "receive_errors",
            "Receive calls that failed",
            status.receive_errors,
        ),
        Sample::counter(
            "DeleteErrors",
            "delete_errors",
            "Jobs done whose message could not be deleted (it is delivered again)",
            status.delete_failures,
        ),
        Sample::summary(
            "JobDuration",
            "job_duration_seconds",
            "How long jobs ran, in seconds",
            status.job_duration.sum_seconds,
            status.job_duration.count,
        ),
        Sample::summary(
            "MessageAge",
            "message_age_seconds",
            "How long messages waited in the queue before their first delivery, in seconds",
            status.message_age.sum_seconds,
            status.message_age.count,
        ),
    ];
    samples.extend(metrics::protection_samples(&status.protection));
    samples
}

/// Drains `worker` on SIGUSR1 (an operator's request, e.g. `queue-consumer drain` through
/// `copilot svc exec`). Not reversible.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn on_sigusr1(worker: &Worker, mut signal: DrainSignal) {
    let worker = worker.clone();
    ecs_task_protection::supervise::spawn_may_end("SIGUSR1 listener", async move {
        while signal.recv().await {
            worker.begin_drain("operator request (SIGUSR1)", DrainKind::Final);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use ecs_task_protection::protection::{local::LocalBackend, ProtectionManager};

    /// A worker that is never run (no SQS call is made), on the local backend.
    fn worker() -> Worker {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let manager =
            ProtectionManager::start(Arc::new(LocalBackend::new()), PROTECTION_DEFAULTS).unwrap();
        Worker::builder(&sdk, "http://127.0.0.1:1/123456789012/jobs")
            .region("us-east-1")
            .handler(DemoJob::new(Duration::from_secs(60)))
            .build(manager)
            .unwrap()
    }

    fn sample(worker: &Worker, name: &str) -> Option<f64> {
        metrics(worker)
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_worker_reports_draining_in_its_metrics() {
        let w = worker();
        assert_eq!(sample(&w, "Draining"), Some(0.0));
        w.begin_drain(
            "deployment in progress: the service is moving to deployment ecs-svc/2",
            DrainKind::Reversible,
        );
        assert_eq!(sample(&w, "Draining"), Some(1.0));
        assert_eq!(sample(&w, "JobsInHand"), Some(0.0));
        w.end_drain();
        assert_eq!(sample(&w, "Draining"), Some(0.0));
    }
}
