//! The `websocket` binary: reads its settings, picks a protection backend, and serves until
//! SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use app_support::listener::HttpPool;
use clap::Parser;
use ecs_task_protection::ecs::{self, drain_watch::spawn_drain_watch};
use ecs_task_protection::protection::ProtectionManager;
use ecs_task_protection::supervise::{self, Supervisor};
use websocket_server::config::{Command, Config};
use websocket_server::server::{self, Hub};

fn main() -> ExitCode {
    // First, while this is the only thread: the AWS SDK panics on a blank endpoint setting.
    let blank = app_support::config::unset_blank_aws_endpoints();
    // Clap prints the error (naming the variable and its allowed range) and exits with code 2.
    let config = Config::parse();
    if let Some(Command::Drain { pid }) = config.command {
        return app_support::drain_signal::send(pid);
    }
    if let Err(e) = config.log_format.try_init() {
        eprintln!("cannot set up logging: {e}");
    }
    for name in blank {
        tracing::debug!("{name} is blank: read as unset");
    }
    let Ok(runtime) = tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("cannot start the async runtime: {e}"))
    else {
        return ExitCode::FAILURE;
    };
    // Before anything slow: a drain asked for during start-up must not end the process.
    let drain_signal = {
        let _in_runtime = runtime.enter();
        app_support::drain_signal::listen()
    };
    let supervisor = Supervisor::install();
    match runtime.block_on(run(config, drain_signal, supervisor.clone())) {
        // A background task died: logged when it did, and the server shut down in order since.
        Ok(()) if supervisor.death().is_some() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    drain_signal: app_support::drain_signal::DrainSignal,
    supervisor: Supervisor,
) -> Result<(), String> {
    let plan = config.protection.backend_plan()?;
    let local = plan == ecs::BackendPlan::Local;
    let ecs::Connection { backend, context } =
        ecs::connect(plan, None).await.map_err(|e| e.explain())?;
    let manager = ProtectionManager::start(backend, config.protection_settings())
        .map_err(|e| format!("invalid protection settings: {e}"))?;
    if local {
        app_support::config::log_local_hint();
    }
    supervise::watch_reconciler(&manager);
    let hub = Hub::new(
        manager,
        config.session_limits(),
        config.max_connections as usize,
    );
    let task_arn = context
        .as_ref()
        .and_then(|c| c.identity().cached())
        .map(|t| t.task_arn.clone());
    // With a backplane, every task's player count: on a scale-in the busy tasks with the fewest
    // players drain first.
    let loads = config
        .backplane_settings(task_arn.as_deref())
        .map(|backplane| {
            let counts = server::backplane::start(&hub, backplane);
            let loads: ecs::drain_watch::TaskLoads =
                Arc::new(move || counts.borrow().as_ref().clone());
            loads
        });
    server::drain::on_sigusr1(&hub, drain_signal);
    let source: app_support::metrics::Source = {
        let hub = Arc::clone(&hub);
        Arc::new(move || hub.metrics())
    };
    // One pool for every listener: one cap, one place to free a file descriptor from.
    let pool = HttpPool::new(config.http_limits(), Some(hub.http_connections_report()));
    app_support::metrics::start(
        source,
        config.metrics.emf_interval(),
        config.metrics.prometheus_addr(),
        &pool,
        app_support::metrics::metric_dimensions(
            context.clone(),
            config.metrics.service_name(),
            "websocket",
        ),
    )
    .await?;
    if let (Some(context), Some(interval)) = (&context, config.drain_watch_interval()) {
        server::drain::follow_watcher(&hub, spawn_drain_watch(context, interval, loads));
    }
    if let Some(deadline) = config.drain_deadline() {
        server::drain::evict_after(&hub, deadline);
    }
    if let Some(limit) = config.max_protected() {
        server::drain::after_protected_for(&hub, limit);
    }
    let addr = config.listen_addr();
    let listener = listen(addr)
        .map_err(|e| format!("cannot listen on {addr} (set PORT or BIND_ADDRESS): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("Listening on http://{local}");
    server::run_in(
        &pool,
        listener,
        hub,
        supervisor.shutdown_signal(app_support::shutdown::signal()),
        config.shutdown_timeout(),
    )
    .await
    .map_err(|e| format!("server failed: {e}"))
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
