//! Load tool for the WebSocket server (issue 5): the figures in `BENCHMARKS.md` come from here.
//!
//! ```text
//! cargo build --release -p load --bin load --bin websocket
//! target/release/load hold --clients 10000
//! target/release/load storm --clients 1000
//! target/release/load churn --cycles 200
//! target/release/load pingpong --clients 1000 --seconds 10
//! target/release/load outage --clients 20 --seconds 30
//! target/release/load summarize target/bench/*.jsonl   # median (min–max) per figure
//! ```
//!
//! By default each run starts its own server: a stand-in ECS agent endpoint in this process
//! (`ecs_stand_in::StandInAgent`), free loopback ports, and the release binary
//! `target/release/websocket` (`--server-bin`) with `RUST_LOG=warn` and the protection settings the
//! mode needs; the server is stopped (SIGTERM, then SIGKILL after 20 s) at the end, also on error.
//! `--url ws://127.0.0.1:PORT/ws` targets a running server instead (`--agent
//! http://127.0.0.1:PORT/_calls` for the agent's calls, `--server-pid` for its RSS and CPU).
//!
//! This tool runs on one thread by default (`--threads`): on a 2-core machine shared with the
//! server's two workers, more load threads raise throughput but lengthen the latency tail.
//!
//! Output: human-readable lines, then one JSON line starting with `{"mode":` holding every figure.
//! The tool reports; it does not judge (the exit status is 0 whenever the run completed).
//! Loopback only; every loop is bounded in count and time, and the whole run by `--deadline-secs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use ecs_stand_in::{Fault, StandInAgent};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the server tells every client once when ECS rejects protection.
const NOTICE: &str = task_protection::server::REJECTED_NOTICE;

#[derive(Parser)]
#[command(
    name = "load",
    about = "Load tool for the WebSocket server (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open N idle connections; report server RSS per connection and how many still answer a ping.
    Hold {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Seconds to wait after connecting before sampling RSS.
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
        #[command(flatten)]
        common: Common,
    },
    /// N clients connect at once, then all close: count protect/release calls.
    Storm {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[command(flatten)]
        common: Common,
    },
    /// One client at a time: connect, welcome, close, K times; count PUT calls and check the
    /// final state after the hold-over.
    Churn {
        #[arg(long, default_value_t = 200)]
        cycles: usize,
        #[command(flatten)]
        common: Common,
    },
    /// C clients in closed loop (ping, wait for pong) for T seconds.
    Pingpong {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of round trips before the measured window (not counted).
        #[arg(long, default_value_t = 1)]
        warmup_secs: u64,
        #[command(flatten)]
        common: Common,
    },
    /// The agent answers HTTP 500 for the whole window while the clients are connected; then it
    /// recovers. Needs the spawned server (the stand-in agent is in this process).
    Outage {
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The longest wait for protection after the agent recovers.
        #[arg(long, default_value_t = 90)]
        recovery_timeout_secs: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Reads files of JSON result lines (one file per benchmark) and prints, for every figure,
    /// the median with min–max.
    Summarize { files: Vec<PathBuf> },
}

