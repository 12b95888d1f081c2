//! The stand-in's service scheduler: what ECS does next with a service, as pure functions of the
//! service (desired count, deployments), the task table and the time. The fleet
//! ([`crate::Fleet`]) carries the decisions out; the ECS API stand-in reads the counts.
//!
//! The rules, each with its unit test below:
//!
//! * **start** ([`to_start`]): the PRIMARY deployment gets tasks until it has the desired count,
//!   within the deployment's maximum percent (200 %: tasks up, starting or running, of every
//!   deployment, at most twice the desired count).
//! * **scale-in** ([`scale_in`]): a PRIMARY deployment with more tasks than desired stops the
//!   excess, unprotected tasks first in [`stop_order`], never a protected one: the protected ones
//!   wait (re-checked on every round) and are stopped once their protection is off or expired
//!   while the excess remains.
//! * **deployment** ([`deployment_stops`]): with minimum healthy 100 %, the tasks of older
//!   deployments are stopped as the PRIMARY's tasks reach RUNNING (keeping RUNNING tasks at the
//!   desired count), unprotected first, protected ones waiting as for a scale-in.
//! * **rollout** ([`rollout`]): an older deployment with no task left becomes INACTIVE; the
//!   PRIMARY's rollout is COMPLETED once it is alone and runs exactly the desired count.
//! * **stopping** ([`stop_step`]): a task ECS wants stopped is deregistered at once
//!   (DEACTIVATING), sent SIGTERM after the deregistration delay (STOPPING; no delay for a task
//!   that was never registered), and SIGKILL after the stop timeout.

use std::cmp::{Ordering, Reverse};
use std::time::{Duration, SystemTime};

use crate::api::{DeploymentDoc, ServiceDoc};
use crate::tasks::{DesiredStatus, LastStatus, TaskInfo};

/// Whether ECS still wants `task` (desired RUNNING) and it is not on its way down.
pub(crate) fn alive(task: &TaskInfo) -> bool {
    task.desired_status == DesiredStatus::Running && !task.last_status.is_stopping()
}

/// Whether `task` was started by deployment `id`.
fn of(task: &TaskInfo, id: &str) -> bool {
    task.started_by.as_deref() == Some(id)
}

/// The PRIMARY deployment.
pub(crate) fn primary(service: &ServiceDoc) -> Option<&DeploymentDoc> {
    service.deployments.iter().find(|d| d.status == "PRIMARY")
}

/// The service's desired count, as a task count.
fn desired(service: &ServiceDoc) -> usize {
    usize::try_from(service.desired_count).unwrap_or(0)
}

/// The order in which the scheduler stops tasks it may stop: tasks not yet running first, then
/// the most recently started (a fresh task holds the least), then by task ID, so that the choice
/// is the same every time for the same table.
pub(crate) fn stop_order(a: &TaskInfo, b: &TaskInfo) -> Ordering {
    let key = |t: &TaskInfo| {
        (
            !t.last_status.is_starting(),
            Reverse(t.started_at.unwrap_or(t.created_at)),
        )
    };
    key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
}

/// How many tasks the PRIMARY deployment starts now: up to the desired count, within the maximum
/// percent (200 %) of tasks up across deployments.
pub(crate) fn to_start(service: &ServiceDoc, tasks: &[TaskInfo]) -> usize {
    let Some(primary) = primary(service) else {
        return 0;
    };
    let desired = desired(service);
    let primary_alive = tasks
        .iter()
        .filter(|t| alive(t) && of(t, &primary.id))
        .count();
    let up = tasks.iter().filter(|t| t.last_status.is_up()).count();
    let room = (2 * desired).saturating_sub(up);
    desired.saturating_sub(primary_alive).min(room)
}

/// Which tasks the scheduler stops now out of a set it wants `count` fewer of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Choice {
    /// The task IDs to stop now, in order.
    pub stop: Vec<String>,
    /// How many more it would stop but may not: protected tasks hold it back.
    pub waiting: usize,
    /// How many of the candidates are protected.
    pub protected: usize,
}

