//! The ECS API side (feature `api`): the SDK client and the task's identity shared by the API
//! backend and the drain watcher ([`EcsContext`]), and [`connect`], which builds the backend a
//! [`BackendPlan`] names.

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};

use super::agent::AgentBackend;
use super::api::EcsApiBackend;
use super::identity::{IdentitySource, TaskIdentity};
use super::sdk;
use crate::protection::local::LocalBackend;
use crate::protection::{BackendError, ErrorKind, ProtectionBackend};

/// How long one task metadata endpoint read may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call to the agent endpoint may take (the manager applies its own call timeout
/// too).
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to find ECS and the task, as the operator gave it. Empty values count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EcsSettings {
    /// An endpoint URL for the ECS API (a VPC endpoint, a local stand-in).
    pub endpoint_url: Option<String>,
    /// The cluster, when the task is named by hand (with `task_arn`).
    pub cluster: Option<String>,
    /// The task ARN, when the task is named by hand (with `cluster`).
    pub task_arn: Option<String>,
    /// The task metadata endpoint (`ECS_CONTAINER_METADATA_URI_V4`).
    pub metadata_uri: Option<String>,
}

/// The SDK client for ECS and the identity of the task it acts for.
///
/// Built once: the API backend and the drain watcher share the client and the identity (so the
/// metadata endpoint is read once). Cheap to clone.
#[derive(Debug, Clone)]
pub struct EcsContext {
    client: aws_sdk_ecs::Client,
    identity: IdentitySource,
    endpoint: Option<String>,
}

impl EcsContext {
    /// A context from an SDK client set up by the caller, for the task `identity` names.
    pub fn new(client: aws_sdk_ecs::Client, identity: IdentitySource) -> Self {
        Self {
            client,
            identity,
            endpoint: None,
        }
    }

    /// A context set up from the environment, the way the binaries run in ECS: the AWS settings
    /// of [`aws_config()`], the settings' endpoint URL (when given) for the ECS API only, and the
    /// task from `cluster` + `task_arn` when both are given, or else from the task metadata
    /// endpoint, read on first use.
    pub async fn from_env(settings: EcsSettings) -> Result<Self, BackendError> {
        Self::from_sdk_config(&aws_config().await, settings)
    }

    /// Like [`from_env`](Self::from_env), starting from `loader` instead of
    /// `aws_config::defaults(BehaviorVersion::latest())`: a caller (or a test) can set the
    /// credentials provider or anything else the loader offers. The region chain, HTTP client
    /// and retry settings of [`aws_config()`] are applied on top.
    pub async fn from_loader(
        loader: aws_config::ConfigLoader,
        settings: EcsSettings,
    ) -> Result<Self, BackendError> {
        Self::from_sdk_config(&sdk::load(loader).await, settings)
    }

    /// A context that shares `sdk_config` (its credentials, region and HTTP client) with the
    /// program's other AWS clients. ECS calls get this crate's timeouts: 2 s to connect, 4 s per
    /// attempt, 9 s per call, below the manager's call timeout.
    pub fn from_sdk_config(
        sdk_config: &SdkConfig,
        settings: EcsSettings,
    ) -> Result<Self, BackendError> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let identity = identity_source(
            non_empty(settings.cluster),
            non_empty(settings.task_arn),
            non_empty(settings.metadata_uri),
        )?;
        let endpoint = non_empty(settings.endpoint_url);
        let mut ecs_config =
            aws_sdk_ecs::config::Builder::from(sdk_config).timeout_config(sdk::timeout_config());
        if let Some(url) = &endpoint {
            ecs_config = ecs_config.endpoint_url(url);
        }
        Ok(Self {
            client: aws_sdk_ecs::Client::from_conf(ecs_config.build()),
            identity,
            endpoint,
        })
    }

    /// The SDK client.
    pub fn client(&self) -> &aws_sdk_ecs::Client {
        &self.client
    }

    /// Where the task's identity comes from.
    pub fn identity(&self) -> &IdentitySource {
        &self.identity
    }

    /// One line naming the task and the endpoint, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{} via endpoint {endpoint}", self.identity.describe()),
            None => self.identity.describe(),
        }
    }
}

