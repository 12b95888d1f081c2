//! Per-task metrics, through one facade and written two ways from the same numbers:
//!
//! * **CloudWatch Embedded Metric Format** (EMF): every `METRICS_INTERVAL_SECS` one JSON line on
//!   stdout. The `awslogs` log driver ships it to CloudWatch Logs, which turns it into metrics in
//!   the `ECSTaskProtection` namespace with the dimensions `ClusterName` and `ServiceName`: no
//!   agent and no IAM permission needed. Counters are written as what they added during the
//!   interval (CloudWatch sums them), gauges as their value now, summaries (durations) as their
//!   mean over the interval in seconds (left out of a line when the interval observed none).
//!   This is what the CDK app scales the WebSocket service on (`Connections`, averaged over the
//!   service's tasks).
//! * **Prometheus** text (`GET /metrics`), for users outside AWS: counters as running totals,
//!   summaries as a running `_sum` and `_count` (no quantiles: cheap to keep and to scrape). Its
//!   listener is bounded like the server's own (header and idle timeouts, and the cap on
//!   connections, shared with the process's other listeners).
//!
//! Both are off unless turned on (`METRICS_EMF`, `METRICS_PROMETHEUS`), so a laptop's log stays
//! quiet. A binary describes its numbers once as a [`Source`]: a function that reads them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::listener::HttpPool;
use ecs_task_protection::protection::{ProtectionStatus, StateLabel};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "ECSTaskProtection";

/// The prefix of every Prometheus metric name.
pub const PROMETHEUS_PREFIX: &str = "ecs_task_protection_";

/// Whether a metric is a level, a running total, or durations observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A level at the moment it is read (connections now).
    Gauge,
    /// A total since start-up that only grows (calls made).
    Counter,
    /// Durations observed since start-up: `count` of them, whose sum in seconds is the sample's
    /// value (job durations).
    Summary {
        /// How many durations the sum is of.
        count: u64,
    },
}

/// One number, read now.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The CloudWatch metric name (`Connections`).
    pub name: &'static str,
    /// The Prometheus name, without the prefix and, for counters, without `_total`
    /// (`connections`); for summaries, with the unit (`job_duration_seconds`).
    pub prometheus_name: &'static str,
    /// One line of help text (Prometheus `# HELP`).
    pub help: &'static str,
    /// Gauge, counter or summary.
    pub kind: Kind,
    /// The value (a summary's sum, in seconds).
    pub value: f64,
}

impl Sample {
    /// A gauge.
    pub fn gauge(
        name: &'static str,
        prometheus_name: &'static str,
        help: &'static str,
        value: f64,
    ) -> Self {
        Self {
            name,
            prometheus_name,
            help,
            kind: Kind::Gauge,
            value,
        }
    }

    /// A counter (a total since start-up).
    pub fn counter(
        name: &'static str,
        prometheus_name: &'static str,
        help: &'static str,
        value: u64,
    ) -> Self {
        Self {
            name,
            prometheus_name,
            help,
            kind: Kind::Counter,
            value: value as f64,
        }
    }

    /// A summary: `count` durations observed since start-up, adding up to `sum_seconds`.
    pub fn summary(
        name: &'static str,
        prometheus_name: &'static str,
        help: &'static str,
        sum_seconds: f64,
        count: u64,
    ) -> Self {
        Self {
            name,
            prometheus_name,
            help,
            kind: Kind::Summary { count },
            value: sum_seconds,
        }
    }
}

/// Reads a binary's numbers.
pub type Source = Arc<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// The dimensions every EMF metric carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimensions {
    /// The ECS cluster's short name (not its ARN).
    pub cluster: String,
    /// The ECS service's name.
    pub service: String,
}

impl Dimensions {
    /// The dimensions from what is known of the task: `service` if given (`METRICS_SERVICE_NAME`),
    /// else the task's service name, else `fallback_service`; the cluster's name from its name or
    /// ARN, else `local`.
    pub fn new(
        service: Option<&str>,
        task_service: Option<&str>,
        cluster: Option<&str>,
        fallback_service: &str,
    ) -> Self {
        let cluster = cluster
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "local".to_string());
        let service = service
            .or(task_service)
            .filter(|s| !s.is_empty())
            .unwrap_or(fallback_service)
            .to_string();
        Self { cluster, service }
    }
}