/// Picks `count` of `candidates` to stop: unprotected ones in [`stop_order`]; protected ones
/// never, counted as waiting instead.
fn choose(mut candidates: Vec<&TaskInfo>, count: usize, now: SystemTime) -> Choice {
    candidates.sort_by(|a, b| stop_order(a, b));
    let protected = candidates.iter().filter(|t| t.protected_at(now)).count();
    let stop: Vec<String> = candidates
        .iter()
        .filter(|t| !t.protected_at(now))
        .take(count)
        .map(|t| t.id.clone())
        .collect();
    Choice {
        waiting: count - stop.len(),
        stop,
        protected,
    }
}

/// The scale-in rule: the PRIMARY deployment's tasks beyond the desired count.
pub(crate) fn scale_in(service: &ServiceDoc, tasks: &[TaskInfo], now: SystemTime) -> Choice {
    let Some(primary) = primary(service) else {
        return Choice::default();
    };
    let candidates: Vec<&TaskInfo> = tasks
        .iter()
        .filter(|t| alive(t) && of(t, &primary.id))
        .collect();
    let excess = candidates.len().saturating_sub(desired(service));
    if excess == 0 {
        return Choice::default();
    }
    choose(candidates, excess, now)
}

/// How many RUNNING tasks of the PRIMARY deployment there are.
fn primary_running(service: &ServiceDoc, tasks: &[TaskInfo]) -> usize {
    primary(service).map_or(0, |p| {
        tasks
            .iter()
            .filter(|t| alive(t) && of(t, &p.id) && t.last_status == LastStatus::Running)
            .count()
    })
}

/// The deployment rule: the older deployments' tasks that the PRIMARY's RUNNING tasks replace
/// (minimum healthy 100 %).
pub(crate) fn deployment_stops(
    service: &ServiceDoc,
    tasks: &[TaskInfo],
    now: SystemTime,
) -> Choice {
    let Some(primary) = primary(service) else {
        return Choice::default();
    };
    let old: Vec<&TaskInfo> = tasks
        .iter()
        .filter(|t| alive(t) && !of(t, &primary.id))
        .collect();
    let keep = desired(service).saturating_sub(primary_running(service, tasks));
    let count = old.len().saturating_sub(keep);
    if count == 0 {
        return Choice::default();
    }
    choose(old, count, now)
}

/// The desired count ECS reports for each deployment of `service` (in its order): the service's
/// for the PRIMARY; for the older ones, the tasks still needed to keep the desired count running
/// while the PRIMARY's come up, given to the newer ones first.
pub(crate) fn deployment_desired(service: &ServiceDoc, tasks: &[TaskInfo]) -> Vec<i32> {
    let mut keep = desired(service).saturating_sub(primary_running(service, tasks));
    service
        .deployments
        .iter()
        .map(|d| {
            if d.status == "PRIMARY" {
                return service.desired_count;
            }
            let alive = tasks.iter().filter(|t| alive(t) && of(t, &d.id)).count();
            let mine = alive.min(keep);
            keep -= mine;
            i32::try_from(mine).unwrap_or(i32::MAX)
        })
        .collect()
}

/// What becomes of the deployments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rollout {
    /// Older deployments with no task left (not STOPPED): they become INACTIVE.
    pub retire: Vec<String>,
    /// The PRIMARY deployment's rollout is now COMPLETED.
    pub complete: bool,
}

