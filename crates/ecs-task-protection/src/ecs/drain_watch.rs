//! Drain awareness, ECS side: is ECS trying to replace this task?
//!
//! A busy task that keeps refreshing its protection can hold a deployment (or a scale-in) back
//! for as long as clients keep arriving. The watcher asks ECS every interval whether the task is
//! wanted gone:
//!
//! * once, `DescribeTasks` on the task's own ARN: its `group` (`service:NAME` for a service's
//!   task) and `startedBy` (the ID of the service deployment that started it, `ecs-svc/…`).
//!   Neither changes during a task's life; a failed call is retried on the next round;
//! * every round, `DescribeServices` for the task's service: its deployments and counts.
//!
//! The service is the task metadata's `ServiceName` when there is one (EC2, ECS Anywhere), or
//! else the one the `group` names (Fargate's metadata has no `ServiceName`). The task is wanted
//! gone when:
//!
//! * a deployment is in progress and this task is not of the PRIMARY deployment (the one ECS is
//!   moving to), by deployment ID; this covers a forced new deployment with the same task
//!   definition. When the deployment ID is unknown (`DescribeTasks` denied or failing, or a
//!   `startedBy` that is not `ecs-svc/…`), the PRIMARY deployment's task definition is compared
//!   with the task's instead;
//! * the service runs or starts more tasks than it wants (a scale-in; during a deployment, of this
//!   task's own PRIMARY deployment) and ECS cannot reach its desired count without this task:
//!   the other tasks are busy too, and this one is among those every task picks to go
//!   (a pure rule, unit-tested case by case). Only then does the watcher ask about the service's
//!   tasks: `ListTasks` (desired status RUNNING), `DescribeTasks` once per task (`startedAt`,
//!   `startedBy`) and `GetTaskProtection` (100 tasks a call). When any of these fails, or does not
//!   say whether every task is protected, no scale-in drain starts (one already under way goes
//!   on), and the failure is logged once with the IAM action it needs.
//!
//! The answer is published on a [`watch`] channel as `Some(`[`Replacement`]`)` (or `None`); the
//! server drains while it is `Some`. The watcher never stops the task itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::types::{Deployment, DesiredStatus, Service, Task};
use tokio::sync::watch;

use super::api::task_id;
use super::fleet::{self, Fleet, FleetTask, ScaleIn};
use super::identity::TaskIdentity;
use super::sdk::{
    classify_sdk_error, is_access_denied, region_override, DESCRIBE_SERVICES_ACTION,
    DESCRIBE_TASKS_ACTION, GET_ACTION, LIST_TASKS_ACTION,
};
use super::EcsContext;
use crate::protection::{BackendError, ErrorKind};

/// The longest one ECS call may take before the round counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest interval the watcher accepts.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// How a service's task's `group` starts (`service:NAME`).
const SERVICE_GROUP_PREFIX: &str = "service:";
/// How the `startedBy` of a task started by a service deployment starts (`ecs-svc/<digits>`, the
/// deployment's ID).
const DEPLOYMENT_ID_PREFIX: &str = "ecs-svc/";

/// Why ECS wants this task gone, as the watcher publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replacement {
    /// What kind of replacement it is.
    pub kind: ReplacementKind,
    /// `<cause>: <details>`, for the log. The cause alone (the text before the first `": "`) is
    /// what may be shown to clients; the details name deployments and task definitions.
    pub reason: String,
}

/// What kind of replacement ECS is making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplacementKind {
    /// A deployment is replacing the task: every task of an old deployment goes.
    Deployment,
    /// The service is scaling in and cannot reach its desired count without this task: the
    /// other tasks are busy too, and this one is among those chosen to go.
    ScaleIn,
}

impl Replacement {
    /// A replacement of `kind` for `reason`.
    pub fn new(kind: ReplacementKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// What kind of drain a program is in: whether it ends by itself, and whether a drain deadline
/// applies to it. The WebSocket server's and the queue worker's drains follow the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainKind {
    /// The program's own request (an operator's signal, a longest protected time): ends only
    /// with the process; bounded by the deadline.
    Final,
    /// A deployment the drain watcher saw: ends when the watcher no longer sees it (the
    /// deployment finished elsewhere or was rolled back); bounded by the deadline, so that one
    /// piece of work cannot hold a deployment back for long.
    Reversible,
    /// A scale-in that needs this task gone ([`ReplacementKind::ScaleIn`]): ends when the
    /// watcher no longer sees it, and is never bounded. Protection holds until the last piece
    /// of work ends, as it would without a drain; the drain only stops new work from arriving,
    /// so that the task empties and ECS can stop it.
    ScaleIn,
}

impl From<ReplacementKind> for DrainKind {
    /// The kind of drain a replacement the watcher reports calls for.
    fn from(kind: ReplacementKind) -> Self {
        match kind {
            ReplacementKind::ScaleIn => DrainKind::ScaleIn,
            _ => DrainKind::Reversible,
        }
    }
}

/// Why a program is draining.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drain {
    /// `<cause>` or `<cause>: <details>`, for the log. Only the cause is for others to see
    /// ([`public_reason`](Self::public_reason)).
    pub reason: Arc<str>,
    /// What kind of drain it is.
    pub kind: DrainKind,
}

impl Drain {
    /// A drain of `kind` for `reason`.
    pub fn new(reason: &str, kind: DrainKind) -> Self {
        Self {
            reason: Arc::from(reason),
            kind,
        }
    }

    /// Whether a drain of `kind`, asked for while `current` is in progress, takes its place. An
    /// operator's ([`DrainKind::Final`]) stays whatever comes after it, and a drain of the kind in
    /// progress is kept (with its deadline); another kind replaces the current one: a deployment
    /// that begins during a scale-in's drain brings its deadline, a scale-in after a
    /// deployment's lifts it.
    pub fn starts(current: Option<&Drain>, kind: DrainKind) -> bool {
        !matches!(current, Some(d) if d.kind == DrainKind::Final || d.kind == kind)
    }

    /// Whether the drain ends by itself when its cause goes away (the drain watcher's
    /// observations); an operator's request does not.
    pub fn reversible(&self) -> bool {
        self.kind != DrainKind::Final
    }

