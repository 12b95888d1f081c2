//! The job queue, spoken to through `aws-sdk-sqs`: long-poll receives, visibility changes and
//! deletes in batches of up to 10, and sends. SDK errors become [`SqsError`]s whose kind says
//! what happened, whose message names the IAM action, and whose wording names SQS (not ECS, whose
//! errors share the same classification). A queue whose URL ends `.fifo` is a FIFO queue: its
//! receives also ask for each message's group, and its sends name a group and a deduplication
//! ID. [`QueueInfo`] is what the queue's attributes say, read once at start-up to check the
//! queue.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::Region;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use tokio::time::Instant;

use crate::ecs::classify_sdk_error;
use crate::protection::{BackendError, ErrorKind};

/// An SQS call that failed: what kind of failure ([`ErrorKind`], shared with the ECS calls), and
/// a message naming the IAM action. Displayed in SQS's words: `queue not found: sqs:DeleteMessage:
/// HTTP 400 AWS.SimpleQueueService.NonExistentQueue: …`, `throttled by SQS: sqs:ReceiveMessage: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", sqs_words(*kind))]
pub struct SqsError {
    kind: ErrorKind,
    message: String,
}

impl SqsError {
    /// An error of `kind` with `message`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying the same call again cannot help: the queue does not exist, the task role
    /// may not make the call, or SQS refused the request as such. Throttling, server errors,
    /// timeouts and unreachable endpoints pass, and are worth retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotFound
                | ErrorKind::AccessDenied
                | ErrorKind::InvalidRequest
                | ErrorKind::Config
        )
    }
}

impl From<BackendError> for SqsError {
    fn from(e: BackendError) -> Self {
        Self::new(e.kind, e.message)
    }
}

/// What an error of `kind` is called when SQS answered it.
fn sqs_words(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Throttled => "throttled by SQS",
        ErrorKind::AccessDenied => "access denied",
        ErrorKind::InvalidRequest => "SQS refused the request",
        ErrorKind::NotFound => "queue not found",
        ErrorKind::Server => "SQS server error",
        ErrorKind::Timeout => "SQS timed out",
        ErrorKind::Unreachable => "SQS unreachable",
        ErrorKind::Malformed => "unreadable answer from SQS",
        ErrorKind::Config => "SQS client misconfigured",
        // ECS's own answers (a `failure` body, DEPLOYMENT_BLOCKED) and the reconciler's death:
        // never classified for SQS.
        // never classified for SQS; and kinds the library may add.
        _ => "SQS error",
    }
}

/// Classifies an SDK error of an SQS call of IAM action `action` (e.g. `sqs:DeleteMessage`).
fn classify<E>(err: &SdkError<E, HttpResponse>, action: &str) -> SqsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    classify_sdk_error(err, action).into()
}

/// The most entries SQS takes in one batch call, and the most messages one receive returns.
pub(crate) const SQS_BATCH: usize = 10;
/// The longest long poll SQS allows.
pub(crate) const SQS_MAX_WAIT: Duration = Duration::from_secs(20);

/// What SQS says about a queue ([`Worker::check_queue`](super::Worker::check_queue)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// Whether it is a FIFO queue.
    pub fifo: bool,
    /// Whether a FIFO queue deduplicates messages by their body's hash when the sender gives no
    /// deduplication ID.
    pub content_based_deduplication: bool,
    /// The queue's own visibility timeout (the worker sets its own at each receive).
    pub visibility_timeout: Option<Duration>,
    /// After how many receives its redrive policy moves a message to the dead-letter queue;
    /// `None`: no redrive policy, so a message that keeps failing is retried until the queue's
    /// retention period ends.
    pub max_receive_count: Option<u32>,
    /// The dead-letter queue's ARN, with a redrive policy.
    pub dead_letter_queue: Option<String>,
}

impl QueueInfo {
    /// Reads the attributes SQS answered (`GetQueueAttributes`, `All`).
    pub(crate) fn from_attributes(attributes: &HashMap<QueueAttributeName, String>) -> Self {
        let get = |name: QueueAttributeName| attributes.get(&name).map(String::as_str);
        let yes =
            |name: QueueAttributeName| get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let redrive = get(QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok());
        let max_receive_count = redrive.as_ref().and_then(|p| {
            let n = &p["maxReceiveCount"];
            // SQS writes it as a string; a number is read too.
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
                .and_then(|n| u32::try_from(n).ok())
        });
        Self {
            fifo: yes(QueueAttributeName::FifoQueue),
            content_based_deduplication: yes(QueueAttributeName::ContentBasedDeduplication),
            visibility_timeout: get(QueueAttributeName::VisibilityTimeout)
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs),
            max_receive_count,
            dead_letter_queue: redrive
                .as_ref()
                .and_then(|p| p["deadLetterTargetArn"].as_str())
                .map(str::to_string),
        }
    }
}

