//! The ECS API backend: `UpdateTaskProtection` and `GetTaskProtection` through `aws-sdk-ecs`,
//! for the task an [`EcsContext`] names.
//!
//! A `failures[]` entry in ECS's answer is a rejection ([`ErrorKind::Failure`]), not a success.
//! Calls go to the region in the task ARN, which is where the task lives.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::operation::get_task_protection::GetTaskProtectionOutput;
use aws_sdk_ecs::operation::update_task_protection::UpdateTaskProtectionOutput;
use aws_sdk_ecs::types::{Failure, ProtectedTask};

use super::identity::TaskIdentity;
use super::sdk::{classify_sdk_error, region_override, GET_ACTION, UPDATE_ACTION};
use super::EcsContext;
use crate::protection::{
    BackendError, ErrorKind, ProtectionBackend, ProtectionState, DURATION_MINUTES,
};

/// Reaches ECS through its API with `aws-sdk-ecs`.
#[derive(Debug, Clone)]
pub struct EcsApiBackend {
    context: EcsContext,
}

impl EcsApiBackend {
    /// A backend calling ECS through the context's client for the task it names.
    pub fn new(context: EcsContext) -> Self {
        Self { context }
    }

    async fn target(&self) -> Result<(&TaskIdentity, aws_sdk_ecs::config::Builder), BackendError> {
        let identity = self.context.identity().identity().await?;
        let overrides = region_override(self.context.client(), identity)?;
        Ok((identity, overrides))
    }
}

#[async_trait]
impl ProtectionBackend for EcsApiBackend {
    fn name(&self) -> &'static str {
        "api"
    }

    fn describe(&self) -> String {
        format!(
            "ECS API (aws-sdk-ecs UpdateTaskProtection) for {}",
            self.context.describe()
        )
    }

    async fn set_protection(
        &self,
        enabled: bool,
        expires_in_minutes: u32,
    ) -> Result<ProtectionState, BackendError> {
        let (identity, overrides) = self.target().await?;
        let mut request = self
            .context
            .client()
            .update_task_protection()
            .cluster(&identity.cluster)
            .tasks(&identity.task_arn)
            .protection_enabled(enabled);
        if enabled {
            let minutes = i32::try_from(expires_in_minutes).map_err(|_| {
                BackendError::new(
                    ErrorKind::InvalidRequest,
                    format!("expiresInMinutes {expires_in_minutes} is out of range ({DURATION_MINUTES:?})"),
                )
            })?;
            request = request.expires_in_minutes(minutes);
        }
        let sent = request.customize().config_override(overrides).send().await;
        answer(sent, UPDATE_ACTION, &identity.task_arn)
    }

    async fn get_protection(&self) -> Result<ProtectionState, BackendError> {
        let (identity, overrides) = self.target().await?;
        let request = self
            .context
            .client()
            .get_task_protection()
            .cluster(&identity.cluster)
            .tasks(&identity.task_arn);
        let sent = request.customize().config_override(overrides).send().await;
        answer(sent, GET_ACTION, &identity.task_arn)
    }
}

/// The two answers that carry a task's protection.
trait ProtectionAnswer {
    fn parts(&self) -> (&[ProtectedTask], &[Failure]);
}

impl ProtectionAnswer for UpdateTaskProtectionOutput {
    fn parts(&self) -> (&[ProtectedTask], &[Failure]) {
        (self.protected_tasks(), self.failures())
    }
}

impl ProtectionAnswer for GetTaskProtectionOutput {
    fn parts(&self) -> (&[ProtectedTask], &[Failure]) {
        (self.protected_tasks(), self.failures())
    }
}

/// What one call's outcome means for the task: an SDK error classified for `action` (the IAM
/// action), or the answer [`interpret`]ed.
fn answer<O, E>(
    sent: Result<O, SdkError<E, HttpResponse>>,
    action: &str,
    task_arn: &str,
) -> Result<ProtectionState, BackendError>
where
    O: ProtectionAnswer,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let output = sent.map_err(|e| classify_sdk_error(&e, action))?;
    let (protected_tasks, failures) = output.parts();
    interpret(protected_tasks, failures, task_arn)
}

