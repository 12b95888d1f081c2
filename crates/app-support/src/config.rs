//! The settings both applications read, from command-line flags or environment variables alike,
//! and what they turn into: the protection [`Settings`], the [`BackendPlan`] (the `auto` backend
//! choice), the metrics and the HTTP listeners' limits, and logging.
//!
//! Every setting has a flag (`--port`) and an environment variable (`PORT`); the flag wins. A value
//! outside its range stops start-up with a message naming the variable and the range. Defaults
//! come from the types they configure ([`Settings::DEFAULT`], [`HttpLimits::DEFAULT`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::ValueEnum;

use crate::listener::HttpLimits;
use crate::origin::AllowedOrigins;
use ecs_task_protection::ecs::{BackendPlan, EcsSettings};
use ecs_task_protection::protection::{Settings, DURATION_MINUTES};

/// How long a drain lasts at most by default (`DRAIN_DEADLINE_SECS`): 15 minutes, long enough
/// for most game rounds and jobs to end on their own, short enough that one idle client cannot
/// hold a deployment back for long. A scale-in's drain has no deadline.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// The drain settings both programs share: how often to ask ECS whether the task is being
/// replaced, and how long a bounded drain may last.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// How often (seconds, jittered ±10 %) to ask ECS whether this task is being replaced (a
    /// deployment, or a scale-in that needs this task gone); while it is, no new work is taken. 0
    /// turns the watcher off. Needs the task metadata endpoint; off on the local backend.
    #[arg(long, env = "DRAIN_WATCH_INTERVAL_SECS", value_name = "DRAIN_WATCH_INTERVAL_SECS",
          default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_watch_interval_secs: u64,

    /// Once a deployment's or an operator's drain has lasted this many seconds, the work still
    /// in hand is let go (clients closed with 1001, so that the page reconnects elsewhere; jobs
    /// back to the queue) and protection is released; protection is never asked for past this
    /// deadline. A scale-in's drain is never cut short. 0: never (one idle client, or one long
    /// job, then holds a deployment back for as long as it lasts).
    #[arg(long, env = "DRAIN_DEADLINE_SECS", value_name = "DRAIN_DEADLINE_SECS",
          default_value_t = DEFAULT_DRAIN_DEADLINE.as_secs(), value_parser = clap::value_parser!(u64).range(0..=172_800))]
    pub drain_deadline_secs: u64,
}

impl DrainArgs {
    /// How often the drain watcher looks, or `None` when it is off.
    pub fn watch_interval(&self) -> Option<Duration> {
        seconds(self.drain_watch_interval_secs)
    }

    /// How long a bounded drain may last, or `None` for never.
    pub fn deadline(&self) -> Option<Duration> {
        seconds(self.drain_deadline_secs)
    }
}

/// How the server reaches ECS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The agent endpoint when `ECS_AGENT_URI` is set, else the ECS API when
    /// `ECS_CONTAINER_METADATA_URI_V4` is set, otherwise local.
    Auto,
    /// The ECS agent endpoint (`ECS_AGENT_URI`).
    Agent,
    /// The ECS API (`UpdateTaskProtection` with the task role's credentials).
    Api,
    /// An in-process simulation: no ECS calls (for laptops and CI).
    Local,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line (for CloudWatch Logs Insights).
    Json,
}

/// The settings of the protection manager and of the way it reaches ECS, shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ProtectionArgs {
    /// How long each protect call protects the task for, in minutes [default: 30 for websocket,
    /// 1 for queue-consumer].
    #[arg(long, env = "PROTECTION_DURATION_MINUTES", value_name = "PROTECTION_DURATION_MINUTES",
          value_parser = clap::value_parser!(u32).range(i64::from(*DURATION_MINUTES.start())..=i64::from(*DURATION_MINUTES.end())))]
    pub protection_duration_minutes: Option<u32>,

    /// Hold-over: if the last holder lets go less than this share of the duration after protection
    /// was set, keep protection until that mark (absorbs churn) [default: 10].
    #[arg(long, env = "PROTECTION_MAINTAIN_PERCENT", value_name = "PROTECTION_MAINTAIN_PERCENT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub protection_maintain_percent: Option<u8>,

    /// Refresh protection at this share of its duration while it is still wanted [default: 80].
    #[arg(long, env = "PROTECTION_REFRESH_PERCENT", value_name = "PROTECTION_REFRESH_PERCENT",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub protection_refresh_percent: Option<u8>,

    /// How often the protection state is re-checked, in milliseconds [default: 10000].
    #[arg(long, env = "PROTECTION_ADJUST_INTERVAL_MS", value_name = "PROTECTION_ADJUST_INTERVAL_MS",
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub protection_adjust_interval_ms: Option<u64>,

    /// Which way to reach ECS.
    #[arg(long, env = "PROTECTION_BACKEND", value_name = "PROTECTION_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub protection_backend: BackendChoice,

    /// The ECS agent's URI (set by ECS in every container): an `http://` or `https://` URL; blank
    /// counts as unset.
    #[arg(long, env = "ECS_AGENT_URI", value_name = "ECS_AGENT_URI",
          value_parser = clap::builder::ValueParser::new(parse_agent_uri))]
    pub ecs_agent_uri: Option<String>,

    /// The task metadata endpoint (set by ECS in every container); gives the cluster, task ARN
    /// and service name to the ECS API backend and the drain watcher.
    #[arg(
        long,
        env = "ECS_CONTAINER_METADATA_URI_V4",
        value_name = "ECS_CONTAINER_METADATA_URI_V4"
    )]
    pub ecs_metadata_uri: Option<String>,

    /// Cluster name or ARN for the ECS API backend outside ECS (with `ECS_TASK_ARN`).
    #[arg(long, env = "ECS_CLUSTER", value_name = "ECS_CLUSTER")]
    pub ecs_cluster: Option<String>,

    /// Task ARN for the ECS API backend outside ECS (with `ECS_CLUSTER`).
    #[arg(long, env = "ECS_TASK_ARN", value_name = "ECS_TASK_ARN")]
    pub ecs_task_arn: Option<String>,

    /// Endpoint override for the ECS API (a local stand-in, a VPC endpoint).
    #[arg(long, env = "ECS_ENDPOINT_URL", value_name = "ECS_ENDPOINT_URL")]
    pub ecs_endpoint_url: Option<String>,
}

