//! A stand-in for the ECS API and the task metadata endpoint: a real HTTP server on loopback that
//! speaks ECS's `awsJson1_1` protocol well enough for the real `aws-sdk-ecs` client, records
//! every call in order, and fails on demand.
//!
//! Every operation reads and writes one **task table** ([`TaskInfo`] for each task). A stand-in made by
//! [`StandInEcs::start`] has one task in it, [`TASK_ARN`], which the single-task methods
//! ([`StandInEcs::is_protected`], [`StandInEcs::set_task_group`], …) act on: the table's first
//! entry. Its service document is set by hand ([`StandInEcs::set_counts`],
//! [`StandInEcs::begin_deployment`], …). One made by [`StandInEcs::start_fleet`] is in **fleet
//! mode**: its table starts empty, tasks are added by a [`crate::Fleet`] (real processes) or by
//! hand ([`StandInEcs::add_task`]), and `DescribeServices` counts them.
//!
//! * `POST /` with `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>` for
//!   `UpdateTaskProtection` (1 to 10 tasks), `GetTaskProtection` (1 to 100), `DescribeServices`,
//!   `DescribeTasks` (1 to 100) and `ListTasks`; errors are HTTP 400 (500 for
//!   `ServerException`) with `{"__type": "...", "message": "..."}`, as ECS answers.
//! * `GET /v4/stand-in/task`: the task metadata v4 `/task` document of the first task (give
//!   [`StandInEcs::metadata_uri`] as `ECS_CONTAINER_METADATA_URI_V4`). It carries `ServiceName`
//!   as on EC2, or omits it as on Fargate ([`StandInEcs::set_metadata_service_name`]).
//! * `GET /v4/<id>/task`: any task's metadata ([`StandInEcs::metadata_uri_for`]), without
//!   `ServiceName`, as on Fargate.
//! * `GET/PUT /agent/<id>/task-protection/v1/state`: any task's ECS agent endpoint
//!   ([`StandInEcs::agent_uri_for`]), answering exactly as [`crate::StandInAgent`] does, on that
//!   task's protection.
//! * `GET /_calls`: the recorded ECS calls as JSON, for a separate process (the load tool);
//!   `GET /_agent_calls`: the per-task agent calls.
//! * `GET /_fleet`: the service and its tasks as JSON; `POST /_fleet/scale/<n>`,
//!   `POST /_fleet/deploy`, `POST /_fleet/stop/<task>`: a fleet's commands ([`crate::Fleet`]).
//!
//! The first task belongs to the service's first deployment: `DescribeTasks` reports its `group`
//! as `service:stand-in-service` and its `startedBy` as [`FIRST_DEPLOYMENT_ID`], the `id` of the
//! PRIMARY deployment of [`ServiceDoc::steady`]; both can be changed
//! ([`StandInEcs::set_task_group`], [`StandInEcs::set_task_started_by`]).
//!
//! Point the SDK at [`StandInEcs::endpoint_url`] with any credentials; the signature is not
//! checked, but the region it was made for and the access key ID are recorded (a fleet's tasks
//! each sign with their own, [`task_access_key_id`], so a test can tell which task called).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use crate::agent::{self, AgentRecord, Call, Fault};
use crate::scheduler;
use crate::tasks::{
    epoch_seconds, first_task, service_group, task_arn, LastStatus, Table, TaskInfo, TaskRow,
    TaskSpec,
};
use crate::{Delay, Journal, Served, Shared as Common, ANY_LOOPBACK_PORT, ECS_EXPIRES_IN_MINUTES};

/// The region of the stand-in's task (deliberately not `us-east-1`, so that a test can tell
/// whether the region came from the task ARN).
pub const REGION: &str = "eu-west-1";
/// The stand-in's account.
pub const ACCOUNT: &str = "123456789012";
/// The stand-in's cluster name.
pub const CLUSTER_NAME: &str = "stand-in-cluster";
/// The stand-in's cluster ARN (what the metadata endpoint reports as `Cluster`).
pub const CLUSTER_ARN: &str = "arn:aws:ecs:eu-west-1:123456789012:cluster/stand-in-cluster";
/// The ID of the stand-in's first task (the last part of [`TASK_ARN`]).
pub const TASK_ID: &str = "0123456789abcdef";
/// The stand-in's first task's ARN.
pub const TASK_ARN: &str =
    "arn:aws:ecs:eu-west-1:123456789012:task/stand-in-cluster/0123456789abcdef";
/// The stand-in's service name.
pub const SERVICE_NAME: &str = "stand-in-service";
/// The stand-in task's task definition family.
pub const FAMILY: &str = "stand-in";
/// The stand-in task's task definition revision.
pub const REVISION: u32 = 1;
/// The ID of the service deployment that started the stand-in's task: the PRIMARY deployment of
/// [`ServiceDoc::steady`], and the task's `startedBy`.
pub const FIRST_DEPLOYMENT_ID: &str = "ecs-svc/1000000000000000001";

const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
/// How the access key ID a fleet's task signs with starts ([`task_access_key_id`]).
const TASK_ACCESS_KEY_PREFIX: &str = "AKIDSTANDIN";
/// The most tasks `DescribeTasks`, `GetTaskProtection` and a `ListTasks` page take, as ECS.
const MAX_TASKS_PER_CALL: usize = 100;
/// The most tasks one `UpdateTaskProtection` takes, as ECS.
const MAX_TASKS_PER_UPDATE: usize = 10;
/// The most service events kept (ECS shows the latest 100).
const MAX_EVENTS: usize = 100;
/// The largest desired count the control endpoint accepts (a fleet of real processes on one
/// machine).
pub const MAX_DESIRED_COUNT: u32 = 100;

/// The access key ID the task `task_id` signs its ECS calls with in a fleet: any key does for the
/// stand-in, and this one tells it which task called ([`EcsCall::caller_task`]).
pub fn task_access_key_id(task_id: &str) -> String {
    format!("{TASK_ACCESS_KEY_PREFIX}{task_id}")
}

/// The ARN of revision `revision` of the stand-in's task definition family.
pub fn task_definition_arn(revision: u32) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{FAMILY}:{revision}")
}

/// The ECS operations the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum EcsOperation {
    /// `UpdateTaskProtection`.
    UpdateTaskProtection,
    /// `GetTaskProtection`.
    GetTaskProtection,
    /// `DescribeServices`.
    DescribeServices,
    /// `DescribeTasks`.
    DescribeTasks,
    /// `ListTasks`.
    ListTasks,
}

impl EcsOperation {
    const ALL: [EcsOperation; 5] = [
        EcsOperation::UpdateTaskProtection,
        EcsOperation::GetTaskProtection,
        EcsOperation::DescribeServices,
        EcsOperation::DescribeTasks,
        EcsOperation::ListTasks,
    ];

