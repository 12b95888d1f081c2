//! What the library's integration tests share (the application packages' tests include it too):
//! a scripted backend for the paused clock, short settings, waits, free ports, and SDK clients for
//! the ECS stand-in.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ecs_task_protection::protection::{BackendError, ProtectionBackend, ProtectionState, Settings};
use tokio::sync::watch;
use tokio::time::Instant;

/// One call the fake backend received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Protect,
    Release,
}

/// A backend scripted by the test: answers from a queue (success when empty), records every call
/// with the instant it arrived, and can hold calls until the test lets them go.
#[derive(Default)]
pub struct FakeBackend {
    pub script: Mutex<VecDeque<Result<(), BackendError>>>,
    pub calls: Mutex<Vec<(Instant, Op)>>,
    /// `expiresInMinutes` of each protect call, in order.
    pub protect_minutes: Mutex<Vec<u32>>,
    pub initial: Mutex<Option<ProtectionState>>,
    hold: Mutex<Option<watch::Receiver<bool>>>,
    pub changed: tokio::sync::Notify,
}

impl FakeBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Answers the next calls (in order) with these results.
    pub fn push(&self, results: impl IntoIterator<Item = Result<(), BackendError>>) {
        self.script.lock().unwrap().extend(results);
    }

    /// Holds every following set call until the returned sender sends `true`.
    pub fn hold_calls(&self) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        *self.hold.lock().unwrap() = Some(rx);
        tx
    }

    pub fn ops(&self) -> Vec<Op> {
        self.calls.lock().unwrap().iter().map(|c| c.1).collect()
    }

    pub fn set_ops(&self) -> Vec<Op> {
        self.ops().into_iter().filter(|o| *o != Op::Get).collect()
    }

    pub fn set_calls(&self) -> Vec<(Instant, Op)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|c| c.1 != Op::Get)
            .collect()
    }

    /// Waits (on the runtime's clock) until `n` set calls have arrived.
    pub async fn wait_set_calls(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.set_ops().len() >= n {
                return;
            }
            changed.await;
        }
    }
}

#[async_trait]
impl ProtectionBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn describe(&self) -> String {
        "fake backend".into()
    }

    async fn set_protection(&self, enabled: bool, m: u32) -> Result<ProtectionState, BackendError> {
        let op = if enabled { Op::Protect } else { Op::Release };
        self.calls.lock().unwrap().push((Instant::now(), op));
        if enabled {
            self.protect_minutes.lock().unwrap().push(m);
        }
        self.changed.notify_waiters();
        let hold = self.hold.lock().unwrap().clone();
        if let Some(mut rx) = hold {
            let _ = rx.wait_for(|go| *go).await;
        }
        let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
        next.map(|()| ProtectionState {
            enabled,
            expires_at: enabled.then(|| SystemTime::now() + Duration::from_secs(u64::from(m) * 60)),
        })
    }

    async fn get_protection(&self) -> Result<ProtectionState, BackendError> {
        self.calls.lock().unwrap().push((Instant::now(), Op::Get));
        self.changed.notify_waiters();
        Ok(self.initial.lock().unwrap().unwrap_or(ProtectionState {
            enabled: false,
            expires_at: None,
        }))
    }
}

/// Settings with short, round numbers: 10 minutes, maintain 0 %, refresh 80 %.
pub fn settings(maintain_percent: u8) -> Settings {
    Settings::default()
        .with_duration_minutes(10)
        .with_maintain_percent(maintain_percent)
        .with_refresh_percent(80)
        .with_adjust_interval(Duration::from_secs(10))
}

/// Polls `f` (on real time) until it is true, failing after 10 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f` to completion, failing the test after 5 s (real time).
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// A loopback port that was free a moment ago (and refuses connections until someone binds it).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Credentials for the stand-ins, which do not check signatures.
pub fn credentials() -> aws_sdk_ecs::config::Credentials {
    aws_sdk_ecs::config::Credentials::new("AKIDTEST", "secret", None, None, "test")
}

/// An `aws-sdk-ecs` client for a local endpoint (plain HTTP), with test credentials, signing for
/// `region`, and at most 2 attempts per call.
pub fn ecs_client(endpoint_url: &str, region: &str) -> aws_sdk_ecs::Client {
    ecs_client_with(endpoint_url, region, None)
}

/// Like [`ecs_client`], with the SDK timeouts given.
pub fn ecs_client_with(
    endpoint_url: &str,
    region: &str,
    timeouts: Option<aws_sdk_ecs::config::timeout::TimeoutConfig>,
) -> aws_sdk_ecs::Client {
    let mut config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(endpoint_url)
        .region(aws_sdk_ecs::config::Region::new(region.to_string()))
        .credentials_provider(credentials())
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(timeouts) = timeouts {
        config = config.timeout_config(timeouts);
    }
    aws_sdk_ecs::Client::from_conf(config.build())
}
