//! The stand-in ECS's task table: every task it knows, with what ECS reports about each
//! (`DescribeTasks`, `ListTasks`) and its own scale-in protection.
//!
//! Every operation of [`crate::StandInEcs`] reads and writes this one table: the ECS API, the
//! per-task task metadata and agent endpoints, the fleet's scheduler, and the methods tests use to
//! shape a fleet by hand.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::agent::Fault;
use crate::api::{task_definition_arn, ACCOUNT, CLUSTER_ARN, CLUSTER_NAME, REGION, SERVICE_NAME};
use crate::Protection;

/// The ARN of the stand-in's task with ID `id`
/// (`arn:aws:ecs:eu-west-1:123456789012:task/stand-in-cluster/<id>`).
pub fn task_arn(id: &str) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER_NAME}/{id}")
}

/// The `group` of a task the stand-in's service started (`service:stand-in-service`).
pub fn service_group() -> String {
    format!("service:{SERVICE_NAME}")
}

/// A task's `lastStatus`, in the order ECS moves a task through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum LastStatus {
    /// ECS prepares the task (its network interface).
    Provisioning,
    /// The task is being started (its process starts).
    Pending,
    /// The task has started and is being registered (its health check passes, then the load
    /// balancer registers it).
    Activating,
    /// The task runs.
    Running,
    /// The task is being stopped: deregistered from the load balancer, waiting out the
    /// deregistration delay.
    Deactivating,
    /// The task's containers were sent SIGTERM (SIGKILL after the stop timeout).
    Stopping,
    /// The task's process has ended; its resources are being released.
    Deprovisioning,
    /// The task has stopped.
    Stopped,
}

impl LastStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [LastStatus; 8] = [
        LastStatus::Provisioning,
        LastStatus::Pending,
        LastStatus::Activating,
        LastStatus::Running,
        LastStatus::Deactivating,
        LastStatus::Stopping,
        LastStatus::Deprovisioning,
        LastStatus::Stopped,
    ];

    /// The name ECS uses (`RUNNING`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Pending => "PENDING",
            Self::Activating => "ACTIVATING",
            Self::Running => "RUNNING",
            Self::Deactivating => "DEACTIVATING",
            Self::Stopping => "STOPPING",
            Self::Deprovisioning => "DEPROVISIONING",
            Self::Stopped => "STOPPED",
        }
    }

    /// The status ECS names `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the task is on its way up (what ECS counts as pending: PROVISIONING, PENDING,
    /// ACTIVATING).
    pub fn is_starting(self) -> bool {
        matches!(self, Self::Provisioning | Self::Pending | Self::Activating)
    }

    /// Whether the task is starting or running (what counts against a deployment's maximum
    /// percent).
    pub fn is_up(self) -> bool {
        self.is_starting() || self == Self::Running
    }

    /// Whether the task is on its way down, or down.
    pub fn is_stopping(self) -> bool {
        self > Self::Running
    }
}

impl std::fmt::Display for LastStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's `desiredStatus`: what ECS wants it to become. ECS never sets `PENDING` as a desired
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DesiredStatus {
    /// ECS wants the task running.
    Running,
    /// ECS wants the task stopped.
    Stopped,
}

impl DesiredStatus {
    /// The name ECS uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
        }
    }
}

