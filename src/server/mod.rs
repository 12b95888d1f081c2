//! The WebSocket server: its routes and the run/shutdown sequence. The shared state lives in
//! [`Hub`], one client in `session`, what starts and ends a drain in [`drain`].
//!
//! * `GET /` the page (embedded in the binary, so it is served whatever the working directory);
//! * `GET /ws` the WebSocket;
//! * `GET /healthz` 200, or 503 while shutting down;
//! * `GET /status` JSON: connections, protection state and expiry, backend, call counters, the
//!   chat backplane's state.

pub mod backplane;
pub mod drain;
mod hub;
mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use app_support::listener;
pub use app_support::listener::{HttpLimits, HttpPool};
pub use app_support::origin::AllowedOrigins;
use app_support::throttle;
pub use hub::{Drain, DrainKind, Hub, ServerState, SessionLimits, StatusDoc};

/// The page, embedded at compile time.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// Told to every client once when ECS rejects protection (as the Node.js sample does).
pub const REJECTED_NOTICE: &str = "server shutting down soon";

/// Told to every client once when the server starts draining; the reason follows. Also the close
/// reason when the drain deadline evicts the clients left.
pub const DRAINING_NOTICE: &str = "server draining";

/// What every chat message relayed to the other clients starts with. Nothing the server says of
/// its own starts so, and every relayed message does: a client cannot pass its chat off as a
/// server line (the welcome, a notice).
pub const CHAT_PREFIX: &str = "chat: ";

/// Told to a client whose chat message was dropped because the room's budget
/// (`CHAT_ROOM_DELIVERIES_PER_SEC`) is spent for the moment.
pub const ROOM_BUSY_NOTICE: &str = "server busy: chat message dropped";

/// The close reason (code 1001) and the upgrade refusal while the server shuts down.
const SHUTTING_DOWN: &str = "server shutting down";

/// The router.
fn router(hub: Arc<Hub>, origins: AllowedOrigins) -> Router {
    // The page (16 KB) gzip-compressed for the browsers that ask: about a third of it on the wire,
    // once per player. Only the page: the socket, health and status are left alone.
    let page = get(index).layer(tower_http::compression::CompressionLayer::new());
    Router::new()
        .route("/", page.clone())
        .route("/index.html", page)
        .route("/ws", get(upgrade))
        .route("/healthz", get(health))
        .route("/status", get(status))
        .layer(Extension(Arc::new(origins)))
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

async fn upgrade(
    State(hub): State<Arc<Hub>>,
    Extension(origins): Extension<Arc<AllowedOrigins>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !origins.allows(origin, host) {
        if let Some(suppressed) = hub.refusals.allow() {
            tracing::warn!(
                "Refused a WebSocket from origin {:?} (host {:?}): not in ALLOWED_ORIGINS{}",
                origin.unwrap_or_default(),
                host.unwrap_or_default(),
                throttle::Throttle::suppressed_note(suppressed)
            );
        }
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    {
        let state = hub.borrow_state();
        if state.shutting_down {
            let body = format!("{SHUTTING_DOWN}\n");
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
        if let Some(drain) = &state.draining {
            let body = format!("{DRAINING_NOTICE}: {}\n", drain.public_reason());
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    }
    let Some(slot) = hub.reserve() else {
        if let Some(suppressed) = hub.refusals.allow() {
            tracing::warn!(
                "Refused a client: {} connections is the maximum{}",
                hub.max_connections(),
                throttle::Throttle::suppressed_note(suppressed)
            );
        }
        return (StatusCode::SERVICE_UNAVAILABLE, "server full\n").into_response();
    };
    let limits = hub.limits();
    ws.read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_write_buffer_bytes())
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| session::run(socket, slot))
}

/// Serves `listener` until `signal` resolves, then shuts down in order: health 503 and upgrades
/// refused, every client closed with 1001, protection released. Bounded by `timeout`.
pub async fn run(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    http: HttpLimits,
    signal: impl Future<Output = ()> + Send + 'static,
    timeout: Duration,
) -> std::io::Result<()> {
    let pool = HttpPool::new(http, Some(hub.http_connections_report()));
    run_in(&pool, listener, hub, signal, timeout).await
}

/// [`run`], with the connections that have not upgraded counted in `pool` (shared with the
/// process's other listeners, such as the metrics endpoint) under its limits.
pub async fn run_in(
    pool: &HttpPool,
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    signal: impl Future<Output = ()> + Send + 'static,
    timeout: Duration,
) -> std::io::Result<()> {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let router = router(Arc::clone(&hub), pool.limits().allowed_origins.clone());
    let serving = {
        let pool = pool.clone();
        ecs_task_protection::supervise::spawn("HTTP listener", async move {
            // Keep answering (503 health, refused upgrades) until the clients are closed.
            pool.serve(listener, router, async move {
                let _ = closed_rx.await;
            })
            .await;
        })
    };
    // The signal is awaited here, not in the listener's task: a listener that died must not take
    // the shutdown with it.
    let mut state = hub.watch_state();
    tokio::select! {
        _ = signal => hub.begin_shutdown(),
        shutting_down = state.wait_for(|s| s.shutting_down) => {
            shutting_down.map_err(std::io::Error::other)?;
        }
    }
    let n = hub.connections();
    tracing::info!("Shutting down: closing {n} client connections and releasing task protection");
    let orderly = tokio::time::timeout(timeout, async {
        hub.wait_for_no_connections().await;
        if let Err(e) = hub.manager().shutdown().await {
            tracing::warn!("Could not release task protection on shutdown: {e}");
        }
    })
    .await;
    // Until here the listener kept answering: health 503, upgrades refused.
    let _ = closed_tx.send(());
    if orderly.is_err() {
        tracing::warn!("Shutdown took longer than {timeout:?}; exiting anyway");
    }
    // The accept loop stops and closes the connections that have not upgraded.
    if let Err(join) = serving.await {
        tracing::warn!("HTTP server task failed: {join}");
    }
    listener::wait_for_lingering(Duration::from_secs(1)).await;
    tracing::info!("Shutdown complete");
    Ok(())
}