#[derive(Args, Clone)]
struct Common {
    /// Target a running server (ws://127.0.0.1:PORT/ws) instead of spawning one.
    #[arg(long)]
    url: Option<String>,
    /// With --url: the stand-in agent's call list (http://127.0.0.1:PORT/_calls).
    #[arg(long)]
    agent: Option<String>,
    /// With --url: the server's process id (for RSS and CPU figures).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server binary to spawn.
    #[arg(long, default_value = "target/release/websocket")]
    server_bin: PathBuf,
    /// Extra KEY=VALUE environment for the spawned server (repeatable), e.g. MAX_MESSAGE_BYTES=1024.
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// Write the spawned server's pid here (so a supervising script can make sure it is gone).
    #[arg(long)]
    server_pid_file: Option<PathBuf>,
    /// Delay of every stand-in agent answer, in ms (0: a healthy, fast agent).
    #[arg(long, default_value_t = 0)]
    agent_delay_ms: u64,
    /// Worker threads of this tool's runtime (the server has its own; the machine has few cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connections being opened at once (storm ignores this: all open at once).
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Client read buffer, bytes (tungstenite's default is 128 KiB; small keeps this tool lean).
    #[arg(long, default_value_t = 4096)]
    client_read_buffer: usize,
    /// The whole run must end within this many seconds.
    #[arg(long, default_value_t = 300)]
    deadline_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.mode {
        Mode::Hold { common, .. }
        | Mode::Storm { common, .. }
        | Mode::Churn { common, .. }
        | Mode::Pingpong { common, .. }
        | Mode::Outage { common, .. } => common.clone(),
        Mode::Summarize { files } => return summarize(files),
    };
    let load_at_start = loadavg();
    let mut builder = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(common.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let mut target = match Target::start(&common, &cli.mode).await {
            Ok(t) => t,
            Err(e) => return Err(format!("cannot start: {e}")),
        };
        let deadline = Duration::from_secs(common.deadline_secs);
        let outcome = timeout(deadline, run_mode(&cli.mode, &common, &target)).await;
        let stopped = target.stop().await;
        match outcome {
            Err(_) => Err(format!(
                "the run did not finish within --deadline-secs {}",
                common.deadline_secs
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(mut report)) => {
                if let Some(obj) = report.as_object_mut() {
                    obj.insert("server_exit".into(), json!(stopped));
                    obj.insert("machine".into(), machine());
                    obj.insert("loadavg_at_start".into(), json!(load_at_start));
                }
                println!("{}", result_line(report));
                Ok(())
            }
        }
    });
    // Client tasks still running are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_mode(mode: &Mode, common: &Common, target: &Target) -> Result<Value, String> {
    match mode {
        Mode::Summarize { .. } => Err("summarize runs no load".into()),
        &Mode::Hold {
            clients,
            settle_secs,
            ..
        } => hold(common, target, clients, settle_secs).await,
        &Mode::Storm { clients, .. } => storm(common, target, clients).await,
        &Mode::Churn { cycles, .. } => churn(common, target, cycles).await,
        &Mode::Pingpong {
            clients,
            seconds,
            warmup_secs,
            ..
        } => pingpong(common, target, clients, seconds, warmup_secs).await,
        &Mode::Outage {
            clients,
            seconds,
            recovery_timeout_secs,
            ..
        } => outage(common, target, clients, seconds, recovery_timeout_secs).await,
    }
}

// ---------------------------------------------------------------------------------------------
// The target: a spawned server with an in-process stand-in agent, or a running one.

/// One recorded agent call, as the stand-in reports it.
#[derive(Debug, Clone)]
struct AgentCall {
    method: String,
    enabled: Option<bool>,
    ok: bool,
}

impl AgentCall {
    fn is_put(&self) -> bool {
        self.method == "PUT"
    }
}

struct Target {
    ws_url: String,
    addr: SocketAddr,
    http: reqwest::Client,
    agent_url: Option<String>,
    agent: Option<StandInAgent>,
    server: Option<tokio::process::Child>,
    pid: Option<u32>,
}

impl Target {
    async fn start(common: &Common, mode: &Mode) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        if let Some(url) = &common.url {
            let addr = loopback_addr(url)?;
            return Ok(Self {
                ws_url: url.clone(),
                addr,
                http,
                agent_url: common.agent.clone(),
                agent: None,
                server: None,
                pid: common.server_pid,
            });
        }
        let agent = StandInAgent::start()
            .await
            .map_err(|e| format!("stand-in agent: {e}"))?;
        if common.agent_delay_ms > 0 {
            agent.set_fault(Fault::Slow(Duration::from_millis(common.agent_delay_ms)));
        }
        let port = free_port()?;
        let mut env: Vec<(String, String)> = vec![
            ("PORT".into(), port.to_string()),
            ("BIND_ADDRESS".into(), "127.0.0.1".into()),
            ("ECS_AGENT_URI".into(), agent.uri()),
            ("PROTECTION_BACKEND".into(), "agent".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        match mode {
            // The release must not be held over: the storm counts it.
            Mode::Storm { .. } => env.push(("PROTECTION_MAINTAIN_PERCENT".into(), "0".into())),
            // A 1-minute duration with the default 10 % maintain: a 6 s hold-over.
            Mode::Churn { .. } => {
                env.push(("PROTECTION_DURATION_MINUTES".into(), "1".into()));
                env.push(("PROTECTION_MAINTAIN_PERCENT".into(), "10".into()));
            }
            _ => {}
        }
        for kv in &common.server_env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--server-env {kv}: expected KEY=VALUE"))?;
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        // The server's log lines go to this tool's stderr, keeping stdout for the figures.
        let stdout_to_stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
            .try_clone_to_owned()
            .map_err(|e| format!("stderr: {e}"))?;
        let child = tokio::process::Command::new(&common.server_bin)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(stdout_to_stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} (build it with `cargo build --release --bin websocket`): {e}",
                    common.server_bin.display()
                )
            })?;
        let pid = child.id();
        if let (Some(path), Some(pid)) = (&common.server_pid_file, pid) {
            let _ = std::fs::write(path, format!("{pid}\n"));
        }
        let ws_url = format!("ws://127.0.0.1:{port}/ws");
        let addr = loopback_addr(&ws_url)?;
        let target = Self {
            ws_url,
            addr,
            http,
            agent_url: None,
            agent: Some(agent),
            server: Some(child),
            pid,
        };
        // Ready when /healthz answers (at most 15 s).
        let ready_by = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = target.http.get(target.http_url("/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > ready_by {
                return Err("the server did not answer /healthz within 15 s".into());
            }
            sleep(Duration::from_millis(50)).await;
        }
        println!(
            "server pid {} on {} (agent stand-in {}), env {:?}",
            pid.unwrap_or(0),
            target.ws_url,
            target.agent.as_ref().map(|a| a.uri()).unwrap_or_default(),
            env.iter()
                .filter(|(k, _)| k != "ECS_AGENT_URI")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        );
        Ok(target)
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the spawned server: SIGTERM, then SIGKILL after 20 s. Returns how it ended.
    async fn stop(&mut self) -> Option<String> {
        let mut child = self.server.take()?;
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) => Some(status.to_string()),
            Ok(Err(e)) => Some(format!("wait failed: {e}")),
            Err(_) => {
                let _ = child.start_kill();
                let _ = timeout(Duration::from_secs(5), child.wait()).await;
                Some("killed after 20 s".into())
            }
        }
    }

    /// The `/status` document.
    async fn status(&self) -> Result<Value, String> {
        let r = self
            .http
            .get(self.http_url("/status"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json::<Value>().await.map_err(|e| e.to_string())
    }

    async fn connections(&self) -> Option<u64> {
        self.status()
            .await
            .ok()
            .and_then(|s| s["connections"].as_u64())
    }

    /// Waits (polling /status every 50 ms, at most `limit`) until `cond` holds; the time it took.
    async fn wait_status(
        &self,
        limit: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(s) = self.status().await {
                if cond(&s) {
                    return Some(start.elapsed());
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The agent's calls so far, if they can be known.
    async fn calls(&self) -> Option<Vec<AgentCall>> {
        if let Some(agent) = &self.agent {
            return Some(
                agent
                    .calls()
                    .into_iter()
                    .map(|c| AgentCall {
                        method: c.method,
                        enabled: c.enabled,
                        ok: c.ok,
                    })
                    .collect(),
            );
        }
        let url = self.agent_url.as_ref()?;
        let list: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        Some(
            list.as_array()?
                .iter()
                .map(|c| AgentCall {
                    method: c["method"].as_str().unwrap_or_default().to_string(),
                    enabled: c["enabled"].as_bool(),
                    ok: c["ok"].as_bool().unwrap_or(false),
                })
                .collect(),
        )
    }

    async fn puts(&self) -> Option<Vec<AgentCall>> {
        Some(
            self.calls()
                .await?
                .into_iter()
                .filter(AgentCall::is_put)
                .collect(),
        )
    }

    /// The PUT calls after the first `before` (none if the calls cannot be read).
    async fn puts_since(&self, before: usize) -> Vec<AgentCall> {
        self.puts()
            .await
            .unwrap_or_default()
            .into_iter()
            .skip(before)
            .collect()
    }

    /// Whether the agent holds protection now (stand-in in-process: its own state; remote: the
    /// last successful PUT).
    async fn agent_protected(&self) -> Option<bool> {
        if let Some(agent) = &self.agent {
            return Some(agent.is_protected());
        }
        let puts = self.puts().await?;
        Some(
            puts.iter()
                .rev()
                .find(|c| c.ok)
                .and_then(|c| c.enabled)
                .unwrap_or(false),
        )
    }
}

fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("the URL must start with ws://")?;
    let host = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| format!("{host}: {e} (give an IP:PORT)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: this tool only loads loopback"
        ));
    }
    Ok(addr)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------------------------------------
// /proc figures.

/// A field of /proc/<pid>/status in kB (VmRSS, RssAnon, VmHWM, Threads...).
fn proc_status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime (14) and stime (15) are fields[11] and fields[12].
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Machine-wide CPU time from /proc/stat, in clock ticks: (busy, steal).
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some((busy, *v.get(7).unwrap_or(&0)))
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

fn soft_fd_limit(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/limits"),
        None => "/proc/self/limits".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The result as one JSON line that starts with `{"mode":` (the scripts look for that).
fn result_line(mut report: Value) -> String {
    let mode = report
        .as_object_mut()
        .and_then(|o| o.remove("mode"))
        .unwrap_or(Value::Null);
    let rest = report.to_string();
    match rest.strip_prefix('{') {
        Some("}") | None => format!("{{\"mode\":{mode}}}"),
        Some(fields) => format!("{{\"mode\":{mode},{fields}"),
    }
}

/// The kernel's count of connections dropped because a listener's accept queue was full
/// (`TcpExt: ListenOverflows` in /proc/net/netstat; counts the whole network namespace).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "fd_limit": soft_fd_limit(None),
        "loadavg_at_end": loadavg,
    })
}