impl std::fmt::Display for DesiredStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the stand-in knows about one task, as [`crate::StandInEcs::tasks`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task ID (the ARN's last part).
    pub id: String,
    /// The task ARN.
    pub arn: String,
    /// The task group (`service:stand-in-service` for the service's tasks), if any.
    pub group: Option<String>,
    /// Who started it: the ID of the service deployment (`ecs-svc/…`), if any.
    pub started_by: Option<String>,
    /// The task definition ARN.
    pub task_definition: String,
    /// `lastStatus`.
    pub last_status: LastStatus,
    /// `desiredStatus`.
    pub desired_status: DesiredStatus,
    /// When the task was created.
    pub created_at: SystemTime,
    /// When the task reached RUNNING, once it has.
    pub started_at: Option<SystemTime>,
    /// When ECS decided to stop it, once it has.
    pub stopping_at: Option<SystemTime>,
    /// When it stopped, once it has.
    pub stopped_at: Option<SystemTime>,
    /// Why it stopped (or is stopping), once it is.
    pub stopped_reason: Option<String>,
    /// The end of its scale-in protection, while it is protected.
    pub protected_until: Option<SystemTime>,
}

impl TaskInfo {
    /// Whether the task is protected from scale-in at `now`.
    pub fn protected_at(&self, now: SystemTime) -> bool {
        self.protected_until.is_some_and(|t| t > now)
    }
}

/// A task to add to the table by hand ([`crate::StandInEcs::add_task`]): by default a RUNNING
/// task of the service's PRIMARY deployment, created and started now, unprotected.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TaskSpec {
    /// The task ID; a new one when `None`.
    pub id: Option<String>,
    /// `lastStatus` (RUNNING by default). A stopping status also sets `desiredStatus` STOPPED.
    pub last_status: Option<LastStatus>,
    /// The deployment that started it (its `startedBy`); the PRIMARY deployment by default.
    pub deployment: Option<String>,
    /// The task definition ARN; the deployment's by default.
    pub task_definition: Option<String>,
    /// When it was created; its `started_at` (or now) by default.
    pub created_at: Option<SystemTime>,
    /// When it reached RUNNING; now by default for a task that is running or stopping.
    pub started_at: Option<SystemTime>,
    /// Protected until then.
    pub protected_until: Option<SystemTime>,
}

impl TaskSpec {
    /// A RUNNING task of the PRIMARY deployment, started now, unprotected.
    pub fn new() -> Self {
        Self::default()
    }

    /// With this task ID.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// With this `lastStatus`.
    pub fn status(mut self, status: LastStatus) -> Self {
        self.last_status = Some(status);
        self
    }

    /// Started by this deployment (`startedBy`).
    pub fn deployment(mut self, id: impl Into<String>) -> Self {
        self.deployment = Some(id.into());
        self
    }

    /// Of this task definition.
    pub fn task_definition(mut self, arn: impl Into<String>) -> Self {
        self.task_definition = Some(arn.into());
        self
    }

    /// Created at `t`.
    pub fn created_at(mut self, t: SystemTime) -> Self {
        self.created_at = Some(t);
        self
    }

    /// Started (RUNNING) at `t`.
    pub fn started_at(mut self, t: SystemTime) -> Self {
        self.started_at = Some(t);
        self
    }

    /// Protected until `t`.
    pub fn protected_until(mut self, t: SystemTime) -> Self {
        self.protected_until = Some(t);
        self
    }
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct TaskRow {
    pub id: String,
    pub arn: String,
    pub group: Option<String>,
    pub started_by: Option<String>,
    pub task_definition: String,
    pub last_status: LastStatus,
    pub desired_status: DesiredStatus,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub stopping_at: Option<SystemTime>,
    pub stopped_at: Option<SystemTime>,
    pub stopped_reason: Option<String>,
    /// Its scale-in protection, set through the ECS API or its agent endpoint.
    pub protection: Protection,
    /// What its agent endpoint answers with.
    pub agent_fault: Fault,
    /// Where it is in the availability zones (a, b, c in turn), for `availabilityZone`.
    pub zone: char,
}

impl TaskRow {
    /// A new row for task `id`, of `task_definition`, started by `started_by`, with the service's
    /// group, PROVISIONING and desired RUNNING, created now.
    pub fn new(
        id: String,
        started_by: Option<String>,
        task_definition: String,
        zone: char,
    ) -> Self {
        Self {
            arn: task_arn(&id),
            id,
            group: Some(service_group()),
            started_by,
            task_definition,
            last_status: LastStatus::Provisioning,
            desired_status: DesiredStatus::Running,
            created_at: SystemTime::now(),
            started_at: None,
            stopping_at: None,
            stopped_at: None,
            stopped_reason: None,
            protection: Protection::default(),
            agent_fault: Fault::None,
            zone,
        }
    }

