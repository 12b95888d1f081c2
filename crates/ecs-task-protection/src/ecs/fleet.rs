//! Which protected tasks a scale-in needs gone: a pure rule over what ECS says about the service's
//! tasks, computed by every task on its own and identically.
//!
//! ECS stops unprotected tasks first on a scale-in and skips protected ones until their
//! protection ends. So a task with work needs to drain (stop taking new work, so that it empties
//! and lets its protection go) only when ECS cannot reach the desired count without it:
//!
//! ```text
//! excess  = tasks ECS wants running − desired count
//! surplus = excess − tasks that are not protected
//! ```
//!
//! When `surplus` is above zero, that many protected tasks drain: the least loaded first when
//! every candidate's load is known (the application's count of players or jobs), otherwise the
//! youngest first (`startedAt`), the task ARN breaking ties. Every task sees the same answer from
//! ECS, so every task picks the same ones without talking to the others; the rule is decided
//! again every round, as the fleet changes.
//!
//! What counts as a task of the service is what `ListTasks` returns for the service with desired
//! status `RUNNING`: the tasks ECS is keeping, including those still starting (`PENDING`,
//! `PROVISIONING`, `ACTIVATING`), which ECS counts towards the desired count and which are not
//! protected yet, and excluding those it has already chosen to stop (desired status `STOPPED`,
//! last status `DEACTIVATING` or `STOPPING`), which no longer count towards it. The service's
//! `runningCount` is not used for this: it leaves out the starting tasks, which ECS would stop
//! before any protected one.

use std::cmp::Reverse;
use std::time::SystemTime;

/// One task of the service, as ECS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FleetTask {
    /// The task ARN.
    pub arn: String,
    /// When the task started running (`startedAt`); `None` while it is starting, or when it is
    /// not known (`DescribeTasks` denied).
    pub started_at: Option<SystemTime>,
    /// Whether the task is protected now (`GetTaskProtection`: enabled and not expired); `None`
    /// when ECS did not say.
    pub protected: Option<bool>,
    /// The task's load (players, jobs in hand) as the application reports it, if it does.
    pub load: Option<u64>,
}

/// The service as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fleet {
    /// The desired count of the tasks considered (the service's, or during a deployment the
    /// count of this task's own deployment).
    pub desired: u32,
    /// The tasks ECS wants running (desired status `RUNNING`).
    pub tasks: Vec<FleetTask>,
}

/// How the chosen tasks were ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// The least loaded first (then the youngest).
    Load,
    /// The youngest first.
    Age,
}

/// What a scale-in means for this task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScaleIn {
    /// There is an excess, but some task's protection is not known: nothing can be decided (the
    /// caller keeps its previous decision, which never started a drain without full data).
    Unknown,
    /// ECS can reach the desired count without draining anyone busy (no excess, or enough tasks
    /// are unprotected), or this task is not one of the service's tasks any more.
    NotNeeded,
    /// Protected tasks must go, and this task is not one of those chosen.
    Others {
        /// How many protected tasks must go.
        surplus: usize,
    },
    /// This task must drain.
    Chosen {
        /// How many protected tasks must go (0 when this task keeps draining only because it is
        /// already drained, unprotected, and the scale-in has not finished).
        surplus: usize,
        /// Tasks ECS wants running.
        tasks: usize,
        /// The desired count.
        desired: u32,
        /// How the chosen were ordered.
        order: Order,
    },
}

impl ScaleIn {
    /// The log reason for a chosen task (`scale-in: …`; the text before `": "` is the public
    /// cause).
    pub fn reason(&self) -> Option<String> {
        let ScaleIn::Chosen {
            surplus,
            tasks,
            desired,
            order,
        } = self
        else {
            return None;
        };
        let why = if *surplus == 0 {
            "this task has drained and lets ECS stop it".to_string()
        } else {
            let by = match order {
                Order::Load => "the least loaded",
                Order::Age => "the youngest",
            };
            format!("ECS needs {surplus} of the busy tasks gone and this task is among {by}")
        };
        Some(format!(
            "scale-in: desired {desired}, {tasks} tasks running or starting; {why}"
        ))
    }
}

