//! The queue consumer: takes jobs off an SQS queue, runs up to `concurrency` of them at once, and
//! keeps the task protected from scale-in while any job is in hand (and not while it only
//! waits for work).
//!
//! * `job`: the message format; `queue`: SQS; `leases`: keeping messages hidden while their jobs
//!   run, deleting them after success, returning them otherwise; `drain`: what starts and ends a
//!   drain, and its deadline; `status`: `/healthz` and `/status`.
//!
//! Each job holds a [`ProtectionGuard`] from the moment its message is received until its delete
//! is confirmed, and keeps it `PROTECTION_GRACE` (2 s) longer (unless the worker is draining or
//! stopping), so that the next job of a busy period, received within a round trip, finds the task
//! still protected. The manager coalesces them into one protect call per busy period (and a
//! refresh now and then), and releases protection once the grace after the last job has passed
//! (and any hold-over).

mod drain;
mod job;
mod leases;
mod queue;
mod status;

use app_support::metrics::{self, Sample};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use drain::DrainState;
use ecs_task_protection::protection::{
    retry_delay, ProtectionGuard, ProtectionManager, ProtectionStatus, Settings,
};
use job::{Job, JobError};
use leases::{DeleteError, Leases};
use queue::{Queue, Received, SQS_BATCH};

pub use queue::create as create_queue;
pub use queue::SqsError;
pub use status::serve_status;

pub(crate) use queue::{check_queue_url, check_region};

/// How long a job's protection outlives the job: long enough for the next receive to bring the
/// next job of a busy period (one SQS round trip, tens of milliseconds), short enough that a
/// worker fed a trickle of jobs is not protected between them. Not a setting: the hold-over
/// (`PROTECTION_MAINTAIN_PERCENT`) is the knob for call counts.
pub(crate) const PROTECTION_GRACE: Duration = Duration::from_secs(2);

/// The protection settings the queue consumer starts from: the Node.js sample's queue consumer
/// (protect for 1 minute, refresh at 80 %, and a 10 % hold-over: protection set less than 6 s
/// before the last job ends is kept until 6 s after it was set).
pub const PROTECTION_DEFAULTS: Settings = Settings::DEFAULT
    .with_duration_minutes(1)
    .with_maintain_percent(10)
    .with_refresh_percent(80);

/// How the worker takes and runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs that may run at once (1..=100).
    pub concurrency: usize,
    /// How long a received message stays hidden from other workers; extended every third of it
    /// while its job runs.
    pub visibility_timeout: Duration,
    /// The longest one receive waits for messages (long polling, at most 20 s).
    pub receive_wait: Duration,
    /// How long running jobs may go on after SIGTERM before they are returned to the queue.
    pub shutdown_timeout: Duration,
    /// The longest a job waits for ECS to confirm protection before it starts anyway.
    pub protection_wait: Duration,
    /// How long a deployment's or an operator's drain may last before the jobs still running go
    /// back to the queue; `None`: no limit. A scale-in's drain is never limited.
    pub drain_deadline: Option<Duration>,
}

/// A snapshot of the worker, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// The queue's URL.
    pub queue: String,
    /// Jobs that may run at once.
    pub concurrency: usize,
    /// Messages in hand now: waiting for protection, running, or being deleted.
    pub in_hand: usize,
    /// Messages received since start-up.
    pub received: u64,
    /// Jobs done and deleted.
    pub done: u64,
    /// Messages that are not jobs (left on the queue for its dead-letter queue).
    pub invalid: u64,
    /// Messages returned to the queue unfinished (shutdown, drain).
    pub returned: u64,
    /// Jobs done whose message could not be deleted (it comes back: at-least-once delivery).
    pub delete_failures: u64,
    /// Receives that failed.
    pub receive_errors: u64,
    /// The last receive error of the current streak, `None` once receiving works.
    pub last_receive_error: Option<String>,
    /// The permanent error deletes fail with (the queue is gone, the task role may not delete),
    /// `None` once a delete works; `/healthz` answers 503 meanwhile.
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

/// The running tallies behind [`WorkerStatus`].
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    done: AtomicU64,
    invalid: AtomicU64,
    returned: AtomicU64,
    delete_failures: AtomicU64,
    receive_errors: AtomicU64,
}

