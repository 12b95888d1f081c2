//! Everything that speaks to Amazon ECS: the task's identity, the two backends (the agent endpoint
//! and the ECS API), and the drain watcher that asks whether ECS wants the task gone.
//!
//! * [`EcsContext`]: one SDK client and the task's identity, built once and shared by the API
//!   backend and the drain watcher.
//! * [`agent`], [`api`]: the [`ProtectionBackend`]s that reach ECS.
//! * [`identity`]: who the task is (cluster, task ARN, service), from the task metadata endpoint.
//! * [`drain_watch`]: is this task being replaced?
//! * [`connect`]: builds the backend (and the context) a [`BackendPlan`] names.

pub mod agent;
pub mod api;
pub mod drain_watch;
pub mod identity;
mod sdk;

use std::sync::Arc;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;

use crate::protection::local::LocalBackend;
use crate::protection::{BackendError, ErrorKind, ProtectionBackend};
use agent::AgentBackend;
use api::EcsApiBackend;
use identity::{IdentitySource, TaskIdentity};

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

    /// A context set up from the environment, the way the binaries run in ECS:
    ///
    /// * credentials from `aws-config`'s default chain (the task role in ECS);
    /// * the region from `AWS_REGION` / the profile, or else the task ARN (the instance metadata
    ///   service is not asked);
    /// * the settings' endpoint URL, when given, for the ECS API only;
    /// * the task from `cluster` + `task_arn` when both are given, or else from the task metadata
    ///   endpoint, read on first use.
    ///
    /// The SDK retries at most once and gives up on an operation within 9 s.
    pub async fn from_env(settings: EcsSettings) -> Result<Self, BackendError> {
        Self::from_loader(aws_config::defaults(BehaviorVersion::latest()), settings).await
    }

    /// Like [`from_env`](Self::from_env), starting from `loader` instead of
    /// `aws_config::defaults(BehaviorVersion::latest())`: a caller (or a test) can set the
    /// credentials provider or anything else the loader offers. The region chain, HTTP client,
    /// retry and timeout settings and the endpoint URL are applied on top.
    pub async fn from_loader(
        loader: aws_config::ConfigLoader,
        settings: EcsSettings,
    ) -> Result<Self, BackendError> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let identity = identity_source(
            non_empty(settings.cluster),
            non_empty(settings.task_arn),
            non_empty(settings.metadata_uri),
        )?;
        let endpoint = non_empty(settings.endpoint_url);
        let region = RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new());
        let sdk_config = loader
            .http_client(sdk::https_client())
            .region(region)
            .retry_config(sdk::retry_config())
            .timeout_config(sdk::timeout_config())
            .load()
            .await;
        let mut ecs_config = aws_sdk_ecs::config::Builder::from(&sdk_config);
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

/// Builds the backend `plan` names. An error says what to fix.
pub async fn connect(plan: BackendPlan) -> Result<Connection, BackendError> {
    match plan {
        BackendPlan::Agent { uri, ecs } => {
            let agent = AgentBackend::new(&uri, AGENT_REQUEST_TIMEOUT)?;
            let context = match ecs {
                Some(settings) => match EcsContext::from_env(settings).await {
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
            let context = EcsContext::from_env(settings).await?;
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
