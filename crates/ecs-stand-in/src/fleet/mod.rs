//! A local ECS service: the stand-in ECS in fleet mode, real task processes of one service, a
//! front door standing in for its load balancer, and a scheduler that scales, deploys and stops
//! tasks with ECS's semantics (scale-in protection included).
//!
//! [`Fleet::start`] starts a [`StandInEcs`] in fleet mode and the desired count of task
//! processes. Each task gets what ECS gives a task: its own agent endpoint (`ECS_AGENT_URI`), its
//! own task metadata (`ECS_CONTAINER_METADATA_URI_V4`, without `ServiceName` as on Fargate), the
//! shared ECS API (`ECS_ENDPOINT_URL`) with credentials of its own ([`task_access_key_id`]) and
//! `AWS_REGION=eu-west-1`, `PROTECTION_BACKEND=agent`, a free `PORT` on 127.0.0.1 (and a free
//! `STATUS_PORT` for a worker), plus the configured environment.
//!
//! Each task goes through ECS's lifecycle: PROVISIONING, PENDING while its process starts,
//! RUNNING once its health path answers 200 (then it is registered at the front door); to stop
//! it, ECS sets its desired status STOPPED, deregisters it at once (DEACTIVATING: no new
//! connection), waits out the deregistration delay, sends SIGTERM (STOPPING), SIGKILL after the
//! stop timeout, and the task is STOPPED once its process has ended. A process that exits by
//! itself is STOPPED and replaced. What the scheduler does each round is decided by
//! [`crate::scheduler`]'s pure rules.

mod front_door;
mod process;
mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::api::{task_access_key_id, MAX_DESIRED_COUNT, SERVICE_NAME};
use crate::scheduler::{self, Cause, Step, Stopping, Wait};
use crate::tasks::{DesiredStatus, LastStatus, TaskInfo};
use crate::{StandInEcs, ANY_LOOPBACK_PORT, REGION};
use front_door::FrontDoor;
use process::{free_port, loopback, short_id, Launch, Output, TaskProcess};
pub use view::{FleetView, TaskLine};

/// How often the fleet looks at its processes (exits, health, stopping steps) between the
/// scheduler's rounds.
const POLL: Duration = Duration::from_millis(100);
/// How long one health check or `/status` read may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the fleet's tasks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskKind {
    /// A server behind the load balancer (the `websocket` binary): registered at the front door
    /// once healthy; health and `/status` on its `PORT`.
    WebSocket,
    /// A queue worker (the `queue-consumer` binary): no load balancer; health and `/status` on
    /// its `STATUS_PORT`.
    Worker,
}

/// How to run a fleet.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The task's executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The service's desired count at start (at most [`MAX_DESIRED_COUNT`]).
    pub tasks: u32,
    /// Environment for every task, on top of (and overriding) what the fleet sets.
    pub env: Vec<(String, String)>,
    /// How long a deregistered task keeps running before SIGTERM (the target group's
    /// deregistration delay).
    pub deregistration_delay: Duration,
    /// How long after SIGTERM a task is sent SIGKILL (the container's stop timeout).
    pub stop_timeout: Duration,
    /// The health check path (answering 200 makes a task RUNNING).
    pub health_path: String,
    /// Whether the tasks serve through the front door (a WebSocket server) or not (a worker).
    pub kind: TaskKind,
    /// How often the scheduler acts (ECS's service scheduler is not instant either).
    pub tick: Duration,
    /// Where the front door listens (a free loopback port by default).
    pub front_door: SocketAddr,
    /// Where the stand-in ECS API (and the tasks' agent and metadata endpoints) listen.
    pub api: SocketAddr,
}

