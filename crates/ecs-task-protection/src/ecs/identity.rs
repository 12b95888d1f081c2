//! Who this task is: its cluster, task ARN, service and task definition.
//!
//! In ECS the container agent serves the task metadata endpoint at
//! `${ECS_CONTAINER_METADATA_URI_V4}/task`; its answer carries `Cluster`, `TaskARN`, `Family`,
//! `Revision` and, on recent agents, `ServiceName`. Outside ECS the cluster and task ARN can be
//! given instead ([`IdentitySource::given`]).
//!
//! The region is not in the metadata as a field of its own: it is the fourth field of the task
//! ARN (`arn:aws:ecs:REGION:ACCOUNT:task/...`), which is also the region whose ECS API must be
//! called for this task.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::protection::{BackendError, ErrorKind};

/// The identity of the task whose protection is managed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIdentity {
    /// The cluster, as a name or an ARN (the metadata endpoint gives the ARN).
    pub cluster: String,
    /// The task's ARN.
    pub task_arn: String,
    /// The service the task belongs to, when the metadata endpoint reports it.
    pub service_name: Option<String>,
    /// The task definition's family.
    pub family: Option<String>,
    /// The task definition's revision (a number, kept as the text the endpoint gave).
    pub revision: Option<String>,
    /// The region, taken from the task ARN.
    pub region: Option<String>,
}

impl TaskIdentity {
    /// An identity from a cluster and a task ARN given by the operator; the region is taken from
    /// the ARN, everything else is unknown.
    pub fn new(cluster: impl Into<String>, task_arn: impl Into<String>) -> Self {
        let task_arn = task_arn.into();
        let region = EcsArn::parse(&task_arn).map(|a| a.region.to_string());
        Self {
            cluster: cluster.into(),
            task_arn,
            service_name: None,
            family: None,
            revision: None,
            region,
        }
    }

    /// The ARN of the task definition this task was started from, when the family and revision
    /// are known: `arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REVISION`.
    pub fn task_definition_arn(&self) -> Option<String> {
        task_definition_arn(
            &self.task_arn,
            self.family.as_deref()?,
            self.revision.as_deref()?,
        )
    }
}

/// The parts of an ECS ARN (`arn:PARTITION:ecs:REGION:ACCOUNT:RESOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EcsArn<'a> {
    /// `aws`, `aws-cn`, `aws-us-gov`, …
    pub partition: &'a str,
    /// The region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The 12-digit account ID.
    pub account: &'a str,
    /// What follows the account, e.g. `task/my-cluster/0123abcd`.
    pub resource: &'a str,
}

impl<'a> EcsArn<'a> {
    /// Splits an ECS ARN into its parts; `None` when `arn` is not an ECS ARN with a region and
    /// an account.
    fn parse(arn: &'a str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (prefix, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let valid = prefix == "arn"
            && !partition.is_empty()
            && service == "ecs"
            && !region.is_empty()
            && !account.is_empty()
            && !resource.is_empty();
        valid.then_some(Self {
            partition,
            region,
            account,
            resource,
        })
    }
}

/// The region in an ECS ARN (`arn:aws:ecs:REGION:ACCOUNT:...`).
fn region_from_arn(arn: &str) -> Option<&str> {
    EcsArn::parse(arn).map(|a| a.region)
}

/// The ARN of task definition `family:revision` in the partition, region and account of
/// `task_arn`; `None` when `task_arn` is not an ECS ARN.
fn task_definition_arn(task_arn: &str, family: &str, revision: &str) -> Option<String> {
    let arn = EcsArn::parse(task_arn)?;
    Some(format!(
        "arn:{}:ecs:{}:{}:task-definition/{family}:{revision}",
        arn.partition, arn.region, arn.account
    ))
}

/// The fields of the task metadata v4 `/task` answer that are used here.
#[derive(Deserialize)]
struct MetadataTask {
    #[serde(rename = "Cluster")]
    cluster: Option<String>,
    #[serde(rename = "TaskARN")]
    task_arn: Option<String>,
    #[serde(rename = "ServiceName")]
    service_name: Option<String>,
    #[serde(rename = "Family")]
    family: Option<String>,
    #[serde(rename = "Revision")]
    revision: Option<String>,
}

