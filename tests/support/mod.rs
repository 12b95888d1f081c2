//! Shared pieces of the integration tests: a scripted backend for the paused clock, an in-process
//! server, WebSocket client helpers, waits, free ports, and SDK clients for the ECS stand-in.
#![allow(dead_code)]

#[cfg(unix)]
pub mod moto;
#[cfg(unix)]
pub mod process;
pub mod prometheus;
pub mod proxy;

#[path = "../../crates/ecs-task-protection/tests/support/mod.rs"]
mod common;
pub use common::*;
#[allow(unused_imports)]
pub use prometheus::{prometheus_text, prometheus_value};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ecs_task_protection::protection::{ProtectionBackend, ProtectionManager, Settings};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use websocket_server::server::{self, HttpLimits, Hub, SessionLimits};

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
