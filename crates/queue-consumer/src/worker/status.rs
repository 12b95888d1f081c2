//! The worker's own small HTTP endpoint, for ECS's container health check (through
//! `queue-consumer health`, since the image has no shell) and for people: `GET /healthz` (200
//! `ok`, or 503 with the reason while shutting down, while deletes fail for good, once receives
//! have failed for `UNHEALTHY_AFTER_SECS`, or when receiving has stalled) and `GET /status`
//! (JSON).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::Worker;
use app_support::listener::HttpPool;

/// Serves `/healthz` and `/status` on `listener` until the process ends, through `pool` (header
/// and idle timeouts, and a cap on connections shared with the process's other listeners), as a
/// critical task ([`ecs_task_protection::supervise`]).
pub fn serve_status(
    pool: &HttpPool,
    listener: tokio::net::TcpListener,
    worker: Worker,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/status", get(status))
        .with_state(worker);
    pool.spawn("status endpoint", listener, app)
}

async fn health(State(worker): State<Worker>) -> Response {
    match worker.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn status(State(worker): State<Worker>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(worker.status())).into_response()
}
