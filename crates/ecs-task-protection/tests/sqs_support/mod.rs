//! What the library's SQS worker tests need besides the library's own test support: moto's SQS
//! server and the child processes it runs in, shared with the applications' tests.
#![allow(dead_code)]

#[path = "../support/mod.rs"]
mod common;
pub use common::*;

#[cfg(unix)]
#[path = "../../../../tests/support/moto.rs"]
pub mod moto;
#[cfg(unix)]
#[path = "../../../../tests/support/process.rs"]
pub mod process;
