//! The fleet as a table: each task's ID, deployment, lastStatus, players or jobs in hand (from
//! its `/status`), protection (from ECS's table) and drain, and what the scheduler waits for.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{lock, process::short_id, Fleet, TaskKind};
use crate::tasks::{LastStatus, TaskInfo};

/// How long a stopped task stays in the table's view.
const STOPPED_SHOWN_FOR: Duration = Duration::from_secs(15);

/// One task in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskLine {
    /// The task ID.
    pub id: String,
    /// The deployment that started it.
    pub deployment: Option<String>,
    /// Its task definition revision.
    pub revision: Option<u32>,
    /// `lastStatus`.
    pub last_status: LastStatus,
    /// Players (`connections`) or jobs in hand (`in_hand`), from its `/status`, when it answers.
    pub load: Option<u64>,
    /// The end of its protection, as ECS has it.
    pub protected_until: Option<SystemTime>,
    /// Why it is draining (or shutting down), from its `/status`.
    pub draining: Option<String>,
}

/// The fleet at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetView {
    /// Whether the load column counts players (a WebSocket fleet) or jobs (a worker fleet).
    pub kind: TaskKind,
    /// The service's desired count.
    pub desired: i32,
    /// Its tasks RUNNING.
    pub running: i32,
    /// Its tasks starting.
    pub pending: i32,
    /// Its deployments, PRIMARY first: `ID STATUS revision rolloutState`.
    pub deployments: Vec<String>,
    /// The tasks not stopped, and those stopped in the last few seconds.
    pub tasks: Vec<TaskLine>,
    /// What the scheduler waits for ([`Fleet::waiting`]).
    pub waiting: Vec<String>,
}

/// Reads the fleet: ECS's table and each running task's `/status`.
pub(super) async fn read(fleet: &Fleet) -> FleetView {
    let now = SystemTime::now();
    let service = fleet.ecs().service();
    let shown: Vec<TaskInfo> = fleet
        .tasks()
        .into_iter()
        .filter(|t| {
            t.last_status != LastStatus::Stopped
                || t.stopped_at.is_some_and(|at| {
                    now.duration_since(at).unwrap_or_default() < STOPPED_SHOWN_FOR
                })
        })
        .collect();
    let mut reads = tokio::task::JoinSet::new();
    for (index, task) in shown.iter().enumerate() {
        let addr = {
            let procs = lock(&fleet.inner.procs);
            procs.get(&task.id).map(super::Proc::status_addr)
        };
        if let (Some(addr), false) = (addr, task.last_status.is_starting()) {
            let http = fleet.inner.http.clone();
            reads.spawn(async move {
                let doc = async {
                    http.get(format!("http://{addr}/status"))
                        .send()
                        .await
                        .ok()?
                        .json::<Value>()
                        .await
                        .ok()
                };
                (index, doc.await)
            });
        }
    }
    let mut docs: Vec<Option<Value>> = vec![None; shown.len()];
    while let Some(Ok((index, doc))) = reads.join_next().await {
        docs[index] = doc;
    }
    let kind = fleet.inner.config.kind;
    let tasks = shown
        .iter()
        .zip(docs)
        .map(|(task, doc)| line(task, doc.as_ref(), kind))
        .collect();
    let pending = fleet
        .tasks()
        .iter()
        .filter(|t| t.last_status.is_starting())
        .count();
    FleetView {
        kind,
        desired: service.desired_count,
        running: service.running_count,
        pending: i32::try_from(pending).unwrap_or(i32::MAX),
        deployments: service
            .deployments
            .iter()
            .map(|d| {
                format!(
                    "{} {} rev {} {}",
                    d.id,
                    d.status,
                    revision(&d.task_definition).map_or("?".to_string(), |r| r.to_string()),
                    d.rollout_state
                )
            })
            .collect(),
        tasks,
        waiting: fleet.waiting(),
    }
}

/// The revision in a task definition ARN.
fn revision(task_definition: &str) -> Option<u32> {
    task_definition.rsplit(':').next()?.parse().ok()
}

/// One task's line, from ECS's table and its `/status` document.
fn line(task: &TaskInfo, status: Option<&Value>, kind: TaskKind) -> TaskLine {
    let load = status.and_then(|s| match kind {
        TaskKind::WebSocket => s["connections"].as_u64(),
        TaskKind::Worker => s["in_hand"].as_u64(),
    });
    let draining = status.and_then(|s| {
        if s["shutting_down"] == true || s["stopping"] == true {
            Some("shutting down".to_string())
        } else if s["draining"] == true {
            Some(s["drain_reason"].as_str().unwrap_or("draining").to_string())
        } else {
            None
        }
    });
    TaskLine {
        id: task.id.clone(),
        deployment: task.started_by.clone(),
        revision: revision(&task.task_definition),
        last_status: task.last_status,
        load,
        protected_until: task.protected_until,
        draining,
    }
}

