//! Shared pieces of the integration tests: a scripted backend for the paused clock, an in-process
//! server, WebSocket client helpers, waits, free ports, and SDK clients for the ECS stand-in.
#![allow(dead_code)]

#[cfg(unix)]
pub mod moto;
#[cfg(unix)]
pub mod process;
pub mod proxy;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use task_protection::protection::{
    BackendError, ProtectionBackend, ProtectionManager, ProtectionState, Settings,
};
use task_protection::server::{self, HttpLimits, Hub, SessionLimits};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
    Settings {
        duration_minutes: 10,
        maintain_percent,
        refresh_percent: 80,
        adjust_interval: Duration::from_secs(10),
        ..Settings::default()
    }
}

/// A server running in this process on a free loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(
        backend: Arc<dyn ProtectionBackend>,
        settings: Settings,
        limits: SessionLimits,
    ) -> Self {
        Self::start_with_max(backend, settings, limits, 10_000).await
    }

    pub async fn start_with_max(
        backend: Arc<dyn ProtectionBackend>,
        settings: Settings,
        limits: SessionLimits,
        max: usize,
    ) -> Self {
        Self::start_with_http(backend, settings, limits, max, HttpLimits::default()).await
    }

    pub async fn start_with_http(
        backend: Arc<dyn ProtectionBackend>,
        settings: Settings,
        limits: SessionLimits,
        max: usize,
        http: HttpLimits,
    ) -> Self {
        let manager = ProtectionManager::start(backend, settings).expect("valid settings");
        let hub = Hub::new(manager, limits, max);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(server::run(
            listener,
            Arc::clone(&hub),
            http,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(10),
        ));
        Self {
            addr,
            hub,
            stop: Some(stop),
            done,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends the shutdown signal and waits for the orderly shutdown to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.done.await.expect("server task")
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects a client and reads its welcome.
pub async fn connect(url: &str) -> (Client, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let welcome = next_text(&mut ws).await;
    (ws, welcome)
}

/// Connects `n` clients at once (each in its own task) and returns them once all are welcomed.
pub async fn connect_many(url: &str, n: usize) -> Vec<Client> {
    let connects: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { connect(&url).await.0 })
        })
        .collect();
    let mut clients = Vec::with_capacity(n);
    for c in connects {
        clients.push(c.await.expect("connect task"));
    }
    clients
}

/// The next text message (skipping pings), failing the test after 10 s of silence.
pub async fn next_text(ws: &mut Client) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends "ping" and expects "pong".
pub async fn ping_pong(ws: &mut Client) {
    ws.send(Message::text("ping")).await.expect("send ping");
    assert_eq!(next_text(ws).await, "pong");
}

/// Sends "ping" and reads past any chat until "pong".
pub async fn ping_pong_skipping_chat(ws: &mut Client) {
    ws.send(Message::text("ping")).await.expect("send ping");
    while next_text(ws).await != "pong" {}
}

/// Reads until the server's close frame and returns its code, failing after 10 s.
pub async fn close_code(ws: &mut Client) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return frame.code.into(),
            Ok(Some(Ok(Message::Close(None)))) => return 1005,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("error before close frame: {e}"),
            Ok(None) => panic!("connection ended without a close frame"),
            Err(_) => panic!("no close frame within 10 s"),
        }
    }
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

/// The Prometheus text served at `http://127.0.0.1:{port}/metrics`.
pub async fn prometheus_text(port: &str) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text")
}

/// The value of the sample `name` (no labels) in Prometheus `text`; panics if it is missing.
pub fn prometheus_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .expect("a number")
}
