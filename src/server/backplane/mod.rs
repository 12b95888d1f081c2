//! Chat across tasks (`CHAT_BACKPLANE_URL`): every task publishes its clients' chat to one
//! Redis/Valkey pub/sub channel and relays what the other tasks publish to its own clients.
//!
//! * [`url`]: the setting, checked at start-up;
//! * [`frame`]: what travels on the channel (the origin task's id and the text);
//! * `inbound`: the rules other tasks' chat obeys here (this task's `MAX_MESSAGE_BYTES`, and a
//!   budget of its own);
//! * `fleet`: the per-task connection counts in the [`FLEET_KEY`] hash, and which to believe;
//! * `link`: the one task that talks to the backplane: connects, subscribes, publishes,
//!   refreshes this task's connection count, and reconnects with [`backoff`] when it is lost;
//! * this module: the [`Backplane`] handle the hub keeps, what `/status` shows of it, and the
//!   per-task counts ([`TaskCounts`]) for whoever wants them (the drain watcher).
//!
//! Sessions never wait on the backplane: [`Backplane::offer`] puts a message on a bounded queue
//! (`try_send`) and drops it, counted, when the queue is full or the backplane is down. Local chat
//! does not go through it at all, so it goes on whatever the backplane does.

pub mod backoff;
mod fleet;
pub mod frame;
mod inbound;
mod link;
pub mod url;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use fleet::{MAX_TASK_CONNECTIONS, MAX_VALIDITY};

use super::Hub;
pub use url::{BackplaneUrl, UrlError};

/// The pub/sub channel every task publishes its clients' chat to.
pub const CHANNEL: &str = "ecs-task-protection:chat";

/// The hash where each task keeps its connection count: one field per task, named by its task id,
/// holding `"<count> <expires unix ms>"` (see the `fleet` module).
pub const FLEET_KEY: &str = "ecs-task-protection:connections";

/// The latest connection count of every task of the fleet, by task id (the task ARN's last part,
/// as [`origin_from_task_arn`] gives it; a random `local-…` id outside ECS), this task's own
/// included, as of the last refresh (every `CHAT_BACKPLANE_REFRESH_SECS`). Only counts that are
/// believed are in it: expired ones (a task that stopped refreshing) and absurd ones (more than
/// [`MAX_TASK_CONNECTIONS`], or an expiry more than [`MAX_VALIDITY`] ahead) are not. Empty while
/// the counts are unknown: before the first refresh, while the backplane is unreachable, and
/// while the count command fails.
///
/// Reading it is cheap (`borrow()` clones nothing); `changed()` wakes at each refresh. For the
/// drain watcher's `TaskLoads`: `Arc::new(move || counts.borrow().as_ref().clone())`.
pub type TaskCounts = watch::Receiver<Arc<BTreeMap<String, u64>>>;

/// How the backplane is reached and used.
#[derive(Debug, Clone)]
pub struct BackplaneSettings {
    /// Where the backplane is.
    pub url: BackplaneUrl,
    /// This task's id on the channel (the task ARN's id in ECS, else random).
    pub origin: String,
    /// How often this task refreshes its connection count and reads the others'; a count not
    /// refreshed for three times this long is no longer counted.
    pub refresh: Duration,
    /// Messages that may wait to be published; more are dropped (and counted).
    pub queue_messages: usize,
}

impl BackplaneSettings {
    /// The default refresh interval (also the setting's default).
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
    /// The longest refresh interval (the setting's upper bound). Every task stamps its count
    /// valid for three intervals, so no count is valid for longer than three of these.
    pub const MAX_REFRESH: Duration = Duration::from_secs(300);
    /// The default publish queue (the setting has none: 1,024 is a few seconds of a busy room).
    pub const DEFAULT_QUEUE: usize = 1024;

    /// Settings with the defaults for `url`, and a random id for this process.
    pub fn new(url: BackplaneUrl) -> Self {
        Self {
            url,
            origin: random_origin(),
            refresh: Self::DEFAULT_REFRESH,
            queue_messages: Self::DEFAULT_QUEUE,
        }
    }
}

