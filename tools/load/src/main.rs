//! Load tool for the WebSocket server (issue 5) and the queue consumer: the figures in
//! `BENCHMARKS.md` come from here.
//!
//! ```text
//! cargo build --release -p load -p websocket-server -p queue-consumer --bin load --bin websocket --bin queue-consumer
//! target/release/load hold --clients 10000
//! target/release/load storm --clients 1000
//! target/release/load churn --cycles 200
//! target/release/load pingpong --clients 1000 --seconds 10
//! target/release/load outage --clients 20 --seconds 30
//! target/release/load jobs --jobs 300 --concurrency 10   # needs moto_server (or MOTO_SERVER)
//! target/release/load jobs --jobs 300 --ceiling          # the same moto, no worker
//! target/release/load backplane                      # chat across tasks via redis-server (BENCHMARKS.md)
//! target/release/load summarize target/bench/*.jsonl   # median (min–max) per figure
//! ```
//!
//! By default each run starts its own server: a stand-in ECS agent endpoint in this process
//! (`ecs_stand_in::StandInAgent`), free loopback ports, and the release binary
//! `target/release/websocket` (`--server-bin`) with `RUST_LOG=warn` and the protection settings the
//! mode needs; the server is stopped (SIGTERM, then SIGKILL after 20 s) at the end, also on error.
//! `--url ws://127.0.0.1:PORT/ws` targets a running server instead (`--agent
//! http://127.0.0.1:PORT/_calls` for the agent's calls, `--server-pid` for its RSS and CPU).
//! The `jobs` mode instead starts moto's SQS server and the release `queue-consumer`
//! (`--worker-bin`) itself (see `modes/jobs.rs`).
//!
//! This tool runs on one thread by default (`--threads`): on a 2-core machine shared with the
//! server's two workers, more load threads raise throughput but lengthen the latency tail.
//!
//! Output: human-readable lines, then one JSON line starting with `{"mode":` holding every figure.
//! The tool reports; it does not judge (the exit status is 0 whenever the run completed).
//! Loopback only; every loop is bounded in count and time, and the whole run by `--deadline-secs`.

mod client;
mod modes;
mod moto;
mod procfs;
mod summary;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio::time::timeout;

use crate::modes::{jobs, run_mode};
use crate::procfs::{loadavg, machine};
use crate::summary::{result_line, summarize};
use crate::target::Target;

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
    /// The queue consumer: fills a fresh queue on moto's SQS server with N jobs, then times the
    /// release `queue-consumer` against a stand-in agent until the queue is empty (jobs/s, ECS
    /// calls, worker memory); with --ceiling, a plain receive+delete loop in this process instead.
    Jobs(JobsArgs),
    /// Chat across tasks through a Redis backplane next to the in-process room: starts its own
    /// redis-server and three servers (two sharing the backplane, one without); cross-task chat
    /// latency and throughput, and pong latency under chat load with and without the backplane.
    Backplane(modes::backplane::BackplaneArgs),
    /// Reads files of JSON result lines (one file per benchmark) and prints, for every figure,
    /// the median with min–max.
    Summarize { files: Vec<PathBuf> },
}

#[derive(Args, Clone)]
struct JobsArgs {
    /// Messages put on the queue before the consumer starts (moto's calls slow down as its queue
    /// grows: filling 2,000 takes over a minute).
    #[arg(long, default_value_t = 300)]
    jobs: usize,
    /// The worker's WORKER_CONCURRENCY; with --ceiling, receive+delete loops at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// No worker: plain loops of ReceiveMessage (10, 1 s long poll) + DeleteMessageBatch in this
    /// process (the most a consumer can get from this moto).
    #[arg(long)]
    ceiling: bool,
    /// Each job's work in ms (the message body).
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// The worker binary to spawn.
    #[arg(long, default_value = "target/release/queue-consumer")]
    worker_bin: PathBuf,
    /// moto's server program (default: $MOTO_SERVER, else `moto_server` on PATH).
    #[arg(long)]
    moto_server: Option<String>,
    /// Once the queue is empty, the longest wait for the worker to release protection (after its
    /// hold-over, 6 s by default) before it is stopped with SIGTERM.
    #[arg(long, default_value_t = 10)]
    release_wait_secs: u64,
    /// Then, seconds of an idle worker (empty queue, long polls) whose agent calls are counted
    /// before SIGTERM.
    #[arg(long, default_value_t = 0)]
    idle_secs: u64,
    /// Common options; --server-env, --server-pid-file and --agent-delay-ms apply to the worker.
    #[command(flatten)]
    common: Common,
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

/// The `backplane` mode: one thread, its own servers, at most 300 s.
fn run_backplane(args: &modes::backplane::BackplaneArgs) -> ExitCode {
    let load_at_start = loadavg();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        timeout(Duration::from_secs(300), modes::backplane::backplane(args)).await
    });
    match outcome {
        Ok(Ok(mut report)) => {
            if let Some(obj) = report.as_object_mut() {
                obj.insert("machine".into(), machine());
                obj.insert("loadavg_at_start".into(), json!(load_at_start));
            }
            println!("{}", result_line(report));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("load: the backplane run did not finish within 300 s");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.mode {
        Mode::Hold { common, .. }
        | Mode::Storm { common, .. }
        | Mode::Churn { common, .. }
        | Mode::Pingpong { common, .. }
        | Mode::Outage { common, .. }
        | Mode::Jobs(JobsArgs { common, .. }) => common.clone(),
        Mode::Summarize { files } => return summarize(files),
        Mode::Backplane(args) => return run_backplane(args),
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
        let deadline = Duration::from_secs(common.deadline_secs);
        let outcome = match &cli.mode {
            // Starts (and stops) its own moto and worker.
            Mode::Jobs(args) => timeout(deadline, jobs(args, &common)).await,
            mode => {
                let mut target = match Target::start(&common, mode).await {
                    Ok(t) => t,
                    Err(e) => return Err(format!("cannot start: {e}")),
                };
                let outcome = timeout(deadline, run_mode(mode, &common, &target)).await;
                let stopped = target.stop().await;
                outcome.map(|r| {
                    r.map(|mut report| {
                        if let Some(obj) = report.as_object_mut() {
                            obj.insert("server_exit".into(), json!(stopped));
                        }
                        report
                    })
                })
            }
        };
        match outcome {
            Err(_) => Err(format!(
                "the run did not finish within --deadline-secs {}",
                common.deadline_secs
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(mut report)) => {
                if let Some(obj) = report.as_object_mut() {
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
