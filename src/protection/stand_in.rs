//! A stand-in for the ECS agent's task protection endpoint: a real HTTP server on loopback that
//! answers like the agent (see `ecs-facts.md`), records every call in order, and fails on demand.
//!
//! Used by the integration tests and the load tool; `GET /_calls` returns the recorded calls as
//! JSON so that a separate process can read them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::backend::minutes;
use super::manager::rfc3339;

const TASK_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/stand-in-cluster/0123456789abcdef";

/// A fault the stand-in answers with, for every call until changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Behave like a healthy agent.
    None,
    /// HTTP 200 with a `failure` body carrying this reason (e.g. `TASK_NOT_VALID`).
    Failure(String),
    /// HTTP 400 `ThrottlingException`.
    Throttled,
    /// HTTP 403 `AccessDeniedException`.
    AccessDenied,
    /// HTTP 404 `ResourceNotFoundException`.
    NotFound,
    /// HTTP 500 `ServerException`.
    ServerError,
    /// HTTP 504 `RequestCanceled`.
    GatewayTimeout,
    /// HTTP 200 with a body that is not JSON.
    Malformed,
    /// Never answer until [`StandInAgent::release_hangs`] is called (then answer normally).
    Hang,
    /// Answer normally after this delay.
    Slow(Duration),
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Call {
    /// `GET` or `PUT`.
    pub method: String,
    /// `ProtectionEnabled` of a PUT.
    pub enabled: Option<bool>,
    /// `ExpiresInMinutes` of a PUT.
    pub expires_in_minutes: Option<u32>,
    /// The HTTP status answered (0 if the call was still hanging when recorded).
    pub status: u16,
    /// Whether the call succeeded (HTTP 200 with a `protection` body).
    pub ok: bool,
}

#[derive(Debug)]
struct Sim {
    fault: Fault,
    expires_at: Option<SystemTime>,
    calls: Vec<Call>,
}

#[derive(Clone)]
struct Shared {
    sim: Arc<Mutex<Sim>>,
    hang_release: Arc<watch::Sender<u64>>,
    calls_changed: Arc<watch::Sender<usize>>,
}

