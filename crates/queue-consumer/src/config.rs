//! The `queue-consumer` worker's settings, from command-line flags or environment variables
//! alike. The settings it shares with the websocket server (protection, ECS, metrics, HTTP
//! listeners, logging) are [`app_support::config`]'s.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use app_support::config::{non_empty, seconds, HttpArgs, LogFormat, MetricsArgs, ProtectionArgs};
use app_support::listener::HttpLimits;
use clap::Parser;
use ecs_task_protection::protection::Settings;

use crate::handlers::{JobCommand, JobMode, JobUrl};

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

    /// The drain watcher and the drain deadline.
    #[command(flatten)]
    pub drain: app_support::config::DrainArgs,

    /// Seconds one job may run before it is cancelled and its message retried after a back-off
    /// (counted as timed out). 0: no limit of the worker's own (SQS's 12 hours still apply).
    #[arg(long, env = "JOB_TIMEOUT_SECS", value_name = "JOB_TIMEOUT_SECS",
          default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=43_200))]
    pub job_timeout_secs: u64,

    /// Seconds receives may fail in a row before `/healthz` answers 503 (so that ECS replaces the
    /// task, and a deployment whose tasks cannot take jobs rolls back); also how long past a long
    /// poll the worker may go without starting a receive while it has a free slot.
    #[arg(long, env = "UNHEALTHY_AFTER_SECS", value_name = "UNHEALTHY_AFTER_SECS",
          default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub unhealthy_after_secs: u64,

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

    /// A program to run for each message, without a shell: a JSON array (`["python3", "job.py"]`)
    /// or words separated by spaces, with no quoting (`python3 job.py`). The body goes on its
    /// stdin; exit status 0 deletes the message. Blank counts as unset. Not with JOB_URL.
    #[arg(long, env = "JOB_COMMAND", value_name = "JOB_COMMAND",
          value_parser = clap::builder::ValueParser::new(parse_job_command))]
    pub job_command: Option<String>,

    /// An `http://` endpoint to POST each message body to (e.g. `http://localhost:8000/jobs`, the
    /// application's container beside the worker); a 2xx answer deletes the message. Blank counts
    /// as unset. Not with JOB_COMMAND.
    #[arg(long, env = "JOB_URL", value_name = "JOB_URL",
          value_parser = clap::builder::ValueParser::new(parse_job_url))]
    pub job_url: Option<String>,

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
        /// The message group the jobs go to, in the order sent: required by a FIFO queue (whose
        /// name ends `.fifo`). Each job gets a deduplication ID of its own, so identical jobs are
        /// all taken. 1 to 128 letters, digits and punctuation.
        #[arg(long, value_name = "GROUP_ID",
              value_parser = clap::builder::ValueParser::new(parse_group_id))]
        group_id: Option<String>,
        /// Milliseconds of work per job.
        work_ms: u64,
    },
    /// Creates a queue with a dead-letter queue (`NAME-dlq`) and prints its URL, for trying the
    /// worker against a local SQS (moto's server, LocalStack).
    CreateQueue {
        /// A FIFO queue (`NAME.fifo`, with the dead-letter queue `NAME-dlq.fifo`), with
        /// content-based deduplication on; a NAME ending `.fifo` makes one too.
        #[arg(long)]
        fifo: bool,
        /// After how many receives without a delete a message moves to the dead-letter queue.
        #[arg(long, value_name = "N", default_value_t = 3,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        max_receive_count: u32,
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
    /// Takes jobs like the worker does, running this command for each one (as JOB_COMMAND, whose
    /// words it gives without JSON): `queue-consumer run -- python3 job.py`.
    Run {
        /// The program and its arguments.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true,
              value_name = "COMMAND")]
        command: Vec<String>,
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

    /// The setting the queue's URL comes from, for messages: `QUEUE_URL`, or `COPILOT_QUEUE_URI`
    /// when only that is set.
    pub fn queue_variable(&self) -> &'static str {
        if non_empty(&self.queue_url).is_none() && non_empty(&self.copilot_queue_uri).is_some() {
            "COPILOT_QUEUE_URI"
        } else {
            "QUEUE_URL"
        }
    }

    /// How jobs are run: `queue-consumer run -- CMD ARGS…` or `JOB_COMMAND` (a command per
    /// message), `JOB_URL` (a POST per message), else the demo job. An error (for exit code 2)
    /// names the settings that cannot go together.
    pub fn job_mode(&self) -> Result<JobMode, String> {
        let run = match &self.command {
            Some(WorkerCommand::Run { command }) => Some(
                JobCommand::from_words(command.clone())
                    .map_err(|e| format!("invalid command for `queue-consumer run`: {e}"))?,
            ),
            _ => None,
        };
        let command = non_empty(&self.job_command)
            .map(|v| JobCommand::parse(&v).map_err(|e| format!("invalid JOB_COMMAND: {e}")))
            .transpose()?;
        let url = non_empty(&self.job_url)
            .map(|v| JobUrl::parse(&v).map_err(|e| format!("invalid JOB_URL: {e}")))
            .transpose()?;
        match (run, command, url) {
            (_, Some(_), Some(_)) => Err("JOB_COMMAND and JOB_URL are both set: jobs are run one \
                 way, a command per message or a POST per message; unset one of them"
                .into()),
            (Some(_), _, Some(_)) => Err("`queue-consumer run` runs a command per message, but \
                 JOB_URL is set too: unset JOB_URL, or drop `run`"
                .into()),
            (Some(_), Some(_), None) => Err("`queue-consumer run` and JOB_COMMAND both name a \
                 command to run: unset JOB_COMMAND, or drop `run`"
                .into()),
            (Some(command), None, None) | (None, Some(command), None) => {
                Ok(JobMode::Command(command))
            }
            (None, None, Some(url)) => Ok(JobMode::Url(url)),
            (None, None, None) => Ok(JobMode::Demo),
        }
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
        crate::worker::WorkerSettings::DEFAULT
            .with_concurrency(self.worker_concurrency as usize)
            .with_visibility_timeout(Duration::from_secs(self.visibility_timeout_secs))
            .with_receive_wait(Duration::from_secs(self.receive_wait_secs))
            .with_shutdown_timeout(Duration::from_secs(self.shutdown_timeout_secs))
            .with_protection_wait(Duration::from_millis(self.protection_wait_ms))
            .with_drain_deadline(self.drain.deadline())
            .with_job_timeout(seconds(self.job_timeout_secs))
            .with_unhealthy_after(Duration::from_secs(self.unhealthy_after_secs))
    }

    /// The limits of the status and Prometheus listeners.
    pub fn http_limits(&self) -> HttpLimits {
        self.http
            .limits(app_support::origin::AllowedOrigins::SameHost)
    }

    /// How often the drain watcher looks, or `None` when it is off.
    pub fn drain_watch_interval(&self) -> Option<Duration> {
        self.drain.watch_interval()
    }

    /// Where the status endpoint listens, or `None` when it is off.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        (self.status_port != 0).then(|| SocketAddr::new(self.status_bind_address, self.status_port))
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

