//! A stand-in for the ECS API and the task metadata endpoint: a real HTTP server on loopback that
//! speaks ECS's `awsJson1_1` protocol well enough for the real `aws-sdk-ecs` client, records
//! every call in order, and fails on demand.
//!
//! * `POST /` with `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>` for
//!   `UpdateTaskProtection`, `GetTaskProtection`, `DescribeServices` and `DescribeTasks`; errors
//!   are HTTP 400 (500 for `ServerException`) with `{"__type": "...", "message": "..."}`, as ECS
//!   answers.
//! * `GET /v4/stand-in/task`: the task metadata v4 `/task` document (give
//!   [`StandInEcs::metadata_uri`] as `ECS_CONTAINER_METADATA_URI_V4`). It carries `ServiceName`
//!   as on EC2, or omits it as on Fargate ([`StandInEcs::set_metadata_service_name`]).
//!
//! The simulated task belongs to the service's first deployment: `DescribeTasks` reports its
//! `group` as `service:stand-in-service` and its `startedBy` as [`FIRST_DEPLOYMENT_ID`], the `id`
//! of the PRIMARY deployment of [`ServiceDoc::steady`]; both can be changed
//! ([`StandInEcs::set_task_group`], [`StandInEcs::set_task_started_by`]).
//! * `GET /_calls`: the recorded ECS calls as JSON, for a separate process (the load tool).
//!
//! Point the SDK at [`StandInEcs::endpoint_url`] with any credentials; the signature is not
//! checked, but the region it was made for is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    Delay, Protection, Served, Shared as Common, ANY_LOOPBACK_PORT, ECS_EXPIRES_IN_MINUTES,
};

/// The region of the stand-in's task (deliberately not `us-east-1`, so that a test can tell
/// whether the region came from the task ARN).
pub const REGION: &str = "eu-west-1";
/// The stand-in's account.
pub const ACCOUNT: &str = "123456789012";
/// The stand-in's cluster name.
pub const CLUSTER_NAME: &str = "stand-in-cluster";
/// The stand-in's cluster ARN (what the metadata endpoint reports as `Cluster`).
pub const CLUSTER_ARN: &str = "arn:aws:ecs:eu-west-1:123456789012:cluster/stand-in-cluster";
/// The stand-in's task ARN.
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

/// The ARN of revision `revision` of the stand-in's task definition family.
pub fn task_definition_arn(revision: u32) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{FAMILY}:{revision}")
}

/// The ECS operations the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EcsOperation {
    /// `UpdateTaskProtection`.
    UpdateTaskProtection,
    /// `GetTaskProtection`.
    GetTaskProtection,
    /// `DescribeServices`.
    DescribeServices,
    /// `DescribeTasks`.
    DescribeTasks,
}

impl EcsOperation {
    const ALL: [EcsOperation; 4] = [
        EcsOperation::UpdateTaskProtection,
        EcsOperation::GetTaskProtection,
        EcsOperation::DescribeServices,
        EcsOperation::DescribeTasks,
    ];

    fn from_target(target: &str) -> Option<Self> {
        match target.strip_prefix(TARGET_PREFIX)? {
            "UpdateTaskProtection" => Some(Self::UpdateTaskProtection),
            "GetTaskProtection" => Some(Self::GetTaskProtection),
            "DescribeServices" => Some(Self::DescribeServices),
            "DescribeTasks" => Some(Self::DescribeTasks),
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
        }
    }
}

/// A fault the stand-in answers an operation with, until changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcsFault {
    /// Behave like ECS.
    None,
    /// HTTP 200 with a `failures[]` entry for the task (e.g. `TASK_NOT_VALID`) and no
    /// `protectedTasks` (for `DescribeServices`: a failure for the service, no services; for
    /// `DescribeTasks`: a failure for the task, no tasks).
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
    /// for `DescribeTasks`: no tasks).
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
    /// The HTTP status answered (0 while the call is still hanging).
    pub status: u16,
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

    fn to_json(&self) -> Value {
        let primary_td = self
            .deployments
            .iter()
            .find(|d| d.status == "PRIMARY")
            .map(|d| d.task_definition.clone());
        let deployments: Vec<Value> = self
            .deployments
            .iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "status": d.status,
                    "taskDefinition": d.task_definition,
                    "desiredCount": d.desired_count,
                    "pendingCount": 0,
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
            "pendingCount": 0,
            "launchType": "FARGATE",
            "taskDefinition": primary_td,
            "deployments": deployments,
            "events": [],
            "createdAt": 1_690_000_000.0,
            "schedulingStrategy": "REPLICA",
        })
    }
}