    fn from_target(target: &str) -> Option<Self> {
        match target.strip_prefix(TARGET_PREFIX)? {
            "UpdateTaskProtection" => Some(Self::UpdateTaskProtection),
            "GetTaskProtection" => Some(Self::GetTaskProtection),
            "DescribeServices" => Some(Self::DescribeServices),
            "DescribeTasks" => Some(Self::DescribeTasks),
            "ListTasks" => Some(Self::ListTasks),
            _ => None,
        }
    }

    /// The operation's name, as in `X-Amz-Target`.
    pub fn name(self) -> &'static str {
        match self {
            Self::UpdateTaskProtection => "UpdateTaskProtection",
            Self::GetTaskProtection => "GetTaskProtection",
            Self::DescribeServices => "DescribeServices",
            Self::DescribeTasks => "DescribeTasks",
            Self::ListTasks => "ListTasks",
        }
    }
}

/// A fault the stand-in answers an operation with, until changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcsFault {
    /// Behave like ECS.
    None,
    /// HTTP 200 with a `failures[]` entry for each task named (e.g. `TASK_NOT_VALID`) and no
    /// `protectedTasks` (for `DescribeServices`: a failure for the service, no services; for
    /// `DescribeTasks`: a failure for each task, no tasks; for `ListTasks`, whose answer has no
    /// failures: no tasks).
    Failure {
        /// The failure's `reason`.
        reason: String,
        /// The failure's `detail`.
        detail: Option<String>,
    },
    /// HTTP 400 `ThrottlingException` "Rate exceeded".
    Throttled,
    /// HTTP 400 `AccessDeniedException`, worded like IAM's denial of the operation.
    AccessDenied,
    /// HTTP 400 `InvalidParameterException`.
    InvalidParameter,
    /// HTTP 400 `ClusterNotFoundException`.
    ClusterNotFound,
    /// HTTP 500 `ServerException`.
    ServerError,
    /// HTTP 200 with a body that is not JSON.
    Malformed,
    /// HTTP 200 with empty `protectedTasks` and `failures` (for `DescribeServices`: no services;
    /// for `DescribeTasks` and `ListTasks`: no tasks).
    OmitTask,
    /// Never answer until [`StandInEcs::release_hangs`] is called (then answer normally).
    Hang,
    /// Answer normally after this delay.
    Slow(Duration),
}

impl EcsFault {
    fn delay(&self) -> Delay {
        match self {
            EcsFault::Hang => Delay::Hang,
            EcsFault::Slow(d) => Delay::Slow(*d),
            _ => Delay::None,
        }
    }
}

/// One recorded ECS call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EcsCall {
    /// The operation, e.g. `UpdateTaskProtection` (or the unknown target as sent).
    pub operation: String,
    /// `protectionEnabled` of an `UpdateTaskProtection`.
    pub protection_enabled: Option<bool>,
    /// `expiresInMinutes` of an `UpdateTaskProtection`.
    pub expires_in_minutes: Option<u32>,
    /// `cluster` as sent.
    pub cluster: Option<String>,
    /// `tasks` as sent (`UpdateTaskProtection`, `GetTaskProtection`, `DescribeTasks`).
    pub tasks: Vec<String>,
    /// `services` as sent (`DescribeServices`).
    pub services: Vec<String>,
    /// The region the request was signed for (from the `Authorization` header's scope).
    pub region: Option<String>,
    /// The access key ID the request was signed with (from the `Authorization` header).
    pub access_key_id: Option<String>,
    /// The HTTP status answered (0 while the call is still hanging).
    pub status: u16,
}

impl EcsCall {
    /// The task whose credentials signed the call: a fleet's task signs with
    /// [`task_access_key_id`]. `None` for any other caller.
    pub fn caller_task(&self) -> Option<&str> {
        self.access_key_id
            .as_deref()?
            .strip_prefix(TASK_ACCESS_KEY_PREFIX)
    }
}

/// One deployment in the service document `DescribeServices` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentDoc {
    /// The deployment ID (`ecs-svc/...`).
    pub id: String,
    /// `PRIMARY` (the newest), `ACTIVE` (older, still running tasks) or `INACTIVE`.
    pub status: String,
    /// The deployment's task definition ARN.
    pub task_definition: String,
    /// Tasks the deployment wants.
    pub desired_count: i32,
    /// Tasks of the deployment running.
    pub running_count: i32,
    /// `COMPLETED`, `IN_PROGRESS` or `FAILED`.
    pub rollout_state: String,
}

/// The service document `DescribeServices` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDoc {
    /// The service's name.
    pub service_name: String,
    /// The service's desired count.
    pub desired_count: i32,
    /// The service's running count (all deployments).
    pub running_count: i32,
    /// The deployments, PRIMARY first.
    pub deployments: Vec<DeploymentDoc>,
}

impl ServiceDoc {
    /// A service at rest: one completed PRIMARY deployment of `task_definition` with `count`
    /// tasks desired and running.
    pub fn steady(task_definition: &str, count: i32) -> Self {
        Self {
            service_name: SERVICE_NAME.to_string(),
            desired_count: count,
            running_count: count,
            deployments: vec![DeploymentDoc {
                id: FIRST_DEPLOYMENT_ID.to_string(),
                status: "PRIMARY".to_string(),
                task_definition: task_definition.to_string(),
                desired_count: count,
                running_count: count,
                rollout_state: "COMPLETED".to_string(),
            }],
        }
    }

    /// The document as `DescribeServices` answers it, with these pending counts (the service's,
    /// then each deployment's in order) and events (newest first).
    fn to_json(&self, pending: &Pending, events: &[ServiceEvent]) -> Value {
        let primary_td = self
            .deployments
            .iter()
            .find(|d| d.status == "PRIMARY")
            .map(|d| d.task_definition.clone());
        let deployments: Vec<Value> = self
            .deployments
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({
                    "id": d.id,
                    "status": d.status,
                    "taskDefinition": d.task_definition,
                    "desiredCount": d.desired_count,
                    "pendingCount": pending.deployments.get(i).copied().unwrap_or(0),
                    "runningCount": d.running_count,
                    "failedTasks": 0,
                    "createdAt": 1_700_000_000.0,
                    "updatedAt": 1_700_000_060.0,
                    "launchType": "FARGATE",
                    "rolloutState": d.rollout_state,
                    "rolloutStateReason": "stand-in",
                })
            })
            .collect();
        json!({
            "serviceArn": format!("arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER_NAME}/{}", self.service_name),
            "serviceName": self.service_name,
            "clusterArn": CLUSTER_ARN,
            "status": "ACTIVE",
            "desiredCount": self.desired_count,
            "runningCount": self.running_count,
            "pendingCount": pending.service,
            "launchType": "FARGATE",
            "taskDefinition": primary_td,
            "deployments": deployments,
            "events": events.iter().rev().map(ServiceEvent::to_json).collect::<Vec<_>>(),
            "createdAt": 1_690_000_000.0,
            "schedulingStrategy": "REPLICA",
        })
    }
}

