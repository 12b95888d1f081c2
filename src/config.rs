//! Settings, from command-line flags or environment variables alike, and what they turn into:
//! the protection [`Settings`], the [`SessionLimits`], and the [`BackendPlan`] (the `auto`
//! backend choice).
//!
//! Every setting has a flag (`--port`) and an environment variable (`PORT`); the flag wins. A value
//! outside its range stops start-up with a message naming the variable and the range. Defaults
//! come from the types they configure ([`Settings::DEFAULT`], [`SessionLimits::DEFAULT`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::ecs::{BackendPlan, EcsSettings};
use crate::protection::{Settings, DURATION_MINUTES};
use crate::server::backplane::{BackplaneSettings, BackplaneUrl};
use crate::server::{AllowedOrigins, HttpLimits, SessionLimits};

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

/// Commands besides serving.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Asks a running server to drain, by sending it SIGUSR1. In an ECS container (where the
    /// server is process 1 and the image has no shell):
    /// `copilot svc exec --command "/usr/local/bin/websocket drain"`.
    Drain {
        /// The server's process id (a positive number: 0 and negative numbers would signal whole
        /// process groups).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,
    },
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
        Settings {
            duration_minutes: self
                .protection_duration_minutes
                .unwrap_or(defaults.duration_minutes),
            maintain_percent: self
                .protection_maintain_percent
                .unwrap_or(defaults.maintain_percent),
            refresh_percent: self
                .protection_refresh_percent
                .unwrap_or(defaults.refresh_percent),
            adjust_interval: self
                .protection_adjust_interval_ms
                .map_or(defaults.adjust_interval, Duration::from_millis),
            ..defaults
        }
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

/// The largest `CHAT_ROOM_DELIVERIES_PER_SEC`.
const ROOM_DELIVERIES_MAX: u32 = 100_000_000;

/// Checks that involve two settings, which clap cannot express one setting at a time. It has no
/// flags of its own: it reads the values of the settings it checks from the matches, and refuses
/// them as clap refuses any bad value (exit code 2, naming the variable and its range). Clap's
/// derived parser takes each value out of the matches as it fills the field for it, so this must
/// come before those fields in [`Config`] (a unit test fails if it does not).
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossChecks;

impl clap::FromArgMatches for CrossChecks {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let max_connections = matches.get_one::<u32>("max_connections");
        let budget = matches.get_one::<u32>("chat_room_deliveries_per_sec");
        if let (Some(&max_connections), Some(&budget)) = (max_connections, budget) {
            room_budget_fits(budget, max_connections)
                .map_err(|m| clap::Error::raw(clap::error::ErrorKind::ValueValidation, m))?;
        }
        Ok(Self)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        Self::from_arg_matches(matches).map(|_| ())
    }
}

impl clap::Args for CrossChecks {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd
    }
}