/// The rollout rule.
pub(crate) fn rollout(service: &ServiceDoc, tasks: &[TaskInfo]) -> Rollout {
    let Some(primary) = primary(service) else {
        return Rollout::default();
    };
    let has_tasks = |d: &DeploymentDoc| {
        tasks
            .iter()
            .any(|t| of(t, &d.id) && t.last_status != LastStatus::Stopped)
    };
    let retire: Vec<String> = service
        .deployments
        .iter()
        .filter(|d| d.status != "PRIMARY" && !has_tasks(d))
        .map(|d| d.id.clone())
        .collect();
    let alone = service.deployments.len() == 1 + retire.len();
    let mine: Vec<&TaskInfo> = tasks
        .iter()
        .filter(|t| alive(t) && of(t, &primary.id))
        .collect();
    let complete = primary.rollout_state != "COMPLETED"
        && alone
        && mine.len() == desired(service)
        && mine.iter().all(|t| t.last_status == LastStatus::Running);
    Rollout { retire, complete }
}

/// Why the scheduler stops a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The service has more tasks than it wants.
    ScaleIn,
    /// A newer deployment replaces the task.
    Deployment,
}

/// Protected tasks holding the scheduler back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wait {
    /// Tasks it would stop now but may not.
    pub tasks: usize,
    /// Protected tasks among those it may choose from.
    pub protected: usize,
}

/// One round of the scheduler: everything it does now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// New tasks of the PRIMARY deployment to start.
    pub start: usize,
    /// Tasks to stop, and why.
    pub stop: Vec<(String, Cause)>,
    /// A scale-in held back by protection.
    pub scale_in_wait: Option<Wait>,
    /// A deployment held back by protection.
    pub deployment_wait: Option<Wait>,
    /// What becomes of the deployments.
    pub rollout: Rollout,
}

/// Every rule at once, for one round.
pub(crate) fn plan(service: &ServiceDoc, tasks: &[TaskInfo], now: SystemTime) -> Plan {
    let waiting = |c: &Choice| {
        (c.waiting > 0).then_some(Wait {
            tasks: c.waiting,
            protected: c.protected,
        })
    };
    let scale = scale_in(service, tasks, now);
    let deploy = deployment_stops(service, tasks, now);
    let mut stop: Vec<(String, Cause)> = Vec::new();
    stop.extend(scale.stop.iter().map(|id| (id.clone(), Cause::ScaleIn)));
    stop.extend(deploy.stop.iter().map(|id| (id.clone(), Cause::Deployment)));
    Plan {
        start: to_start(service, tasks),
        stop,
        scale_in_wait: waiting(&scale),
        deployment_wait: waiting(&deploy),
        rollout: rollout(service, tasks),
    }
}

/// What the fleet has done so far to stop one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stopping {
    /// Whether the task was registered at the front door (it then waits out the deregistration
    /// delay).
    pub registered: bool,
    /// When it was deregistered (DEACTIVATING).
    pub deactivated_at: Option<SystemTime>,
    /// When it was sent SIGTERM (STOPPING).
    pub terminated_at: Option<SystemTime>,
    /// Whether it was sent SIGKILL.
    pub killed: bool,
}

/// The next step in stopping a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Deregister it from the front door (no new connections): DEACTIVATING.
    Deactivate,
    /// Send SIGTERM: STOPPING.
    Terminate,
    /// Send SIGKILL.
    Kill,
}

