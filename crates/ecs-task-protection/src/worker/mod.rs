//! An SQS queue worker that keeps its task protected from scale-in while it has jobs in hand, and
//! not while it only waits for work (feature `sqs`).
//!
//! A [`Worker`] takes messages off one queue, runs a [`Handler`] for each (up to
//! [`WorkerSettings::concurrency`] at once), and does with the message what the handler's
//! [`Outcome`] says:
//!
//! * [`Outcome::Done`]: deleted (in batches of up to 10, transient errors retried);
//! * [`Outcome::RetryAfter`]: visible again after that delay (at most SQS's 12 hours);
//! * [`Outcome::Failed`], or a handler that panicked: logged with its message ID, not deleted,
//!   visible again after a back-off (2 s, 4 s, … up to 5 minutes, by receive count), until the
//!   queue's redrive policy moves it to the dead-letter queue. A panic never stops the worker.
//!
//! While a job is in hand, from its receipt until its delete is confirmed, it holds a
//! [`ProtectionGuard`], and keeps it 2 s longer (unless the worker is draining or stopping) so
//! that the next job of a busy period, received within a round trip, finds the task still
//! protected; the manager turns the guards into one protect call per busy period. Each job
//! waits for ECS to confirm protection, at most [`WorkerSettings::protection_wait`], before it
//! starts. Its message stays hidden from other workers while it runs: every third of the
//! visibility timeout, the worker extends the visibility of every message in hand.
//!
//! [`Job::cancelled`] resolves when a running job must stop: the shutdown timeout passed after
//! the shutdown signal ([`CancelReason::Shutdown`]), the drain deadline passed
//! ([`CancelReason::DrainDeadline`]), or the job's own timeout ([`CancelReason::Timeout`]). The
//! message then goes back to the queue whatever the handler answers: at once for the first two,
//! after the failure back-off for a timeout. The handler has
//! [`WorkerSettings::cancel_grace`] to return.
//!
//! On a FIFO queue (its URL ends `.fifo`), a message group's messages run one at a time, in
//! order, never overlapping: a message starts only once the previous one of its group was done
//! and deleted; when one is not (it failed, was retried, timed out or was returned), the rest of
//! its group in hand goes back to the queue unstarted, and SQS delivers the group again from
//! that message. Different groups run in parallel, up to the concurrency.
//!
//! The worker drains ([`Worker::follow_watcher`], [`Worker::begin_drain`]): it takes no new jobs,
//! lets the ones in hand finish, and releases protection as the last one ends.
//!
//! [`Worker::check_queue`] reads the queue's attributes before the first job: a queue that does
//! not exist, or that the task role may not read, is then an error at start-up rather than a
//! worker that looks healthy while every receive fails. While it runs, [`Worker::health`] turns
//! unhealthy once receives have failed for [`WorkerSettings::unhealthy_after`] (a minute), so
//! that ECS replaces a task that cannot take jobs. [`Worker::status`] counts messages, not
//! receives: a message delivered 3 times counts once (see [`WorkerStatus`]).
//!
//! # A handler
//!
//! An async function (or closure) of a [`Job`] is a handler; so is any type that implements
//! [`Handler`]. Calling it directly with [`Job::new`] is how to test it:
//!
//! ```
//! use std::time::Duration;
//! use ecs_task_protection::worker::{Handler, Job, Outcome};
//!
//! /// Resizes the image a message names; asks for a retry while the image is not there yet.
//! async fn resize(job: Job) -> Outcome {
//!     match job.body() {
//!         "" => Outcome::Failed("an empty body names no image".into()),
//!         name if name.ends_with(".partial") => Outcome::RetryAfter(Duration::from_secs(30)),
//!         _name => {
//!             tokio::select! {
//!                 _ = tokio::time::sleep(Duration::from_millis(10)) => Outcome::Done,
//!                 reason = job.cancelled() => Outcome::Failed(format!("cancelled: {reason:?}")),
//!             }
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! assert_eq!(resize.handle(Job::new("cat.png", "m-1")).await, Outcome::Done);
//! assert_eq!(
//!     resize.handle(Job::new("cat.png.partial", "m-2")).await,
//!     Outcome::RetryAfter(Duration::from_secs(30))
//! );
//! assert!(matches!(resize.handle(Job::new("", "m-3")).await, Outcome::Failed(_)));
//! # }
//! ```
//!
//! # A worker
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ecs_task_protection::ecs::{self, agent::AgentBackend};
//! use ecs_task_protection::protection::ProtectionManager;
//! use ecs_task_protection::worker::{Job, Outcome, Worker, WorkerSettings, PROTECTION_DEFAULTS};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = AgentBackend::new(&std::env::var("ECS_AGENT_URI")?, Duration::from_secs(5))?;
//! let manager = ProtectionManager::start(Arc::new(backend), PROTECTION_DEFAULTS)?;
//! let sdk_config = ecs::aws_config().await;
//! let worker = Worker::builder(&sdk_config, "https://sqs.us-east-1.amazonaws.com/123456789012/jobs")
//!     .settings(WorkerSettings::DEFAULT.with_concurrency(4))
//!     .handler(|job: Job| async move {
//!         println!("{}: {}", job.message_id(), job.body());
//!         Outcome::Done
//!     })
//!     .build(manager)?;
//! // To drain while ECS wants the task gone (a deployment, a scale-in), give it the drain
//! // watcher: worker.follow_watcher(ecs::drain_watch::spawn_drain_watch(&context, interval, None)).
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

