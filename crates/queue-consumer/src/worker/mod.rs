//! The queue consumer's side of the library's worker ([`ecs_task_protection::worker`], which
//! takes the jobs, runs a handler for each, keeps the messages hidden, deletes them, drains and
//! shuts down): what is this application's own.
//!
//! * `demo`: [`DemoJob`], the sample's job (a number of milliseconds of simulated work), the
//!   handler the worker runs by default;
//! * `status`: `/healthz` and `/status`; [`metrics`]: the worker's numbers as metric samples;
//!   [`on_sigusr1`]: an operator's drain;
//! * `sqs`: the SQS calls of the `create-queue` command, and the shape of a queue URL and of a
//!   Region, checked at start-up.

mod demo;
mod sqs;
mod status;

use app_support::drain_signal::DrainSignal;
use app_support::metrics::{self, Sample};

pub use demo::DemoJob;
pub use ecs_task_protection::worker::{
    send_jobs, DrainKind, Worker, WorkerSettings, PROTECTION_DEFAULTS,
};
pub use sqs::create as create_queue;
pub use status::serve_status;

pub(crate) use sqs::{check_queue_url, check_region};

/// The worker's numbers for [`app_support::metrics`]: `JobsInHand`, `JobsDone`, `JobsFailed`
/// (jobs that failed or timed out, and messages that are not jobs: all left on the queue for a
/// retry, then its dead-letter queue), `JobsReturned` (handed back unfinished: shutdown, drain),
/// and the protection manager's (`Draining` among them).
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
            "JobsDone",
            "jobs_done",
            "Jobs done and deleted",
            status.done,
        ),
        Sample::counter(
            "JobsFailed",
            "jobs_failed",
            "Jobs that failed or timed out, and messages that are not jobs (left for a retry, then the dead-letter queue)",
            status.failed + status.timed_out + status.invalid,
        ),
        Sample::counter(
            "JobsReturned",
            "jobs_returned",
            "Messages handed back to the queue unfinished (shutdown, drain deadline)",
            status.returned,
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
    tokio::spawn(async move {
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
