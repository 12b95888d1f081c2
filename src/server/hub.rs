//! The hub: what every route and session of the server shares. It owns the connection count (which
//! drives protection through the [`ProtectionManager`]), the chat room, and the [`ServerState`]
//! that sessions follow (shutdown, drain, rejection notices).
//!
//! Sessions reach it only through their [`Slot`]: join, publish, and watch the state.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};

use super::backplane::{Backplane, BackplaneStatus};
use super::throttle::{Throttle, TokenBucket};
use super::CHAT_PREFIX;
use app_support::metrics::{self, Sample};
use ecs_task_protection::protection::{
    ErrorKind, ProtectionEvent, ProtectionGuard, ProtectionManager, ProtectionStatus,
};

/// Per-connection limits and timings.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest message a client may send (bytes); larger closes it with 1009.
    pub max_message_bytes: usize,
    /// Interval of the server's WebSocket pings; a peer silent for two intervals is dropped.
    pub ping_interval: Duration,
    /// Messages that may wait for one client before it is closed as too slow (1008).
    pub queue_messages: usize,
    /// The longest one write to a client may take before the client is dropped.
    pub write_timeout: Duration,
    /// Read buffer per connection (tungstenite's default is 128 KiB, allocated per connection;
    /// a ping or a chat line is far smaller, and a larger message still fits: tungstenite
    /// reserves a frame's full length before reading it).
    pub read_buffer_bytes: usize,
    /// Chat messages one client may send per second (bursts of twice that); a client that sends
    /// faster is closed (1008) so that it cannot push everyone else out of the room's queue.
    /// 0 means no limit. Pings do not count.
    pub chat_per_sec: u32,
    /// Chat deliveries (one message to one client) the whole room may make per second, with a
    /// one-second burst: a message to N other clients costs N. A message the budget cannot pay
    /// for is dropped and its sender told. This bounds what one sender can make the server send
    /// (one message in, thousands out), whatever the number of clients. 0 means no limit.
    pub room_deliveries_per_sec: u32,
}

impl SessionLimits {
    /// The defaults (also the defaults of the settings in `config`).
    pub const DEFAULT: SessionLimits = SessionLimits {
        max_message_bytes: 4096,
        ping_interval: Duration::from_secs(25),
        queue_messages: 256,
        write_timeout: Duration::from_secs(10),
        read_buffer_bytes: 256,
        chat_per_sec: 20,
        room_deliveries_per_sec: 200_000,
    };
}

