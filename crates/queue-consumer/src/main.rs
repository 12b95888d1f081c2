//! The `queue-consumer` binary: reads its settings, picks a protection backend, and takes jobs
//! off the queue until SIGTERM (draining while ECS wants the task gone, or on SIGUSR1); or, as
//! `send`, puts jobs on the queue; or, as `health`, asks the running worker whether it is sound;
//! or, as `drain`, asks it to drain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use app_support::listener::HttpPool;
use clap::Parser;
use ecs_task_protection::ecs::{self, drain_watch::spawn_drain_watch};
use ecs_task_protection::protection::ProtectionManager;
use ecs_task_protection::supervise::{self, Supervisor};
use ecs_task_protection::worker::Handler;
use queue_consumer::config::{WorkerCommand, WorkerConfig};
use queue_consumer::handlers::http::DEFAULT_REQUEST_TIMEOUT;
use queue_consumer::handlers::{CommandHandler, HttpHandler, JobMode};
use queue_consumer::worker::{self, DemoJob, Worker};

fn main() -> ExitCode {
    // First, while this is the only thread: the AWS SDK panics on a blank endpoint setting.
    let blank = app_support::config::unset_blank_aws_endpoints();
    // Clap prints the error (naming the variable and its allowed range) and exits with code 2.
    let config = WorkerConfig::parse();
    let command = config.command.clone();
    if let Some(WorkerCommand::Drain { pid }) = command {
        return app_support::drain_signal::send(pid);
    }
    if command != Some(WorkerCommand::Health) {
        if let Err(e) = config.log_format.try_init() {
            eprintln!("cannot set up logging: {e}");
        }
        for name in blank {
            tracing::debug!("{name} is blank: read as unset");
        }
    }
    let Ok(runtime) = tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("cannot start the async runtime: {e}"))
    else {
        return ExitCode::FAILURE;
    };
    let outcome = match command {
        Some(WorkerCommand::Health) => return runtime.block_on(health(&config)),
        Some(WorkerCommand::Send {
            count,
            ref group_id,
            work_ms,
        }) => runtime.block_on(send(&config, count, work_ms, group_id.as_deref())),
        Some(WorkerCommand::CreateQueue {
            fifo,
            max_receive_count,
            ref name,
        }) => runtime.block_on(create_queue(&config, name, fifo, max_receive_count)),
        // Answered above, before logging and the runtime.
        Some(WorkerCommand::Drain { pid }) => return app_support::drain_signal::send(pid),
        // `run -- CMD ARGS…`: the worker, with that command as its job (see `job_mode`).
        Some(WorkerCommand::Run { .. }) | None => {
            // Before anything slow: a drain asked for during start-up must not end the process.
            let drain_signal = {
                let _in_runtime = runtime.enter();
                app_support::drain_signal::listen()
            };
            let supervisor = Supervisor::install();
            match runtime.block_on(run(&config, &supervisor, drain_signal)) {
                // A background task died: logged when it did, and the worker shut down in order
                // since.
                Ok(()) if supervisor.death().is_some() => return ExitCode::FAILURE,
                outcome => outcome,
            }
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// How a run ends badly: a setting to fix (exit 2, like clap's errors) or a failure (exit 1).
enum Failure {
    Usage(String),
    Runtime(String),
}

async fn run(
    config: &WorkerConfig,
    supervisor: &Supervisor,
    drain_signal: app_support::drain_signal::DrainSignal,
) -> Result<(), Failure> {
    let queue_url = config.queue_url().map_err(Failure::Usage)?;
    let mode = config.job_mode().map_err(Failure::Usage)?;
    mode.check().map_err(Failure::Usage)?;
    let plan = config.protection.backend_plan().map_err(Failure::Usage)?;
    let local = plan == ecs::BackendPlan::Local;
    let sdk_config = ecs::aws_config().await;
    let ecs::Connection { backend, context } = ecs::connect(plan, Some(&sdk_config))
        .await
        .map_err(|e| Failure::Runtime(e.explain()))?;
    let manager = ProtectionManager::start(backend, config.protection_settings())
        .map_err(|e| Failure::Usage(format!("invalid protection settings: {e}")))?;
    if local {
        app_support::config::log_local_hint();
    }
    supervise::watch_reconciler(&manager);
    let settings = config.worker_settings();
    let handler = handler_for(&mode, &settings).map_err(Failure::Runtime)?;
    tracing::info!("Jobs: {mode}");
    let mut builder = Worker::builder(&sdk_config, &queue_url)
        .shared_handler(handler)
        .settings(settings);
    if let Some(region) = config.queue_region() {
        builder = builder.region(region);
    }
    let worker = builder
        .build(manager)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // A queue that does not exist or cannot be read stops start-up (exit 2) rather than run a
    // worker whose every receive fails.
    worker::check_queue(&worker, config.queue_variable())
        .await
        .map_err(Failure::Usage)?;
    // One pool for both listeners: header and idle timeouts, one cap on connections.
    let pool = HttpPool::new(config.http_limits(), None);
    if let Some(addr) = config.status_addr() {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Failure::Runtime(format!(
                "cannot listen on {addr} for /healthz and /status (set STATUS_PORT, 0 turns it off): {e}"
            ))
        })?;
        tracing::info!("Health and status on http://{addr}/status");
        worker::serve_status(&pool, listener, worker.clone());
    }
    worker::on_sigusr1(&worker, drain_signal);
    let source: app_support::metrics::Source = {
        let worker = worker.clone();
        std::sync::Arc::new(move || worker::metrics(&worker))
    };
    app_support::metrics::start(
        source,
        config.metrics.emf_interval(),
        config.metrics.prometheus_addr(),
        &pool,
        app_support::metrics::metric_dimensions(
            context.clone(),
            config.metrics.service_name(),
            "queue-consumer",
        ),
    )
    .await
    .map_err(Failure::Runtime)?;
    if let (Some(context), Some(interval)) = (&context, config.drain_watch_interval()) {
        worker.follow_watcher(spawn_drain_watch(context, interval, None));
    }
    worker
        .run(supervisor.shutdown_signal(app_support::shutdown::signal()))
        .await;
    Ok(())
}