/// A random id for a process that does not know its task ARN.
pub fn random_origin() -> String {
    format!("local-{:016x}", rand::random::<u64>())
}

/// The id of a task from its ARN (`arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID` → `ID`).
pub fn origin_from_task_arn(arn: &str) -> Option<String> {
    let id = arn.rsplit('/').next()?.trim();
    (!id.is_empty() && arn.contains(":task/")).then(|| id.to_string())
}

/// What the link and the hub share.
#[derive(Debug)]
struct Shared {
    /// Whether the link is connected and subscribed now.
    connected: AtomicBool,
    /// Messages that did not reach the backplane (queue full, backplane down, publish failed).
    dropped: AtomicU64,
    /// Messages from other tasks refused here (too long, or over the remote chat budget).
    refused: AtomicU64,
    /// The other tasks' connections at the last refresh, or [`UNKNOWN`].
    others: AtomicI64,
    /// Every task's count at the last refresh (empty while unknown).
    counts: watch::Sender<Arc<BTreeMap<String, u64>>>,
}

/// `Shared::others` before the first refresh, while disconnected, and while the count fails.
const UNKNOWN: i64 = -1;

impl Shared {
    /// Nothing known yet.
    fn new() -> Self {
        Self {
            connected: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            others: AtomicI64::new(UNKNOWN),
            counts: watch::Sender::new(Arc::default()),
        }
    }

    /// Records a refresh: every believed count by task id, this task's (`origin`) included.
    fn set_counts(&self, origin: &str, counts: BTreeMap<String, u64>) {
        let others = counts
            .iter()
            .filter(|(task, _)| task.as_str() != origin)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
        self.others
            .store(i64::try_from(others).unwrap_or(i64::MAX), Ordering::Release);
        self.counts.send_replace(Arc::new(counts));
    }

    /// The counts are unknown (disconnected, or the count failed).
    fn forget_counts(&self) {
        self.others.store(UNKNOWN, Ordering::Release);
        self.counts.send_if_modified(|counts| {
            let had = !counts.is_empty();
            *counts = Arc::default();
            had
        });
    }
}

/// The hub's handle on the backplane: a bounded queue to the link, and the link's state.
#[derive(Debug)]
pub struct Backplane {
    queue: mpsc::Sender<Utf8Bytes>,
    shared: Arc<Shared>,
}

/// What `/status` shows of the backplane (flattened into the document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackplaneStatus {
    /// `off` (no `CHAT_BACKPLANE_URL`), `connected` or `disconnected`.
    pub backplane: &'static str,
    /// Chat messages that did not reach the other tasks since start-up (queue full, backplane
    /// down, publish failed).
    pub backplane_dropped: u64,
    /// Chat messages from other tasks refused here since start-up: longer than this task's
    /// `MAX_MESSAGE_BYTES`, or over the budget for remote chat.
    pub backplane_refused: u64,
    /// Clients connected to every task of the fleet (this one's count now plus the others' at the
    /// last refresh); `null` without a backplane, or while their counts are unknown.
    pub fleet_connections: Option<u64>,
}

impl BackplaneStatus {
    /// No backplane.
    pub fn off() -> Self {
        Self {
            backplane: "off",
            backplane_dropped: 0,
            backplane_refused: 0,
            fleet_connections: None,
        }
    }
}

