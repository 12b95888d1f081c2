//! The ECS API backend: `UpdateTaskProtection` and `GetTaskProtection` through `aws-sdk-ecs`.
//!
//! Credentials come from the default chain of `aws-config` (in ECS: the container credentials
//! provider, i.e. the task role). The task's identity (cluster, task ARN) is given, or read from
//! the task metadata endpoint on first use (see [`task_metadata`](super::task_metadata)). Calls go
//! to the region in the task ARN, which is where the task lives.
//!
//! A `failures[]` entry in ECS's answer is a rejection ([`ErrorKind::Failure`]), not a success; SDK
//! errors are classified by [`classify_sdk_error`]. The SDK's own retries are kept to one extra
//! attempt and its timeouts below the manager's call timeout: the
//! [`manager`](super::manager) retries with back-off.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::timeout::TimeoutConfig;
use aws_sdk_ecs::config::Region;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{Failure, ProtectedTask};

use super::backend::{BackendError, ErrorKind, ProtectionBackend, ProtectionState};
use super::task_metadata::{IdentitySource, TaskIdentity};

/// The IAM action behind `UpdateTaskProtection`.
pub const UPDATE_ACTION: &str = "ecs:UpdateTaskProtection";
/// The IAM action behind `GetTaskProtection`.
pub const GET_ACTION: &str = "ecs:GetTaskProtection";
/// The IAM action behind `DescribeServices`.
pub const DESCRIBE_SERVICES_ACTION: &str = "ecs:DescribeServices";

/// How long one metadata endpoint read may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// Reaches ECS through its API with `aws-sdk-ecs`.
#[derive(Debug, Clone)]
pub struct EcsApiBackend {
    client: aws_sdk_ecs::Client,
    identity: IdentitySource,
    endpoint: Option<String>,
}

impl EcsApiBackend {
    /// A backend calling ECS through `client` for the task that `identity` names.
    pub fn new(client: aws_sdk_ecs::Client, identity: IdentitySource) -> Self {
        Self {
            client,
            identity,
            endpoint: None,
        }
    }

    /// A backend set up from the environment, the way the server runs in ECS:
    ///
    /// * credentials from `aws-config`'s default chain (the task role in ECS);
    /// * the region from `AWS_REGION` / the profile, or else the task ARN (the instance metadata
    ///   service is not asked);
    /// * `endpoint_override` as the SDK's endpoint URL when given (a local ECS stand-in, a VPC
    ///   endpoint);
    /// * the task from `cluster` + `task_arn` when both are given, or else from the task metadata
    ///   endpoint at `metadata_uri` (`ECS_CONTAINER_METADATA_URI_V4`), read on the first call.
    ///
    /// The SDK retries at most once and gives up on an operation within 9 s (see
    /// [`sdk_retry_config`], [`sdk_timeout_config`]).
    pub async fn from_env(
        endpoint_override: Option<String>,
        cluster: Option<String>,
        task_arn: Option<String>,
        metadata_uri: Option<String>,
    ) -> Result<Self, BackendError> {
        Self::from_loader(
            aws_config::defaults(BehaviorVersion::latest()),
            endpoint_override,
            cluster,
            task_arn,
            metadata_uri,
        )
        .await
    }

    /// Like [`from_env`](Self::from_env), starting from `loader` instead of
    /// `aws_config::defaults(BehaviorVersion::latest())`: a caller (or a test) can set the
    /// credentials provider or anything else the loader offers. The region chain, HTTP client,
    /// retry and timeout settings and the endpoint override are applied on top.
    pub async fn from_loader(
        loader: aws_config::ConfigLoader,
        endpoint_override: Option<String>,
        cluster: Option<String>,
        task_arn: Option<String>,
        metadata_uri: Option<String>,
    ) -> Result<Self, BackendError> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let (cluster, task_arn) = (non_empty(cluster), non_empty(task_arn));
        let endpoint_override = non_empty(endpoint_override);
        let identity = match (cluster, task_arn, non_empty(metadata_uri)) {
            (Some(cluster), Some(task_arn), _) => {
                let identity = TaskIdentity::new(cluster, task_arn);
                if identity.region.is_none() {
                    return Err(BackendError::new(
                        ErrorKind::Config,
                        format!(
                            "ECS_TASK_ARN {:?} is not a task ARN \
                             (arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID)",
                            identity.task_arn
                        ),
                    ));
                }
                IdentitySource::given(identity)
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(BackendError::new(
                    ErrorKind::Config,
                    "ECS_CLUSTER and ECS_TASK_ARN must be given together",
                ))
            }
            (None, None, Some(uri)) => IdentitySource::metadata(&uri, METADATA_TIMEOUT)?,
            (None, None, None) => {
                return Err(BackendError::new(
                    ErrorKind::Config,
                    "the ECS API backend needs the task's identity: run in ECS \
                     (ECS_CONTAINER_METADATA_URI_V4) or set ECS_CLUSTER and ECS_TASK_ARN",
                ))
            }
        };
        let region = RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new());
        let mut loader = loader
            .http_client(https_client())
            .region(region)
            .retry_config(sdk_retry_config())
            .timeout_config(sdk_timeout_config());
        if let Some(url) = &endpoint_override {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk_config = loader.load().await;
        Ok(Self {
            client: aws_sdk_ecs::Client::new(&sdk_config),
            identity,
            endpoint: endpoint_override,
        })
    }

    /// The SDK client, to share with the drain watcher.
    pub fn client(&self) -> &aws_sdk_ecs::Client {
        &self.client
    }

    /// Where the task's identity comes from, to share with the drain watcher.
    pub fn identity_source(&self) -> &IdentitySource {
        &self.identity
    }

    async fn target(&self) -> Result<(&TaskIdentity, aws_sdk_ecs::config::Builder), BackendError> {
        let identity = self.identity.identity().await?;
        let overrides = region_override(&self.client, identity)?;
        Ok((identity, overrides))
    }
}

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