mod drain;
mod groups;
mod handler;
mod health;
mod jobs;
mod leases;
mod queue;
mod settings;
mod stats;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::protection::{
    retry_delay, ProtectionManager, ProtectionStatus, Settings, SettingsError,
};
use drain::DrainState;
use groups::Groups;
use health::HealthView;
use leases::Leases;
use queue::{Queue, SQS_BATCH};
use stats::{Counters, Tally};

/// The attribute a [`Handler`] implementation needs (`#[async_trait] impl Handler for …`),
/// re-exported so that it need not be a dependency of its own.
pub use async_trait::async_trait;
pub use drain::DrainKind;
pub use handler::{CancelReason, Handler, Job, Outcome};
pub use health::Unhealthy;
pub use queue::{check_group_id, is_fifo, QueueInfo, SqsError};
pub use settings::{WorkerSettings, SQS_MAX_INVISIBLE};
pub use stats::Timing;

use crate::lock;
#[cfg(doc)]
use crate::protection::ProtectionGuard;

/// The protection settings a queue worker starts from: the Node.js sample's queue consumer
/// (protect for 1 minute, refresh at 80 %, and a 10 % hold-over: protection set less than 6 s
/// before the last job ends is kept until 6 s after it was set), so that an idle task becomes
/// eligible for scale-in within seconds of the queue running dry.
pub const PROTECTION_DEFAULTS: Settings = Settings::DEFAULT
    .with_duration_minutes(1)
    .with_maintain_percent(10)
    .with_refresh_percent(80);

