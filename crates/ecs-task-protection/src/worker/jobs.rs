//! One message in hand, from its receipt to its delete (or its return to the queue): the
//! handler's check, its turn in a FIFO group, the wait for protection, the handler itself (its
//! panic caught, its cancellation at shutdown, at the drain deadline or at its timeout), and what
//! its outcome does with the message.
//!
//! Each job holds a [`ProtectionGuard`] from the moment its message is received until its delete
//! is confirmed, and keeps it [`PROTECTION_GRACE`] (2 s) longer (unless the worker is draining or
//! stopping), so that the next job of a busy period, received within a round trip, finds the task
//! still protected. The manager coalesces them into one protect call per busy period (and a
//! refresh now and then), and releases protection once the grace after the last job has passed
//! (and any hold-over).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::drain::DrainState;
use super::groups::Turn;
use super::handler::{CancelReason, Job, Outcome};
use super::leases::{DeleteError, LeaseId};
use super::queue::Received;
use super::settings::SQS_MAX_INVISIBLE;
use super::stats::{Counters, Tally};
use super::{drain_until, until, Shared};
use crate::protection::{retry_delay, ProtectionGuard};
use crate::supervise::panic_message;

/// How long a job's protection outlives the job: long enough for the next receive to bring the
/// next job of a busy period (one SQS round trip, tens of milliseconds), short enough that a
/// worker fed a trickle of jobs is not protected between them. Not a setting: the hold-over
/// (`maintain_percent`) is the knob for call counts.
pub(crate) const PROTECTION_GRACE: Duration = Duration::from_secs(2);

/// Counts a job task in hand while it lives.
pub(crate) struct InHand(pub(crate) Arc<Shared>);

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

/// A message just received: what its job task needs.
struct Message {
    id: String,
    receipt: String,
    receive_count: u32,
    received_at: Instant,
}

/// Starts the job task of a message just received, with its slot. Called in the order the
/// messages came, so that each takes its turn in its FIFO group in that order.
pub(super) fn start(s: &Arc<Shared>, mut received: Received, slot: OwnedSemaphorePermit) {
    s.counters
        .delivered(received.receive_count, age(received.sent_at));
    let ticket = InHand::new(s);
    let turn = received
        .group_id
        .as_deref()
        .filter(|_| s.queue.is_fifo())
        .map(|group| s.groups.join(group));
    let message = Message {
        id: received.id.clone(),
        receipt: std::mem::take(&mut received.receipt),
        receive_count: received.receive_count,
        received_at: received.received_at,
    };
    let (cancel, cancelled) = watch::channel(None);
    let job = Job::received(received, cancelled, s.stopping.subscribe());
    let checked = check(s, &job);
    // Taken here rather than in the job's task, so that protection the last job left lingering
    // is still held when this one claims it.
    let protection = checked.is_ok().then(|| s.manager.guard());
    tokio::spawn(run(
        ticket, message, job, cancel, checked, slot, protection, turn,
    ));
}

/// How long ago a message was sent (`SentTimestamp`), when SQS says; 0 if the task's clock is
/// behind SQS's.
fn age(sent_at: Option<SystemTime>) -> Option<Duration> {
    sent_at.map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
}

/// The handler's check of a message, a panic in it counted as a refusal.
fn check(s: &Shared, job: &Job) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| s.handler.check(job))).unwrap_or_else(|panic| {
        Err(format!(
            "the handler's check panicked: {}",
            panic_message(panic.as_ref())
        ))
    })
}