impl SessionLimits {
    /// The most bytes waiting to be written to one client (frames its socket has not taken yet,
    /// pongs included): one largest message, one notice and the pongs for a few pings. A client
    /// that stops reading reaches it and is dropped, instead of pinning memory until the write
    /// timeout.
    pub(crate) fn max_write_buffer_bytes(&self) -> usize {
        self.max_message_bytes + 4 * 1024
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What every session follows, through a watch channel: each session acts once on each change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerState {
    /// Shutting down: upgrades refused, health 503, every client closed with 1001.
    pub shutting_down: bool,
    /// Draining, and why: new clients are refused (503), connected ones are told once and kept
    /// until they leave; protection is released as soon as the last one leaves.
    pub draining: Option<Drain>,
    /// The drain deadline passed: the remaining clients are closed with 1001.
    pub evicting: bool,
    /// Id of the current streak of protection rejections (0: none). Each streak is told to every
    /// client once.
    pub rejection_streak: u64,
}

pub use ecs_task_protection::ecs::drain_watch::{Drain, DrainKind};

/// A chat message in the room. Server notices do not go through the room: they follow
/// [`ServerState`], so that each client is told once.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    /// The sender's connection id (not echoed back to it); 0 for chat from another task.
    from: u64,
    /// The text.
    pub(super) text: Utf8Bytes,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// WebSocket clients connected now.
    pub connections: usize,
    /// The most allowed at once.
    pub max_connections: usize,
    /// HTTP connections open now that have not upgraded to a WebSocket (page loads, health
    /// checks, idle sockets).
    pub http_connections: usize,
    /// Whether the server is shutting down.
    pub shutting_down: bool,
    /// Whether the server is draining (refusing new clients).
    pub draining: bool,
    /// Why it is draining.
    pub drain_reason: Option<String>,
    /// Chat messages dropped since start-up because the room's budget was spent.
    pub chat_dropped: u64,
    /// The chat backplane: `backplane`, `backplane_dropped`, `fleet_connections`.
    #[serde(flatten)]
    pub backplane: BackplaneStatus,
    /// The protection manager's state.
    pub protection: ProtectionStatus,
}

/// State shared by every route and session.
pub struct Hub {
    manager: ProtectionManager,
    /// Clients connected now (slots reserved). Each session holds a protection guard as well;
    /// this count is what `/status`, the welcome and `MAX_CONNECTIONS` use.
    connections: AtomicUsize,
    /// Notified when the count reaches zero (shutdown waits for it).
    idle: Notify,
    /// HTTP connections that have not upgraded to a WebSocket (set by the listener).
    http_connections: AtomicUsize,
    next_id: AtomicU64,
    /// The chat room: one bounded broadcast ring for all sessions.
    room: broadcast::Sender<Outgoing>,
    /// The room's delivery budget.
    room_budget: Mutex<TokenBucket>,
    /// Chat messages dropped because the room's budget was spent.
    chat_dropped: AtomicU64,
    /// Chat messages relayed to the room.
    chat_sent: AtomicU64,
    state: watch::Sender<ServerState>,
    limits: SessionLimits,
    max_connections: usize,
    /// One warning per period for refused upgrades (a full server, a foreign origin).
    pub(super) refusals: Throttle,
    /// One warning per period for chat dropped by the room's budget.
    room_busy: Throttle,
    /// Chat across tasks, when `CHAT_BACKPLANE_URL` is set.
    backplane: OnceLock<Backplane>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connections())
            .field("max_connections", &self.max_connections())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose connection count drives `manager`.
    pub fn new(
        manager: ProtectionManager,
        limits: SessionLimits,
        max_connections: usize,
    ) -> Arc<Self> {
        let (room, _) = broadcast::channel(limits.queue_messages.max(1));
        let hub = Arc::new(Self {
            manager,
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            http_connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            room,
            room_budget: Mutex::new(TokenBucket::new(
                f64::from(limits.room_deliveries_per_sec),
                1.0,
            )),
            chat_dropped: AtomicU64::new(0),
            chat_sent: AtomicU64::new(0),
            state: watch::channel(ServerState::default()).0,
            limits,
            max_connections,
            refusals: Throttle::new(Duration::from_secs(10)),
            room_busy: Throttle::new(Duration::from_secs(10)),
            backplane: OnceLock::new(),
        });
        ecs_task_protection::supervise::spawn_may_end(
            "rejection relay",
            relay_rejections(Arc::downgrade(&hub), hub.manager.subscribe()),
        );
        hub
    }

    /// The protection manager.
    pub fn manager(&self) -> &ProtectionManager {
        &self.manager
    }

