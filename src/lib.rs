//! Keeps an Amazon ECS task protected from scale-in while it has work, and a WebSocket
//! game/chat server built on it.
//!
//! * [`protection`]: the reusable [`ProtectionManager`](protection::ProtectionManager): when to
//!   call ECS and how calls are made, one at a time. Knows nothing of AWS.
//! * [`ecs`]: what speaks to ECS: the agent and API backends, the task's identity, the drain
//!   watcher.
//! * [`server`]: the WebSocket server (axum) whose connection count drives protection.
//! * [`worker`]: the SQS queue consumer whose jobs in hand drive protection.
//! * [`layer`]: a tower layer that holds protection while an HTTP request is in flight.
//! * [`metrics`]: per-task numbers as CloudWatch EMF lines and Prometheus text.
//! * [`config`]: command-line flags and environment variables, and what they turn into.
//! * [`shutdown`]: the signals that start an orderly shutdown, for both binaries.
//! * [`supervise`]: background tasks the process cannot do without, and ending the process
//!   (rather than running on without them) when one dies.

#![warn(missing_docs)]

pub mod config;
pub mod ecs;
pub mod layer;
pub mod metrics;
pub mod protection;
pub mod server;
pub mod shutdown;
pub mod supervise;
pub mod worker;