// ---------------------------------------------------------------------------------------------
// Clients: each connection is one task that keeps reading (so it answers the server's pings and
// counts notices) and takes commands.

type Ws = WebSocketStream<TcpStream>;

enum Cmd {
    /// Send "ping", wait for "pong": the round-trip time, or `None`.
    Ping(oneshot::Sender<Option<Duration>>),
    /// Closed loop of ping→pong; latencies (µs) of round trips started in `[measure_from, end)`.
    Loop {
        measure_from: Instant,
        end: Instant,
        reply: oneshot::Sender<(Vec<u32>, u32)>,
    },
    /// Close (close frame, wait for the server's) and end.
    Close(oneshot::Sender<bool>),
}

#[derive(Default)]
struct ClientState {
    notices: AtomicU32,
    closed: AtomicBool,
}

struct Client {
    tx: mpsc::Sender<Cmd>,
    state: Arc<ClientState>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn ping(&self) -> Option<Duration> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Ping(reply)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Asks for a close; the answer arrives on the receiver.
    async fn close(&self) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Close(reply)).await;
        rx
    }
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn client_config(common: &Common) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(common.client_read_buffer.max(256))
        .write_buffer_size(0)
}

/// Connects and waits for the welcome.
async fn connect(
    addr: SocketAddr,
    url: &str,
    config: WebSocketConfig,
) -> Result<(Ws, String), String> {
    timeout(ANSWER_TIMEOUT, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok((ws, t.to_string())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("before welcome: {e}")),
                None => return Err("closed before welcome".into()),
            }
        }
    })
    .await
    .map_err(|_| "no welcome within 30 s".to_string())?
}

