//! The queue consumer: an SQS worker that keeps its ECS task protected from scale-in while it has
//! jobs in hand (and not while it only waits for work).
//!
//! * [`worker`]: the receive loop, jobs, visibility, deletes, draining, `/healthz` and `/status`.
//! * [`handlers`]: the jobs any language can run: a command per message (`JOB_COMMAND`), a POST
//!   to an HTTP endpoint (`JOB_URL`).
//! * [`config`]: its flags and environment variables.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod config;
pub mod handlers;
pub mod worker;