/// A snapshot of the worker, for a status endpoint.
///
/// The outcome counts are of **messages, not receives**. SQS delivers a message again after a
/// failure, a retry, a return to the queue or a lapse of its visibility, and says how many times
/// it has (`ApproximateReceiveCount`). A message counts as received on its first delivery, and
/// its later deliveries as `redelivered`; it counts as `done` on whichever delivery its job
/// succeeds; any other outcome counts on its first delivery only (the outcome of its first
/// attempt). So 8 bad messages received 3 times each are `invalid: 8`, `received: 8`,
/// `redelivered: 16`. The rule rests on SQS's count, not on this worker's memory, so the counts
/// of every worker of a queue add up to each message once. Errors count events: each failed
/// receive call, each done job whose delete failed.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The queue's URL.
    pub queue: String,
    /// Whether it is a FIFO queue.
    pub fifo: bool,
    /// Jobs that may run at once.
    pub concurrency: usize,
    /// Messages in hand now: waiting for their turn or for protection, running, or being
    /// deleted.
    pub in_hand: usize,
    /// Messages received since start-up: first deliveries (receive count 1).
    pub received: u64,
    /// Deliveries of messages SQS had delivered before (receive count 2 or more): retries after
    /// a failure, a retry asked for, a return to the queue, a lapse of visibility.
    pub redelivered: u64,
    /// Messages done and deleted (on whichever delivery).
    pub done: u64,
    /// Messages the handler's [`check`](Handler::check) refused on their first delivery: not
    /// jobs (unreadable). Left on the queue for its dead-letter queue.
    pub invalid: u64,
    /// Messages whose job failed on their first delivery (the handler said so, or panicked):
    /// left on the queue, retried after a back-off.
    pub failed: u64,
    /// Messages whose handler asked for a retry after a delay on their first delivery.
    pub retried: u64,
    /// Messages whose job was cancelled at its timeout on their first delivery: left on the
    /// queue, retried after a back-off.
    pub timed_out: u64,
    /// Messages returned to the queue unfinished on their first delivery (shutdown, drain, an
    /// earlier message of their FIFO group not done).
    pub returned: u64,
    /// Jobs done whose message could not be deleted (it comes back: at-least-once delivery).
    pub delete_failures: u64,
    /// Receive calls that failed.
    pub receive_errors: u64,
    /// How long handlers ran: every run, cancelled ones included.
    pub job_duration: Timing,
    /// How long messages waited in the queue before their first delivery (from their
    /// `SentTimestamp`; 0 if this task's clock is behind SQS's).
    pub message_age: Timing,
    /// Whether [`Worker::health`] says the worker is sound.
    pub healthy: bool,
    /// Why not, when not: `shutting_down`, `deletes_failing`, `receives_failing`,
    /// `not_receiving`.
    pub unhealthy_reason: Option<Unhealthy>,
    /// The last receive error of the current streak, `None` once receiving works.
    pub last_receive_error: Option<String>,
    /// The permanent error deletes fail with (the queue is gone, the task role may not delete),
    /// `None` once a delete works; [`Worker::is_healthy`] is false meanwhile.
    pub last_delete_error: Option<String>,
    /// Whether the worker is shutting down.
    pub stopping: bool,
    /// Whether the worker is draining: taking no new jobs, letting the ones in hand finish.
    pub draining: bool,
    /// Why, the cause only (`deployment in progress`, `scale-in`, `operator request (SIGUSR1)`);
    /// the details are in the log.
    pub drain_reason: Option<String>,
    /// The protection manager's state.
    pub protection: ProtectionStatus,
}

/// What the receive loop, the jobs and the status share.
struct Shared {
    queue: Queue,
    handler: Arc<dyn Handler>,
    manager: ProtectionManager,
    settings: WorkerSettings,
    leases: Arc<Leases>,
    /// One permit per job that may run at once; a job gives its permit back when its work ends.
    slots: Arc<Semaphore>,
    /// Job tasks alive (from receive to the end of their delete or return).
    in_hand: watch::Sender<usize>,
    /// The shutdown signal came: no more receives; jobs that have not started go back to the
    /// queue.
    stopping: watch::Sender<bool>,
    /// The shutdown timeout passed: running jobs are cancelled and go back to the queue.
    abandon: watch::Sender<bool>,
    /// Draining: no receives; jobs that have not started go back to the queue; past the drain
    /// deadline, running jobs go back too.
    drain: watch::Sender<DrainState>,
    /// A FIFO queue's message groups in hand.
    groups: Groups,
    counters: Counters,
    /// When the receive loop last started a receive (for the health check).
    last_poll: Mutex<Instant>,
    last_receive_error: Mutex<Option<SqsError>>,
    /// When the current streak of failed receives began (for the health check); `None` once a
    /// receive works.
    failing_since: Mutex<Option<Instant>>,
}

/// An SQS queue worker built around a [`Handler`] (see the [module](self)). Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Why a worker could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No handler was given ([`WorkerBuilder::handler`]).
    #[error("no job handler: call WorkerBuilder::handler")]
    NoHandler,
    /// The queue URL is empty.
    #[error("no queue URL")]
    NoQueue,
    /// A setting is out of its range.
    #[error("invalid worker settings: {0}")]
    Settings(#[from] SettingsError),
}