/// `queue-consumer send`: `count` demo jobs of `work_ms`, in message group `group_id` (which a
/// FIFO queue needs).
async fn send(
    config: &WorkerConfig,
    count: u32,
    work_ms: u64,
    group_id: Option<&str>,
) -> Result<(), Failure> {
    let queue_url = config.queue_url().map_err(Failure::Usage)?;
    if group_id.is_none() && worker::is_fifo(&queue_url) {
        return Err(Failure::Usage(format!(
            "{} names a FIFO queue (its name ends .fifo), whose messages go to a message group: \
             add --group-id NAME",
            config.queue_variable()
        )));
    }
    let sdk_config = ecs::aws_config().await;
    let bodies = vec![work_ms.to_string(); count as usize];
    let region = config.queue_region();
    let sent = match group_id {
        Some(group) => {
            worker::send_jobs_in_group(&sdk_config, &queue_url, region.as_deref(), group, &bodies)
                .await
        }
        None => worker::send_jobs(&sdk_config, &queue_url, region.as_deref(), &bodies).await,
    };
    let ids = sent.map_err(|e| Failure::Runtime(format!("could not send the jobs: {e}")))?;
    println!(
        "Sent {} jobs of {work_ms} milliseconds to {queue_url}{}{}",
        ids.len(),
        group_id
            .map(|g| format!(" in group {g:?}"))
            .unwrap_or_default(),
        ids.first()
            .map(|id| format!(" (first: {id})"))
            .unwrap_or_default()
    );
    Ok(())
}

/// `queue-consumer create-queue`: queue `name` (FIFO with `fifo`) and its dead-letter queue,
/// after `max_receive_count` receives.
async fn create_queue(
    config: &WorkerConfig,
    name: &str,
    fifo: bool,
    max_receive_count: u32,
) -> Result<(), Failure> {
    let sdk_config = ecs::aws_config().await;
    let region = config.queue_region();
    let queue = worker::NewQueue {
        name: name.to_string(),
        visibility: config.worker_settings().visibility_timeout,
        max_receive_count,
        fifo,
    };
    let url = worker::create_queue(&sdk_config, region.as_deref(), &queue)
        .await
        .map_err(|e| Failure::Runtime(format!("could not create the queue: {e}")))?;
    println!("{url}");
    Ok(())
}

/// `queue-consumer health`: 0 when the worker's `/healthz` answers 200 within 3 s.
async fn health(config: &WorkerConfig) -> ExitCode {
    let Some(addr) = config.status_addr() else {
        eprintln!("unhealthy: the status endpoint is off (STATUS_PORT=0)");
        return ExitCode::FAILURE;
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}/healthz", SocketAddr::new(ip, addr.port()));
    let answer = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        client.get(&url).send().await
    };
    match answer.await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: {url} answered HTTP {}", r.status().as_u16());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: no answer from {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The handler `mode` asks for. A command's child gets SIGTERM when the worker begins shutting
/// down and SIGKILL when the shutdown timeout has passed; a child whose job is cancelled otherwise
/// (its timeout, a drain deadline) gets SIGTERM, then SIGKILL within the worker's cancel grace. A
/// POST waits for the job's timeout, when there is one.
fn handler_for(
    mode: &JobMode,
    settings: &worker::WorkerSettings,
) -> Result<std::sync::Arc<dyn Handler>, String> {
    Ok(match mode {
        JobMode::Demo => std::sync::Arc::new(DemoJob::new(settings.visibility_timeout)),
        JobMode::Command(command) => {
            let kill_after = settings
                .cancel_grace
                .saturating_sub(Duration::from_millis(500));
            std::sync::Arc::new(CommandHandler::new(command.clone(), kill_after))
        }
        JobMode::Url(url) => {
            let timeout = settings.job_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
            std::sync::Arc::new(
                HttpHandler::new(url.clone(), timeout)
                    .map_err(|e| format!("cannot set up the HTTP client for JOB_URL: {e}"))?,
            )
        }
        _ => return Err(format!("{mode} is not supported by this build")),
    })
}
