//! How the worker takes and runs jobs: [`WorkerSettings`], built from
//! [`WorkerSettings::DEFAULT`] with its `with_*` builders, checked by
//! [`validate`](WorkerSettings::validate).

use std::time::Duration;

use crate::protection::SettingsError;

/// The longest SQS keeps a message hidden: a message's visibility can be extended to at most 12
/// hours after it was received, and no visibility timeout may be longer.
pub const SQS_MAX_INVISIBLE: Duration = Duration::from_secs(12 * 60 * 60);

/// The most jobs a worker runs at once.
const MAX_CONCURRENCY: usize = 100;

/// How the worker takes and runs jobs.
///
/// ```
/// use std::time::Duration;
/// use ecs_task_protection::worker::WorkerSettings;
///
/// let settings = WorkerSettings::DEFAULT
///     .with_concurrency(4)
///     .with_job_timeout(Some(Duration::from_secs(300)));
/// assert!(settings.validate().is_ok());
/// assert!(WorkerSettings::DEFAULT.with_concurrency(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSettings {
    /// Jobs that may run at once (1..=100; 1 by default). Each message in hand takes one, from
    /// its receipt to its delete (or its return to the queue).
    pub concurrency: usize,
    /// How long a received message stays hidden from other workers (3 s..=12 h, whole seconds;
    /// 60 s by default); extended every third of it while its job runs, so a worker that crashes
    /// leaves its messages hidden for at most this long.
    pub visibility_timeout: Duration,
    /// The longest one receive waits for messages (long polling; 1..=20 s, 20 s by default).
    pub receive_wait: Duration,
    /// How long running jobs may go on after the shutdown signal before they are cancelled
    /// ([`CancelReason::Shutdown`](super::CancelReason::Shutdown)) and their messages returned to
    /// the queue (> 0; 20 s by default).
    pub shutdown_timeout: Duration,
    /// The longest a job waits for ECS to confirm protection before it starts anyway (2 s by
    /// default).
    pub protection_wait: Duration,
    /// How long a deployment's or an operator's drain may last before the jobs still running are
    /// cancelled ([`CancelReason::DrainDeadline`](super::CancelReason::DrainDeadline)) and their
    /// messages returned to the queue; `None`: no limit (15 minutes by default). A scale-in's
    /// drain is never limited.
    pub drain_deadline: Option<Duration>,
    /// How long one job may run before it is cancelled
    /// ([`CancelReason::Timeout`](super::CancelReason::Timeout)) and its message retried after a
    /// back-off; `None` (the default): no limit of the worker's own. Either way a job is
    /// cancelled so 12 hours after its receive, less one visibility timeout: SQS cannot keep its
    /// message hidden longer, and another worker would run it too.
    pub job_timeout: Option<Duration>,
    /// How long a cancelled job's handler has to return (to stop its work and clean up) before
    /// the worker stops waiting for it and drops it (5 s by default). Its message is back on the
    /// queue already.
    pub cancel_grace: Duration,
    /// How long receives may fail in a row before [`Worker::is_healthy`](super::Worker::is_healthy)
    /// turns false; also how long past a long poll the receive loop may go without starting a
    /// receive (while it has a free slot and is not draining) before it does (1 s..=1 h; a
    /// minute by default). A container health check that fails makes ECS replace the task, and a
    /// deployment whose new tasks never turn healthy rolls back.
    pub unhealthy_after: Duration,
}

impl WorkerSettings {
    /// The defaults: 1 job at a time, 60 s visibility, 20 s long polls, 20 s shutdown timeout,
    /// 2 s protection wait, 15 minute drain deadline, no job timeout, 5 s cancel grace, unhealthy
    /// after a minute of failing receives.
    pub const DEFAULT: WorkerSettings = WorkerSettings {
        concurrency: 1,
        visibility_timeout: Duration::from_secs(60),
        receive_wait: Duration::from_secs(20),
        shutdown_timeout: Duration::from_secs(20),
        protection_wait: Duration::from_secs(2),
        drain_deadline: Some(Duration::from_secs(15 * 60)),
        job_timeout: None,
        cancel_grace: Duration::from_secs(5),
        unhealthy_after: Duration::from_secs(60),
    };

    /// With `concurrency` jobs at once.
    pub const fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// With this visibility timeout.
    pub const fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// With this long-poll wait.
    pub const fn with_receive_wait(mut self, wait: Duration) -> Self {
        self.receive_wait = wait;
        self
    }

