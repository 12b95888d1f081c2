//! The `backplane` mode: chat across tasks through a Redis backplane, next to the in-process room,
//! in one run on loopback. It starts its own `redis-server` (no persistence) and three release
//! servers: A and B share the backplane (`CHAT_BACKPLANE_URL`), C has none. All three run on the
//! local protection backend (no ECS calls), with `CHAT_MESSAGES_PER_SEC=0` (no per-client limit)
//! and `CLIENT_QUEUE_MESSAGES=65536` (a listener that falls behind for a moment is not closed).
//!
//! 1. latency: one sender on A sends `--rate` messages a second for `--latency-secs`; a listener
//!    on A (the in-process room) and one on B (through the backplane) time each message;
//! 2. throughput: the sender sends `--burst` messages as fast as it can; both listeners count
//!    what arrives and when the last one did;
//! 3. pong under chat load: `--pingers` clients in closed loop (ping, wait for pong) for
//!    `--seconds` while `--senders` clients chat `--chat-rate` messages a second in all to
//!    `--listeners` more, first on C (no backplane), then on A (backplane).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{percentile, round};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The mode's settings.
#[derive(clap::Args, Clone)]
pub(crate) struct BackplaneArgs {
    /// Chat messages a second in the latency phase.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Messages sent as fast as possible in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    burst: u32,
    /// Seconds of each pong-under-load run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Clients in closed ping→pong loop in the pong phase.
    #[arg(long, default_value_t = 50)]
    pingers: usize,
    /// Chatting clients in the pong phase.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Clients that only read the chat in the pong phase.
    #[arg(long, default_value_t = 50)]
    listeners: usize,
    /// Chat messages a second, all senders together, in the pong phase.
    #[arg(long, default_value_t = 500)]
    chat_rate: u32,
    /// The server binary.
    #[arg(long, default_value = "target/release/websocket")]
    server_bin: PathBuf,
    /// The Redis server program.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
}

/// A child killed when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

async fn start_redis(program: &str, dir: &std::path::Path) -> Result<(Spawned, u16), String> {
    let port = free_port()?;
    let child = Command::new(program)
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program} (apt-get install redis-server): {e}"))?;
    let ready_by = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > ready_by {
            return Err("redis-server did not listen within 10 s".into());
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok((Spawned(child), port))
}