/// Whether the room's delivery budget can pay for one message to a full room: `budget` is 0 (no
/// limit) or at least `max_connections` (a message from another task reaches every client, one
/// delivery each, and the budget holds one second's worth). A smaller budget would never deliver
/// chat once the room is full; the error says so, with the range.
fn room_budget_fits(budget: u32, max_connections: u32) -> Result<(), String> {
    if budget == 0 || budget >= max_connections {
        return Ok(());
    }
    Err(format!(
        "invalid value '{budget}' for 'CHAT_ROOM_DELIVERIES_PER_SEC': with \
         MAX_CONNECTIONS={max_connections} one message to a full room costs {max_connections} \
         deliveries, more than the budget ever holds, so chat would stop once the room fills; \
         use 0 (no limit) or a value in {max_connections}..={ROOM_DELIVERIES_MAX}"
    ))
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

/// `CHAT_BACKPLANE_URL` as given: a URL, or `None` when blank (as every other setting's blank
/// value, and what the Copilot addon passes while it is off).
#[derive(Debug, Clone)]
pub struct BackplaneUrlSetting(pub Option<BackplaneUrl>);

fn parse_backplane_url(s: &str) -> Result<BackplaneUrlSetting, crate::server::backplane::UrlError> {
    if s.trim().is_empty() {
        Ok(BackplaneUrlSetting(None))
    } else {
        s.parse::<BackplaneUrl>()
            .map(|url| BackplaneUrlSetting(Some(url)))
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
fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The `websocket` server's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "websocket",
    version,
    about = "A WebSocket game/chat server that keeps its Amazon ECS task protected from scale-in while any client is connected"
)]
pub struct Config {
    /// Checks between settings (see [`CrossChecks`]). It must stay the first field: the derived
    /// parser takes each value out of the matches as it fills the field for it.
    #[command(flatten)]
    pub checks: CrossChecks,

    /// Run a command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TCP port to listen on (0 picks a free port).
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", value_name = "BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_address: IpAddr,

    /// Protection settings and the way to reach ECS.
    #[command(flatten)]
    pub protection: ProtectionArgs,

    /// Metrics (CloudWatch EMF, Prometheus).
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// How often (seconds, jittered ±10 %) to ask ECS whether this task is being replaced (a
    /// deployment to another task definition, or a scale-in); 0 turns the watcher off. Needs the
    /// task metadata endpoint; off on the local backend.
    #[arg(long, env = "DRAIN_WATCH_INTERVAL_SECS", value_name = "DRAIN_WATCH_INTERVAL_SECS",
          default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_watch_interval_secs: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Most WebSocket clients at once; further upgrades get HTTP 503.
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS",
          default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Largest text message a client may send, in bytes; a larger one closes that client with
    /// 1009 (message too big).
    #[arg(long, env = "MAX_MESSAGE_BYTES", value_name = "MAX_MESSAGE_BYTES",
          default_value_t = SessionLimits::DEFAULT.max_message_bytes as u32,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_message_bytes: u32,

    /// Seconds between the server's WebSocket pings (keeps idle connections alive behind a load
    /// balancer with a 60 s idle timeout); a peer silent for two intervals is dropped.
    #[arg(long, env = "WS_PING_INTERVAL_SECS", value_name = "WS_PING_INTERVAL_SECS",
          default_value_t = SessionLimits::DEFAULT.ping_interval.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub ws_ping_interval_secs: u64,

    /// Messages that may wait for one client before it counts as too slow and is closed (1008).
    #[arg(long, env = "CLIENT_QUEUE_MESSAGES", value_name = "CLIENT_QUEUE_MESSAGES",
          default_value_t = SessionLimits::DEFAULT.queue_messages as u32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub client_queue_messages: u32,

    /// Chat messages one client may send per second (bursts of twice that); a faster client is
    /// closed with 1008. 0 turns the limit off. Pings do not count.
    #[arg(long, env = "CHAT_MESSAGES_PER_SEC", value_name = "CHAT_MESSAGES_PER_SEC",
          default_value_t = SessionLimits::DEFAULT.chat_per_sec,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub chat_messages_per_sec: u32,

    /// Chat deliveries (one message to one client) the whole room may make per second: a message
    /// to N other clients costs N; one the budget cannot pay for is dropped and its sender told.
    /// 0 turns the limit off; otherwise it must be at least MAX_CONNECTIONS, the cost of one
    /// message to a full room.
    #[arg(long, env = "CHAT_ROOM_DELIVERIES_PER_SEC", value_name = "CHAT_ROOM_DELIVERIES_PER_SEC",
          default_value_t = SessionLimits::DEFAULT.room_deliveries_per_sec,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(ROOM_DELIVERIES_MAX)))]
    pub chat_room_deliveries_per_sec: u32,

    /// Once draining, close the clients still connected after this many seconds (with 1001, so
    /// the page reconnects to another task) and release protection; protection is never asked for
    /// past this deadline. 0 keeps them (and protection) until they leave, which lets one idle
    /// client hold a deployment back for as long as it stays.
    #[arg(long, env = "DRAIN_DEADLINE_SECS", value_name = "DRAIN_DEADLINE_SECS",
          default_value_t = crate::server::drain::DEFAULT_DEADLINE.as_secs(), value_parser = clap::value_parser!(u64).range(0..=172_800))]
    pub drain_deadline_secs: u64,

    /// Start draining once protection has been held without a break for this many minutes, so
    /// that a server that is never empty still lets a deployment replace it. 0 turns it off.
    #[arg(long, env = "MAX_PROTECTED_MINUTES", value_name = "MAX_PROTECTED_MINUTES",
          default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=525_600))]
    pub max_protected_minutes: u32,

    /// The HTTP listeners' timeouts and cap.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Web pages that may open a WebSocket, by their `Origin`: `same-host` (the page's own host,
    /// whatever name the load balancer is reached by), `*` (any), or a comma-separated list of
    /// `scheme://host[:port]`. Clients that send no `Origin` (not browsers) are always allowed;
    /// others get HTTP 403.
    #[arg(long, env = "ALLOWED_ORIGINS", value_name = "ALLOWED_ORIGINS", default_value = "same-host",
          value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<AllowedOrigins>()))]
    pub allowed_origins: AllowedOrigins,

    /// Chat across tasks: a `redis://` or `rediss://` (TLS) URL of a Redis or Valkey server,
    /// with the user and password in it if the server wants them (`rediss://user:pass@host:6379`).
    /// Unset or empty: chat stays within this task. A server that is down at start-up does not
    /// stop it.
    #[arg(long, env = "CHAT_BACKPLANE_URL", value_name = "CHAT_BACKPLANE_URL",
          value_parser = clap::builder::ValueParser::new(parse_backplane_url))]
    pub chat_backplane_url: Option<BackplaneUrlSetting>,

    /// How often (seconds) each task writes its connection count to the backplane and reads the
    /// others' (`fleet_connections` in /status); a count not refreshed for three times this long
    /// is no longer counted.
    #[arg(long, env = "CHAT_BACKPLANE_REFRESH_SECS", value_name = "CHAT_BACKPLANE_REFRESH_SECS",
          default_value_t = BackplaneSettings::DEFAULT_REFRESH.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=BackplaneSettings::MAX_REFRESH.as_secs()))]
    pub chat_backplane_refresh_secs: u64,

    /// Seconds the server may take to close clients and release protection on SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", value_name = "SHUTDOWN_TIMEOUT_SECS",
          default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=110))]
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.port)
    }

    /// The protection manager's settings (the defaults are [`Settings::DEFAULT`]).
    pub fn protection_settings(&self) -> Settings {
        self.protection.settings(Settings::DEFAULT)
    }

    /// The per-connection limits.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_message_bytes: self.max_message_bytes as usize,
            ping_interval: Duration::from_secs(self.ws_ping_interval_secs),
            queue_messages: self.client_queue_messages as usize,
            chat_per_sec: self.chat_messages_per_sec,
            room_deliveries_per_sec: self.chat_room_deliveries_per_sec,
            ..SessionLimits::DEFAULT
        }
    }

    /// The HTTP side's limits.
    pub fn http_limits(&self) -> HttpLimits {
        self.http.limits(self.allowed_origins.clone())
    }

    /// How often the drain watcher looks, or `None` when it is off.
    pub fn drain_watch_interval(&self) -> Option<Duration> {
        seconds(self.drain_watch_interval_secs)
    }

    /// How long a drain may last before the remaining clients are closed, or `None` for never.
    pub fn drain_deadline(&self) -> Option<Duration> {
        seconds(self.drain_deadline_secs)
    }

    /// How long protection may be held without a break before the server drains, or `None`.
    pub fn max_protected(&self) -> Option<Duration> {
        seconds(u64::from(self.max_protected_minutes) * 60)
    }

    /// The chat backplane's settings, or `None` when `CHAT_BACKPLANE_URL` is unset. `task_arn`
    /// (when known) gives this task's id on the channel; otherwise it is random.
    pub fn backplane_settings(&self, task_arn: Option<&str>) -> Option<BackplaneSettings> {
        let mut settings = BackplaneSettings::new(self.chat_backplane_url.clone()?.0?);
        if let Some(id) = task_arn.and_then(crate::server::backplane::origin_from_task_arn) {
            settings.origin = id;
        }
        settings.refresh = Duration::from_secs(self.chat_backplane_refresh_secs);
        Some(settings)
    }

    /// The longest the SIGTERM sequence may take.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// The `queue-consumer` worker's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "queue-consumer",
    version,
    about = "An SQS worker that keeps its Amazon ECS task protected from scale-in while it has jobs in hand"
)]
pub struct WorkerConfig {
    /// Run a command instead of taking jobs.
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,

