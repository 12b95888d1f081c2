//! The WebSocket server: routes, the shared [`Hub`], and the run/shutdown sequence.
//!
//! * `GET /` the page (embedded in the binary, so it is served whatever the working directory);
//! * `GET /ws` the WebSocket ([`session`]);
//! * `GET /healthz` 200, or 503 while shutting down;
//! * `GET /status` JSON: connections, protection state and expiry, backend, call counters.

pub mod drain;
pub mod session;
pub mod shutdown;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};

use crate::protection::{ProtectionEvent, ProtectionManager, ProtectionStatus};

/// The page, embedded at compile time.
pub const INDEX_HTML: &str = include_str!("../../static/index.html");

/// Told to every client once when ECS rejects protection (as the Node.js sample does).
pub const REJECTED_NOTICE: &str = "server shutting down soon";

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
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4096,
            ping_interval: Duration::from_secs(25),
            queue_messages: 256,
            write_timeout: Duration::from_secs(10),
            read_buffer_bytes: 256,
            chat_per_sec: 20,
        }
    }
}

/// Told to every client once when the server starts draining; the reason follows.
pub const DRAINING_NOTICE: &str = "server draining";

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

/// Why the server is draining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// Human-readable reason, shown in `/status`, the page and the notice.
    pub reason: Arc<str>,
    /// Whether the drain ends by itself when its cause goes away (the drain watcher's
    /// observations); an operator's request does not.
    pub reversible: bool,
}

/// A chat message for the room. Server notices do not go through the room: they follow
/// [`ServerState`], so that each client is told once.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The sender's connection id (not echoed back to it).
    pub from: u64,
    /// The text.
    pub text: Utf8Bytes,
}

/// State shared by every route and session.
pub struct Hub {
    manager: ProtectionManager,
    connections: AtomicUsize,
    idle: Notify,
    next_id: AtomicU64,
    room: broadcast::Sender<Outgoing>,
    state: watch::Sender<ServerState>,
    limits: SessionLimits,
    max_connections: usize,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// WebSocket clients connected now.
    pub connections: usize,
    /// The most allowed at once.
    pub max_connections: usize,
    /// Whether the server is shutting down.
    pub shutting_down: bool,
    /// Whether the server is draining (refusing new clients).
    pub draining: bool,
    /// Why it is draining.
    pub drain_reason: Option<String>,
    /// The protection manager's state.
    pub protection: ProtectionStatus,
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
            next_id: AtomicU64::new(1),
            room,
            state: watch::channel(ServerState::default()).0,
            limits,
            max_connections,
        });
        tokio::spawn(relay_rejections(
            Arc::downgrade(&hub),
            hub.manager.subscribe(),
        ));
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
    /// task and cut every player off). `reversible` drains end by [`end_drain`](Self::end_drain).
    pub fn begin_drain(&self, reason: &str, reversible: bool) {
        let started = self.state.send_if_modified(|s| {
            if s.draining.is_some() {
                return false;
            }
            s.draining = Some(Drain {
                reason: Arc::from(reason),
                reversible,
            });
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
            Some(d) if d.reversible && !s.evicting => {
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
            shutting_down: state.shutting_down,
            draining: state.draining.is_some(),
            drain_reason: state.draining.map(|d| d.reason.to_string()),
            protection: self.manager.status(),
        }
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

    /// Reserves a connection slot, or `None` when full.
    fn reserve(self: &Arc<Self>) -> Option<Slot> {
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

/// One connection's place in the count; dropping it frees the place.
pub struct Slot {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.hub.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hub.idle.notify_waiters();
        }
    }
}

/// Starts a new rejection streak at each first rejection of a protect call, and ends it when
/// protection is set, so that each client is told once per streak.
async fn relay_rejections(
    hub: std::sync::Weak<Hub>,
    mut events: broadcast::Receiver<ProtectionEvent>,
) {
    let mut streaks = 0u64;
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
                attempt: 1,
                ..
            } => {
                streaks += 1;
                hub.state.send_modify(|s| s.rejection_streak = streaks);
            }
            ProtectionEvent::Protected { .. } => {
                hub.state
                    .send_if_modified(|s| std::mem::take(&mut s.rejection_streak) != 0);
            }
            _ => {}
        }
    }
}

/// The router.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/ws", get(upgrade))
        .route("/healthz", get(health))
        .route("/status", get(status))
        .with_state(hub)
}

async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML)).into_response()
}

async fn health(State(hub): State<Arc<Hub>>) -> Response {
    // Draining keeps 200: a failing health check would make ECS stop the task and cut every
    // player off.
    if hub.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn status(State(hub): State<Arc<Hub>>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(hub.status())).into_response()
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> Response {
    {
        let state = hub.state.borrow();
        if state.shutting_down {
            return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
        }
        if let Some(drain) = &state.draining {
            let body = format!("{DRAINING_NOTICE}: {}\n", drain.reason);
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    }
    let Some(slot) = hub.reserve() else {
        tracing::warn!(
            "Refused a client: {} connections is the maximum",
            hub.max_connections
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "server full\n").into_response();
    };
    let limits = &hub.limits;
    ws.read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message_bytes.max(64 * 1024) * 4)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| session::run(socket, slot))
}

/// Serves `listener` until `signal` resolves, then shuts down in order: health 503 and upgrades
/// refused, every client closed with 1001, protection released. Bounded by `timeout`.
pub async fn run(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    signal: impl Future<Output = ()> + Send + 'static,
    timeout: Duration,
) -> std::io::Result<()> {
    let hub_for_signal = Arc::clone(&hub);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let serve =
        axum::serve(listener, router(Arc::clone(&hub))).with_graceful_shutdown(async move {
            signal.await;
            hub_for_signal.begin_shutdown();
            // Keep answering (503 health, refused upgrades) until the clients are closed.
            let _ = closed_rx.await;
        });
    let mut serving = tokio::spawn(async move { serve.await });
    // Wait for the signal to be seen (or the HTTP server to fail), then for the sessions to close.
    let mut state = hub.state.subscribe();
    tokio::select! {
        _ = async { state.wait_for(|s| s.shutting_down).await.is_ok() } => {}
        ended = &mut serving => {
            hub.begin_shutdown();
            let _ = hub.manager.shutdown().await;
            return ended.map_err(std::io::Error::other)?;
        }
    }
    let n = hub.connections();
    tracing::info!("Shutting down: closing {n} client connections and releasing task protection");
    let orderly = tokio::time::timeout(timeout, async {
        hub.wait_for_no_connections().await;
        if let Err(e) = hub.manager.shutdown().await {
            tracing::warn!("Could not release task protection on shutdown: {e}");
        }
    })
    .await;
    // Until here the listener kept answering: health 503, upgrades refused.
    let _ = closed_tx.send(());
    if orderly.is_err() {
        tracing::warn!("Shutdown took longer than {timeout:?}; exiting anyway");
    }
    // The HTTP side ends once its in-flight requests finish; do not wait past the deadline.
    match tokio::time::timeout(Duration::from_secs(1), serving).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::warn!("HTTP server task failed: {join}"),
        Err(_) => tracing::warn!("HTTP connections still open at exit"),
    }
    tracing::info!("Shutdown complete");
    Ok(())
}