impl FleetConfig {
    /// `tasks` WebSocket server tasks running `program`: deregistration delay 5 s, stop timeout
    /// 30 s (ECS's default), health path `/healthz`, a scheduler round every second, free
    /// loopback ports.
    pub fn new(program: impl Into<PathBuf>, tasks: u32) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            tasks,
            env: Vec::new(),
            deregistration_delay: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(30),
            health_path: "/healthz".to_string(),
            kind: TaskKind::WebSocket,
            tick: Duration::from_secs(1),
            front_door: ANY_LOOPBACK_PORT,
            api: ANY_LOOPBACK_PORT,
        }
    }

    /// Adds `name=value` to every task's environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    fn check(&self) -> Result<(), FleetError> {
        if self.tasks > MAX_DESIRED_COUNT {
            return Err(FleetError::Invalid(format!(
                "the task count must be in 0..={MAX_DESIRED_COUNT}, got {}",
                self.tasks
            )));
        }
        if !self.health_path.starts_with('/') {
            return Err(FleetError::Invalid(format!(
                "the health path must start with '/', got {:?}",
                self.health_path
            )));
        }
        if self.tick.is_zero() {
            return Err(FleetError::Invalid("the tick must be longer than 0".into()));
        }
        if !self.program.is_file() {
            return Err(FleetError::Invalid(format!(
                "{} is not a file",
                self.program.display()
            )));
        }
        Ok(())
    }
}