    /// Whether the drain deadline applies: every drain but a scale-in's.
    pub fn bounded(&self) -> bool {
        self.kind != DrainKind::ScaleIn
    }

    /// The cause alone (the text before the first `": "`), for clients and status pages: details
    /// such as deployment IDs and task definition ARNs (which carry the account ID) stay in the
    /// log.
    pub fn public_reason(&self) -> &str {
        self.reason
            .split_once(": ")
            .map_or(&*self.reason, |(cause, _)| cause)
    }
}

/// What the drain rules need to know about a service (from `DescribeServices`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ServiceView {
    /// The service's desired task count.
    pub desired_count: i32,
    /// The service's running task count, across all deployments.
    pub running_count: i32,
    /// The service's tasks still starting (`PENDING`), across all deployments.
    pub pending_count: i32,
    /// The service's deployments.
    pub deployments: Vec<DeploymentView>,
}

/// One deployment of a [`ServiceView`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct DeploymentView {
    /// The deployment's ID (`ecs-svc/<digits>`), what its tasks carry as `startedBy`.
    pub id: String,
    /// `PRIMARY` (the newest deployment, the one ECS is moving to), `ACTIVE` (an older one that
    /// still has tasks) or `INACTIVE`.
    pub status: String,
    /// The deployment's task definition ARN.
    pub task_definition: String,
    /// Tasks this deployment wants.
    pub desired_count: i32,
    /// Tasks of this deployment that are running.
    pub running_count: i32,
    /// Tasks of this deployment still starting.
    pub pending_count: i32,
    /// `COMPLETED`, `IN_PROGRESS` or `FAILED`, when ECS reports it.
    pub rollout_state: Option<String>,
}

impl DeploymentView {
    fn from_sdk(d: &Deployment) -> Self {
        Self {
            id: d.id().unwrap_or_default().to_string(),
            status: d.status().unwrap_or_default().to_string(),
            task_definition: d.task_definition().unwrap_or_default().to_string(),
            desired_count: d.desired_count(),
            running_count: d.running_count(),
            pending_count: d.pending_count(),
            rollout_state: d.rollout_state().map(|s| s.as_str().to_string()),
        }
    }

    /// Whether the deployment has finished rolling out: its rollout state says `COMPLETED`, or,
    /// where ECS reports no rollout state, all the tasks it wants are running.
    fn rolled_out(&self) -> bool {
        match self.rollout_state.as_deref() {
            Some(state) => state == "COMPLETED",
            None => self.running_count >= self.desired_count,
        }
    }
}

impl ServiceView {
    /// The view of a service as `DescribeServices` returned it.
    fn from_sdk(service: &Service) -> Self {
        Self {
            desired_count: service.desired_count(),
            running_count: service.running_count(),
            pending_count: service.pending_count(),
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

/// What `DescribeTasks` says about this task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct TaskView {
    /// The task group: `service:NAME` for a service's task, `family:FAMILY` (or the group given)
    /// for a standalone one.
    pub group: Option<String>,
    /// Who started the task: the deployment ID (`ecs-svc/…`) for a task a service started.
    pub started_by: Option<String>,
    /// The task definition ARN.
    pub task_definition: Option<String>,
}

impl TaskView {
    fn from_sdk(task: &Task) -> Self {
        let non_empty = |v: Option<&str>| v.filter(|s| !s.trim().is_empty()).map(str::to_string);
        Self {
            group: non_empty(task.group()),
            started_by: non_empty(task.started_by()),
            task_definition: non_empty(task.task_definition_arn()),
        }
    }

    /// The service the group names (`service:NAME`), if it names one.
    fn service_name(&self) -> Option<&str> {
        self.group
            .as_deref()?
            .strip_prefix(SERVICE_GROUP_PREFIX)
            .filter(|name| !name.is_empty())
    }

    /// The ID of the deployment that started the task, when a service deployment did
    /// (`startedBy` is `ecs-svc/…`).
    fn deployment_id(&self) -> Option<&str> {
        self.started_by
            .as_deref()
            .filter(|s| s.len() > DEPLOYMENT_ID_PREFIX.len() && s.starts_with(DEPLOYMENT_ID_PREFIX))
    }
}

/// What the watcher has learnt from `DescribeTasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskFacts {
    /// Not asked yet, or the last call failed: asked on the next round.
    Unknown,
    /// ECS's answer (kept: it does not change during the task's life).
    Known(TaskView),
    /// The task role may not call `DescribeTasks`: the task metadata is all there is.
    Denied,
}

/// The service to watch, as far as the task metadata and `DescribeTasks` tell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watched<'a> {
    /// This service.
    Service(&'a str),
    /// None: the task belongs to no service (why, for the one log line).
    NoService(String),
    /// Not known until `DescribeTasks` answers.
    NotYetKnown,
}

/// The service to watch: the metadata's `ServiceName` when it has one, or else the service the
/// task's group names.
fn watched_service<'a>(metadata_service: Option<&'a str>, facts: &'a TaskFacts) -> Watched<'a> {
    if let Some(name) = metadata_service {
        return Watched::Service(name);
    }
    match facts {
        TaskFacts::Known(view) => match view.service_name() {
            Some(name) => Watched::Service(name),
            None => Watched::NoService(format!(
                "the task belongs to no service: its group is {} (a standalone task, started \
                 by RunTask or StartTask)",
                view.group
                    .as_deref()
                    .map_or_else(|| "not given".to_string(), |g| format!("{g:?}"))
            )),
        },
        TaskFacts::Denied => Watched::NoService(format!(
            "the task metadata names no service, and the task role may not call \
             {DESCRIBE_TASKS_ACTION} to ask ECS for it"
        )),
        TaskFacts::Unknown => Watched::NotYetKnown,
    }
}

/// What is known of this task's place in its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mine<'a> {
    /// The ID of the deployment that started the task (`ecs-svc/…`), when known.
    pub deployment_id: Option<&'a str>,
    /// The task's task definition ARN, when known.
    pub task_definition: Option<&'a str>,
}