async fn start_server(bin: &PathBuf, backplane: Option<&str>) -> Result<(Spawned, u16), String> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .env("PROTECTION_BACKEND", "local")
        .env("CHAT_MESSAGES_PER_SEC", "0")
        .env("CLIENT_QUEUE_MESSAGES", "65536")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(url) = backplane {
        cmd.env("CHAT_BACKPLANE_URL", url);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let server = Spawned(child);
    let want = if backplane.is_some() {
        "connected"
    } else {
        "off"
    };
    let ready_by = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(doc) = status(port).await {
            if doc["backplane"] == want {
                return Ok((server, port));
            }
        }
        if Instant::now() > ready_by {
            return Err(format!("server on {port} not ready (backplane {want})"));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

async fn status(port: u16) -> Result<Value, String> {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

async fn open(port: u16) -> Result<Ws, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .map_err(|e| e.to_string())?;
    // The welcome.
    timeout(Duration::from_secs(10), ws.next())
        .await
        .map_err(|_| "no welcome".to_string())?;
    Ok(ws)
}

/// Microseconds since `t0`.
fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// What a listener saw: latencies (µs) and when the last message arrived (µs since t0).
#[derive(Default)]
struct Heard {
    latencies: Vec<u32>,
    last_at: u64,
}

/// Reads `chat: b <sent µs>` lines until `stop` turns true.
fn listen(
    mut ws: Ws,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Heard> {
    tokio::spawn(async move {
        let mut heard = Heard::default();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(sent) = t.strip_prefix("chat: b ").and_then(|s| s.parse::<u64>().ok()) {
                            let now = micros(t0);
                            heard.latencies.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                            heard.last_at = now;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
        heard
    })
}

fn summary(heard: &mut Heard, sent: u32) -> Value {
    heard.latencies.sort_unstable();
    json!({
        "received": heard.latencies.len(),
        "sent": sent,
        "p50_ms": percentile(&heard.latencies, 50.0),
        "p99_ms": percentile(&heard.latencies, 99.0),
        "max_ms": heard.latencies.last().map(|m| f64::from(*m) / 1000.0),
    })
}

/// Phases 1 and 2 against A (sender and listener) and B (listener).
async fn latency_and_throughput(args: &BackplaneArgs, a: u16, b: u16) -> Result<Value, String> {
    let t0 = Instant::now();
    let mut sender = open(a).await?;
    // Phase 1: paced.
    let (stop, stopped) = watch::channel(false);
    let on_a = listen(open(a).await?, t0, stopped.clone());
    let on_b = listen(open(b).await?, t0, stopped);
    sleep(Duration::from_millis(300)).await;
    let total = args.rate * args.latency_secs as u32;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for _ in 0..total {
        tick.tick().await;
        let text = format!("b {}", micros(t0));
        sender
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
    }
    sleep(Duration::from_secs(1)).await;
    let _ = stop.send(true);
    let (mut heard_a, mut heard_b) = (
        on_a.await.map_err(|e| e.to_string())?,
        on_b.await.map_err(|e| e.to_string())?,
    );
    let latency = json!({
        "rate_per_sec": args.rate,
        "in_process": summary(&mut heard_a, total),
        "backplane": summary(&mut heard_b, total),
    });
    println!("backplane latency at {}/s: {latency}", args.rate);

    // Phase 2: as fast as possible.
    let (stop, stopped) = watch::channel(false);
    let on_a = listen(open(a).await?, t0, stopped.clone());
    let on_b = listen(open(b).await?, t0, stopped);
    sleep(Duration::from_millis(300)).await;
    let dropped_before = status(a).await?["backplane_dropped"].as_u64();
    let start = micros(t0);
    for _ in 0..args.burst {
        let text = format!("b {}", micros(t0));
        sender
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
    }
    let sent_in = (micros(t0) - start) as f64 / 1e6;
    sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    let (heard_a, heard_b) = (
        on_a.await.map_err(|e| e.to_string())?,
        on_b.await.map_err(|e| e.to_string())?,
    );
    let dropped_after = status(a).await?["backplane_dropped"].as_u64();
    let rate = |h: &Heard| {
        let secs = (h.last_at.saturating_sub(start)) as f64 / 1e6;
        (secs > 0.0).then(|| round(h.latencies.len() as f64 / secs, 0))
    };
    let throughput = json!({
        "sent": args.burst,
        "send_secs": round(sent_in, 3),
        "in_process": {"received": heard_a.latencies.len(), "per_sec": rate(&heard_a)},
        "backplane": {"received": heard_b.latencies.len(), "per_sec": rate(&heard_b)},
        "backplane_dropped": dropped_after.zip(dropped_before).map(|(x, y)| x - y),
    });
    println!("backplane throughput: {throughput}");
    let _ = sender.close(None).await;
    Ok(json!({"latency": latency, "throughput": throughput}))
}

/// Phase 3 on one server: pong latencies under chat load.
async fn pong_under_chat(args: &BackplaneArgs, port: u16) -> Result<Value, String> {
    let (stop, stopped) = watch::channel(false);
    let mut readers = Vec::new();
    for _ in 0..args.listeners {
        let mut ws = open(port).await?;
        let mut stopped = stopped.clone();
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    f = ws.next() => if !matches!(f, Some(Ok(_))) { break },
                }
            }
        }));
    }
    let mut senders = Vec::new();
    let per_sender = (args.chat_rate as usize / args.senders.max(1)).max(1) as u32;
    for _ in 0..args.senders {
        let mut ws = open(port).await?;
        let mut stopped = stopped.clone();
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sender);
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {
                        if ws.send(Message::text("load chat line")).await.is_err() { break }
                        sent += 1;
                    }
                    // Drain what the room sends this client too.
                    f = ws.next() => if !matches!(f, Some(Ok(_))) { break },
                }
            }
            sent
        }));
    }
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut pingers = Vec::new();
    for _ in 0..args.pingers {
        let mut ws = open(port).await?;
        pingers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let started = Instant::now();
                if ws.send(Message::text("ping")).await.is_err() {
                    break;
                }
                loop {
                    match timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "pong" => {
                            lat.push(started.elapsed().as_micros() as u32);
                            break;
                        }
                        Ok(Some(Ok(_))) => continue,
                        _ => return lat,
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for p in pingers {
        lat.extend(p.await.map_err(|e| e.to_string())?);
    }
    let _ = stop.send(true);
    let mut chat_sent = 0;
    for s in senders {
        chat_sent += s.await.unwrap_or(0);
    }
    for r in readers {
        let _ = r.await;
    }
    lat.sort_unstable();
    let doc = status(port).await?;
    Ok(json!({
        "round_trips": lat.len(),
        "p50_ms": percentile(&lat, 50.0),
        "p99_ms": percentile(&lat, 99.0),
        "max_ms": lat.last().map(|m| f64::from(*m) / 1000.0),
        "chat_sent": chat_sent,
        "chat_dropped": doc["chat_dropped"],
        "backplane": doc["backplane"],
        "backplane_dropped": doc["backplane_dropped"],
    }))
}

/// Runs the three phases and returns the result line's figures.
pub(crate) async fn backplane(args: &BackplaneArgs) -> Result<Value, String> {
    let dir = std::env::temp_dir().join(format!("load-backplane-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (_redis, redis_port) = start_redis(&args.redis_server, &dir).await?;
    let url = format!("redis://127.0.0.1:{redis_port}");
    let (_a, a) = start_server(&args.server_bin, Some(&url)).await?;
    let (_b, b) = start_server(&args.server_bin, Some(&url)).await?;
    let (_c, c) = start_server(&args.server_bin, None).await?;
    println!("backplane: redis {redis_port}, A {a} and B {b} with the backplane, C {c} without");
    let chat = latency_and_throughput(args, a, b).await?;
    let without = pong_under_chat(args, c).await?;
    println!("pong under chat, no backplane (C): {without}");
    let with = pong_under_chat(args, a).await?;
    println!("pong under chat, backplane (A): {with}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "mode": "backplane",
        "chat": chat,
        "pong_under_chat": {
            "pingers": args.pingers, "senders": args.senders, "listeners": args.listeners,
            "chat_rate": args.chat_rate, "seconds": args.seconds,
            "no_backplane": without, "backplane": with,
        },
    }))
}