/// A message group ID (`send --group-id`): what SQS takes.
fn parse_group_id(value: &str) -> Result<String, String> {
    ecs_task_protection::worker::check_group_id(value)?;
    Ok(value.to_string())
}

/// A `JOB_COMMAND` setting: blank counts as unset; anything else must be a command.
fn parse_job_command(value: &str) -> Result<String, String> {
    let value = value.trim();
    if !value.is_empty() {
        JobCommand::parse(value).map_err(|e| e.to_string())?;
    }
    Ok(value.to_string())
}

/// A `JOB_URL` setting: blank counts as unset; anything else must be an `http://` URL.
fn parse_job_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if !value.is_empty() {
        JobUrl::parse(value).map_err(|e| e.to_string())?;
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(w.job_timeout, None, "no job timeout unless set");
        assert_eq!(w.unhealthy_after, Duration::from_secs(60));
        assert_eq!(w.validate(), Ok(()));
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
    fn job_timeout_secs_is_the_library_workers_job_timeout_and_0_is_none() {
        let c = worker(&["--job-timeout-secs", "300"]).unwrap();
        assert_eq!(
            c.worker_settings().job_timeout,
            Some(Duration::from_secs(300))
        );
        let c = worker(&["--job-timeout-secs", "0"]).unwrap();
        assert_eq!(c.worker_settings().job_timeout, None);
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
            (
                "--job-timeout-secs",
                "43201",
                "JOB_TIMEOUT_SECS",
                "0..=43200",
            ),
            (
                "--unhealthy-after-secs",
                "0",
                "UNHEALTHY_AFTER_SECS",
                "1..=3600",
            ),
            (
                "--unhealthy-after-secs",
                "3601",
                "UNHEALTHY_AFTER_SECS",
                "1..=3600",
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
    fn unhealthy_after_secs_is_the_library_workers_health_window() {
        let c = worker(&["--unhealthy-after-secs", "5"]).unwrap();
        assert_eq!(c.worker_settings().unhealthy_after, Duration::from_secs(5));
        assert_eq!(c.worker_settings().validate(), Ok(()));
    }

    #[test]
    fn the_queue_variable_is_the_one_that_was_set() {
        assert_eq!(worker(&[]).unwrap().queue_variable(), "QUEUE_URL");
        let c = worker(&["--copilot-queue-uri", "http://b/1/jobs"]).unwrap();
        assert_eq!(c.queue_variable(), "COPILOT_QUEUE_URI");
        let c = worker(&[
            "--queue-url",
            "http://a/1/jobs",
            "--copilot-queue-uri",
            "http://b/1/jobs",
        ])
        .unwrap();
        assert_eq!(c.queue_variable(), "QUEUE_URL");
    }

    #[test]
    fn send_takes_a_group_id_sqs_would_take_and_create_queue_fifo_and_max_receive_count() {
        let c = worker(&["send", "--group-id", "tenant-1", "--count", "3", "250"]).unwrap();
        assert_eq!(
            c.command,
            Some(WorkerCommand::Send {
                count: 3,
                group_id: Some("tenant-1".into()),
                work_ms: 250
            })
        );
        for bad in ["", "two words", &"g".repeat(129)] {
            let e = worker(&["send", "--group-id", bad, "250"]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.to_string().contains("--group-id"), "{bad:?}: {e}");
        }
        let c = worker(&["create-queue", "jobs"]).unwrap();
        assert_eq!(
            c.command,
            Some(WorkerCommand::CreateQueue {
                fifo: false,
                max_receive_count: 3,
                name: "jobs".into()
            })
        );
        let c = worker(&["create-queue", "--fifo", "--max-receive-count", "5", "jobs"]).unwrap();
        assert_eq!(
            c.command,
            Some(WorkerCommand::CreateQueue {
                fifo: true,
                max_receive_count: 5,
                name: "jobs".into()
            })
        );
        for n in ["0", "1001"] {
            let e = worker(&["create-queue", "--max-receive-count", n, "jobs"]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{n}");
            assert!(e.to_string().contains("1..=1000"), "{n}: {e}");
        }
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

    #[test]
    fn the_http_limits_are_the_same_settings_in_both_binaries() {
        // The websocket server's half of this test is in its own config tests.
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
    }

    #[test]
    fn job_command_and_job_url_pick_the_job_mode() {
        let c = worker(&["--job-command", r#"["python3", "-u", "job.py"]"#]).unwrap();
        assert_eq!(
            c.job_mode(),
            Ok(JobMode::Command(
                JobCommand::parse("python3 -u job.py").unwrap()
            ))
        );
        let c = worker(&["--job-url", "http://localhost:8000/jobs"]).unwrap();
        assert_eq!(
            c.job_mode(),
            Ok(JobMode::Url(
                JobUrl::parse("http://localhost:8000/jobs").unwrap()
            ))
        );
        assert_eq!(worker(&[]).unwrap().job_mode(), Ok(JobMode::Demo));
        // Blank counts as unset, as for the other settings.
        let c = worker(&["--job-command", " ", "--job-url", ""]).unwrap();
        assert_eq!(c.job_mode(), Ok(JobMode::Demo));
        let c = worker(&["--job-command", "", "--job-url", "http://app/jobs"]).unwrap();
        assert!(matches!(c.job_mode(), Ok(JobMode::Url(_))));
    }

    #[test]
    fn queue_consumer_run_takes_the_command_after_it_as_it_is() {
        for args in [
            &[
                "run",
                "--",
                "python3",
                "-u",
                "job.py",
                "--flag",
                "two words",
            ][..],
            &["run", "python3", "-u", "job.py", "--flag", "two words"][..],
        ] {
            let c = worker(args).unwrap();
            let Ok(JobMode::Command(command)) = c.job_mode() else {
                panic!("{args:?}: {:?}", c.job_mode())
            };
            assert_eq!(command.program(), "python3", "{args:?}");
            assert_eq!(
                command.args(),
                ["-u", "job.py", "--flag", "two words"],
                "{args:?}"
            );
        }
        // The worker's settings still apply, before `run` or from the environment.
        let c = worker(&["--worker-concurrency", "4", "run", "--", "job"]).unwrap();
        assert_eq!(c.worker_settings().concurrency, 4);
        let e = worker(&["run"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "run needs a command");
        let e = worker(&["run", "--", ""]).unwrap().job_mode().unwrap_err();
        assert!(
            e.contains("queue-consumer run") && e.contains("no program"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_job_command_or_job_url_names_its_variable() {
        for (flag, value, variable, what) in [
            ("--job-command", "[]", "JOB_COMMAND", "no program"),
            (
                "--job-command",
                r#"["python3", 3]"#,
                "JOB_COMMAND",
                "JSON array",
            ),
            (
                "--job-command",
                "python3 'my job.py'",
                "JOB_COMMAND",
                "no quoting",
            ),
            (
                "--job-url",
                "https://app/jobs",
                "JOB_URL",
                "https:// is not supported",
            ),
            ("--job-url", "localhost:8000/jobs", "JOB_URL", "not HTTP"),
            ("--job-url", "jobs", "JOB_URL", "not a URL"),
        ] {
            let e = worker(&[flag, value]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{flag} {value}");
            let e = e.to_string();
            assert!(
                e.contains(variable) && e.contains(what),
                "{flag} {value}: {e}"
            );
        }
    }

    #[test]
    fn two_ways_of_running_jobs_at_once_are_refused_naming_both() {
        let url = ["--job-url", "http://localhost:8000/jobs"];
        for (args, names) in [
            (
                vec!["--job-command", "python3 job.py", url[0], url[1]],
                ["JOB_COMMAND", "JOB_URL"],
            ),
            (
                vec![url[0], url[1], "run", "--", "python3", "job.py"],
                ["queue-consumer run", "JOB_URL"],
            ),
            (
                vec!["--job-command", "python3 job.py", "run", "--", "job"],
                ["queue-consumer run", "JOB_COMMAND"],
            ),
        ] {
            let e = worker(&args).unwrap().job_mode().unwrap_err();
            assert!(
                e.contains(names[0]) && e.contains(names[1]),
                "{args:?}: {e}"
            );
        }
    }
}
