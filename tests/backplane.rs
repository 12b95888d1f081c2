//! Chat across tasks through a real `redis-server` (Debian's `redis-server` package) and two real
//! `websocket` processes, each started by the test on free loopback ports: chat reaches the other
//! task exactly once, survives the backplane's death and restart, follows a drained client to the
//! other task, and the fleet's connection count adds up. Without `redis-server` the tests print
//! SKIPPED and how to install it; on CI (`CI=true`) they fail instead.
#![cfg(unix)]

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use support::process::{Proc, TempDir};
use support::{connect, free_port, next_text, ping_pong, Client};
use tokio_tungstenite::tungstenite::Message;

/// The redis-server program: `$REDIS_SERVER`, else `redis-server` on PATH; `None` (the test is
/// skipped, saying so) when there is none, except on CI (`CI=true`), where that fails the test,
/// as for the other outside programs (chromium, moto).
fn redis_program() -> Option<String> {
    let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let found = Command::new(&program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return Some(program);
    }
    let why = format!(
        "`{program}` cannot be run: the chat backplane's tests need a real Redis server. Install \
         it with `apt-get install redis-server` (CI's .ci/run does), or set REDIS_SERVER to one"
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    println!("SKIPPED: {why}");
    None
}

/// A `redis-server` on a loopback port, with no persistence, in a fresh directory.
struct Redis {
    program: String,
    proc: Option<Proc>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    async fn start() -> Option<Self> {
        let program = redis_program()?;
        let dir = TempDir::new("backplane-redis").expect("temp dir");
        let mut redis = Self {
            program,
            proc: None,
            port: free_port(),
            dir,
        };
        redis.restart().await;
        Some(redis)
    }

    /// Starts it (again) on the same port, and waits until it answers PING.
    async fn restart(&mut self) {
        let mut cmd = Command::new(&self.program);
        cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir.0);
        let proc = Proc::spawn("redis-server", cmd, false).expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} within 10 s:\n{}",
                self.port,
                proc.output.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.proc = Some(proc);
    }

    /// Whether PING gets +PONG.
    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL: no goodbye to the clients) and waits until it has exited.
    async fn kill(&mut self) {
        let mut proc = self.proc.take().expect("redis-server running");
        proc.signal("KILL").expect("kill redis-server");
        proc.wait_exit(Duration::from_secs(5)).await.expect("exit");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A TCP pass-through in front of the backplane that can stall: while stalled it forwards
/// nothing either way (a hung or overloaded server, as SIGSTOP would make one, which this
/// machine's sandbox does not honour), and the connections stay open.
struct StallProxy {
    port: u16,
    stalled: tokio::sync::watch::Sender<bool>,
}

impl StallProxy {
    async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stalled, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, watch.clone()));
                tokio::spawn(pump(sr, cw, watch.clone()));
            }
        });
        Self { port, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stalled.wait_for(|s| !*s).await.is_err()
                    || to.write_all(&buf[..n]).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A `websocket` process (a "task") on a free loopback port, healthy.
struct Task {
    proc: Proc,
    port: u16,
}

impl Task {
    /// Starts the binary with `CHAT_BACKPLANE_URL=url` (none if empty), a 1 s fleet refresh, and
    /// `extra`.
    async fn start(url: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_websocket"));
        cmd.env_clear()
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", "info")
            .env("CHAT_BACKPLANE_REFRESH_SECS", "1");
        if !url.is_empty() {
            cmd.env("CHAT_BACKPLANE_URL", url);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("websocket", cmd, false).expect("start websocket");
        let task = Self { proc, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = reqwest::get(task.http_url("/healthz")).await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "websocket did not become healthy:\n{}",
                task.proc.output.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task
    }

    /// Starts one and waits until it is connected to the backplane.
    async fn connected(url: &str) -> Self {
        let task = Self::start(url, &[]).await;
        task.wait_log("Chat backplane connected", 1).await;
        task
    }

    async fn wait_log(&self, needle: &str, n: usize) {
        self.proc
            .output
            .wait_for(needle, n, Duration::from_secs(20))
            .await;
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn status(&self) -> serde_json::Value {
        reqwest::get(self.http_url("/status"))
            .await
            .expect("/status")
            .json()
            .await
            .expect("/status JSON")
    }

    /// Waits until `/status` satisfies `f`, at most `limit`.
    async fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let doc = self.status().await;
            if f(&doc) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; /status: {doc}\n{}",
                self.proc.output.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn say(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.expect("send chat");
}

/// The slowest of `n` ping→pong round trips.
async fn slowest_pong(ws: &mut Client, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        ping_pong(ws).await;
        worst = worst.max(started.elapsed());
    }
    worst
}

/// Sends chat from `from` until `to` receives it (cross-task chat works again after an outage:
/// messages offered before the link is back are dropped by design), at most `limit`.
async fn chat_until_received(from: &mut Client, to: &mut Client, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        say(from, text).await;
        match tokio::time::timeout(Duration::from_millis(500), next_text(to)).await {
            Ok(got) if got == format!("chat: {text}") => return,
            Ok(other) => panic!("expected the chat {text:?}, got {other:?}"),
            Err(_) => assert!(
                Instant::now() < deadline,
                "cross-task chat did not resume within {limit:?}"
            ),
        }
    }
}

#[tokio::test]
async fn chat_reaches_the_other_task_once_and_the_senders_own_task_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = Task::connected(&redis.url()).await;
    let b = Task::connected(&redis.url()).await;
    let (mut a1, _) = connect(&a.ws_url()).await;
    let (mut a2, _) = connect(&a.ws_url()).await;
    let (mut b1, welcome) = connect(&b.ws_url()).await;
    // The welcome counts this task's clients only.
    assert_eq!(welcome, "Welcome! There are 1 connections");

    say(&mut a1, "hello from a").await;
    assert_eq!(next_text(&mut b1).await, "chat: hello from a");
    assert_eq!(next_text(&mut a2).await, "chat: hello from a");
    // B answers after it had A's message: on A's subscription, A's own copy of "hello" (if it
    // were relayed) would come before B's answer. So the next thing A's clients see must be B's
    // answer: a2 did not get "hello" twice, and a1 did not get its own message back.
    say(&mut b1, "hello from b").await;
    assert_eq!(next_text(&mut a2).await, "chat: hello from b");
    assert_eq!(next_text(&mut a1).await, "chat: hello from b");
    // And the same the other way: B does not relay its own message back to b1.
    say(&mut a1, "again from a").await;
    assert_eq!(next_text(&mut b1).await, "chat: again from a");
    assert_eq!(next_text(&mut a2).await, "chat: again from a");
    for ws in [&mut a1, &mut a2, &mut b1] {
        ping_pong(ws).await;
    }
    let doc = a.status().await;
    assert_eq!(doc["backplane"], "connected", "{doc}");
    assert_eq!(doc["backplane_dropped"], 0, "{doc}");
}

#[tokio::test]
async fn a_dead_backplane_leaves_local_chat_and_pongs_alone_and_a_restarted_one_is_rejoined() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    // Task A also serves its metrics, which must show the outage.
    let metrics_port = free_port().to_string();
    let a = Task::start(
        &redis.url(),
        &[
            ("METRICS_PROMETHEUS_PORT", &metrics_port),
            ("METRICS_BIND_ADDRESS", "127.0.0.1"),
        ],
    )
    .await;
    a.wait_log("Chat backplane connected", 1).await;
    let metric = |name: &'static str| {
        let port = metrics_port.clone();
        async move { support::prometheus_value(&support::prometheus_text(&port).await, name) }
    };
    assert_eq!(metric("ecs_task_protection_backplane_connected").await, 1.0);
    let b = Task::connected(&redis.url()).await;
    let (mut a1, _) = connect(&a.ws_url()).await;
    let (mut a2, _) = connect(&a.ws_url()).await;
    let (mut b1, _) = connect(&b.ws_url()).await;
    chat_until_received(&mut a1, &mut b1, "before", Duration::from_secs(5)).await;
    assert_eq!(next_text(&mut a2).await, "chat: before");

    redis.kill().await;
    say(&mut a1, "local only").await;
    assert_eq!(next_text(&mut a2).await, "chat: local only");
    for ws in [&mut a1, &mut a2, &mut b1] {
        let worst = slowest_pong(ws, 20).await;
        assert!(
            worst < Duration::from_millis(200),
            "pong took {worst:?} with redis down"
        );
    }
    a.wait_log("Chat backplane unreachable", 1).await;
    b.wait_log("Chat backplane unreachable", 1).await;
    say(&mut a1, "still local").await;
    assert_eq!(next_text(&mut a2).await, "chat: still local");
    let doc = a.status().await;
    assert_eq!(doc["backplane"], "disconnected", "{doc}");
    assert_eq!(doc["fleet_connections"], serde_json::Value::Null, "{doc}");
    assert!(doc["backplane_dropped"].as_u64().unwrap_or(0) >= 1, "{doc}");
    assert_eq!(metric("ecs_task_protection_backplane_connected").await, 0.0);
    assert!(metric("ecs_task_protection_backplane_dropped_total").await >= 1.0);
    // b1 never got what was said on A while the backplane was down.
    ping_pong(&mut b1).await;

    // Same port, a fresh server with no subscriptions: the tasks find it and subscribe again.
    redis.restart().await;
    a.wait_log("Chat backplane reconnected", 1).await;
    b.wait_log("Chat backplane reconnected", 1).await;
    chat_until_received(&mut a1, &mut b1, "after", Duration::from_secs(10)).await;
    assert_eq!(next_text(&mut a2).await, "chat: after");
    chat_until_received(&mut b1, &mut a2, "b after", Duration::from_secs(10)).await;
    // The outage is logged once, however many tries it took, and so is its end.
    for task in [&a, &b] {
        assert_eq!(task.proc.output.count("Chat backplane unreachable"), 1);
        assert_eq!(task.proc.output.count("Chat backplane reconnected"), 1);
    }
}