/// Turns samples into EMF lines, remembering the counters' and summaries' last totals to write
/// what they added.
#[derive(Debug)]
pub struct EmfWriter {
    dimensions: Dimensions,
    last: HashMap<&'static str, f64>,
    last_counts: HashMap<&'static str, u64>,
}

impl EmfWriter {
    /// A writer for these dimensions. The first line's counters count from start-up.
    pub fn new(dimensions: Dimensions) -> Self {
        Self {
            dimensions,
            last: HashMap::new(),
            last_counts: HashMap::new(),
        }
    }

    /// One EMF document (a single line of JSON) for `samples` read at `now`.
    pub fn line(&mut self, samples: &[Sample], now: SystemTime) -> String {
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut definitions = Vec::with_capacity(samples.len());
        let mut doc = Map::new();
        for sample in samples {
            let (value, unit) = match sample.kind {
                Kind::Gauge => (sample.value, "Count"),
                Kind::Counter => (self.added(sample.name, sample.value), "Count"),
                Kind::Summary { count } => {
                    let sum = self.added(sample.name, sample.value);
                    let before = self.last_counts.insert(sample.name, count).unwrap_or(0);
                    let observed = if count >= before {
                        count - before
                    } else {
                        count
                    };
                    if observed == 0 {
                        // Nothing observed this interval: no data point, rather than a 0 s mean.
                        continue;
                    }
                    (sum / observed as f64, "Seconds")
                }
            };
            definitions.push(json!({ "Name": sample.name, "Unit": unit }));
            doc.insert(sample.name.to_string(), json!(value));
        }
        doc.insert(
            "ClusterName".to_string(),
            Value::String(self.dimensions.cluster.clone()),
        );
        doc.insert(
            "ServiceName".to_string(),
            Value::String(self.dimensions.service.clone()),
        );
        doc.insert(
            "_aws".to_string(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["ClusterName", "ServiceName"]],
                    "Metrics": definitions,
                }],
            }),
        );
        Value::Object(doc).to_string()
    }

    /// What the running total `name` added since the last line (its whole value the first time,
    /// or after it went down, which it cannot short of a restart).
    fn added(&mut self, name: &'static str, total: f64) -> f64 {
        let before = self.last.insert(name, total).unwrap_or(0.0);
        if total >= before {
            total - before
        } else {
            total
        }
    }
}

/// The Prometheus text exposition of `samples` (format 0.0.4).
pub fn prometheus_text(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let (name, kind) = match s.kind {
            Kind::Gauge => (format!("{PROMETHEUS_PREFIX}{}", s.prometheus_name), "gauge"),
            Kind::Counter => (
                format!("{PROMETHEUS_PREFIX}{}_total", s.prometheus_name),
                "counter",
            ),
            Kind::Summary { .. } => (
                format!("{PROMETHEUS_PREFIX}{}", s.prometheus_name),
                "summary",
            ),
        };
        let _ = writeln!(out, "# HELP {name} {}", s.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        match s.kind {
            Kind::Summary { count } => {
                let _ = writeln!(out, "{name}_sum {}", s.value);
                let _ = writeln!(out, "{name}_count {count}");
            }
            _ => {
                let _ = writeln!(out, "{name} {}", s.value);
            }
        }
    }
    out
}

/// The protection manager's numbers, the same in both binaries: `Protected` (0/1), `Draining`
/// (0/1), `ProtectionCalls` and `ProtectionRejections`.
pub fn protection_samples(status: &ProtectionStatus) -> [Sample; 4] {
    [
        Sample::gauge(
            "Protected",
            "protected",
            "1 while ECS has the task protected from scale-in, else 0",
            f64::from(u8::from(status.state == StateLabel::Protected)),
        ),
        Sample::gauge(
            "Draining",
            "draining",
            "1 while the task is draining (protection released as soon as the work ends), else 0",
            f64::from(u8::from(status.draining)),
        ),
        Sample::counter(
            "ProtectionCalls",
            "protection_calls",
            "Calls made to ECS (protect, release, read)",
            status.calls_made,
        ),
        Sample::counter(
            "ProtectionRejections",
            "protection_rejections",
            "Protect or release calls that failed",
            status.rejections,
        ),
    ]
}

