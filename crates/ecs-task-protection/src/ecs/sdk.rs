//! How this crate uses the AWS SDK: its HTTP client, retry and timeout settings, the region a call
//! goes to, and how an SDK error becomes a [`BackendError`] that says what to fix.
//!
//! The SDK's own retries are kept to one extra attempt and its timeouts below the manager's call
//! timeout: the [`manager`](crate::protection::ProtectionManager) retries with its own back-off.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::timeout::TimeoutConfig;
use aws_sdk_ecs::config::Region;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::identity::TaskIdentity;
use crate::protection::{BackendError, ErrorKind};

/// The IAM action behind `UpdateTaskProtection`.
pub(crate) const UPDATE_ACTION: &str = "ecs:UpdateTaskProtection";
/// The IAM action behind `GetTaskProtection`.
pub(crate) const GET_ACTION: &str = "ecs:GetTaskProtection";
/// The IAM action behind `DescribeServices`.
#[cfg(feature = "drain")]
pub(crate) const DESCRIBE_SERVICES_ACTION: &str = "ecs:DescribeServices";
/// The IAM action behind `ListTasks`.
#[cfg(feature = "drain")]
pub(crate) const LIST_TASKS_ACTION: &str = "ecs:ListTasks";
/// The IAM action behind `DescribeTasks`.
#[cfg(feature = "drain")]
pub(crate) const DESCRIBE_TASKS_ACTION: &str = "ecs:DescribeTasks";

/// The per-call configuration that sends a call to the task's own region (the region in its ARN),
/// or an error when no region is known at all.
pub(crate) fn region_override(
    client: &aws_sdk_ecs::Client,
    identity: &TaskIdentity,
) -> Result<aws_sdk_ecs::config::Builder, BackendError> {
    let mut overrides = aws_sdk_ecs::config::Builder::new();
    match (&identity.region, client.config().region()) {
        (Some(region), _) => overrides = overrides.region(Region::new(region.clone())),
        (None, Some(_)) => {}
        (None, None) => {
            return Err(BackendError::new(
                ErrorKind::Config,
                "no AWS region: set AWS_REGION, or give a task ARN (it names its region)",
            ))
        }
    }
    Ok(overrides)
}

/// Classifies an SDK error for a call of IAM action `action` (e.g. `ecs:UpdateTaskProtection`)
/// into a [`BackendError`] whose message says what happened and, for access denied, what the IAM
/// policy lacks.
pub fn classify_sdk_error<E>(err: &SdkError<E, HttpResponse>, action: &str) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("");
            let message = context.err().message().unwrap_or("");
            let status = context.raw().status().as_u16();
            classify_service_error(code, message, status, action)
        }
        SdkError::TimeoutError(_) => BackendError::new(
            ErrorKind::Timeout,
            format!("{action}: no answer within the SDK's timeout"),
        ),
        SdkError::DispatchFailure(failure) => {
            let detail = DisplayErrorContext(err).to_string();
            let kind = if failure.is_timeout() {
                ErrorKind::Timeout
            } else if failure.is_io() {
                ErrorKind::Unreachable
            } else if failure.is_user() {
                ErrorKind::Config
            } else if has_source::<aws_credential_types::provider::error::CredentialsError>(err) {
                return BackendError::new(
                    ErrorKind::AccessDenied,
                    format!(
                        "no AWS credentials to call {action} with (is a task role set?): {detail}"
                    ),
                );
            } else {
                ErrorKind::Unreachable
            };
            BackendError::new(kind, format!("{action}: cannot reach AWS: {detail}"))
        }
        SdkError::ResponseError(context) => {
            let status = context.raw().status().as_u16();
            let kind = if (500..=599).contains(&status) {
                ErrorKind::Server
            } else {
                ErrorKind::Malformed
            };
            BackendError::new(
                kind,
                format!(
                    "{action}: unreadable answer (HTTP {status}): {}",
                    DisplayErrorContext(err)
                ),
            )
        }
        SdkError::ConstructionFailure(_) => BackendError::new(
            ErrorKind::Config,
            format!(
                "{action}: cannot build the request: {}",
                DisplayErrorContext(err)
            ),
        ),
        _ => BackendError::new(
            ErrorKind::Unreachable,
            format!("{action}: {}", DisplayErrorContext(err)),
        ),
    }
}

/// Whether an AWS error code is IAM refusing the action (the policy lacks it), as opposed to a
/// credentials problem or any other error.
pub(crate) fn denies_the_action(code: &str) -> bool {
    matches!(code, "AccessDeniedException" | "AccessDenied")
}

/// Whether an SDK error is IAM refusing the action (see [`denies_the_action`]).
#[cfg(feature = "drain")]
pub(crate) fn is_access_denied<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(denies_the_action)
}

