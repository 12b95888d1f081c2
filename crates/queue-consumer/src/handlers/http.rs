//! `JOB_URL`: each message body POSTed to an HTTP endpoint, typically the application's own
//! container beside the worker (like Elastic Beanstalk's `sqsd`).
//!
//! The request carries `X-Message-Id`, `X-Receive-Count`, `X-Group-Id` (FIFO queues only), every
//! message attribute as `X-Attribute-<name>`, and `Content-Type` from the message's
//! `Content-Type` attribute (`text/plain; charset=utf-8` without one). A 2xx answer is
//! [`Outcome::Done`]; a 429 or 503 with `Retry-After` (seconds, or an HTTP date) is
//! [`Outcome::RetryAfter`]; anything else, no answer within the timeout, or a connection that
//! fails is [`Outcome::Failed`]. Redirects are not followed (a POST redirected would lose its
//! body). Connections are kept and reused: one client for every job.
//!
//! Plain HTTP only: the endpoint is meant to be a container of the same task (`localhost`), and
//! this build has no TLS client for it (the worker's own HTTPS, to SQS and ECS, is the AWS SDK's).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ecs_task_protection::worker::{Handler, Job, Outcome};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};

/// How long a request may take without a job timeout (`JOB_TIMEOUT_SECS`): five minutes, like
/// `sqsd`'s inactivity timeout, since the message stays hidden for as long as the job runs.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How long an idle connection is kept for the next job: under the shortest keep-alive common
/// servers keep (gunicorn's 2 s, Node's 5 s), so a connection is never reused just as the
/// application closes it.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest `Retry-After` taken as it is: SQS hides a message for at most 12 hours.
pub const MAX_RETRY_AFTER: Duration = ecs_task_protection::worker::SQS_MAX_INVISIBLE;

/// The most of a response body that is read to keep the connection: a longer body is dropped
/// with its connection.
const MAX_DRAINED_BODY: usize = 1024 * 1024;

/// The most of an error response's body quoted in the failure.
const QUOTED_BODY_CHARS: usize = 200;

/// The Content-Type of a body without a `Content-Type` attribute: SQS bodies are text.
const DEFAULT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// The endpoint of `JOB_URL`: an `http://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUrl(Url);

/// Why a `JOB_URL` value is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobUrlError {
    /// Not a URL at all.
    #[error("not a URL ({0}); e.g. http://localhost:8000/jobs")]
    Malformed(String),
    /// `https://`: not supported.
    #[error("https:// is not supported: the endpoint is meant to be a container beside the worker (http://localhost:PORT/PATH), and the worker has no TLS client for it")]
    Https,
    /// Another scheme.
    #[error("{0}:// is not HTTP; e.g. http://localhost:8000/jobs")]
    Scheme(String),
    /// User name or password in the URL (they would end up in the logs).
    #[error("a user name or password in the URL is not supported (it would be logged)")]
    Credentials,
}

impl JobUrl {
    /// Reads `JOB_URL` (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// Not a URL, not `http://`, no host, credentials in it.
    pub fn parse(value: &str) -> Result<Self, JobUrlError> {
        let url = Url::parse(value.trim()).map_err(|e| JobUrlError::Malformed(e.to_string()))?;
        match url.scheme() {
            "http" => {}
            "https" => return Err(JobUrlError::Https),
            other => return Err(JobUrlError::Scheme(other.to_string())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(JobUrlError::Credentials);
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(JobUrlError::Malformed("no host".into()));
        }
        Ok(Self(url))
    }
}

impl fmt::Display for JobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// POSTs each job to an endpoint: see the [module](self).
#[derive(Debug, Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
    url: JobUrl,
    timeout: Duration,
}