/// The router of the Prometheus endpoint: `GET /metrics`, the text of `source` read at each
/// request.
pub fn prometheus_router(source: Source) -> axum::Router {
    use axum::http::header;
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let source = Arc::clone(&source);
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    prometheus_text(&source()),
                )
                    .into_response()
            }
        }),
    )
}

/// Starts what the settings turn on: EMF lines every `emf_interval` (with the dimensions that
/// `dimensions` resolves) and the Prometheus endpoint on `prometheus`, served through `pool` (the
/// timeouts and the cap on connections of the process's other listeners). An error names the
/// address that could not be bound. Both are critical tasks ([`ecs_task_protection::supervise`]).
pub async fn start<F>(
    source: Source,
    emf_interval: Option<Duration>,
    prometheus: Option<std::net::SocketAddr>,
    pool: &HttpPool,
    dimensions: F,
) -> Result<(), String>
where
    F: std::future::Future<Output = Dimensions> + Send + 'static,
{
    if let Some(addr) = prometheus {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} for /metrics (set METRICS_PROMETHEUS_PORT, 0 turns it off): {e}")
        })?;
        tracing::info!("Metrics: Prometheus text on http://{addr}/metrics");
        pool.spawn(
            "metrics endpoint",
            listener,
            prometheus_router(Arc::clone(&source)),
        );
    }
    if let Some(interval) = emf_interval {
        spawn_emf(source, interval, dimensions);
    }
    Ok(())
}

/// Writes an EMF line for `source` to stdout every `interval`, until the runtime ends: a critical
/// task ([`ecs_task_protection::supervise`]), since the CDK app scales on these lines. The dimensions are
/// resolved once, by `dimensions`, before the first line.
pub fn spawn_emf<F>(source: Source, interval: Duration, dimensions: F)
where
    F: std::future::Future<Output = Dimensions> + Send + 'static,
{
    ecs_task_protection::supervise::spawn("EMF metrics writer", async move {
        let dimensions = dimensions.await;
        tracing::info!(
            "Metrics: one EMF line every {interval:?} (namespace {NAMESPACE}, ClusterName={}, ServiceName={})",
            dimensions.cluster,
            dimensions.service
        );
        let mut writer = EmfWriter::new(dimensions);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let line = writer.line(&source(), SystemTime::now());
            // One write of a whole line, so that log lines written at the same time do not
            // interleave with it.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(format!("{line}\n").as_bytes());
            let _ = out.flush();
        }
    });
}

