//! `cargo run -p ecs-stand-in`: starts the stand-in ECS agent endpoint and the stand-in ECS API
//! (with its task metadata endpoint) on loopback, prints the settings that point the server at
//! them, and prints every call they receive until Ctrl-C.
//!
//! `cargo run -p ecs-stand-in -- fleet --tasks 3 --bin websocket`: runs a local ECS service of
//! real task processes behind a front door, with commands on stdin (`scale N`, `deploy`,
//! `stop TASK`) and a live table of its tasks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ecs_stand_in::{
    sibling_binary, Fleet, FleetConfig, FleetError, StandInAgent, StandInEcs, TaskKind,
    MAX_DESIRED_COUNT,
};
use tokio::io::AsyncBufReadExt;

/// Stand-ins for the ECS agent's task protection endpoint and the ECS API, for local experiments.
#[derive(Parser)]
#[command(name = "ecs-stand-in")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Port of the agent endpoint stand-in (0: a free one).
    #[arg(long, default_value_t = 0)]
    agent_port: u16,
    /// Port of the ECS API and task metadata stand-in (0: a free one).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a local ECS service of real task processes behind a front door (a stand-in load
    /// balancer): scale it, deploy to it and stop its tasks with ECS's semantics, scale-in
    /// protection included. Commands on stdin: scale N, deploy, stop TASK, table, help, quit.
    Fleet(FleetArgs),
}

/// The binaries of this repository a fleet can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bin {
    /// The WebSocket server, behind the front door.
    Websocket,
    /// The SQS queue worker (set QUEUE_URL and the SQS endpoint in the environment).
    QueueConsumer,
}

impl Bin {
    fn name(self) -> &'static str {
        match self {
            Bin::Websocket => "websocket",
            Bin::QueueConsumer => "queue-consumer",
        }
    }
}

#[derive(clap::Args)]
struct FleetArgs {
    /// The service's desired count at start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_DESIRED_COUNT)))]
    tasks: u32,
    /// This repository's binary to run, found next to this program (`cargo build` first).
    #[arg(long, value_enum, default_value_t = Bin::Websocket, conflicts_with = "exec")]
    bin: Bin,
    /// Any other executable to run instead (a WebSocket server unless --worker).
    #[arg(long)]
    exec: Option<PathBuf>,
    /// With --exec: the program is a worker (no front door; health and /status on STATUS_PORT).
    #[arg(long, requires = "exec")]
    worker: bool,
    /// The front door's port on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The ECS API stand-in's port on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
    /// How long a deregistered task keeps running before SIGTERM (an ALB target group's
    /// deregistration delay; AWS's default is 300).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    deregistration_delay_secs: u64,
    /// How long after SIGTERM a task gets SIGKILL (ECS's stopTimeout: 30 by default, 120 at
    /// most).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=120))]
    stop_timeout_secs: u64,
    /// The health check path: a task is RUNNING once it answers 200.
    #[arg(long, default_value = "/healthz")]
    health_path: String,
    /// How often the scheduler acts, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    tick_ms: u64,
    /// Environment for every task (repeatable): NAME=VALUE.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Do not print the tasks' own output (the service events and the table still are).
    #[arg(long)]
    quiet: bool,
    /// Arguments for the task program.
    #[arg(last = true)]
    args: Vec<String>,
}