/// What the receive loop, the jobs and the status endpoint share.
struct Shared {
    queue: Queue,
    manager: ProtectionManager,
    settings: WorkerSettings,
    leases: Arc<Leases>,
    /// One permit per job that may run at once; a job gives its permit back when its work ends.
    slots: Arc<Semaphore>,
    /// Job tasks alive (from receive to the end of their delete or return).
    in_hand: watch::Sender<usize>,
    /// SIGTERM: no more receives; jobs that have not started go back to the queue.
    stopping: watch::Sender<bool>,
    /// The shutdown timeout passed: running jobs stop and go back to the queue.
    abandon: watch::Sender<bool>,
    /// Draining: no receives; jobs that have not started go back to the queue; past the drain
    /// deadline, running jobs go back too.
    drain: watch::Sender<DrainState>,
    counters: Counters,
    /// When the receive loop last started a receive (for the health check).
    last_poll: Mutex<Instant>,
    last_receive_error: Mutex<Option<SqsError>>,
}

/// The queue consumer. Cheap to clone.
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

impl Worker {
    /// A worker for the queue at `queue_url` (in `region` when given, else the region the URL
    /// names, else `sdk_config`'s), whose jobs hold protection through `manager`. Must be called
    /// inside a tokio runtime.
    pub fn new(
        sdk_config: &SdkConfig,
        queue_url: &str,
        region: Option<&str>,
        manager: ProtectionManager,
        settings: WorkerSettings,
    ) -> Self {
        let queue = Queue::new(sdk_config, queue_url, region);
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
            manager,
            settings,
            leases,
            in_hand: watch::channel(0).0,
            stopping: watch::channel(false).0,
            abandon,
            drain: watch::channel(DrainState::default()).0,
            counters: Counters::default(),
            last_poll: Mutex::new(Instant::now()),
            last_receive_error: Mutex::new(None),
        });
        if let Some(deadline) = shared.settings.drain_deadline {
            tokio::spawn(drain::enforce_deadline(Arc::downgrade(&shared), deadline));
        }
        Self { shared }
    }

    /// The worker's state now.
    pub fn status(&self) -> WorkerStatus {
        let s = &self.shared;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let drain = s.drain.borrow().clone();
        WorkerStatus {
            queue: s.queue.url().to_string(),
            concurrency: s.settings.concurrency,
            in_hand: *s.in_hand.borrow(),
            received: count(&s.counters.received),
            done: count(&s.counters.done),
            invalid: count(&s.counters.invalid),
            returned: count(&s.counters.returned),
            delete_failures: count(&s.counters.delete_failures),
            receive_errors: count(&s.counters.receive_errors),
            last_receive_error: lock(&s.last_receive_error).as_ref().map(|e| e.to_string()),
            last_delete_error: s.leases.deletes_failing().map(|e| e.to_string()),
            stopping: *s.stopping.borrow(),
            draining: drain.is_draining(),
            drain_reason: drain.draining.map(|d| d.public_reason().to_string()),
            protection: s.manager.status(),
        }
    }

    /// The worker's numbers for [`app_support::metrics`]: `JobsInHand`, `JobsDone`, `JobsFailed`
    /// (messages that are not jobs), `JobsReturned` (handed back unfinished: shutdown, drain), and
    /// the protection manager's (`Draining` among them).
    pub fn metrics(&self) -> Vec<Sample> {
        let s = &self.shared;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut samples = vec![
            Sample::gauge(
                "JobsInHand",
                "jobs_in_hand",
                "Messages in hand: waiting for protection, running, or being deleted",
                *s.in_hand.borrow() as f64,
            ),
            Sample::counter(
                "JobsDone",
                "jobs_done",
                "Jobs done and deleted",
                count(&s.counters.done),
            ),
            Sample::counter(
                "JobsFailed",
                "jobs_failed",
                "Messages that are not jobs (left for the dead-letter queue)",
                count(&s.counters.invalid),
            ),
            Sample::counter(
                "JobsReturned",
                "jobs_returned",
                "Messages handed back to the queue unfinished (shutdown, drain deadline)",
                count(&s.counters.returned),
            ),
        ];
        samples.extend(metrics::protection_samples(&s.manager.status()));
        samples
    }

    /// Whether the worker is sound: not shutting down, able to delete (no permanent delete
    /// error), and receiving (a receive started within the last long poll plus a minute) unless
    /// every slot is busy or it is draining (a failing health check would have ECS stop the task
    /// and cut its jobs short).
    pub fn is_healthy(&self) -> bool {
        let s = &self.shared;
        if *s.stopping.borrow() || s.leases.deletes_failing().is_some() {
            return false;
        }
        let polled_lately =
            lock(&s.last_poll).elapsed() < s.settings.receive_wait + Duration::from_secs(60);
        polled_lately || s.slots.available_permits() == 0 || s.drain.borrow().is_draining()
    }

    /// Takes and runs jobs until `signal` resolves, then shuts down in order: no more receives,
    /// jobs that have not started go back to the queue at once, running jobs may finish within
    /// the shutdown timeout and are returned to the queue after it, and protection is released.
    pub async fn run(&self, signal: impl Future<Output = ()>) {
        let s = &self.shared;
        tracing::info!(
            "Taking jobs from {} ({} at a time)",
            s.queue.url(),
            s.settings.concurrency
        );
        let receiving =
            ecs_task_protection::supervise::spawn("receive loop", receive_loop(Arc::clone(s)));
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
                .unwrap_or(0);
            s.counters
                .returned
                .fetch_add(returned as u64, Ordering::Relaxed);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), none_left(&mut jobs)).await;
        if let Err(e) = s.manager.shutdown().await {
            tracing::warn!("Could not release task protection on shutdown: {e}");
        }
        tracing::info!("Shutdown complete");
    }
}

