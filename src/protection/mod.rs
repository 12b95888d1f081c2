//! Keeping an ECS task's scale-in protection in the state the program wants.
//!
//! * [`policy`]: the pure decision of when to call ECS.
//! * [`manager`]: the reconciler that carries decisions out, one call at a time, and reports
//!   events.
//! * [`backend`]: the trait every way of reaching ECS implements, and its error type.
//! * [`agent`], [`local`]: the backends.
//! * [`stand_in`]: a real HTTP server that behaves like the ECS agent endpoint, with faults to
//!   inject, for tests and load runs.

pub mod agent;
pub mod backend;
pub mod local;
pub mod manager;
pub mod policy;
pub mod stand_in;

pub use backend::{BackendError, ErrorKind, ProtectionBackend, ProtectionState};
pub use manager::{
    AcquireError, ProtectionEvent, ProtectionGuard, ProtectionManager, ProtectionStatus, StateLabel,
};
pub use policy::Settings;