#[derive(Debug)]
struct Sim {
    faults: HashMap<EcsOperation, EcsFault>,
    protection: Protection,
    service: ServiceDoc,
    metadata_service_name: Option<String>,
    task_group: Option<String>,
    task_started_by: Option<String>,
    metadata_available: bool,
    metadata_reads: usize,
    next_deployment: u64,
}

/// What the handlers share.
type Shared = Common<Sim, EcsCall>;

/// The running stand-in. Dropping it stops the server.
pub struct StandInEcs {
    served: Served<Sim, EcsCall>,
}

impl StandInEcs {
    /// Starts a stand-in on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind(ANY_LOOPBACK_PORT).await
    }

    /// Starts a stand-in on `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let sim = Sim {
            faults: HashMap::new(),
            protection: Protection::default(),
            service: ServiceDoc::steady(&task_definition_arn(REVISION), 2),
            metadata_service_name: Some(SERVICE_NAME.to_string()),
            task_group: Some(format!("service:{SERVICE_NAME}")),
            task_started_by: Some(FIRST_DEPLOYMENT_ID.to_string()),
            metadata_available: true,
            metadata_reads: 0,
            next_deployment: 2,
        };
        let routes = Router::new()
            .route("/", post(ecs))
            .route("/v4/stand-in/task", get(task_metadata));
        let served = Served::start(addr, sim, routes).await?;
        Ok(Self { served })
    }

    /// The URL to give the SDK as its endpoint (`ECS_ENDPOINT_URL`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// The value to give as `ECS_CONTAINER_METADATA_URI_V4`.
    pub fn metadata_uri(&self) -> String {
        format!("http://{}/v4/stand-in", self.served.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr
    }

    /// Answers every following call of every operation with `fault`.
    pub fn set_fault(&self, fault: EcsFault) {
        let mut sim = self.served.shared.sim();
        for op in EcsOperation::ALL {
            sim.faults.insert(op, fault.clone());
        }
    }

    /// Answers every following call of `operation` with `fault`.
    pub fn set_fault_for(&self, operation: EcsOperation, fault: EcsFault) {
        self.served.shared.sim().faults.insert(operation, fault);
    }

    /// Lets every call hanging under [`EcsFault::Hang`] answer (normally), and stops hanging.
    pub fn release_hangs(&self) {
        for fault in self.served.shared.sim().faults.values_mut() {
            if *fault == EcsFault::Hang {
                *fault = EcsFault::None;
            }
        }
        self.served.shared.journal.release_hangs();
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

    /// The `protectionEnabled` values of the `UpdateTaskProtection` calls so far, in order.
    pub fn updates(&self) -> Vec<bool> {
        self.calls_of(EcsOperation::UpdateTaskProtection)
            .into_iter()
            .filter_map(|c| c.protection_enabled)
            .collect()
    }

    /// Whether the simulated task is protected now.
    pub fn is_protected(&self) -> bool {
        self.served.shared.sim().protection.current().is_some()
    }

    /// Sets the simulated task's protection (as if a previous process had set it).
    pub fn set_protected_until(&self, expires_at: Option<SystemTime>) {
        self.served.shared.sim().protection.expires_at = expires_at;
    }

    /// Waits until at least `n` ECS calls have been recorded (in any state).
    pub async fn wait_for_calls(&self, n: usize) {
        self.served.shared.journal.wait_for(n).await;
    }

    /// The service document `DescribeServices` answers now.
    pub fn service(&self) -> ServiceDoc {
        self.served.shared.sim().service.clone()
    }

    /// Replaces the service document.
    pub fn set_service(&self, service: ServiceDoc) {
        self.served.shared.sim().service = service;
    }

    /// Starts a rolling deployment to `task_definition`: the current PRIMARY deployment becomes
    /// ACTIVE, a new PRIMARY deployment with no running tasks yet is in progress.
    pub fn begin_deployment(&self, task_definition: &str) {
        let mut sim = self.served.shared.sim();
        let id = sim.next_deployment;
        sim.next_deployment += 1;
        let service = &mut sim.service;
        for d in &mut service.deployments {
            if d.status == "PRIMARY" {
                d.status = "ACTIVE".to_string();
            }
        }
        service.deployments.insert(
            0,
            DeploymentDoc {
                id: format!("ecs-svc/{:019}", 1_000_000_000_000_000_000u64 + id),
                status: "PRIMARY".to_string(),
                task_definition: task_definition.to_string(),
                desired_count: service.desired_count,
                running_count: 0,
                rollout_state: "IN_PROGRESS".to_string(),
            },
        );
    }

    /// Starts a forced new deployment (`--force-new-deployment`): a new PRIMARY deployment of the
    /// PRIMARY's own task definition, as [`begin_deployment`](Self::begin_deployment) does.
    pub fn force_new_deployment(&self) {
        let current = self
            .served
            .shared
            .sim()
            .service
            .deployments
            .iter()
            .find(|d| d.status == "PRIMARY")
            .map(|d| d.task_definition.clone())
            .unwrap_or_else(|| task_definition_arn(REVISION));
        self.begin_deployment(&current);
    }

    /// Ends every deployment but the PRIMARY one, which completes with all its tasks running.
    pub fn finish_deployment(&self) {
        let mut sim = self.served.shared.sim();
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
    /// `set_counts(1, 3)` for a scale-in under way.
    pub fn set_counts(&self, desired: i32, running: i32) {
        let mut sim = self.served.shared.sim();
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

    /// Sets the `ServiceName` the metadata endpoint reports. `None` omits the field: a standalone
    /// task, or a service's task on Fargate, whose metadata has no `ServiceName`.
    pub fn set_metadata_service_name(&self, name: Option<&str>) {
        self.served.shared.sim().metadata_service_name = name.map(str::to_string);
    }

    /// Sets the task's `group` in `DescribeTasks` (`service:NAME` for a service's task,
    /// `family:FAMILY` for a standalone one by default; `None` omits the field).
    pub fn set_task_group(&self, group: Option<&str>) {
        self.served.shared.sim().task_group = group.map(str::to_string);
    }

    /// Sets the task's `startedBy` in `DescribeTasks` (the ID of the deployment that started it,
    /// for a service's task; `None` omits the field).
    pub fn set_task_started_by(&self, started_by: Option<&str>) {
        self.served.shared.sim().task_started_by = started_by.map(str::to_string);
    }

    /// The ID of the PRIMARY deployment now, if there is one.
    pub fn primary_deployment_id(&self) -> Option<String> {
        self.served
            .shared
            .sim()
            .service
            .deployments
            .iter()
            .find(|d| d.status == "PRIMARY")
            .map(|d| d.id.clone())
    }

    /// Makes the metadata endpoint answer HTTP 500 (`false`) or normally (`true`).
    pub fn set_metadata_available(&self, available: bool) {
        self.served.shared.sim().metadata_available = available;
    }

    /// How many times the metadata endpoint has been read.
    pub fn metadata_reads(&self) -> usize {
        self.served.shared.sim().metadata_reads
    }
}

async fn task_metadata(State(shared): State<Shared>) -> Response {
    let (available, service_name) = {
        let mut sim = shared.sim();
        sim.metadata_reads += 1;
        (sim.metadata_available, sim.metadata_service_name.clone())
    };
    if !available {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    let mut doc = json!({
        "Cluster": CLUSTER_ARN,
        "TaskARN": TASK_ARN,
        "Family": FAMILY,
        "Revision": REVISION.to_string(),
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": {"CPU": 0.25, "Memory": 512},
        "PullStartedAt": "2024-01-01T00:00:00.000000000Z",
        "PullStoppedAt": "2024-01-01T00:00:05.000000000Z",
        "AvailabilityZone": format!("{REGION}a"),
        "LaunchType": "FARGATE",
        "Containers": [],
    });
    if let (Some(name), Some(object)) = (service_name, doc.as_object_mut()) {
        object.insert("ServiceName".to_string(), Value::String(name));
    }
    Json(doc).into_response()
}

/// The fields of the operations' inputs.
#[derive(Default)]
struct Input {
    cluster: Option<String>,
    tasks: Vec<String>,
    services: Vec<String>,
    protection_enabled: Option<bool>,
    expires_in_minutes: Option<i64>,
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
    Ok(Input {
        cluster: object
            .get("cluster")
            .and_then(Value::as_str)
            .map(str::to_string),
        tasks: strings("tasks"),
        services: strings("services"),
        protection_enabled: object.get("protectionEnabled").and_then(Value::as_bool),
        expires_in_minutes: object.get("expiresInMinutes").and_then(Value::as_i64),
    })
}

/// The region of the SigV4 credential scope in an `Authorization` header.
fn signing_region(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    // ACCESS_KEY/DATE/REGION/SERVICE/aws4_request
    scope.split('/').nth(2).map(str::to_string)
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
            let message = format!(
                "User: arn:aws:sts::{ACCOUNT}:assumed-role/stand-in-task-role/0123456789abcdef \
                 is not authorized to perform: ecs:{} on resource: {TASK_ARN} because no \
                 identity-based policy allows the ecs:{} action",
                op.name(),
                op.name()
            );
            return error(StatusCode::BAD_REQUEST, "AccessDeniedException", &message);
        }
        EcsFault::InvalidParameter => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterException",
                "Invalid parameter.",
            )
        }
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
    }
}