/// Sends `bodies` to the queue at `queue_url`, 10 to a call; returns the message IDs.
pub async fn send_jobs(
    sdk_config: &SdkConfig,
    queue_url: &str,
    region: Option<&str>,
    bodies: &[String],
) -> Result<Vec<String>, SqsError> {
    let queue = Queue::new(sdk_config, queue_url, region);
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(SQS_BATCH) {
        ids.extend(queue.send(chunk).await?);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives while there are free slots, until stopping; each message becomes a job task.
/// Errors back off (1 s doubling to 30 s, jittered), logged once per kind of error. While
/// draining it does not receive: a drain that begins cancels the long poll in progress, and
/// receiving resumes when the drain ends.
async fn receive_loop(s: Arc<Shared>) {
    let mut stopping = s.stopping.subscribe();
    let mut drain = s.drain.subscribe();
    let mut failures = 0u32;
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
                if recovered {
                    tracing::info!("Receiving from the queue works again");
                }
                failures = 0;
                let vt = s.settings.visibility_timeout;
                for message in messages {
                    let job = job::parse(&message.body, vt);
                    match permits.pop() {
                        Some(permit) => start_job(&s, message, job, permit),
                        // SQS never sends more than asked; if it did, the extra message simply
                        // becomes visible again after its visibility timeout.
                        None => tracing::warn!("{} - Received beyond the free slots", message.id),
                    }
                }
            }
            Err(error) => {
                drop(permits);
                failures += 1;
                s.counters.receive_errors.fetch_add(1, Ordering::Relaxed);
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
    use ecs_task_protection::protection::ErrorKind;
    match error.kind() {
        ErrorKind::AccessDenied => {
            ". Hint: the task role needs sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility on the queue"
        }
        ErrorKind::NotFound => ". Hint: check QUEUE_URL (or COPILOT_QUEUE_URI) and QUEUE_REGION",
        _ => "",
    }
}

/// Counts a job task in hand while it lives.
struct InHand(Arc<Shared>);

impl InHand {
    fn new(s: &Arc<Shared>) -> Self {
        s.in_hand.send_modify(|n| *n += 1);
        Self(Arc::clone(s))
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.in_hand.send_modify(|n| *n -= 1);
    }
}

fn start_job(
    s: &Arc<Shared>,
    message: Received,
    job: Result<Job, JobError>,
    slot: OwnedSemaphorePermit,
) {
    s.counters.received.fetch_add(1, Ordering::Relaxed);
    let ticket = InHand::new(s);
    // Taken here rather than in the job's task, so that protection the last job left lingering
    // is still held when this one claims it.
    let protection = job.as_ref().ok().map(|_| s.manager.guard());
    tokio::spawn(run_job(ticket, message, job, slot, protection));
}

/// Keeps a finished job's protection for [`PROTECTION_GRACE`], so that the next job of a busy
/// period finds the task protected; at once while draining or stopping (the task should be free
/// to go as soon as its work is done).
fn linger(s: &Shared, protection: ProtectionGuard) {
    let mut stopping = s.stopping.subscribe();
    let mut drain = s.drain.subscribe();
    if *stopping.borrow() || drain.borrow().is_draining() {
        return;
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(PROTECTION_GRACE) => {}
            _ = until(&mut stopping) => {}
            _ = drain_until(&mut drain, DrainState::is_draining) => {}
        }
        drop(protection);
    });
}