    /// The queue's URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, or a local endpoint's).
    #[arg(long, global = true, env = "QUEUE_URL", value_name = "QUEUE_URL",
          value_parser = clap::builder::ValueParser::new(parse_queue_url))]
    pub queue_url: Option<String>,

    /// The queue's URL as a Copilot Worker Service receives it (used when QUEUE_URL is unset).
    #[arg(
        long,
        global = true,
        env = "COPILOT_QUEUE_URI",
        value_name = "COPILOT_QUEUE_URI",
        value_parser = clap::builder::ValueParser::new(parse_queue_url)
    )]
    pub copilot_queue_uri: Option<String>,

    /// The queue's Region, when it is neither the one its URL names nor the SDK's (AWS_REGION).
    #[arg(long, global = true, env = "QUEUE_REGION", value_name = "QUEUE_REGION",
          value_parser = clap::builder::ValueParser::new(parse_region))]
    pub queue_region: Option<String>,

    /// Jobs that may run at once.
    #[arg(long, env = "WORKER_CONCURRENCY", value_name = "WORKER_CONCURRENCY",
          default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub worker_concurrency: u32,

    /// Seconds a received message stays hidden from other workers; extended every third of it
    /// while its job runs, so a crashed worker's jobs come back within this long.
    #[arg(long, env = "VISIBILITY_TIMEOUT_SECS", value_name = "VISIBILITY_TIMEOUT_SECS",
          default_value_t = 60, value_parser = clap::value_parser!(u64).range(3..=43_200))]
    pub visibility_timeout_secs: u64,

    /// Seconds one receive waits for messages (long polling).
    #[arg(long, env = "RECEIVE_WAIT_SECS", value_name = "RECEIVE_WAIT_SECS",
          default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub receive_wait_secs: u64,

    /// Milliseconds a job waits for ECS to confirm protection before it starts anyway.
    #[arg(long, env = "PROTECTION_WAIT_MS", value_name = "PROTECTION_WAIT_MS",
          default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub protection_wait_ms: u64,

    /// Seconds running jobs may go on after SIGTERM before they are returned to the queue; keep it
    /// about 10 s below the container's stop timeout (30 s by default, at most 120 s on Fargate).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", value_name = "SHUTDOWN_TIMEOUT_SECS",
          default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=110))]
    pub shutdown_timeout_secs: u64,

    /// How often (seconds, jittered ±10 %) to ask ECS whether this task is being replaced (a
    /// deployment, or a scale-in); while it is, no new jobs are taken. 0 turns the watcher off.
    /// Needs the task metadata endpoint; off on the local backend.
    #[arg(long, env = "DRAIN_WATCH_INTERVAL_SECS", value_name = "DRAIN_WATCH_INTERVAL_SECS",
          default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_watch_interval_secs: u64,

    /// Once a deployment's (or an operator's) drain has lasted this many seconds, the jobs still
    /// running go back to the queue and protection is released. A scale-in's drain is never cut
    /// short. 0: never (a long job then holds a deployment back until it ends).
    #[arg(long, env = "DRAIN_DEADLINE_SECS", value_name = "DRAIN_DEADLINE_SECS",
          default_value_t = crate::server::drain::DEFAULT_DEADLINE.as_secs(), value_parser = clap::value_parser!(u64).range(0..=172_800))]
    pub drain_deadline_secs: u64,

    /// Port of the worker's `/healthz` and `/status` endpoint; 0 turns it off.
    #[arg(
        long,
        env = "STATUS_PORT",
        value_name = "STATUS_PORT",
        default_value_t = 8080
    )]
    pub status_port: u16,

    /// Address of the `/healthz` and `/status` endpoint (loopback: only the container itself, e.g.
    /// `queue-consumer health`, reaches it).
    #[arg(long, global = true, env = "STATUS_BIND_ADDRESS", value_name = "STATUS_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub status_bind_address: IpAddr,

    /// The status and Prometheus listeners' timeouts and cap.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Protection settings and the way to reach ECS.
    #[command(flatten)]
    pub protection: ProtectionArgs,

    /// Metrics (CloudWatch EMF, Prometheus).
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The queue consumer's commands besides taking jobs.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum WorkerCommand {
    /// Puts jobs on the queue: each is WORK_MS milliseconds of simulated work.
    Send {
        /// How many jobs to send.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Milliseconds of work per job.
        work_ms: u64,
    },
    /// Creates a queue with a dead-letter queue (`NAME-dlq`, after 3 receives) and prints its URL,
    /// for trying the worker against a local SQS (moto's server, LocalStack).
    CreateQueue {
        /// The queue's name.
        name: String,
    },
    /// Exits 0 if the running worker in this container answers its health check (for ECS's
    /// container health check in an image without a shell), 1 otherwise.
    Health,
    /// Asks a running worker to drain (take no new jobs, finish the ones in hand), by sending it
    /// SIGUSR1. In an ECS container (where the worker is process 1 and the image has no shell):
    /// `copilot svc exec --command "/usr/local/bin/queue-consumer drain"`.
    Drain {
        /// The worker's process id (a positive number: 0 and negative numbers would signal whole
        /// process groups).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,
    },
}

