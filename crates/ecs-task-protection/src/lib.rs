//! Keeps an Amazon ECS task protected from scale-in while it has work.
//!
//! ECS lets a task protect itself (*task scale-in protection*): a protected task is never picked
//! for a scale-in and never replaced by a deployment until it releases its protection or the
//! protection expires. This crate keeps that protection where the program wants it, with one
//! reconciler per task: it protects when work arrives, refreshes before expiry, holds over
//! briefly after the work ends, releases when idle, makes one ECS call at a time, backs off when
//! ECS says no, reports events, and, with the drain watcher, tells the program when ECS wants the
//! task gone so that it can stop taking work.
//!
//! * [`protection`]: the [`ProtectionManager`](protection::ProtectionManager), its guards,
//!   events and status, the pure policy of when to call ECS, and the local backend. Knows
//!   nothing of AWS.
//! * `ecs` (features `agent`, `api`, `drain`): what speaks to ECS: the agent endpoint and ECS API
//!   backends, the task's identity, and the drain watcher.
//! * `layer` (feature `tower`): a tower layer that holds protection while an HTTP request is in
//!   flight.
//! * `worker` (feature `sqs`): an SQS queue worker built around a job handler (an async function
//!   of a job answering done, retry after a delay, or failed), protected while it has jobs in
//!   hand, draining with the watcher, FIFO groups in order.
//! * [`supervise`]: how a program learns that one of the crate's background tasks died.
//!
//! No feature is on by default: the core needs only tokio. Turn on what you use:
//!
//! | feature | what it brings | extra dependencies |
//! |---|---|---|
//! | `agent` | [`AgentBackend`](ecs::agent::AgentBackend): `$ECS_AGENT_URI/task-protection/v1/state` | reqwest |
//! | `api` | [`EcsApiBackend`](ecs::api::EcsApiBackend), the task identity, [`connect`](ecs::connect) | aws-sdk-ecs (rustls on ring) |
//! | `drain` | [`spawn_drain_watch`](ecs::drain_watch::spawn_drain_watch) | (as `api`) |
//! | `tower` | [`ProtectionLayer`](layer::ProtectionLayer) | tower-layer, tower-service, http-body |
//! | `sqs` | [`Worker`](worker::Worker), [`Handler`](worker::Handler) | (as `drain`) aws-sdk-sqs |
//!
//! # Protect while busy
//!
//! Each piece of work holds a [`ProtectionGuard`](protection::ProtectionGuard); the manager
//! turns the guards into ECS calls (one protect call for a whole busy period, however many guards
//! overlap):
//!
//! ```
//! use std::sync::Arc;
//! use ecs_task_protection::protection::{local::LocalBackend, ProtectionManager, Settings, StateLabel};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Outside ECS, the local backend simulates ECS's protection in-process.
//! let manager = ProtectionManager::start(Arc::new(LocalBackend::new()), Settings::default())?;
//!
//! let guard = manager.guard(); // protection is wanted while any guard lives
//! manager.protected().await?;  // optional: wait until ECS confirms
//! assert_eq!(manager.status().state, StateLabel::Protected);
//! drop(guard);                 // released after the hold-over (3 minutes by default)
//!
//! manager.shutdown().await?;   // releases protection at once
//! assert_eq!(manager.status().state, StateLabel::Unprotected);
//! # Ok(())
//! # }
//! ```
//!
//! # Like the Node.js sample's `acquire()` / `release()`
//!
//! ```
//! use std::sync::Arc;
//! use ecs_task_protection::protection::{local::LocalBackend, ProtectionEvent, ProtectionManager, Settings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = ProtectionManager::start(Arc::new(LocalBackend::new()), Settings::default())?;
//! let mut events = manager.subscribe();
//!
//! // Unlike the sample, acquire() returns ECS's rejection instead of never settling.
//! manager.acquire().await?;
//! // ... work that must not be interrupted ...
//! manager.release();
//!
//! match events.recv().await? {
//!     ProtectionEvent::Protected { .. } => println!("protected"),
//!     ProtectionEvent::Rejected { error, .. } => eprintln!("ECS said no: {error}"),
//!     _ => {}
//! }
//! manager.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Settings
//!
//! [`Settings`](protection::Settings) carries the sample's four settings (duration, hold-over,
//! refresh mark, check interval) plus the call timeout and back-off bounds; build it from
//! [`Settings::default()`](protection::Settings::default) and change what you need:
//!
//! ```
//! use ecs_task_protection::protection::Settings;
//!
//! // A queue worker's settings: protect for 1 minute, refresh at 80 %, hold over 10 % (6 s).
//! let settings = Settings::default()
//!     .with_duration_minutes(1)
//!     .with_maintain_percent(10)
//!     .with_refresh_percent(80);
//! assert!(settings.validate().is_ok());
//! assert!(Settings::default().with_duration_minutes(0).validate().is_err());
//! ```

#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "agent")]
pub mod ecs;
#[cfg(feature = "tower")]
pub mod layer;
pub mod protection;
pub mod supervise;
#[cfg(feature = "sqs")]
pub mod worker;

/// Locks `m`, poisoned or not: a panic while one of the crate's locks was held leaves plain data
/// behind (counts, tables of leases), so the rest of the program keeps going with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