/// The AWS settings every client of this crate starts from, loaded once per process and shared
/// (one credentials cache):
///
/// * credentials from `aws-config`'s default chain (in ECS: the task role);
/// * the region from `AWS_REGION` / the profile (the instance metadata service is not asked; ECS
///   calls go to the task's own region anyway, and the queue consumer's to its queue's);
/// * the SDK's own endpoint settings (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`);
/// * HTTPS through rustls on `ring`, and at most 2 attempts per call (the callers retry with
///   their own back-off).
pub async fn aws_config() -> SdkConfig {
    sdk::load(aws_config::defaults(BehaviorVersion::latest())).await
}

/// The task's identity: given by hand (both parts), or read from the metadata endpoint.
fn identity_source(
    cluster: Option<String>,
    task_arn: Option<String>,
    metadata_uri: Option<String>,
) -> Result<IdentitySource, BackendError> {
    match (cluster, task_arn, metadata_uri) {
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
            Ok(IdentitySource::given(identity))
        }
        (Some(_), None, _) | (None, Some(_), _) => Err(BackendError::new(
            ErrorKind::Config,
            "ECS_CLUSTER and ECS_TASK_ARN must be given together",
        )),
        (None, None, Some(uri)) => IdentitySource::metadata(&uri, METADATA_TIMEOUT),
        (None, None, None) => Err(BackendError::new(
            ErrorKind::Config,
            "the ECS API backend needs the task's identity: run in ECS \
             (ECS_CONTAINER_METADATA_URI_V4) or set ECS_CLUSTER and ECS_TASK_ARN",
        )),
    }
}

/// Which backend to use and what it needs: the outcome of the operator's settings (see
/// `Config::backend_plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendPlan {
    /// The ECS agent's endpoint at this URI (`ECS_AGENT_URI`). When `ecs` is given, a context is
    /// built as well (for the drain watcher); failing to build it is not fatal.
    Agent {
        /// The agent's URI.
        uri: String,
        /// Where to find the ECS API and the task, when the task metadata endpoint is there.
        ecs: Option<EcsSettings>,
    },
    /// The ECS API, with these settings.
    Api(EcsSettings),
    /// The in-process simulation.
    Local,
}

/// What [`connect`] built: the protection backend, and the ECS context when there is one.
pub struct Connection {
    /// The backend the protection manager calls.
    pub backend: Arc<dyn ProtectionBackend>,
    /// The ECS client and task identity, for the drain watcher (and the API backend).
    pub context: Option<EcsContext>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("backend", &self.backend.describe())
            .field("context", &self.context)
            .finish()
    }
}

/// Builds the backend `plan` names. An ECS context shares `sdk_config` when one is given, and
/// loads [`aws_config()`] otherwise (only if the plan needs AWS). An error says what to fix.
pub async fn connect(
    plan: BackendPlan,
    sdk_config: Option<&SdkConfig>,
) -> Result<Connection, BackendError> {
    let context = |settings| async move {
        match sdk_config {
            Some(sdk_config) => EcsContext::from_sdk_config(sdk_config, settings),
            None => EcsContext::from_env(settings).await,
        }
    };
    match plan {
        BackendPlan::Agent { uri, ecs } => {
            let agent = AgentBackend::new(&uri, AGENT_REQUEST_TIMEOUT)?;
            let context = match ecs {
                Some(settings) => match context(settings).await {
                    Ok(context) => Some(context),
                    Err(e) => {
                        tracing::warn!("Drain watcher off: {}", e.explain());
                        None
                    }
                },
                None => None,
            };
            Ok(Connection {
                backend: Arc::new(agent),
                context,
            })
        }
        BackendPlan::Api(settings) => {
            let context = context(settings).await?;
            Ok(Connection {
                backend: Arc::new(EcsApiBackend::new(context.clone())),
                context: Some(context),
            })
        }
        BackendPlan::Local => Ok(Connection {
            backend: Arc::new(LocalBackend::new()),
            context: None,
        }),
    }
}
