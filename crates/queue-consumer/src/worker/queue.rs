//! The job queue, spoken to through `aws-sdk-sqs`: long-poll receives, visibility changes and
//! deletes in batches of up to 10, and sends. SDK errors become [`SqsError`]s whose kind says
//! what happened, whose message names the IAM action, and whose wording names SQS (not ECS, whose
//! errors share the same classification). Also the shape of a queue URL and of a Region, checked
//! at start-up.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::Region;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use ecs_task_protection::ecs::classify_sdk_error;
use ecs_task_protection::protection::{BackendError, ErrorKind};

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
    pub(crate) fn is_permanent(&self) -> bool {
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
}

/// The queue, with a client set up for it.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
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
        }
    }

    /// The queue's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Long-polls for up to `max` messages (1..=10) for up to `wait`, hiding each from other
    /// workers for `visibility`.
    pub(crate) async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(clamp_i32(max.clamp(1, SQS_BATCH)))
            .wait_time_seconds(secs_i32(wait.min(SQS_MAX_WAIT)))
            .visibility_timeout(secs_i32(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify(&e, "sqs:ReceiveMessage"))?;
        Ok(output
            .messages()
            .iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Some(Received {
                    id: m.message_id()?.to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count,
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
        let failed = output.failed().iter().map(|f| {
            (
                f.id().to_string(),
                format!("{}: {}", f.code(), f.message().unwrap_or("")),
            )
        });
        Ok(per_entry(entries.len(), failed))
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
        let failed = output.failed().iter().map(|f| {
            (
                f.id().to_string(),
                format!("{}: {}", f.code(), f.message().unwrap_or("")),
            )
        });
        Ok(per_entry(receipts.len(), failed))
    }

    /// Sends up to 10 messages; returns their message IDs, or the first entry's failure.
    pub(crate) async fn send(&self, bodies: &[String]) -> Result<Vec<String>, SqsError> {
        let batch = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
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

/// Creates queue `name` in `sdk_config`'s Region (or `region`), hiding received messages for
/// `visibility`, with a dead-letter queue `<name>-dlq` that takes a message after
/// `dead_letter_after` receives; returns the queue's URL. For local experiments (a queue that
/// exists with the same settings is fine); in AWS, the deployment creates the queue.
pub async fn create(
    sdk_config: &SdkConfig,
    region: Option<&str>,
    name: &str,
    visibility: Duration,
    dead_letter_after: u32,
) -> Result<String, SqsError> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut config = aws_sdk_sqs::config::Builder::from(sdk_config);
    if let Some(region) = region {
        config = config.region(Region::new(region.to_string()));
    }
    let client = aws_sdk_sqs::Client::from_conf(config.build());
    let created = |e| classify(&e, "sqs:CreateQueue");
    let dlq = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(created)?;
    let dlq_url = dlq.queue_url().unwrap_or_default();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| classify(&e, "sqs:GetQueueAttributes"))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| SqsError::new(ErrorKind::Malformed, "the dead-letter queue has no ARN"))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": dead_letter_after.to_string(),
    });
    let queue = client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.as_secs().to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(created)?;
    Ok(queue.queue_url().unwrap_or_default().to_string())
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

/// What a queue URL looks like, for error messages.
const QUEUE_URL_SHAPE: &str = "https://sqs.REGION.amazonaws.com/ACCOUNT/NAME";