fn spawn_client(ws: Ws) -> Client {
    let (tx, rx) = mpsc::channel(2);
    let state = Arc::new(ClientState::default());
    let task = tokio::spawn(client_task(ws, rx, Arc::clone(&state)));
    Client { tx, state, task }
}

async fn client_task(mut ws: Ws, mut rx: mpsc::Receiver<Cmd>, state: Arc<ClientState>) {
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => {
                    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                    break;
                }
                Some(Cmd::Ping(reply)) => {
                    let r = round_trip(&mut ws, &state).await;
                    let ok = r.is_some();
                    let _ = reply.send(r);
                    if !ok {
                        break;
                    }
                }
                Some(Cmd::Loop { measure_from, end, reply }) => {
                    let mut lat = Vec::with_capacity(256);
                    let mut errors = 0;
                    while Instant::now() < end {
                        let start = Instant::now();
                        match round_trip(&mut ws, &state).await {
                            Some(d) if start >= measure_from => lat.push(d.as_micros().min(u32::MAX as u128) as u32),
                            Some(_) => {}
                            None => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                    let failed = errors > 0;
                    let _ = reply.send((lat, errors));
                    if failed {
                        break;
                    }
                }
                Some(Cmd::Close(reply)) => {
                    let ok = timeout(Duration::from_secs(10), async {
                        if ws.close(None).await.is_err() {
                            return false;
                        }
                        // Read until the server's close frame or the end of the stream.
                        while let Some(m) = ws.next().await {
                            match m {
                                Ok(Message::Text(t)) => note(&state, &t),
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        true
                    })
                    .await
                    .unwrap_or(false);
                    state.closed.store(true, Ordering::Release);
                    let _ = reply.send(ok);
                    return;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => note(&state, &t),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
    state.closed.store(true, Ordering::Release);
}

fn note(state: &ClientState, text: &str) {
    if text == NOTICE {
        state.notices.fetch_add(1, Ordering::Relaxed);
    }
}

/// "ping" → "pong", counting notices seen on the way.
async fn round_trip(ws: &mut Ws, state: &ClientState) -> Option<Duration> {
    let start = Instant::now();
    ws.send(Message::text("ping")).await.ok()?;
    timeout(ANSWER_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "pong" => return Some(start.elapsed()),
                Some(Ok(Message::Text(t))) => note(state, &t),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Opens `n` clients, `concurrency` at a time; the clients and the failures (first few reasons).
async fn open_clients(
    target: &Target,
    common: &Common,
    n: usize,
    concurrency: usize,
) -> (Vec<Client>, usize, Vec<String>) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let config = client_config(common);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let sem = Arc::clone(&sem);
        let url = target.ws_url.clone();
        let addr = target.addr;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            Some(
                connect(addr, &url, config)
                    .await
                    .map(|(ws, _)| spawn_client(ws)),
            )
        });
    }
    collect_clients(set).await
}

async fn collect_clients(
    mut set: tokio::task::JoinSet<Option<Result<Client, String>>>,
) -> (Vec<Client>, usize, Vec<String>) {
    let mut clients = Vec::new();
    let mut failures = 0;
    let mut reasons = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Some(Ok(c))) => clients.push(c),
            Ok(Some(Err(e))) => {
                failures += 1;
                if reasons.len() < 5 {
                    reasons.push(e);
                }
            }
            _ => failures += 1,
        }
    }
    (clients, failures, reasons)
}