impl ProtectionArgs {
    /// The protection manager's settings: what was given, over the binary's `defaults`.
    pub fn settings(&self, defaults: Settings) -> Settings {
        let mut settings = defaults.clone();
        if let Some(minutes) = self.protection_duration_minutes {
            settings = settings.with_duration_minutes(minutes);
        }
        if let Some(percent) = self.protection_maintain_percent {
            settings = settings.with_maintain_percent(percent);
        }
        if let Some(percent) = self.protection_refresh_percent {
            settings = settings.with_refresh_percent(percent);
        }
        if let Some(ms) = self.protection_adjust_interval_ms {
            settings = settings.with_adjust_interval(Duration::from_millis(ms));
        }
        settings
    }

    /// Which backend to build, and what it needs. `auto`: the agent endpoint if `ECS_AGENT_URI`
    /// is set, else the ECS API if the task metadata endpoint is set, else local. Wherever the
    /// task metadata endpoint is, the plan also carries the ECS settings (the drain watcher needs
    /// them on both ECS backends). Empty values count as unset. An error names what is missing.
    pub fn backend_plan(&self) -> Result<BackendPlan, String> {
        let agent_uri = non_empty(&self.ecs_agent_uri);
        let metadata_uri = non_empty(&self.ecs_metadata_uri);
        let choice = match (self.protection_backend, &agent_uri, &metadata_uri) {
            (BackendChoice::Auto, Some(_), _) => BackendChoice::Agent,
            (BackendChoice::Auto, None, Some(_)) => BackendChoice::Api,
            (BackendChoice::Auto, None, None) => BackendChoice::Local,
            (forced, _, _) => forced,
        };
        let ecs = EcsSettings {
            endpoint_url: non_empty(&self.ecs_endpoint_url),
            cluster: non_empty(&self.ecs_cluster),
            task_arn: non_empty(&self.ecs_task_arn),
            metadata_uri,
        };
        match choice {
            BackendChoice::Agent => {
                let uri = agent_uri.ok_or(
                    "PROTECTION_BACKEND=agent needs ECS_AGENT_URI (ECS sets it in every container)",
                )?;
                let ecs = ecs.metadata_uri.is_some().then_some(ecs);
                Ok(BackendPlan::Agent { uri, ecs })
            }
            BackendChoice::Api => Ok(BackendPlan::Api(ecs)),
            BackendChoice::Local | BackendChoice::Auto => Ok(BackendPlan::Local),
        }
    }
}

/// Logs, when the backend is the local simulation, which settings choose ECS (they are the
/// applications', not the library's).
pub fn log_local_hint() {
    tracing::info!("Set ECS_AGENT_URI or PROTECTION_BACKEND to use ECS");
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// The metrics settings, shared by both binaries (see [`crate::metrics`]).
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Write CloudWatch Embedded Metric Format lines to stdout (the awslogs driver turns them into
    /// metrics; no agent or IAM needed).
    #[arg(long, env = "METRICS_EMF", value_name = "METRICS_EMF", value_enum, default_value_t = Switch::Off)]
    pub metrics_emf: Switch,

    /// Seconds between two EMF lines.
    #[arg(long, env = "METRICS_INTERVAL_SECS", value_name = "METRICS_INTERVAL_SECS",
          default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metrics_interval_secs: u64,

    /// The `ServiceName` dimension; by default the task's ECS service, else the binary's name.
    #[arg(
        long,
        env = "METRICS_SERVICE_NAME",
        value_name = "METRICS_SERVICE_NAME"
    )]
    pub metrics_service_name: Option<String>,

    /// Port of a Prometheus `GET /metrics` endpoint (its own listener, not the public port); 0
    /// turns it off.
    #[arg(
        long,
        env = "METRICS_PROMETHEUS_PORT",
        value_name = "METRICS_PROMETHEUS_PORT",
        default_value_t = 0
    )]
    pub metrics_prometheus_port: u16,

    /// Address of the Prometheus endpoint.
    #[arg(long, env = "METRICS_BIND_ADDRESS", value_name = "METRICS_BIND_ADDRESS",
          default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub metrics_bind_address: IpAddr,
}