/// Why a deployment replaces this task (`mine`), or `None` if none does:
///
/// * `Some("deployment in progress: the service is moving to deployment <id> (<taskdef>); this
///   task is of deployment <id>")` when the task's deployment is not the PRIMARY one, and the
///   PRIMARY deployment is still rolling out or the task's deployment is ACTIVE (being replaced);
/// * when the deployment ID is unknown (or the task's deployment is not listed and the PRIMARY
///   one has rolled out), `Some("deployment in progress: the service is moving to <taskdef>")`
///   when the PRIMARY deployment's task definition is not the task's.
///
/// With neither the deployment ID nor the task definition known, no deployment is recognised. A
/// scale-in is decided separately ([`scale_in_scope`], then the [`fleet`](super::fleet) rule).
fn replacement_reason(service: &ServiceView, mine: Mine<'_>) -> Option<Replacement> {
    let primary = service.primary()?;
    deployment_reason(service, primary, mine)
        .map(|reason| Replacement::new(ReplacementKind::Deployment, reason))
}

/// Which tasks a scale-in is counted over, and how many of them ECS wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScaleInScope<'a> {
    /// ECS runs (or starts) no more tasks than it wants: no scale-in.
    NoExcess,
    /// Every task of the service; `desired` of them are wanted.
    Service {
        /// The service's desired count.
        desired: u32,
    },
    /// The tasks of this task's own deployment, the PRIMARY one, during a deployment (the old
    /// deployments' tasks are being replaced, which is not a scale-in of ours).
    Deployment {
        /// The deployment's ID (the tasks' `startedBy`).
        id: &'a str,
        /// The deployment's desired count.
        desired: u32,
    },
    /// A deployment is under way, its PRIMARY deployment runs more tasks than it wants, and this
    /// task's deployment is not known: which tasks to count cannot be told.
    Unknown,
}

/// Whether the service (or, during a deployment, this task's PRIMARY deployment) runs or starts
/// more tasks than it wants, from `DescribeServices` alone: the cheap check made every round
/// before the service's tasks are asked about. Called once no deployment replaces this task.
fn scale_in_scope<'a>(service: &'a ServiceView, mine: Mine<'a>) -> ScaleInScope<'a> {
    let wanted = |desired: i32| u32::try_from(desired).unwrap_or(0);
    let excess = |desired: i32, running: i32, pending: i32| {
        i64::from(running) + i64::from(pending) > i64::from(desired.max(0))
    };
    match service.primary() {
        Some(p) if service.deployments.len() > 1 => {
            if !excess(p.desired_count, p.running_count, p.pending_count) {
                ScaleInScope::NoExcess
            } else if mine.deployment_id == Some(p.id.as_str()) && !p.id.is_empty() {
                ScaleInScope::Deployment {
                    id: &p.id,
                    desired: wanted(p.desired_count),
                }
            } else {
                ScaleInScope::Unknown
            }
        }
        _ if excess(
            service.desired_count,
            service.running_count,
            service.pending_count,
        ) =>
        {
            ScaleInScope::Service {
                desired: wanted(service.desired_count),
            }
        }
        _ => ScaleInScope::NoExcess,
    }
}

/// The deployment part of [`replacement_reason`].
fn deployment_reason(
    service: &ServiceView,
    primary: &DeploymentView,
    mine: Mine<'_>,
) -> Option<String> {
    if let Some(ours) = mine.deployment_id.filter(|_| !primary.id.is_empty()) {
        if primary.id == ours {
            return None;
        }
        let ours_is_replaced = service
            .deployments
            .iter()
            .any(|d| d.id == ours && d.status == "ACTIVE");
        if ours_is_replaced || !primary.rolled_out() {
            return Some(format!(
                "deployment in progress: the service is moving to deployment {} ({}); this task \
                 is of deployment {ours}",
                primary.id, primary.task_definition
            ));
        }
    }
    let mine = mine.task_definition?;
    (primary.task_definition != mine).then(|| {
        format!(
            "deployment in progress: the service is moving to {}",
            primary.task_definition
        )
    })
}

/// Every task's load (players, jobs in hand), by task id (the last part of the task ARN), as the
/// application knows it (for example from a backplane all tasks write to). On a scale-in that
/// needs busy tasks gone, the least loaded go first when every candidate's load is known.
pub type TaskLoads =
    std::sync::Arc<dyn Fn() -> std::collections::BTreeMap<String, u64> + Send + Sync>;

/// Starts the watcher: every `interval` (±10 % jitter; the first look is at once) it calls
/// `DescribeServices` for the task's service (after `DescribeTasks` once for the task's group and
/// deployment) and publishes the reason ECS wants the task gone, `None` while it does not. On an
/// error it logs a warning and keeps the previous value. It stops when every receiver is dropped,
/// or at once (after one log line) when the task belongs to no service. It never panics and
/// returns at once; outside a tokio runtime it logs an error and the receiver stays `None`.
pub fn spawn_drain_watch(
    context: &EcsContext,
    interval: Duration,
    loads: Option<TaskLoads>,
) -> watch::Receiver<Option<Replacement>> {
    let (tx, rx) = watch::channel(None);
    match tokio::runtime::Handle::try_current() {
        Ok(_) => {
            // It may end (no service), but a panic ends the process (crate::supervise).
            crate::supervise::spawn_may_end(
                "drain watcher",
                run(context.clone(), interval.max(MIN_INTERVAL), loads, tx),
            );
        }
        Err(e) => tracing::error!("Drain watch not started (no tokio runtime): {e}"),
    }
    rx
}