    /// With this shutdown timeout.
    pub const fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// With this protection wait.
    pub const fn with_protection_wait(mut self, wait: Duration) -> Self {
        self.protection_wait = wait;
        self
    }

    /// With this drain deadline (`None`: none).
    pub const fn with_drain_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// With this job timeout (`None`: none of the worker's own).
    pub const fn with_job_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// With this cancel grace.
    pub const fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// With this health window.
    pub const fn with_unhealthy_after(mut self, window: Duration) -> Self {
        self.unhealthy_after = window;
        self
    }

    /// Checks every setting against its allowed range.
    ///
    /// # Errors
    ///
    /// The first setting out of range, with its name, its range and the value given.
    pub fn validate(&self) -> Result<(), SettingsError> {
        fn check(
            ok: bool,
            name: &'static str,
            range: &str,
            value: impl std::fmt::Debug,
        ) -> Result<(), SettingsError> {
            if ok {
                Ok(())
            } else {
                Err(SettingsError {
                    name,
                    range: range.to_string(),
                    value: format!("{value:?}"),
                })
            }
        }
        let vt = self.visibility_timeout;
        check(
            (1..=MAX_CONCURRENCY).contains(&self.concurrency),
            "concurrency",
            "1..=100",
            self.concurrency,
        )?;
        check(
            vt >= Duration::from_secs(3) && vt <= SQS_MAX_INVISIBLE && vt.subsec_nanos() == 0,
            "visibility_timeout",
            "3 s..=12 h, whole seconds",
            vt,
        )?;
        check(
            self.receive_wait >= Duration::from_secs(1)
                && self.receive_wait <= super::queue::SQS_MAX_WAIT,
            "receive_wait",
            "1 s..=20 s",
            self.receive_wait,
        )?;
        check(
            !self.shutdown_timeout.is_zero(),
            "shutdown_timeout",
            "> 0",
            self.shutdown_timeout,
        )?;
        check(
            self.drain_deadline.is_none_or(|d| !d.is_zero()),
            "drain_deadline",
            "None or > 0",
            self.drain_deadline,
        )?;
        check(
            self.job_timeout.is_none_or(|t| !t.is_zero()),
            "job_timeout",
            "None or > 0",
            self.job_timeout,
        )?;
        check(
            self.unhealthy_after >= Duration::from_secs(1)
                && self.unhealthy_after <= Duration::from_secs(3600),
            "unhealthy_after",
            "1 s..=1 h",
            self.unhealthy_after,
        )
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(WorkerSettings::default().validate(), Ok(()));
    }

    #[test]
    fn each_setting_out_of_range_is_named() {
        let secs = Duration::from_secs;
        for (settings, name) in [
            (WorkerSettings::DEFAULT.with_concurrency(0), "concurrency"),
            (WorkerSettings::DEFAULT.with_concurrency(101), "concurrency"),
            (
                WorkerSettings::DEFAULT.with_visibility_timeout(secs(2)),
                "visibility_timeout",
            ),
            (
                WorkerSettings::DEFAULT.with_visibility_timeout(secs(43_201)),
                "visibility_timeout",
            ),
            (
                WorkerSettings::DEFAULT.with_visibility_timeout(Duration::from_millis(3500)),
                "visibility_timeout",
            ),
            (
                WorkerSettings::DEFAULT.with_receive_wait(secs(21)),
                "receive_wait",
            ),
            (
                WorkerSettings::DEFAULT.with_receive_wait(Duration::ZERO),
                "receive_wait",
            ),
            (
                WorkerSettings::DEFAULT.with_shutdown_timeout(Duration::ZERO),
                "shutdown_timeout",
            ),
            (
                WorkerSettings::DEFAULT.with_drain_deadline(Some(Duration::ZERO)),
                "drain_deadline",
            ),
            (
                WorkerSettings::DEFAULT.with_job_timeout(Some(Duration::ZERO)),
                "job_timeout",
            ),
            (
                WorkerSettings::DEFAULT.with_unhealthy_after(Duration::from_millis(999)),
                "unhealthy_after",
            ),
            (
                WorkerSettings::DEFAULT.with_unhealthy_after(secs(3601)),
                "unhealthy_after",
            ),
        ] {
            assert_eq!(settings.validate().map_err(|e| e.name), Err(name));
        }
        assert_eq!(
            WorkerSettings::DEFAULT
                .with_concurrency(100)
                .with_visibility_timeout(secs(43_200))
                .with_drain_deadline(None)
                .with_job_timeout(Some(secs(1)))
                .with_unhealthy_after(secs(1))
                .validate(),
            Ok(())
        );
    }
}