/// The stopping rule: the step due now for `task`, whose stop has gone as far as `stopping`.
pub(crate) fn stop_step(
    task: &TaskInfo,
    stopping: &Stopping,
    now: SystemTime,
    deregistration_delay: Duration,
    stop_timeout: Duration,
) -> Option<Step> {
    if task.desired_status != DesiredStatus::Stopped || task.last_status == LastStatus::Stopped {
        return None;
    }
    let Some(deactivated_at) = stopping.deactivated_at else {
        return Some(Step::Deactivate);
    };
    let Some(terminated_at) = stopping.terminated_at else {
        let delay = if stopping.registered {
            deregistration_delay
        } else {
            Duration::ZERO
        };
        return (now >= deactivated_at + delay).then_some(Step::Terminate);
    };
    (!stopping.killed && now >= terminated_at + stop_timeout).then_some(Step::Kill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{task_definition_arn, FIRST_DEPLOYMENT_ID};
    use crate::tasks::TaskRow;
    use std::time::UNIX_EPOCH;

    const NEW: &str = "ecs-svc/2000000000000000002";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A RUNNING task `id` of `deployment`, started at `started` s, protected until `until` s.
    fn task(id: &str, deployment: &str, started: u64, until: Option<u64>) -> TaskInfo {
        let mut row = TaskRow::new(
            id.into(),
            Some(deployment.into()),
            task_definition_arn(1),
            'a',
        );
        row.created_at = at(started);
        row.set_status(LastStatus::Running, at(started));
        row.protection.expires_at = until.map(at);
        let mut info = row.info();
        // `info()` filters the expiry by the real clock; these tests have their own.
        info.protected_until = until.map(at);
        info
    }

    fn starting(id: &str, deployment: &str, created: u64) -> TaskInfo {
        let mut t = task(id, deployment, created, None);
        t.last_status = LastStatus::Pending;
        t.started_at = None;
        t
    }

    fn service(desired: i32) -> ServiceDoc {
        ServiceDoc::steady(&task_definition_arn(1), desired)
    }

    /// A service in a deployment to `NEW` (PRIMARY) from the first deployment (ACTIVE).
    fn deploying(desired: i32) -> ServiceDoc {
        let mut s = service(desired);
        s.deployments[0].status = "ACTIVE".into();
        let mut new = s.deployments[0].clone();
        new.id = NEW.into();
        new.status = "PRIMARY".into();
        new.task_definition = task_definition_arn(2);
        new.rollout_state = "IN_PROGRESS".into();
        s.deployments.insert(0, new);
        s
    }

    const NOW: u64 = 1_000;

    #[test]
    fn the_primary_deployment_is_started_up_to_the_desired_count() {
        let tasks = vec![task("a", FIRST_DEPLOYMENT_ID, 1, None)];
        assert_eq!(to_start(&service(3), &tasks), 2);
        assert_eq!(to_start(&service(1), &tasks), 0);
        assert_eq!(to_start(&service(0), &tasks), 0);
        // A task on its way down does not count: it is replaced.
        let mut stopping = tasks.clone();
        stopping[0].desired_status = DesiredStatus::Stopped;
        stopping[0].last_status = LastStatus::Deactivating;
        assert_eq!(to_start(&service(1), &stopping), 1);
    }

    #[test]
    fn a_deployment_starts_new_tasks_within_the_maximum_percent() {
        // 3 old tasks up, desired 3: room for 3 more (200 %).
        let old: Vec<TaskInfo> = (0..3)
            .map(|i| task(&format!("old{i}"), FIRST_DEPLOYMENT_ID, i, Some(NOW + 60)))
            .collect();
        assert_eq!(to_start(&deploying(3), &old), 3);
        // 3 old + 2 new up: one more.
        let mut tasks = old.clone();
        tasks.push(starting("new0", NEW, 5));
        tasks.push(task("new1", NEW, 5, None));
        assert_eq!(to_start(&deploying(3), &tasks), 1);
        // Desired 2 with 3 old protected and 1 new: 4 up of 4 allowed.
        let mut tasks = old;
        tasks.push(task("new0", NEW, 5, None));
        assert_eq!(to_start(&deploying(2), &tasks), 0);
    }

    #[test]
    fn scale_in_stops_unprotected_tasks_first_and_never_a_protected_one() {
        let tasks = vec![
            task("busy1", FIRST_DEPLOYMENT_ID, 1, Some(NOW + 60)),
            task("idle", FIRST_DEPLOYMENT_ID, 2, None),
            task("busy2", FIRST_DEPLOYMENT_ID, 3, Some(NOW + 60)),
        ];
        let choice = scale_in(&service(2), &tasks, at(NOW));
        assert_eq!(choice.stop, vec!["idle".to_string()]);
        assert_eq!(choice.waiting, 0);
        // Desired 1: the idle one now, one more waits on the two protected ones.
        let choice = scale_in(&service(1), &tasks, at(NOW));
        assert_eq!(choice.stop, vec!["idle".to_string()]);
        assert_eq!((choice.waiting, choice.protected), (1, 2));
        // Desired 0 with every task protected: nothing stops, all wait.
        let busy: Vec<TaskInfo> = tasks.iter().filter(|t| t.id != "idle").cloned().collect();
        let choice = scale_in(&service(0), &busy, at(NOW));
        assert!(choice.stop.is_empty());
        assert_eq!((choice.waiting, choice.protected), (2, 2));
    }

    #[test]
    fn a_protected_task_is_stopped_once_its_protection_expires_while_the_excess_remains() {
        let tasks = vec![
            task("a", FIRST_DEPLOYMENT_ID, 1, Some(NOW + 60)),
            task("b", FIRST_DEPLOYMENT_ID, 2, Some(NOW + 30)),
        ];
        assert!(scale_in(&service(1), &tasks, at(NOW)).stop.is_empty());
        let later = scale_in(&service(1), &tasks, at(NOW + 30));
        assert_eq!(later.stop, vec!["b".to_string()]);
        assert_eq!(later.waiting, 0);
        // Scaled back out before then: nothing to stop.
        assert_eq!(
            scale_in(&service(2), &tasks, at(NOW + 30)),
            Choice::default()
        );
    }

    #[test]
    fn the_stop_order_is_starting_tasks_then_newest_then_id() {
        let mut tasks = [
            task("old", FIRST_DEPLOYMENT_ID, 1, None),
            task("new-b", FIRST_DEPLOYMENT_ID, 9, None),
            task("new-a", FIRST_DEPLOYMENT_ID, 9, None),
            starting("pending", FIRST_DEPLOYMENT_ID, 0),
        ];
        tasks.sort_by(stop_order);
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["pending", "new-a", "new-b", "old"]);
        let choice = scale_in(&service(2), &tasks, at(NOW));
        assert_eq!(
            choice.stop,
            vec!["pending".to_string(), "new-a".to_string()]
        );
    }

    #[test]
    fn a_deployment_stops_old_tasks_as_new_ones_run_keeping_the_desired_count() {
        let old: Vec<TaskInfo> = (0..3)
            .map(|i| task(&format!("old{i}"), FIRST_DEPLOYMENT_ID, i, None))
            .collect();
        // No new task running yet: every old one stays (minimum healthy 100 %).
        let mut tasks = old.clone();
        tasks.push(starting("new0", NEW, 5));
        assert_eq!(
            deployment_stops(&deploying(3), &tasks, at(NOW)),
            Choice::default()
        );
        // Two new tasks running: two old ones go, newest first.
        let mut tasks = old.clone();
        tasks.push(task("new0", NEW, 5, None));
        tasks.push(task("new1", NEW, 6, None));
        let choice = deployment_stops(&deploying(3), &tasks, at(NOW));
        assert_eq!(choice.stop, vec!["old2".to_string(), "old1".to_string()]);
    }

    #[test]
    fn protected_old_tasks_hold_a_deployment_back_until_released() {
        let mut tasks: Vec<TaskInfo> = vec![
            task("old0", FIRST_DEPLOYMENT_ID, 0, Some(NOW + 60)),
            task("old1", FIRST_DEPLOYMENT_ID, 1, None),
        ];
        tasks.push(task("new0", NEW, 5, None));
        tasks.push(task("new1", NEW, 6, None));
        let choice = deployment_stops(&deploying(2), &tasks, at(NOW));
        assert_eq!(choice.stop, vec!["old1".to_string()]);
        assert_eq!((choice.waiting, choice.protected), (1, 1));
        let released = deployment_stops(&deploying(2), &tasks, at(NOW + 60));
        assert_eq!(released.stop.len(), 2);
        // The plan reports the wait as the deployment's, not a scale-in's.
        let plan = plan(&deploying(2), &tasks, at(NOW));
        assert_eq!(
            plan.deployment_wait,
            Some(Wait {
                tasks: 1,
                protected: 1
            })
        );
        assert_eq!(plan.scale_in_wait, None);
        assert_eq!(plan.stop, vec![("old1".to_string(), Cause::Deployment)]);
    }

    #[test]
    fn older_deployments_report_the_tasks_still_needed() {
        let mut tasks: Vec<TaskInfo> = (0..3)
            .map(|i| task(&format!("old{i}"), FIRST_DEPLOYMENT_ID, i, Some(NOW + 60)))
            .collect();
        assert_eq!(deployment_desired(&deploying(3), &tasks), vec![3, 3]);
        tasks.push(task("new0", NEW, 5, None));
        tasks.push(starting("new1", NEW, 6));
        assert_eq!(deployment_desired(&deploying(3), &tasks), vec![3, 2]);
        tasks.push(task("new2", NEW, 6, None));
        tasks.push(task("new3", NEW, 6, None));
        assert_eq!(deployment_desired(&deploying(3), &tasks), vec![3, 0]);
    }

    #[test]
    fn an_older_deployment_without_tasks_retires_and_the_primary_completes() {
        let mut tasks = vec![
            task("old0", FIRST_DEPLOYMENT_ID, 0, None),
            task("new0", NEW, 5, None),
        ];
        tasks[0].desired_status = DesiredStatus::Stopped;
        tasks[0].last_status = LastStatus::Stopping;
        assert_eq!(rollout(&deploying(1), &tasks), Rollout::default());
        tasks[0].last_status = LastStatus::Stopped;
        assert_eq!(
            rollout(&deploying(1), &tasks),
            Rollout {
                retire: vec![FIRST_DEPLOYMENT_ID.to_string()],
                complete: true
            }
        );
        // Not complete while the PRIMARY is short of its desired count.
        assert!(!rollout(&deploying(2), &tasks).complete);
        // A completed rollout is not completed again.
        assert!(!rollout(&service(1), &[task("a", FIRST_DEPLOYMENT_ID, 0, None)]).complete);
    }

    #[test]
    fn stopping_deregisters_waits_the_delay_then_terms_then_kills() {
        let delay = Duration::from_secs(5);
        let timeout = Duration::from_secs(30);
        let mut t = task("a", FIRST_DEPLOYMENT_ID, 0, None);
        let mut s = Stopping {
            registered: true,
            ..Stopping::default()
        };
        assert_eq!(stop_step(&t, &s, at(NOW), delay, timeout), None, "wanted");
        t.desired_status = DesiredStatus::Stopped;
        assert_eq!(
            stop_step(&t, &s, at(NOW), delay, timeout),
            Some(Step::Deactivate)
        );
        s.deactivated_at = Some(at(NOW));
        t.last_status = LastStatus::Deactivating;
        assert_eq!(stop_step(&t, &s, at(NOW + 4), delay, timeout), None);
        assert_eq!(
            stop_step(&t, &s, at(NOW + 5), delay, timeout),
            Some(Step::Terminate)
        );
        s.terminated_at = Some(at(NOW + 5));
        t.last_status = LastStatus::Stopping;
        assert_eq!(stop_step(&t, &s, at(NOW + 34), delay, timeout), None);
        assert_eq!(
            stop_step(&t, &s, at(NOW + 35), delay, timeout),
            Some(Step::Kill)
        );
        s.killed = true;
        assert_eq!(stop_step(&t, &s, at(NOW + 99), delay, timeout), None);
        // A task never registered does not wait the deregistration delay.
        let unregistered = Stopping {
            deactivated_at: Some(at(NOW)),
            ..Stopping::default()
        };
        assert_eq!(
            stop_step(&t, &unregistered, at(NOW), delay, timeout),
            Some(Step::Terminate)
        );
    }
}