/// Builds a [`Worker`]: [`Worker::builder`], then [`handler`](Self::handler) (required),
/// [`settings`](Self::settings) and [`region`](Self::region) (optional), then
/// [`build`](Self::build).
pub struct WorkerBuilder {
    sdk_config: SdkConfig,
    queue_url: String,
    region: Option<String>,
    handler: Option<Arc<dyn Handler>>,
    settings: WorkerSettings,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue_url", &self.queue_url)
            .field("region", &self.region)
            .field("handler", &self.handler.as_ref().map(|_| "…"))
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The queue's Region, when it is neither the one its URL names nor `sdk_config`'s.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// What runs each job: an async function or closure of a [`Job`], or a type that implements
    /// [`Handler`].
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Like [`handler`](Self::handler), for a handler chosen at run time (or shared).
    pub fn shared_handler(mut self, handler: Arc<dyn Handler>) -> Self {
        self.handler = Some(handler);
        self
    }

    /// How the worker takes and runs jobs ([`WorkerSettings::DEFAULT`] unless given).
    pub fn settings(mut self, settings: WorkerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Builds the worker, whose jobs hold protection through `manager`, and starts its
    /// background tasks (the visibility keeper, the deleter, the drain deadline); jobs are taken
    /// once [`Worker::run`] is called.
    ///
    /// # Errors
    ///
    /// No handler, an empty queue URL, or settings out of range ([`WorkerSettings::validate`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build(self, manager: ProtectionManager) -> Result<Worker, BuildError> {
        let handler = self.handler.ok_or(BuildError::NoHandler)?;
        if self.queue_url.trim().is_empty() {
            return Err(BuildError::NoQueue);
        }
        self.settings.validate()?;
        let settings = self.settings;
        let queue = Queue::new(
            &self.sdk_config,
            self.queue_url.trim(),
            self.region.as_deref(),
        );
        let abandon = watch::channel(false).0;
        let leases = Leases::start(
            queue.clone(),
            settings.visibility_timeout,
            settings.concurrency * 2,
            abandon.subscribe(),
        );
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            queue,
            handler,
            manager,
            settings,
            leases,
            in_hand: watch::channel(0).0,
            stopping: watch::channel(false).0,
            abandon,
            drain: watch::channel(DrainState::default()).0,
            groups: Groups::default(),
            counters: Counters::default(),
            last_poll: Mutex::new(Instant::now()),
            last_receive_error: Mutex::new(None),
            failing_since: Mutex::new(None),
        });
        if let Some(deadline) = shared.settings.drain_deadline {
            crate::supervise::spawn_may_end(
                "drain deadline",
                drain::enforce_deadline(Arc::downgrade(&shared), deadline),
            );
        }
        Ok(Worker { shared })
    }
}