/// Pending counts (tasks PROVISIONING, PENDING or ACTIVATING) for `DescribeServices`.
#[derive(Debug, Clone, Default)]
struct Pending {
    /// The service's.
    service: i32,
    /// Each deployment's, in the document's order.
    deployments: Vec<i32>,
}

/// One service event, as ECS lists them in `DescribeServices` (e.g. `(service stand-in-service)
/// has started 1 tasks: (task 0123…).`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceEvent {
    /// Its number, for its `id`.
    pub number: u64,
    /// When it happened.
    pub at: SystemTime,
    /// What ECS says.
    pub message: String,
}

impl ServiceEvent {
    fn to_json(&self) -> Value {
        json!({
            "id": format!("00000000-0000-0000-0000-{:012}", self.number),
            "createdAt": epoch_seconds(self.at),
            "message": self.message,
        })
    }
}

/// One call to a task's agent endpoint ([`StandInEcs::agent_uri_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TaskAgentCall {
    /// The task it was made for (its ID).
    pub task_id: String,
    /// The call.
    #[serde(flatten)]
    pub call: Call,
}

impl AgentRecord for TaskAgentCall {
    fn call_mut(&mut self) -> &mut Call {
        &mut self.call
    }
}

/// The simulated ECS: the task table, the service, the faults.
pub(crate) struct Sim {
    faults: HashMap<EcsOperation, EcsFault>,
    /// Every task, the first one first.
    pub table: Table,
    /// The service: its desired count and deployments (in fleet mode, the counts reported are
    /// the table's: [`Sim::service_doc`]).
    pub service: ServiceDoc,
    /// Whether the counts come from the table ([`StandInEcs::start_fleet`]).
    fleet: bool,
    metadata_service_name: Option<String>,
    metadata_available: bool,
    metadata_reads: usize,
    next_deployment: u64,
    /// Service events, oldest first.
    events: Vec<ServiceEvent>,
    events_logged: u64,
    /// The per-task agent endpoints' calls.
    agent_journal: Arc<Journal<TaskAgentCall>>,
}

impl Sim {
    fn new(fleet: bool) -> Self {
        let mut table = Table::new();
        let desired = if fleet {
            0
        } else {
            table.rows.push(first_task());
            2
        };
        Self {
            faults: HashMap::new(),
            table,
            service: ServiceDoc::steady(&task_definition_arn(REVISION), desired),
            fleet,
            metadata_service_name: Some(SERVICE_NAME.to_string()),
            metadata_available: true,
            metadata_reads: 0,
            next_deployment: 2,
            events: Vec::new(),
            events_logged: 0,
            agent_journal: Journal::new(),
        }
    }

    /// The first task, which the single-task methods act on.
    fn first_mut(&mut self) -> Option<&mut TaskRow> {
        self.table.rows.first_mut()
    }

    /// The service's tasks (group `service:stand-in-service`), as the scheduler sees them.
    pub fn service_tasks(&self) -> Vec<TaskInfo> {
        let group = service_group();
        self.table
            .rows
            .iter()
            .filter(|r| r.group.as_deref() == Some(group.as_str()))
            .map(TaskRow::info)
            .collect()
    }

    /// The service document as `DescribeServices` reports it now, and its pending counts: in
    /// fleet mode the desired count is the service's and every other count comes from the table
    /// (`runningCount`: lastStatus RUNNING; `pendingCount`: PROVISIONING, PENDING, ACTIVATING;
    /// each deployment's the same for its tasks, and its desired count from the scheduler).
    fn service_doc(&self) -> (ServiceDoc, Pending) {
        let mut doc = self.service.clone();
        if !self.fleet {
            let pending = Pending {
                service: 0,
                deployments: vec![0; doc.deployments.len()],
            };
            return (doc, pending);
        }
        let tasks = self.service_tasks();
        let count = |of: &dyn Fn(&TaskInfo) -> bool, status: &dyn Fn(LastStatus) -> bool| {
            let n = tasks
                .iter()
                .filter(|t| of(t) && status(t.last_status))
                .count();
            i32::try_from(n).unwrap_or(i32::MAX)
        };
        let running = |s: LastStatus| s == LastStatus::Running;
        let starting = LastStatus::is_starting;
        let desired = scheduler::deployment_desired(&doc, &tasks);
        let mut pending = Pending {
            service: count(&|_| true, &starting),
            deployments: Vec::new(),
        };
        for (d, want) in doc.deployments.iter_mut().zip(desired) {
            let id = d.id.clone();
            let mine = move |t: &TaskInfo| t.started_by.as_deref() == Some(id.as_str());
            d.desired_count = want;
            d.running_count = count(&mine, &running);
            pending.deployments.push(count(&mine, &starting));
        }
        doc.running_count = count(&|_| true, &running);
        (doc, pending)
    }

    /// Records a service event (and returns its text).
    pub fn push_event(&mut self, message: String) {
        self.events_logged += 1;
        self.events.push(ServiceEvent {
            number: self.events_logged,
            at: SystemTime::now(),
            message,
        });
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
    }

    /// Sets the desired count.
    pub fn set_desired_count(&mut self, desired: i32) {
        self.service.desired_count = desired;
        if let Some(primary) = self
            .service
            .deployments
            .iter_mut()
            .find(|d| d.status == "PRIMARY")
        {
            primary.desired_count = desired;
        }
    }

    /// Starts a rolling deployment to `task_definition` (see [`StandInEcs::begin_deployment`]);
    /// returns its ID.
    fn begin_deployment(&mut self, task_definition: &str) -> String {
        let n = self.next_deployment;
        self.next_deployment += 1;
        let id = format!("ecs-svc/{:019}", 1_000_000_000_000_000_000u64 + n);
        let service = &mut self.service;
        for d in &mut service.deployments {
            if d.status == "PRIMARY" {
                d.status = "ACTIVE".to_string();
            }
        }
        service.deployments.insert(
            0,
            DeploymentDoc {
                id: id.clone(),
                status: "PRIMARY".to_string(),
                task_definition: task_definition.to_string(),
                desired_count: service.desired_count,
                running_count: 0,
                rollout_state: "IN_PROGRESS".to_string(),
            },
        );
        id
    }

    /// A deployment of a new revision of the task definition (one more than any deployment's).
    pub fn deploy_new_revision(&mut self) -> String {
        let revision = self
            .service
            .deployments
            .iter()
            .filter_map(|d| revision_of(&d.task_definition))
            .max()
            .unwrap_or(REVISION)
            + 1;
        let task_definition = task_definition_arn(revision);
        let id = self.begin_deployment(&task_definition);
        self.push_event(format!(
            "(service {SERVICE_NAME}) has begun deployment {id} to {task_definition}."
        ));
        id
    }