/// The running stand-in. Dropping it stops the server.
pub struct StandInAgent {
    addr: SocketAddr,
    shared: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl StandInAgent {
    /// Starts a stand-in on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a stand-in on `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            sim: Arc::new(Mutex::new(Sim {
                fault: Fault::None,
                expires_at: None,
                calls: Vec::new(),
            })),
            hang_release: Arc::new(watch::channel(0).0),
            calls_changed: Arc::new(watch::channel(0).0),
        };
        let app = Router::new()
            .route("/task-protection/v1/state", get(state).put(state))
            .route("/_calls", get(list_calls))
            .with_state(shared.clone());
        let stop = serve_until_dropped(listener, app);
        Ok(Self {
            addr,
            shared,
            _stop: stop,
        })
    }

    /// The value to give the server as `ECS_AGENT_URI`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers every following call with `fault`.
    pub fn set_fault(&self, fault: Fault) {
        self.sim().fault = fault;
    }

    /// Lets every call hanging under [`Fault::Hang`] answer (normally), and stops hanging.
    pub fn release_hangs(&self) {
        self.sim().fault = Fault::None;
        self.shared.hang_release.send_modify(|g| *g += 1);
    }

    /// Every call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<Call> {
        self.sim().calls.clone()
    }

    /// The PUT calls so far (protect and release), in order.
    pub fn put_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "PUT")
            .collect()
    }

    /// Whether the simulated task is protected now.
    pub fn is_protected(&self) -> bool {
        matches!(self.sim().expires_at, Some(t) if t > SystemTime::now())
    }

    /// Waits until at least `n` calls have been recorded (in any state).
    pub async fn wait_for_calls(&self, n: usize) {
        let mut rx = self.shared.calls_changed.subscribe();
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    fn sim(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.shared.sim.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves `app` on `listener` in a task until the returned sender is dropped (shared by the
/// stand-ins: each keeps the sender, so dropping the stand-in stops its server).
pub(crate) fn serve_until_dropped(
    listener: tokio::net::TcpListener,
    app: Router,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

async fn list_calls(State(shared): State<Shared>) -> Json<Vec<Call>> {
    let sim = shared.sim.lock().unwrap_or_else(|e| e.into_inner());
    Json(sim.calls.clone())
}

async fn state(State(shared): State<Shared>, method: Method, body: axum::body::Bytes) -> Response {
    let put = method == Method::PUT;
    let parsed = if put {
        parse_put(&body)
    } else {
        Ok((None, None))
    };
    let (enabled, expires) = match &parsed {
        Ok(v) => *v,
        Err(_) => (None, None),
    };
    let (index, fault) = {
        let mut sim = shared.sim.lock().unwrap_or_else(|e| e.into_inner());
        sim.calls.push(Call {
            method: method.to_string(),
            enabled,
            expires_in_minutes: expires,
            status: 0,
            ok: false,
        });
        (sim.calls.len() - 1, sim.fault.clone())
    };
    shared.calls_changed.send_modify(|c| *c += 1);

    match &fault {
        Fault::Hang => {
            let mut rx = shared.hang_release.subscribe();
            let _ = rx.changed().await;
        }
        Fault::Slow(d) => tokio::time::sleep(*d).await,
        _ => {}
    }

    let (status, body) = match (&fault, parsed) {
        (_, Err(message)) => (
            StatusCode::BAD_REQUEST,
            error_body("InvalidParameterException", &message),
        ),
        (Fault::Failure(reason), _) => (
            StatusCode::OK,
            json!({"failure": {"Arn": TASK_ARN, "Detail": null, "Reason": reason}}).to_string(),
        ),
        (Fault::Throttled, _) => (
            StatusCode::BAD_REQUEST,
            error_body("ThrottlingException", "Rate exceeded"),
        ),
        (Fault::AccessDenied, _) => (
            StatusCode::FORBIDDEN,
            error_body(
                "AccessDeniedException",
                "Task role credentials are not available",
            ),
        ),
        (Fault::NotFound, _) => (
            StatusCode::NOT_FOUND,
            error_body(
                "ResourceNotFoundException",
                "Failed to find a task for the request",
            ),
        ),
        (Fault::ServerError, _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body("ServerException", "internal error"),
        ),
        (Fault::GatewayTimeout, _) => (
            StatusCode::GATEWAY_TIMEOUT,
            error_body(
                "RequestCanceled",
                "Timed out calling ECS Task Protection API",
            ),
        ),
        (Fault::Malformed, _) => (StatusCode::OK, "<html>not json</html>".to_string()),
        (Fault::None | Fault::Hang | Fault::Slow(_), Ok((enabled, expires))) => {
            let mut sim = shared.sim.lock().unwrap_or_else(|e| e.into_inner());
            if put {
                sim.expires_at = match enabled {
                    Some(true) => Some(SystemTime::now() + minutes(expires.unwrap_or(120))),
                    _ => None,
                };
            }
            let expires_at = sim.expires_at.filter(|t| *t > SystemTime::now());
            (
                StatusCode::OK,
                json!({"protection": {
                    "ExpirationDate": expires_at.map(rfc3339),
                    "ProtectionEnabled": expires_at.is_some(),
                    "TaskArn": TASK_ARN,
                }})
                .to_string(),
            )
        }
    };
    let ok = status == StatusCode::OK && body.starts_with("{\"protection\"");
    {
        let mut sim = shared.sim.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(call) = sim.calls.get_mut(index) {
            call.status = status.as_u16();
            call.ok = ok;
        }
    }
    shared.calls_changed.send_modify(|c| *c += 0);
    (status, [("content-type", "application/json")], body).into_response()
}

/// Validates a PUT body the way the agent does: `ProtectionEnabled` required, `ExpiresInMinutes`
/// optional in 1..=2880, no other fields.
fn parse_put(body: &[u8]) -> Result<(Option<bool>, Option<u32>), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    if let Some(unknown) = object
        .keys()
        .find(|k| *k != "ProtectionEnabled" && *k != "ExpiresInMinutes")
    {
        return Err(format!("unknown field {unknown}"));
    }
    let enabled = object
        .get("ProtectionEnabled")
        .and_then(Value::as_bool)
        .ok_or("ProtectionEnabled is required")?;
    let expires = match object.get("ExpiresInMinutes") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let m = v
                .as_u64()
                .filter(|m| (1..=2880).contains(m))
                .ok_or("ExpiresInMinutes must be in 1..=2880")?;
            Some(m as u32)
        }
    };
    Ok((Some(enabled), expires))
}

fn error_body(code: &str, message: &str) -> String {
    json!({"requestID": "00000000-0000-0000-0000-000000000000", "error": {"Arn": TASK_ARN, "Code": code, "Message": message}})
        .to_string()
}
