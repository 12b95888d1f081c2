//! The queue consumer's own SQS calls besides taking jobs: creating a queue for local
//! experiments (`queue-consumer create-queue`, standard or FIFO, with a dead-letter queue), the
//! check at start-up that the queue exists and may be read ([`check_queue`]), and the shape of a
//! queue URL and of a Region (the settings refuse a malformed one with exit code 2). Errors are
//! the library's [`SqsError`]s, in SQS's words.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::config::Region;

use ecs_task_protection::ecs::classify_sdk_error;
use ecs_task_protection::protection::{BackendError, ErrorKind};
use ecs_task_protection::worker::{SqsError, Worker};

/// Classifies an SDK error of an SQS call of IAM action `action` (e.g. `sqs:CreateQueue`).
fn classify<E>(
    err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    action: &str,
) -> SqsError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    classify_sdk_error(err, action).into()
}

/// A queue for [`create`] to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewQueue {
    /// Its name (`.fifo` is added to a FIFO queue's name if it lacks it).
    pub name: String,
    /// How long a received message stays hidden.
    pub visibility: Duration,
    /// After how many receives its dead-letter queue takes a message (1..=1000).
    pub max_receive_count: u32,
    /// A FIFO queue (also when the name ends `.fifo`), with content-based deduplication on, so
    /// that senders that give no deduplication ID are taken too.
    pub fifo: bool,
}

impl NewQueue {
    /// Whether it is a FIFO queue.
    fn is_fifo(&self) -> bool {
        self.fifo || self.name.ends_with(".fifo")
    }

    /// The queue's name and its dead-letter queue's: `NAME` and `NAME-dlq`, or `NAME.fifo` and
    /// `NAME-dlq.fifo` (a FIFO queue's dead-letter queue is a FIFO queue too).
    fn names(&self) -> (String, String) {
        let base = self.name.strip_suffix(".fifo").unwrap_or(&self.name);
        if self.is_fifo() {
            (format!("{base}.fifo"), format!("{base}-dlq.fifo"))
        } else {
            (base.to_string(), format!("{base}-dlq"))
        }
    }
}

/// Creates `queue` in `sdk_config`'s Region (or `region`), with a dead-letter queue
/// (`<name>-dlq`, 14 days' retention) that takes a message after `queue.max_receive_count`
/// receives; returns the queue's URL. For local experiments (a queue that exists with the same
/// settings is fine); in AWS, the deployment creates the queue.
pub async fn create(
    sdk_config: &SdkConfig,
    region: Option<&str>,
    queue: &NewQueue,
) -> Result<String, SqsError> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut config = aws_sdk_sqs::config::Builder::from(sdk_config);
    if let Some(region) = region {
        config = config.region(Region::new(region.to_string()));
    }
    let client = aws_sdk_sqs::Client::from_conf(config.build());
    let created = |e| classify(&e, "sqs:CreateQueue");
    let (name, dlq_name) = queue.names();
    let fifo = queue.is_fifo();
    let mut dlq = client
        .create_queue()
        .queue_name(dlq_name)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600");
    if fifo {
        dlq = dlq.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let dlq = dlq.send().await.map_err(created)?;
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
        .ok_or_else(|| {
            SqsError::from(BackendError::new(
                ErrorKind::Malformed,
                "the dead-letter queue has no ARN",
            ))
        })?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": queue.max_receive_count.to_string(),
    });
    let mut create = client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            queue.visibility.as_secs().to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string());
    if fifo {
        create = create
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "true");
    }
    let created_queue = create.send().await.map_err(created)?;
    Ok(created_queue.queue_url().unwrap_or_default().to_string())
}

/// Checks at start-up, before the first job, that the worker's queue exists and this worker may
/// read it ([`Worker::check_queue`]: `GetQueueAttributes`), and logs what it is. `variable` names
/// the setting the URL came from (`QUEUE_URL` or `COPILOT_QUEUE_URI`).
///
/// # Errors
///
/// A queue that does not exist, or that the task role may not read, or a request SQS refuses as
/// such: the message (for exit code 2) names `variable` and the IAM action. A passing fault (SQS
/// unreachable, throttled, a server error) is logged and let through: the receive loop retries,
/// and `/healthz` answers 503 if receives keep failing.
pub async fn check_queue(worker: &Worker, variable: &str) -> Result<(), String> {
    let url = worker.status().queue;
    match worker.check_queue().await {
        Ok(info) => {
            let kind = if info.fifo {
                "a FIFO queue"
            } else {
                "a standard queue"
            };
            match info.max_receive_count {
                Some(n) => tracing::info!(
                    "Queue: {kind}; its redrive policy moves a message to the dead-letter queue \
                     after {n} receives"
                ),
                None => tracing::warn!(
                    "Queue: {kind} with no redrive policy: a message whose job keeps failing is \
                     retried until the queue's retention period ends; give the queue a \
                     dead-letter queue (a redrive policy with a maxReceiveCount)"
                ),
            }
            Ok(())
        }
        Err(e) if e.is_permanent() => {
            let hint = match e.kind() {
                ErrorKind::NotFound => format!(
                    ". Check {variable} (and QUEUE_REGION): the queue must exist, in that Region"
                ),
                ErrorKind::AccessDenied => ". The task role needs sqs:GetQueueAttributes, \
                     sqs:ReceiveMessage, sqs:ChangeMessageVisibility and sqs:DeleteMessage on \
                     the queue"
                    .to_string(),
                _ => String::new(),
            };
            // SQS's own message may end with a period; the hint brings its own.
            let said = e.to_string();
            let said = said.trim_end_matches('.');
            Err(format!(
                "cannot use the queue in {variable} ({url}): {said}{hint}"
            ))
        }
        Err(e) => {
            tracing::warn!(
                "Cannot check the queue in {variable} yet ({e}); starting anyway: receives are \
                 retried, and /healthz answers 503 if they keep failing"
            );
            Ok(())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ecs_task_protection::worker::is_fifo;

    #[test]
    fn a_fifo_queue_and_its_dead_letter_queue_are_both_named_fifo() {
        let queue = |name: &str, fifo| NewQueue {
            name: name.into(),
            visibility: Duration::from_secs(60),
            max_receive_count: 3,
            fifo,
        };
        assert_eq!(
            queue("jobs", false).names(),
            ("jobs".into(), "jobs-dlq".into())
        );
        for (name, fifo) in [("jobs", true), ("jobs.fifo", true), ("jobs.fifo", false)] {
            assert!(queue(name, fifo).is_fifo(), "{name} {fifo}");
            assert_eq!(
                queue(name, fifo).names(),
                ("jobs.fifo".into(), "jobs-dlq.fifo".into()),
                "{name} {fifo}"
            );
        }
        assert!(is_fifo("http://127.0.0.1:4566/123456789012/jobs.fifo"));
        assert!(!is_fifo("http://127.0.0.1:4566/123456789012/jobs"));
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
}