/// Checks that `url` has the shape of a queue URL: `https://HOST[:PORT]/…/NAME` (`http` for a
/// local endpoint), NAME a queue name (1 to 80 letters, digits, `-` and `_`, ending `.fifo` for a
/// FIFO queue), no query or fragment; on AWS's own hosts (`amazonaws.com`, `amazonaws.com.cn`)
/// the path is exactly `/ACCOUNT/NAME` with a 12-digit account ID. The error says what is wrong.
pub(crate) fn check_queue_url(url: &str) -> Result<(), String> {
    if url.starts_with("arn:") {
        return Err(format!(
            "this is an ARN, not a queue URL (one looks like {QUEUE_URL_SHAPE})"
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("not a URL ({e}); a queue URL looks like {QUEUE_URL_SHAPE}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!(
            "the scheme must be https (or http for a local endpoint), not {:?}",
            parsed.scheme()
        ));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("no host; a queue URL looks like {QUEUE_URL_SHAPE}"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a queue URL has no query or fragment".to_string());
    }
    let segments: Vec<&str> = parsed.path().split('/').filter(|s| !s.is_empty()).collect();
    let Some(name) = segments.last() else {
        return Err(format!(
            "no queue name after the host; a queue URL looks like {QUEUE_URL_SHAPE}"
        ));
    };
    if !is_queue_name(name) {
        return Err(format!(
            "{name:?} is not a queue name (1 to 80 letters, digits, - and _, ending .fifo for a \
             FIFO queue)"
        ));
    }
    let on_aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
    let account = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
    if on_aws && !(segments.len() == 2 && account(segments[0])) {
        return Err(format!(
            "the path of an AWS queue URL is /ACCOUNT/NAME with a 12-digit account ID \
             ({QUEUE_URL_SHAPE})"
        ));
    }
    Ok(())
}

/// Whether `name` is a valid SQS queue name.
fn is_queue_name(name: &str) -> bool {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    (1..=80).contains(&name.len())
        && !base.is_empty()
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks that `region` has the shape of an AWS Region name: lowercase words and a number joined
/// by `-`, such as `us-east-1`, `us-gov-west-1` or `ap-southeast-2`.
pub(crate) fn check_region(region: &str) -> Result<(), String> {
    let parts: Vec<&str> = region.split('-').collect();
    let word = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let ok = match parts.split_last() {
        Some((number, words)) => {
            words.len() >= 2
                && words.iter().all(word)
                && (1..=2).contains(&number.len())
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{region:?} is not a Region name (such as us-east-1 or eu-west-2)"
        ))
    }
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
    fn a_queue_url_must_have_the_shape_of_one() {
        for good in [
            "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
            "https://sqs.us-east-1.amazonaws.com/123456789012/jobs.fifo",
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/my_jobs-2",
            "https://vpce-0abc-xyz.sqs.us-east-2.vpce.amazonaws.com/123456789012/jobs",
            "http://127.0.0.1:4566/123456789012/jobs",
            "http://localhost:9324/queue/jobs",
            "http://localhost:9324/jobs",
        ] {
            assert_eq!(check_queue_url(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("jobs", "not a URL"),
            ("sqs.us-east-1.amazonaws.com/123456789012/jobs", "not a URL"),
            ("arn:aws:sqs:us-east-1:123456789012:jobs", "ARN"),
            ("ftp://host/123456789012/jobs", "scheme"),
            ("https://sqs.us-east-1.amazonaws.com", "no queue name"),
            ("https://sqs.us-east-1.amazonaws.com/", "no queue name"),
            ("https://sqs.us-east-1.amazonaws.com/jobs", "12-digit"),
            ("https://sqs.us-east-1.amazonaws.com/1234/jobs", "12-digit"),
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/a/jobs",
                "12-digit",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/jo%20bs",
                "not a queue name",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/jobs?x=1",
                "query",
            ),
            ("http://localhost:9324/.fifo", "not a queue name"),
        ] {
            let e = check_queue_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("http://localhost/{}", "a".repeat(81));
        assert!(check_queue_url(&long).is_err());
    }

    #[test]
    fn a_region_must_have_the_shape_of_one() {
        for good in [
            "us-east-1",
            "us-gov-west-1",
            "ap-southeast-2",
            "cn-northwest-1",
            "us-isob-east-1",
            "eusc-de-east-1",
        ] {
            assert_eq!(check_region(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "us",
            "useast1",
            "us-east",
            "US-EAST-1",
            "us-east-1a",
            "us_east_1",
            "us--1",
            "us-east-123",
            " us-east-1",
            "eu-west-1.",
        ] {
            let e = check_region(bad).unwrap_err();
            assert!(e.contains("Region"), "{bad:?}: {e}");
        }
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