    /// What [`crate::StandInEcs::tasks`] reports of it.
    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id.clone(),
            arn: self.arn.clone(),
            group: self.group.clone(),
            started_by: self.started_by.clone(),
            task_definition: self.task_definition.clone(),
            last_status: self.last_status,
            desired_status: self.desired_status,
            created_at: self.created_at,
            started_at: self.started_at,
            stopping_at: self.stopping_at,
            stopped_at: self.stopped_at,
            stopped_reason: self.stopped_reason.clone(),
            protected_until: self.protection.current(),
        }
    }

    /// Whether `task` (an ARN or an ID) names this task.
    pub fn is(&self, task: &str) -> bool {
        self.arn == task || self.id == task
    }

    /// Moves the task to `status`, keeping the timestamps and the desired status consistent: a
    /// stopping status means ECS wants it stopped.
    pub fn set_status(&mut self, status: LastStatus, now: SystemTime) {
        self.last_status = status;
        if status == LastStatus::Running && self.started_at.is_none() {
            self.started_at = Some(now);
        }
        if status.is_stopping() {
            self.desired_status = DesiredStatus::Stopped;
            self.stopping_at.get_or_insert(now);
        }
        if status == LastStatus::Stopped {
            self.stopped_at.get_or_insert(now);
        }
    }

    /// Asks for the task to stop (`desiredStatus` STOPPED) for `reason`, unless it is already
    /// on its way down.
    pub fn request_stop(&mut self, reason: &str, now: SystemTime) -> bool {
        if self.desired_status == DesiredStatus::Stopped {
            return false;
        }
        self.desired_status = DesiredStatus::Stopped;
        self.stopping_at = Some(now);
        self.stopped_reason = Some(reason.to_string());
        true
    }

    /// The `DescribeTasks` document of this task, as ECS's JSON has it (times in epoch seconds).
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "taskArn": self.arn,
            "clusterArn": CLUSTER_ARN,
            "taskDefinitionArn": self.task_definition,
            "lastStatus": self.last_status.as_str(),
            "desiredStatus": self.desired_status.as_str(),
            "launchType": "FARGATE",
            "availabilityZone": format!("{REGION}{}", self.zone),
            "cpu": "256",
            "memory": "512",
            "containers": [],
            "createdAt": epoch_seconds(self.created_at),
            "version": 3,
        });
        if let Some(object) = doc.as_object_mut() {
            let mut put = |key: &str, value: Value| {
                object.insert(key.to_string(), value);
            };
            if let Some(group) = &self.group {
                put("group", Value::String(group.clone()));
            }
            if let Some(started_by) = &self.started_by {
                put("startedBy", Value::String(started_by.clone()));
            }
            if let Some(t) = self.started_at {
                put("startedAt", epoch_seconds(t));
            }
            if let Some(t) = self.stopping_at {
                put("stoppingAt", epoch_seconds(t));
            }
            if let Some(t) = self.stopped_at {
                put("stoppedAt", epoch_seconds(t));
            }
            if let Some(reason) = &self.stopped_reason {
                put("stoppedReason", Value::String(reason.clone()));
                put("stopCode", Value::String(stop_code(reason).to_string()));
            }
        }
        doc
    }
}

/// ECS's `stopCode` for a task stopped for `reason`.
fn stop_code(reason: &str) -> &'static str {
    if reason.starts_with("Essential container") {
        "EssentialContainerExited"
    } else if reason.starts_with("Scaling activity") || reason.starts_with("Deployment") {
        "ServiceSchedulerInitiated"
    } else {
        "UserInitiated"
    }
}

/// A time as ECS's JSON has it: epoch seconds with a fraction (milliseconds).
pub(crate) fn epoch_seconds(t: SystemTime) -> Value {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    json!((secs * 1000.0).round() / 1000.0)
}