/// The rule: what the scale-in (if any) means for task `me`. `draining` says whether this task
/// is already draining for a scale-in: a drained task that has let its protection go stays
/// drained while the service still has more tasks than it wants, so that it does not take new
/// work (and protection) again before ECS stops it.
pub(crate) fn scale_in(fleet: &Fleet, me: &str, draining: bool) -> ScaleIn {
    let tasks = fleet.tasks.len();
    let excess = tasks.saturating_sub(fleet.desired as usize);
    let Some(mine) = fleet.tasks.iter().find(|t| t.arn == me) else {
        // Not listed: ECS has already chosen to stop this task (or its list is behind). Either
        // way, nothing here decides it.
        return ScaleIn::NotNeeded;
    };
    if excess == 0 {
        return ScaleIn::NotNeeded;
    }
    let chosen = |surplus, order| ScaleIn::Chosen {
        surplus,
        tasks,
        desired: fleet.desired,
        order,
    };
    if fleet.tasks.iter().any(|t| t.protected.is_none()) {
        return ScaleIn::Unknown;
    }
    let protected = |t: &FleetTask| t.protected == Some(true);
    let unprotected = fleet.tasks.iter().filter(|t| !protected(t)).count();
    let surplus = excess.saturating_sub(unprotected);
    if !protected(mine) {
        return if draining {
            chosen(surplus, Order::Age)
        } else {
            ScaleIn::NotNeeded
        };
    }
    if surplus == 0 {
        return ScaleIn::NotNeeded;
    }
    let mut candidates: Vec<&FleetTask> = fleet.tasks.iter().filter(|t| protected(t)).collect();
    let order = if candidates.iter().all(|t| t.load.is_some()) {
        Order::Load
    } else {
        Order::Age
    };
    // Youngest first: a task not started yet (or of unknown age) counts as the youngest.
    let age_key = |t: &FleetTask| (t.started_at.is_some(), Reverse(t.started_at));
    candidates.sort_by(|a, b| {
        let by_load = match order {
            Order::Load => a.load.cmp(&b.load),
            Order::Age => std::cmp::Ordering::Equal,
        };
        by_load
            .then_with(|| age_key(a).cmp(&age_key(b)))
            .then_with(|| a.arn.cmp(&b.arn))
    });
    let picked = candidates.iter().take(surplus).any(|t| t.arn == me);
    if picked || draining {
        chosen(surplus, order)
    } else {
        ScaleIn::Others { surplus }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs))
    }

    fn task(id: &str, started: u64, protected: bool) -> FleetTask {
        FleetTask {
            arn: format!("arn:aws:ecs:eu-west-1:123456789012:task/c/{id}"),
            started_at: at(started),
            protected: Some(protected),
            load: None,
        }
    }

    fn arn(id: &str) -> String {
        format!("arn:aws:ecs:eu-west-1:123456789012:task/c/{id}")
    }

    fn fleet(desired: u32, tasks: Vec<FleetTask>) -> Fleet {
        Fleet { desired, tasks }
    }

    /// The ids of the tasks that drain, each deciding for itself.
    fn draining(f: &Fleet) -> Vec<String> {
        f.tasks
            .iter()
            .filter(|t| matches!(scale_in(f, &t.arn, false), ScaleIn::Chosen { .. }))
            .map(|t| t.arn.rsplit('/').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn no_excess_drains_nobody() {
        let f = fleet(
            3,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, true)],
        );
        assert!(draining(&f).is_empty());
        assert_eq!(scale_in(&f, &arn("a"), false), ScaleIn::NotNeeded);
        // Scaling out is no reason either.
        let f = fleet(5, vec![task("a", 1, true)]);
        assert!(draining(&f).is_empty());
    }

    #[test]
    fn an_extra_unprotected_task_drains_nobody() {
        // 3 running, 2 wanted, one of them idle: ECS stops the idle one.
        let f = fleet(
            2,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, false)],
        );
        assert!(draining(&f).is_empty());
        assert_eq!(scale_in(&f, &arn("a"), false), ScaleIn::NotNeeded);
    }

    #[test]
    fn surplus_one_of_three_busy_drains_exactly_the_youngest() {
        let f = fleet(
            2,
            vec![task("a", 1, true), task("c", 3, true), task("b", 2, true)],
        );
        assert_eq!(draining(&f), vec!["c"]);
        assert_eq!(
            scale_in(&f, &arn("a"), false),
            ScaleIn::Others { surplus: 1 }
        );
        let reason = scale_in(&f, &arn("c"), false).reason().unwrap();
        assert!(
            reason.starts_with("scale-in: desired 2, 3 tasks"),
            "{reason}"
        );
        assert!(reason.contains("the youngest"), "{reason}");
    }

    #[test]
    fn with_every_load_known_the_least_loaded_drain_first() {
        let mut f = fleet(
            1,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, true)],
        );
        for (t, load) in f.tasks.iter_mut().zip([5, 400, 7]) {
            t.load = Some(load);
        }
        // Surplus 2: the two least loaded (a: 5, c: 7), not the youngest two (b, c).
        assert_eq!(draining(&f), vec!["a", "c"]);
        let reason = scale_in(&f, &arn("a"), false).reason().unwrap();
        assert!(reason.contains("least loaded"), "{reason}");
        // Equal loads: the youngest first.
        for t in &mut f.tasks {
            t.load = Some(10);
        }
        assert_eq!(draining(&f), vec!["b", "c"]);
    }

    #[test]
    fn a_missing_load_falls_back_to_age_for_everyone() {
        let mut f = fleet(
            2,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, true)],
        );
        f.tasks[0].load = Some(0);
        f.tasks[1].load = Some(0);
        // c's load is unknown: every task orders by age, so all agree on c.
        assert_eq!(draining(&f), vec!["c"]);
    }

    #[test]
    fn scale_to_zero_drains_every_busy_task() {
        let f = fleet(0, vec![task("a", 1, true), task("b", 2, true)]);
        assert_eq!(draining(&f), vec!["a", "b"]);
        // An idle task among them: ECS stops it, the busy ones still all drain.
        let f = fleet(
            0,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, false)],
        );
        assert_eq!(draining(&f), vec!["a", "b"]);
    }

    #[test]
    fn pending_tasks_count_as_unprotected_tasks_ecs_can_stop() {
        // Desired 3 → 3 running + 1 starting (AZ rebalancing starts one before it stops one):
        // the new task is the extra, unprotected one; nobody drains.
        let mut starting = task("d", 0, false);
        starting.started_at = None;
        let f = fleet(
            3,
            vec![
                task("a", 1, true),
                task("b", 2, true),
                task("c", 3, true),
                starting.clone(),
            ],
        );
        assert!(draining(&f).is_empty());
        // Desired 2 with the same fleet: surplus 1 (excess 2, one unprotected), the youngest
        // protected task drains.
        let f = fleet(
            2,
            vec![
                task("a", 1, true),
                task("b", 2, true),
                task("c", 3, true),
                starting,
            ],
        );
        assert_eq!(draining(&f), vec!["c"]);
    }

    #[test]
    fn a_protected_task_of_unknown_age_counts_as_the_youngest() {
        let mut unknown = task("z", 0, true);
        unknown.started_at = None;
        let f = fleet(1, vec![task("a", 1, true), unknown]);
        assert_eq!(draining(&f), vec!["z"]);
    }

    #[test]
    fn ties_are_broken_by_arn_so_every_task_agrees() {
        let f = fleet(1, vec![task("b", 5, true), task("a", 5, true)]);
        assert_eq!(draining(&f), vec!["a"]);
    }

    #[test]
    fn a_drained_task_that_let_protection_go_stays_drained_until_ecs_stops_it() {
        // c drained, its players left, it released protection: the surplus is now 0 for
        // everyone, but c must not take new work before ECS stops it.
        let f = fleet(
            2,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, false)],
        );
        assert!(draining(&f).is_empty(), "nobody else starts draining");
        let kept = scale_in(&f, &arn("c"), true);
        assert!(
            matches!(kept, ScaleIn::Chosen { surplus: 0, .. }),
            "{kept:?}"
        );
        assert!(kept.reason().unwrap().contains("lets ECS stop it"));
        // The scale-in is undone (desired back to 3): c takes work again.
        let f = fleet(3, f.tasks.clone());
        assert_eq!(scale_in(&f, &arn("c"), true), ScaleIn::NotNeeded);
    }

    #[test]
    fn a_draining_task_outranked_by_another_keeps_draining() {
        // b was chosen when it had the fewest players; now c has fewer. b keeps draining (it
        // refuses new players, so it empties), and c drains too until one of them is gone.
        let mut f = fleet(
            2,
            vec![task("a", 1, true), task("b", 2, true), task("c", 3, true)],
        );
        for (t, load) in f.tasks.iter_mut().zip([50, 4, 3]) {
            t.load = Some(load);
        }
        assert!(matches!(
            scale_in(&f, &arn("b"), true),
            ScaleIn::Chosen { .. }
        ));
        assert_eq!(draining(&f), vec!["c"]);
    }

    #[test]
    fn missing_protection_data_decides_nothing() {
        // GetTaskProtection did not answer for b: nobody can tell the surplus, nobody starts
        // draining (scale to zero included: not every task drains because data is missing).
        let mut f = fleet(0, vec![task("a", 1, true), task("b", 2, true)]);
        f.tasks[1].protected = None;
        for me in ["a", "b"] {
            assert_eq!(scale_in(&f, &arn(me), false), ScaleIn::Unknown);
        }
        // Without an excess, missing data does not matter.
        let f = fleet(2, f.tasks.clone());
        assert_eq!(scale_in(&f, &arn("a"), false), ScaleIn::NotNeeded);
    }

    #[test]
    fn a_task_missing_from_the_list_does_not_decide() {
        let f = fleet(0, vec![task("a", 1, true)]);
        assert_eq!(scale_in(&f, &arn("gone"), false), ScaleIn::NotNeeded);
        assert_eq!(scale_in(&f, &arn("gone"), true), ScaleIn::NotNeeded);
    }
}