#[tokio::test]
async fn a_hung_backplane_delays_no_pong_and_no_local_chat() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let proxy = StallProxy::start(redis.port).await;
    let a = Task::connected(&proxy.url()).await;
    let b = Task::connected(&redis.url()).await;
    let (mut a1, _) = connect(&a.ws_url()).await;
    let (mut a2, _) = connect(&a.ws_url()).await;
    let (mut b1, _) = connect(&b.ws_url()).await;
    chat_until_received(&mut a1, &mut b1, "before", Duration::from_secs(5)).await;
    assert_eq!(next_text(&mut a2).await, "chat: before");

    // Commands and publishes now wait for answers that do not come; sessions never wait on them.
    proxy.stall(true);
    for i in 0..30 {
        say(&mut a1, &format!("while hung {i}")).await;
        assert_eq!(next_text(&mut a2).await, format!("chat: while hung {i}"));
    }
    for ws in [&mut a1, &mut a2] {
        let worst = slowest_pong(ws, 20).await;
        assert!(
            worst < Duration::from_millis(200),
            "pong took {worst:?} with the backplane hung"
        );
    }
    // The link gives up on the hung connection (3 s without an answer) and says so, once.
    a.wait_log("Chat backplane unreachable", 1).await;
    let worst = slowest_pong(&mut a1, 5).await;
    assert!(worst < Duration::from_millis(200), "pong took {worst:?}");
    proxy.stall(false);
    a.wait_log("Chat backplane reconnected", 1).await;
    // The proxy hands the old connection's held bytes over when it lets go, so the batch that was
    // in flight may still arrive (late, once); what came after it was dropped and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    'resumed: loop {
        say(&mut a1, "after").await;
        while let Ok(got) =
            tokio::time::timeout(Duration::from_millis(500), next_text(&mut b1)).await
        {
            match got.as_str() {
                "chat: after" => break 'resumed,
                late if late.starts_with("chat: while hung") => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "cross-task chat did not resume");
    }
    let doc = a.status().await;
    assert!(doc["backplane_dropped"].as_u64().unwrap_or(0) >= 1, "{doc}");
}