impl Worker {
    /// Starts building a worker for the queue at `queue_url`, reached with `sdk_config`'s
    /// credentials and endpoint settings (`AWS_ENDPOINT_URL_SQS` and the like), in the Region the
    /// URL names, else `sdk_config`'s (unless [`WorkerBuilder::region`] says).
    pub fn builder(sdk_config: &SdkConfig, queue_url: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            sdk_config: sdk_config.clone(),
            queue_url: queue_url.into(),
            region: None,
            handler: None,
            settings: WorkerSettings::DEFAULT,
        }
    }

    /// The worker's state now.
    pub fn status(&self) -> WorkerStatus {
        let s = &self.shared;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let drain = s.drain.borrow().clone();
        let health = self.health();
        WorkerStatus {
            queue: s.queue.url().to_string(),
            fifo: s.queue.is_fifo(),
            concurrency: s.settings.concurrency,
            in_hand: *s.in_hand.borrow(),
            received: count(&s.counters.received),
            redelivered: count(&s.counters.redelivered),
            done: count(&s.counters.done),
            invalid: count(&s.counters.invalid),
            failed: count(&s.counters.failed),
            retried: count(&s.counters.retried),
            timed_out: count(&s.counters.timed_out),
            returned: count(&s.counters.returned),
            delete_failures: count(&s.counters.delete_failures),
            receive_errors: count(&s.counters.receive_errors),
            job_duration: s.counters.job_duration.read(),
            message_age: s.counters.message_age.read(),
            healthy: health.is_ok(),
            unhealthy_reason: health.err(),
            last_receive_error: lock(&s.last_receive_error).as_ref().map(|e| e.to_string()),
            last_delete_error: s.leases.deletes_failing().map(|e| e.to_string()),
            stopping: *s.stopping.borrow(),
            draining: drain.is_draining(),
            drain_reason: drain.draining.map(|d| d.public_reason().to_string()),
            protection: s.manager.status(),
        }
    }

    /// Whether the worker is sound: not shutting down, able to delete (no permanent delete
    /// error), and, unless it is draining (a failing health check would have ECS stop the task
    /// and cut its jobs short), receiving: its receives have not all failed for
    /// [`WorkerSettings::unhealthy_after`] (a minute), and one started within the last long poll
    /// plus that long unless every slot is busy.
    ///
    /// # Errors
    ///
    /// Why it is not sound.
    pub fn health(&self) -> Result<(), Unhealthy> {
        let s = &self.shared;
        let view = HealthView {
            stopping: *s.stopping.borrow(),
            deletes_failing: s.leases.deletes_failing().is_some(),
            draining: s.drain.borrow().is_draining(),
            slot_free: s.slots.available_permits() > 0,
            last_poll: *lock(&s.last_poll),
            failing_since: *lock(&s.failing_since),
        };
        health::assess(
            &view,
            Instant::now(),
            s.settings.receive_wait,
            s.settings.unhealthy_after,
        )
    }

    /// Whether [`health`](Self::health) says the worker is sound.
    pub fn is_healthy(&self) -> bool {
        self.health().is_ok()
    }

    /// Reads the queue's attributes (`GetQueueAttributes`; the task role needs
    /// `sqs:GetQueueAttributes` on the queue), to learn before the first job that the queue
    /// exists and this worker may read it, and what it is: FIFO or not, its redrive policy.
    /// Call it before [`run`](Self::run) to stop at start-up on a queue URL that names no queue
    /// (or a queue of another Region) or a task role without access, rather than run a worker
    /// whose every receive fails.
    ///
    /// # Errors
    ///
    /// SQS's answer, in SQS's words (`queue not found: sqs:GetQueueAttributes: …`);
    /// [`SqsError::is_permanent`] tells a wrong queue or role from a passing fault.
    pub async fn check_queue(&self) -> Result<QueueInfo, SqsError> {
        self.shared.queue.attributes().await
    }

    /// Takes and runs jobs until `signal` resolves, then shuts down in order: no more receives,
    /// jobs that have not started go back to the queue at once, running jobs may finish within
    /// the shutdown timeout and are then cancelled and returned to the queue, and protection is
    /// released ([`ProtectionManager::shutdown`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn run(&self, signal: impl Future<Output = ()>) {
        let s = &self.shared;
        tracing::info!(
            "Taking jobs from {} ({} at a time{})",
            s.queue.url(),
            s.settings.concurrency,
            if s.queue.is_fifo() {
                "; FIFO: each message group in order"
            } else {
                ""
            }
        );
        let receiving = crate::supervise::spawn("receive loop", receive_loop(Arc::clone(s)));
        signal.await;
        let in_hand = *s.in_hand.borrow();
        tracing::info!(
            "Shutting down: no more receives; {in_hand} jobs in hand may finish within {:?}",
            s.settings.shutdown_timeout
        );
        s.stopping.send_replace(true);
        let _ = receiving.await;
        let mut jobs = s.in_hand.subscribe();
        let finished =
            tokio::time::timeout(s.settings.shutdown_timeout, none_left(&mut jobs)).await;
        if finished.is_err() {
            tracing::warn!(
                "Shutdown timeout ({:?}) passed with {} jobs in hand: returning them to the queue",
                s.settings.shutdown_timeout,
                *s.in_hand.borrow()
            );
        }
        s.abandon.send_replace(true);
        if s.leases.len() > 0 {
            let returned = tokio::time::timeout(Duration::from_secs(5), s.leases.give_back_all())
                .await
                .unwrap_or_default();
            for receive_count in returned {
                s.counters.outcome(Tally::Returned, receive_count);
            }
        }
        // The cancelled jobs' handlers may clean up meanwhile.
        let grace = s.settings.cancel_grace.max(Duration::from_secs(2));
        let _ = tokio::time::timeout(grace, none_left(&mut jobs)).await;
        if let Err(e) = s.manager.shutdown().await {
            tracing::warn!("Could not release task protection on shutdown: {e}");
        }
        tracing::info!("Shutdown complete");
    }
}