impl WorkerConfig {
    /// The queue's URL: `QUEUE_URL`, else `COPILOT_QUEUE_URI`; an error says what to set.
    pub fn queue_url(&self) -> Result<String, String> {
        non_empty(&self.queue_url)
            .or_else(|| non_empty(&self.copilot_queue_uri))
            .ok_or_else(|| {
                "no queue: set QUEUE_URL to the queue's URL (a Copilot Worker Service gets \
                 COPILOT_QUEUE_URI instead)"
                    .to_string()
            })
    }

    /// The queue's Region, when given.
    pub fn queue_region(&self) -> Option<String> {
        non_empty(&self.queue_region)
    }

    /// The protection manager's settings (the defaults are the sample's queue consumer's).
    pub fn protection_settings(&self) -> Settings {
        self.protection.settings(crate::worker::PROTECTION_DEFAULTS)
    }

    /// How the worker takes and runs jobs.
    pub fn worker_settings(&self) -> crate::worker::WorkerSettings {
        crate::worker::WorkerSettings {
            concurrency: self.worker_concurrency as usize,
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs),
            receive_wait: Duration::from_secs(self.receive_wait_secs),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            protection_wait: Duration::from_millis(self.protection_wait_ms),
            drain_deadline: seconds(self.drain_deadline_secs),
        }
    }

    /// The limits of the status and Prometheus listeners.
    pub fn http_limits(&self) -> HttpLimits {
        self.http.limits(AllowedOrigins::SameHost)
    }

    /// How often the drain watcher looks, or `None` when it is off.
    pub fn drain_watch_interval(&self) -> Option<Duration> {
        seconds(self.drain_watch_interval_secs)
    }

    /// Where the status endpoint listens, or `None` when it is off.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        (self.status_port != 0).then(|| SocketAddr::new(self.status_bind_address, self.status_port))
    }
}

