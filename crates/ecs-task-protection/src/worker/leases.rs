//! Keeping the messages in hand hidden from other workers while their jobs run, and ending each
//! hold: deleted after success, or returned to the queue.
//!
//! A message is received hidden for one visibility timeout. While its job runs, the keeper
//! extends the visibility of every held message every third of that timeout, 10 to a call, so a
//! long job is never handed to another worker, and a worker that crashes leaves its messages
//! hidden for at most one timeout. Deletes go through one task that batches whatever is waiting
//! and retries transient failures; a permanent one (the queue is gone, the task role may not
//! delete) ends the holds at once, since no retry can make it work, and is remembered until a
//! delete works again (the health check turns 503 meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::queue::{Queue, SqsError, SQS_BATCH};
use crate::protection::{retry_delay, ErrorKind};

/// One held message.
#[derive(Debug, Clone)]
struct Lease {
    /// The message ID, for logs.
    id: String,
    /// The receipt handle of the receive that handed it to us.
    receipt: String,
    /// SQS's receive count of that receive.
    receive_count: u32,
}

/// A held message's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LeaseId(u64);

/// Why a delete did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeleteError {
    /// SQS refused this entry (e.g. the receipt handle is no longer valid: the message was
    /// handed out again).
    #[error("SQS refused the delete: {0}")]
    Refused(String),
    /// The worker is going away before SQS accepted the delete.
    #[error("not deleted before shutdown (last error: {0})")]
    GaveUp(String),
    /// SQS refused the call in a way no retry can change (the queue does not exist, the task role
    /// may not delete).
    #[error("SQS will not take the delete: {0}")]
    Permanent(SqsError),
}

struct DeleteRequest {
    lease: LeaseId,
    reply: oneshot::Sender<Result<(), DeleteError>>,
}

/// The messages in hand.
pub(crate) struct Leases {
    queue: Queue,
    visibility: Duration,
    held: Mutex<HashMap<LeaseId, Lease>>,
    /// Serialises visibility changes, so that an extension made from an older snapshot of
    /// `held` can never land after a message was given back.
    visibility_calls: tokio::sync::Mutex<()>,
    next: AtomicU64,
    deletes: mpsc::Sender<DeleteRequest>,
    /// The permanent error of the last delete call, until a delete call works again.
    failing_for_good: Mutex<Option<SqsError>>,
}

impl Leases {
    /// Starts the keeper and the deleter; both run until `abandon` turns true. Deletes that
    /// cannot be made by then are given up (the message comes back after its visibility timeout
    /// and the job runs again: SQS delivers at least once).
    pub(crate) fn start(
        queue: Queue,
        visibility: Duration,
        pending_deletes: usize,
        abandon: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(pending_deletes.max(1));
        let leases = Arc::new(Self {
            queue,
            visibility,
            held: Mutex::new(HashMap::new()),
            visibility_calls: tokio::sync::Mutex::new(()),
            next: AtomicU64::new(0),
            deletes: tx,
            failing_for_good: Mutex::new(None),
        });
        crate::supervise::spawn(
            "visibility keeper",
            keep(Arc::downgrade(&leases), abandon.clone()),
        );
        crate::supervise::spawn(
            "delete loop",
            delete_loop(Arc::downgrade(&leases), rx, abandon),
        );
        leases
    }

    /// Holds a message just received, delivered for the `receive_count`th time (its visibility
    /// is extended from now on).
    pub(crate) fn hold(&self, id: &str, receipt: &str, receive_count: u32) -> LeaseId {
        let key = LeaseId(self.next.fetch_add(1, Ordering::Relaxed));
        self.lock().insert(
            key,
            Lease {
                id: id.to_string(),
                receipt: receipt.to_string(),
                receive_count,
            },
        );
        key
    }

