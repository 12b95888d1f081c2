//! The `websocket` binary: reads its settings, picks a protection backend, and serves until
//! SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use task_protection::config::{BackendChoice, Config, LogFormat};
use task_protection::protection::agent::AgentBackend;
use task_protection::protection::local::LocalBackend;
use task_protection::protection::{ProtectionBackend, ProtectionManager};
use task_protection::server::{self, Hub, SessionLimits};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Clap prints the error (naming the variable and its allowed range) and exits with code 2.
    let config = Config::parse();
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
    let backend = choose_backend(&config)?;
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
    if config.drain_deadline_secs > 0 {
        server::drain::evict_after(&hub, Duration::from_secs(config.drain_deadline_secs));
    }
    if config.max_protected_minutes > 0 {
        let limit = Duration::from_secs(u64::from(config.max_protected_minutes) * 60);
        server::drain::after_protected_for(&hub, limit);
    }
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
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

fn choose_backend(config: &Config) -> Result<Arc<dyn ProtectionBackend>, String> {
    let agent_uri = config.ecs_agent_uri.as_deref().filter(|u| !u.is_empty());
    let agent = |uri: &str| -> Result<Arc<dyn ProtectionBackend>, String> {
        AgentBackend::new(uri, Duration::from_secs(5))
            .map(|b| Arc::new(b) as Arc<dyn ProtectionBackend>)
            .map_err(|e| e.to_string())
    };
    match (config.protection_backend, agent_uri) {
        (BackendChoice::Agent | BackendChoice::Auto, Some(uri)) => agent(uri),
        (BackendChoice::Agent, None) => Err(
            "PROTECTION_BACKEND=agent needs ECS_AGENT_URI (ECS sets it in every container)".into(),
        ),
        (BackendChoice::Auto, None) | (BackendChoice::Local, _) => {
            Ok(Arc::new(LocalBackend::new()))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