    /// Asks ECS to stop `task` now, as `StopTask` does: protection does not prevent it.
    pub fn stop_task(&mut self, task: &str, reason: &str) -> Result<TaskInfo, String> {
        let id = self.table.resolve(task)?.id.clone();
        let row = self
            .table
            .get_mut(&id)
            .ok_or_else(|| format!("no task {task:?}"))?;
        if !row.request_stop(reason, SystemTime::now()) {
            return Err(format!("task {id} is already stopping"));
        }
        Ok(row.info())
    }

    /// A new task of deployment `deployment` (PROVISIONING), added to the table; returns its ID.
    pub fn new_task(&mut self, deployment: &DeploymentDoc) -> String {
        let id = self.table.new_id();
        let zone = self.table.next_zone();
        self.table.rows.push(TaskRow::new(
            id.clone(),
            Some(deployment.id.clone()),
            deployment.task_definition.clone(),
            zone,
        ));
        id
    }
}

/// The revision in a task definition ARN (`…:task-definition/FAMILY:REVISION`).
fn revision_of(task_definition: &str) -> Option<u32> {
    task_definition.rsplit(':').next()?.parse().ok()
}

/// The family in a task definition ARN.
fn family_of(task_definition: &str) -> &str {
    task_definition
        .rsplit('/')
        .next()
        .and_then(|f| f.split(':').next())
        .unwrap_or(FAMILY)
}

/// What the handlers share.
type Shared = Common<Sim, EcsCall>;

/// The running stand-in. Dropping it stops the server.
pub struct StandInEcs {
    served: Served<Sim, EcsCall>,
}

impl StandInEcs {
    /// Starts a stand-in on `127.0.0.1` on a free port, with its one task ([`TASK_ARN`]).
    pub async fn start() -> std::io::Result<Self> {
        Self::bind(ANY_LOOPBACK_PORT).await
    }

