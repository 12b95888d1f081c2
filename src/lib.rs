//! Keeps an Amazon ECS task protected from scale-in while it has work, and a WebSocket
//! game/chat server built on it.
//!
//! * [`protection`]: the reusable [`ProtectionManager`](protection::ProtectionManager) and its
//!   backends.
//! * [`server`]: the WebSocket server (axum) whose connection count drives protection.
//! * [`config`]: command-line flags and environment variables.

#![warn(missing_docs)]

pub mod config;
pub mod protection;
pub mod server;
