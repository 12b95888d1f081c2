//! The `websocket` binary: reads its settings, picks a protection backend, and serves until
//! SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use task_protection::config::{BackendChoice, Command, Config, LogFormat};
use task_protection::protection::agent::AgentBackend;
use task_protection::protection::drain_watch::spawn_drain_watch;
use task_protection::protection::ecs_api::EcsApiBackend;
use task_protection::protection::local::LocalBackend;
use task_protection::protection::{BackendError, ProtectionBackend, ProtectionManager};
use task_protection::server::{self, Hub, SessionLimits};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Clap prints the error (naming the variable and its allowed range) and exits with code 2.
    let config = Config::parse();
    if let Some(Command::Drain { pid }) = config.command {
        return send_drain_signal(pid);
    }
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let (backend, drain_reasons) = choose_backend(&config).await?;
    let manager = ProtectionManager::start(backend, config.protection_settings())
        .map_err(|e| format!("invalid protection settings: {e}"))?;
    let limits = SessionLimits {
        max_message_bytes: config.max_message_bytes as usize,
        ping_interval: Duration::from_secs(config.ws_ping_interval_secs),
        queue_messages: config.client_queue_messages as usize,
        chat_per_sec: config.chat_messages_per_sec,
        ..SessionLimits::default()
    };
    let hub = Hub::new(manager, limits, config.max_connections as usize);
    server::drain::on_sigusr1(&hub);
    if let Some(reasons) = drain_reasons {
        server::drain::follow_watcher(&hub, reasons);
    }
    if config.drain_deadline_secs > 0 {
        server::drain::evict_after(&hub, Duration::from_secs(config.drain_deadline_secs));
    }
    if config.max_protected_minutes > 0 {
        let limit = Duration::from_secs(u64::from(config.max_protected_minutes) * 60);
        server::drain::after_protected_for(&hub, limit);
    }
    let addr = config.listen_addr();
    let listener = listen(addr)
        .map_err(|e| format!("cannot listen on {addr} (set PORT or BIND_ADDRESS): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("Listening on http://{local}");
    server::run(
        listener,
        hub,
        server::shutdown::signal(),
        Duration::from_secs(config.shutdown_timeout_secs),
    )
    .await
    .map_err(|e| format!("server failed: {e}"))
}

/// The protection backend, and the drain watcher's reasons when the watcher runs.
type Chosen = (
    Arc<dyn ProtectionBackend>,
    Option<watch::Receiver<Option<String>>>,
);

/// `auto`: the agent endpoint if `ECS_AGENT_URI` is set, else the ECS API if the task metadata
/// endpoint is set, else local. The drain watcher runs wherever the task metadata endpoint is
/// (it needs the service name), on both ECS backends.
async fn choose_backend(config: &Config) -> Result<Chosen, String> {
    let set = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let agent_uri = set(&config.ecs_agent_uri);
    let metadata_uri = set(&config.ecs_metadata_uri);
    let choice = match (config.protection_backend, &agent_uri, &metadata_uri) {
        (BackendChoice::Auto, Some(_), _) => BackendChoice::Agent,
        (BackendChoice::Auto, None, Some(_)) => BackendChoice::Api,
        (BackendChoice::Auto, None, None) => BackendChoice::Local,
        (forced, _, _) => forced,
    };
    let api = || {
        EcsApiBackend::from_env(
            set(&config.ecs_endpoint_url),
            set(&config.ecs_cluster),
            set(&config.ecs_task_arn),
            metadata_uri.clone(),
        )
    };
    let interval = Duration::from_secs(config.drain_watch_interval_secs);
    let watch_with = |b: &EcsApiBackend| {
        (!interval.is_zero() && metadata_uri.is_some())
            .then(|| spawn_drain_watch(b.client().clone(), b.identity_source().clone(), interval))
    };
    let explain = |e: BackendError| match e.hint() {
        Some(hint) => format!("{e} ({hint})"),
        None => e.to_string(),
    };
    match choice {
        BackendChoice::Agent => {
            let uri = agent_uri.ok_or(
                "PROTECTION_BACKEND=agent needs ECS_AGENT_URI (ECS sets it in every container)",
            )?;
            let agent = AgentBackend::new(&uri, Duration::from_secs(5)).map_err(explain)?;
            let drain = match &metadata_uri {
                Some(_) => match api().await {
                    Ok(b) => watch_with(&b),
                    Err(e) => {
                        tracing::warn!("Drain watcher off: {}", explain(e));
                        None
                    }
                },
                None => None,
            };
            Ok((Arc::new(agent), drain))
        }
        BackendChoice::Api => {
            let backend = api().await.map_err(explain)?;
            let drain = watch_with(&backend);
            Ok((Arc::new(backend), drain))
        }
        BackendChoice::Local | BackendChoice::Auto => Ok((Arc::new(LocalBackend::new()), None)),
    }
}

/// Binds with a listen backlog of 4096 (capped by `net.core.somaxconn`) instead of the default
/// 128, so that a storm of clients connecting at once is not dropped by the kernel and retried a
/// second later (BENCHMARKS.md).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// `websocket drain`: sends SIGUSR1 to the server, which starts draining.
fn send_drain_signal(pid: i32) -> ExitCode {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, libc::SIGUSR1) };
        if rc == 0 {
            println!("Asked process {pid} to drain (SIGUSR1)");
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "cannot signal process {pid}: {}",
                std::io::Error::last_os_error()
            );
            ExitCode::FAILURE
        }
    }
    #[cfg(not(unix))]
    {
        eprintln!("`drain` needs a Unix system (it sends SIGUSR1 to process {pid})");
        ExitCode::FAILURE
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: not in files, pipes or CloudWatch.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
