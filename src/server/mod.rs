//! The WebSocket server: routes, the shared [`Hub`], and the run/shutdown sequence.
//!
//! * `GET /` the page (embedded in the binary, so it is served whatever the working directory);
//! * `GET /ws` the WebSocket ([`session`]);
//! * `GET /healthz` 200, or 503 while shutting down;
//! * `GET /status` JSON: connections, protection state and expiry, backend, call counters.

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
    /// Read buffer per connection (tungstenite's default is 128 KiB; a chat line is far smaller).
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
            read_buffer_bytes: 1024,
            chat_per_sec: 20,
        }
    }
}

/// The server's phase, which every session follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving clients.
    Serving,
    /// Shutting down: upgrades refused, health 503, every client closed with 1001.
    ShuttingDown,
}

/// A message for the room: chat from client `from`, or a server notice (`from == 0`).
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The sender's connection id, 0 for the server.
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
    phase: watch::Sender<Phase>,
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
            phase: watch::channel(Phase::Serving).0,
            limits,
            max_connections,
        });
        tokio::spawn(relay_rejections(Arc::clone(&hub)));
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

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Enters the shutting-down phase: health turns 503, upgrades are refused, and every session
    /// closes its client with 1001.
    pub fn begin_shutdown(&self) {
        self.phase.send_replace(Phase::ShuttingDown);
    }

    /// Sends a server notice to every client.
    pub fn notify_all(&self, text: &str) {
        let _ = self.room.send(Outgoing {
            from: 0,
            text: Utf8Bytes::from(text),
        });
    }

    /// The `/status` document.
    pub fn status(&self) -> StatusDoc {
        StatusDoc {
            connections: self.connections(),
            max_connections: self.max_connections,
            shutting_down: self.phase() == Phase::ShuttingDown,
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

/// Tells clients once per failure streak that protection was rejected.
async fn relay_rejections(hub: Arc<Hub>) {
    let mut events = hub.manager.subscribe();
    loop {
        match events.recv().await {
            Ok(ProtectionEvent::Rejected {
                protecting: true,
                attempt: 1,
                ..
            }) => hub.notify_all(REJECTED_NOTICE),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
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
    match hub.phase() {
        Phase::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
        Phase::Serving => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn status(State(hub): State<Arc<Hub>>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(hub.status())).into_response()
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> Response {
    if hub.phase() == Phase::ShuttingDown {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
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
    let mut phase = hub.phase.subscribe();
    tokio::select! {
        _ = async { phase.wait_for(|p| *p == Phase::ShuttingDown).await.is_ok() } => {}
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
