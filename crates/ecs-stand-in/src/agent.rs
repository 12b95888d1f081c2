//! The stand-in for the ECS agent's task protection endpoint,
//! `PUT/GET $ECS_AGENT_URI/task-protection/v1/state`, answering as the agent does: HTTP 200 with a
//! `protection` body, HTTP 200 with a `failure` body, or ECS's status code with an `error` body.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    rfc3339, Delay, Journal, Protection, Served, Shared as Common, ANY_LOOPBACK_PORT,
    ECS_EXPIRES_IN_MINUTES,
};

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

impl Fault {
    fn delay(&self) -> Delay {
        match self {
            Fault::Hang => Delay::Hang,
            Fault::Slow(d) => Delay::Slow(*d),
            _ => Delay::None,
        }
    }
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

/// The simulated task and the fault it answers with.
#[derive(Debug)]
struct Sim {
    fault: Fault,
    protection: Protection,
}

/// What the handlers share.
type Shared = Common<Sim, Call>;

/// The running stand-in. Dropping it stops the server.
pub struct StandInAgent {
    served: Served<Sim, Call>,
}

impl StandInAgent {
    /// Starts a stand-in on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind(ANY_LOOPBACK_PORT).await
    }

    /// Starts a stand-in on `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let sim = Sim {
            fault: Fault::None,
            protection: Protection::default(),
        };
        let routes = Router::new().route("/task-protection/v1/state", get(state).put(state));
        let served = Served::start(addr, sim, routes).await?;
        Ok(Self { served })
    }

    /// The value to give the server as `ECS_AGENT_URI`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr
    }

    /// Answers every following call with `fault`.
    pub fn set_fault(&self, fault: Fault) {
        self.served.shared.sim().fault = fault;
    }

    /// Lets every call hanging under [`Fault::Hang`] answer (normally), and stops hanging.
    pub fn release_hangs(&self) {
        self.served.shared.sim().fault = Fault::None;
        self.served.shared.journal.release_hangs();
    }

    /// Every call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<Call> {
        self.served.shared.journal.calls()
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
        self.served.shared.sim().protection.current().is_some()
    }

    /// Waits until at least `n` calls have been recorded (in any state).
    pub async fn wait_for_calls(&self, n: usize) {
        self.served.shared.journal.wait_for(n).await;
    }
}

async fn state(State(shared): State<Shared>, method: Method, body: axum::body::Bytes) -> Response {
    let fault = shared.sim().fault.clone();
    let sim = shared.clone();
    serve_call(
        &shared.journal,
        fault,
        TASK_ARN,
        &method,
        &body,
        |call| call,
        move |change| {
            let mut sim = sim.sim();
            if let Some((enabled, minutes)) = change {
                sim.protection.set(enabled, minutes);
            }
            Some(sim.protection.current())
        },
    )
    .await
}

/// A journal entry that carries one agent [`Call`]: the call itself, or the call with the task it
/// was made for.
pub(crate) trait AgentRecord: Clone {
    /// The call, to complete with its answer.
    fn call_mut(&mut self) -> &mut Call;
}

impl AgentRecord for Call {
    fn call_mut(&mut self) -> &mut Call {
        self
    }
}