/// The longest message group ID (and deduplication ID) SQS takes.
const SQS_MAX_ID: usize = 128;

/// Checks a FIFO message group ID as SQS would: 1 to 128 characters, letters, digits and
/// punctuation (``!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~``), no spaces.
pub fn check_group_id(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > SQS_MAX_ID {
        return Err(format!(
            "a message group ID is 1 to {SQS_MAX_ID} characters, not {}",
            group.len()
        ));
    }
    match group.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!(
            "a message group ID holds letters, digits and punctuation only, not {c:?}"
        )),
        None => Ok(()),
    }
}

/// A deduplication ID of its own for each message a FIFO send makes: 32 random hex digits, so
/// that identical bodies sent within SQS's 5-minute deduplication interval are distinct jobs
/// (content-based deduplication would keep one of them).
fn dedup_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One message as received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The message ID (stable across receives), for logs.
    pub(crate) id: String,
    /// The receipt handle of this receive: what visibility changes and the delete need.
    pub(crate) receipt: String,
    /// The body.
    pub(crate) body: String,
    /// How many times SQS has handed this message out, this time included.
    pub(crate) receive_count: u32,
    /// Its message group, on a FIFO queue.
    pub(crate) group_id: Option<String>,
    /// When it was sent (`SentTimestamp`), when SQS says.
    pub(crate) sent_at: Option<SystemTime>,
    /// Its string and number message attributes, by name.
    pub(crate) attributes: HashMap<String, String>,
    /// When the receive that brought it was asked for: its visibility timeout runs from about
    /// then, and SQS hides it for at most 12 hours from then.
    pub(crate) received_at: Instant,
}

/// The queue, with a client set up for it.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    fifo: bool,
}

impl Queue {
    /// A queue at `url`, reached with `sdk_config`'s credentials and endpoint settings, in
    /// `region` when given, else the region the URL names, else `sdk_config`'s. Calls may take
    /// up to the longest long poll plus 10 s.
    pub(crate) fn new(sdk_config: &SdkConfig, url: &str, region: Option<&str>) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(SQS_MAX_WAIT + Duration::from_secs(10))
            .operation_timeout(SQS_MAX_WAIT * 2 + Duration::from_secs(20))
            .build();
        let mut config = aws_sdk_sqs::config::Builder::from(sdk_config).timeout_config(timeouts);
        if let Some(region) = region.map(str::to_string).or_else(|| region_of(url)) {
            config = config.region(Region::new(region));
        }
        Self {
            client: aws_sdk_sqs::Client::from_conf(config.build()),
            url: url.to_string(),
            fifo: is_fifo(url),
        }
    }

    /// The queue's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Whether it is a FIFO queue (its name ends `.fifo`).
    pub(crate) fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// Long-polls for up to `max` messages (1..=10) for up to `wait`, hiding each from other
    /// workers for `visibility`. Asks for each message's receive count, sent time and message
    /// attributes, and on a FIFO queue its group.
    pub(crate) async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        let received_at = Instant::now();
        let mut request = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(clamp_i32(max.clamp(1, SQS_BATCH)))
            .wait_time_seconds(secs_i32(wait.min(SQS_MAX_WAIT)))
            .visibility_timeout(secs_i32(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All");
        if self.fifo {
            request =
                request.message_system_attribute_names(MessageSystemAttributeName::MessageGroupId);
        }
        let output = request
            .send()
            .await
            .map_err(|e| classify(&e, "sqs:ReceiveMessage"))?;
        Ok(output
            .messages()
            .iter()
            .filter_map(|m| {
                let system = |name: MessageSystemAttributeName| {
                    m.attributes().and_then(|a| a.get(&name)).cloned()
                };
                let receive_count = system(MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let sent_at = system(MessageSystemAttributeName::SentTimestamp)
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
                let group_id = self
                    .fifo
                    .then(|| system(MessageSystemAttributeName::MessageGroupId))
                    .flatten();
                // String and number attributes; binary ones have no text to show.
                let attributes = m
                    .message_attributes()
                    .into_iter()
                    .flatten()
                    .filter_map(|(name, value)| {
                        Some((name.clone(), value.string_value()?.to_string()))
                    })
                    .collect();
                Some(Received {
                    id: m.message_id()?.to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count,
                    group_id,
                    sent_at,
                    attributes,
                    received_at,
                })
            })
            .collect())
    }

    /// Sets the visibility of up to 10 received messages (0: visible again at once). The outer
    /// error is the call's; the inner ones are each entry's (e.g. a receipt handle that is no
    /// longer valid).
    pub(crate) async fn set_visibility(
        &self,
        entries: &[(&str, Duration)],
    ) -> Result<Vec<Result<(), String>>, SqsError> {
        let batch = entries
            .iter()
            .enumerate()
            .map(|(i, (receipt, visibility))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*receipt)
                    .visibility_timeout(secs_i32(*visibility))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SqsError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify(&e, "sqs:ChangeMessageVisibility"))?;
        Ok(per_entry(entries.len(), failed_entries(output.failed())))
    }

    /// Deletes up to 10 received messages. The outer error is the call's; the inner ones are
    /// each entry's.
    pub(crate) async fn delete(
        &self,
        receipts: &[&str],
    ) -> Result<Vec<Result<(), String>>, SqsError> {
        let batch = receipts
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*receipt)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SqsError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify(&e, "sqs:DeleteMessage"))?;
        Ok(per_entry(receipts.len(), failed_entries(output.failed())))
    }

    /// Reads the queue's attributes: whether it exists and this worker may read it, and what it
    /// is (FIFO, its redrive policy).
    pub(crate) async fn attributes(&self) -> Result<QueueInfo, SqsError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| classify(&e, "sqs:GetQueueAttributes"))?;
        Ok(QueueInfo::from_attributes(
            output.attributes().unwrap_or(&HashMap::new()),
        ))
    }

    /// Sends up to 10 messages, in message group `group` when given (a FIFO queue needs one;
    /// each message then gets a deduplication ID of its own); returns their message IDs, or the
    /// first entry's failure.
    pub(crate) async fn send(
        &self,
        bodies: &[String],
        group: Option<&str>,
    ) -> Result<Vec<String>, SqsError> {
        let batch = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body);
                match group {
                    Some(group) if self.fifo => entry
                        .message_group_id(group)
                        .message_deduplication_id(dedup_id()),
                    Some(group) => entry.message_group_id(group),
                    None => entry,
                }
                .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SqsError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify(&e, "sqs:SendMessage"))?;
        if let Some(f) = output.failed().first() {
            return Err(SqsError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "sqs:SendMessage: {}: {}",
                    f.code(),
                    f.message().unwrap_or("")
                ),
            ));
        }
        Ok(output
            .successful()
            .iter()
            .map(|s| s.message_id().to_string())
            .collect())
    }
}