/// Sends `bodies` to the queue at `queue_url` (in `region` when given, else the region the URL
/// names, else `sdk_config`'s), 10 to a call; returns the message IDs. For a standard queue: a
/// FIFO queue needs a message group ([`send_jobs_in_group`]).
///
/// # Errors
///
/// The first call SQS refused, in SQS's words; a FIFO queue (no call is made).
pub async fn send_jobs(
    sdk_config: &SdkConfig,
    queue_url: &str,
    region: Option<&str>,
    bodies: &[String],
) -> Result<Vec<String>, SqsError> {
    if queue::is_fifo(queue_url) {
        return Err(SqsError::new(
            crate::protection::ErrorKind::InvalidRequest,
            "a FIFO queue (its name ends .fifo) takes messages in a message group: use send_jobs_in_group",
        ));
    }
    send(&Queue::new(sdk_config, queue_url, region), bodies, None).await
}

/// Like [`send_jobs`], in message group `group_id`: on a FIFO queue, the group whose messages
/// are worked on one at a time, in the order sent. Each message gets a deduplication ID of its
/// own, so identical bodies are distinct jobs (content-based deduplication, if the queue has it
/// on, would keep one of them within SQS's 5-minute window). On a standard queue the group is
/// passed on as it is (SQS's fair queues use it).
///
/// # Errors
///
/// A group ID SQS would refuse (1 to 128 letters, digits and punctuation; no call is made), or
/// the first call SQS refused, in SQS's words.
pub async fn send_jobs_in_group(
    sdk_config: &SdkConfig,
    queue_url: &str,
    region: Option<&str>,
    group_id: &str,
    bodies: &[String],
) -> Result<Vec<String>, SqsError> {
    queue::check_group_id(group_id)
        .map_err(|e| SqsError::new(crate::protection::ErrorKind::InvalidRequest, e))?;
    send(
        &Queue::new(sdk_config, queue_url, region),
        bodies,
        Some(group_id),
    )
    .await
}

/// Sends `bodies` to `queue` 10 to a call, in `group` when given.
async fn send(
    queue: &Queue,
    bodies: &[String],
    group: Option<&str>,
) -> Result<Vec<String>, SqsError> {
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(SQS_BATCH) {
        ids.extend(queue.send(chunk, group).await?);
    }
    Ok(ids)
}

/// Resolves once no job is in hand.
async fn none_left(jobs: &mut watch::Receiver<usize>) {
    let _ = jobs.wait_for(|n| *n == 0).await;
}

