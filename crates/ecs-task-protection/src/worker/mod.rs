//! An SQS queue worker that keeps its task protected from scale-in while it has jobs in hand
//! (feature `sqs`).
//!
//! * [`Handler`], [`Job`], [`Outcome`]: what the worker runs for each message, and what it
//!   answers.

mod handler;

pub use handler::{CancelReason, Handler, Job, Outcome};