/// Answers one call to the agent's task protection endpoint for the task `task_arn` as the agent
/// does, under `fault`: records it in `journal` (wrapped by `record`) as it arrives, waits out
/// the fault's delay, answers, and completes the record with the answer.
///
/// `protection` is called once the delay is over, unless a fault or a bad request answers first:
/// with `Some((enabled, minutes))` for a valid PUT (protection on for that long, ECS's default
/// when `None`; or off) or `None` for a GET. It returns the task's expiry after the change
/// (`Some(None)`: not protected), or `None` when there is no such task, which is answered as
/// the agent's `ResourceNotFoundException`.
///
/// [`StandInAgent`] and the per-task agent endpoints of [`crate::StandInEcs`] both answer through
/// it, so they parse, answer and fail alike.
pub(crate) async fn serve_call<C: AgentRecord>(
    journal: &Journal<C>,
    fault: Fault,
    task_arn: &str,
    method: &Method,
    body: &[u8],
    record: impl FnOnce(Call) -> C,
    protection: impl FnOnce(Option<(bool, Option<u32>)>) -> Option<Option<SystemTime>>,
) -> Response {
    let put = *method == Method::PUT;
    let parsed = if put {
        parse_put(body)
    } else {
        Ok((None, None))
    };
    let (enabled, expires) = parsed.clone().unwrap_or((None, None));
    let index = journal.record(record(Call {
        method: method.to_string(),
        enabled,
        expires_in_minutes: expires,
        status: 0,
        ok: false,
    }));
    journal.delay(fault.delay()).await;

    let (status, body) = match (&fault, parsed) {
        (_, Err(message)) => (
            StatusCode::BAD_REQUEST,
            error_body(task_arn, "InvalidParameterException", &message),
        ),
        (Fault::Failure(reason), _) => (
            StatusCode::OK,
            json!({"failure": {"Arn": task_arn, "Detail": null, "Reason": reason}}).to_string(),
        ),
        (Fault::Throttled, _) => (
            StatusCode::BAD_REQUEST,
            error_body(task_arn, "ThrottlingException", "Rate exceeded"),
        ),
        (Fault::AccessDenied, _) => (
            StatusCode::FORBIDDEN,
            error_body(
                task_arn,
                "AccessDeniedException",
                "Task role credentials are not available",
            ),
        ),
        (Fault::NotFound, _) => not_found(task_arn),
        (Fault::ServerError, _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body(task_arn, "ServerException", "internal error"),
        ),
        (Fault::GatewayTimeout, _) => (
            StatusCode::GATEWAY_TIMEOUT,
            error_body(
                task_arn,
                "RequestCanceled",
                "Timed out calling ECS Task Protection API",
            ),
        ),
        (Fault::Malformed, _) => (StatusCode::OK, "<html>not json</html>".to_string()),
        (Fault::None | Fault::Hang | Fault::Slow(_), Ok((enabled, expires))) => {
            let change = enabled.map(|enabled| (enabled, expires));
            match protection(change) {
                Some(expires_at) => (
                    StatusCode::OK,
                    json!({"protection": {
                        "ExpirationDate": expires_at.map(rfc3339),
                        "ProtectionEnabled": expires_at.is_some(),
                        "TaskArn": task_arn,
                    }})
                    .to_string(),
                ),
                None => not_found(task_arn),
            }
        }
    };
    let ok = status == StatusCode::OK && body.starts_with("{\"protection\"");
    journal.finish(index, |entry| {
        let call = entry.call_mut();
        call.status = status.as_u16();
        call.ok = ok;
    });
    (status, [("content-type", "application/json")], body).into_response()
}

/// The agent's answer when it knows no such task.
fn not_found(task_arn: &str) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        error_body(
            task_arn,
            "ResourceNotFoundException",
            "Failed to find a task for the request",
        ),
    )
}

/// Validates a PUT body the way the agent does: `ProtectionEnabled` required, `ExpiresInMinutes`
/// optional in ECS's range, no other fields.
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
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| ECS_EXPIRES_IN_MINUTES.contains(m))
                .ok_or_else(|| {
                    format!(
                        "ExpiresInMinutes must be in {}..={}",
                        ECS_EXPIRES_IN_MINUTES.start(),
                        ECS_EXPIRES_IN_MINUTES.end()
                    )
                })?;
            Some(m)
        }
    };
    Ok((Some(enabled), expires))
}

fn error_body(task_arn: &str, code: &str, message: &str) -> String {
    json!({"requestID": "00000000-0000-0000-0000-000000000000", "error": {"Arn": task_arn, "Code": code, "Message": message}})
        .to_string()
}
