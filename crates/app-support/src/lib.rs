//! What the two applications (the websocket server and the queue consumer) share, none of which
//! belongs in the library: their common settings (flags and environment variables), the metrics
//! writers (CloudWatch EMF and Prometheus), the bounded HTTP listeners, the signals that start a
//! shutdown or a drain, and logging.
//!
//! * [`config`]: the settings both binaries read, and what they turn into.
//! * [`metrics`]: per-task numbers as CloudWatch EMF lines and Prometheus text.
//! * [`listener`]: the HTTP/1.1 accept loops and the limits every listener applies.
//! * [`origin`]: which web pages may open a WebSocket (`ALLOWED_ORIGINS`).
//! * [`throttle`]: rate-limited log lines and token buckets.
//! * [`shutdown`]: the signals that start an orderly shutdown.
//! * [`drain_signal`]: SIGUSR1, an operator's request to drain.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod config;
pub mod drain_signal;
pub mod listener;
pub mod metrics;
pub mod origin;
pub mod shutdown;
pub mod throttle;