    /// Starts a stand-in on `addr`, with its one task ([`TASK_ARN`]).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(addr, Sim::new(false)).await
    }

    /// Starts a stand-in in fleet mode on `127.0.0.1` on a free port: no task yet, a service
    /// with desired count 0 at revision [`REVISION`], and `DescribeServices` counts from the task
    /// table.
    pub async fn start_fleet() -> std::io::Result<Self> {
        Self::bind_fleet(ANY_LOOPBACK_PORT).await
    }

    /// Starts a stand-in in fleet mode on `addr`.
    pub async fn bind_fleet(addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(addr, Sim::new(true)).await
    }

    async fn serve(addr: SocketAddr, sim: Sim) -> std::io::Result<Self> {
        let routes = Router::new()
            .route("/", post(ecs))
            .route("/v4/stand-in/task", get(first_task_metadata))
            .route("/v4/{id}/task", get(task_metadata))
            .route(
                "/agent/{id}/task-protection/v1/state",
                get(agent_state).put(agent_state),
            )
            .route("/_agent_calls", get(agent_calls))
            .route("/_fleet", get(fleet_view))
            .route("/_fleet/scale/{count}", post(fleet_scale))
            .route("/_fleet/deploy", post(fleet_deploy))
            .route("/_fleet/stop/{task}", post(fleet_stop));
        let served = Served::start(addr, sim, routes).await?;
        Ok(Self { served })
    }

    /// The simulation, locked (for the fleet's scheduler).
    pub(crate) fn sim(&self) -> MutexGuard<'_, Sim> {
        self.served.shared.sim()
    }

    /// The URL to give the SDK as its endpoint (`ECS_ENDPOINT_URL`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// The value to give as `ECS_CONTAINER_METADATA_URI_V4` for the first task.
    pub fn metadata_uri(&self) -> String {
        format!("http://{}/v4/stand-in", self.served.addr)
    }

    /// The value to give as `ECS_CONTAINER_METADATA_URI_V4` for task `task` (an ARN or an ID):
    /// `http://…/v4/<id>`, whose `/task` has no `ServiceName`, as on Fargate.
    pub fn metadata_uri_for(&self, task: &str) -> String {
        format!("http://{}/v4/{}", self.served.addr, id_of(task))
    }

    /// The value to give as `ECS_AGENT_URI` for task `task` (an ARN or an ID):
    /// `http://…/agent/<id>`, serving `PUT/GET /task-protection/v1/state` on that task's
    /// protection as the agent does.
    pub fn agent_uri_for(&self, task: &str) -> String {
        format!("http://{}/agent/{}", self.served.addr, id_of(task))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr
    }

    /// Whether it is in fleet mode ([`start_fleet`](Self::start_fleet)).
    pub fn is_fleet(&self) -> bool {
        self.sim().fleet
    }

    /// Answers every following call of every operation with `fault`.
    pub fn set_fault(&self, fault: EcsFault) {
        let mut sim = self.sim();
        for op in EcsOperation::ALL {
            sim.faults.insert(op, fault.clone());
        }
    }

    /// Answers every following call of `operation` with `fault`.
    pub fn set_fault_for(&self, operation: EcsOperation, fault: EcsFault) {
        self.sim().faults.insert(operation, fault);
    }

    /// Answers every following call to the agent endpoint of `task` with `fault`; `false` if
    /// there is no such task.
    pub fn set_agent_fault(&self, task: &str, fault: Fault) -> bool {
        let mut sim = self.sim();
        let Some(row) = sim.table.get_mut(task) else {
            return false;
        };
        row.agent_fault = fault;
        true
    }

    /// Lets every call hanging under [`EcsFault::Hang`] (or a task's agent [`Fault::Hang`])
    /// answer (normally), and stops hanging.
    pub fn release_hangs(&self) {
        let agent_journal = {
            let mut sim = self.sim();
            for fault in sim.faults.values_mut() {
                if *fault == EcsFault::Hang {
                    *fault = EcsFault::None;
                }
            }
            for row in &mut sim.table.rows {
                if row.agent_fault == Fault::Hang {
                    row.agent_fault = Fault::None;
                }
            }
            Arc::clone(&sim.agent_journal)
        };
        self.served.shared.journal.release_hangs();
        agent_journal.release_hangs();
    }

    /// Every ECS call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<EcsCall> {
        self.served.shared.journal.calls()
    }

    /// The calls of `operation` so far, in order.
    pub fn calls_of(&self, operation: EcsOperation) -> Vec<EcsCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.operation == operation.name())
            .collect()
    }

    /// Every call to a task's agent endpoint so far, in order.
    pub fn agent_calls(&self) -> Vec<TaskAgentCall> {
        let journal = Arc::clone(&self.sim().agent_journal);
        journal.calls()
    }

    /// The `protectionEnabled` values of the `UpdateTaskProtection` calls so far, in order.
    pub fn updates(&self) -> Vec<bool> {
        self.calls_of(EcsOperation::UpdateTaskProtection)
            .into_iter()
            .filter_map(|c| c.protection_enabled)
            .collect()
    }

    /// Whether the first task is protected now.
    pub fn is_protected(&self) -> bool {
        self.sim()
            .table
            .rows
            .first()
            .is_some_and(|r| r.protection.current().is_some())
    }

    /// Sets the first task's protection (as if a previous process had set it).
    pub fn set_protected_until(&self, expires_at: Option<SystemTime>) {
        if let Some(row) = self.sim().first_mut() {
            row.protection.expires_at = expires_at;
        }
    }

    /// Waits until at least `n` ECS calls have been recorded (in any state).
    pub async fn wait_for_calls(&self, n: usize) {
        self.served.shared.journal.wait_for(n).await;
    }

    /// The service document `DescribeServices` answers now (in fleet mode, with the table's
    /// counts).
    pub fn service(&self) -> ServiceDoc {
        self.sim().service_doc().0
    }

    /// Replaces the service document (in fleet mode, its counts are the table's all the same).
    pub fn set_service(&self, service: ServiceDoc) {
        self.sim().service = service;
    }

    /// Starts a rolling deployment to `task_definition`: the current PRIMARY deployment becomes
    /// ACTIVE, a new PRIMARY deployment with no running tasks yet is in progress.
    pub fn begin_deployment(&self, task_definition: &str) {
        self.sim().begin_deployment(task_definition);
    }

    /// Starts a forced new deployment (`--force-new-deployment`): a new PRIMARY deployment of the
    /// PRIMARY's own task definition, as [`begin_deployment`](Self::begin_deployment) does.
    pub fn force_new_deployment(&self) {
        let mut sim = self.sim();
        let current = sim
            .service
            .deployments
            .iter()
            .find(|d| d.status == "PRIMARY")
            .map(|d| d.task_definition.clone())
            .unwrap_or_else(|| task_definition_arn(REVISION));
        sim.begin_deployment(&current);
    }

    /// Starts a deployment of a new revision of the task definition (one more than any
    /// deployment's), as `deploy` does in a fleet; returns the new deployment's ID.
    pub fn deploy(&self) -> String {
        self.sim().deploy_new_revision()
    }

    /// Ends every deployment but the PRIMARY one, which completes with all its tasks running.
    pub fn finish_deployment(&self) {
        let mut sim = self.sim();
        let service = &mut sim.service;
        service.deployments.retain(|d| d.status == "PRIMARY");
        for d in &mut service.deployments {
            d.running_count = service.desired_count;
            d.desired_count = service.desired_count;
            d.rollout_state = "COMPLETED".to_string();
        }
        service.running_count = service.desired_count;
    }

    /// Sets the service's (and its PRIMARY deployment's) desired and running counts, e.g.
    /// `set_counts(1, 3)` for a scale-in under way. In fleet mode the running count reported is
    /// the table's, whatever is set here.
    pub fn set_counts(&self, desired: i32, running: i32) {
        let mut sim = self.sim();
        let service = &mut sim.service;
        service.desired_count = desired;
        service.running_count = running;
        for d in &mut service.deployments {
            if d.status == "PRIMARY" {
                d.desired_count = desired;
                d.running_count = running;
            }
        }
    }

    /// Sets the service's desired count (and its PRIMARY deployment's), as `UpdateService
    /// --desired-count` does.
    pub fn set_desired_count(&self, desired: i32) {
        self.sim().set_desired_count(desired);
    }

    /// The service's desired count.
    pub fn desired_count(&self) -> i32 {
        self.sim().service.desired_count
    }

    /// Sets the `ServiceName` the first task's metadata reports. `None` omits the field: a
    /// standalone task, or a service's task on Fargate, whose metadata has no `ServiceName`.
    pub fn set_metadata_service_name(&self, name: Option<&str>) {
        self.sim().metadata_service_name = name.map(str::to_string);
    }

    /// Sets the first task's `group` in `DescribeTasks` (`service:NAME` for a service's task,
    /// `family:FAMILY` for a standalone one by default; `None` omits the field).
    pub fn set_task_group(&self, group: Option<&str>) {
        if let Some(row) = self.sim().first_mut() {
            row.group = group.map(str::to_string);
        }
    }

    /// Sets the first task's `startedBy` in `DescribeTasks` (the ID of the deployment that
    /// started it, for a service's task; `None` omits the field).
    pub fn set_task_started_by(&self, started_by: Option<&str>) {
        if let Some(row) = self.sim().first_mut() {
            row.started_by = started_by.map(str::to_string);
        }
    }

    /// The ID of the PRIMARY deployment now, if there is one.
    pub fn primary_deployment_id(&self) -> Option<String> {
        scheduler::primary(&self.sim().service).map(|d| d.id.clone())
    }

    /// Makes the metadata endpoints answer HTTP 500 (`false`) or normally (`true`).
    pub fn set_metadata_available(&self, available: bool) {
        self.sim().metadata_available = available;
    }

    /// How many times the metadata endpoints have been read.
    pub fn metadata_reads(&self) -> usize {
        self.sim().metadata_reads
    }

    /// Every task in the table, in the order they were added.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        self.sim().table.rows.iter().map(TaskRow::info).collect()
    }

    /// The task `task` names (an ARN or an ID).
    pub fn task(&self, task: &str) -> Option<TaskInfo> {
        self.sim().table.get(task).map(TaskRow::info)
    }

    /// Adds a task to the table by hand, as `spec` says (no process runs it); returns its ARN.
    /// A task of a deployment the service does not list keeps that `startedBy` and the PRIMARY's
    /// task definition unless one is given.
    pub fn add_task(&self, spec: TaskSpec) -> String {
        let mut sim = self.sim();
        let primary = scheduler::primary(&sim.service).cloned();
        let deployment = spec
            .deployment
            .clone()
            .or_else(|| primary.as_ref().map(|p| p.id.clone()));
        let task_definition = spec.task_definition.clone().unwrap_or_else(|| {
            sim.service
                .deployments
                .iter()
                .find(|d| Some(&d.id) == deployment.as_ref())
                .or(primary.as_ref())
                .map_or_else(
                    || task_definition_arn(REVISION),
                    |d| d.task_definition.clone(),
                )
        });
        let id = match spec.id.clone() {
            Some(id) => id,
            None => sim.table.new_id(),
        };
        let zone = sim.table.next_zone();
        let mut row = TaskRow::new(id, deployment, task_definition, zone);
        let now = SystemTime::now();
        let status = spec.last_status.unwrap_or(LastStatus::Running);
        if status >= LastStatus::Running {
            row.started_at = Some(spec.started_at.unwrap_or(now));
        }
        row.created_at = spec.created_at.or(row.started_at).unwrap_or(now);
        row.set_status(status, now);
        row.protection.expires_at = spec.protected_until;
        let arn = row.arn.clone();
        if let Some(existing) = sim.table.get_mut(&arn) {
            *existing = row;
        } else {
            sim.table.rows.push(row);
        }
        arn
    }

    /// A busy fleet around the stand-in's own task, for a scale-in: protects the own task for an
    /// hour and adds `others` RUNNING tasks of the PRIMARY deployment, protected for an hour and
    /// started before it (so the own task is the youngest). Returns the added tasks' ARNs.
    pub fn add_busy_tasks(&self, others: usize) -> Vec<String> {
        let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
        self.set_protected_until(Some(in_an_hour));
        (0..others)
            .map(|i| {
                let started =
                    SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64);
                self.add_task(
                    TaskSpec::new()
                        .started_at(started)
                        .protected_until(in_an_hour),
                )
            })
            .collect()
    }

    /// Moves task `task` to `status` (a stopping status also sets its desired status STOPPED);
    /// `false` if there is no such task.
    pub fn set_task_status(&self, task: &str, status: LastStatus) -> bool {
        let mut sim = self.sim();
        let Some(row) = sim.table.get_mut(task) else {
            return false;
        };
        row.set_status(status, SystemTime::now());
        true
    }

    /// Sets task `task`'s protection: on until `until`, or off; `false` if there is no such task.
    pub fn set_task_protection(&self, task: &str, until: Option<SystemTime>) -> bool {
        let mut sim = self.sim();
        let Some(row) = sim.table.get_mut(task) else {
            return false;
        };
        row.protection.expires_at = until;
        true
    }

    /// Removes task `task` from the table (ECS forgets a stopped task after about an hour);
    /// `false` if there is no such task.
    pub fn remove_task(&self, task: &str) -> bool {
        let mut sim = self.sim();
        let Some(index) = sim.table.find(task) else {
            return false;
        };
        sim.table.rows.remove(index);
        true
    }

    /// Asks ECS to stop task `task` (an ARN, an ID, or the start of one ID) now, as `StopTask`
    /// does: protection does not prevent it. A fleet carries the stop out; a stand-in without one
    /// only sets the task's desired status STOPPED.
    pub fn stop_task(&self, task: &str) -> Result<TaskInfo, String> {
        self.sim().stop_task(task, "Task stopped by user")
    }

    /// The service events so far, oldest first (`(service stand-in-service) has started 1
    /// tasks: …`).
    pub fn events(&self) -> Vec<String> {
        self.sim()
            .events
            .iter()
            .map(|e| e.message.clone())
            .collect()
    }
}