/// The task table and what makes new task IDs.
#[derive(Debug)]
pub(crate) struct Table {
    pub rows: Vec<TaskRow>,
    /// Tasks created so far (for IDs and zones).
    created: u64,
    /// Makes this table's IDs differ from another run's.
    seed: u64,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Self {
            rows: Vec::new(),
            created: 0,
            seed: seed ^ u64::from(std::process::id()),
        }
    }

    /// A new task ID: 32 lowercase hex digits, as ECS's.
    pub fn new_id(&mut self) -> String {
        loop {
            self.created += 1;
            let a = splitmix64(self.seed.wrapping_add(self.created));
            let b = splitmix64(a ^ self.created.rotate_left(32));
            let id = format!("{a:016x}{b:016x}");
            if self.find(&id).is_none() {
                return id;
            }
        }
    }

    /// The zone of the next task (a, b, c in turn).
    pub fn next_zone(&self) -> char {
        ['a', 'b', 'c'][(self.rows.len()) % 3]
    }

    /// The index of the task `task` names (an ARN or an ID).
    pub fn find(&self, task: &str) -> Option<usize> {
        self.rows.iter().position(|r| r.is(task))
    }

    /// The row of the task `task` names.
    pub fn get_mut(&mut self, task: &str) -> Option<&mut TaskRow> {
        self.rows.iter_mut().find(|r| r.is(task))
    }

    /// The row of the task `task` names.
    pub fn get(&self, task: &str) -> Option<&TaskRow> {
        self.rows.iter().find(|r| r.is(task))
    }

    /// The task `prefix` names: its ARN, its ID, or the start of exactly one task's ID.
    pub fn resolve(&self, prefix: &str) -> Result<&TaskRow, String> {
        if let Some(row) = self.get(prefix) {
            return Ok(row);
        }
        let mut matching = self
            .rows
            .iter()
            .filter(|r| !prefix.is_empty() && r.id.starts_with(prefix));
        match (matching.next(), matching.next()) {
            (Some(row), None) => Ok(row),
            (Some(_), Some(_)) => Err(format!("{prefix:?} names more than one task")),
            (None, _) => Err(format!("no task {prefix:?}")),
        }
    }
}

/// SplitMix64: a small, well-mixed hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first task of a stand-in that is not a fleet: [`crate::TASK_ARN`], of the first
/// deployment, running since long ago (created at epoch 1,700,000,000, started 30 s later).
pub(crate) fn first_task() -> TaskRow {
    let mut row = TaskRow::new(
        crate::api::TASK_ID.to_string(),
        Some(crate::api::FIRST_DEPLOYMENT_ID.to_string()),
        task_definition_arn(crate::api::REVISION),
        'a',
    );
    let created = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    row.created_at = created;
    row.started_at = Some(created + Duration::from_secs(30));
    row.last_status = LastStatus::Running;
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_distinct() {
        let mut table = Table::new();
        let a = table.new_id();
        let b = table.new_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(
            task_arn(&a),
            format!("arn:aws:ecs:eu-west-1:123456789012:task/stand-in-cluster/{a}")
        );
    }

    #[test]
    fn a_task_is_named_by_arn_id_or_a_unique_prefix() {
        let mut table = Table::new();
        for id in ["abc111", "abc222", "def333"] {
            table
                .rows
                .push(TaskRow::new(id.into(), None, task_definition_arn(1), 'a'));
        }
        assert_eq!(table.resolve(&task_arn("def333")).unwrap().id, "def333");
        assert_eq!(table.resolve("abc222").unwrap().id, "abc222");
        assert_eq!(table.resolve("d").unwrap().id, "def333");
        assert!(table.resolve("abc").unwrap_err().contains("more than one"));
        assert!(table.resolve("zzz").unwrap_err().contains("no task"));
        assert!(table.resolve("").is_err());
    }

    #[test]
    fn a_stopping_status_means_desired_stopped_and_keeps_the_times() {
        let mut row = TaskRow::new("t".into(), None, task_definition_arn(1), 'a');
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        row.set_status(LastStatus::Running, t0);
        assert_eq!(row.started_at, Some(t0));
        assert_eq!(row.desired_status, DesiredStatus::Running);
        row.set_status(LastStatus::Deactivating, t0 + Duration::from_secs(5));
        assert_eq!(row.desired_status, DesiredStatus::Stopped);
        assert_eq!(row.stopping_at, Some(t0 + Duration::from_secs(5)));
        row.set_status(LastStatus::Stopped, t0 + Duration::from_secs(9));
        assert_eq!(row.stopped_at, Some(t0 + Duration::from_secs(9)));
        assert_eq!(row.started_at, Some(t0), "started once");
        let doc = row.to_json();
        assert_eq!(doc["lastStatus"], "STOPPED");
        assert_eq!(doc["desiredStatus"], "STOPPED");
        assert_eq!(doc["startedAt"], 1_000.0);
        assert_eq!(doc["stoppedAt"], 1_009.0);
    }

    #[test]
    fn statuses_order_and_parse() {
        for s in LastStatus::ALL {
            assert_eq!(LastStatus::parse(s.as_str()), Some(s));
        }
        assert!(LastStatus::Activating.is_starting());
        assert!(LastStatus::Running.is_up() && !LastStatus::Running.is_starting());
        assert!(LastStatus::Deactivating.is_stopping());
        assert!(!LastStatus::Running.is_stopping());
    }
}