/// `HH:MM:SS` (UTC).
fn clock(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// The last digits of a deployment ID (`ecs-svc/1000000000000000002` → `…0002`).
fn short_deployment(id: &str) -> String {
    let digits = id.rsplit('/').next().unwrap_or(id);
    let tail = digits
        .get(digits.len().saturating_sub(4)..)
        .unwrap_or(digits);
    format!("…{tail}")
}

impl FleetView {
    /// The view as a table, e.g.
    ///
    /// ```text
    /// service stand-in-service: desired 2, running 2, pending 0 (UTC 10:15:02)
    ///   deployment ecs-svc/1000000000000000001 PRIMARY rev 1 COMPLETED
    /// TASK      DEPLOYMENT  STATUS        PLAYERS  PROTECTED UNTIL  DRAINING
    /// 3f9c2a71  …0001 r1    RUNNING       2        10:45:01         -
    /// 8be0d412  …0001 r1    RUNNING       0        -                -
    /// ```
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "service {}: desired {}, running {}, pending {} (UTC {})",
            crate::SERVICE_NAME,
            self.desired,
            self.running,
            self.pending,
            clock(SystemTime::now())
        );
        for d in &self.deployments {
            let _ = writeln!(out, "  deployment {d}");
        }
        let load = match self.kind {
            TaskKind::WebSocket => "PLAYERS",
            TaskKind::Worker => "JOBS",
        };
        let _ = writeln!(
            out,
            "{:<9} {:<11} {:<14} {:<7}  {:<15}  DRAINING",
            "TASK", "DEPLOYMENT", "STATUS", load, "PROTECTED UNTIL"
        );
        for t in &self.tasks {
            let deployment = match (&t.deployment, t.revision) {
                (Some(d), Some(r)) => format!("{} r{r}", short_deployment(d)),
                (Some(d), None) => short_deployment(d),
                (None, _) => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<9} {:<11} {:<14} {:<7}  {:<15}  {}",
                short_id(&t.id),
                deployment,
                t.last_status.as_str(),
                t.load.map_or("-".to_string(), |n| n.to_string()),
                t.protected_until.map_or("-".to_string(), clock),
                t.draining.as_deref().unwrap_or("-")
            );
        }
        for w in &self.waiting {
            let _ = writeln!(out, "{w}");
        }
        out
    }

    /// The table without its first line (which carries the clock), to tell whether anything
    /// changed.
    pub fn body(&self) -> String {
        let rendered = self.render();
        rendered
            .split_once('\n')
            .map_or(String::new(), |(_, rest)| {
                format!("{} {} {} {rest}", self.desired, self.running, self.pending)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::task_definition_arn;
    use crate::tasks::TaskRow;

    #[test]
    fn a_line_reads_players_and_the_drain_from_the_websocket_status() {
        let mut row = TaskRow::new(
            "0a1b2c3d4e5f".into(),
            Some("ecs-svc/1000000000000000002".into()),
            task_definition_arn(2),
            'a',
        );
        row.set_status(LastStatus::Running, SystemTime::now());
        let status = serde_json::json!({"connections": 3, "draining": true,
            "drain_reason": "scale-in", "shutting_down": false});
        let l = line(&row.info(), Some(&status), TaskKind::WebSocket);
        assert_eq!(l.load, Some(3));
        assert_eq!(l.draining.as_deref(), Some("scale-in"));
        assert_eq!(l.revision, Some(2));
        let worker = serde_json::json!({"in_hand": 2, "stopping": true});
        let l = line(&row.info(), Some(&worker), TaskKind::Worker);
        assert_eq!(l.load, Some(2));
        assert_eq!(l.draining.as_deref(), Some("shutting down"));
        let l = line(&row.info(), None, TaskKind::Worker);
        assert_eq!((l.load, l.draining), (None, None));
    }

    #[test]
    fn the_table_shows_each_task_and_what_the_scheduler_waits_for() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + 3_723);
        let view = FleetView {
            kind: TaskKind::WebSocket,
            desired: 2,
            running: 3,
            pending: 0,
            deployments: vec!["ecs-svc/1000000000000000001 PRIMARY rev 1 COMPLETED".into()],
            tasks: vec![TaskLine {
                id: "3f9c2a71deadbeef".into(),
                deployment: Some("ecs-svc/1000000000000000001".into()),
                revision: Some(1),
                last_status: LastStatus::Running,
                load: Some(2),
                protected_until: Some(until),
                draining: Some("scale-in".into()),
            }],
            waiting: vec!["scale-in waiting: 1 task to stop, 3 tasks under protection".into()],
        };
        let text = view.render();
        assert!(text.starts_with("service stand-in-service: desired 2, running 3, pending 0"));
        let row = text.lines().nth(3).unwrap();
        assert!(row.starts_with("3f9c2a71  …0001 r1"), "{row}");
        assert!(row.contains("RUNNING"), "{row}");
        assert!(row.contains(" 2 "), "{row}");
        assert!(row.contains("09:02:03"), "{row}");
        assert!(row.ends_with("scale-in"), "{row}");
        assert!(text.ends_with("3 tasks under protection\n"), "{text}");
    }
}
