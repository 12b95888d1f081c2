//! The two job handlers any language can use, on the library's handler API
//! ([`ecs_task_protection::worker::Handler`]):
//!
//! * [`command`]: `JOB_COMMAND` (or `queue-consumer run -- CMD ARGS…`), a process per message;
//! * [`http`]: `JOB_URL`, each message POSTed to an HTTP endpoint.
//!
//! [`JobMode`] is what the settings ask for: one of them, or the built-in demo job.

pub mod command;
pub mod http;

use std::fmt;

use ecs_task_protection::worker::CancelReason;

pub use command::{CommandHandler, JobCommand, JobCommandError};
pub use http::{HttpHandler, JobUrl, JobUrlError};

/// How the worker runs its jobs, as the settings say.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobMode {
    /// The sample's simulated work: the body is a number of milliseconds (neither `JOB_COMMAND`
    /// nor `JOB_URL` is set).
    Demo,
    /// A process per message ([`CommandHandler`]).
    Command(JobCommand),
    /// A POST per message ([`HttpHandler`]).
    Url(JobUrl),
}

impl JobMode {
    /// Checks at start-up what can be checked before the first job: a command's program must be
    /// found and executable (see [`JobCommand::find_program`]). An error is for exit code 2.
    ///
    /// # Errors
    ///
    /// The program cannot be started, naming the setting.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Command(command) => command.find_program().map(drop).map_err(|why| {
                format!("JOB_COMMAND (or `queue-consumer run`) cannot start: {why}")
            }),
            Self::Demo | Self::Url(_) => Ok(()),
        }
    }
}

impl fmt::Display for JobMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Demo => f.write_str("the demo job (a body of milliseconds)"),
            Self::Command(command) => write!(f, "the command {command}"),
            Self::Url(url) => write!(f, "POST {url}"),
        }
    }
}

/// What a cancellation is called in a failed job's reason.
pub(crate) fn cancel_words(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Shutdown => "cancelled at shutdown",
        CancelReason::DrainDeadline => "cancelled at the drain deadline",
        CancelReason::Timeout => "cancelled: the job timed out",
        _ => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_cannot_start_is_refused_at_start_up_naming_the_setting() {
        let missing = JobMode::Command(JobCommand::parse("no-such-program-here").unwrap());
        let e = missing.check().unwrap_err();
        assert!(
            e.starts_with("JOB_COMMAND (or `queue-consumer run`) cannot start: no-such-program-here is not on PATH"),
            "{e}"
        );
        let sh = JobMode::Command(JobCommand::parse("sh -c true").unwrap());
        assert_eq!(sh.check(), Ok(()));
        assert_eq!(JobMode::Demo.check(), Ok(()));
    }
}