/// Pings every client (all at once); how many answered.
async fn ping_all(clients: &[Client]) -> (usize, Vec<u32>) {
    let results = futures_util::future::join_all(clients.iter().map(|c| c.ping())).await;
    let lat: Vec<u32> = results
        .iter()
        .flatten()
        .map(|d| d.as_micros() as u32)
        .collect();
    (lat.len(), lat)
}

/// Closes every client (all at once); how many closed cleanly.
async fn close_all(clients: Vec<Client>) -> usize {
    let mut waits = Vec::with_capacity(clients.len());
    for c in &clients {
        waits.push(c.close().await);
    }
    let clean = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    for c in clients {
        c.task.abort();
    }
    clean
}

fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(f64::from(sorted[rank.min(sorted.len()) - 1]) / 1000.0)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

// ---------------------------------------------------------------------------------------------
// The modes.

async fn hold(
    common: &Common,
    target: &Target,
    n: usize,
    settle_secs: u64,
) -> Result<Value, String> {
    let own_limit = soft_fd_limit(None).unwrap_or(0);
    let server_limit = target.pid.and_then(|p| soft_fd_limit(Some(p)));
    println!("hold: {n} clients; fd limit here {own_limit}, server {server_limit:?}");
    if own_limit > 0 && (n as u64) + 64 > own_limit {
        println!("warning: {n} connections need more file descriptors than this tool's limit {own_limit} (raise it with `ulimit -n`)");
    }
    sleep(Duration::from_secs(1)).await;
    let pid = target.pid;
    let rss_before = proc_status_kb(pid, "VmRSS");
    let anon_before = proc_status_kb(pid, "RssAnon");
    let started = Instant::now();
    let (clients, failures, reasons) =
        open_clients(target, common, n, common.connect_concurrency).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let held = clients.len();
    println!("hold: {held} welcomed, {failures} failed in {connect_secs:.1} s {reasons:?}");
    let status_connections = match target
        .wait_status(Duration::from_secs(10), |s| {
            s["connections"].as_u64() == Some(held as u64)
        })
        .await
    {
        Some(_) => Some(held as u64),
        None => target.connections().await,
    };
    sleep(Duration::from_secs(settle_secs)).await;
    let rss_after = proc_status_kb(pid, "VmRSS");
    let anon_after = proc_status_kb(pid, "RssAnon");
    let per_conn = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if held > 0 => {
            Some(round((a as f64 - b as f64) * 1024.0 / held as f64, 0))
        }
        _ => None,
    };
    let bytes_per_conn = per_conn(rss_after, rss_before);
    println!(
        "hold: server VmRSS {rss_before:?} kB before, {rss_after:?} kB with {held} connections: {bytes_per_conn:?} bytes per connection (RssAnon {:?})",
        per_conn(anon_after, anon_before)
    );
    let t = Instant::now();
    let (answered, mut lat) = ping_all(&clients).await;
    lat.sort_unstable();
    println!(
        "hold: {answered} of {held} answered a ping in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    sleep(Duration::from_secs(1)).await;
    let rss_after_ping = proc_status_kb(pid, "VmRSS");
    let still = target.connections().await;
    let load_rss = proc_status_kb(None, "VmRSS");
    let threads = proc_status_kb(pid, "Threads");
    // Drop every client at once (no close handshake: the quickest way to end 19,000).
    for c in &clients {
        c.task.abort();
    }
    drop(clients);
    let gone = target
        .wait_status(Duration::from_secs(30), |s| {
            s["connections"].as_u64() == Some(0)
        })
        .await;
    sleep(Duration::from_secs(1)).await;
    let rss_after_close = proc_status_kb(pid, "VmRSS");
    println!("hold: all dropped ({gone:?}); server VmRSS {rss_after_close:?} kB after");
    Ok(json!({
        "mode": "hold",
        "clients": n,
        "held": held,
        "connect_failures": failures,
        "failure_reasons": reasons,
        "connect_secs": round(connect_secs, 2),
        "status_connections": status_connections,
        "answered_ping": answered,
        "connections_after_ping": still,
        "ping_all_p99_ms": percentile(&lat, 99.0),
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_after_ping_kb": rss_after_ping,
        "rss_after_close_kb": rss_after_close,
        "bytes_per_conn": bytes_per_conn,
        "anon_bytes_per_conn": per_conn(anon_after, anon_before),
        "bytes_per_conn_after_ping": per_conn(rss_after_ping, rss_before),
        "server_threads": threads,
        "server_fd_limit": server_limit,
        "load_tool_rss_kb": load_rss,
    }))
}