/// The task ID in `task` (an ARN or an ID).
fn id_of(task: &str) -> &str {
    task.rsplit('/').next().unwrap_or(task)
}

/// The task metadata v4 `/task` document of `row`, with `ServiceName` when given.
fn metadata_doc(row: &TaskRow, service_name: Option<String>) -> Value {
    let mut doc = json!({
        "Cluster": CLUSTER_ARN,
        "TaskARN": row.arn,
        "Family": family_of(&row.task_definition),
        "Revision": revision_of(&row.task_definition).unwrap_or(REVISION).to_string(),
        "DesiredStatus": row.desired_status.as_str(),
        "KnownStatus": row.last_status.as_str(),
        "Limits": {"CPU": 0.25, "Memory": 512},
        "PullStartedAt": "2024-01-01T00:00:00.000000000Z",
        "PullStoppedAt": "2024-01-01T00:00:05.000000000Z",
        "AvailabilityZone": format!("{REGION}{}", row.zone),
        "LaunchType": "FARGATE",
        "Containers": [],
    });
    if let (Some(name), Some(object)) = (service_name, doc.as_object_mut()) {
        object.insert("ServiceName".to_string(), Value::String(name));
    }
    doc
}

/// `GET /v4/stand-in/task`: the first task's metadata.
async fn first_task_metadata(State(shared): State<Shared>) -> Response {
    let mut sim = shared.sim();
    sim.metadata_reads += 1;
    if !sim.metadata_available {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    let service_name = sim.metadata_service_name.clone();
    match sim.table.rows.first() {
        Some(row) => Json(metadata_doc(row, service_name)).into_response(),
        None => (StatusCode::NOT_FOUND, "no task").into_response(),
    }
}

/// `GET /v4/<id>/task`: task `id`'s metadata, without `ServiceName` (as on Fargate).
async fn task_metadata(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let mut sim = shared.sim();
    sim.metadata_reads += 1;
    if !sim.metadata_available {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    match sim.table.get(&id) {
        Some(row) => Json(metadata_doc(row, None)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no task {id}")).into_response(),
    }
}

/// `GET/PUT /agent/<id>/task-protection/v1/state`: the agent endpoint of task `id`, answering as
/// [`crate::StandInAgent`] does ([`agent::serve_call`]) on that task's protection.
async fn agent_state(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    body: axum::body::Bytes,
) -> Response {
    let (journal, fault, arn) = {
        let sim = shared.sim();
        let (fault, arn) = match sim.table.get(&id) {
            Some(row) => (row.agent_fault.clone(), row.arn.clone()),
            None => (Fault::NotFound, task_arn(&id)),
        };
        (Arc::clone(&sim.agent_journal), fault, arn)
    };
    let task_id = id.clone();
    let sim = shared.clone();
    agent::serve_call(
        &journal,
        fault,
        &arn,
        &method,
        &body,
        |call| TaskAgentCall { task_id, call },
        move |change| {
            let mut sim = sim.sim();
            let row = sim.table.get_mut(&id)?;
            if let Some((enabled, minutes)) = change {
                row.protection.set(enabled, minutes);
            }
            Some(row.protection.current())
        },
    )
    .await
}

/// `GET /_agent_calls`: the per-task agent calls.
async fn agent_calls(State(shared): State<Shared>) -> Json<Vec<TaskAgentCall>> {
    let journal = Arc::clone(&shared.sim().agent_journal);
    Json(journal.calls())
}

/// `GET /_fleet`: the service (as `DescribeServices` has it), its tasks (as `DescribeTasks` has
/// them) and its events, oldest first.
async fn fleet_view(State(shared): State<Shared>) -> Json<Value> {
    let sim = shared.sim();
    let (service, pending) = sim.service_doc();
    let tasks: Vec<Value> = sim.table.rows.iter().map(TaskRow::to_json).collect();
    let events: Vec<&str> = sim.events.iter().map(|e| e.message.as_str()).collect();
    Json(json!({
        "service": service.to_json(&pending, &[]),
        "tasks": tasks,
        "events": events,
    }))
}

/// `POST /_fleet/scale/<n>`: sets the desired count.
async fn fleet_scale(State(shared): State<Shared>, Path(count): Path<String>) -> Response {
    match count.parse::<u32>() {
        Ok(n) if n <= MAX_DESIRED_COUNT => {
            let desired = i32::try_from(n).unwrap_or(i32::MAX);
            shared.sim().set_desired_count(desired);
            (StatusCode::OK, format!("desired count {n}\n")).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            format!("the desired count must be in 0..={MAX_DESIRED_COUNT}, got {count:?}\n"),
        )
            .into_response(),
    }
}

/// `POST /_fleet/deploy`: a deployment of a new task definition revision.
async fn fleet_deploy(State(shared): State<Shared>) -> Response {
    let id = shared.sim().deploy_new_revision();
    (StatusCode::OK, format!("deployment {id}\n")).into_response()
}

/// `POST /_fleet/stop/<task>`: stops a task now, as `StopTask` does.
async fn fleet_stop(State(shared): State<Shared>, Path(task): Path<String>) -> Response {
    match shared.sim().stop_task(&task, "Task stopped by user") {
        Ok(info) => (StatusCode::OK, format!("stopping task {}\n", info.id)).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}

/// The fields of the operations' inputs.
#[derive(Default)]
struct Input {
    cluster: Option<String>,
    tasks: Vec<String>,
    services: Vec<String>,
    protection_enabled: Option<bool>,
    expires_in_minutes: Option<i64>,
    service_name: Option<String>,
    desired_status: Option<String>,
    started_by: Option<String>,
    family: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

fn parse_input(body: &[u8]) -> Result<Input, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let object = value.as_object().ok_or("the body must be a JSON object")?;
    let strings = |key: &str| -> Vec<String> {
        object
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let string = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    Ok(Input {
        cluster: string("cluster"),
        tasks: strings("tasks"),
        services: strings("services"),
        protection_enabled: object.get("protectionEnabled").and_then(Value::as_bool),
        expires_in_minutes: object.get("expiresInMinutes").and_then(Value::as_i64),
        service_name: string("serviceName"),
        desired_status: string("desiredStatus"),
        started_by: string("startedBy"),
        family: string("family"),
        max_results: object.get("maxResults").and_then(Value::as_i64),
        next_token: string("nextToken"),
    })
}

/// The part of the SigV4 credential scope in an `Authorization` header:
/// `ACCESS_KEY/DATE/REGION/SERVICE/aws4_request`.
fn credential_scope(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    auth.split("Credential=").nth(1)?.split(',').next()
}

/// The region of the SigV4 credential scope in an `Authorization` header.
fn signing_region(headers: &HeaderMap) -> Option<String> {
    credential_scope(headers)?
        .split('/')
        .nth(2)
        .map(str::to_string)
}

/// The access key ID of the SigV4 credential in an `Authorization` header.
fn access_key_id(headers: &HeaderMap) -> Option<String> {
    credential_scope(headers)?
        .split('/')
        .next()
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

fn known_cluster(cluster: Option<&str>) -> bool {
    matches!(cluster, None | Some(CLUSTER_NAME) | Some(CLUSTER_ARN))
}

async fn ecs(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let operation = EcsOperation::from_target(&target);
    let parsed = parse_input(&body);
    let input = parsed.as_ref().ok();
    let index = shared.journal.record(EcsCall {
        operation: operation.map_or(target.clone(), |o| o.name().to_string()),
        protection_enabled: input.and_then(|i| i.protection_enabled),
        expires_in_minutes: input
            .and_then(|i| i.expires_in_minutes)
            .and_then(|m| u32::try_from(m).ok()),
        cluster: input.and_then(|i| i.cluster.clone()),
        tasks: input.map(|i| i.tasks.clone()).unwrap_or_default(),
        services: input.map(|i| i.services.clone()).unwrap_or_default(),
        region: signing_region(&headers),
        access_key_id: access_key_id(&headers),
        status: 0,
    });
    let fault = operation
        .and_then(|o| shared.sim().faults.get(&o).cloned())
        .unwrap_or(EcsFault::None);
    shared.journal.delay(fault.delay()).await;

    let (status, body) = match (operation, parsed) {
        (None, _) => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &format!("unknown operation {target:?}"),
        ),
        (_, Err(message)) => error(StatusCode::BAD_REQUEST, "SerializationException", &message),
        (Some(op), Ok(input)) => answer(&shared, op, &fault, &input),
    };
    shared
        .journal
        .finish(index, |call| call.status = status.as_u16());
    (
        status,
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-requestid", "00000000-0000-0000-0000-000000000000"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, String) {
    (
        status,
        json!({"__type": code, "message": message}).to_string(),
    )
}

fn invalid(message: &str) -> (StatusCode, String) {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidParameterException",
        message,
    )
}

fn answer(
    shared: &Shared,
    op: EcsOperation,
    fault: &EcsFault,
    input: &Input,
) -> (StatusCode, String) {
    match fault {
        EcsFault::Throttled => {
            return error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            )
        }
        EcsFault::AccessDenied => {
            let resource = match (op, input.tasks.first()) {
                (EcsOperation::ListTasks, _) => CLUSTER_ARN.to_string(),
                (_, Some(task)) => task_arn(id_of(task)),
                (_, None) => TASK_ARN.to_string(),
            };
            let message = format!(
                "User: arn:aws:sts::{ACCOUNT}:assumed-role/stand-in-task-role/0123456789abcdef \
                 is not authorized to perform: ecs:{} on resource: {resource} because no \
                 identity-based policy allows the ecs:{} action",
                op.name(),
                op.name()
            );
            return error(StatusCode::BAD_REQUEST, "AccessDeniedException", &message);
        }
        EcsFault::InvalidParameter => return invalid("Invalid parameter."),
        EcsFault::ClusterNotFound => {
            return error(
                StatusCode::BAD_REQUEST,
                "ClusterNotFoundException",
                "Cluster not found.",
            )
        }
        EcsFault::ServerError => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServerException",
                "Service Unavailable. Please try again later.",
            )
        }
        EcsFault::Malformed => return (StatusCode::OK, "<html>not json</html>".to_string()),
        _ => {}
    }
    if !known_cluster(input.cluster.as_deref()) {
        return error(
            StatusCode::BAD_REQUEST,
            "ClusterNotFoundException",
            "Cluster not found.",
        );
    }
    match op {
        EcsOperation::UpdateTaskProtection | EcsOperation::GetTaskProtection => {
            protection_answer(shared, op, fault, input)
        }
        EcsOperation::DescribeServices => services_answer(shared, fault, input),
        EcsOperation::DescribeTasks => tasks_answer(shared, fault, input),
        EcsOperation::ListTasks => list_answer(shared, fault, input),
    }
}

fn protection_answer(
    shared: &Shared,
    op: EcsOperation,
    fault: &EcsFault,
    input: &Input,
) -> (StatusCode, String) {
    let update = op == EcsOperation::UpdateTaskProtection;
    let most = if update {
        MAX_TASKS_PER_UPDATE
    } else {
        MAX_TASKS_PER_CALL
    };
    if input.tasks.is_empty() || input.tasks.len() > most {
        return invalid(&format!("tasks must list 1 to {most} tasks."));
    }
    if update {
        let Some(enabled) = input.protection_enabled else {
            return invalid("protectionEnabled is required.");
        };
        let in_range = |m: i64| u32::try_from(m).is_ok_and(|m| ECS_EXPIRES_IN_MINUTES.contains(&m));
        if enabled && input.expires_in_minutes.is_some_and(|m| !in_range(m)) {
            return invalid(&format!(
                "expiresInMinutes must be between {} and {}.",
                ECS_EXPIRES_IN_MINUTES.start(),
                ECS_EXPIRES_IN_MINUTES.end()
            ));
        }
    }
    let mut protected = Vec::new();
    let mut failures = Vec::new();
    let mut sim = shared.sim();
    for task in &input.tasks {
        let Some(index) = screen(task, fault, &sim.table, &mut failures) else {
            continue;
        };
        let row = &mut sim.table.rows[index];
        if update {
            let minutes = input.expires_in_minutes.and_then(|m| u32::try_from(m).ok());
            row.protection
                .set(input.protection_enabled == Some(true), minutes);
        }
        let expires_at = row.protection.current();
        let mut entry = json!({"taskArn": row.arn, "protectionEnabled": expires_at.is_some()});
        if let (Some(at), Some(object)) = (expires_at, entry.as_object_mut()) {
            object.insert("expirationDate".to_string(), epoch_seconds(at));
        }
        protected.push(entry);
    }
    (
        StatusCode::OK,
        json!({"protectedTasks": protected, "failures": failures}).to_string(),
    )
}

fn services_answer(shared: &Shared, fault: &EcsFault, input: &Input) -> (StatusCode, String) {
    if input.services.is_empty() || input.services.len() > 10 {
        return invalid("services must list 1 to 10 services.");
    }
    let (service, pending, events) = {
        let sim = shared.sim();
        let (service, pending) = sim.service_doc();
        (service, pending, sim.events.clone())
    };
    let service_arn = format!(
        "arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER_NAME}/{}",
        service.service_name
    );
    let mut services = Vec::new();
    let mut failures = Vec::new();
    for name in &input.services {
        if *name != service.service_name && *name != service_arn {
            failures.push(json!({"arn": format!("arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER_NAME}/{name}"), "reason": "MISSING"}));
            continue;
        }
        match fault {
            EcsFault::Failure { reason, detail } => {
                failures.push(json!({"arn": service_arn, "reason": reason, "detail": detail}));
            }
            EcsFault::OmitTask => {}
            _ => services.push(service.to_json(&pending, &events)),
        }
    }
    (
        StatusCode::OK,
        json!({"services": services, "failures": failures}).to_string(),
    )
}

fn tasks_answer(shared: &Shared, fault: &EcsFault, input: &Input) -> (StatusCode, String) {
    if input.tasks.is_empty() || input.tasks.len() > MAX_TASKS_PER_CALL {
        return invalid(&format!("tasks must list 1 to {MAX_TASKS_PER_CALL} tasks."));
    }
    let sim = shared.sim();
    let mut tasks = Vec::new();
    let mut failures = Vec::new();
    for task in &input.tasks {
        if let Some(index) = screen(task, fault, &sim.table, &mut failures) {
            tasks.push(sim.table.rows[index].to_json());
        }
    }
    (
        StatusCode::OK,
        json!({"tasks": tasks, "failures": failures}).to_string(),
    )
}

/// How a `ListTasks` page token starts (then the index of the page's first task).
const PAGE_TOKEN_PREFIX: &str = "stand-in-page-";

/// `ListTasks`: the ARNs of the tasks that match the filters (`serviceName`, `desiredStatus`,
/// RUNNING by default, `startedBy`, `family`), `maxResults` (1..=100, 100 by default) at a time
/// with a `nextToken` for the rest.
fn list_answer(shared: &Shared, fault: &EcsFault, input: &Input) -> (StatusCode, String) {
    let page_size = match input.max_results {
        None => MAX_TASKS_PER_CALL,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=MAX_TASKS_PER_CALL).contains(&n) => n,
            _ => {
                return invalid(&format!(
                    "maxResults must be between 1 and {MAX_TASKS_PER_CALL}."
                ))
            }
        },
    };
    let desired = match input.desired_status.as_deref() {
        None | Some("RUNNING") => Some("RUNNING"),
        Some("STOPPED") => Some("STOPPED"),
        // ECS never sets a desired status of PENDING: the filter is valid and matches nothing.
        Some("PENDING") => None,
        Some(other) => {
            return invalid(&format!(
                "desiredStatus must be one of RUNNING, PENDING, STOPPED; got {other:?}."
            ))
        }
    };
    let start = match input.next_token.as_deref() {
        None => 0,
        Some(token) => match token
            .strip_prefix(PAGE_TOKEN_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return invalid("Invalid nextToken."),
        },
    };
    let sim = shared.sim();
    let group = match input.service_name.as_deref() {
        None => None,
        Some(name) => {
            let arn = format!(
                "arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER_NAME}/{}",
                sim.service.service_name
            );
            if name != sim.service.service_name && name != arn {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ServiceNotFoundException",
                    "Service not found.",
                );
            }
            Some(format!("service:{}", sim.service.service_name))
        }
    };
    let matching: Vec<&TaskRow> = match (fault, desired) {
        (EcsFault::Failure { .. } | EcsFault::OmitTask, _) | (_, None) => Vec::new(),
        (_, Some(desired)) => sim
            .table
            .rows
            .iter()
            .filter(|r| r.desired_status.as_str() == desired)
            .filter(|r| group.is_none() || r.group == group)
            .filter(|r| {
                input.started_by.is_none() || r.started_by.as_ref() == input.started_by.as_ref()
            })
            .filter(|r| {
                input
                    .family
                    .as_deref()
                    .is_none_or(|f| family_of(&r.task_definition) == f)
            })
            .collect(),
    };
    let page: Vec<&str> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .map(|r| r.arn.as_str())
        .collect();
    let mut answer = json!({"taskArns": page});
    if start + page_size < matching.len() {
        if let Some(object) = answer.as_object_mut() {
            object.insert(
                "nextToken".to_string(),
                Value::String(format!("{PAGE_TOKEN_PREFIX}{}", start + page_size)),
            );
        }
    }
    (StatusCode::OK, answer.to_string())
}

/// Which task of `table` the stand-in answers for, when asked about `task` (an ARN or a bare
/// id) under `fault`. If none, the `failures[]` entry it reports instead is pushed (an unknown
/// task: `MISSING`; an injected failure), unless the fault leaves the task out altogether
/// ([`EcsFault::OmitTask`]).
fn screen(task: &str, fault: &EcsFault, table: &Table, failures: &mut Vec<Value>) -> Option<usize> {
    let Some(index) = table.find(task) else {
        failures.push(json!({"arn": task, "reason": "MISSING"}));
        return None;
    };
    match fault {
        EcsFault::Failure { reason, detail } => {
            failures
                .push(json!({"arn": table.rows[index].arn, "reason": reason, "detail": detail}));
            None
        }
        EcsFault::OmitTask => None,
        _ => Some(index),
    }
}