/// Keeps a finished job's protection for [`PROTECTION_GRACE`], so that the next job of a busy
/// period finds the task protected; at once while draining or stopping (the task should be free
/// to go as soon as its work is done).
pub(crate) fn linger(s: &Shared, protection: ProtectionGuard) {
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

/// How long a failed job's message stays hidden before it is retried: 2 s, 4 s, … up to 5
/// minutes, by receive count.
fn failure_backoff(receive_count: u32) -> Duration {
    retry_delay(
        receive_count,
        Duration::from_secs(2),
        Duration::from_secs(300),
        1.0,
    )
}

/// What the log says about a message left on the queue for a retry after `delay`.
fn left_on_the_queue(delay: Duration, receive_count: u32) -> String {
    format!(
        "Not deleted: visible again in {} s; the queue's redrive policy moves it to the \
         dead-letter queue after its maxReceiveCount (this was receive {receive_count})",
        delay.as_secs()
    )
}

/// One job: from receipt to delete (or return to the queue).
#[allow(clippy::too_many_arguments)]
async fn run(
    ticket: InHand,
    message: Message,
    job: Job,
    cancel: watch::Sender<Option<CancelReason>>,
    checked: Result<(), String>,
    slot: OwnedSemaphorePermit,
    protection: Option<ProtectionGuard>,
    mut turn: Option<Turn>,
) {
    let s = &ticket.0;
    let Message {
        id,
        receipt,
        receive_count,
        received_at,
    } = message;
    tracing::info!("{id} - Received");
    let lease = s.leases.hold(&id, &receipt, receive_count);
    if let Err(e) = checked {
        // Not deleted: visible again after a back-off, until the queue's redrive policy moves it
        // to the dead-letter queue. The rest of its FIFO group in hand goes back (its turn is
        // dropped unfinished).
        let delay = failure_backoff(receive_count);
        tracing::warn!(
            "{id} - Cannot run it: {e}. {}",
            left_on_the_queue(delay, receive_count)
        );
        s.counters.outcome(Tally::Invalid, receive_count);
        s.leases.give_back(lease, delay).await;
        return;
    }
    let protection = protection.unwrap_or_else(|| s.manager.guard());
    let mut stopping = s.stopping.subscribe();
    let mut drain = s.drain.subscribe();
    let not_started = |why: &str| {
        s.counters.outcome(Tally::Returned, receive_count);
        tracing::info!("{id} - Returned to the queue ({why} before it started)");
    };
    if let Some(turn) = &mut turn {
        let previous_deleted = tokio::select! {
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
            deleted = turn.previous_deleted() => deleted,
        };
        if !previous_deleted {
            // SQS delivers the group again from its earliest message not deleted.
            s.leases.give_back(lease, Duration::ZERO).await;
            s.counters.outcome(Tally::Returned, receive_count);
            tracing::info!(
                "{id} - Returned to the queue (an earlier message of group {:?} was not done)",
                turn.group()
            );
            return;
        }
    }
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
    // The job's own timeout, and SQS's: it cannot keep the message hidden longer than 12 hours
    // after its receive (less one visibility timeout of margin for the last extension).
    let started = Instant::now();
    let sqs_limit = received_at + SQS_MAX_INVISIBLE.saturating_sub(s.settings.visibility_timeout);
    let deadline = s
        .settings
        .job_timeout
        .map_or(sqs_limit, |t| (started + t).min(sqs_limit));
    let mut abandon = s.abandon.subscribe();
    let mut work = AssertUnwindSafe(s.handler.handle(job)).catch_unwind();
    let ended = tokio::select! {
        biased;
        // The shutdown sequence returns every message in hand to the queue.
        _ = until(&mut abandon) => Err(CancelReason::Shutdown),
        _ = drain_until(&mut drain, |d| d.evicting) => Err(CancelReason::DrainDeadline),
        _ = tokio::time::sleep_until(deadline) => Err(CancelReason::Timeout),
        outcome = &mut work => Ok(outcome),
    };
    s.counters.job_duration.record(started.elapsed());
    let outcome = match ended {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let why = panic_message(panic.as_ref());
            tracing::error!("{id} - The handler panicked: {why}");
            Outcome::Failed(format!("the handler panicked: {why}"))
        }
        Err(reason) => {
            cancel.send_replace(Some(reason));
            match reason {
                CancelReason::Shutdown => {
                    tracing::info!("{id} - Stopped before it finished (shutdown timeout)");
                }
                CancelReason::DrainDeadline => {
                    s.leases.give_back(lease, Duration::ZERO).await;
                    s.counters.outcome(Tally::Returned, receive_count);
                    tracing::info!(
                        "{id} - Returned to the queue (the drain deadline passed before it finished)"
                    );
                }
                CancelReason::Timeout => {
                    let delay = failure_backoff(receive_count);
                    s.counters.outcome(Tally::TimedOut, receive_count);
                    tracing::warn!(
                        "{id} - Timed out after {:.1} s: cancelled{}. {}",
                        started.elapsed().as_secs_f64(),
                        if deadline == sqs_limit {
                            " (SQS keeps a message hidden for at most 12 hours after its receive)"
                        } else {
                            ""
                        },
                        left_on_the_queue(delay, receive_count)
                    );
                    s.leases.give_back(lease, delay).await;
                }
            }
            // The handler may stop its work and clean up; its answer no longer matters.
            match tokio::time::timeout(s.settings.cancel_grace, &mut work).await {
                Ok(Ok(outcome)) => tracing::debug!(
                    "{id} - The handler answered {outcome:?} after it was cancelled; the message is back on the queue anyway"
                ),
                Ok(Err(panic)) => tracing::warn!(
                    "{id} - The handler panicked after it was cancelled: {}",
                    panic_message(panic.as_ref())
                ),
                Err(_) => tracing::warn!(
                    "{id} - The handler did not return within {:?} of its cancellation: dropped",
                    s.settings.cancel_grace
                ),
            }
            return;
        }
    };
    match outcome {
        Outcome::Done => {
            tracing::info!("{id} - Done");
            // The slot is free for the next receive while the delete is made.
            drop(slot);
            if delete(s, &id, lease).await {
                if let Some(turn) = turn {
                    turn.deleted();
                }
            }
        }
        Outcome::RetryAfter(delay) => {
            let delay = delay.min(SQS_MAX_INVISIBLE);
            s.counters.outcome(Tally::Retried, receive_count);
            tracing::info!(
                "{id} - Retry asked for: visible again in {:.1} s",
                delay.as_secs_f64()
            );
            drop(slot);
            s.leases.give_back(lease, delay).await;
        }
        Outcome::Failed(reason) => {
            let delay = failure_backoff(receive_count);
            s.counters.outcome(Tally::Failed, receive_count);
            tracing::warn!(
                "{id} - Failed: {reason}. {}",
                left_on_the_queue(delay, receive_count)
            );
            drop(slot);
            s.leases.give_back(lease, delay).await;
        }
    }
    linger(s, protection);
}

/// Deletes a done job's message; whether SQS took the delete.
async fn delete(s: &Shared, id: &str, lease: LeaseId) -> bool {
    match s.leases.delete(lease).await {
        Ok(()) => {
            // A success counts on whichever delivery it comes (stats::counts).
            Counters::add(&s.counters.done);
            true
        }
        Err(e) => {
            Counters::add(&s.counters.delete_failures);
            match e {
                // Logged once for every job by the deleter.
                DeleteError::Permanent(_) => {
                    tracing::debug!("{id} - Done but not deleted: {e}; SQS will deliver it again")
                }
                _ => tracing::warn!("{id} - Done but not deleted: {e}; SQS will deliver it again"),
            }
            false
        }
    }
}
