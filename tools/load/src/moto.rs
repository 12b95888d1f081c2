//! moto's server (`moto_server`, from PyPI's `moto[server]`) as the SQS endpoint of the `jobs`
//! mode: started on a free loopback port per run, stopped at the end (SIGTERM, then SIGKILL; and
//! SIGKILL when dropped, so an error or the deadline does not leave it running).

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use tokio::time::{sleep, Instant};

use crate::target::{free_port, stop_child};

/// A running moto server.
pub(crate) struct Moto {
    child: Option<tokio::process::Child>,
    pub(crate) endpoint: String,
    pub(crate) pid: Option<u32>,
}

impl Moto {
    /// Starts `program -H 127.0.0.1 -p PORT` and waits (at most 30 s) until it listens. Its
    /// output is discarded: a request log line costs moto CPU, and moto is the bottleneck.
    pub(crate) async fn start(program: &str) -> Result<Self, String> {
        let port = free_port()?;
        let child = tokio::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {program} (pip install 'moto[server]', or set MOTO_SERVER): {e}"
                )
            })?;
        let mut moto = Self {
            pid: child.id(),
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(child) = moto.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{program} exited at start: {status}"));
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{program} did not listen on port {port} within 30 s"
                ));
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(moto)
    }

    /// Stops moto: SIGTERM, then SIGKILL after 10 s. Returns how it ended.
    pub(crate) async fn stop(&mut self) -> Option<String> {
        let child = self.child.take()?;
        Some(stop_child(child, Duration::from_secs(10)).await.0)
    }
}

/// An SQS client for `endpoint`, with the static test credentials `test`/`test`, in us-east-1.
pub(crate) fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "load",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// Creates queue `name` (messages hidden for `visibility_secs` after a receive); returns its URL.
pub(crate) async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: u32,
) -> Result<String, String> {
    let out = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await
        .map_err(|e| {
            format!(
                "CreateQueue: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })?;
    out.queue_url()
        .map(str::to_string)
        .ok_or_else(|| "CreateQueue answered without a URL".into())
}

/// Puts `n` messages of body `body` on the queue, 10 to a SendMessageBatch call, `parallel`
/// calls at a time. Returns how many SQS accepted.
pub(crate) async fn fill(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    n: usize,
    body: &str,
    parallel: usize,
) -> Result<usize, String> {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    let mut set = tokio::task::JoinSet::new();
    let mut accepted = 0usize;
    let mut sent = 0usize;
    while sent < n || !set.is_empty() {
        while sent < n && set.len() < parallel.max(1) {
            let count = (n - sent).min(10);
            let mut call = sqs.send_message_batch().queue_url(queue);
            for i in 0..count {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .map_err(|e| e.to_string())?;
                call = call.entries(entry);
            }
            set.spawn(async move {
                let out = call.send().await.map_err(|e| {
                    format!(
                        "SendMessageBatch: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(e)
                    )
                })?;
                if let Some(failed) = out.failed().first() {
                    return Err(format!(
                        "SendMessageBatch: {} of 10 refused, e.g. {:?}",
                        out.failed().len(),
                        failed.message()
                    ));
                }
                Ok::<usize, String>(out.successful().len())
            });
            sent += count;
        }
        match set.join_next().await {
            Some(Ok(Ok(k))) => accepted += k,
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(format!("send task: {e}")),
            None => {}
        }
    }
    Ok(accepted)
}

/// (visible, in flight) message counts of the queue: ApproximateNumberOfMessages and
/// ApproximateNumberOfMessagesNotVisible.
pub(crate) async fn depth(sqs: &aws_sdk_sqs::Client, queue: &str) -> Result<(u64, u64), String> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| {
            format!(
                "GetQueueAttributes: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })?;
    let get = |name: QueueAttributeName| -> Result<u64, String> {
        out.attributes()
            .and_then(|a| a.get(&name))
            .ok_or_else(|| format!("GetQueueAttributes: no {name}"))?
            .parse()
            .map_err(|e| format!("GetQueueAttributes: {name}: {e}"))
    };
    Ok((
        get(QueueAttributeName::ApproximateNumberOfMessages)?,
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
    ))
}
