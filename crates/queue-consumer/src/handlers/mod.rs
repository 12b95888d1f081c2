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