fn protection_answer(
    shared: &Shared,
    op: EcsOperation,
    fault: &EcsFault,
    input: &Input,
) -> (StatusCode, String) {
    if input.tasks.is_empty() || input.tasks.len() > 10 {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "tasks must list 1 to 10 tasks.",
        );
    }
    let update = op == EcsOperation::UpdateTaskProtection;
    if update {
        let Some(enabled) = input.protection_enabled else {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterException",
                "protectionEnabled is required.",
            );
        };
        let in_range = |m: i64| u32::try_from(m).is_ok_and(|m| ECS_EXPIRES_IN_MINUTES.contains(&m));
        if enabled && input.expires_in_minutes.is_some_and(|m| !in_range(m)) {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterException",
                &format!(
                    "expiresInMinutes must be between {} and {}.",
                    ECS_EXPIRES_IN_MINUTES.start(),
                    ECS_EXPIRES_IN_MINUTES.end()
                ),
            );
        }
    }
    let mut protected = Vec::new();
    let mut failures = Vec::new();
    for task in &input.tasks {
        if !screen(task, fault, &mut failures) {
            continue;
        }
        let mut sim = shared.sim();
        if update {
            let minutes = input.expires_in_minutes.and_then(|m| u32::try_from(m).ok());
            sim.protection
                .set(input.protection_enabled == Some(true), minutes);
        }
        let expires_at = sim.protection.current();
        let mut entry = json!({"taskArn": TASK_ARN, "protectionEnabled": expires_at.is_some()});
        if let (Some(at), Some(object)) = (expires_at, entry.as_object_mut()) {
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            // ECS sends epoch seconds with a fraction.
            object.insert(
                "expirationDate".to_string(),
                json!((secs * 1000.0).round() / 1000.0),
            );
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
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "services must list 1 to 10 services.",
        );
    }
    let service = shared.sim().service.clone();
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
            _ => services.push(service.to_json()),
        }
    }
    (
        StatusCode::OK,
        json!({"services": services, "failures": failures}).to_string(),
    )
}

