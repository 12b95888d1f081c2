//! The `websocket` server's settings, from command-line flags or environment variables alike, and
//! what they turn into: the [`SessionLimits`], the HTTP limits, the backplane and drain settings.
//! The settings it shares with the queue consumer (protection, ECS, metrics, HTTP listeners,
//! logging) are [`app_support::config`]'s.
//!
//! Every setting has a flag (`--port`) and an environment variable (`PORT`); the flag wins. A value
//! outside its range stops start-up with a message naming the variable and the range. Defaults
//! come from the types they configure ([`SessionLimits::DEFAULT`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use app_support::config::{seconds, HttpArgs, LogFormat, MetricsArgs, ProtectionArgs};
use app_support::listener::HttpLimits;
use clap::Parser;
use ecs_task_protection::protection::Settings;

use crate::server::backplane::{BackplaneSettings, BackplaneUrl};
use crate::server::{AllowedOrigins, SessionLimits};

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

    /// The drain watcher and the drain deadline.
    #[command(flatten)]
    pub drain: app_support::config::DrainArgs,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Most WebSocket clients at once; further upgrades get HTTP 503.
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS",
          default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=crate::server::backplane::MAX_TASK_CONNECTIONS as i64))]
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
        self.drain.watch_interval()
    }

    /// How long a drain may last before the remaining clients are closed, or `None` for never.
    pub fn drain_deadline(&self) -> Option<Duration> {
        self.drain.deadline()
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

#[cfg(test)]
mod tests {
    use super::*;
    use app_support::config::BackendChoice;
    use ecs_task_protection::ecs::BackendPlan;

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
            Some(app_support::config::DEFAULT_DRAIN_DEADLINE)
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
        // The queue consumer's half of this test is in its own config tests.
        assert_eq!(
            parse(&[]).unwrap().http_limits().idle_timeout,
            Duration::from_secs(75)
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
