//! Keeping a task's scale-in protection in the state the program wants. Nothing here knows about
//! AWS: the ways of reaching ECS implement [`ProtectionBackend`] (see [`crate::ecs`]).
//!
//! * `policy`: the pure decision of *when* to call ECS, and the [`Settings`].
//! * [`ProtectionManager`]: the reconciler that carries decisions out, one call at a time, and
//!   reports [`ProtectionEvent`]s.
//! * [`ProtectionBackend`]: the trait every way of reaching ECS implements, and its error type.
//! * [`local`]: the in-process backend for laptops and CI.

mod backend;
pub mod local;
mod manager;
mod policy;

pub use backend::{BackendError, ErrorKind, ProtectionBackend, ProtectionState};
pub use manager::{
    AcquireError, ProtectionEvent, ProtectionGuard, ProtectionManager, ProtectionStatus,
    StateLabel, RECONCILER,
};
pub use policy::retry_delay;
pub use policy::{Settings, SettingsError, DURATION_MINUTES};