/// One job, its message already read: from receipt to delete (or return to the queue).
async fn run_job(
    ticket: InHand,
    message: Received,
    job: Result<Job, JobError>,
    slot: OwnedSemaphorePermit,
    protection: Option<ProtectionGuard>,
) {
    let s = &ticket.0;
    let Received {
        id,
        receipt,
        receive_count,
        ..
    } = message;
    tracing::info!("{id} - Received");
    let lease = s.leases.hold(&id, &receipt);
    let (job, protection) = match (job, protection) {
        (Ok(job), Some(protection)) => (job, protection),
        (Ok(job), None) => (job, s.manager.guard()),
        (Err(e), _) => {
            // Not deleted: visible again after a back-off, until the queue's redrive policy moves
            // it to the dead-letter queue.
            let delay = retry_delay(
                receive_count,
                Duration::from_secs(2),
                Duration::from_secs(300),
                1.0,
            );
            tracing::warn!(
                "{id} - Cannot run it: {e}. Not deleted: visible again in {} s; the queue's redrive policy moves it to the dead-letter queue after its maxReceiveCount (this was receive {receive_count})",
                delay.as_secs()
            );
            s.counters.invalid.fetch_add(1, Ordering::Relaxed);
            s.leases.give_back(lease, delay).await;
            return;
        }
    };
    let mut stopping = s.stopping.subscribe();
    let mut drain = s.drain.subscribe();
    let not_started = |why: &str| {
        s.counters.returned.fetch_add(1, Ordering::Relaxed);
        tracing::info!("{id} - Returned to the queue ({why} before it started)");
    };
    let confirmed = tokio::select! {
        biased;
        _ = until(&mut stopping) => {
            s.leases.give_back(lease, Duration::ZERO).await;
            not_started("shutting down");
            return;
        }
        _ = drain_until(&mut drain, DrainState::is_draining) => {
            s.leases.give_back(lease, Duration::ZERO).await;
            not_started("draining");
            return;
        }
        r = tokio::time::timeout(s.settings.protection_wait, s.manager.protected()) => r,
    };
    match confirmed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("{id} - Starting without protection: {e}"),
        Err(_) => tracing::debug!(
            "{id} - Starting before ECS confirmed protection (waited {:?})",
            s.settings.protection_wait
        ),
    }
    tracing::info!("{id} - Working for {} milliseconds", job.work.as_millis());
    let mut abandon = s.abandon.subscribe();
    tokio::select! {
        biased;
        // The shutdown sequence returns every message in hand to the queue.
        _ = until(&mut abandon) => {
            tracing::info!("{id} - Stopped before it finished (shutdown timeout)");
            return;
        }
        _ = drain_until(&mut drain, |d| d.evicting) => {
            s.leases.give_back(lease, Duration::ZERO).await;
            s.counters.returned.fetch_add(1, Ordering::Relaxed);
            tracing::info!("{id} - Returned to the queue (the drain deadline passed before it finished)");
            return;
        }
        _ = tokio::time::sleep(job.work) => {}
    }
    tracing::info!("{id} - Done");
    // The slot is free for the next receive while the delete is made.
    drop(slot);
    match s.leases.delete(lease).await {
        Ok(()) => {
            s.counters.done.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            s.counters.delete_failures.fetch_add(1, Ordering::Relaxed);
            match e {
                // Logged once for every job by the deleter.
                DeleteError::Permanent(_) => {
                    tracing::debug!("{id} - Done but not deleted: {e}; SQS will deliver it again")
                }
                _ => tracing::warn!("{id} - Done but not deleted: {e}; SQS will deliver it again"),
            }
        }
    }
    linger(s, protection);
}

#[cfg(test)]
mod tests {
    use super::*;
    use drain::DrainKind;
    use ecs_task_protection::protection::local::LocalBackend;

    const HALF: Duration = Duration::from_millis(500);

    /// A worker that is never run (no SQS call is made), on the local backend, with a drain
    /// deadline of a minute.
    fn worker() -> Worker {
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let manager =
            ProtectionManager::start(Arc::new(LocalBackend::new()), PROTECTION_DEFAULTS).unwrap();
        let settings = WorkerSettings {
            concurrency: 2,
            visibility_timeout: Duration::from_secs(60),
            receive_wait: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(20),
            protection_wait: Duration::from_secs(2),
            drain_deadline: Some(Duration::from_secs(60)),
        };
        Worker::new(
            &sdk,
            "http://127.0.0.1:1/123456789012/jobs",
            Some("us-east-1"),
            manager,
            settings,
        )
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
        let draining = w
            .metrics()
            .into_iter()
            .find(|m| m.name == "Draining")
            .map(|m| m.value);
        assert_eq!(draining, Some(1.0));
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
}