impl Backplane {
    /// Offers a chat line (with [`CHAT_PREFIX`](super::CHAT_PREFIX)) to the other tasks. Never
    /// waits: when the backplane is down or the queue is full, the line is dropped and counted.
    pub fn offer(&self, line: &Utf8Bytes) {
        if !self.shared.connected.load(Ordering::Acquire)
            || self.queue.try_send(line.clone()).is_err()
        {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The backplane's part of `/status`, with `here` clients on this task.
    pub fn status(&self, here: usize) -> BackplaneStatus {
        let connected = self.shared.connected.load(Ordering::Acquire);
        let others = self.shared.others.load(Ordering::Acquire);
        BackplaneStatus {
            backplane: if connected {
                "connected"
            } else {
                "disconnected"
            },
            backplane_dropped: self.shared.dropped.load(Ordering::Relaxed),
            backplane_refused: self.shared.refused.load(Ordering::Relaxed),
            fleet_connections: (connected && others >= 0).then(|| others as u64 + here as u64),
        }
    }
}

/// Links `hub`'s room to the other tasks' through the backplane: spawns the link, which connects
/// in the background (a backplane that is down at start-up does not stop the server; local chat
/// works meanwhile). Logs where it connects, without credentials. Returns every task's latest
/// connection count ([`TaskCounts`]), for whoever wants it.
pub fn start(hub: &Arc<Hub>, settings: BackplaneSettings) -> TaskCounts {
    let (queue, receiver) = mpsc::channel(settings.queue_messages.max(1));
    let shared = Arc::new(Shared::new());
    let counts = shared.counts.subscribe();
    tracing::info!(
        "Chat backplane: {} (channel {CHANNEL}, this task {}); connecting in the background",
        settings.url,
        settings.origin
    );
    ecs_task_protection::supervise::spawn(
        "chat backplane link",
        link::run(Arc::downgrade(hub), settings, Arc::clone(&shared), receiver),
    );
    hub.set_backplane(Backplane { queue, shared });
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_the_task_arns_id_when_there_is_one() {
        assert_eq!(
            origin_from_task_arn("arn:aws:ecs:us-east-1:123456789012:task/demo/0123abcd")
                .as_deref(),
            Some("0123abcd")
        );
        assert_eq!(origin_from_task_arn("not-an-arn"), None);
        assert_eq!(
            origin_from_task_arn("arn:aws:ecs:us-east-1:1:task/demo/"),
            None
        );
        assert_ne!(random_origin(), random_origin());
    }

    #[test]
    fn status_is_unknown_until_connected_and_counted() {
        let (queue, _rx) = mpsc::channel(1);
        let shared = Arc::new(Shared::new());
        let b = Backplane {
            queue,
            shared: Arc::clone(&shared),
        };
        let line = Utf8Bytes::from_static("chat: hi");
        b.offer(&line);
        assert_eq!(
            b.status(3),
            BackplaneStatus {
                backplane: "disconnected",
                backplane_dropped: 1,
                backplane_refused: 0,
                fleet_connections: None
            }
        );
        shared.connected.store(true, Ordering::Release);
        assert_eq!(b.status(3).fleet_connections, None);
        shared.set_counts(
            "me",
            BTreeMap::from([("me".into(), 3), ("b".into(), 10), ("c".into(), 4)]),
        );
        assert_eq!(b.status(3).fleet_connections, Some(17));
        b.offer(&line); // queued
        b.offer(&line); // the queue (1) is full: dropped
        assert_eq!(b.status(3).backplane_dropped, 2);
    }

    #[test]
    fn task_counts_follow_each_refresh_and_are_empty_while_unknown() {
        let shared = Shared::new();
        let mut counts = shared.counts.subscribe();
        assert!(counts.borrow_and_update().is_empty());
        let fleet = BTreeMap::from([("me".to_string(), 2), ("b".to_string(), 5)]);
        shared.set_counts("me", fleet.clone());
        assert!(counts.has_changed().unwrap());
        assert_eq!(**counts.borrow_and_update(), fleet);
        assert_eq!(shared.others.load(Ordering::Acquire), 5);
        shared.forget_counts();
        assert!(counts.borrow_and_update().is_empty());
        assert_eq!(shared.others.load(Ordering::Acquire), UNKNOWN);
        // Forgetting what is already unknown wakes nobody.
        shared.forget_counts();
        assert!(!counts.has_changed().unwrap());
    }
}