impl LogFormat {
    /// Sets up logging: `RUST_LOG` (default `info`) in this format, coloured only on a terminal.
    pub fn init(self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        // Colours only on a terminal: not in files, pipes or CloudWatch.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(ansi);
        match self {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
    }
}

/// A queue URL setting: blank counts as unset (kept blank, refused later as missing); anything
/// else must have the shape of a queue URL.
fn parse_queue_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if !value.is_empty() {
        crate::worker::check_queue_url(value)?;
    }
    Ok(value.to_string())
}

/// A Region setting: blank counts as unset; anything else must have the shape of a Region.
fn parse_region(value: &str) -> Result<String, String> {
    let value = value.trim();
    if !value.is_empty() {
        crate::worker::check_region(value)?;
    }
    Ok(value.to_string())
}

/// `secs` as a duration, `None` for 0 (a setting's "off").
fn seconds(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("websocket").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.port, 3000);
        let settings = c.protection_settings();
        assert_eq!(settings.duration_minutes, 30);
        assert_eq!(settings.maintain_percent, 10);
        assert_eq!(settings.refresh_percent, 80);
        assert_eq!(settings.adjust_interval, Duration::from_secs(10));
        assert_eq!(c.protection.protection_backend, BackendChoice::Auto);
        settings.validate().unwrap();
        assert_eq!(settings, Settings::DEFAULT);
        let limits = c.session_limits();
        assert_eq!(
            limits.max_message_bytes,
            SessionLimits::DEFAULT.max_message_bytes
        );
        assert_eq!(limits.ping_interval, SessionLimits::DEFAULT.ping_interval);
        assert_eq!(limits.queue_messages, SessionLimits::DEFAULT.queue_messages);
        assert_eq!(limits.chat_per_sec, SessionLimits::DEFAULT.chat_per_sec);
        assert_eq!(
            limits.room_deliveries_per_sec,
            SessionLimits::DEFAULT.room_deliveries_per_sec
        );
        assert_eq!(
            c.drain_deadline(),
            Some(crate::server::drain::DEFAULT_DEADLINE)
        );
        assert_eq!(c.max_protected(), None);
        assert_eq!(c.http_limits(), HttpLimits::DEFAULT);
    }

    #[test]
    fn out_of_range_values_name_the_variable_and_the_range() {
        let e = parse(&["--protection-duration-minutes", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("PROTECTION_DURATION_MINUTES"), "{e}");
        assert!(e.contains("1..=2880"), "{e}");
        let e = parse(&["--protection-refresh-percent", "0"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PROTECTION_REFRESH_PERCENT") && e.contains("1..=100"),
            "{e}"
        );
        let e = parse(&["--protection-maintain-percent", "101"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PROTECTION_MAINTAIN_PERCENT") && e.contains("0..=100"),
            "{e}"
        );
        let e = parse(&["--protection-backend", "cloud"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PROTECTION_BACKEND") && e.contains("auto"),
            "{e}"
        );
    }

    #[test]
    fn the_chat_backplane_is_off_unless_a_redis_url_is_given() {
        assert!(parse(&[]).unwrap().backplane_settings(None).is_none());
        // Blank, as the Copilot addon passes it while it is off: unset.
        for blank in ["", "  "] {
            let c = parse(&["--chat-backplane-url", blank]).unwrap();
            assert!(c.backplane_settings(None).is_none());
        }
        let c = parse(&["--chat-backplane-url", "rediss://u:p@cache:6379"]).unwrap();
        let b = c
            .backplane_settings(Some("arn:aws:ecs:us-east-1:1:task/demo/abc123"))
            .unwrap();
        assert!(b.url.is_tls());
        assert_eq!(b.origin, "abc123");
        assert_eq!(b.refresh, BackplaneSettings::DEFAULT_REFRESH);
        for bad in ["http://cache:6379", "redis://cache:port"] {
            let e = parse(&["--chat-backplane-url", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("CHAT_BACKPLANE_URL"), "{bad}: {e}");
        }
        let e = parse(&["--chat-backplane-refresh-secs", "0"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CHAT_BACKPLANE_REFRESH_SECS") && e.contains("1..=300"),
            "{e}"
        );
    }

    #[test]
    fn the_room_budget_must_pay_for_one_message_to_a_full_room() {
        assert_eq!(room_budget_fits(0, 20_000), Ok(()));
        assert_eq!(room_budget_fits(20_000, 20_000), Ok(()));
        assert_eq!(room_budget_fits(200_000, 20_000), Ok(()));
        let e = room_budget_fits(19_999, 20_000).unwrap_err();
        assert!(
            e.contains("CHAT_ROOM_DELIVERIES_PER_SEC")
                && e.contains("MAX_CONNECTIONS=20000")
                && e.contains("20000..=100000000"),
            "{e}"
        );
        // Through the parser, flags and defaults alike (this fails if the check no longer sees
        // the values: see CrossChecks).
        for args in [
            &["--chat-room-deliveries-per-sec", "10000"][..],
            &["--max-connections", "300000"],
            &[
                "--max-connections",
                "50",
                "--chat-room-deliveries-per-sec",
                "49",
            ],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(
                e.to_string().contains("CHAT_ROOM_DELIVERIES_PER_SEC"),
                "{args:?}: {e}"
            );
        }
        let c = parse(&[
            "--max-connections",
            "50",
            "--chat-room-deliveries-per-sec",
            "50",
        ])
        .unwrap();
        assert_eq!(
            (c.max_connections, c.chat_room_deliveries_per_sec),
            (50, 50)
        );
        let c = parse(&[
            "--max-connections",
            "300000",
            "--chat-room-deliveries-per-sec",
            "0",
        ])
        .unwrap();
        assert_eq!(c.session_limits().room_deliveries_per_sec, 0);
    }

    #[test]
    fn the_backplane_believes_every_count_and_expiry_a_task_can_write() {
        use crate::server::backplane::MAX_TASK_CONNECTIONS;
        let most = MAX_TASK_CONNECTIONS.to_string();
        let no_budget = ["--chat-room-deliveries-per-sec", "0"];
        assert!(parse(&[&no_budget[..], &["--max-connections", &most]].concat()).is_ok());
        let more = (MAX_TASK_CONNECTIONS + 1).to_string();
        let e = parse(&[&no_budget[..], &["--max-connections", &more]].concat()).unwrap_err();
        assert!(e.to_string().contains("MAX_CONNECTIONS"), "{e}");
        let longest = BackplaneSettings::MAX_REFRESH.as_secs().to_string();
        assert!(parse(&["--chat-backplane-refresh-secs", &longest]).is_ok());
        let longer = (BackplaneSettings::MAX_REFRESH.as_secs() + 1).to_string();
        assert!(parse(&["--chat-backplane-refresh-secs", &longer]).is_err());
    }

    #[test]
    fn allowed_origins_with_no_origin_is_refused_naming_the_variable() {
        let e = parse(&["--allowed-origins", ","]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("ALLOWED_ORIGINS"), "{e}");
    }

    #[test]
    fn the_http_limits_are_the_same_settings_in_both_binaries() {
        assert_eq!(
            parse(&[]).unwrap().http_limits().idle_timeout,
            Duration::from_secs(75)
        );
        assert_eq!(
            worker(&["--queue-url", "http://q/1/jobs"])
                .unwrap()
                .http_limits(),
            HttpLimits::DEFAULT
        );
        let c = worker(&[
            "--http-header-timeout-secs",
            "2",
            "--http-idle-timeout-secs",
            "90",
            "--max-http-connections",
            "50",
        ])
        .unwrap();
        let limits = c.http_limits();
        assert_eq!(
            (
                limits.header_read_timeout,
                limits.idle_timeout,
                limits.max_pending
            ),
            (Duration::from_secs(2), Duration::from_secs(90), 50)
        );
        for value in ["0", "7201"] {
            let e = parse(&["--http-idle-timeout-secs", value])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("HTTP_IDLE_TIMEOUT_SECS") && e.contains("1..=7200"),
                "{e}"
            );
        }
    }

    #[test]
    fn ecs_agent_uri_is_an_http_url_or_blank() {
        for good in ["http://169.254.170.2/api/x", "https://agent:51679", " "] {
            assert!(parse(&["--ecs-agent-uri", good]).is_ok(), "{good:?}");
        }
        for bad in ["ftp://169.254.170.2/api", "169.254.170.2/api", "http://"] {
            let e = parse(&["--ecs-agent-uri", bad]).unwrap_err().to_string();
            assert!(
                e.contains("ECS_AGENT_URI") && e.contains("http://"),
                "{bad}: {e}"
            );
        }
    }

    fn worker(args: &[&str]) -> Result<WorkerConfig, clap::Error> {
        WorkerConfig::try_parse_from(std::iter::once("queue-consumer").chain(args.iter().copied()))
    }

    #[test]
    fn the_worker_defaults_follow_the_samples_queue_consumer() {
        let c = worker(&["--queue-url", "http://q/1/jobs"]).unwrap();
        let p = c.protection_settings();
        assert_eq!(
            (p.duration_minutes, p.maintain_percent, p.refresh_percent),
            (1, 10, 80)
        );
        let w = c.worker_settings();
        assert_eq!(w.concurrency, 1);
        assert_eq!(w.visibility_timeout, Duration::from_secs(60));
        assert_eq!(w.receive_wait, Duration::from_secs(20));
        assert_eq!(w.drain_deadline, Some(Duration::from_secs(900)));
        assert_eq!(c.drain_watch_interval(), Some(Duration::from_secs(30)));
        let c = worker(&[
            "--drain-deadline-secs",
            "0",
            "--drain-watch-interval-secs",
            "0",
        ])
        .unwrap();
        assert_eq!(c.worker_settings().drain_deadline, None, "0 = never");
        assert_eq!(c.drain_watch_interval(), None, "0 = off");
        // A setting given wins over the binary's default.
        let c = worker(&["--protection-duration-minutes", "5"]).unwrap();
        assert_eq!(c.protection_settings().duration_minutes, 5);
    }

    #[test]
    fn the_queue_comes_from_queue_url_or_copilots_variable() {
        assert_eq!(
            worker(&["--queue-url", "http://a/1/jobs"])
                .unwrap()
                .queue_url(),
            Ok("http://a/1/jobs".into())
        );
        assert_eq!(
            worker(&["--copilot-queue-uri", "http://b/1/jobs"])
                .unwrap()
                .queue_url(),
            Ok("http://b/1/jobs".into())
        );
        assert_eq!(
            worker(&[
                "--queue-url",
                "http://a/1/jobs",
                "--copilot-queue-uri",
                "http://b/1/jobs"
            ])
            .unwrap()
            .queue_url(),
            Ok("http://a/1/jobs".into())
        );
        let e = worker(&["--queue-url", " "])
            .unwrap()
            .queue_url()
            .unwrap_err();
        assert!(
            e.contains("QUEUE_URL") && e.contains("COPILOT_QUEUE_URI"),
            "{e}"
        );
    }

    #[test]
    fn worker_settings_out_of_range_name_the_variable_and_the_range() {
        for (flag, value, variable, range) in [
            ("--worker-concurrency", "0", "WORKER_CONCURRENCY", "1..=100"),
            (
                "--worker-concurrency",
                "101",
                "WORKER_CONCURRENCY",
                "1..=100",
            ),
            (
                "--visibility-timeout-secs",
                "43201",
                "VISIBILITY_TIMEOUT_SECS",
                "3..=43200",
            ),
            ("--receive-wait-secs", "21", "RECEIVE_WAIT_SECS", "1..=20"),
            (
                "--drain-deadline-secs",
                "172801",
                "DRAIN_DEADLINE_SECS",
                "0..=172800",
            ),
            (
                "--drain-watch-interval-secs",
                "3601",
                "DRAIN_WATCH_INTERVAL_SECS",
                "0..=3600",
            ),
            (
                "--shutdown-timeout-secs",
                "0",
                "SHUTDOWN_TIMEOUT_SECS",
                "1..=110",
            ),
        ] {
            let e = worker(&[flag, value]).unwrap_err().to_string();
            assert!(
                e.contains(variable) && e.contains(range),
                "{flag} {value}: {e}"
            );
        }
    }

    #[test]
    fn a_malformed_queue_url_or_region_names_its_variable() {
        for (flag, value, variable) in [
            ("--queue-url", "jobs", "QUEUE_URL"),
            (
                "--queue-url",
                "https://sqs.us-east-1.amazonaws.com/jobs",
                "QUEUE_URL",
            ),
            (
                "--copilot-queue-uri",
                "arn:aws:sqs:us-east-1:123456789012:jobs",
                "COPILOT_QUEUE_URI",
            ),
            ("--queue-region", "us-east", "QUEUE_REGION"),
            (
                "--queue-region",
                "https://sqs.us-east-1.amazonaws.com",
                "QUEUE_REGION",
            ),
        ] {
            let e = worker(&[flag, value]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let e = e.to_string();
            assert!(e.contains(variable), "{flag} {value}: {e}");
        }
        let c = worker(&[
            "--queue-url",
            " https://sqs.us-east-1.amazonaws.com/123456789012/jobs ",
            "--queue-region",
            "eu-west-1",
        ])
        .unwrap();
        assert_eq!(
            c.queue_url().unwrap(),
            "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
        );
        assert_eq!(c.queue_region().as_deref(), Some("eu-west-1"));
        assert_eq!(
            worker(&["--queue-region", " "]).unwrap().queue_region(),
            None
        );
    }

    #[test]
    fn queue_consumer_drain_accepts_only_a_positive_pid() {
        let c = worker(&["drain"]).unwrap();
        assert_eq!(c.command, Some(WorkerCommand::Drain { pid: 1 }));
        for pid in ["0", "-1"] {
            let e = worker(&["drain", &format!("--pid={pid}")]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "--pid {pid}");
        }
    }

    fn plan(args: &[&str]) -> Result<BackendPlan, String> {
        parse(args).unwrap().protection.backend_plan()
    }

    const METADATA: &str = "http://169.254.170.2/v4/abc";

    #[test]
    fn auto_picks_local_outside_ecs() {
        assert_eq!(plan(&[]), Ok(BackendPlan::Local));
        // Blank values count as unset.
        assert_eq!(
            plan(&["--ecs-agent-uri", " ", "--ecs-metadata-uri", ""]),
            Ok(BackendPlan::Local)
        );
    }

    #[test]
    fn auto_picks_the_agent_when_ecs_agent_uri_is_set_and_keeps_the_metadata_for_the_watcher() {
        assert_eq!(
            plan(&["--ecs-agent-uri", "http://169.254.170.2/api/x"]),
            Ok(BackendPlan::Agent {
                uri: "http://169.254.170.2/api/x".into(),
                ecs: None
            })
        );
        let Ok(BackendPlan::Agent { ecs: Some(ecs), .. }) = plan(&[
            "--ecs-agent-uri",
            "http://169.254.170.2/api/x",
            "--ecs-metadata-uri",
            METADATA,
        ]) else {
            panic!("the agent, with the ECS settings for the watcher")
        };
        assert_eq!(ecs.metadata_uri.as_deref(), Some(METADATA));
    }

    #[test]
    fn auto_picks_the_api_with_only_the_metadata_endpoint() {
        let Ok(BackendPlan::Api(ecs)) = plan(&[
            "--ecs-metadata-uri",
            METADATA,
            "--ecs-endpoint-url",
            "http://127.0.0.1:1",
        ]) else {
            panic!("the API backend")
        };
        assert_eq!(ecs.metadata_uri.as_deref(), Some(METADATA));
        assert_eq!(ecs.endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn a_forced_backend_wins_and_the_agent_needs_its_uri() {
        assert_eq!(
            plan(&[
                "--protection-backend",
                "local",
                "--ecs-agent-uri",
                "http://a"
            ]),
            Ok(BackendPlan::Local)
        );
        assert!(matches!(
            plan(&["--protection-backend", "api", "--ecs-agent-uri", "http://a"]),
            Ok(BackendPlan::Api(_))
        ));
        let e = plan(&["--protection-backend", "agent"]).unwrap_err();
        assert!(e.contains("ECS_AGENT_URI"), "{e}");
    }
}