/// Reads our task's state out of an `UpdateTaskProtection` / `GetTaskProtection` answer: a
/// `failures[]` entry is a rejection; an answer that does not mention the task is malformed.
fn interpret(
    protected_tasks: &[ProtectedTask],
    failures: &[Failure],
    task_arn: &str,
) -> Result<ProtectionState, BackendError> {
    let ours = |arn: Option<&str>| arn.is_some_and(|arn| same_task(arn, task_arn));
    if let Some(failure) = failures
        .iter()
        .find(|f| ours(f.arn()))
        .or_else(|| failures.first())
    {
        let mut error = super::ecs_failure(failure.reason(), failure.detail());
        if let Some(arn) = failure.arn() {
            error.message.push_str(&format!(" for {arn}"));
        }
        return Err(error);
    }
    let task = protected_tasks
        .iter()
        .find(|t| ours(t.task_arn()))
        .ok_or_else(|| {
            BackendError::new(
                ErrorKind::Malformed,
                format!(
                    "ECS's answer lists neither task {task_arn} nor a failure for it \
                     (protectedTasks: {})",
                    protected_tasks.len()
                ),
            )
        })?;
    let expires_at = match task.expiration_date() {
        Some(date) => Some(SystemTime::try_from(*date).map_err(|e| {
            BackendError::new(
                ErrorKind::Malformed,
                format!("unusable expirationDate {date}: {e}"),
            )
        })?),
        None => None,
    };
    Ok(ProtectionState {
        enabled: task.protection_enabled(),
        expires_at,
    })
}

/// Whether two task references name the same task (full ARNs, or an ARN and a bare task ID).
fn same_task(a: &str, b: &str) -> bool {
    a == b || (!a.is_empty() && !b.is_empty() && task_id(a) == task_id(b))
}

/// The task ID: the last part of its ARN (`…:task/CLUSTER/ID`); a bare ID is itself.
pub(super) fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::primitives::DateTime;

    const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/c/0123456789abcdef";

    fn task(arn: &str, enabled: bool, expires: Option<i64>) -> ProtectedTask {
        ProtectedTask::builder()
            .task_arn(arn)
            .protection_enabled(enabled)
            .set_expiration_date(expires.map(DateTime::from_secs))
            .build()
    }

    #[test]
    fn protected_task_with_expiry() {
        let s = interpret(&[task(ARN, true, Some(1_665_023_356))], &[], ARN).unwrap();
        assert!(s.enabled);
        let secs = s
            .expires_at
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(secs.as_secs(), 1_665_023_356);
    }

    #[test]
    fn unprotected_task_has_no_expiry() {
        let s = interpret(&[task(ARN, false, None)], &[], ARN).unwrap();
        assert_eq!(
            s,
            ProtectionState {
                enabled: false,
                expires_at: None
            }
        );
    }

    #[test]
    fn a_failure_entry_is_a_rejection_with_its_reason_and_detail() {
        let f = Failure::builder()
            .arn(ARN)
            .reason("TASK_NOT_VALID")
            .detail("not in a service")
            .build();
        let e = interpret(&[], &[f], ARN).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Failure);
        assert!(e.message.contains("TASK_NOT_VALID"), "{e}");
        assert!(e.message.contains("not in a service"), "{e}");
        assert!(e.hint().is_some());
    }

    #[test]
    fn an_answer_about_another_task_is_malformed() {
        let other = "arn:aws:ecs:us-east-1:123456789012:task/c/ffff";
        let e = interpret(&[task(other, true, None)], &[], ARN).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert_eq!(
            interpret(&[], &[], ARN).unwrap_err().kind,
            ErrorKind::Malformed
        );
        // A bare task ID matches its ARN.
        assert!(interpret(&[task("0123456789abcdef", true, None)], &[], ARN).is_ok());
    }
}