/// What went wrong with a fleet or a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A setting or a command's argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// No task, or more than one, matches the name given.
    #[error("{0}")]
    NoSuchTask(String),
    /// A listener could not be started.
    #[error("cannot start the {what}: {source}")]
    Listen {
        /// What: the front door or the ECS API stand-in.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// One task process and how far its stop has gone.
struct Proc {
    process: TaskProcess,
    /// Its `PORT`.
    port: u16,
    /// Its `STATUS_PORT` (a worker's).
    status_port: Option<u16>,
    stopping: Stopping,
    /// A health check is in flight.
    probing: bool,
}

impl Proc {
    /// Where its health path and `/status` are served.
    fn status_addr(&self) -> SocketAddr {
        loopback(self.status_port.unwrap_or(self.port))
    }
}

/// What the scheduler last reported, to log each change once.
#[derive(Debug, Default)]
struct Reported {
    scale_in: Option<Wait>,
    deployment: Option<Wait>,
    steady: bool,
}

/// What the fleet's driver, its commands and its views share.
struct Inner {
    ecs: StandInEcs,
    config: FleetConfig,
    front_door: Option<FrontDoor>,
    procs: Mutex<HashMap<String, Proc>>,
    output: Output,
    paused: std::sync::atomic::AtomicBool,
    reported: Mutex<Reported>,
    http: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fleet. Dropping it kills its processes; [`shutdown`](Self::shutdown) stops them as
/// ECS would.
pub struct Fleet {
    inner: Arc<Inner>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Fleet {
    /// Starts the stand-in ECS in fleet mode, the front door (for a WebSocket fleet) and the
    /// service with `config.tasks` tasks.
    pub async fn start(config: FleetConfig) -> Result<Fleet, FleetError> {
        config.check()?;
        let ecs =
            StandInEcs::bind_fleet(config.api)
                .await
                .map_err(|source| FleetError::Listen {
                    what: "ECS API stand-in",
                    source,
                })?;
        let front_door = match config.kind {
            TaskKind::WebSocket => Some(FrontDoor::start(config.front_door).await.map_err(
                |source| FleetError::Listen {
                    what: "front door",
                    source,
                },
            )?),
            TaskKind::Worker => None,
        };
        let http = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| FleetError::Invalid(format!("cannot build an HTTP client: {e}")))?;
        ecs.set_desired_count(i32::try_from(config.tasks).unwrap_or(0));
        let inner = Arc::new(Inner {
            ecs,
            config,
            front_door,
            procs: Mutex::new(HashMap::new()),
            output: Output::new(),
            paused: std::sync::atomic::AtomicBool::new(false),
            reported: Mutex::new(Reported::default()),
            http,
        });
        let driver = tokio::spawn(drive(Arc::clone(&inner)));
        Ok(Fleet { inner, driver })
    }

    /// The stand-in ECS the fleet runs on (its task table, calls, faults).
    pub fn ecs(&self) -> &StandInEcs {
        &self.inner.ecs
    }

    /// The front door's address (`None` for a worker fleet).
    pub fn front_door(&self) -> Option<SocketAddr> {
        self.inner.front_door.as_ref().map(FrontDoor::addr)
    }

    /// The tasks registered at the front door now, in registration order.
    pub fn registered(&self) -> Vec<String> {
        self.inner
            .front_door
            .as_ref()
            .map(FrontDoor::registered)
            .unwrap_or_default()
    }

    /// How many connections the front door has handed each task so far.
    pub fn routed(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner
            .front_door
            .as_ref()
            .map(FrontDoor::routed)
            .unwrap_or_default()
    }

    /// How many connections are open through the front door to each task now.
    pub fn open_connections(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner
            .front_door
            .as_ref()
            .map(FrontDoor::open)
            .unwrap_or_default()
    }

    /// The task the open front door connection from `client` (the client's own address, e.g. a
    /// WebSocket client's local address) went to.
    pub fn routed_to(&self, client: SocketAddr) -> Option<String> {
        self.inner.front_door.as_ref()?.routed_to(client)
    }

    /// Task `id`'s process id, while it runs.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        lock(&self.inner.procs).get(id)?.process.pid()
    }

    /// Sets the desired count, as `UpdateService --desired-count` does: the scheduler starts
    /// tasks, or stops the excess (unprotected tasks first, protected ones once released).
    pub fn scale(&self, count: u32) -> Result<(), FleetError> {
        if count > MAX_DESIRED_COUNT {
            return Err(FleetError::Invalid(format!(
                "the desired count must be in 0..={MAX_DESIRED_COUNT}, got {count}"
            )));
        }
        let desired = i32::try_from(count).unwrap_or(0);
        let previous = self.inner.ecs.desired_count();
        self.inner.ecs.set_desired_count(desired);
        self.inner.note(format!(
            "desired count of service {SERVICE_NAME} changed from {previous} to {desired}"
        ));
        Ok(())
    }

    /// Starts a deployment of a new task definition revision (minimum healthy 100 %, maximum
    /// 200 %): new tasks start first, then the old ones are stopped as their protection allows.
    /// Returns the new deployment's ID.
    pub fn deploy(&self) -> String {
        let id = self.inner.ecs.deploy();
        if let Some(line) = self.inner.ecs.events().last() {
            self.inner.output.push(format!("[ecs] {line}"));
        }
        id
    }

    /// Stops task `task` (an ARN, an ID, or the start of one ID) now, as `StopTask` does:
    /// protection does not prevent it. The service then replaces it.
    pub fn stop_task(&self, task: &str) -> Result<TaskInfo, FleetError> {
        let info = self
            .inner
            .ecs
            .stop_task(task)
            .map_err(FleetError::NoSuchTask)?;
        self.inner.note(format!(
            "task {} is stopping: {}",
            info.id,
            info.stopped_reason.as_deref().unwrap_or("stopped")
        ));
        Ok(info)
    }

    /// Stops the scheduler from acting (it starts and stops nothing) until
    /// [`resume`](Self::resume): the time ECS's scheduler takes between a change and its next
    /// round, made as long as a test needs. Tasks already starting or stopping go on.
    pub fn pause(&self) {
        self.inner
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets the scheduler act again.
    pub fn resume(&self) {
        self.inner
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every task in the table (stopped ones included), in the order they were started.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        self.inner.ecs.tasks()
    }

    /// The tasks in `status`.
    pub fn tasks_in(&self, status: LastStatus) -> Vec<TaskInfo> {
        self.tasks()
            .into_iter()
            .filter(|t| t.last_status == status)
            .collect()
    }

    /// Task `id`'s `PORT` on 127.0.0.1, while its process runs.
    pub fn task_addr(&self, id: &str) -> Option<SocketAddr> {
        lock(&self.inner.procs).get(id).map(|p| loopback(p.port))
    }

    /// Where task `id` serves its health path and `/status` (its `STATUS_PORT` for a worker),
    /// while its process runs.
    pub fn status_addr(&self, id: &str) -> Option<SocketAddr> {
        lock(&self.inner.procs).get(id).map(Proc::status_addr)
    }

    /// Every line the tasks printed (prefixed with their short ID) and the service events
    /// (prefixed `[ecs]`), oldest first.
    pub fn output(&self) -> Vec<String> {
        self.inner.output.lines()
    }

    /// The lines of [`output`](Self::output) so far, and a receiver of every line after them,
    /// as they arrive.
    pub fn subscribe_output(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        self.inner.output.subscribe()
    }

    /// What the scheduler is waiting for now, e.g. `scale-in waiting: 1 task to stop, 3 tasks
    /// under protection`.
    pub fn waiting(&self) -> Vec<String> {
        let reported = lock(&self.inner.reported);
        let mut lines = Vec::new();
        if let Some(w) = reported.scale_in {
            lines.push(format!(
                "scale-in waiting: {} to stop, {} under protection",
                n_tasks(w.tasks),
                n_tasks(w.protected)
            ));
        }
        if let Some(w) = reported.deployment {
            lines.push(format!(
                "deployment waiting: {} of older deployments to stop, {} under protection",
                n_tasks(w.tasks),
                n_tasks(w.protected)
            ));
        }
        lines
    }

    /// The fleet now, with each running task's `/status` read (players or jobs in hand,
    /// draining and why).
    pub async fn view(&self) -> FleetView {
        view::read(self).await
    }

    /// Stops every task as ECS stops a service's tasks (deregistered, SIGTERM, SIGKILL after the
    /// stop timeout, without the deregistration delay) and waits until their processes have
    /// ended. The fleet does nothing more afterwards; its table and output stay readable.
    pub async fn shutdown(&self) {
        // The scheduler and the stopping steps are over: this sequence alone stops the tasks.
        self.driver.abort();
        let ids: Vec<String> = lock(&self.inner.procs).keys().cloned().collect();
        let now = SystemTime::now();
        for id in &ids {
            if let Some(door) = &self.inner.front_door {
                door.deregister(id);
            }
            if let Some(row) = self.inner.ecs.sim().table.get_mut(id) {
                row.request_stop("Fleet shutting down", now);
                row.set_status(LastStatus::Stopping, now);
            }
            if let Some(p) = lock(&self.inner.procs).get(id) {
                let _ = p.process.terminate();
            }
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.stop_timeout;
        let mut killed = false;
        loop {
            self.inner.reap();
            if lock(&self.inner.procs).is_empty() {
                break;
            }
            if !killed && tokio::time::Instant::now() >= deadline {
                for p in lock(&self.inner.procs).values_mut() {
                    let _ = p.process.kill();
                }
                killed = true;
            }
            tokio::time::sleep(POLL).await;
        }
        // The last ones through DEPROVISIONING.
        self.inner.reap();
    }
}

/// `1 task`, `3 tasks`.
fn n_tasks(n: usize) -> String {
    if n == 1 {
        "1 task".to_string()
    } else {
        format!("{n} tasks")
    }
}

/// The fleet's driver: every [`POLL`] it reaps ended processes, lets the scheduler act (every
/// tick, unless paused), launches new tasks, checks the health of starting ones and takes the
/// stopping ones a step further.
async fn drive(inner: Arc<Inner>) {
    let tick = inner.config.tick;
    let mut last_round: Option<tokio::time::Instant> = None;
    loop {
        inner.reap();
        let paused = inner.paused.load(std::sync::atomic::Ordering::SeqCst);
        if !paused && last_round.is_none_or(|t| t.elapsed() >= tick) {
            last_round = Some(tokio::time::Instant::now());
            inner.schedule();
        }
        inner.launch();
        inner.probe();
        inner.advance_stops();
        tokio::time::sleep(POLL.min(tick)).await;
    }
}

impl Inner {
    /// Records a service event (as `DescribeServices` lists them) and shows it in the output.
    fn event(&self, message: String) {
        self.output.push(format!("[ecs] {message}"));
        self.ecs.sim().push_event(message);
    }

    /// Shows what the fleet did in the output only (ECS has no service event for it).
    fn note(&self, message: String) {
        self.output.push(format!("[ecs] {message}"));
    }

    /// One scheduler round: the plan of [`scheduler::plan`] carried out.
    fn schedule(&self) {
        let now = SystemTime::now();
        let mut events = Vec::new();
        let (scale_in_wait, deployment_wait, steady) = {
            let mut sim = self.ecs.sim();
            let tasks = sim.service_tasks();
            let plan = scheduler::plan(&sim.service, &tasks, now);
            let Some(primary) = scheduler::primary(&sim.service).cloned() else {
                return;
            };
            let reason = format!("Scaling activity initiated by (deployment {})", primary.id);
            let mut stopped = Vec::new();
            for (id, cause) in &plan.stop {
                if let Some(row) = sim.table.get_mut(id) {
                    if row.request_stop(&reason, now) {
                        stopped.push((id.clone(), *cause));
                    }
                }
            }
            if !stopped.is_empty() {
                let list: Vec<String> = stopped
                    .iter()
                    .map(|(id, _)| format!("(task {id})"))
                    .collect();
                let why = if stopped.iter().all(|(_, c)| *c == Cause::Deployment) {
                    " of older deployments"
                } else {
                    ""
                };
                events.push(format!(
                    "(service {SERVICE_NAME}) has stopped {} running tasks{why}: {}.",
                    stopped.len(),
                    list.join(" ")
                ));
            }
            let started: Vec<String> = (0..plan.start).map(|_| sim.new_task(&primary)).collect();
            if !started.is_empty() {
                let list: Vec<String> = started.iter().map(|id| format!("(task {id})")).collect();
                events.push(format!(
                    "(service {SERVICE_NAME}) has started {} tasks: {}.",
                    started.len(),
                    list.join(" ")
                ));
            }
            sim.service
                .deployments
                .retain(|d| !plan.rollout.retire.contains(&d.id));
            if plan.rollout.complete {
                if let Some(p) = sim
                    .service
                    .deployments
                    .iter_mut()
                    .find(|d| d.status == "PRIMARY")
                {
                    p.rollout_state = "COMPLETED".to_string();
                    events.push(format!(
                        "(service {SERVICE_NAME}) (deployment {}) deployment completed.",
                        p.id
                    ));
                }
            }
            let tasks = sim.service_tasks();
            let desired = usize::try_from(sim.service.desired_count).unwrap_or(0);
            let steady = started.is_empty()
                && stopped.is_empty()
                && plan.scale_in_wait.is_none()
                && plan.deployment_wait.is_none()
                && sim.service.deployments.len() == 1
                && tasks.iter().all(|t| {
                    t.last_status == LastStatus::Stopped || t.last_status == LastStatus::Running
                })
                && tasks
                    .iter()
                    .filter(|t| t.last_status == LastStatus::Running)
                    .count()
                    == desired;
            (plan.scale_in_wait, plan.deployment_wait, steady)
        };
        {
            let mut reported = lock(&self.reported);
            if scale_in_wait != reported.scale_in {
                if let Some(w) = scale_in_wait {
                    events.push(format!(
                        "(service {SERVICE_NAME}) was unable to scale in due to (reason {} tasks \
                         under protection).",
                        w.protected
                    ));
                }
                reported.scale_in = scale_in_wait;
            }
            if deployment_wait != reported.deployment {
                if let Some(w) = deployment_wait {
                    events.push(format!(
                        "(service {SERVICE_NAME}) was unable to stop {} of older deployments due \
                         to (reason {} tasks under protection).",
                        n_tasks(w.tasks),
                        w.protected
                    ));
                }
                reported.deployment = deployment_wait;
            }
            if steady && !reported.steady {
                events.push(format!(
                    "(service {SERVICE_NAME}) has reached a steady state."
                ));
            }
            reported.steady = steady;
        }
        for e in events {
            self.event(e);
        }
    }

    /// Marks the tasks whose process has ended: STOPPED (through DEPROVISIONING), deregistered;
    /// a task that exited by itself is replaced by the scheduler's next round.
    fn reap(&self) {
        let now = SystemTime::now();
        {
            // DEPROVISIONING lasts one poll: the task's resources are released.
            let mut sim = self.ecs.sim();
            let procs = lock(&self.procs);
            for row in &mut sim.table.rows {
                if row.last_status == LastStatus::Deprovisioning && !procs.contains_key(&row.id) {
                    row.set_status(LastStatus::Stopped, now);
                }
            }
        }
        let mut ended = Vec::new();
        {
            let mut procs = lock(&self.procs);
            procs.retain(|id, p| match p.process.exited() {
                Some(status) => {
                    ended.push((id.clone(), status));
                    false
                }
                None => true,
            });
        }
        for (id, status) in ended {
            if let Some(door) = &self.front_door {
                door.deregister(&id);
            }
            let by_itself = {
                let mut sim = self.ecs.sim();
                let Some(row) = sim.table.get_mut(&id) else {
                    continue;
                };
                let by_itself = row.desired_status == DesiredStatus::Running;
                if by_itself {
                    row.request_stop(
                        &format!("Essential container in task exited ({status})"),
                        now,
                    );
                }
                row.set_status(LastStatus::Deprovisioning, now);
                by_itself
            };
            let how = if by_itself { " by itself" } else { "" };
            self.output.push(format!(
                "[ecs] task {} exited{how}: {status}",
                short_id(&id)
            ));
        }
    }

    /// Starts a process for every PROVISIONING task that has none.
    fn launch(&self) {
        let waiting: Vec<String> = {
            let sim = self.ecs.sim();
            let procs = lock(&self.procs);
            sim.table
                .rows
                .iter()
                .filter(|r| {
                    r.last_status == LastStatus::Provisioning
                        && r.desired_status == DesiredStatus::Running
                        && !procs.contains_key(&r.id)
                })
                .map(|r| r.id.clone())
                .collect()
        };
        for id in waiting {
            let started = self.spawn(&id);
            let now = SystemTime::now();
            let mut sim = self.ecs.sim();
            let Some(row) = sim.table.get_mut(&id) else {
                continue;
            };
            match started {
                Ok(proc) => {
                    row.set_status(LastStatus::Pending, now);
                    drop(sim);
                    lock(&self.procs).insert(id, proc);
                }
                Err(e) => {
                    row.request_stop(&format!("CannotStartContainerError: {e}"), now);
                    row.set_status(LastStatus::Stopped, now);
                    drop(sim);
                    self.output.push(format!(
                        "[ecs] task {} cannot start {}: {e}",
                        short_id(&id),
                        self.config.program.display()
                    ));
                }
            }
        }
    }

    /// Starts task `id`'s process with the environment ECS gives a task.
    fn spawn(&self, id: &str) -> std::io::Result<Proc> {
        let port = free_port()?;
        let status_port = match self.config.kind {
            TaskKind::Worker => Some(free_port()?),
            TaskKind::WebSocket => None,
        };
        let mut env: Vec<(String, String)> = vec![
            ("ECS_AGENT_URI".into(), self.ecs.agent_uri_for(id)),
            (
                "ECS_CONTAINER_METADATA_URI_V4".into(),
                self.ecs.metadata_uri_for(id),
            ),
            ("ECS_ENDPOINT_URL".into(), self.ecs.endpoint_url()),
            ("AWS_ACCESS_KEY_ID".into(), task_access_key_id(id)),
            ("AWS_SECRET_ACCESS_KEY".into(), "stand-in-secret".into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("PROTECTION_BACKEND".into(), "agent".into()),
            ("PORT".into(), port.to_string()),
            ("BIND_ADDRESS".into(), "127.0.0.1".into()),
        ];
        if let Some(status_port) = status_port {
            env.push(("STATUS_PORT".into(), status_port.to_string()));
        }
        env.extend(self.config.env.iter().cloned());
        let process = TaskProcess::spawn(
            id,
            Launch {
                program: &self.config.program,
                args: &self.config.args,
                env,
            },
            &self.output,
        )?;
        Ok(Proc {
            process,
            port,
            status_port,
            stopping: Stopping::default(),
            probing: false,
        })
    }

    /// Checks the health path of every task still starting (one check in flight per task); a
    /// 200 makes it RUNNING ([`activate`](Self::activate)).
    fn probe(self: &Arc<Self>) {
        let starting: Vec<String> = {
            let sim = self.ecs.sim();
            sim.table
                .rows
                .iter()
                .filter(|r| {
                    r.last_status.is_starting() && r.desired_status == DesiredStatus::Running
                })
                .map(|r| r.id.clone())
                .collect()
        };
        for id in starting {
            let url = {
                let mut procs = lock(&self.procs);
                let Some(p) = procs.get_mut(&id) else {
                    continue;
                };
                if p.probing {
                    continue;
                }
                p.probing = true;
                format!("http://{}{}", p.status_addr(), self.config.health_path)
            };
            let inner = Arc::clone(self);
            tokio::spawn(async move {
                let healthy = inner
                    .http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
                if healthy {
                    inner.activate(&id);
                }
                if let Some(p) = lock(&inner.procs).get_mut(&id) {
                    p.probing = false;
                }
            });
        }
    }

    /// A starting task passed its health check: ACTIVATING, registered at the front door,
    /// RUNNING.
    fn activate(&self, id: &str) {
        let addr = lock(&self.procs).get(id).map(|p| loopback(p.port));
        let now = SystemTime::now();
        let mut sim = self.ecs.sim();
        let Some(row) = sim.table.get_mut(id) else {
            return;
        };
        if !row.last_status.is_starting() || row.desired_status != DesiredStatus::Running {
            return;
        }
        row.set_status(LastStatus::Activating, now);
        if let (Some(door), Some(addr)) = (&self.front_door, addr) {
            door.register(id, addr);
        }
        row.set_status(LastStatus::Running, now);
        drop(sim);
        if self.front_door.is_some() {
            self.event(format!(
                "(service {SERVICE_NAME}) registered 1 targets in (target-group stand-in): (task {id})."
            ));
        }
    }

    /// Takes every task ECS wants stopped one step further ([`scheduler::stop_step`]).
    fn advance_stops(&self) {
        let now = SystemTime::now();
        let stopping: Vec<TaskInfo> = {
            let sim = self.ecs.sim();
            sim.table
                .rows
                .iter()
                .filter(|r| {
                    r.desired_status == DesiredStatus::Stopped
                        && r.last_status != LastStatus::Stopped
                        && r.last_status != LastStatus::Deprovisioning
                })
                .map(|r| r.info())
                .collect()
        };
        for task in stopping {
            let state = lock(&self.procs).get(&task.id).map(|p| p.stopping);
            let Some(state) = state else {
                // No process (it never started): nothing to wait for.
                let mut sim = self.ecs.sim();
                if let Some(row) = sim.table.get_mut(&task.id) {
                    row.set_status(LastStatus::Stopped, now);
                }
                continue;
            };
            let step = scheduler::stop_step(
                &task,
                &state,
                now,
                self.config.deregistration_delay,
                self.config.stop_timeout,
            );
            match step {
                Some(Step::Deactivate) => {
                    let registered = self
                        .front_door
                        .as_ref()
                        .is_some_and(|d| d.registered().contains(&task.id));
                    if let Some(door) = &self.front_door {
                        door.deregister(&task.id);
                    }
                    if let Some(row) = self.ecs.sim().table.get_mut(&task.id) {
                        row.set_status(LastStatus::Deactivating, now);
                    }
                    if let Some(p) = lock(&self.procs).get_mut(&task.id) {
                        p.stopping.registered = registered;
                        p.stopping.deactivated_at = Some(now);
                    }
                    if registered {
                        self.event(format!(
                            "(service {SERVICE_NAME}) deregistered 1 targets in (target-group \
                             stand-in): (task {}).",
                            task.id
                        ));
                    }
                }
                Some(Step::Terminate) => {
                    if let Some(p) = lock(&self.procs).get_mut(&task.id) {
                        if let Err(e) = p.process.terminate() {
                            self.output.push(format!(
                                "[ecs] cannot send SIGTERM to task {}: {e}",
                                short_id(&task.id)
                            ));
                        }
                        p.stopping.terminated_at = Some(now);
                    }
                    if let Some(row) = self.ecs.sim().table.get_mut(&task.id) {
                        row.set_status(LastStatus::Stopping, now);
                    }
                }
                Some(Step::Kill) => {
                    if let Some(p) = lock(&self.procs).get_mut(&task.id) {
                        let _ = p.process.kill();
                        p.stopping.killed = true;
                    }
                    self.output.push(format!(
                        "[ecs] task {} still running {:?} after SIGTERM: SIGKILL",
                        short_id(&task.id),
                        self.config.stop_timeout
                    ));
                }
                None => {}
            }
        }
    }
}

/// The executable `name` next to the running program (in the same Cargo profile directory, as
/// `cargo run -p ecs-stand-in` finds `target/debug/websocket`), or the `cargo build` command
/// that builds it.
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    // `cargo test` runs from target/<profile>/deps.
    let dir = if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        return Ok(path);
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => String::new(),
        Some("release") => " --release".to_string(),
        Some(other) => format!(" --profile {other}"),
    };
    Err(format!(
        "{} is not built: run `cargo build{profile} --bin {name}` first",
        path.display()
    ))
}
