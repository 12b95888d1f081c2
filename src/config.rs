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
use crate::server::SessionLimits;

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
        /// The server's process id.
        #[arg(long, default_value_t = 1)]
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
    /// How long each protect call protects the task for, in minutes.
    #[arg(long, env = "PROTECTION_DURATION_MINUTES", value_name = "PROTECTION_DURATION_MINUTES",
          default_value_t = Settings::DEFAULT.duration_minutes,
          value_parser = clap::value_parser!(u32).range(i64::from(*DURATION_MINUTES.start())..=i64::from(*DURATION_MINUTES.end())))]
    pub protection_duration_minutes: u32,

    /// Hold-over: if the last holder lets go less than this share of the duration after protection
    /// was set, keep protection until that mark (absorbs connect/disconnect churn).
    #[arg(long, env = "PROTECTION_MAINTAIN_PERCENT", value_name = "PROTECTION_MAINTAIN_PERCENT",
          default_value_t = Settings::DEFAULT.maintain_percent, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub protection_maintain_percent: u8,

    /// Refresh protection at this share of its duration while it is still wanted.
    #[arg(long, env = "PROTECTION_REFRESH_PERCENT", value_name = "PROTECTION_REFRESH_PERCENT",
          default_value_t = Settings::DEFAULT.refresh_percent, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub protection_refresh_percent: u8,

    /// How often the protection state is re-checked, in milliseconds.
    #[arg(long, env = "PROTECTION_ADJUST_INTERVAL_MS", value_name = "PROTECTION_ADJUST_INTERVAL_MS",
          default_value_t = Settings::DEFAULT.adjust_interval.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub protection_adjust_interval_ms: u64,

    /// Which way to reach ECS.
    #[arg(long, env = "PROTECTION_BACKEND", value_name = "PROTECTION_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub protection_backend: BackendChoice,

    /// The ECS agent's URI (set by ECS in every container).
    #[arg(long, env = "ECS_AGENT_URI", value_name = "ECS_AGENT_URI")]
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
    /// The protection manager's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            duration_minutes: self.protection_duration_minutes,
            maintain_percent: self.protection_maintain_percent,
            refresh_percent: self.protection_refresh_percent,
            adjust_interval: Duration::from_millis(self.protection_adjust_interval_ms),
            ..Settings::DEFAULT
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

    /// Once draining, close the clients still connected after this many seconds (with 1001, so
    /// the page reconnects to another task). 0 keeps them until they leave.
    #[arg(long, env = "DRAIN_DEADLINE_SECS", value_name = "DRAIN_DEADLINE_SECS",
          default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=172_800))]
    pub drain_deadline_secs: u64,

    /// Start draining once protection has been held without a break for this many minutes, so
    /// that a server that is never empty still lets a deployment replace it. 0 turns it off.
    #[arg(long, env = "MAX_PROTECTED_MINUTES", value_name = "MAX_PROTECTED_MINUTES",
          default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=525_600))]
    pub max_protected_minutes: u32,

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

    /// The per-connection limits.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_message_bytes: self.max_message_bytes as usize,
            ping_interval: Duration::from_secs(self.ws_ping_interval_secs),
            queue_messages: self.client_queue_messages as usize,
            chat_per_sec: self.chat_messages_per_sec,
            ..SessionLimits::DEFAULT
        }
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

    /// The longest the SIGTERM sequence may take.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
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
        assert_eq!(c.protection.protection_duration_minutes, 30);
        assert_eq!(c.protection.protection_maintain_percent, 10);
        assert_eq!(c.protection.protection_refresh_percent, 80);
        assert_eq!(c.protection.protection_adjust_interval_ms, 10_000);
        assert_eq!(c.protection.protection_backend, BackendChoice::Auto);
        c.protection.settings().validate().unwrap();
        assert_eq!(c.protection.settings(), Settings::DEFAULT);
        let limits = c.session_limits();
        assert_eq!(
            limits.max_message_bytes,
            SessionLimits::DEFAULT.max_message_bytes
        );
        assert_eq!(limits.ping_interval, SessionLimits::DEFAULT.ping_interval);
        assert_eq!(limits.queue_messages, SessionLimits::DEFAULT.queue_messages);
        assert_eq!(limits.chat_per_sec, SessionLimits::DEFAULT.chat_per_sec);
        assert_eq!(c.drain_deadline(), None);
        assert_eq!(c.max_protected(), None);
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