async fn storm(common: &Common, target: &Target, n: usize) -> Result<Value, String> {
    let before = target.puts().await.map(|p| p.len()).unwrap_or(0);
    // Every client waits at the gate, connected to nothing, then all connect at once.
    let gate = Arc::new(tokio::sync::Notify::new());
    let config = client_config(common);
    let mut set = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
    for _ in 0..n {
        let gate = Arc::clone(&gate);
        let url = target.ws_url.clone();
        let addr = target.addr;
        let ready = ready_tx.clone();
        set.spawn(async move {
            let opened = gate.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let _ = ready.send(()).await;
            opened.await;
            Some(
                connect(addr, &url, config)
                    .await
                    .map(|(ws, _)| spawn_client(ws)),
            )
        });
    }
    drop(ready_tx);
    for _ in 0..n {
        let _ = ready_rx.recv().await;
    }
    let overflows_before = listen_overflows();
    let started = Instant::now();
    gate.notify_waiters();
    let (clients, failures, reasons) = collect_clients(set).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let overflows = match (overflows_before, listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    println!(
        "storm: {} of {n} connected in {connect_secs:.2} s, {failures} failed {reasons:?}; accept-queue overflows {overflows:?}",
        clients.len()
    );
    let protected = wait_until(Duration::from_secs(30), || async {
        target.agent_protected().await == Some(true)
    })
    .await
    .is_some();
    let status_connections = target.connections().await;
    // All close at once.
    let close_started = Instant::now();
    let clean = close_all(clients).await;
    let all_gone = target
        .wait_status(Duration::from_secs(30), |s| {
            s["connections"].as_u64() == Some(0)
        })
        .await;
    let released_ms = wait_until(Duration::from_secs(30), || async {
        target.agent_protected().await == Some(false)
    })
    .await
    .map(|_| close_started.elapsed().as_millis() as u64);
    // Any late, extra call would show here.
    sleep(Duration::from_secs(2)).await;
    let puts = target.puts_since(before).await;
    let protect_calls = puts.iter().filter(|c| c.enabled == Some(true)).count();
    let release_calls = puts.iter().filter(|c| c.enabled == Some(false)).count();
    let final_protected = target.agent_protected().await;
    println!(
        "storm: protect calls {protect_calls}, release calls {release_calls}; protected once all were in: {protected}, released {released_ms:?} ms after the closes began; final protected {final_protected:?}"
    );
    Ok(json!({
        "mode": "storm",
        "clients": n,
        "connected": n - failures,
        "connect_failures": failures,
        "failure_reasons": reasons,
        "connect_secs": round(connect_secs, 3),
        "status_connections": status_connections,
        "listen_overflows": overflows,
        "closed_cleanly": clean,
        "all_gone_ms": all_gone.map(|d| d.as_millis() as u64),
        "protect_calls": protect_calls,
        "release_calls": release_calls,
        "put_calls": puts.len(),
        "protected_with_all_connected": protected,
        "released_ms_after_close_start": released_ms,
        "final_protected": final_protected,
        "agent_delay_ms": common.agent_delay_ms,
    }))
}

async fn wait_until<F, Fut>(limit: Duration, cond: F) -> Option<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn churn(common: &Common, target: &Target, cycles: usize) -> Result<Value, String> {
    let before = target.puts().await.map(|p| p.len()).unwrap_or(0);
    let config = client_config(common);
    let started = Instant::now();
    let mut completed = 0;
    let mut failures = Vec::new();
    for _ in 0..cycles {
        match connect(target.addr, &target.ws_url, config).await {
            Ok((mut ws, _)) => {
                let _ = timeout(Duration::from_secs(5), async {
                    ws.close(None).await.ok()?;
                    while let Some(Ok(_)) = ws.next().await {}
                    Some(())
                })
                .await;
                completed += 1;
            }
            Err(e) => {
                if failures.len() < 5 {
                    failures.push(e);
                }
            }
        }
    }
    let churn_secs = started.elapsed().as_secs_f64();
    let last_close = Instant::now();
    println!("churn: {completed} of {cycles} cycles in {churn_secs:.2} s; waiting for the hold-over to end");
    let puts_during = target.puts().await.map(|p| p.len().saturating_sub(before));
    // The hold-over is 10 % of the duration (6 s with the spawned server's 1-minute duration).
    let unprotected = target
        .wait_status(Duration::from_secs(60), |s| {
            s["connections"].as_u64() == Some(0)
                && s["protection"]["wanted"] == json!(false)
                && s["protection"]["state"] == json!("unprotected")
        })
        .await;
    let released_after = unprotected.map(|_| last_close.elapsed().as_secs_f64());
    sleep(Duration::from_secs(1)).await;
    let puts = target.puts_since(before).await;
    let status = target.status().await.ok();
    let final_state = status.as_ref().map(|s| s["protection"]["state"].clone());
    let final_protected = target.agent_protected().await;
    println!(
        "churn: {} PUT calls ({} during the cycles), final state {final_state:?}, agent protected {final_protected:?}, released {released_after:?} s after the last close",
        puts.len(),
        puts_during.unwrap_or(0)
    );
    Ok(json!({
        "mode": "churn",
        "cycles": cycles,
        "completed": completed,
        "failure_reasons": failures,
        "churn_secs": round(churn_secs, 2),
        "put_calls": puts.len(),
        "put_calls_during_cycles": puts_during,
        "protect_calls": puts.iter().filter(|c| c.enabled == Some(true)).count(),
        "release_calls": puts.iter().filter(|c| c.enabled == Some(false)).count(),
        "final_state": final_state,
        "final_protected": final_protected,
        "final_right": final_protected == Some(false) && final_state == Some(json!("unprotected")),
        "released_secs_after_last_close": released_after.map(|s| round(s, 2)),
    }))
}

async fn pingpong(
    common: &Common,
    target: &Target,
    n: usize,
    seconds: u64,
    warmup_secs: u64,
) -> Result<Value, String> {
    let (clients, failures, reasons) =
        open_clients(target, common, n, common.connect_concurrency).await;
    println!(
        "pingpong: {} of {n} connected, {failures} failed {reasons:?}",
        clients.len()
    );
    sleep(Duration::from_millis(500)).await;
    let begin = Instant::now() + Duration::from_millis(100);
    let measure_from = begin + Duration::from_secs(warmup_secs);
    let end = measure_from + Duration::from_secs(seconds);
    let mut replies = Vec::with_capacity(clients.len());
    for c in &clients {
        let (reply, rx) = oneshot::channel();
        if c.tx
            .send(Cmd::Loop {
                measure_from,
                end,
                reply,
            })
            .await
            .is_ok()
        {
            replies.push(rx);
        }
    }
    sleep_until(measure_from).await;
    let (cpu0, own0, all0, t0) = (
        cpu_ticks(target.pid),
        cpu_ticks(None),
        machine_ticks(),
        Instant::now(),
    );
    sleep_until(end).await;
    let (cpu1, own1, all1, wall) = (
        cpu_ticks(target.pid),
        cpu_ticks(None),
        machine_ticks(),
        t0.elapsed().as_secs_f64(),
    );
    let mut lat = Vec::new();
    let mut errors = 0u32;
    // Round trips per client: how evenly the server served them.
    let mut per_client = Vec::with_capacity(n);
    for r in futures_util::future::join_all(replies).await {
        match r {
            Ok((l, e)) => {
                per_client.push(l.len() as u64);
                lat.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    lat.sort_unstable();
    let round_trips = lat.len() as u64;
    let per_sec = round_trips as f64 / wall;
    let tick_us = 1e6 / clock_ticks_per_sec() as f64;
    let per_rt = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if round_trips > 0 => {
            Some(round((b - a) as f64 * tick_us / round_trips as f64, 2))
        }
        _ => None,
    };
    let server_cpu_us = per_rt(cpu0, cpu1);
    let server_cores = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(round((b - a) as f64 * tick_us / 1e6 / wall, 2)),
        _ => None,
    };
    let load_cpu_us = per_rt(own0, own1);
    // Everything else the machine ran meanwhile (other builds and tests), and the hypervisor's
    // steal: the noise in these figures.
    let cores = |ticks: u64| round(ticks as f64 * tick_us / 1e6 / wall, 2);
    let (other_cores, steal_cores) = match (all0, all1, cpu0, cpu1, own0, own1) {
        (Some(a), Some(b), Some(s0), Some(s1), Some(o0), Some(o1)) => (
            Some(cores((b.0 - a.0).saturating_sub((s1 - s0) + (o1 - o0)))),
            Some(cores(b.1 - a.1)),
        ),
        _ => (None, None),
    };
    let (p50, p90, p99) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    );
    let max = lat.last().map(|m| f64::from(*m) / 1000.0);
    println!(
        "pingpong: {round_trips} round trips in {wall:.1} s = {per_sec:.0}/s; p50 {p50:?} ms, p90 {p90:?} ms, p99 {p99:?} ms, max {max:?} ms; server CPU {server_cpu_us:?} µs per round trip ({server_cores:?} cores), this tool {load_cpu_us:?} µs; {errors} errors"
    );
    let still = target.connections().await;
    close_all(clients).await;
    Ok(json!({
        "mode": "pingpong",
        "clients": n,
        "connected": n - failures,
        "seconds": round(wall, 2),
        "round_trips": round_trips,
        "rt_per_sec": round(per_sec, 0),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max,
        "server_cpu_us_per_rt": server_cpu_us,
        "server_cpu_cores": server_cores,
        "load_cpu_us_per_rt": load_cpu_us,
        "other_cpu_cores": other_cores,
        "steal_cpu_cores": steal_cores,
        "errors": errors,
        "rt_per_client_min": per_client.iter().min(),
        "rt_per_client_max": per_client.iter().max(),
        "connections_at_end": still,
        "load_threads": common.threads,
    }))
}

async fn outage(
    common: &Common,
    target: &Target,
    n: usize,
    seconds: u64,
    recovery_limit: u64,
) -> Result<Value, String> {
    let agent = target
        .agent
        .as_ref()
        .ok_or("outage needs the spawned server: the stand-in agent must be in this process to inject the fault")?;
    let before = agent.put_calls().len();
    agent.set_fault(Fault::ServerError);
    let window_start = Instant::now();
    let (clients, failures, reasons) =
        open_clients(target, common, n, common.connect_concurrency).await;
    println!("outage: agent answers 500; {} of {n} clients connected, {failures} failed {reasons:?}; waiting {seconds} s", clients.len());
    sleep_until(window_start + Duration::from_secs(seconds)).await;
    let window: Vec<_> = agent.put_calls().into_iter().skip(before).collect();
    let put_calls = window.len();
    let ok_in_window = window.iter().filter(|c| c.ok).count();
    let notices: Vec<u32> = clients
        .iter()
        .map(|c| c.state.notices.load(Ordering::Relaxed))
        .collect();
    let notices_max = notices.iter().copied().max().unwrap_or(0);
    let notices_min = notices.iter().copied().min().unwrap_or(0);
    let connected_in_window = clients
        .iter()
        .filter(|c| !c.state.closed.load(Ordering::Acquire))
        .count();
    println!("outage: {put_calls} PUT calls in {seconds} s ({ok_in_window} succeeded); notices per client {notices_min}..={notices_max}");
    // The agent recovers.
    agent.set_fault(Fault::None);
    let recovered_at = Instant::now();
    let recovered = wait_until(Duration::from_secs(recovery_limit), || async {
        agent.is_protected()
    })
    .await;
    let recovery_ms = recovered.map(|_| recovered_at.elapsed().as_millis() as u64);
    let (pongs, _) = ping_all(&clients).await;
    let notices_after: Vec<u32> = clients
        .iter()
        .map(|c| c.state.notices.load(Ordering::Relaxed))
        .collect();
    println!(
        "outage: protection re-established {recovery_ms:?} ms after the agent recovered; {pongs} of {} clients answered a ping",
        clients.len()
    );
    close_all(clients).await;
    Ok(json!({
        "mode": "outage",
        "clients": n,
        "connected": n - failures,
        "connected_through_window": connected_in_window,
        "seconds": seconds,
        "put_calls_in_window": put_calls,
        "ok_calls_in_window": ok_in_window,
        "notices_max_per_client": notices_max,
        "notices_min_per_client": notices_min,
        "notices_max_after_recovery": notices_after.iter().copied().max().unwrap_or(0),
        "recovered": recovered.is_some(),
        "recovery_ms": recovery_ms,
        "pongs_after": pongs,
        "put_calls_total": agent.put_calls().len() - before,
    }))
}

// ---------------------------------------------------------------------------------------------
// Summaries for scripts/bench.sh.

/// For each file of JSON lines (`{"mode":...}`): every numeric figure as median (min–max) over
/// the runs, every boolean as how many runs were true.
fn summarize(files: &[PathBuf]) -> ExitCode {
    for file in files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let runs: Vec<Value> = text
            .lines()
            .filter(|l| l.starts_with("{\"mode\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        println!("== {name}: {} run(s)", runs.len());
        let mut keys: Vec<String> = runs
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|o| o.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let values: Vec<&Value> = runs.iter().filter_map(|r| r.get(&key)).collect();
            let mut nums: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
            if !nums.is_empty() && nums.len() == values.len() {
                nums.sort_by(|a, b| a.total_cmp(b));
                let median = if nums.len() % 2 == 1 {
                    nums[nums.len() / 2]
                } else {
                    (nums[nums.len() / 2 - 1] + nums[nums.len() / 2]) / 2.0
                };
                println!(
                    "  {key:<34} {} ({}–{})",
                    fmt_num(median),
                    fmt_num(nums[0]),
                    fmt_num(nums[nums.len() - 1])
                );
            } else if values.iter().all(|v| v.is_boolean()) && !values.is_empty() {
                let yes = values.iter().filter(|v| v.as_bool() == Some(true)).count();
                println!("  {key:<34} true in {yes} of {}", values.len());
            } else if values.iter().all(|v| v.is_string()) && !values.is_empty() {
                let mut distinct: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
                distinct.dedup();
                println!("  {key:<34} {}", distinct.join(" | "));
            }
        }
    }
    ExitCode::SUCCESS
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}