/// The metrics' dimensions for this task: `service` if given, else the task's ECS service (from
/// the task metadata), else `fallback`; the cluster from the task metadata, else `local`.
pub async fn metric_dimensions(
    context: Option<ecs_task_protection::ecs::EcsContext>,
    service: Option<String>,
    fallback: &'static str,
) -> Dimensions {
    let identity = match &context {
        Some(c) => c.identity().identity().await.ok().cloned(),
        None => None,
    };
    Dimensions::new(
        service.as_deref(),
        identity.as_ref().and_then(|i| i.service_name.as_deref()),
        identity.as_ref().map(|i| i.cluster.as_str()),
        fallback,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(connections: f64, calls: u64) -> Vec<Sample> {
        vec![
            Sample::gauge(
                "Connections",
                "connections",
                "WebSocket clients",
                connections,
            ),
            Sample::counter("ProtectionCalls", "protection_calls", "Calls to ECS", calls),
        ]
    }

    #[test]
    fn an_emf_line_declares_its_metrics_and_counters_count_what_they_added() {
        let dims = Dimensions::new(
            Some("websocket"),
            None,
            Some("arn:aws:ecs:us-east-1:123456789012:cluster/task-protection"),
            "x",
        );
        let mut w = EmfWriter::new(dims);
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first: Value = serde_json::from_str(&w.line(&samples(3.0, 5), at)).unwrap();
        assert_eq!(first["Connections"], 3.0);
        assert_eq!(first["ProtectionCalls"], 5.0);
        assert_eq!(first["ClusterName"], "task-protection");
        assert_eq!(first["ServiceName"], "websocket");
        let meta = &first["_aws"];
        assert_eq!(meta["Timestamp"], 1_700_000_000_000u64);
        let cw = &meta["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], NAMESPACE);
        assert_eq!(cw["Dimensions"], json!([["ClusterName", "ServiceName"]]));
        assert_eq!(
            cw["Metrics"][0],
            json!({"Name": "Connections", "Unit": "Count"})
        );
        let second: Value = serde_json::from_str(&w.line(&samples(1.0, 7), at)).unwrap();
        assert_eq!(second["Connections"], 1.0);
        assert_eq!(second["ProtectionCalls"], 2.0, "what the counter added");
    }

    #[test]
    fn a_summary_is_the_intervals_mean_in_seconds_in_emf_and_absent_when_nothing_was_observed() {
        let mut w = EmfWriter::new(Dimensions::new(Some("worker"), None, None, "x"));
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jobs = |sum: f64, count: u64| {
            vec![Sample::summary(
                "JobDuration",
                "job_duration_seconds",
                "How long jobs ran",
                sum,
                count,
            )]
        };
        let first: Value = serde_json::from_str(&w.line(&jobs(3.0, 2), at)).unwrap();
        assert_eq!(first["JobDuration"], 1.5, "3 s over 2 jobs");
        assert_eq!(
            first["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
            json!({"Name": "JobDuration", "Unit": "Seconds"})
        );
        // The next interval ran 2 jobs of 0.5 s: its own mean, not the running one.
        let second: Value = serde_json::from_str(&w.line(&jobs(4.0, 4), at)).unwrap();
        assert_eq!(second["JobDuration"], 0.5);
        // No job in the interval: no data point at all.
        let third: Value = serde_json::from_str(&w.line(&jobs(4.0, 4), at)).unwrap();
        assert!(third.get("JobDuration").is_none(), "{third}");
        assert_eq!(third["_aws"]["CloudWatchMetrics"][0]["Metrics"], json!([]));
    }

    #[test]
    fn a_summary_is_a_sum_and_a_count_in_prometheus_text() {
        let text = prometheus_text(&[Sample::summary(
            "JobDuration",
            "job_duration_seconds",
            "How long jobs ran",
            2.5,
            4,
        )]);
        assert_eq!(
            text,
            "# HELP ecs_task_protection_job_duration_seconds How long jobs ran\n\
             # TYPE ecs_task_protection_job_duration_seconds summary\n\
             ecs_task_protection_job_duration_seconds_sum 2.5\n\
             ecs_task_protection_job_duration_seconds_count 4\n"
        );
    }

    #[test]
    fn dimensions_prefer_the_setting_then_the_task_then_the_binary() {
        let d = Dimensions::new(None, Some("svc"), None, "websocket");
        assert_eq!((d.cluster.as_str(), d.service.as_str()), ("local", "svc"));
        let d = Dimensions::new(None, None, Some("plain-name"), "websocket");
        assert_eq!(
            (d.cluster.as_str(), d.service.as_str()),
            ("plain-name", "websocket")
        );
    }

    #[test]
    fn prometheus_text_has_help_type_and_totals() {
        let text = prometheus_text(&samples(3.0, 5));
        assert_eq!(
            text,
            "# HELP ecs_task_protection_connections WebSocket clients\n\
             # TYPE ecs_task_protection_connections gauge\n\
             ecs_task_protection_connections 3\n\
             # HELP ecs_task_protection_protection_calls_total Calls to ECS\n\
             # TYPE ecs_task_protection_protection_calls_total counter\n\
             ecs_task_protection_protection_calls_total 5\n"
        );
    }
}