#[tokio::test]
async fn a_client_drained_from_one_task_is_in_the_same_room_on_the_other() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = Task::connected(&redis.url()).await;
    let b = Task::connected(&redis.url()).await;
    let (mut stays, _) = connect(&a.ws_url()).await;
    let (mut moves, _) = connect(&a.ws_url()).await;

    // The operator's drain, as in ECS: `websocket drain --pid`.
    let out = Command::new(env!("CARGO_BIN_EXE_websocket"))
        .args(["drain", "--pid", &a.proc.pid().to_string()])
        .output()
        .expect("websocket drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notice = next_text(&mut moves).await;
    assert!(notice.starts_with("server draining:"), "{notice}");
    assert!(next_text(&mut stays).await.starts_with("server draining:"));
    // The page reconnects; A refuses it (503), the load balancer's next pick is B.
    drop(moves);
    match tokio_tungstenite::connect_async(a.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503 from the draining task, got {other:?}"),
    }
    let (mut moved, _) = connect(&b.ws_url()).await;
    chat_until_received(
        &mut stays,
        &mut moved,
        "still one room",
        Duration::from_secs(5),
    )
    .await;
    say(&mut moved, "hi back").await;
    assert_eq!(next_text(&mut stays).await, "chat: hi back");
}

#[test]
fn a_malformed_backplane_url_stops_start_up_naming_the_setting() {
    for bad in [
        "http://127.0.0.1:6379",
        "127.0.0.1:6379",
        "redis://127.0.0.1:port",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_websocket"))
            .env_clear()
            .env("PORT", "0")
            .env("CHAT_BACKPLANE_URL", bad)
            .output()
            .expect("run websocket");
        assert_eq!(out.status.code(), Some(2), "CHAT_BACKPLANE_URL={bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CHAT_BACKPLANE_URL"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_backplane_down_at_start_up_does_not_stop_the_server_and_is_joined_when_it_comes() {
    // A port nobody listens on yet.
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    redis.kill().await;
    let a = Task::start(&redis.url(), &[]).await;
    a.wait_log("Chat backplane unreachable", 1).await;
    let (mut a1, welcome) = connect(&a.ws_url()).await;
    assert_eq!(welcome, "Welcome! There are 1 connections");
    let (mut a2, _) = connect(&a.ws_url()).await;
    say(&mut a1, "local chat works").await;
    assert_eq!(next_text(&mut a2).await, "chat: local chat works");
    assert_eq!(a.status().await["backplane"], "disconnected");

    redis.restart().await;
    a.wait_log("Chat backplane reconnected", 1).await;
    let b = Task::connected(&redis.url()).await;
    let (mut b1, _) = connect(&b.ws_url()).await;
    chat_until_received(&mut a1, &mut b1, "joined late", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn fleet_connections_count_both_tasks_clients_on_both_tasks() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = Task::connected(&redis.url()).await;
    let b = Task::connected(&redis.url()).await;
    let mut on_a = Vec::new();
    for _ in 0..2 {
        on_a.push(connect(&a.ws_url()).await.0);
    }
    let mut on_b = Vec::new();
    for _ in 0..3 {
        on_b.push(connect(&b.ws_url()).await.0);
    }
    for task in [&a, &b] {
        task.wait_status("fleet_connections 5", Duration::from_secs(10), |d| {
            d["fleet_connections"] == 5
        })
        .await;
    }
    assert_eq!(a.status().await["connections"], 2);
    assert_eq!(b.status().await["connections"], 3);
    on_b.clear();
    a.wait_status(
        "fleet_connections 2 once B's clients left",
        Duration::from_secs(10),
        |d| d["fleet_connections"] == 2,
    )
    .await;
    // Without a backplane, the field is null and the state "off".
    drop(on_a);
    let plain = Task::start("", &[]).await;
    let doc = plain.status().await;
    assert_eq!(doc["backplane"], "off", "{doc}");
    assert_eq!(doc["fleet_connections"], serde_json::Value::Null, "{doc}");
    assert_eq!(doc["backplane_dropped"], 0, "{doc}");
}

#[tokio::test]
async fn a_rediss_url_speaks_tls_and_a_failed_handshake_is_an_outage_not_a_crash() {
    // A plain server behind a rediss:// URL: the TLS handshake fails (rustls, with its crypto
    // provider and roots in place, did run), and the server carries on with local chat.
    let Some(redis) = Redis::start().await else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let mut a = Task::start(&url, &[]).await;
    a.wait_log("Chat backplane unreachable", 1).await;
    let (mut a1, _) = connect(&a.ws_url()).await;
    let (mut a2, _) = connect(&a.ws_url()).await;
    say(&mut a1, "over plain local chat").await;
    assert_eq!(next_text(&mut a2).await, "chat: over plain local chat");
    assert_eq!(a.status().await["backplane"], "disconnected");
    assert!(a.proc.exited().is_none(), "{}", a.proc.output.tail(20));
    assert_eq!(
        a.proc.output.count("panicked"),
        0,
        "{}",
        a.proc.output.tail(20)
    );
}

/// A command connection to the test's Redis, to play another task (or a careless or hostile
/// writer) on the backplane.
async fn commands(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server")
}

/// A chat frame as a task with id `origin` publishes it.
fn frame(origin: &str, text: &str) -> String {
    serde_json::json!({ "o": origin, "t": text }).to_string()
}

/// Milliseconds since the Unix epoch, as the tasks stamp their counts.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

#[tokio::test]
async fn a_remote_line_longer_than_this_tasks_limit_reaches_no_client_and_is_counted() {
    // A rolling deployment that raised MAX_MESSAGE_BYTES: A (new) takes 16 KiB, B (old) 4 KiB.
    // Without the check, B's clients' write buffers (4 KiB + 4 KiB) overflow and every one of
    // them is dropped as a client that stopped reading.
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = Task::start(&redis.url(), &[("MAX_MESSAGE_BYTES", "16384")]).await;
    a.wait_log("Chat backplane connected", 1).await;
    let b = Task::connected(&redis.url()).await;
    let (mut a1, _) = connect(&a.ws_url()).await;
    let (mut a2, _) = connect(&a.ws_url()).await;
    let mut on_b = support::connect_many(&b.ws_url(), 5).await;
    chat_until_received(&mut a1, &mut on_b[0], "hello", Duration::from_secs(5)).await;
    assert_eq!(next_text(&mut a2).await, "chat: hello");
    for ws in on_b.iter_mut().skip(1) {
        assert_eq!(next_text(ws).await, "chat: hello");
    }

    let long = "x".repeat(10_000);
    say(&mut a1, &long).await;
    say(&mut a1, "short after").await;
    // A's own clients take it (A's limit allows it); B's get only what follows, and stay.
    assert_eq!(next_text(&mut a2).await, format!("chat: {long}"));
    for ws in on_b.iter_mut() {
        assert_eq!(next_text(ws).await, "chat: short after");
        ping_pong(ws).await;
    }
    let doc = b.status().await;
    assert_eq!(doc["connections"], 5, "{doc}");
    assert_eq!(doc["backplane_refused"], 1, "{doc}");
    assert_eq!(b.proc.output.count("Dropping a client"), 0);
    assert_eq!(b.proc.output.count("over MAX_MESSAGE_BYTES"), 1);
    // The sender's own task refused nothing.
    assert_eq!(a.status().await["backplane_refused"], 0);
}

#[tokio::test]
async fn a_burst_of_remote_chat_is_dropped_and_counted_and_closes_no_client() {
    // Another task (played by the test) publishes 1,000 messages at once: more than a client's
    // queue (CLIENT_QUEUE_MESSAGES, 256). Without a budget for remote chat, every client here
    // falls behind at once and is closed with 1008.
    let Some(redis) = Redis::start().await else {
        return;
    };
    let b = Task::connected(&redis.url()).await;
    let mut clients = support::connect_many(&b.ws_url(), 10).await;
    let mut con = commands(&redis.url()).await;
    let channel = websocket_server::server::backplane::CHANNEL;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("PUBLISH")
            .arg(channel)
            .arg(frame("busy-task", &format!("burst {i}")))
            .ignore();
    }
    pipe.query_async::<()>(&mut con).await.expect("publish");
    b.wait_status("backplane_refused", Duration::from_secs(10), |d| {
        d["backplane_refused"].as_u64().unwrap_or(0) > 0
    })
    .await;
    // Once the burst is over the budget refills, and remote chat flows again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(frame("busy-task", "after"))
        .query_async::<()>(&mut con)
        .await
        .expect("publish");
    let mut delivered = Vec::new();
    for ws in clients.iter_mut() {
        let mut got = 0u64;
        loop {
            let text = next_text(ws).await;
            if text == "chat: after" {
                break;
            }
            assert!(text.starts_with("chat: burst "), "{text}");
            got += 1;
        }
        ping_pong(ws).await;
        delivered.push(got);
    }
    let doc = b.status().await;
    assert_eq!(doc["connections"], 10, "{doc}");
    let refused = doc["backplane_refused"].as_u64().unwrap_or(0);
    println!(
        "each client got {} of the burst; {refused} refused",
        delivered[0]
    );
    // Every client got the same part of the burst: half its queue (128), plus what the budget
    // refilled while the burst came in, never a full queue; the rest was counted.
    assert!(
        delivered.iter().all(|&d| d == delivered[0]),
        "{delivered:?}"
    );
    assert!(delivered[0] >= 128 && delivered[0] < 256, "{delivered:?}");
    assert_eq!(refused + delivered[0], 1000, "{doc}");
    assert_eq!(b.proc.output.count("too slow"), 0);
}

/// Chat crosses between the two tasks both ways, each message within a second.
async fn chat_crosses(a1: &mut Client, b1: &mut Client, tag: &str) {
    for i in 0..10 {
        let (from, to, dir) = if i % 2 == 0 {
            (&mut *a1, &mut *b1, "a→b")
        } else {
            (&mut *b1, &mut *a1, "b→a")
        };
        let text = format!("{tag} {dir} {i}");
        say(from, &text).await;
        match tokio::time::timeout(Duration::from_secs(1), next_text(to)).await {
            Ok(got) => assert_eq!(got, format!("chat: {text}")),
            Err(_) => panic!("{text:?} did not cross within 1 s"),
        }
    }
}

#[tokio::test]
async fn errors_answering_the_fleet_count_leave_the_link_and_cross_task_chat_up() {
    // Each of these made the count command fail, which took the link down; it reconnected at
    // once and failed again, so cross-task chat worked a fraction of the time.
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = Task::connected(&redis.url()).await;
    let b = Task::connected(&redis.url()).await;
    let (mut a1, _) = connect(&a.ws_url()).await;
    let (mut b1, _) = connect(&b.ws_url()).await;
    chat_until_received(&mut a1, &mut b1, "before", Duration::from_secs(5)).await;
    let mut con = commands(&redis.url()).await;
    let key = websocket_server::server::backplane::FLEET_KEY;
    let run = |args: Vec<Vec<u8>>| {
        let mut cmd = redis::Cmd::new();
        for arg in args {
            cmd.arg(arg);
        }
        cmd
    };
    let settle = Duration::from_millis(3500); // three refreshes (CHAT_BACKPLANE_REFRESH_SECS=1)
    let both_connected = |tag: &'static str| {
        let (a, b) = (&a, &b);
        async move {
            for task in [a, b] {
                let doc = task.status().await;
                assert_eq!(doc["backplane"], "connected", "{tag}: {doc}");
                assert_eq!(
                    task.proc.output.count("Chat backplane unreachable"),
                    0,
                    "{tag}: {}",
                    task.proc.output.tail(20)
                );
            }
        }
    };

    // 1. Fields that are not this program's: a value that is not UTF-8, a name that is not.
    run(vec![
        b"HSET".to_vec(),
        key.into(),
        b"odd-value".to_vec(),
        b"\xff\xfe 1".to_vec(),
        b"\xff\xfe".to_vec(),
        b"1 99999999999999".to_vec(),
    ])
    .query_async::<()>(&mut con)
    .await
    .expect("HSET");
    tokio::time::sleep(settle).await;
    both_connected("unreadable fields").await;
    chat_crosses(&mut a1, &mut b1, "unreadable fields").await;
    for task in [&a, &b] {
        task.wait_status("fleet_connections 2", Duration::from_secs(5), |d| {
            d["fleet_connections"] == 2
        })
        .await;
    }

    // 2. The key turned into a string: every hash command answers WRONGTYPE.
    run(vec![b"DEL".to_vec(), key.into()])
        .query_async::<()>(&mut con)
        .await
        .expect("DEL");
    run(vec![b"SET".to_vec(), key.into(), b"not a hash".to_vec()])
        .query_async::<()>(&mut con)
        .await
        .expect("SET");
    tokio::time::sleep(settle).await;
    both_connected("a string key").await;
    chat_crosses(&mut a1, &mut b1, "a string key").await;
    for task in [&a, &b] {
        let doc = task.status().await;
        assert_eq!(doc["fleet_connections"], serde_json::Value::Null, "{doc}");
    }
    run(vec![b"DEL".to_vec(), key.into()])
        .query_async::<()>(&mut con)
        .await
        .expect("DEL");

    // 3. Out of memory: every write answers OOM.
    for value in ["1", "0"] {
        run(vec![
            b"CONFIG".to_vec(),
            b"SET".to_vec(),
            b"maxmemory".to_vec(),
            value.into(),
        ])
        .query_async::<()>(&mut con)
        .await
        .expect("CONFIG SET maxmemory");
        tokio::time::sleep(settle).await;
        both_connected("out of memory").await;
        chat_crosses(&mut a1, &mut b1, "out of memory").await;
    }

    // 4. A read-only replica: every write answers READONLY.
    let nobody = free_port().to_string();
    for args in [
        vec!["REPLICAOF", "127.0.0.1", nobody.as_str()],
        vec!["REPLICAOF", "NO", "ONE"],
    ] {
        run(args.into_iter().map(|a| a.as_bytes().to_vec()).collect())
            .query_async::<()>(&mut con)
            .await
            .expect("REPLICAOF");
        tokio::time::sleep(settle).await;
        both_connected("read-only replica").await;
        chat_crosses(&mut a1, &mut b1, "read-only replica").await;
    }

    // And the count works again once the backplane does.
    for task in [&a, &b] {
        // Each trigger did make the count fail (the test would prove nothing otherwise).
        for code in ["WRONGTYPE", "OOM", "read only replica"] {
            assert!(
                task.proc.output.count(code) >= 1,
                "no {code}:\n{}",
                task.proc.output.tail(30)
            );
        }
        task.wait_status("fleet_connections 2 again", Duration::from_secs(5), |d| {
            d["fleet_connections"] == 2
        })
        .await;
        assert_eq!(task.proc.output.count("Chat backplane connected"), 1);
        // Each trouble is logged when it starts, not at every refresh.
        let lines = task.proc.output.count("fleet count");
        assert!(
            (1..=8).contains(&lines),
            "{lines} lines:\n{}",
            task.proc.output.tail(30)
        );
    }
}

#[tokio::test]
async fn an_absurd_count_or_a_far_expiry_in_the_fleet_hash_is_not_believed() {
    // Anyone who can write to the backplane could add any count with any expiry, and every task
    // believed it for as long as the expiry said.
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = Task::connected(&redis.url()).await;
    let (_a1, _) = connect(&a.ws_url()).await;
    let mut con = commands(&redis.url()).await;
    let key = websocket_server::server::backplane::FLEET_KEY;
    let now = unix_ms();
    let fields = [
        (
            "forever",
            format!("4294967295 {}", now + 10 * 365 * 86_400_000),
        ),
        ("huge", format!("4294967295 {}", now + 20_000)),
        ("an-hour", format!("5 {}", now + 3_600_000)),
        ("honest", format!("7 {}", now + 20_000)),
    ];
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (field, value) in &fields {
        cmd.arg(*field).arg(value);
    }
    cmd.query_async::<()>(&mut con).await.expect("HSET");
    a.wait_status("fleet_connections 8", Duration::from_secs(10), |d| {
        d["fleet_connections"] == 8
    })
    .await;
    // And it stays so: the absurd fields are gone from the hash, the honest one is kept.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(a.status().await["fleet_connections"], 8);
    let left: Vec<String> = redis::cmd("HKEYS")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("HKEYS");
    assert!(
        !left
            .iter()
            .any(|f| ["forever", "huge", "an-hour"].contains(&f.as_str())),
        "{left:?}"
    );
    assert!(left.iter().any(|f| f == "honest"), "{left:?}");
}

#[tokio::test]
async fn every_live_tasks_count_is_readable_by_task_id_this_tasks_included() {
    // What the drain watcher will read to pick the least busy task on a scale-in: the backplane's
    // per-task counts, in process, from a server with a backplane.
    use websocket_server::server::backplane::{self, BackplaneSettings};
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let server = support::TestServer::start(
        support::FakeBackend::new(),
        support::settings(0),
        websocket_server::server::SessionLimits::default(),
    )
    .await;
    let mut settings = BackplaneSettings::new(redis.url().parse().expect("URL"));
    settings.origin =
        backplane::origin_from_task_arn("arn:aws:ecs:us-east-1:123456789012:task/demo/0123abcd")
            .expect("task id");
    settings.refresh = Duration::from_secs(1);
    let mut counts = backplane::start(&server.hub, settings);
    // Unknown until the first refresh.
    assert!(counts.borrow_and_update().is_empty());
    let (_c1, _) = connect(&server.ws_url()).await;
    let (_c2, _) = connect(&server.ws_url()).await;
    let mut con = commands(&redis.url()).await;
    let now = unix_ms();
    redis::cmd("HSET")
        .arg(backplane::FLEET_KEY)
        .arg("other")
        .arg(format!("5 {}", now + 20_000))
        .arg("stopped")
        .arg(format!("9 {}", now - 1))
        .arg("absurd")
        .arg(format!("4294967295 {}", now + 20_000))
        .query_async::<()>(&mut con)
        .await
        .expect("HSET");
    let want =
        std::collections::BTreeMap::from([("0123abcd".to_string(), 2), ("other".to_string(), 5)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while **counts.borrow_and_update() != want {
        let left = deadline.saturating_duration_since(Instant::now());
        let changed = tokio::time::timeout(left, counts.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "the counts never became {want:?}: {:?}",
            counts.borrow()
        );
    }
    // Unknown again while the backplane is unreachable.
    redis.kill().await;
    tokio::time::timeout(Duration::from_secs(10), counts.wait_for(|c| c.is_empty()))
        .await
        .expect("the counts are forgotten when the backplane goes")
        .expect("the link is still running");
}

/// A TCP pass-through in front of the backplane that cuts every connection `after` it opened: a
/// backplane that takes connections and then fails them (as a proxy or a server in trouble
/// might). Counts the connections it took.
struct CuttingProxy {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    async fn start(upstream_port: u16, after: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::time::timeout(
                        after,
                        tokio::io::copy_bidirectional(&mut client, &mut server),
                    )
                    .await;
                    // Both sockets are dropped here: the connection is cut.
                });
            }
        });
        Self { port, accepted }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn a_backplane_that_cuts_every_connection_at_once_is_retried_with_a_growing_wait() {
    // Each connection works for 300 ms and is then cut. Starting the back-off over at every
    // successful connect made the link knock about twice a second forever (61 log lines per
    // 20 s in the review); it must go on backing off until a connection lasts.
    let Some(redis) = Redis::start().await else {
        return;
    };
    let proxy = CuttingProxy::start(redis.port, Duration::from_millis(300)).await;
    let a = Task::connected(&proxy.url()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let reconnects = a.proc.output.count("Chat backplane reconnected");
    let connections = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
    println!("{reconnects} reconnects, {connections} connections in 10 s");
    // Waits of 0.5, 1, 2, 4 and 8 s (each × 0.5–1) leave room for at most 6 in 10 s.
    assert!(
        (2..=6).contains(&reconnects),
        "{reconnects} reconnects in 10 s:\n{}",
        a.proc.output.tail(30)
    );
    assert!(connections <= 2 * 7, "{connections} connections in 10 s");
}