/// Interprets the body of `GET ${ECS_CONTAINER_METADATA_URI_V4}/task`.
fn parse_task_metadata(body: &[u8]) -> Result<TaskIdentity, BackendError> {
    let task: MetadataTask = serde_json::from_slice(body).map_err(|e| {
        config_error(format!(
            "the task metadata endpoint answered something that is not its task JSON: {e}"
        ))
    })?;
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let task_arn =
        non_empty(task.task_arn).ok_or_else(|| config_error("the task metadata has no TaskARN"))?;
    let cluster =
        non_empty(task.cluster).ok_or_else(|| config_error("the task metadata has no Cluster"))?;
    let region = region_from_arn(&task_arn)
        .ok_or_else(|| {
            config_error(format!(
                "the task metadata's TaskARN {task_arn:?} is not an ECS task ARN"
            ))
        })?
        .to_string();
    Ok(TaskIdentity {
        cluster,
        task_arn,
        service_name: non_empty(task.service_name),
        family: non_empty(task.family),
        revision: non_empty(task.revision),
        region: Some(region),
    })
}

/// Reads the task's identity from the task metadata endpoint at `metadata_uri` (the value of
/// `ECS_CONTAINER_METADATA_URI_V4`). Every failure is an [`ErrorKind::Config`] error saying what
/// went wrong.
async fn fetch_task_identity(
    client: &reqwest::Client,
    metadata_uri: &str,
) -> Result<TaskIdentity, BackendError> {
    let url = task_url(metadata_uri)?;
    let response = client.get(&url).send().await.map_err(|e| {
        config_error(format!(
            "cannot read the task metadata endpoint {url}: {}",
            super::agent::error_chain(&e)
        ))
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        config_error(format!(
            "cannot read the task metadata endpoint {url}: {}",
            super::agent::error_chain(&e)
        ))
    })?;
    if !status.is_success() {
        return Err(config_error(format!(
            "the task metadata endpoint {url} answered HTTP {}: {}",
            status.as_u16(),
            super::agent::snippet(&body)
        )));
    }
    parse_task_metadata(&body)
}

fn task_url(metadata_uri: &str) -> Result<String, BackendError> {
    let base = metadata_uri.trim().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(config_error(format!(
            "ECS_CONTAINER_METADATA_URI_V4 must be an http:// URL, got {metadata_uri:?}"
        )));
    }
    Ok(format!("{base}/task"))
}

fn config_error(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Config, message)
}

/// Where the task's identity comes from: given by the operator, or read from the task metadata
/// endpoint on first use and kept from then on.
///
/// A failed read is not kept: the next [`identity`](Self::identity) call tries again. Clones share
/// the cached identity, so the protection backend and the drain watcher read the endpoint once.
#[derive(Clone)]
pub struct IdentitySource {
    inner: Arc<SourceInner>,
}

struct SourceInner {
    metadata: Option<(String, reqwest::Client)>,
    cell: tokio::sync::OnceCell<TaskIdentity>,
}

impl IdentitySource {
    /// An identity known up front (cluster and task ARN given by flag or environment).
    pub fn given(identity: TaskIdentity) -> Self {
        Self {
            inner: Arc::new(SourceInner {
                metadata: None,
                cell: tokio::sync::OnceCell::new_with(Some(identity)),
            }),
        }
    }