    /// How many messages are in hand.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Makes a message visible again after `delay` (0: at once) and stops holding it.
    pub(crate) async fn give_back(&self, lease: LeaseId, delay: Duration) {
        let Some(held) = self.lock().remove(&lease) else {
            return;
        };
        let _serial = self.visibility_calls.lock().await;
        let outcome = self.queue.set_visibility(&[(&held.receipt, delay)]).await;
        match outcome.map(|mut v| v.pop()) {
            Ok(Some(Ok(()))) | Ok(None) => {}
            Ok(Some(Err(why))) => tracing::warn!("{} - Could not return it to the queue: {why}", held.id),
            Err(e) => tracing::warn!(
                "{} - Could not return it to the queue ({e}); it comes back within the visibility timeout",
                held.id
            ),
        }
    }

    /// Makes every held message visible again at once, 10 to a call (shutdown); returns the
    /// receive counts of those SQS took back.
    pub(crate) async fn give_back_all(&self) -> Vec<u32> {
        let mut returned = Vec::new();
        let all: Vec<Lease> = self.lock().drain().map(|(_, l)| l).collect();
        let _serial = self.visibility_calls.lock().await;
        for chunk in all.chunks(SQS_BATCH) {
            let entries: Vec<(&str, Duration)> = chunk
                .iter()
                .map(|l| (l.receipt.as_str(), Duration::ZERO))
                .collect();
            match self.queue.set_visibility(&entries).await {
                Ok(outcomes) => {
                    for (lease, outcome) in chunk.iter().zip(outcomes) {
                        match outcome {
                            Ok(()) => {
                                returned.push(lease.receive_count);
                                tracing::info!("{} - Returned to the queue", lease.id);
                            }
                            Err(why) => tracing::warn!(
                                "{} - Could not return it to the queue: {why}",
                                lease.id
                            ),
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    "Could not return {} messages to the queue ({e}); they come back within the visibility timeout",
                    chunk.len()
                ),
            }
        }
        returned
    }

    /// Deletes a message whose job succeeded, retrying transient failures; the hold ends either
    /// way.
    pub(crate) async fn delete(&self, lease: LeaseId) -> Result<(), DeleteError> {
        let (reply, answer) = oneshot::channel();
        if self
            .deletes
            .send(DeleteRequest { lease, reply })
            .await
            .is_err()
        {
            self.lock().remove(&lease);
            return Err(DeleteError::GaveUp("the deleter has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(DeleteError::GaveUp("the deleter has stopped".into())))
    }

    /// The permanent error deletes fail with, while they do (a delete call that works clears it).
    pub(crate) fn deletes_failing(&self) -> Option<SqsError> {
        crate::lock(&self.failing_for_good).clone()
    }

    /// Records the outcome of a delete call: `Some(permanent error)` or `None` (it worked).
    /// Returns the error it replaces.
    fn set_failing(&self, error: Option<SqsError>) -> Option<SqsError> {
        let mut slot = crate::lock(&self.failing_for_good);
        std::mem::replace(&mut *slot, error)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Lease>> {
        crate::lock(&self.held)
    }

    /// The receipts of `leases` that are still held.
    fn receipts(&self, leases: &[LeaseId]) -> Vec<Option<Lease>> {
        let held = self.lock();
        leases.iter().map(|l| held.get(l).cloned()).collect()
    }
}

/// What an operator can do about a delete that fails for good.
fn permanent_hint(error: &SqsError) -> &'static str {
    match error.kind() {
        ErrorKind::NotFound => {
            ". Hint: the queue is gone, or the worker's queue URL (and Region) name another one"
        }
        ErrorKind::AccessDenied => ". Hint: the task role needs sqs:DeleteMessage on the queue",
        _ => "",
    }
}

/// Every third of the visibility timeout, extends every held message by one timeout.
async fn keep(leases: std::sync::Weak<Leases>, mut abandon: watch::Receiver<bool>) {
    loop {
        let period = match leases.upgrade() {
            Some(l) => l.visibility / 3,
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = super::until(&mut abandon) => return,
        }
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let _serial = leases.visibility_calls.lock().await;
        let held: Vec<Lease> = leases.lock().values().cloned().collect();
        for chunk in held.chunks(SQS_BATCH) {
            let entries: Vec<(&str, Duration)> = chunk
                .iter()
                .map(|l| (l.receipt.as_str(), leases.visibility))
                .collect();
            match leases.queue.set_visibility(&entries).await {
                Ok(outcomes) => {
                    for (lease, outcome) in chunk.iter().zip(outcomes) {
                        if let Err(why) = outcome {
                            // Deleted meanwhile, or handed out again after a lapse.
                            tracing::debug!("{} - Visibility not extended: {why}", lease.id);
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    "Could not extend the visibility of {} messages in hand: {e}",
                    chunk.len()
                ),
            }
        }
    }
}

/// Deletes what is asked, batching whatever is waiting (up to 10), retrying a call that failed
/// for a passing reason with back-off (1 s doubling to 15 s) until `abandon`. A permanent failure
/// ([`SqsError::is_permanent`]) ends the batch's holds at once and is logged once per kind.
async fn delete_loop(
    leases: std::sync::Weak<Leases>,
    mut requests: mpsc::Receiver<DeleteRequest>,
    mut abandon: watch::Receiver<bool>,
) {
    let mut batch: Vec<DeleteRequest> = Vec::with_capacity(SQS_BATCH);
    let mut failures = 0u32;
    let mut last_error: Option<SqsError> = None;
    loop {
        if batch.is_empty() {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(r) => batch.push(r),
                    None => return,
                },
                _ = super::until(&mut abandon) => return,
            }
        }
        while batch.len() < SQS_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let keys: Vec<LeaseId> = batch.iter().map(|r| r.lease).collect();
        let held = leases.receipts(&keys);
        let receipts: Vec<&str> = held.iter().flatten().map(|l| l.receipt.as_str()).collect();
        let outcome = if receipts.is_empty() {
            Ok(Vec::new())
        } else {
            leases.queue.delete(&receipts).await
        };
        match outcome {
            Ok(outcomes) => {
                let was_failing_for_good = leases.set_failing(None).is_some();
                if failures > 0 || was_failing_for_good {
                    tracing::info!("Deleting messages works again");
                }
                failures = 0;
                last_error = None;
                let mut outcomes = outcomes.into_iter();
                for (request, lease) in batch.drain(..).zip(held) {
                    let result = match lease {
                        Some(_) => outcomes
                            .next()
                            .unwrap_or(Ok(()))
                            .map_err(DeleteError::Refused),
                        None => Err(DeleteError::Refused(
                            "the message was no longer held".into(),
                        )),
                    };
                    leases.lock().remove(&request.lease);
                    let _ = request.reply.send(result);
                }
            }
            Err(error) if error.is_permanent() => {
                failures = 0;
                last_error = None;
                let before = leases.set_failing(Some(error.clone()));
                if before.map(|e| e.kind()) != Some(error.kind()) {
                    tracing::error!(
                        "Cannot delete finished messages: {error}. No retry can fix this: their \
                         jobs end now without holding protection, the messages come back after \
                         their visibility timeout, and /healthz answers 503 until a delete \
                         works{}",
                        permanent_hint(&error)
                    );
                } else {
                    tracing::debug!("Still cannot delete finished messages: {error}");
                }
                for request in batch.drain(..) {
                    leases.lock().remove(&request.lease);
                    let _ = request
                        .reply
                        .send(Err(DeleteError::Permanent(error.clone())));
                }
            }
            Err(error) => {
                failures += 1;
                let delay = retry_delay(
                    failures,
                    Duration::from_secs(1),
                    Duration::from_secs(15),
                    rand::random::<f64>(),
                );
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(
                        "Could not delete {} finished messages: {error}; retrying in {:.1} s",
                        batch.len(),
                        delay.as_secs_f64()
                    );
                }
                last_error = Some(error);
                drop(leases);
                let gave_up = tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    _ = super::until(&mut abandon) => true,
                };
                if gave_up {
                    let why = last_error.map(|e| e.to_string()).unwrap_or_default();
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(DeleteError::GaveUp(why.clone())));
                    }
                    return;
                }
            }
        }
    }
}