impl HttpHandler {
    /// A handler that POSTs to `url`, each request answered within `timeout` (the job timeout
    /// when there is one, else [`DEFAULT_REQUEST_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built (its runtime resources).
    pub fn new(url: JobUrl, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // A redirected POST would be sent again as a GET without its body.
            .redirect(reqwest::redirect::Policy::none())
            // The endpoint is beside the worker: a proxy from the environment is not the way.
            .no_proxy()
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    /// The request's headers for `job`.
    fn headers(&self, job: &Job) -> Result<HeaderMap, String> {
        let id = job.message_id();
        let mut headers = HeaderMap::new();
        let value = |what: &str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| format!("its {what} cannot be sent as an HTTP header: {v:?}"))
        };
        headers.insert("x-message-id", value("message ID", id)?);
        headers.insert("x-receive-count", HeaderValue::from(job.receive_count()));
        if let Some(group) = job.group_id() {
            headers.insert("x-group-id", value("group ID", group)?);
        }
        let mut attributes: Vec<_> = job.attributes().iter().collect();
        attributes.sort();
        for (name, v) in attributes {
            let header = HeaderName::try_from(format!("x-attribute-{name}"));
            // UTF-8 beyond ASCII is sent as its bytes; only control characters cannot be.
            let v = HeaderValue::from_bytes(v.as_bytes());
            match (header, v) {
                (Ok(header), Ok(v)) => {
                    headers.append(header, v);
                }
                _ => tracing::warn!(
                    "{id} - Attribute {name:?} not sent: its name or value cannot be an HTTP header"
                ),
            }
        }
        let content_type = job
            .attribute("Content-Type")
            .and_then(|v| HeaderValue::from_str(v).ok())
            .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
        headers.insert(CONTENT_TYPE, content_type);
        Ok(headers)
    }

    /// POSTs the job and reads the answer.
    async fn post(&self, job: &Job) -> Outcome {
        let headers = match self.headers(job) {
            Ok(headers) => headers,
            Err(why) => return Outcome::Failed(format!("not sent to {}: {why}", self.url)),
        };
        let request = self
            .client
            .post(self.url.0.clone())
            .timeout(self.timeout)
            .headers(headers)
            .body(job.body().to_owned());
        let failed = |e: reqwest::Error| {
            Outcome::Failed(if e.is_timeout() {
                format!(
                    "no answer from {} within {} s",
                    self.url,
                    self.timeout.as_secs_f64()
                )
            } else {
                format!("POST {} failed: {}", self.url, error_chain(&e))
            })
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(e),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read to the end (up to a bound) so that the connection can carry the next job.
        let mut start = Vec::new();
        let mut read = 0;
        while read <= MAX_DRAINED_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if start.len() < 4 * QUOTED_BODY_CHARS {
                        start.extend_from_slice(&chunk[..chunk.len().min(4 * QUOTED_BODY_CHARS)]);
                    }
                }
                Ok(None) => break,
                // The answer is known: a body cut short only costs the connection.
                Err(e) if !e.is_timeout() => break,
                Err(e) => return failed(e),
            }
        }
        decide(
            status,
            retry_after.as_deref(),
            &String::from_utf8_lossy(&start),
            SystemTime::now(),
        )
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, job: Job) -> Outcome {
        tokio::select! {
            outcome = self.post(&job) => outcome,
            // Dropping the request closes its connection: the application sees the client leave.
            reason = job.cancelled() => Outcome::Failed(format!(
                "{} before {} answered",
                super::cancel_words(reason),
                self.url
            )),
        }
    }
}

/// What an answer means: 2xx done; 429 or 503 with a readable `Retry-After` again after that
/// delay (at most [`MAX_RETRY_AFTER`]); anything else failed, quoting the start of the body.
fn decide(status: StatusCode, retry_after: Option<&str>, body: &str, now: SystemTime) -> Outcome {
    if status.is_success() {
        return Outcome::Done;
    }
    let status_text = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        match retry_after.map(|v| parse_retry_after(v, now)) {
            Some(Some(delay)) => return Outcome::RetryAfter(delay),
            Some(None) => {
                return Outcome::Failed(format!(
                    "{status_text} with an unreadable Retry-After ({:?}; seconds or an HTTP date)",
                    retry_after.unwrap_or_default()
                ))
            }
            None => return Outcome::Failed(format!("{status_text} without Retry-After")),
        }
    }
    let quoted: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(QUOTED_BODY_CHARS)
        .collect();
    let redirect = if status.is_redirection() {
        " (redirects are not followed: point JOB_URL at the endpoint itself)"
    } else {
        ""
    };
    if quoted.is_empty() {
        Outcome::Failed(format!("{status_text}{redirect}"))
    } else {
        Outcome::Failed(format!("{status_text}{redirect}: {quoted}"))
    }
}