/// Resolves once `flag` is true (or its sender is gone).
async fn until(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Resolves once `drain` satisfies `what` (or its sender is gone).
async fn drain_until(
    drain: &mut watch::Receiver<DrainState>,
    what: impl FnMut(&DrainState) -> bool,
) {
    let _ = drain.wait_for(what).await;
}

/// Receives while there are free slots, until stopping; each message becomes a job task.
/// Errors back off (1 s doubling to 30 s, jittered), logged once per kind of error. While
/// draining it does not receive: a drain that begins cancels the long poll in progress, and
/// receiving resumes when the drain ends.
async fn receive_loop(s: Arc<Shared>) {
    let mut stopping = s.stopping.subscribe();
    let mut drain = s.drain.subscribe();
    let mut failures = 0u32;
    let mut told_unhealthy = false;
    loop {
        if drain.borrow_and_update().is_draining() {
            tokio::select! {
                biased;
                _ = until(&mut stopping) => return,
                _ = drain_until(&mut drain, |d| !d.is_draining()) => {}
            }
            *lock(&s.last_poll) = Instant::now();
            continue;
        }
        let first = tokio::select! {
            biased;
            _ = until(&mut stopping) => return,
            _ = drain_until(&mut drain, DrainState::is_draining) => continue,
            permit = Arc::clone(&s.slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        while permits.len() < SQS_BATCH {
            match Arc::clone(&s.slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        *lock(&s.last_poll) = Instant::now();
        let received = tokio::select! {
            biased;
            _ = until(&mut stopping) => return,
            _ = drain_until(&mut drain, DrainState::is_draining) => {
                tracing::debug!("Long poll cancelled: draining");
                continue;
            }
            r = s.queue.receive(permits.len(), s.settings.receive_wait, s.settings.visibility_timeout) => r,
        };
        match received {
            Ok(messages) => {
                tracing::debug!(
                    "Received {} messages ({} slots free)",
                    messages.len(),
                    permits.len()
                );
                let recovered = lock(&s.last_receive_error).take().is_some();
                *lock(&s.failing_since) = None;
                if recovered {
                    tracing::info!("Receiving from the queue works again");
                }
                failures = 0;
                told_unhealthy = false;
                // The slots are handed out in the order the messages came, so that a FIFO
                // group's turns follow it.
                permits.reverse();
                for message in messages {
                    match permits.pop() {
                        Some(permit) => jobs::start(&s, message, permit),
                        // SQS never sends more than asked; if it did, the extra message simply
                        // becomes visible again after its visibility timeout.
                        None => tracing::warn!("{} - Received beyond the free slots", message.id),
                    }
                }
            }
            Err(error) => {
                drop(permits);
                failures += 1;
                Counters::add(&s.counters.receive_errors);
                let delay = retry_delay(
                    failures,
                    Duration::from_secs(1),
                    Duration::from_secs(30),
                    rand::random::<f64>(),
                );
                {
                    let mut last = lock(&s.last_receive_error);
                    if last.as_ref().map(SqsError::kind) != Some(error.kind()) {
                        tracing::warn!(
                            "Cannot receive from the queue: {error}; retrying in {:.1} s, and quietly while it keeps failing this way{}",
                            delay.as_secs_f64(),
                            receive_hint(&error)
                        );
                    } else {
                        tracing::debug!("Still cannot receive from the queue: {error}");
                    }
                    *last = Some(error);
                }
                let since = *lock(&s.failing_since).get_or_insert_with(Instant::now);
                if !told_unhealthy && since.elapsed() >= s.settings.unhealthy_after {
                    told_unhealthy = true;
                    tracing::error!(
                        "Every receive has failed for {:.0} s: the worker is unhealthy (/healthz \
                         answers 503, so that ECS replaces this task) until a receive works",
                        since.elapsed().as_secs_f64()
                    );
                }
                tokio::select! {
                    _ = until(&mut stopping) => return,
                    _ = drain_until(&mut drain, DrainState::is_draining) => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// What an operator can do about a receive error, if anything.
fn receive_hint(error: &SqsError) -> &'static str {
    use crate::protection::ErrorKind;
    match error.kind() {
        ErrorKind::AccessDenied => {
            ". Hint: the task role needs sqs:ReceiveMessage, sqs:DeleteMessage, sqs:ChangeMessageVisibility and sqs:GetQueueAttributes on the queue"
        }
        ErrorKind::NotFound => ". Hint: check the worker's queue URL and its Region",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protection::local::LocalBackend;
    use jobs::{linger, PROTECTION_GRACE};

    const HALF: Duration = Duration::from_millis(500);

    /// A worker that is never run (no SQS call is made), on the local backend, with a drain
    /// deadline of a minute.
    fn worker() -> Worker {
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let manager =
            ProtectionManager::start(Arc::new(LocalBackend::new()), PROTECTION_DEFAULTS).unwrap();
        let settings = WorkerSettings::DEFAULT
            .with_concurrency(2)
            .with_drain_deadline(Some(Duration::from_secs(60)));
        Worker::builder(&sdk, "http://127.0.0.1:1/123456789012/jobs")
            .region("us-east-1")
            .handler(|_job: Job| async { Outcome::Done })
            .settings(settings)
            .build(manager)
            .unwrap()
    }

    /// Lets the spawned tasks run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_jobs_protection_lingers_for_the_grace_and_no_longer() {
        let w = worker();
        let s = &w.shared;
        linger(s, s.manager.guard());
        tokio::time::sleep(PROTECTION_GRACE - HALF).await;
        assert_eq!(s.manager.holds(), 1, "held within the grace");
        // A second job ending meanwhile keeps it for its own grace.
        linger(s, s.manager.guard());
        tokio::time::sleep(HALF * 2).await;
        settle().await;
        assert_eq!(s.manager.holds(), 1, "the second job's grace is not over");
        tokio::time::sleep(PROTECTION_GRACE).await;
        settle().await;
        assert_eq!(s.manager.holds(), 0, "let go after the grace");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_lets_lingering_protection_go_at_once_and_none_lingers_while_it_lasts() {
        let w = worker();
        let s = &w.shared;
        linger(s, s.manager.guard());
        drain::begin(s, "deployment in progress: details", DrainKind::Reversible);
        settle().await;
        assert_eq!(s.manager.holds(), 0, "a drain ends the grace");
        assert!(s.manager.status().draining, "the hold-over is skipped");
        linger(s, s.manager.guard());
        assert_eq!(s.manager.holds(), 0, "no grace while draining");
        drain::end(s);
        assert!(!s.manager.status().draining);
        linger(s, s.manager.guard());
        assert_eq!(s.manager.holds(), 1, "a grace again once the drain is over");
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_lets_lingering_protection_go_at_once() {
        let w = worker();
        let s = &w.shared;
        linger(s, s.manager.guard());
        s.stopping.send_replace(true);
        settle().await;
        assert_eq!(s.manager.holds(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_worker_stays_healthy_without_polling_and_shows_the_cause_only() {
        let w = worker();
        let s = &w.shared;
        drain::begin(
            s,
            "deployment in progress: the service is moving to deployment ecs-svc/2",
            DrainKind::Reversible,
        );
        // Far longer than a long poll plus a minute, with free slots and no receive.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(w.is_healthy(), "a drain is not a stalled receive loop");
        let status = w.status();
        assert!(status.draining);
        assert_eq!(
            status.drain_reason.as_deref(),
            Some("deployment in progress")
        );
        assert!(
            status.protection.draining,
            "the manager skips the hold-over"
        );
        drain::end(s);
        assert!(
            !w.is_healthy(),
            "no drain, no receive for 10 minutes: stalled"
        );
        assert!(!w.status().draining);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_returns_a_deployments_jobs_but_never_a_scale_ins() {
        let w = worker();
        let s = &w.shared;
        let evicting = || s.drain.borrow().evicting;
        drain::begin(s, "scale-in", DrainKind::ScaleIn);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!evicting(), "a scale-in's jobs finish");
        drain::begin(s, "deployment in progress", DrainKind::Reversible);
        settle().await;
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!evicting(), "before the deadline");
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert!(evicting(), "past the deadline");
        // Rolled back: taking jobs again, with no eviction pending and a fresh deadline next time.
        drain::end(s);
        assert!(!evicting());
        drain::begin(s, "operator request (SIGUSR1)", DrainKind::Final);
        settle().await;
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!evicting(), "the deadline starts again with each drain");
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert!(evicting());
    }

    #[tokio::test]
    async fn a_worker_needs_a_handler_a_queue_and_settings_in_range() {
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let manager = || {
            ProtectionManager::start(Arc::new(LocalBackend::new()), PROTECTION_DEFAULTS).unwrap()
        };
        let url = "http://127.0.0.1:1/123456789012/jobs";
        let e = Worker::builder(&sdk, url).build(manager()).unwrap_err();
        assert_eq!(e, BuildError::NoHandler);
        let e = Worker::builder(&sdk, " ")
            .handler(|_job: Job| async { Outcome::Done })
            .build(manager())
            .unwrap_err();
        assert_eq!(e, BuildError::NoQueue);
        let e = Worker::builder(&sdk, url)
            .handler(|_job: Job| async { Outcome::Done })
            .settings(WorkerSettings::DEFAULT.with_concurrency(0))
            .build(manager())
            .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let w = Worker::builder(&sdk, "http://127.0.0.1:1/123456789012/jobs.fifo")
            .handler(|_job: Job| async { Outcome::Done })
            .build(manager())
            .unwrap();
        assert!(w.status().fifo, "a .fifo URL is a FIFO queue");
        assert!(!worker().status().fifo);
    }
}
