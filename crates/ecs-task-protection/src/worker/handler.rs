//! The job handler API: what a queue worker runs for each message, and what it answers.
//!
//! A worker is built around a [`Handler`]: an async function of a [`Job`] (or a type that
//! implements the trait) returning an [`Outcome`]:
//!
//! * [`Outcome::Done`]: the message is deleted;
//! * [`Outcome::RetryAfter`]: the message becomes visible again after that delay (a visibility
//!   change), for another worker or this one;
//! * [`Outcome::Failed`]: the job failed; the message is retried with back-off (visible again
//!   after a delay that grows with its receive count) until the queue's redrive policy moves it
//!   to the dead-letter queue. A handler that panics has failed the same way.
//!
//! A handler may also [`check`](Handler::check) a message before the worker takes protection for
//! it: a body that cannot be a job is refused at once, like a failure but without protecting the
//! task or waiting for anything.
//!
//! While a handler runs, its task stays protected from scale-in and its message stays hidden from
//! other workers. [`Job::cancelled`] resolves when the job should stop: the worker is shutting
//! down, a drain deadline passed, or the job's own timeout expired; the message then goes back to
//! the queue whatever the handler answers.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;

/// Why a running job is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The worker is shutting down (SIGTERM) and its shutdown timeout passed.
    Shutdown,
    /// The worker is draining and the drain deadline passed.
    DrainDeadline,
    /// The job ran longer than its timeout.
    Timeout,
}

/// One message to work on, as SQS delivered it.
#[derive(Debug, Clone)]
pub struct Job {
    body: String,
    message_id: String,
    receive_count: u32,
    attributes: HashMap<String, String>,
    group_id: Option<String>,
    sent_at: Option<SystemTime>,
    cancel: watch::Receiver<Option<CancelReason>>,
    stopping: watch::Receiver<bool>,
}

impl Job {
    /// A job with this body and message ID, received once, with no attributes, group or sent
    /// time, that is never cancelled (the worker builds its jobs itself; this and the `with_*`
    /// setters are for a handler's own tests).
    pub fn new(body: impl Into<String>, message_id: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            message_id: message_id.into(),
            receive_count: 1,
            attributes: HashMap::new(),
            group_id: None,
            sent_at: None,
            cancel: watch::channel(None).1,
            stopping: watch::channel(false).1,
        }
    }

    /// With this receive count (`ApproximateReceiveCount`: 1 on the first delivery).
    pub fn with_receive_count(mut self, count: u32) -> Self {
        self.receive_count = count;
        self
    }

    /// With this message attribute (a string or number attribute's value).
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// With this FIFO message group ID.
    pub fn with_group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// With this time the message was sent (`SentTimestamp`).
    pub fn with_sent_at(mut self, sent_at: SystemTime) -> Self {
        self.sent_at = Some(sent_at);
        self
    }

    /// With a cancellation signal: the job is cancelled once `cancel` holds a reason.
    pub fn with_cancel(mut self, cancel: watch::Receiver<Option<CancelReason>>) -> Self {
        self.cancel = cancel;
        self
    }

    /// A job as the worker received it (its body and attributes moved, not copied).
    pub(super) fn received(
        message: super::queue::Received,
        cancel: watch::Receiver<Option<CancelReason>>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            body: message.body,
            message_id: message.id,
            receive_count: message.receive_count,
            attributes: message.attributes,
            group_id: message.group_id,
            sent_at: message.sent_at,
            cancel,
            stopping,
        }
    }

    /// With a stopping signal: the worker is stopping once `stopping` holds `true`.
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Whether the worker has begun shutting down (see [`stopping`](Self::stopping)).
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once the worker begins shutting down (SIGTERM), never before. The job may still
    /// finish: it is [`cancelled`](Self::cancelled) only when the shutdown timeout has passed. A
    /// job that can stop early and cleanly (checkpoint, or pass the signal on, as the command
    /// handler does with SIGTERM to its child) should.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.clone();
        if stopping.wait_for(|s| *s).await.is_err() {
            // The sender is gone without a shutdown: never.
            std::future::pending::<()>().await;
        }
    }

    /// The message body.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The SQS message ID (stable across deliveries).
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// How many times SQS has delivered this message (1 the first time).
    pub fn receive_count(&self) -> u32 {
        self.receive_count
    }

    /// A message attribute's value (string and number attributes).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// Every message attribute (string and number attributes), by name.
    pub fn attributes(&self) -> &HashMap<String, String> {
        &self.attributes
    }

    /// The message group ID, on a FIFO queue.
    pub fn group_id(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    /// When the message was sent, when SQS says.
    pub fn sent_at(&self) -> Option<SystemTime> {
        self.sent_at
    }

    /// Why the job is cancelled, once it is.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        *self.cancel.borrow()
    }

    /// Resolves once the job is cancelled (never, for a job that is not), with the reason. Use it
    /// in a `tokio::select!` beside the work, to stop early and clean up.
    pub async fn cancelled(&self) -> CancelReason {
        let mut cancel = self.cancel.clone();
        loop {
            if let Some(reason) = *cancel.borrow_and_update() {
                return reason;
            }
            if cancel.changed().await.is_err() {
                // The sender is gone without a reason: never cancelled.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What a handler answers for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The job is done: delete the message.
    Done,
    /// Try again after this delay: the message becomes visible again then (SQS allows at most
    /// 12 hours).
    RetryAfter(Duration),
    /// The job failed, for this reason: retried with back-off until the queue's redrive policy
    /// moves the message to the dead-letter queue.
    Failed(String),
}

/// What a worker runs for each message. Implemented for any `Fn(Job) -> impl Future<Output =
/// Outcome>` that is `Send + Sync + 'static`.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs the job and says what became of it.
    async fn handle(&self, job: Job) -> Outcome;

    /// A quick look at a message as it is received, before the worker takes protection for it
    /// or waits for anything: `Err(reason)` when it cannot be a job (say, an unreadable body).
    /// The message is then treated like a [`Outcome::Failed`] job (logged with its message ID,
    /// not deleted, visible again after a back-off, until the redrive policy takes it), without
    /// protecting the task and without calling [`handle`](Handler::handle). It must not block.
    /// Accepts everything unless implemented.
    ///
    /// # Errors
    ///
    /// Why the message is not a job.
    fn check(&self, job: &Job) -> Result<(), String> {
        let _ = job;
        Ok(())
    }
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    async fn handle(&self, job: Job) -> Outcome {
        self(job).await
    }
}