fn tasks_answer(shared: &Shared, fault: &EcsFault, input: &Input) -> (StatusCode, String) {
    if input.tasks.is_empty() || input.tasks.len() > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "tasks must list 1 to 100 tasks.",
        );
    }
    let (group, started_by) = {
        let sim = shared.sim();
        (sim.task_group.clone(), sim.task_started_by.clone())
    };
    let mut tasks = Vec::new();
    let mut failures = Vec::new();
    for task in &input.tasks {
        if !screen(task, fault, &mut failures) {
            continue;
        }
        let mut doc = json!({
            "taskArn": TASK_ARN,
            "clusterArn": CLUSTER_ARN,
            "taskDefinitionArn": task_definition_arn(REVISION),
            "lastStatus": "RUNNING",
            "desiredStatus": "RUNNING",
            "launchType": "FARGATE",
            "availabilityZone": format!("{REGION}a"),
            "cpu": "256",
            "memory": "512",
            "containers": [],
            "createdAt": 1_700_000_000.0,
            "startedAt": 1_700_000_030.0,
            "version": 3,
        });
        if let Some(object) = doc.as_object_mut() {
            if let Some(group) = &group {
                object.insert("group".to_string(), Value::String(group.clone()));
            }
            if let Some(started_by) = &started_by {
                object.insert("startedBy".to_string(), Value::String(started_by.clone()));
            }
        }
        tasks.push(doc);
    }
    (
        StatusCode::OK,
        json!({"tasks": tasks, "failures": failures}).to_string(),
    )
}

/// Whether the stand-in answers for `task` (an ARN or a bare id) under `fault`; if not, the
/// `failures[]` entry it reports instead is pushed (an unknown task: `MISSING`; an injected
/// failure), unless the fault leaves the task out altogether ([`EcsFault::OmitTask`]).
fn screen(task: &str, fault: &EcsFault, failures: &mut Vec<Value>) -> bool {
    if task != TASK_ARN && Some(task) != TASK_ARN.rsplit('/').next() {
        failures.push(json!({"arn": task, "reason": "MISSING"}));
        return false;
    }
    match fault {
        EcsFault::Failure { reason, detail } => {
            failures.push(json!({"arn": TASK_ARN, "reason": reason, "detail": detail}));
            false
        }
        EcsFault::OmitTask => false,
        _ => true,
    }
}
