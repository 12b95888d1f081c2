//! The one interface every way of reaching ECS implements.
//!
//! A backend performs exactly one I/O operation per call and reports what ECS said. It decides
//! nothing: retries, timing and coalescing belong to the
//! [`ProtectionManager`](super::ProtectionManager).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

/// What ECS reports about the task's scale-in protection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionState {
    /// Whether the task is protected now.
    pub enabled: bool,
    /// When protection lapses, if ECS reported it (it is `None` when protection is off).
    pub expires_at: Option<SystemTime>,
}

/// Why a call to ECS did not give the result asked for.
///
/// Every way a call can fail ends up as one of these kinds, so that the manager can decide whether
/// to retry and a user can read what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct BackendError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What ECS (or the transport) said, for logs and events.
    pub message: String,
}

/// The class of a [`BackendError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// ECS answered, but with a `failure` for the task (for example `TASK_NOT_VALID` for a task
    /// that is not part of a service). An HTTP 200 from the agent can carry this.
    Failure,
    /// ECS refused because the whole service is at its limit (`DEPLOYMENT_BLOCKED`: the service
    /// already has more protected tasks than its desired count). A condition of the fleet, not a
    /// fault of this task: it clears when protection on other tasks expires or is released, or
    /// the desired count is raised. The manager retries it on a slow cadence
    /// ([`Settings::blocked_retry`](super::Settings::blocked_retry)), and the server does not
    /// tell its clients it is going away.
    Blocked,
    /// ECS throttled the call (`ThrottlingException`).
    Throttled,
    /// The task role lacks permission (`AccessDeniedException`), or has no credentials.
    AccessDenied,
    /// ECS rejected the request's parameters (`InvalidParameterException`, other 4xx).
    InvalidRequest,
    /// ECS or the agent did not find the task (`ResourceNotFoundException`, HTTP 404).
    NotFound,
    /// A server-side error (HTTP 5xx, `ServerException`, `RequestCanceled`).
    Server,
    /// No answer within the call timeout.
    Timeout,
    /// The endpoint could not be reached (connection refused, DNS, reset).
    Unreachable,
    /// The answer could not be understood.
    Malformed,
    /// The backend is not set up correctly (missing endpoint, identity or region).
    Config,
    /// The manager's reconciler panicked (in the backend's call or in the manager itself): no
    /// more calls are made, and protection is no longer managed. Not retried; the program should
    /// end (the binaries do, with a non-zero status).
    Panicked,
}

impl ErrorKind {
    /// A short, stable code for public status documents (`/status`), which must not carry an
    /// error's details (endpoint URLs, ARNs, account IDs): those go to the log.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Failure => "failure",
            ErrorKind::Blocked => "deployment_blocked",
            ErrorKind::Throttled => "throttled",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Server => "server_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Malformed => "malformed_answer",
            ErrorKind::Config => "misconfigured",
            ErrorKind::Panicked => "panicked",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Failure => "ECS reported a failure",
            ErrorKind::Blocked => "blocked: the service is at its limit of protected tasks",
            ErrorKind::Throttled => "throttled by ECS",
            ErrorKind::AccessDenied => "access denied",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::NotFound => "task not found",
            ErrorKind::Server => "ECS server error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Unreachable => "endpoint unreachable",
            ErrorKind::Malformed => "unreadable answer",
            ErrorKind::Config => "backend misconfigured",
            ErrorKind::Panicked => "the protection reconciler panicked",
        })
    }
}

impl BackendError {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A hint telling an operator what to fix, for the kinds that need a person rather than a
    /// retry.
    pub fn hint(&self) -> Option<&'static str> {
        match self.kind {
            ErrorKind::AccessDenied => Some(
                "the task role needs ecs:UpdateTaskProtection and ecs:GetTaskProtection on the \
                 task (task/CLUSTER/*)",
            ),
            ErrorKind::Blocked => Some(
                "DEPLOYMENT_BLOCKED means the service has more protected tasks than its desired \
                 count. ECS protects this task as soon as protection on other tasks expires or is \
                 released, or the desired count is raised above the number of protected tasks; \
                 meanwhile this task keeps working and asks again every half minute or so",
            ),
            ErrorKind::Failure if self.message.contains("TASK_NOT_VALID") => Some(
                "only tasks that belong to an ECS service can be protected; a standalone task \
                 (run-task) cannot",
            ),
            ErrorKind::InvalidRequest => Some(
                "check the protection duration (1 to 2880 minutes) and the task's cluster and ARN",
            ),
            ErrorKind::Config => Some("check how the backend was set up"),
            _ => None,
        }
    }
}

impl BackendError {
    /// The error with its hint, when it has one: `<error> (<hint>)`, for a message that stops
    /// start-up.
    pub fn explain(&self) -> String {
        match self.hint() {
            Some(hint) => format!("{self} ({hint})"),
            None => self.to_string(),
        }
    }
}

/// A way of reading and setting the task's scale-in protection.
///
/// Implementations: [`AgentBackend`](crate::ecs::agent::AgentBackend) (the ECS container agent's
/// endpoint), [`EcsApiBackend`](crate::ecs::api::EcsApiBackend) (the ECS API) and
/// [`LocalBackend`](super::local::LocalBackend) (an in-process simulation for laptops and CI). A backend that needs to discover who it is (cluster, task ARN) does so lazily
/// on its first call and reports a [`ErrorKind::Config`] error if it cannot.
#[async_trait]
pub trait ProtectionBackend: Send + Sync + 'static {
    /// A short name for logs and `/status` (`agent`, `api`, `local`).
    fn name(&self) -> &'static str;

    /// One line saying where this backend sends its calls, for the start-up log.
    fn describe(&self) -> String;

    /// Asks ECS to turn protection on (for `expires_in` minutes) or off.
    async fn set_protection(
        &self,
        enabled: bool,
        expires_in_minutes: u32,
    ) -> Result<ProtectionState, BackendError>;

    /// Reads the current protection state, so that a restarted process learns whether its task is
    /// still protected.
    async fn get_protection(&self) -> Result<ProtectionState, BackendError>;
}

/// Converts a duration in whole minutes to a [`Duration`].
pub(crate) fn minutes(m: u32) -> Duration {
    Duration::from_secs(u64::from(m) * 60)
}
