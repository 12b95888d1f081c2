//! Everything that speaks to Amazon ECS: the task's identity, the two backends (the agent endpoint
//! and the ECS API), and the drain watcher that asks whether ECS wants the task gone.
//!
//! * [`agent`] (feature `agent`): the backend that reaches ECS through the container agent.
//! * `api`, `identity`, `EcsContext`, `connect` (feature `api`): the ECS API backend; who the
//!   task is (cluster, task ARN, service), from the task metadata endpoint; one SDK client and the
//!   task's identity, built once and shared by the API backend and the drain watcher; and the
//!   backend a `BackendPlan` names, built.
//! * `drain_watch` (feature `drain`): is this task being replaced?
//!
//! Each backend implements [`ProtectionBackend`](crate::protection::ProtectionBackend).

pub mod agent;
#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "api")]
mod context;
#[cfg(feature = "drain")]
pub mod drain_watch;
#[cfg(feature = "drain")]
pub(crate) mod fleet;
#[cfg(feature = "api")]
pub mod identity;
#[cfg(feature = "api")]
pub(crate) mod sdk;

#[cfg(feature = "api")]
pub use context::{aws_config, connect, BackendPlan, Connection, EcsContext, EcsSettings};
#[cfg(feature = "api")]
pub use sdk::classify_sdk_error;

use crate::protection::{BackendError, ErrorKind};

/// The failure reason ECS gives when the service already has more protected tasks than its
/// desired count.
const DEPLOYMENT_BLOCKED: &str = "DEPLOYMENT_BLOCKED";

/// A rejection ECS reported as a `failure` entry: its reason and, when given, its detail
/// (`TASK_NOT_VALID (detail)`). The agent endpoint, the ECS API and `DescribeServices` report
/// failures the same way. `DEPLOYMENT_BLOCKED` is [`ErrorKind::Blocked`]; every other reason is
/// [`ErrorKind::Failure`].
pub(crate) fn ecs_failure(reason: Option<&str>, detail: Option<&str>) -> BackendError {
    let mut message = reason.unwrap_or("no reason given").to_string();
    if let Some(detail) = detail.filter(|d| !d.is_empty()) {
        message.push_str(" (");
        message.push_str(detail);
        message.push(')');
    }
    let kind = if reason.is_some_and(|r| r.trim().eq_ignore_ascii_case(DEPLOYMENT_BLOCKED)) {
        ErrorKind::Blocked
    } else {
        ErrorKind::Failure
    };
    BackendError::new(kind, message)
}

/// Whether an error answer (code or message) names `DEPLOYMENT_BLOCKED`: ECS documents it only as
/// a failure reason, so an error carrying it is read the same way.
pub(crate) fn names_deployment_blocked(code: &str, message: &str) -> bool {
    code.contains(DEPLOYMENT_BLOCKED) || message.contains(DEPLOYMENT_BLOCKED)
}
