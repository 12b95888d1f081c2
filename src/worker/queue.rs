//! The job queue, spoken to through `aws-sdk-sqs`: long-poll receives, visibility changes and
//! deletes in batches of up to 10, and sends. SDK errors become [`BackendError`]s whose kind says
//! what happened and whose message names the IAM action.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::Region;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};

use crate::ecs::sdk::classify_sdk_error;
use crate::protection::{BackendError, ErrorKind};

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
    ) -> Result<Vec<Received>, BackendError> {
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
            .map_err(|e| classify_sdk_error(&e, "sqs:ReceiveMessage"))?;
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
    ) -> Result<Vec<Result<(), String>>, BackendError> {
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
            .map_err(|e| BackendError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e, "sqs:ChangeMessageVisibility"))?;
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
    ) -> Result<Vec<Result<(), String>>, BackendError> {
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
            .map_err(|e| BackendError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e, "sqs:DeleteMessage"))?;
        let failed = output.failed().iter().map(|f| {
            (
                f.id().to_string(),
                format!("{}: {}", f.code(), f.message().unwrap_or("")),
            )
        });
        Ok(per_entry(receipts.len(), failed))
    }

    /// Sends up to 10 messages; returns their message IDs, or the first entry's failure.
    pub(crate) async fn send(&self, bodies: &[String]) -> Result<Vec<String>, BackendError> {
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
            .map_err(|e| BackendError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e, "sqs:SendMessage"))?;
        if let Some(f) = output.failed().first() {
            return Err(BackendError::new(
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
) -> Result<String, BackendError> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut config = aws_sdk_sqs::config::Builder::from(sdk_config);
    if let Some(region) = region {
        config = config.region(Region::new(region.to_string()));
    }
    let client = aws_sdk_sqs::Client::from_conf(config.build());
    let created = |e| classify_sdk_error(&e, "sqs:CreateQueue");
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
        .map_err(|e| classify_sdk_error(&e, "sqs:GetQueueAttributes"))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| {
            BackendError::new(ErrorKind::Malformed, "the dead-letter queue has no ARN")
        })?;
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
}