    /// An identity read from the task metadata endpoint at `metadata_uri` (the value of
    /// `ECS_CONTAINER_METADATA_URI_V4`) on first use, each read bounded by `timeout`.
    pub fn metadata(metadata_uri: &str, timeout: Duration) -> Result<Self, BackendError> {
        task_url(metadata_uri)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| config_error(format!("cannot build the metadata HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(SourceInner {
                metadata: Some((metadata_uri.trim().to_string(), client)),
                cell: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The task's identity, reading the metadata endpoint if it has not been read successfully
    /// yet.
    pub async fn identity(&self) -> Result<&TaskIdentity, BackendError> {
        self.inner
            .cell
            .get_or_try_init(|| async {
                let Some((uri, client)) = &self.inner.metadata else {
                    return Err(config_error("no task identity was given"));
                };
                let identity = fetch_task_identity(client, uri).await?;
                tracing::info!(
                    "Task identity from the metadata endpoint: task {}, cluster {}, service {}",
                    identity.task_arn,
                    identity.cluster,
                    identity.service_name.as_deref().unwrap_or("(none)")
                );
                Ok(identity)
            })
            .await
    }

    /// The identity if it is known already, without any I/O.
    pub fn cached(&self) -> Option<&TaskIdentity> {
        self.inner.cell.get()
    }

    /// One line saying where the identity comes from, for the start-up log.
    pub fn describe(&self) -> String {
        match (self.cached(), &self.inner.metadata) {
            (Some(id), _) => format!("task {} in cluster {}", id.task_arn, id.cluster),
            (None, Some((uri, _))) => format!("the task found at the metadata endpoint {uri}"),
            (None, None) => "no task".to_string(),
        }
    }
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySource")
            .field("metadata_uri", &self.inner.metadata.as_ref().map(|m| &m.0))
            .field("identity", &self.cached())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:ecs:eu-west-1:123456789012:task/my-cluster/0123456789abcdef";

    #[test]
    fn arn_parts() {
        let a = EcsArn::parse(ARN).unwrap();
        assert_eq!(
            (a.partition, a.region, a.account, a.resource),
            (
                "aws",
                "eu-west-1",
                "123456789012",
                "task/my-cluster/0123456789abcdef"
            )
        );
        // Old-format task ARNs (no cluster in the resource) and other partitions work too.
        assert_eq!(
            region_from_arn("arn:aws-cn:ecs:cn-north-1:123456789012:task/abc"),
            Some("cn-north-1")
        );
        for bad in [
            "",
            "not an arn",
            "arn:aws:s3:::bucket",
            "arn:aws:ecs::123456789012:task/x",
            "arn:aws:ecs:us-east-1::task/x",
            "arn:aws:ecs:us-east-1:123456789012",
        ] {
            assert_eq!(EcsArn::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn task_definition_arn_uses_the_task_arns_partition_region_and_account() {
        assert_eq!(
            task_definition_arn(ARN, "web", "7").as_deref(),
            Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7")
        );
        assert_eq!(
            task_definition_arn(
                "arn:aws-us-gov:ecs:us-gov-west-1:123456789012:task/c/x",
                "f",
                "1"
            )
            .as_deref(),
            Some("arn:aws-us-gov:ecs:us-gov-west-1:123456789012:task-definition/f:1")
        );
        assert_eq!(task_definition_arn("garbage", "f", "1"), None);
    }

    #[test]
    fn given_identity_takes_the_region_from_the_arn() {
        let id = TaskIdentity::new("my-cluster", ARN);
        assert_eq!(id.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            id.task_definition_arn(),
            None,
            "family and revision unknown"
        );
    }

    #[test]
    fn metadata_answer_is_parsed() {
        let body = format!(
            r#"{{"Cluster":"arn:aws:ecs:eu-west-1:123456789012:cluster/my-cluster","TaskARN":"{ARN}",
                "Family":"web","Revision":"7","ServiceName":"websocket","DesiredStatus":"RUNNING",
                "KnownStatus":"RUNNING","Containers":[],"LaunchType":"FARGATE"}}"#
        );
        let id = parse_task_metadata(body.as_bytes()).unwrap();
        assert_eq!(
            id.cluster,
            "arn:aws:ecs:eu-west-1:123456789012:cluster/my-cluster"
        );
        assert_eq!(id.task_arn, ARN);
        assert_eq!(id.service_name.as_deref(), Some("websocket"));
        assert_eq!(id.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            id.task_definition_arn().as_deref(),
            Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7")
        );
    }

    #[test]
    fn metadata_without_service_name_is_fine_but_without_task_arn_is_not() {
        let id = parse_task_metadata(format!(r#"{{"Cluster":"c","TaskARN":"{ARN}"}}"#).as_bytes())
            .unwrap();
        assert_eq!(id.service_name, None);
        assert_eq!(id.family, None);

        for (body, says) in [
            (r#"{"Cluster":"c"}"#.to_string(), "no TaskARN"),
            (format!(r#"{{"TaskARN":"{ARN}"}}"#), "no Cluster"),
            (
                r#"{"Cluster":"c","TaskARN":"task-1"}"#.to_string(),
                "not an ECS task ARN",
            ),
            ("<html>".to_string(), "not its task JSON"),
        ] {
            let e = parse_task_metadata(body.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config);
            assert!(e.message.contains(says), "{e} should say {says:?}");
        }
    }

    #[test]
    fn metadata_uri_must_be_http() {
        let e =
            IdentitySource::metadata("169.254.170.2/v4/abc", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("ECS_CONTAINER_METADATA_URI_V4"));
        assert_eq!(
            task_url("http://h/v4/abc/").unwrap(),
            "http://h/v4/abc/task"
        );
    }

    #[tokio::test]
    async fn unreachable_metadata_endpoint_is_a_config_error_and_is_retried() {
        // Bind then drop a listener to get a local port that refuses connections.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let source = IdentitySource::metadata(
            &format!("http://127.0.0.1:{port}/v4/x"),
            Duration::from_secs(1),
        )
        .unwrap();
        let e = source.identity().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message.contains("cannot read the task metadata endpoint"),
            "{e}"
        );
        assert!(source.cached().is_none(), "a failure is not cached");
    }
}