impl MetricsArgs {
    /// The EMF interval, or `None` when EMF is off.
    pub fn emf_interval(&self) -> Option<Duration> {
        (self.metrics_emf == Switch::On).then(|| Duration::from_secs(self.metrics_interval_secs))
    }

    /// The `METRICS_SERVICE_NAME` given, if any.
    pub fn service_name(&self) -> Option<String> {
        non_empty(&self.metrics_service_name)
    }

    /// Where the Prometheus endpoint listens, or `None` when it is off.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        (self.metrics_prometheus_port != 0)
            .then(|| SocketAddr::new(self.metrics_bind_address, self.metrics_prometheus_port))
    }
}

/// The limits of every HTTP listener (the server's port, the Prometheus port, the queue
/// consumer's status port), shared by both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Seconds a client may take to send a request's headers, counted from the connection's
    /// start for its first request and from the first byte of each later one; slower connections,
    /// and sockets that send nothing, are closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", value_name = "HTTP_HEADER_TIMEOUT_SECS",
          default_value_t = HttpLimits::DEFAULT.header_read_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub http_header_timeout_secs: u64,

    /// Seconds a kept-alive HTTP connection may sit idle between a response and the next request.
    /// Keep it above the load balancer's idle timeout (60 s by default), as AWS asks of targets:
    /// a target that closes first makes clients see 502s.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", value_name = "HTTP_IDLE_TIMEOUT_SECS",
          default_value_t = HttpLimits::DEFAULT.idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=7200))]
    pub http_idle_timeout_secs: u64,

    /// Most HTTP connections that have not upgraded to a WebSocket (page loads, health checks,
    /// idle sockets), on every port together; past it the oldest that is at least a second old is
    /// closed to make room.
    #[arg(long, env = "MAX_HTTP_CONNECTIONS", value_name = "MAX_HTTP_CONNECTIONS",
          default_value_t = HttpLimits::DEFAULT.max_pending as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_http_connections: u32,
}

impl HttpArgs {
    /// The limits, with `allowed_origins` for the WebSocket upgrades.
    pub fn limits(&self, allowed_origins: AllowedOrigins) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(self.http_header_timeout_secs),
            idle_timeout: Duration::from_secs(self.http_idle_timeout_secs),
            max_pending: self.max_http_connections as usize,
            allowed_origins,
        }
    }
}

/// `ECS_AGENT_URI`: blank (unset), or an `http://` or `https://` URL with a host.
fn parse_agent_uri(s: &str) -> Result<String, String> {
    let uri = s.trim();
    if uri.is_empty() {
        return Ok(String::new());
    }
    let url = reqwest::Url::parse(uri)
        .map_err(|e| format!("must be an http:// or https:// URL with a host ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http:// or https:// URL with a host".to_string());
    }
    Ok(uri.to_string())
}

/// Removes the AWS SDK's endpoint settings that are set but blank (`AWS_ENDPOINT_URL`,
/// `AWS_ENDPOINT_URL_<SERVICE>` such as `AWS_ENDPOINT_URL_ECS` or `AWS_ENDPOINT_URL_SQS`) from the
/// process's environment, so that they count as unset, as every setting of this crate does. The
/// SDK takes a blank one for an endpoint and panics ("URL was unset") in whichever task makes the
/// first call. Returns the names removed.
///
/// It changes the process's environment: call it first thing in `main`, while no other thread
/// exists.
pub fn unset_blank_aws_endpoints() -> Vec<String> {
    let blank: Vec<String> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            let endpoint = name == "AWS_ENDPOINT_URL" || name.starts_with("AWS_ENDPOINT_URL_");
            (endpoint && value.to_str().is_some_and(|v| v.trim().is_empty())).then_some(name)
        })
        .collect();
    for name in &blank {
        std::env::remove_var(name);
    }
    blank
}

/// A setting's value, unless it is missing or blank.
pub fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl LogFormat {
    /// Sets up logging: `RUST_LOG` (default `info`) in this format, coloured only on a terminal.
    ///
    /// # Errors
    ///
    /// When a global logger is already set (the first one stays).
    pub fn try_init(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        // Colours only on a terminal: not in files, pipes or CloudWatch.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(ansi);
        match self {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        }
    }
}

/// `secs` as a duration, `None` for 0 (a setting's "off").
pub fn seconds(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}