    /// Clients connected now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state.borrow().clone()
    }

    /// A look at the current state without copying it (hold it briefly: it blocks changes).
    pub(super) fn borrow_state(&self) -> watch::Ref<'_, ServerState> {
        self.state.borrow()
    }

    /// A receiver that sees every change of the state.
    pub fn watch_state(&self) -> watch::Receiver<ServerState> {
        self.state.subscribe()
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.state.borrow().shutting_down
    }

    /// Enters shutdown: health turns 503, upgrades are refused, and every session closes its
    /// client with 1001.
    pub fn begin_shutdown(&self) {
        self.state
            .send_if_modified(|s| !std::mem::replace(&mut s.shutting_down, true));
    }

    /// Starts draining for `reason` (a no-op if already draining): new upgrades get 503, every
    /// client is told once, and protection is released as soon as the last client leaves,
    /// skipping the hold-over. Health stays 200 (a failing health check would make ECS stop the
    /// task and cut every player off). `reversible` drains end by [`end_drain`](Self::end_drain);
    /// both kinds are bounded by the drain deadline ([`DrainKind`]).
    pub fn begin_drain(&self, reason: &str, reversible: bool) {
        let kind = if reversible {
            DrainKind::Reversible
        } else {
            DrainKind::Final
        };
        self.begin_drain_as(reason, kind);
    }

    /// Starts draining for `reason` as [`begin_drain`](Self::begin_drain) does, with the kind
    /// given. Already draining, a drain of another kind replaces the current one unless the
    /// current one is [`DrainKind::Final`] (a deployment that begins during a scale-in drain
    /// brings its deadline; a scale-in drain after a deployment's lifts it); clients are told the
    /// new cause.
    pub fn begin_drain_as(&self, reason: &str, kind: DrainKind) {
        let started = self.state.send_if_modified(|s| {
            if !Drain::starts(s.draining.as_ref(), kind) {
                return false;
            }
            s.draining = Some(Drain::new(reason, kind));
            true
        });
        if started {
            tracing::warn!(
                "Draining: {reason}. New clients are refused; protection is released when the last of {} leaves",
                self.connections()
            );
            self.manager.set_skip_hold_over(true);
        }
    }

    /// Ends a reversible drain whose cause went away; an operator's drain stays.
    pub fn end_drain(&self) {
        let ended = self.state.send_if_modified(|s| match &s.draining {
            Some(d) if d.reversible() && !s.evicting => {
                s.draining = None;
                true
            }
            _ => false,
        });
        if ended {
            tracing::info!("No longer draining: accepting new clients again");
            self.manager.set_skip_hold_over(false);
        }
    }

    /// Closes every remaining client with 1001 (the drain deadline passed).
    pub fn evict_all(&self) {
        self.state
            .send_if_modified(|s| !std::mem::replace(&mut s.evicting, true));
    }

    /// The `/status` document.
    pub fn status(&self) -> StatusDoc {
        let state = self.state();
        StatusDoc {
            connections: self.connections(),
            max_connections: self.max_connections,
            http_connections: self.http_connections.load(Ordering::Relaxed),
            shutting_down: state.shutting_down,
            draining: state.draining.is_some(),
            drain_reason: state.draining.map(|d| d.public_reason().to_string()),
            chat_dropped: self.chat_dropped.load(Ordering::Relaxed),
            backplane: self
                .backplane
                .get()
                .map_or_else(BackplaneStatus::off, |b| b.status(self.connections())),
            protection: self.manager.status(),
        }
    }

    /// The server's numbers for [`app_support::metrics`]: `Connections`, `HttpConnections`,
    /// `ChatMessages`, `ChatDropped`, with a backplane `BackplaneConnected`, `BackplaneDropped`
    /// and `BackplaneRefused`, and the protection manager's.
    pub fn metrics(&self) -> Vec<Sample> {
        let mut samples = vec![
            Sample::gauge(
                "Connections",
                "connections",
                "WebSocket clients connected to this task",
                self.connections() as f64,
            ),
            Sample::gauge(
                "HttpConnections",
                "http_connections",
                "HTTP connections that have not upgraded to a WebSocket",
                self.http_connections.load(Ordering::Relaxed) as f64,
            ),
            Sample::counter(
                "ChatMessages",
                "chat_messages",
                "Chat messages relayed to the room (this task's clients', and other tasks' through a backplane)",
                self.chat_sent.load(Ordering::Relaxed),
            ),
            Sample::counter(
                "ChatDropped",
                "chat_dropped",
                "Chat messages dropped because the room's delivery budget was spent",
                self.chat_dropped.load(Ordering::Relaxed),
            ),
        ];
        if let Some(backplane) = self.backplane.get() {
            let status = backplane.status(self.connections());
            samples.push(Sample::gauge(
                "BackplaneConnected",
                "backplane_connected",
                "1 while the chat backplane is connected, else 0",
                f64::from(u8::from(status.backplane == "connected")),
            ));
            samples.push(Sample::counter(
                "BackplaneDropped",
                "backplane_dropped",
                "Chat messages that did not reach the other tasks",
                status.backplane_dropped,
            ));
            samples.push(Sample::counter(
                "BackplaneRefused",
                "backplane_refused",
                "Chat messages from other tasks refused here (longer than MAX_MESSAGE_BYTES, or over the budget for remote chat)",
                status.backplane_refused,
            ));
        }
        samples.extend(metrics::protection_samples(&self.manager.status()));
        samples
    }

    /// Waits until no client is connected.
    pub async fn wait_for_no_connections(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.connections() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The per-connection limits.
    pub(super) fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Records how many HTTP connections have not upgraded (the listener's count).
    /// Where an [`HttpPool`](app_support::listener::HttpPool) reports its count of connections
    /// that have not upgraded, for `/status` and the metrics.
    pub fn http_connections_report(self: &Arc<Self>) -> app_support::listener::CountReport {
        let hub = Arc::downgrade(self);
        Arc::new(move |n| {
            if let Some(hub) = hub.upgrade() {
                hub.set_http_connections(n);
            }
        })
    }

    pub(super) fn set_http_connections(&self, n: usize) {
        self.http_connections.store(n, Ordering::Relaxed);
    }

    /// The most clients allowed at once.
    pub(super) fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Links the room to other tasks' rooms (once; a second backplane is ignored).
    pub(super) fn set_backplane(&self, backplane: Backplane) {
        let _ = self.backplane.set(backplane);
    }

    /// Relays chat that a client of another task sent (through the backplane) to every client
    /// here, if the room's budget can pay for it; it is dropped and counted otherwise. The link
    /// has already applied this task's rules to it (its length, the budget for remote chat).
    pub(super) fn deliver_remote(&self, text: &str) {
        let recipients = self.connections();
        if recipients > 0 {
            let _ = self.relay(0, text, recipients);
        }
    }

    /// Relays `text` from connection `from` (0: another task) to the room as chat
    /// ([`CHAT_PREFIX`]), if the room's budget can pay for its `recipients`; returns the line
    /// sent, or `None` if it was dropped (and counted).
    fn relay(&self, from: u64, text: &str, recipients: usize) -> Option<Utf8Bytes> {
        let paid = {
            let mut budget = self.room_budget.lock().unwrap_or_else(|e| e.into_inner());
            budget.take(recipients as f64)
        };
        if !paid {
            let dropped = self.chat_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(suppressed) = self.room_busy.allow() {
                tracing::warn!(
                    "Chat room budget spent: dropped a message to {recipients} clients ({dropped} dropped since start-up){}",
                    Throttle::suppressed_note(suppressed)
                );
            }
            return None;
        }
        let mut line = String::with_capacity(CHAT_PREFIX.len() + text.len());
        line.push_str(CHAT_PREFIX);
        line.push_str(text);
        let line = Utf8Bytes::from(line);
        let _ = self.room.send(Outgoing {
            from,
            text: line.clone(),
        });
        self.chat_sent.fetch_add(1, Ordering::Relaxed);
        Some(line)
    }

    /// Reserves a connection slot, or `None` when full.
    pub(super) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot {
            hub: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// One connection's place in the count, and the session's only way to the hub. Dropping it frees
/// the place.
pub(super) struct Slot {
    hub: Arc<Hub>,
    id: u64,
}

/// What a session follows once it has joined.
pub(super) struct Joined {
    /// Its claim on protection, held while the session lives.
    pub(super) protection: ProtectionGuard,
    /// The chat room.
    pub(super) room: broadcast::Receiver<Outgoing>,
    /// The server's state.
    pub(super) state: watch::Receiver<ServerState>,
}

impl Slot {
    /// Joins: takes a claim on protection and subscribes to the room and the server state.
    pub(super) fn join(&self) -> Joined {
        Joined {
            protection: self.hub.manager.guard(),
            room: self.hub.room.subscribe(),
            state: self.hub.state.subscribe(),
        }
    }

    /// Sends `text` to every other client in the room, as chat ([`CHAT_PREFIX`]), if the room's
    /// budget can pay for it; `false` if it was dropped. Nobody listening is fine: the sender may
    /// be alone. With a backplane, a paid message also goes to the other tasks.
    pub(super) fn publish(&self, text: &str) -> bool {
        let recipients = self.hub.connections().saturating_sub(1);
        let Some(line) = self.hub.relay(self.id, text, recipients) else {
            return false;
        };
        if let Some(backplane) = self.hub.backplane.get() {
            // Never waits: a full queue or a backplane that is down drops it (and counts it).
            backplane.offer(&line);
        }
        true
    }

    /// Whether `message` came from this slot's own client.
    pub(super) fn is_own(&self, message: &Outgoing) -> bool {
        message.from == self.id
    }

    /// Clients connected now.
    pub(super) fn connections(&self) -> usize {
        self.hub.connections()
    }

    /// The per-connection limits.
    pub(super) fn limits(&self) -> &SessionLimits {
        &self.hub.limits
    }

    /// Frees the place; returns how many clients are left.
    pub(super) fn leave(self) -> usize {
        let hub = Arc::clone(&self.hub);
        drop(self);
        hub.connections()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.hub.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hub.idle.notify_waiters();
        }
    }
}

/// Starts a new rejection streak at the first rejection of a protect call that means trouble for
/// this task, and ends it when protection is set, so that each client is told once per streak.
/// `DEPLOYMENT_BLOCKED` is not such a rejection: it is a condition of the whole service, and
/// whether this task is the one ECS wants gone is the drain watcher's call, so clients are not
/// told the server is going away, and new ones keep being admitted.
async fn relay_rejections(hub: Weak<Hub>, mut events: broadcast::Receiver<ProtectionEvent>) {
    let mut streaks = 0u64;
    let mut told = false;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        match event {
            ProtectionEvent::Rejected {
                protecting: true,
                error,
                ..
            } if !told && error.kind != ErrorKind::Blocked => {
                told = true;
                streaks += 1;
                hub.state.send_modify(|s| s.rejection_streak = streaks);
            }
            ProtectionEvent::Protected { .. } => {
                told = false;
                hub.state
                    .send_if_modified(|s| std::mem::take(&mut s.rejection_streak) != 0);
            }
            _ => {}
        }
    }
}