/// `Retry-After`: whole seconds (`120`), or an HTTP date (a date already past is 0 s); capped at
/// [`MAX_RETRY_AFTER`]. `None` when it is neither.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // More digits than u64 holds is a long time all the same.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// An error and its causes, `: `-separated (reqwest's own message names only the request).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn now() -> SystemTime {
        // 2015-10-21T07:28:00Z
        NOW + Duration::from_secs(1_445_412_480)
    }

    #[test]
    fn job_url_is_an_http_url_with_a_host() {
        let u = JobUrl::parse(" http://localhost:8000/jobs?x=1 ").unwrap();
        assert_eq!(u.to_string(), "http://localhost:8000/jobs?x=1");
        assert_eq!(JobUrl::parse("https://app/jobs"), Err(JobUrlError::Https));
        assert_eq!(
            JobUrl::parse("ftp://app/jobs"),
            Err(JobUrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            JobUrl::parse("http://user:pw@app/jobs"),
            Err(JobUrlError::Credentials)
        );
        for value in ["localhost:8000/jobs", "/jobs", "", "http://"] {
            assert!(JobUrl::parse(value).is_err(), "{value}");
        }
    }

    #[test]
    fn a_2xx_answer_is_done() {
        for status in [200, 201, 202, 204, 299] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(decide(status, None, "", now()), Outcome::Done);
        }
    }

    #[test]
    fn a_429_or_503_with_retry_after_comes_back_after_it() {
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(
                decide(status, Some("7"), "", now()),
                Outcome::RetryAfter(Duration::from_secs(7))
            );
        }
        // Another status with Retry-After is a failure all the same.
        assert!(matches!(
            decide(StatusCode::INTERNAL_SERVER_ERROR, Some("7"), "", now()),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn a_429_or_503_without_a_readable_retry_after_is_a_failure() {
        assert_eq!(
            decide(StatusCode::SERVICE_UNAVAILABLE, None, "busy", now()),
            Outcome::Failed("HTTP 503 Service Unavailable without Retry-After".into())
        );
        let Outcome::Failed(why) = decide(StatusCode::TOO_MANY_REQUESTS, Some("soon"), "", now())
        else {
            panic!("not a failure")
        };
        assert!(
            why.contains("unreadable Retry-After") && why.contains("soon"),
            "{why}"
        );
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date_capped_at_12_hours() {
        assert_eq!(
            parse_retry_after(" 120 ", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now()),
            Some(Duration::ZERO),
            "a date past is now"
        );
        assert_eq!(parse_retry_after("86400", now()), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now()),
            Some(MAX_RETRY_AFTER)
        );
        for value in ["", "-1", "1.5", "soon", "21 Oct 2015"] {
            assert_eq!(parse_retry_after(value, now()), None, "{value}");
        }
    }

    #[test]
    fn another_answer_is_a_failure_quoting_the_body() {
        assert_eq!(
            decide(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "  Traceback:\n  boom  ",
                now()
            ),
            Outcome::Failed("HTTP 500 Internal Server Error: Traceback: boom".into())
        );
        let Outcome::Failed(why) = decide(StatusCode::BAD_REQUEST, None, &"x".repeat(5000), now())
        else {
            panic!("not a failure")
        };
        assert_eq!(
            why.len(),
            "HTTP 400 Bad Request: ".len() + QUOTED_BODY_CHARS
        );
        let Outcome::Failed(why) = decide(StatusCode::FOUND, None, "", now()) else {
            panic!("not a failure")
        };
        assert!(
            why.starts_with("HTTP 302 Found (redirects are not followed"),
            "{why}"
        );
    }
}