/// Whether the queue at `url` is a FIFO queue: its name ends `.fifo`.
pub fn is_fifo(url: &str) -> bool {
    url.trim_end_matches('/').ends_with(".fifo")
}

/// A batch call's failed entries as (entry id, `code: message`).
fn failed_entries(
    failed: &[aws_sdk_sqs::types::BatchResultErrorEntry],
) -> impl Iterator<Item = (String, String)> + '_ {
    failed.iter().map(|f| {
        (
            f.id().to_string(),
            format!("{}: {}", f.code(), f.message().unwrap_or("")),
        )
    })
}

/// `n` entries' outcomes from a batch answer's failures (entry ids are the indexes sent).
fn per_entry(n: usize, failed: impl Iterator<Item = (String, String)>) -> Vec<Result<(), String>> {
    let mut outcomes = vec![Ok(()); n];
    for (id, why) in failed {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| outcomes.get_mut(i)) {
            *slot = Err(why);
        }
    }
    outcomes
}

/// The region an SQS queue URL names: `https://sqs.REGION.amazonaws.com/...` (also VPC endpoint
/// and legacy `REGION.queue.amazonaws.com` forms); `None` for other hosts (a local endpoint).
pub(crate) fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let labels: Vec<&str> = host.split('.').collect();
    let looks_like_region =
        |l: &&&str| l.contains('-') && l.chars().last().is_some_and(|c| c.is_ascii_digit());
    let after_sqs = labels
        .iter()
        .position(|l| *l == "sqs")
        .and_then(|i| labels.get(i + 1));
    let before_queue = labels
        .iter()
        .position(|l| *l == "queue")
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| labels.get(i));
    after_sqs
        .or(before_queue)
        .filter(looks_like_region)
        .map(|l| l.to_string())
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn clamp_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_queue_url() {
        for (url, region) in [
            (
                "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
                Some("eu-west-1"),
            ),
            (
                "https://sqs.us-gov-west-1.amazonaws.com/123456789012/jobs",
                Some("us-gov-west-1"),
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/jobs",
                Some("cn-north-1"),
            ),
            (
                "https://ap-south-1.queue.amazonaws.com/123456789012/jobs",
                Some("ap-south-1"),
            ),
            (
                "https://vpce-0abc-xyz.sqs.us-east-2.vpce.amazonaws.com/123456789012/jobs",
                Some("us-east-2"),
            ),
            ("http://127.0.0.1:4566/123456789012/jobs", None),
            ("http://localhost:9324/queue/jobs", None),
            ("not a url", None),
        ] {
            assert_eq!(region_of(url).as_deref(), region, "{url}");
        }
    }

    #[test]
    fn a_queue_whose_name_ends_fifo_is_a_fifo_queue() {
        assert!(is_fifo(
            "https://sqs.us-east-1.amazonaws.com/123456789012/jobs.fifo"
        ));
        assert!(is_fifo("http://127.0.0.1:4566/123456789012/jobs.fifo/"));
        assert!(!is_fifo(
            "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
        ));
        assert!(!is_fifo("http://127.0.0.1:4566/123456789012/fifo"));
    }

    #[test]
    fn queue_info_reads_the_redrive_policy_and_fifo_attributes() {
        let attrs = |pairs: &[(QueueAttributeName, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let info = QueueInfo::from_attributes(&attrs(&[
            (QueueAttributeName::VisibilityTimeout, "60"),
            (
                QueueAttributeName::RedrivePolicy,
                r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:jobs-dlq","maxReceiveCount":"5"}"#,
            ),
        ]));
        assert_eq!(info.max_receive_count, Some(5));
        assert_eq!(
            info.dead_letter_queue.as_deref(),
            Some("arn:aws:sqs:us-east-1:123456789012:jobs-dlq")
        );
        assert_eq!(info.visibility_timeout, Some(Duration::from_secs(60)));
        assert!(!info.fifo && !info.content_based_deduplication);
        let info = QueueInfo::from_attributes(&attrs(&[
            (QueueAttributeName::FifoQueue, "true"),
            (QueueAttributeName::ContentBasedDeduplication, "true"),
            (
                QueueAttributeName::RedrivePolicy,
                r#"{"maxReceiveCount":3}"#,
            ),
        ]));
        assert!(info.fifo && info.content_based_deduplication);
        assert_eq!(info.max_receive_count, Some(3), "a number is read too");
        let none = QueueInfo::from_attributes(&HashMap::new());
        assert_eq!(
            (none.max_receive_count, none.dead_letter_queue),
            (None, None)
        );
    }

    #[test]
    fn a_group_id_is_what_sqs_takes_and_dedup_ids_differ() {
        for good in ["g", "tenant-42", "a.b:c/d_e", &"x".repeat(128)] {
            assert_eq!(check_group_id(good), Ok(()), "{good}");
        }
        for bad in ["", "two words", "é", &"x".repeat(129), "tab\there"] {
            assert!(check_group_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_group_id(r"back\slash"),
            Ok(()),
            "a backslash is punctuation"
        );
        let (a, b) = (dedup_id(), dedup_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.len() <= SQS_MAX_ID && a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn batch_failures_land_on_their_entries() {
        let out = per_entry(
            3,
            [("1".to_string(), "ReceiptHandleIsInvalid: x".to_string())].into_iter(),
        );
        assert_eq!(
            out,
            vec![Ok(()), Err("ReceiptHandleIsInvalid: x".to_string()), Ok(())]
        );
    }

    #[test]
    fn sqs_errors_are_worded_as_sqs_errors_and_only_some_are_permanent() {
        let e = SqsError::new(
            ErrorKind::NotFound,
            "sqs:DeleteMessage: HTTP 400 AWS.SimpleQueueService.NonExistentQueue: gone",
        );
        assert_eq!(
            e.to_string(),
            "queue not found: sqs:DeleteMessage: HTTP 400 AWS.SimpleQueueService.NonExistentQueue: gone"
        );
        let e = SqsError::new(ErrorKind::Throttled, "sqs:ReceiveMessage: HTTP 400 x");
        assert_eq!(
            e.to_string(),
            "throttled by SQS: sqs:ReceiveMessage: HTTP 400 x"
        );
        for kind in [
            ErrorKind::Failure,
            ErrorKind::Blocked,
            ErrorKind::Throttled,
            ErrorKind::AccessDenied,
            ErrorKind::InvalidRequest,
            ErrorKind::NotFound,
            ErrorKind::Server,
            ErrorKind::Timeout,
            ErrorKind::Unreachable,
            ErrorKind::Malformed,
            ErrorKind::Config,
        ] {
            let text = SqsError::new(kind, "m").to_string();
            assert!(
                !text.contains("ECS") && !text.contains("task"),
                "{kind:?}: {text}"
            );
        }
        let permanent: Vec<ErrorKind> = [
            ErrorKind::Throttled,
            ErrorKind::AccessDenied,
            ErrorKind::InvalidRequest,
            ErrorKind::NotFound,
            ErrorKind::Server,
            ErrorKind::Timeout,
            ErrorKind::Unreachable,
            ErrorKind::Malformed,
            ErrorKind::Config,
        ]
        .into_iter()
        .filter(|k| SqsError::new(*k, "m").is_permanent())
        .collect();
        assert_eq!(
            permanent,
            vec![
                ErrorKind::AccessDenied,
                ErrorKind::InvalidRequest,
                ErrorKind::NotFound,
                ErrorKind::Config
            ]
        );
    }
}