/// Classifies an error answer of an AWS service (ECS, SQS) by its error code, falling back on
/// the HTTP status.
fn classify_service_error(code: &str, message: &str, status: u16, action: &str) -> BackendError {
    let kind = match code {
        _ if super::names_deployment_blocked(code, message) => ErrorKind::Blocked,
        "ThrottlingException"
        | "ThrottledException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "RequestThrottled"
        | "AWS.SimpleQueueService.RequestThrottled" => ErrorKind::Throttled,
        _ if denies_the_action(code) => {
            return BackendError::new(
                ErrorKind::AccessDenied,
                format!("the task role lacks {action} ({code}: {message})"),
            )
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken"
        | "IncompleteSignature" => {
            return BackendError::new(
                ErrorKind::AccessDenied,
                format!("AWS did not accept the credentials for {action} ({code}: {message})"),
            )
        }
        "InvalidParameterException"
        | "ClientException"
        | "UnsupportedFeatureException"
        | "ValidationException" => ErrorKind::InvalidRequest,
        "ResourceNotFoundException"
        | "ClusterNotFoundException"
        | "ServiceNotFoundException"
        | "QueueDoesNotExist"
        | "AWS.SimpleQueueService.NonExistentQueue" => ErrorKind::NotFound,
        "ServerException" | "InternalFailure" | "InternalError" | "ServiceUnavailable" => {
            ErrorKind::Server
        }
        _ => match status {
            429 => ErrorKind::Throttled,
            401 | 403 => {
                return BackendError::new(
                    ErrorKind::AccessDenied,
                    format!("{action}: HTTP {status} {code}: {message} (check the task role)"),
                )
            }
            404 => ErrorKind::NotFound,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::InvalidRequest,
        },
    };
    let code = if code.is_empty() {
        "no error code"
    } else {
        code
    };
    BackendError::new(kind, format!("{action}: HTTP {status} {code}: {message}"))
}

fn has_source<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Loads the AWS settings from `loader` with this crate's HTTP client, region chain and retry
/// settings (see [`aws_config`](super::aws_config)).
pub(crate) async fn load(loader: aws_config::ConfigLoader) -> aws_config::SdkConfig {
    let region = RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(aws_config::profile::ProfileFileRegionProvider::new());
    loader
        .http_client(https_client())
        .region(region)
        .retry_config(retry_config())
        .load()
        .await
}

/// The SDK's retry settings: standard mode, at most 2 attempts, short back-off (the manager
/// retries with its own, longer back-off).
fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(2)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(1))
}

/// The SDK's timeouts: 2 s to connect, 4 s per attempt, 9 s per operation (below the manager's
/// default 10 s call timeout, so that the SDK's more precise error is what gets reported).
pub(crate) fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(4))
        .operation_timeout(Duration::from_secs(9))
        .build()
}

/// The SDK's HTTP(S) client: hyper with rustls on `ring`, the platform's root certificates.
fn https_client() -> aws_sdk_ecs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_error_codes_map_to_kinds() {
        let kind =
            |code: &str, status| classify_service_error(code, "m", status, UPDATE_ACTION).kind;
        assert_eq!(kind("ThrottlingException", 400), ErrorKind::Throttled);
        assert_eq!(kind("AccessDeniedException", 400), ErrorKind::AccessDenied);
        assert_eq!(
            kind("UnrecognizedClientException", 400),
            ErrorKind::AccessDenied
        );
        assert_eq!(
            kind("InvalidParameterException", 400),
            ErrorKind::InvalidRequest
        );
        assert_eq!(kind("ClientException", 400), ErrorKind::InvalidRequest);
        assert_eq!(kind("ClusterNotFoundException", 400), ErrorKind::NotFound);
        assert_eq!(kind("ResourceNotFoundException", 400), ErrorKind::NotFound);
        assert_eq!(kind("ServerException", 500), ErrorKind::Server);
        assert_eq!(kind("", 503), ErrorKind::Server);
        assert_eq!(kind("", 429), ErrorKind::Throttled);
        assert_eq!(kind("SomethingNew", 400), ErrorKind::InvalidRequest);
    }

    #[test]
    fn only_iams_refusal_is_access_denied_to_the_action() {
        assert!(denies_the_action("AccessDeniedException"));
        assert!(denies_the_action("AccessDenied"));
        // A credentials problem is access denied too, but not a missing action.
        assert!(!denies_the_action("UnrecognizedClientException"));
        assert!(!denies_the_action("ThrottlingException"));
        assert!(!denies_the_action(""));
        let e = classify_service_error("AccessDeniedException", "m", 400, DESCRIBE_TASKS_ACTION);
        assert!(
            e.message.contains("the task role lacks ecs:DescribeTasks"),
            "{e}"
        );
    }

    #[test]
    fn access_denied_names_the_missing_action() {
        let e = classify_service_error(
            "AccessDeniedException",
            "User is not authorized",
            400,
            GET_ACTION,
        );
        assert!(
            e.message
                .contains("the task role lacks ecs:GetTaskProtection"),
            "{e}"
        );
        assert!(e.message.contains("User is not authorized"), "{e}");
    }
}