/// `NAME=VALUE`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Ok(runtime) = tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("cannot start the async runtime: {e}"))
    else {
        return ExitCode::FAILURE;
    };
    match args.command {
        Some(Command::Fleet(fleet)) => runtime.block_on(run_fleet(fleet)),
        None => match runtime.block_on(stand_ins(args.agent_port, args.api_port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn at(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The stand-ins alone, printing every call they receive.
async fn stand_ins(agent_port: u16, api_port: u16) -> std::io::Result<()> {
    let agent = StandInAgent::bind(at(agent_port)).await?;
    let ecs = StandInEcs::bind(at(api_port)).await?;
    println!("Stand-in ECS agent endpoint; run the server with:");
    println!("  PROTECTION_BACKEND=agent ECS_AGENT_URI={}", agent.uri());
    println!("Stand-in ECS API and task metadata endpoint; or with:");
    println!(
        "  PROTECTION_BACKEND=api ECS_ENDPOINT_URL={} ECS_CONTAINER_METADATA_URI_V4={} \
         AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test",
        ecs.endpoint_url(),
        ecs.metadata_uri()
    );
    println!(
        "Recorded calls: {}/_calls and {}/_calls",
        agent.uri(),
        ecs.endpoint_url()
    );
    println!("Ctrl-C stops them.");

    let (mut agent_seen, mut ecs_seen) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        print_answered(&agent.calls(), &mut agent_seen, |c| {
            (
                c.status,
                format!(
                    "agent: {} enabled={:?} minutes={:?}",
                    c.method, c.enabled, c.expires_in_minutes
                ),
            )
        });
        print_answered(&ecs.calls(), &mut ecs_seen, |c| {
            (
                c.status,
                format!(
                    "api: {} enabled={:?} minutes={:?}",
                    c.operation, c.protection_enabled, c.expires_in_minutes
                ),
            )
        });
    }
}

/// Prints the calls after the first `seen` that have been answered (in order, stopping at the
/// first still in flight), each as `<line> -> <status>`; `describe` gives a call's status (0 while
/// in flight) and line.
fn print_answered<C>(calls: &[C], seen: &mut usize, describe: impl Fn(&C) -> (u16, String)) {
    for call in &calls[(*seen).min(calls.len())..] {
        let (status, line) = describe(call);
        if status == 0 {
            return;
        }
        println!("{line} -> {status}");
        *seen += 1;
    }
}

/// A command typed on the fleet's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FleetCommand {
    /// `scale N`: set the desired count.
    Scale(u32),
    /// `deploy`: a new task definition revision.
    Deploy,
    /// `stop TASK`: stop one task now (`StopTask`).
    Stop(String),
    /// `table`: print the table now.
    Table,
    /// `help`.
    Help,
    /// `quit`, `exit`.
    Quit,
    /// An empty line.
    Nothing,
}

const HELP: &str =
    "commands: scale N | deploy | stop TASK (an ID or its first digits) | table | help | quit";

/// Reads one command line.
fn parse_command(line: &str) -> Result<FleetCommand, String> {
    let mut words = line.split_whitespace();
    let command = match (words.next(), words.next()) {
        (None, _) => FleetCommand::Nothing,
        (Some("scale"), Some(n)) => match n.parse::<u32>() {
            Ok(n) if n <= MAX_DESIRED_COUNT => FleetCommand::Scale(n),
            _ => {
                return Err(format!(
                    "scale takes a task count in 0..={MAX_DESIRED_COUNT}, got {n:?}"
                ))
            }
        },
        (Some("scale"), None) => return Err("scale takes a task count: scale N".into()),
        (Some("deploy"), None) => FleetCommand::Deploy,
        (Some("stop"), Some(task)) => FleetCommand::Stop(task.to_string()),
        (Some("stop"), None) => return Err("stop takes a task: stop TASK".into()),
        (Some("table" | "t"), None) => FleetCommand::Table,
        (Some("help" | "?"), None) => FleetCommand::Help,
        (Some("quit" | "exit" | "q"), None) => FleetCommand::Quit,
        (Some(other), _) => return Err(format!("unknown command {other:?}; {HELP}")),
    };
    if words.next().is_some() {
        return Err(format!("too many words in {line:?}; {HELP}"));
    }
    Ok(command)
}

/// `fleet`: runs the fleet until `quit` or Ctrl-C, then stops its tasks as ECS would.
async fn run_fleet(args: FleetArgs) -> ExitCode {
    let (program, kind) = match &args.exec {
        Some(path) => {
            if !path.is_file() {
                eprintln!("--exec {}: no such file", path.display());
                return ExitCode::from(2);
            }
            let kind = if args.worker {
                TaskKind::Worker
            } else {
                TaskKind::WebSocket
            };
            (path.clone(), kind)
        }
        None => match sibling_binary(args.bin.name()) {
            Ok(path) => {
                let kind = match args.bin {
                    Bin::Websocket => TaskKind::WebSocket,
                    Bin::QueueConsumer => TaskKind::Worker,
                };
                (path, kind)
            }
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        },
    };
    let mut config = FleetConfig::new(program, args.tasks);
    config.args = args.args;
    config.env = args.env;
    config.deregistration_delay = Duration::from_secs(args.deregistration_delay_secs);
    config.stop_timeout = Duration::from_secs(args.stop_timeout_secs);
    config.health_path = args.health_path;
    config.kind = kind;
    config.tick = Duration::from_millis(args.tick_ms);
    config.front_door = at(args.port);
    config.api = at(args.api_port);
    let program = config.program.display().to_string();
    let fleet = match Fleet::start(config).await {
        Ok(fleet) => fleet,
        Err(e @ FleetError::Invalid(_)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Fleet of {program}: service {} in cluster {}",
        ecs_stand_in::SERVICE_NAME,
        ecs_stand_in::CLUSTER_NAME
    );
    if let Some(door) = fleet.front_door() {
        println!("  front door (the load balancer): http://{door}/");
    }
    let api = fleet.ecs().endpoint_url();
    println!("  ECS API stand-in: {api} (calls: {api}/_calls, the fleet: {api}/_fleet)");
    println!(
        "  also by HTTP: curl -X POST {api}/_fleet/scale/N | {api}/_fleet/deploy | \
         {api}/_fleet/stop/TASK"
    );
    println!("  {HELP}; Ctrl-C stops the fleet");

    let quiet = args.quiet;
    let (backlog, mut lines) = fleet.subscribe_output();
    let printer = tokio::spawn(async move {
        for line in backlog {
            if !quiet || line.starts_with("[ecs]") {
                println!("{line}");
            }
        }
        loop {
            match lines.recv().await {
                Ok(line) => {
                    if !quiet || line.starts_with("[ecs]") {
                        println!("{line}");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("({n} lines not shown)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let mut stdin = Some(tokio::io::BufReader::new(tokio::io::stdin()).lines());
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let mut shown = String::new();
    loop {
        let line = async {
            match stdin.as_mut() {
                Some(lines) => lines.next_line().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = refresh.tick() => {
                let view = fleet.view().await;
                let body = view.body();
                if body != shown {
                    print!("{}", view.render());
                    shown = body;
                }
            }
            line = line => match line {
                Ok(Some(line)) => match parse_command(&line) {
                    Ok(FleetCommand::Quit) => break,
                    Ok(command) => run_command(&fleet, command).await,
                    Err(e) => println!("{e}"),
                },
                // Stdin closed (or unreadable): go on without commands until Ctrl-C.
                Ok(None) | Err(_) => stdin = None,
            },
        }
    }
    println!("Stopping the fleet's tasks (SIGTERM, then SIGKILL after the stop timeout)…");
    fleet.shutdown().await;
    printer.abort();
    ExitCode::SUCCESS
}

async fn run_command(fleet: &Fleet, command: FleetCommand) {
    match command {
        FleetCommand::Scale(n) => {
            if let Err(e) = fleet.scale(n) {
                println!("{e}");
            }
        }
        FleetCommand::Deploy => {
            let id = fleet.deploy();
            println!("deployment {id} started");
        }
        FleetCommand::Stop(task) => match fleet.stop_task(&task) {
            Ok(info) => println!("stopping task {}", info.id),
            Err(e) => println!("{e}"),
        },
        FleetCommand::Table => print!("{}", fleet.view().await.render()),
        FleetCommand::Help => println!("{HELP}"),
        FleetCommand::Quit | FleetCommand::Nothing => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_with_their_argument_and_checked() {
        assert_eq!(parse_command("scale 3"), Ok(FleetCommand::Scale(3)));
        assert_eq!(parse_command("  scale 0 "), Ok(FleetCommand::Scale(0)));
        assert_eq!(parse_command("deploy"), Ok(FleetCommand::Deploy));
        assert_eq!(
            parse_command("stop 3f9c"),
            Ok(FleetCommand::Stop("3f9c".into()))
        );
        assert_eq!(parse_command(""), Ok(FleetCommand::Nothing));
        assert_eq!(parse_command("quit"), Ok(FleetCommand::Quit));
        assert!(parse_command("scale").is_err());
        assert!(parse_command("scale -1").is_err());
        assert!(parse_command("scale 101").unwrap_err().contains("0..=100"));
        assert!(parse_command("deploy now").is_err());
        assert!(parse_command("launch").unwrap_err().contains("commands:"));
    }

    #[test]
    fn env_settings_are_name_equals_value() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".to_string(), "b=c".to_string())));
        assert_eq!(parse_env("A="), Ok(("A".to_string(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A").is_err());
    }
}
