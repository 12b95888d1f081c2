//! What the queue consumer's tests share with the library's and the server's: waits, free ports,
//! processes, moto's SQS server, a fault-injecting proxy, Prometheus text.
#![allow(dead_code)]

#[path = "../../../ecs-task-protection/tests/support/mod.rs"]
mod common;
pub use common::*;

#[cfg(unix)]
#[path = "../../../../tests/support/moto.rs"]
pub mod moto;
#[cfg(unix)]
#[path = "../../../../tests/support/process.rs"]
pub mod process;
#[path = "../../../../tests/support/prometheus.rs"]
pub mod prometheus;
#[path = "../../../../tests/support/proxy.rs"]
pub mod proxy;

// Not every test file that includes this module uses them.
#[allow(unused_imports)]
pub use prometheus::{prometheus_text, prometheus_value};