#[async_trait]
impl ProtectionBackend for EcsApiBackend {
    fn name(&self) -> &'static str {
        "api"
    }

    fn describe(&self) -> String {
        let mut line = format!(
            "ECS API (aws-sdk-ecs UpdateTaskProtection) for {}",
            self.identity.describe()
        );
        if let Some(endpoint) = &self.endpoint {
            line.push_str(&format!(" via endpoint {endpoint}"));
        }
        line
    }

    async fn set_protection(
        &self,
        enabled: bool,
        expires_in_minutes: u32,
    ) -> Result<ProtectionState, BackendError> {
        let (identity, overrides) = self.target().await?;
        let mut request = self
            .client
            .update_task_protection()
            .cluster(&identity.cluster)
            .tasks(&identity.task_arn)
            .protection_enabled(enabled);
        if enabled {
            let minutes = i32::try_from(expires_in_minutes).map_err(|_| {
                BackendError::new(
                    ErrorKind::InvalidRequest,
                    format!("expiresInMinutes {expires_in_minutes} is out of range (1..=2880)"),
                )
            })?;
            request = request.expires_in_minutes(minutes);
        }
        let output = request
            .customize()
            .config_override(overrides)
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e, UPDATE_ACTION))?;
        interpret(
            output.protected_tasks(),
            output.failures(),
            &identity.task_arn,
        )
    }

    async fn get_protection(&self) -> Result<ProtectionState, BackendError> {
        let (identity, overrides) = self.target().await?;
        let output = self
            .client
            .get_task_protection()
            .cluster(&identity.cluster)
            .tasks(&identity.task_arn)
            .customize()
            .config_override(overrides)
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e, GET_ACTION))?;
        interpret(
            output.protected_tasks(),
            output.failures(),
            &identity.task_arn,
        )
    }
}

/// Reads our task's state out of an `UpdateTaskProtection` / `GetTaskProtection` answer: a
/// `failures[]` entry is a rejection; an answer that does not mention the task is malformed.
pub fn interpret(
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
        let mut error = BackendError::ecs_failure(failure.reason(), failure.detail());
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
    let id = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    a == b || (!a.is_empty() && !b.is_empty() && id(a) == id(b))
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
            format!("{action}: no answer from ECS within the SDK's timeout"),
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
            BackendError::new(kind, format!("{action}: cannot reach ECS: {detail}"))
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

/// Classifies an error answer of ECS by its error code (`__type`), falling back on the HTTP
/// status.
pub fn classify_service_error(
    code: &str,
    message: &str,
    status: u16,
    action: &str,
) -> BackendError {
    let kind = match code {
        "ThrottlingException"
        | "ThrottledException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => ErrorKind::Throttled,
        "AccessDeniedException" | "AccessDenied" => {
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
                format!("ECS did not accept the credentials for {action} ({code}: {message})"),
            )
        }
        "InvalidParameterException"
        | "ClientException"
        | "UnsupportedFeatureException"
        | "ValidationException" => ErrorKind::InvalidRequest,
        "ResourceNotFoundException" | "ClusterNotFoundException" | "ServiceNotFoundException" => {
            ErrorKind::NotFound
        }
        "ServerException" | "InternalFailure" | "ServiceUnavailable" => ErrorKind::Server,
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

/// The SDK's retry settings: standard mode, at most 2 attempts, short back-off (the manager
/// retries with its own, longer back-off).
pub fn sdk_retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(2)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(1))
}

/// The SDK's timeouts: 2 s to connect, 4 s per attempt, 9 s per operation (below the manager's
/// default 10 s call timeout, so that the SDK's more precise error is what gets reported).
pub fn sdk_timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(4))
        .operation_timeout(Duration::from_secs(9))
        .build()
}

/// The SDK's HTTP(S) client: hyper with rustls on `ring`, the platform's root certificates.
pub fn https_client() -> aws_sdk_ecs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// An SDK client with fixed credentials, region and endpoint, and this module's retry and
/// timeout settings: for tests and tools that talk to a local ECS stand-in.
pub fn static_client(
    endpoint_url: &str,
    region: &str,
    credentials: aws_sdk_ecs::config::Credentials,
) -> aws_sdk_ecs::Client {
    static_client_with(endpoint_url, region, credentials, sdk_timeout_config())
}

/// Like [`static_client`], with the given SDK timeouts.
pub fn static_client_with(
    endpoint_url: &str,
    region: &str,
    credentials: aws_sdk_ecs::config::Credentials,
    timeouts: TimeoutConfig,
) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(https_client())
        .endpoint_url(endpoint_url)
        .region(Region::new(region.to_string()))
        .credentials_provider(credentials)
        .retry_config(sdk_retry_config())
        .timeout_config(timeouts)
        .build();
    aws_sdk_ecs::Client::from_conf(config)
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