async fn run(
    context: EcsContext,
    interval: Duration,
    loads: Option<TaskLoads>,
    tx: watch::Sender<Option<Replacement>>,
) {
    tracing::info!(
        "Drain watch: asking ECS (DescribeTasks once, DescribeServices every {:.0?}, and the \
         service's tasks while it runs more than it wants) whether this task is being replaced",
        interval
    );
    let mut task = TaskState::default();
    let mut fleet = FleetState::default();
    let mut last_error: Option<BackendError> = None;
    loop {
        let draining_for_scale_in = tx
            .borrow()
            .as_ref()
            .is_some_and(|r| r.kind == ReplacementKind::ScaleIn);
        let look = tokio::select! {
            _ = tx.closed() => return,
            look = look(&context, &mut task, &mut fleet, loads.as_ref(), draining_for_scale_in) => look,
        };
        match look {
            Ok(look @ (Look::Reason(_) | Look::KeepScaleIn)) => {
                if last_error.take().is_some() {
                    tracing::info!("Drain watch: ECS answers again");
                }
                let reason = match look {
                    Look::Reason(reason) => reason,
                    _ => tx
                        .borrow()
                        .clone()
                        .filter(|r| r.kind == ReplacementKind::ScaleIn),
                };
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
fn publish(tx: &watch::Sender<Option<Replacement>>, reason: Option<Replacement>) {
    tx.send_if_modified(|current| {
        if *current == reason {
            return false;
        }
        match &reason {
            Some(r) => tracing::warn!("Task is being replaced: {}", r.reason),
            None => tracing::info!("Task is no longer being replaced"),
        }
        *current = reason;
        true
    });
}

/// What the watcher keeps from round to round about `DescribeTasks`.
struct TaskState {
    facts: TaskFacts,
    /// The last `DescribeTasks` error logged while watching with the metadata alone (each
    /// distinct error is logged once).
    last_error: Option<BackendError>,
    /// Whether the metadata's `ServiceName` and the task's group were found to disagree (logged
    /// once).
    disagreement_logged: bool,
}

impl Default for TaskState {
    fn default() -> Self {
        Self {
            facts: TaskFacts::Unknown,
            last_error: None,
            disagreement_logged: false,
        }
    }
}

impl TaskState {
    /// Asks `DescribeTasks` unless its answer (or its denial) is known already. Returns the error
    /// of a failed call, which leaves the facts unknown (asked again on the next round).
    async fn learn(
        &mut self,
        client: &aws_sdk_ecs::Client,
        id: &TaskIdentity,
    ) -> Option<BackendError> {
        if self.facts != TaskFacts::Unknown {
            return None;
        }
        match describe_task(client, id).await {
            Ok(view) => {
                tracing::info!(
                    "Drain watch: ECS says task {} is in group {} and was started by {}",
                    id.task_arn,
                    view.group.as_deref().unwrap_or("(none)"),
                    view.started_by.as_deref().unwrap_or("(not given)")
                );
                self.facts = TaskFacts::Known(view);
                self.last_error = None;
                None
            }
            Err(TaskError::Denied(error)) => {
                tracing::warn!(
                    "Drain watch: {error}. Going on with the task metadata alone: a forced new \
                     deployment with the same task definition is not recognised, and a task \
                     whose metadata names no service is not watched"
                );
                self.facts = TaskFacts::Denied;
                None
            }
            Err(TaskError::Other(error)) => Some(error),
        }
    }

    /// Logs (once per distinct error) that `DescribeTasks` failed and the metadata is used alone
    /// this round.
    fn note_fallback(&mut self, error: BackendError) {
        if self.last_error.as_ref() != Some(&error) {
            tracing::warn!(
                "Drain watch: {DESCRIBE_TASKS_ACTION} failed, watching with the task metadata \
                 alone until it answers: {error}"
            );
        } else {
            tracing::debug!("Drain watch: {DESCRIBE_TASKS_ACTION} still failing: {error}");
        }
        self.last_error = Some(error);
    }

    /// Logs once when the metadata's `ServiceName` and the task's group name different services.
    fn check_agreement(&mut self, metadata_service: Option<&str>) {
        let TaskFacts::Known(view) = &self.facts else {
            return;
        };
        if let (Some(metadata), Some(group)) = (metadata_service, view.service_name()) {
            if metadata != group && !self.disagreement_logged {
                tracing::warn!(
                    "Drain watch: the task metadata names service {metadata:?} but ECS puts the \
                     task in group {:?}; watching {metadata:?}",
                    view.group.as_deref().unwrap_or_default()
                );
                self.disagreement_logged = true;
            }
        }
    }
}

/// The outcome of one look at the service.
enum Look {
    /// The current reason to drain (`None`: no reason).
    Reason(Option<Replacement>),
    /// The service runs more tasks than it wants, but what its tasks are (or whether they are
    /// protected) is not known this round: a scale-in drain already under way goes on, and none
    /// starts (never drain every task because data is missing).
    KeepScaleIn,
    /// The task has no service: nothing to watch.
    NoService(String),
}

async fn look(
    context: &EcsContext,
    task: &mut TaskState,
    fleet: &mut FleetState,
    loads: Option<&TaskLoads>,
    draining_for_scale_in: bool,
) -> Result<Look, BackendError> {
    let client = context.client();
    let id = context.identity().identity().await?;
    let task_error = task.learn(client, id).await;
    let service_name = match watched_service(id.service_name.as_deref(), &task.facts) {
        Watched::Service(name) => name.to_string(),
        Watched::NoService(why) => {
            return Ok(Look::NoService(format!("task {}: {why}", id.task_arn)))
        }
        Watched::NotYetKnown => {
            return Err(task_error.unwrap_or_else(|| {
                BackendError::new(
                    ErrorKind::Failure,
                    format!("{DESCRIBE_TASKS_ACTION}: the task's service is not known yet"),
                )
            }))
        }
    };
    if let Some(error) = task_error {
        task.note_fallback(error);
    }
    task.check_agreement(id.service_name.as_deref());
    let view = match &task.facts {
        TaskFacts::Known(view) => Some(view),
        TaskFacts::Unknown | TaskFacts::Denied => None,
    };
    let metadata_task_definition = id.task_definition_arn();
    let mine = Mine {
        deployment_id: view.and_then(TaskView::deployment_id),
        task_definition: metadata_task_definition
            .as_deref()
            .or_else(|| view.and_then(|v| v.task_definition.as_deref())),
    };
    let service = describe_service(client, id, &service_name).await?;
    if let Some(replacement) = replacement_reason(&service, mine) {
        return Ok(Look::Reason(Some(replacement)));
    }
    let (desired, deployment) = match scale_in_scope(&service, mine) {
        ScaleInScope::NoExcess => return Ok(Look::Reason(None)),
        ScaleInScope::Unknown => {
            fleet.note(FleetNote::DeploymentUnknown);
            return Ok(Look::KeepScaleIn);
        }
        ScaleInScope::Service { desired } => (desired, None),
        ScaleInScope::Deployment { id, desired } => (desired, Some(id)),
    };
    let view = match fleet
        .survey(client, id, &service_name, desired, deployment, loads)
        .await
    {
        Ok(view) => view,
        Err(error) => {
            fleet.note(FleetNote::Failed(error));
            return Ok(Look::KeepScaleIn);
        }
    };
    let decision = fleet::scale_in(&view, &id.task_arn, draining_for_scale_in);
    if decision == ScaleIn::Unknown {
        fleet.note(FleetNote::ProtectionUnknown);
        return Ok(Look::KeepScaleIn);
    }
    fleet.note(FleetNote::Decided(decision.clone()));
    Ok(Look::Reason(decision.reason().map(|reason| {
        Replacement::new(ReplacementKind::ScaleIn, reason)
    })))
}

/// The longest list of tasks the watcher reads (50 pages of 100: a service runs at most 5,000).
const MAX_LIST_PAGES: usize = 50;
/// Tasks per `DescribeTasks` and per `GetTaskProtection` call (the API reference allows up to
/// 100 for each).
const TASKS_PER_CALL: usize = 100;

/// What `DescribeTasks` said of another task (neither changes during a task's life, but a task
/// that is still starting has no `startedAt` yet).
#[derive(Debug, Clone, Default)]
struct Described {
    started_at: Option<SystemTime>,
    started_by: Option<String>,
}

/// What the watcher keeps about the service's tasks from round to round.
#[derive(Debug, Default)]
struct FleetState {
    /// `DescribeTasks`'s answers, by task ARN (asked once per task, and again while it has not
    /// started).
    described: HashMap<String, Described>,
    /// The last thing logged about the fleet (each change is logged once).
    last_note: Option<FleetNote>,
}

/// What the watcher logs about a scale-in, once per change.
#[derive(Debug, Clone, PartialEq)]
enum FleetNote {
    /// A deployment is under way and this task's deployment is not known.
    DeploymentUnknown,
    /// A call about the service's tasks failed.
    Failed(BackendError),
    /// `GetTaskProtection` did not say for every task.
    ProtectionUnknown,
    /// The rule decided.
    Decided(ScaleIn),
}

impl FleetState {
    /// Logs `note` unless it is what was logged last.
    fn note(&mut self, note: FleetNote) {
        if self.last_note.as_ref() == Some(&note) {
            return;
        }
        const KEEP: &str = "no scale-in drain starts (one under way goes on) until it is known";
        match &note {
            FleetNote::DeploymentUnknown => tracing::warn!(
                "Drain watch: the service runs more tasks than it wants during a deployment, and \
                 this task's deployment is not known ({DESCRIBE_TASKS_ACTION}); {KEEP}"
            ),
            FleetNote::Failed(error) => tracing::warn!(
                "Drain watch: the service runs more tasks than it wants, but its tasks cannot be \
                 read: {error}; {KEEP}"
            ),
            FleetNote::ProtectionUnknown => tracing::warn!(
                "Drain watch: the service runs more tasks than it wants, but {GET_ACTION} did \
                 not say for every task whether it is protected; {KEEP}"
            ),
            FleetNote::Decided(ScaleIn::Others { surplus }) => tracing::info!(
                "Drain watch: scale-in: ECS needs {surplus} busy task(s) gone; others drain first"
            ),
            FleetNote::Decided(ScaleIn::NotNeeded) => tracing::info!(
                "Drain watch: scale-in: ECS can reach its desired count by stopping idle tasks; \
                 this task keeps its work"
            ),
            FleetNote::Decided(_) => {}
        }
        self.last_note = Some(note);
    }

    /// Reads the service's tasks (`ListTasks`, desired status RUNNING), what they are
    /// (`DescribeTasks`, for the tasks not described yet) and whether each is protected
    /// (`GetTaskProtection`); keeps those of `deployment` when one is given.
    async fn survey(
        &mut self,
        client: &aws_sdk_ecs::Client,
        id: &TaskIdentity,
        service_name: &str,
        desired: u32,
        deployment: Option<&str>,
        loads: Option<&TaskLoads>,
    ) -> Result<Fleet, BackendError> {
        let arns = list_tasks(client, id, service_name).await?;
        let listed: HashSet<&str> = arns.iter().map(String::as_str).collect();
        self.described
            .retain(|arn, _| listed.contains(arn.as_str()));
        let unknown: Vec<String> = arns
            .iter()
            .filter(|arn| {
                self.described
                    .get(*arn)
                    .is_none_or(|d| d.started_at.is_none())
            })
            .cloned()
            .collect();
        for chunk in unknown.chunks(TASKS_PER_CALL) {
            for (arn, described) in describe_tasks(client, id, chunk).await? {
                self.described.insert(arn, described);
            }
        }
        let arns: Vec<String> = arns
            .into_iter()
            .filter(|arn| match deployment {
                Some(d) => {
                    self.described
                        .get(arn)
                        .and_then(|t| t.started_by.as_deref())
                        == Some(d)
                }
                None => true,
            })
            .collect();
        let mut protection = HashMap::new();
        let mut gone = HashSet::new();
        for chunk in arns.chunks(TASKS_PER_CALL) {
            let (answered, missing) = task_protection(client, id, chunk).await?;
            protection.extend(answered);
            gone.extend(missing);
        }
        let loads = loads.map(|f| f());
        let tasks = arns
            .into_iter()
            .filter(|arn| !gone.contains(arn))
            .map(|arn| FleetTask {
                started_at: self.described.get(&arn).and_then(|d| d.started_at),
                protected: protection.get(&arn).copied(),
                load: loads.as_ref().and_then(|l| l.get(task_id(&arn)).copied()),
                arn,
            })
            .collect();
        Ok(Fleet { desired, tasks })
    }
}

/// Runs `request` with the watcher's call timeout, classifying its error for IAM action `action`.
async fn call<T, E>(
    action: &str,
    request: impl std::future::Future<
        Output = Result<
            T,
            aws_sdk_ecs::error::SdkError<E, aws_sdk_ecs::config::http::HttpResponse>,
        >,
    >,
) -> Result<T, BackendError>
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    tokio::time::timeout(CALL_TIMEOUT, request)
        .await
        .map_err(|_| {
            BackendError::new(
                ErrorKind::Timeout,
                format!("{action}: no answer within {CALL_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| classify_sdk_error(&e, action))
}

/// `ListTasks`: the ARNs of the service's tasks whose desired status is `RUNNING`.
async fn list_tasks(
    client: &aws_sdk_ecs::Client,
    id: &TaskIdentity,
    service_name: &str,
) -> Result<Vec<String>, BackendError> {
    let mut arns = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let request = client
            .list_tasks()
            .cluster(&id.cluster)
            .service_name(service_name)
            .desired_status(DesiredStatus::Running)
            .max_results(TASKS_PER_CALL as i32)
            .set_next_token(next.take())
            .customize()
            .config_override(region_override(client, id)?)
            .send();
        let output = call(LIST_TASKS_ACTION, request).await?;
        arns.extend(output.task_arns().iter().cloned());
        match output.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_string()),
            _ => return Ok(arns),
        }
    }
    Err(BackendError::new(
        ErrorKind::Malformed,
        format!("{LIST_TASKS_ACTION}: more than {MAX_LIST_PAGES} pages of tasks"),
    ))
}

/// `DescribeTasks` for `arns` (at most 100): when each started and which deployment started it.
/// Tasks ECS no longer knows are left out.
async fn describe_tasks(
    client: &aws_sdk_ecs::Client,
    id: &TaskIdentity,
    arns: &[String],
) -> Result<Vec<(String, Described)>, BackendError> {
    let request = client
        .describe_tasks()
        .cluster(&id.cluster)
        .set_tasks(Some(arns.to_vec()))
        .customize()
        .config_override(region_override(client, id)?)
        .send();
    let output = call(DESCRIBE_TASKS_ACTION, request).await?;
    Ok(output
        .tasks()
        .iter()
        .filter_map(|t| {
            let arn = t.task_arn()?.to_string();
            let started_at = t.started_at().and_then(|d| SystemTime::try_from(*d).ok());
            let started_by = t.started_by().map(str::to_string);
            Some((
                arn,
                Described {
                    started_at,
                    started_by,
                },
            ))
        })
        .collect())
}

/// `GetTaskProtection` for `arns` (at most 100): whether each is protected now (enabled, and
/// not past its expiry), and the tasks ECS says are gone (`MISSING`). A task it says neither of
/// is left out of the first, so its protection counts as unknown.
async fn task_protection(
    client: &aws_sdk_ecs::Client,
    id: &TaskIdentity,
    arns: &[String],
) -> Result<(HashMap<String, bool>, Vec<String>), BackendError> {
    let request = client
        .get_task_protection()
        .cluster(&id.cluster)
        .set_tasks(Some(arns.to_vec()))
        .customize()
        .config_override(region_override(client, id)?)
        .send();
    let output = call(GET_ACTION, request).await?;
    let now = SystemTime::now();
    let protected = output
        .protected_tasks()
        .iter()
        .filter_map(|t| {
            let arn = t.task_arn()?.to_string();
            let unexpired = t
                .expiration_date()
                .and_then(|d| SystemTime::try_from(*d).ok())
                .is_none_or(|expiry| expiry > now);
            Some((arn, t.protection_enabled() && unexpired))
        })
        .collect();
    let gone = output
        .failures()
        .iter()
        .filter(|f| {
            f.reason()
                .is_some_and(|r| r.eq_ignore_ascii_case("MISSING"))
        })
        .filter_map(|f| f.arn().map(str::to_string))
        .collect();
    Ok((protected, gone))
}

/// Why `DescribeTasks` gave no answer.
enum TaskError {
    /// IAM refused the call (the task role lacks `ecs:DescribeTasks`).
    Denied(BackendError),
    /// Any other failure.
    Other(BackendError),
}

/// `DescribeTasks` on the task's own ARN.
async fn describe_task(
    client: &aws_sdk_ecs::Client,
    id: &TaskIdentity,
) -> Result<TaskView, TaskError> {
    let request = client
        .describe_tasks()
        .cluster(&id.cluster)
        .tasks(&id.task_arn)
        .customize()
        .config_override(region_override(client, id).map_err(TaskError::Other)?)
        .send();
    let output = tokio::time::timeout(CALL_TIMEOUT, request)
        .await
        .map_err(|_| {
            TaskError::Other(BackendError::new(
                ErrorKind::Timeout,
                format!("{DESCRIBE_TASKS_ACTION}: no answer within {CALL_TIMEOUT:?}"),
            ))
        })?
        .map_err(|e| {
            let error = classify_sdk_error(&e, DESCRIBE_TASKS_ACTION);
            if is_access_denied(&e) {
                TaskError::Denied(error)
            } else {
                TaskError::Other(error)
            }
        })?;
    if let Some(failure) = output.failures().first() {
        let mut error = super::ecs_failure(failure.reason(), failure.detail());
        error.message = format!(
            "{DESCRIBE_TASKS_ACTION} for task {}: {}",
            id.task_arn, error.message
        );
        return Err(TaskError::Other(error));
    }
    output
        .tasks()
        .iter()
        .find(|t| t.task_arn() == Some(id.task_arn.as_str()))
        .or_else(|| output.tasks().first())
        .map(TaskView::from_sdk)
        .ok_or_else(|| {
            TaskError::Other(BackendError::new(
                ErrorKind::Malformed,
                format!(
                    "{DESCRIBE_TASKS_ACTION}: the answer lists no task {}",
                    id.task_arn
                ),
            ))
        })
}

/// `DescribeServices` for `service_name` in the task's cluster.
async fn describe_service(
    client: &aws_sdk_ecs::Client,
    id: &TaskIdentity,
    service_name: &str,
) -> Result<ServiceView, BackendError> {
    let request = client
        .describe_services()
        .cluster(&id.cluster)
        .services(service_name)
        .customize()
        .config_override(region_override(client, id)?)
        .send();
    let output = call(DESCRIBE_SERVICES_ACTION, request).await?;
    if let Some(failure) = output.failures().first() {
        let mut error = super::ecs_failure(failure.reason(), failure.detail());
        error.message = format!(
            "{DESCRIBE_SERVICES_ACTION} for service {service_name}: {}",
            error.message
        );
        return Err(error);
    }
    output
        .services()
        .iter()
        .find(|s| s.service_name() == Some(service_name))
        .or_else(|| output.services().first())
        .map(ServiceView::from_sdk)
        .ok_or_else(|| {
            BackendError::new(
                ErrorKind::Malformed,
                format!("{DESCRIBE_SERVICES_ACTION}: the answer lists no service {service_name}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason [`replacement_reason`] gives, for the log.
    fn reason_of(service: &ServiceView, mine: Mine<'_>) -> Option<String> {
        replacement_reason(service, mine).map(|r| r.reason)
    }

    const OURS: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7";
    const NEWER: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:8";
    const OUR_DEPLOYMENT: &str = "ecs-svc/1111111111111111111";
    const NEW_DEPLOYMENT: &str = "ecs-svc/2222222222222222222";

    fn deployment(status: &str, td: &str, desired: i32, running: i32) -> DeploymentView {
        let id = match (status, td) {
            ("PRIMARY", NEWER) => "ecs-svc/8888888888888888888",
            _ => "ecs-svc/7777777777777777777",
        };
        deployment_with_id(id, status, td, desired, running)
    }

    fn deployment_with_id(
        id: &str,
        status: &str,
        td: &str,
        desired: i32,
        running: i32,
    ) -> DeploymentView {
        DeploymentView {
            id: id.into(),
            status: status.into(),
            task_definition: td.into(),
            desired_count: desired,
            running_count: running,
            pending_count: 0,
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
            pending_count: 0,
            deployments,
        }
    }

    /// A task whose deployment is unknown (the task definition comparison applies).
    fn by_task_definition(td: &str) -> Mine<'_> {
        Mine {
            deployment_id: None,
            task_definition: Some(td),
        }
    }

    /// A task of deployment `id`, task definition `td`.
    fn of_deployment<'a>(id: &'a str, td: &'a str) -> Mine<'a> {
        Mine {
            deployment_id: Some(id),
            task_definition: Some(td),
        }
    }

    #[test]
    fn a_service_at_rest_on_our_task_definition_keeps_us() {
        let s = service(2, 2, vec![deployment("PRIMARY", OURS, 2, 2)]);
        assert_eq!(reason_of(&s, by_task_definition(OURS)), None);
        let s = service(
            2,
            2,
            vec![deployment_with_id(OUR_DEPLOYMENT, "PRIMARY", OURS, 2, 2)],
        );
        assert_eq!(reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS)), None);
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
            reason_of(&s, by_task_definition(OURS)).as_deref(),
            Some(format!("deployment in progress: the service is moving to {NEWER}").as_str())
        );
    }

    #[test]
    fn a_newer_primary_deployment_replaces_us_by_deployment_id() {
        let s = service(
            2,
            3,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", NEWER, 2, 1),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", OURS, 2, 2),
            ],
        );
        assert_eq!(
            reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS)).as_deref(),
            Some(
                format!(
                    "deployment in progress: the service is moving to deployment \
                     {NEW_DEPLOYMENT} ({NEWER}); this task is of deployment {OUR_DEPLOYMENT}"
                )
                .as_str()
            )
        );
    }

    #[test]
    fn a_forced_new_deployment_with_the_same_task_definition_replaces_us() {
        let s = service(
            2,
            3,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", OURS, 2, 1),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", OURS, 2, 2),
            ],
        );
        let reason = reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS)).unwrap();
        assert!(reason.starts_with("deployment in progress"), "{reason}");
        assert!(reason.contains(NEW_DEPLOYMENT), "{reason}");
        assert!(reason.contains(OUR_DEPLOYMENT), "{reason}");
        // Without the deployment ID the same service looks at rest: the old limit.
        assert_eq!(reason_of(&s, by_task_definition(OURS)), None);
    }

    #[test]
    fn our_deployment_still_active_after_the_primary_rolled_out_replaces_us() {
        // The PRIMARY deployment has all its tasks; ECS is stopping the old ones (ours is held by
        // its protection).
        let mut primary = deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", OURS, 2, 2);
        primary.rollout_state = Some("COMPLETED".into());
        let s = service(
            2,
            3,
            vec![
                primary,
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", OURS, 0, 1),
            ],
        );
        assert!(reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS))
            .unwrap()
            .contains(NEW_DEPLOYMENT));
    }

    #[test]
    fn a_primary_still_rolling_out_without_a_rollout_state_replaces_us() {
        let mut primary = deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", OURS, 2, 1);
        primary.rollout_state = None;
        let s = service(2, 2, vec![primary.clone()]);
        assert!(reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS)).is_some());
        // Rolled out (all desired tasks run) and ours not listed: the task definition decides.
        primary.running_count = 2;
        let s = service(2, 2, vec![primary]);
        assert_eq!(reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS)), None);
    }

    #[test]
    fn a_new_task_of_the_primary_deployment_is_not_told_to_drain() {
        // A forced new deployment, we are one of its new tasks: same task definition everywhere.
        let s = service(
            2,
            4,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", OURS, 2, 2),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", OURS, 2, 2),
            ],
        );
        assert_eq!(reason_of(&s, of_deployment(NEW_DEPLOYMENT, OURS)), None);
        // A new task definition: we run it, the old tasks do not.
        let s = service(
            2,
            4,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", NEWER, 2, 2),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", OURS, 2, 2),
            ],
        );
        assert_eq!(reason_of(&s, of_deployment(NEW_DEPLOYMENT, NEWER)), None);
    }

    #[test]
    fn an_unknown_deployment_id_falls_back_on_the_task_definition() {
        let s = service(
            2,
            3,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", NEWER, 2, 1),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", OURS, 2, 2),
            ],
        );
        assert_eq!(
            reason_of(&s, by_task_definition(OURS)).as_deref(),
            Some(format!("deployment in progress: the service is moving to {NEWER}").as_str())
        );
        assert_eq!(reason_of(&s, by_task_definition(NEWER)), None);
        // A PRIMARY deployment without an ID cannot be compared by ID either.
        let mut s = s;
        s.deployments[0].id.clear();
        assert_eq!(reason_of(&s, of_deployment(OUR_DEPLOYMENT, NEWER)), None);
        assert!(reason_of(&s, of_deployment(OUR_DEPLOYMENT, OURS))
            .unwrap()
            .ends_with(NEWER));
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
        assert!(reason_of(&s, by_task_definition(OURS))
            .unwrap()
            .contains("web:6"));
    }

    #[test]
    fn a_scale_in_is_no_deployment() {
        // Fewer wanted than run: no deployment reason; the fleet rule decides who drains.
        let s = service(1, 3, vec![deployment("PRIMARY", OURS, 1, 3)]);
        assert_eq!(reason_of(&s, by_task_definition(OURS)), None);
        assert_eq!(reason_of(&s, Mine::default()), None);
        assert_eq!(reason_of(&service(0, 1, vec![]), Mine::default()), None);
    }

    #[test]
    fn more_tasks_running_or_starting_than_wanted_is_a_scale_in_of_the_service() {
        let mine = of_deployment(OUR_DEPLOYMENT, OURS);
        let s = service(1, 3, vec![deployment("PRIMARY", OURS, 1, 3)]);
        assert_eq!(
            scale_in_scope(&s, mine),
            ScaleInScope::Service { desired: 1 }
        );
        assert_eq!(
            scale_in_scope(&s, Mine::default()),
            ScaleInScope::Service { desired: 1 }
        );
        // Starting tasks count: 2 running + 1 pending against 2 wanted.
        let mut s = service(2, 2, vec![deployment("PRIMARY", OURS, 2, 2)]);
        s.pending_count = 1;
        assert_eq!(
            scale_in_scope(&s, mine),
            ScaleInScope::Service { desired: 2 }
        );
        assert_eq!(
            scale_in_scope(&service(0, 1, vec![]), mine),
            ScaleInScope::Service { desired: 0 }
        );
    }

    #[test]
    fn no_excess_is_no_scale_in() {
        let mine = of_deployment(OUR_DEPLOYMENT, OURS);
        let s = service(1, 1, vec![deployment("PRIMARY", OURS, 1, 1)]);
        assert_eq!(scale_in_scope(&s, mine), ScaleInScope::NoExcess);
        // Scaling out is no reason to drain.
        let s = service(4, 2, vec![deployment("PRIMARY", OURS, 4, 2)]);
        assert_eq!(scale_in_scope(&s, mine), ScaleInScope::NoExcess);
        assert_eq!(
            scale_in_scope(&service(2, 2, vec![]), mine),
            ScaleInScope::NoExcess
        );
    }

    #[test]
    fn during_a_deployment_only_our_primary_deployments_own_counts_matter() {
        // Rolling deployment, we are new: 2 old + 2 new running, 2 desired: no scale-in of ours.
        let s = service(
            2,
            4,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", OURS, 2, 2),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", NEWER, 2, 2),
            ],
        );
        let new_task = of_deployment(NEW_DEPLOYMENT, OURS);
        assert_eq!(reason_of(&s, new_task), None);
        assert_eq!(scale_in_scope(&s, new_task), ScaleInScope::NoExcess);
        // A scale-in of the primary deployment during it: counted over that deployment's tasks.
        let s = service(
            1,
            4,
            vec![
                deployment_with_id(NEW_DEPLOYMENT, "PRIMARY", OURS, 1, 2),
                deployment_with_id(OUR_DEPLOYMENT, "ACTIVE", NEWER, 2, 2),
            ],
        );
        assert_eq!(
            scale_in_scope(&s, new_task),
            ScaleInScope::Deployment {
                id: NEW_DEPLOYMENT,
                desired: 1
            }
        );
        // The same without knowing our deployment: which tasks to count cannot be told.
        assert_eq!(
            scale_in_scope(&s, by_task_definition(OURS)),
            ScaleInScope::Unknown
        );
    }

    fn known(group: Option<&str>, started_by: Option<&str>) -> TaskFacts {
        TaskFacts::Known(TaskView {
            group: group.map(str::to_string),
            started_by: started_by.map(str::to_string),
            task_definition: Some(OURS.into()),
        })
    }

    #[test]
    fn the_group_names_the_service_and_started_by_the_deployment() {
        let TaskFacts::Known(view) = known(Some("service:web"), Some(OUR_DEPLOYMENT)) else {
            unreachable!()
        };
        assert_eq!(view.service_name(), Some("web"));
        assert_eq!(view.deployment_id(), Some(OUR_DEPLOYMENT));
        let other = TaskView {
            group: Some("family:web".into()),
            started_by: Some("my-batch-job".into()),
            task_definition: None,
        };
        assert_eq!(other.service_name(), None);
        assert_eq!(other.deployment_id(), None);
        let bare = TaskView {
            group: Some("service:".into()),
            started_by: Some("ecs-svc/".into()),
            task_definition: None,
        };
        assert_eq!((bare.service_name(), bare.deployment_id()), (None, None));
    }

    #[test]
    fn the_metadata_service_name_is_preferred_and_the_group_fills_in() {
        let facts = known(Some("service:from-group"), Some(OUR_DEPLOYMENT));
        assert_eq!(
            watched_service(Some("from-metadata"), &facts),
            Watched::Service("from-metadata")
        );
        // Fargate: no ServiceName in the metadata.
        assert_eq!(
            watched_service(None, &facts),
            Watched::Service("from-group")
        );
        // DescribeTasks denied or not answered yet: the metadata alone.
        for facts in [TaskFacts::Denied, TaskFacts::Unknown] {
            assert_eq!(watched_service(Some("m"), &facts), Watched::Service("m"));
        }
        assert_eq!(
            watched_service(None, &TaskFacts::Unknown),
            Watched::NotYetKnown
        );
    }

    #[test]
    fn a_standalone_task_is_not_watched() {
        // RunTask: the group is the task definition family, startedBy is not a deployment.
        let facts = known(Some("family:web"), None);
        let Watched::NoService(why) = watched_service(None, &facts) else {
            panic!("a standalone task is watched");
        };
        assert!(why.contains("\"family:web\""), "{why}");
        assert!(why.contains("standalone"), "{why}");
        assert!(matches!(
            watched_service(None, &known(None, None)),
            Watched::NoService(_)
        ));
        let Watched::NoService(why) = watched_service(None, &TaskFacts::Denied) else {
            panic!("watched without a service name");
        };
        assert!(why.contains("ecs:DescribeTasks"), "{why}");
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
        let rx = spawn_drain_watch(&context, Duration::from_secs(1), None);
        assert_eq!(*rx.borrow(), None);
    }
}
