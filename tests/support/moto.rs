//! moto's server (`moto_server`, from PyPI's `moto[server]`) as a real SQS endpoint for the
//! tests: started on a free loopback port per test, stopped when dropped. `MOTO_SERVER` names the
//! program when it is not on `PATH`. Without it, a test is skipped (it prints SKIPPED), except on
//! CI (`CI=true`), where it fails.

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

use super::process::Proc;

/// A running moto server.
pub struct Moto {
    _proc: Proc,
    endpoint: String,
}

impl Moto {
    /// Starts moto, or returns `None` (after printing SKIPPED) when it is not installed outside
    /// CI.
    pub async fn start(test: &str) -> Option<Moto> {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = super::free_port();
        let mut command = Command::new(&program);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = match Proc::spawn("moto_server", command, false) {
            Ok(p) => p,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{test}: moto is required on CI: {e}"
                );
                println!("SKIPPED {test}: {e} (pip install 'moto[server]', or set MOTO_SERVER)");
                return None;
            }
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not listen within 30 s:\n{}",
                proc.output.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Moto {
            _proc: proc,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The endpoint URL (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An SQS client for it.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        sqs_client(&self.endpoint)
    }

    /// Creates queue `name` with `visibility_secs`, and when `dead_letter_after` is given a
    /// dead-letter queue `name-dlq` that gets a message after that many receives. Returns the
    /// queue's URL and the dead-letter queue's.
    pub async fn queue(
        &self,
        name: &str,
        visibility_secs: u32,
        dead_letter_after: Option<u32>,
    ) -> (String, Option<String>) {
        let sqs = self.sqs();
        let mut create = sqs.create_queue().queue_name(name).attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        );
        let mut dlq_url = None;
        if let Some(tries) = dead_letter_after {
            let dlq = sqs
                .create_queue()
                .queue_name(format!("{name}-dlq"))
                .send()
                .await
                .expect("create the dead-letter queue");
            let url = dlq.queue_url().expect("url").to_string();
            let arn = sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("dead-letter queue ARN")
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                .expect("QueueArn");
            let policy =
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{tries}"}}"#);
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy);
            dlq_url = Some(url);
        }
        let url = create
            .send()
            .await
            .expect("create the queue")
            .queue_url()
            .expect("url")
            .to_string();
        (url, dlq_url)
    }

    /// Sends `body` to `queue`; returns the message ID.
    pub async fn send(&self, queue: &str, body: &str) -> String {
        self.sqs()
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
            .expect("send")
            .message_id()
            .expect("id")
            .to_string()
    }

    /// (visible, in flight) message counts of `queue`.
    pub async fn depth(&self, queue: &str) -> (u64, u64) {
        let attrs = self
            .sqs()
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes");
        let get = |name: QueueAttributeName| {
            attrs
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Receives from `queue` for up to `wait` (long polling) and returns the bodies and IDs it
    /// got, hiding them for `visibility_secs`.
    pub async fn receive(
        &self,
        queue: &str,
        wait: Duration,
        visibility_secs: i32,
    ) -> Vec<(String, String)> {
        let out = self
            .sqs()
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(visibility_secs)
            .send()
            .await
            .expect("receive");
        out.messages()
            .iter()
            .map(|m| {
                (
                    m.message_id().unwrap_or_default().to_string(),
                    m.body().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// An `aws-sdk-sqs` client for a local endpoint, with test credentials, in us-east-1.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(super::credentials())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}
