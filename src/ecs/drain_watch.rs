//! Drain awareness, ECS side: is ECS trying to replace this task?
//!
//! A busy task that keeps refreshing its protection can hold a deployment (or a scale-in) back
//! for as long as clients keep arriving. The watcher asks ECS (`DescribeServices` for the task's
//! own service) every interval whether the task is wanted gone:
//!
//! * a deployment is in progress whose task definition is not this task's (the PRIMARY
//!   deployment is the one ECS is moving to), or
//! * the service is being scaled below the number of tasks it runs.
//!
//! The answer is published on a [`watch`] channel as `Some(reason)` (or `None`); the server
//! drains while it is `Some`. The watcher never stops the task itself.
//!
//! Known limit: a forced new deployment with the *same* task definition
//! (`--force-new-deployment`) is not recognised, because the task metadata does not say which
//! deployment a task belongs to.

use std::time::Duration;

use aws_sdk_ecs::types::{Deployment, Service};
use tokio::sync::watch;

use super::sdk::{classify_sdk_error, region_override, DESCRIBE_SERVICES_ACTION};
use super::EcsContext;
use crate::protection::{BackendError, ErrorKind};

/// The longest one `DescribeServices` call may take before the round counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest interval the watcher accepts.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// What the drain rules need to know about a service (from `DescribeServices`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ServiceView {
    /// The service's desired task count.
    pub desired_count: i32,
    /// The service's running task count, across all deployments.
    pub running_count: i32,
    /// The service's deployments.
    pub deployments: Vec<DeploymentView>,
}

/// One deployment of a [`ServiceView`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct DeploymentView {
    /// `PRIMARY` (the newest deployment, the one ECS is moving to), `ACTIVE` (an older one that
    /// still has tasks) or `INACTIVE`.
    pub status: String,
    /// The deployment's task definition ARN.
    pub task_definition: String,
    /// Tasks this deployment wants.
    pub desired_count: i32,
    /// Tasks of this deployment that are running.
    pub running_count: i32,
    /// `COMPLETED`, `IN_PROGRESS` or `FAILED`, when ECS reports it.
    pub rollout_state: Option<String>,
}

impl DeploymentView {
    fn from_sdk(d: &Deployment) -> Self {
        Self {
            status: d.status().unwrap_or_default().to_string(),
            task_definition: d.task_definition().unwrap_or_default().to_string(),
            desired_count: d.desired_count(),
            running_count: d.running_count(),
            rollout_state: d.rollout_state().map(|s| s.as_str().to_string()),
        }
    }
}

impl ServiceView {
    /// The view of a service as `DescribeServices` returned it.
    fn from_sdk(service: &Service) -> Self {
        Self {
            desired_count: service.desired_count(),
            running_count: service.running_count(),
            deployments: service
                .deployments()
                .iter()
                .map(DeploymentView::from_sdk)
                .collect(),
        }
    }

    /// The PRIMARY deployment, if there is one.
    fn primary(&self) -> Option<&DeploymentView> {
        self.deployments.iter().find(|d| d.status == "PRIMARY")
    }
}

/// Why ECS wants a task of task definition `my_task_definition_arn` gone, or `None` if it does
/// not:
///
/// * `Some("deployment in progress: the service is moving to <taskdef>")` when the PRIMARY
///   deployment's task definition is not ours;
/// * `Some("scale-in: desired N, running M")` when fewer tasks are desired than run. While a
///   deployment is in progress and ours is the PRIMARY one, the PRIMARY deployment's own counts
///   are compared (the service's running count then includes the old tasks being replaced, which
///   is not a scale-in of ours).
///
/// An empty `my_task_definition_arn` means "not known": only the scale-in rule applies.
fn replacement_reason(service: &ServiceView, my_task_definition_arn: &str) -> Option<String> {
    let primary = service.primary();
    if let Some(primary) = primary {
        if !my_task_definition_arn.is_empty() && primary.task_definition != my_task_definition_arn {
            return Some(format!(
                "deployment in progress: the service is moving to {}",
                primary.task_definition
            ));
        }
    }
    let (desired, running) = match primary {
        Some(p) if service.deployments.len() > 1 => (p.desired_count, p.running_count),
        _ => (service.desired_count, service.running_count),
    };
    (desired < running).then(|| format!("scale-in: desired {desired}, running {running}"))
}

