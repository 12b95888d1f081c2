//! Keeping an ECS task's scale-in protection in the state the program wants.
//!
//! * [`policy`]: the pure decision of when to call ECS.
//! * [`manager`]: the reconciler that carries decisions out, one call at a time, and reports
//!   events.
//! * [`backend`]: the trait every way of reaching ECS implements, and its error type.
//! * [`agent`], [`ecs_api`], [`local`]: the backends; [`task_metadata`]: the task's identity.
//! * [`drain_watch`]: asks ECS whether the task is being replaced.
//! * [`stand_in`]: a real HTTP server that behaves like the ECS agent endpoint, with faults to
//!   inject, for tests and load runs; [`ecs_stand_in`]: the same for the ECS API and the task
//!   metadata endpoint.

pub mod agent;
pub mod backend;
pub mod drain_watch;
pub mod ecs_api;
pub mod ecs_stand_in;
pub mod local;
pub mod manager;
pub mod policy;
pub mod stand_in;
pub mod task_metadata;

pub use backend::{BackendError, ErrorKind, ProtectionBackend, ProtectionState};
pub use manager::{
    AcquireError, ProtectionEvent, ProtectionGuard, ProtectionManager, ProtectionStatus, StateLabel,
};
pub use policy::Settings;
