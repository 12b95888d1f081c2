//! A WebSocket game/chat server (axum + tokio) that keeps its Amazon ECS task protected from
//! scale-in while any client is connected, built on the `ecs-task-protection` library.
//!
//! * [`server`]: the WebSocket server whose connection count drives protection: routes, the hub,
//!   sessions, draining, the chat backplane.
//! * [`config`]: its command-line flags and environment variables, and what they turn into.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod config;
pub mod server;