/// The outcome of one look at the service.
enum Look {
    /// The current reason to drain (`None`: no reason).
    Reason(Option<String>),
    /// The task has no service: nothing to watch.
    NoService(String),
}

/// Starts the watcher: every `interval` (±10 % jitter; the first look is at once) it calls
/// `DescribeServices` for the task's service and publishes the reason ECS wants the task gone,
/// `None` while it does not. On an error it logs a warning and keeps the previous value. It stops
/// when every receiver is dropped, or at once (after one log line) when the task belongs to no
/// service. It never panics and returns at once; outside a tokio runtime it logs an error and the
/// receiver stays `None`.
pub fn spawn_drain_watch(
    context: &EcsContext,
    interval: Duration,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(run(context.clone(), interval.max(MIN_INTERVAL), tx));
        }
        Err(e) => tracing::error!("Drain watch not started (no tokio runtime): {e}"),
    }
    rx
}

async fn run(context: EcsContext, interval: Duration, tx: watch::Sender<Option<String>>) {
    tracing::info!(
        "Drain watch: asking ECS (DescribeServices) every {:.0?} whether this task is being replaced",
        interval
    );
    let mut last_error: Option<BackendError> = None;
    loop {
        let look = tokio::select! {
            _ = tx.closed() => return,
            look = look(&context) => look,
        };
        match look {
            Ok(Look::Reason(reason)) => {
                if last_error.take().is_some() {
                    tracing::info!("Drain watch: ECS answers again");
                }
                publish(&tx, reason);
            }
            Ok(Look::NoService(why)) => {
                tracing::info!("Drain watch off: {why}");
                return;
            }
            Err(error) => {
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(
                        "Drain watch: cannot tell whether this task is being replaced \
                         (keeping the last answer): {error}"
                    );
                } else {
                    tracing::debug!("Drain watch: still failing: {error}");
                }
                last_error = Some(error);
            }
        }
        let pause = interval.mul_f64(0.9 + 0.2 * rand::random::<f64>());
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Publishes `reason`, logging each change once.
fn publish(tx: &watch::Sender<Option<String>>, reason: Option<String>) {
    tx.send_if_modified(|current| {
        if *current == reason {
            return false;
        }
        match &reason {
            Some(r) => tracing::warn!("Task is being replaced: {r}"),
            None => tracing::info!("Task is no longer being replaced"),
        }
        *current = reason;
        true
    });
}

async fn look(context: &EcsContext) -> Result<Look, BackendError> {
    let client = context.client();
    let id = context.identity().identity().await?;
    let Some(service_name) = id.service_name.as_deref() else {
        return Ok(Look::NoService(format!(
            "task {} belongs to no service that the task metadata names (a standalone task, an \
             older agent, or an identity given by ECS_CLUSTER / ECS_TASK_ARN)",
            id.task_arn
        )));
    };
    let mine = id.task_definition_arn().unwrap_or_default();
    let request = client
        .describe_services()
        .cluster(&id.cluster)
        .services(service_name)
        .customize()
        .config_override(region_override(client, id)?)
        .send();
    let output = tokio::time::timeout(CALL_TIMEOUT, request)
        .await
        .map_err(|_| {
            BackendError::new(
                ErrorKind::Timeout,
                format!("{DESCRIBE_SERVICES_ACTION}: no answer within {CALL_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| classify_sdk_error(&e, DESCRIBE_SERVICES_ACTION))?;
    if let Some(failure) = output.failures().first() {
        let mut error = super::ecs_failure(failure.reason(), failure.detail());
        error.message = format!(
            "{DESCRIBE_SERVICES_ACTION} for service {service_name}: {}",
            error.message
        );
        return Err(error);
    }
    let service = output
        .services()
        .iter()
        .find(|s| s.service_name() == Some(service_name))
        .or_else(|| output.services().first())
        .ok_or_else(|| {
            BackendError::new(
                ErrorKind::Malformed,
                format!("{DESCRIBE_SERVICES_ACTION}: the answer lists no service {service_name}"),
            )
        })?;
    Ok(Look::Reason(replacement_reason(
        &ServiceView::from_sdk(service),
        &mine,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7";
    const NEWER: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:8";

    fn deployment(status: &str, td: &str, desired: i32, running: i32) -> DeploymentView {
        DeploymentView {
            status: status.into(),
            task_definition: td.into(),
            desired_count: desired,
            running_count: running,
            rollout_state: Some(
                if status == "PRIMARY" {
                    "IN_PROGRESS"
                } else {
                    "COMPLETED"
                }
                .into(),
            ),
        }
    }

    fn service(desired: i32, running: i32, deployments: Vec<DeploymentView>) -> ServiceView {
        ServiceView {
            desired_count: desired,
            running_count: running,
            deployments,
        }
    }

    #[test]
    fn a_service_at_rest_on_our_task_definition_keeps_us() {
        let s = service(2, 2, vec![deployment("PRIMARY", OURS, 2, 2)]);
        assert_eq!(replacement_reason(&s, OURS), None);
    }

    #[test]
    fn a_newer_primary_deployment_replaces_us() {
        let s = service(
            2,
            3,
            vec![
                deployment("PRIMARY", NEWER, 2, 1),
                deployment("ACTIVE", OURS, 2, 2),
            ],
        );
        assert_eq!(
            replacement_reason(&s, OURS).as_deref(),
            Some(format!("deployment in progress: the service is moving to {NEWER}").as_str())
        );
    }

    #[test]
    fn a_rollback_to_an_older_task_definition_replaces_us_too() {
        let older = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:6";
        let s = service(
            2,
            2,
            vec![
                deployment("PRIMARY", older, 2, 0),
                deployment("ACTIVE", OURS, 2, 2),
            ],
        );
        assert!(replacement_reason(&s, OURS).unwrap().contains("web:6"));
    }

    #[test]
    fn scale_in_below_the_running_count_replaces_us() {
        let s = service(1, 3, vec![deployment("PRIMARY", OURS, 1, 3)]);
        assert_eq!(
            replacement_reason(&s, OURS).as_deref(),
            Some("scale-in: desired 1, running 3")
        );
    }

    #[test]
    fn scale_in_clears_when_running_reaches_desired() {
        let s = service(1, 1, vec![deployment("PRIMARY", OURS, 1, 1)]);
        assert_eq!(replacement_reason(&s, OURS), None);
        // Scaling out is no reason to drain.
        let s = service(4, 2, vec![deployment("PRIMARY", OURS, 4, 2)]);
        assert_eq!(replacement_reason(&s, OURS), None);
    }

    #[test]
    fn a_new_task_of_the_primary_deployment_is_not_told_to_drain_by_the_old_tasks() {
        // Rolling deployment, we are new: 2 old + 2 new running, 2 desired.
        let s = service(
            2,
            4,
            vec![
                deployment("PRIMARY", OURS, 2, 2),
                deployment("ACTIVE", NEWER, 2, 2),
            ],
        );
        assert_eq!(replacement_reason(&s, OURS), None);
        // But a scale-in of the primary deployment during it still counts.
        let s = service(
            1,
            4,
            vec![
                deployment("PRIMARY", OURS, 1, 2),
                deployment("ACTIVE", NEWER, 2, 2),
            ],
        );
        assert_eq!(
            replacement_reason(&s, OURS).as_deref(),
            Some("scale-in: desired 1, running 2")
        );
    }

    #[test]
    fn an_unknown_task_definition_only_checks_scale_in() {
        let s = service(2, 2, vec![deployment("PRIMARY", NEWER, 2, 2)]);
        assert_eq!(replacement_reason(&s, ""), None);
        let s = service(1, 2, vec![deployment("PRIMARY", NEWER, 1, 2)]);
        assert!(replacement_reason(&s, "").unwrap().starts_with("scale-in"));
    }

    #[test]
    fn no_deployments_uses_the_service_counts() {
        assert_eq!(replacement_reason(&service(2, 2, vec![]), OURS), None);
        assert!(replacement_reason(&service(0, 1, vec![]), OURS)
            .unwrap()
            .starts_with("scale-in"));
    }

    #[test]
    fn outside_a_runtime_the_watch_is_not_started_and_does_not_panic() {
        let config = aws_sdk_ecs::Config::builder()
            .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
            .build();
        let identity =
            crate::ecs::identity::IdentitySource::given(crate::ecs::identity::TaskIdentity::new(
                "c",
                "arn:aws:ecs:eu-west-1:123456789012:task/c/x",
            ));
        let context = EcsContext::new(aws_sdk_ecs::Client::from_conf(config), identity);
        let rx = spawn_drain_watch(&context, Duration::from_secs(1));
        assert_eq!(*rx.borrow(), None);
    }
}
