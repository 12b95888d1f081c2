//! Whether the worker is sound, as a pure function of what it knows and the time: the rules
//! behind [`Worker::health`](super::Worker::health), `/healthz` in the application, and so ECS's
//! container health check, which replaces a task that fails it (and rolls back a deployment whose
//! new tasks never pass it).

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Why a worker is not healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unhealthy {
    /// The shutdown signal came: the worker takes no more jobs.
    #[error("shutting down")]
    ShuttingDown,
    /// Deletes fail in a way no retry can fix (the queue is gone, the task role may not delete):
    /// every job done would run again.
    #[error("deletes fail for good")]
    DeletesFailing,
    /// Every receive has failed for [`WorkerSettings::unhealthy_after`](super::WorkerSettings)
    /// (a minute by default): the queue is gone, the task role may not receive, SQS cannot be
    /// reached.
    #[error("receives have been failing")]
    ReceivesFailing,
    /// No receive started for a long poll plus that window while a slot was free: the receive
    /// loop is stuck.
    #[error("the receive loop has stalled")]
    NotReceiving,
}

/// What the health rules look at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthView {
    /// The shutdown signal came.
    pub(crate) stopping: bool,
    /// Deletes fail for good.
    pub(crate) deletes_failing: bool,
    /// The worker is draining (it does not receive, on purpose).
    pub(crate) draining: bool,
    /// At least one slot is free (with none, the worker has no reason to receive).
    pub(crate) slot_free: bool,
    /// When the receive loop last started a receive, or stopped waiting for a drain to end.
    pub(crate) last_poll: Instant,
    /// When the current streak of failed receives began; `None` once a receive works.
    pub(crate) failing_since: Option<Instant>,
}

/// The rules, in order: shutting down, or deletes failing for good, is unhealthy; a draining
/// worker is healthy (a failing health check would make ECS stop it and cut its jobs short);
/// receives failing for `window` is unhealthy; so is no receive started for `receive_wait +
/// window` while a slot is free; anything else is healthy.
pub(crate) fn assess(
    view: &HealthView,
    now: Instant,
    receive_wait: Duration,
    window: Duration,
) -> Result<(), Unhealthy> {
    if view.stopping {
        return Err(Unhealthy::ShuttingDown);
    }
    if view.deletes_failing {
        return Err(Unhealthy::DeletesFailing);
    }
    if view.draining {
        return Ok(());
    }
    if view
        .failing_since
        .is_some_and(|since| now.saturating_duration_since(since) >= window)
    {
        return Err(Unhealthy::ReceivesFailing);
    }
    if view.slot_free && now.saturating_duration_since(view.last_poll) >= receive_wait + window {
        return Err(Unhealthy::NotReceiving);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(20);
    const WINDOW: Duration = Duration::from_secs(60);

    fn sound(now: Instant) -> HealthView {
        HealthView {
            stopping: false,
            deletes_failing: false,
            draining: false,
            slot_free: true,
            last_poll: now,
            failing_since: None,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_worker_that_polls_and_whose_calls_work_is_healthy() {
        let now = Instant::now();
        assert_eq!(assess(&sound(now), now, WAIT, WINDOW), Ok(()));
        // In the middle of a long poll, and just before the stall mark.
        let later = now + WAIT + WINDOW - secs(1);
        assert_eq!(assess(&sound(now), later, WAIT, WINDOW), Ok(()));
    }

    #[test]
    fn shutting_down_is_unhealthy_whatever_else_holds() {
        let now = Instant::now();
        let v = HealthView {
            stopping: true,
            draining: true,
            ..sound(now)
        };
        assert_eq!(assess(&v, now, WAIT, WINDOW), Err(Unhealthy::ShuttingDown));
    }

    #[test]
    fn deletes_failing_for_good_is_unhealthy_even_while_draining() {
        let now = Instant::now();
        let v = HealthView {
            deletes_failing: true,
            draining: true,
            ..sound(now)
        };
        assert_eq!(
            assess(&v, now, WAIT, WINDOW),
            Err(Unhealthy::DeletesFailing)
        );
    }

    #[test]
    fn receives_failing_turn_unhealthy_once_the_streak_is_as_old_as_the_window() {
        let start = Instant::now();
        let v = HealthView {
            failing_since: Some(start),
            ..sound(start)
        };
        assert_eq!(
            assess(&v, start, WAIT, WINDOW),
            Ok(()),
            "one failure is not a streak"
        );
        let v_late = HealthView {
            last_poll: start + WINDOW - secs(2),
            ..v
        };
        assert_eq!(
            assess(&v_late, start + WINDOW - secs(1), WAIT, WINDOW),
            Ok(()),
            "59 s of failures"
        );
        assert_eq!(
            assess(&v_late, start + WINDOW, WAIT, WINDOW),
            Err(Unhealthy::ReceivesFailing),
            "a minute of failures"
        );
        // A shorter window (the setting) turns it sooner.
        assert_eq!(
            assess(&v, start + secs(2), WAIT, secs(2)),
            Err(Unhealthy::ReceivesFailing)
        );
        // Once a receive works the streak is over.
        let healed = HealthView {
            failing_since: None,
            ..v_late
        };
        assert_eq!(
            assess(&healed, start + WINDOW * 10 - WAIT, WAIT, WINDOW * 10),
            Ok(())
        );
    }

    #[test]
    fn a_draining_worker_is_healthy_though_its_receives_failed_or_stopped() {
        let start = Instant::now();
        let v = HealthView {
            draining: true,
            failing_since: Some(start),
            ..sound(start)
        };
        assert_eq!(assess(&v, start + secs(3600), WAIT, WINDOW), Ok(()));
    }

    #[test]
    fn no_receive_for_a_long_poll_plus_the_window_with_a_free_slot_is_a_stall() {
        let start = Instant::now();
        let v = sound(start);
        assert_eq!(
            assess(&v, start + WAIT + WINDOW, WAIT, WINDOW),
            Err(Unhealthy::NotReceiving)
        );
        // Every slot busy: nothing to receive for, so no stall.
        let busy = HealthView {
            slot_free: false,
            ..v
        };
        assert_eq!(assess(&busy, start + secs(3600), WAIT, WINDOW), Ok(()));
    }
}
