//! The sample's demo job, the worker's default handler: the message body is a whole number of
//! milliseconds (the Node.js sample's format) or JSON `{"work_ms": N}` (other fields are allowed
//! and ignored), and the work is a sleep that long. A body that is neither is not a job: the
//! handler's check refuses it before protection is taken, and the message is left on the queue
//! for its dead-letter queue.

use std::time::Duration;

use ecs_task_protection::worker::{async_trait, Handler, Job, Outcome, SQS_MAX_INVISIBLE};

/// The sample's demo job as a [`Handler`]: sleeps for the milliseconds the body says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoJob {
    /// The worker's visibility timeout: a job must end 12 hours after its receive less this.
    visibility_timeout: Duration,
}

impl DemoJob {
    /// The demo job for a worker whose visibility timeout is `visibility_timeout`.
    pub fn new(visibility_timeout: Duration) -> Self {
        Self { visibility_timeout }
    }
}

#[async_trait]
impl Handler for DemoJob {
    async fn handle(&self, job: Job) -> Outcome {
        let work = match parse(job.body(), self.visibility_timeout) {
            Ok(work) => work.work,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        tracing::info!(
            "{} - Working for {} milliseconds",
            job.message_id(),
            work.as_millis()
        );
        tokio::select! {
            _ = tokio::time::sleep(work) => Outcome::Done,
            reason = job.cancelled() => Outcome::Failed(format!("cancelled ({reason:?})")),
        }
    }

    fn check(&self, job: &Job) -> Result<(), String> {
        parse(job.body(), self.visibility_timeout)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A job: simulated work of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Work {
    /// How long the work takes.
    pub(crate) work: Duration,
}

/// Why a message body is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JobError {
    /// The body is neither a whole number nor the JSON object.
    #[error(
        "the body is neither a whole number of milliseconds nor {{\"work_ms\": N}} (it starts {0:?})"
    )]
    Unreadable(String),
    /// The work is longer than SQS can keep the message hidden.
    #[error("{0} ms is longer than a job may run ({1} ms: SQS keeps a message hidden for at most 12 hours after it was received, less one visibility timeout)")]
    TooLong(u64, u64),
}

/// Reads a message body: `10000` or `{"work_ms": 10000}` (whitespace around either is fine; other
/// JSON fields, such as a trace ID, are ignored). The work must end within 12 hours of the
/// receive, less one `visibility_timeout` of margin, since SQS cannot hide the message for
/// longer.
pub(crate) fn parse(body: &str, visibility_timeout: Duration) -> Result<Work, JobError> {
    let text = body.trim();
    let ms = match text.parse::<u64>() {
        Ok(ms) => ms,
        // Only an object: serde would also read a struct from a sequence (`[5]`).
        Err(_) => text
            .starts_with('{')
            .then(|| serde_json::from_str::<WorkMs>(text).ok())
            .flatten()
            .map(|w| w.work_ms)
            .ok_or_else(|| JobError::Unreadable(text.chars().take(40).collect()))?,
    };
    let limit = SQS_MAX_INVISIBLE.saturating_sub(visibility_timeout);
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    if ms > limit_ms {
        return Err(JobError::TooLong(ms, limit_ms));
    }
    Ok(Work {
        work: Duration::from_millis(ms),
    })
}

/// `{"work_ms": N, …}`: unknown fields are allowed (producers add trace IDs and the like).
#[derive(serde::Deserialize)]
struct WorkMs {
    work_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const VT: Duration = Duration::from_secs(60);

    fn ms(body: &str) -> Result<u64, JobError> {
        parse(body, VT).map(|j| j.work.as_millis() as u64)
    }

    #[test]
    fn the_samples_format_is_a_whole_number_of_milliseconds() {
        assert_eq!(ms("10000"), Ok(10_000));
        assert_eq!(ms(" 0\n"), Ok(0));
    }

    #[test]
    fn json_with_work_ms_is_accepted() {
        assert_eq!(ms(r#"{"work_ms": 250}"#), Ok(250));
        assert_eq!(ms(r#" {"work_ms":0} "#), Ok(0));
    }

    #[test]
    fn json_with_work_ms_and_unknown_fields_is_a_job() {
        assert_eq!(ms(r#"{"work_ms":200,"trace_id":"abc"}"#), Ok(200));
        assert_eq!(ms(r#"{"work_ms":5,"extra":1}"#), Ok(5));
        assert_eq!(ms(r#"{"trace":{"id":[1,2]},"work_ms":7}"#), Ok(7));
    }

    #[test]
    fn anything_else_is_unreadable_and_says_how_it_starts() {
        for body in [
            "abc",
            "",
            "-5",
            "1.5",
            "10 ms",
            r#"{"work":5}"#,
            r#"{"work_ms":"5"}"#,
            r#"{"trace_id":"abc"}"#,
            "[5]",
        ] {
            let e = ms(body).unwrap_err();
            assert!(matches!(e, JobError::Unreadable(_)), "{body:?}: {e}");
        }
        assert!(ms("abc").unwrap_err().to_string().contains("\"abc\""));
    }

    #[test]
    fn a_job_longer_than_sqs_can_hide_it_is_refused() {
        let limit = 12 * 3600 * 1000 - 60_000;
        assert_eq!(ms(&limit.to_string()), Ok(limit));
        assert!(matches!(
            ms(&(limit + 1).to_string()),
            Err(JobError::TooLong(_, l)) if l == limit
        ));
        assert!(matches!(
            ms(&u64::MAX.to_string()),
            Err(JobError::TooLong(..))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_demo_job_works_for_the_milliseconds_it_says_and_stops_when_cancelled() {
        let demo = DemoJob::new(VT);
        let started = tokio::time::Instant::now();
        let job = Job::new(r#"{"work_ms":1500,"trace_id":"abc"}"#, "m-1");
        assert_eq!(demo.check(&job), Ok(()));
        assert_eq!(demo.handle(job).await, Outcome::Done);
        assert_eq!(started.elapsed(), Duration::from_millis(1500));

        let (cancel, cancelled) = tokio::sync::watch::channel(None);
        let job = Job::new("60000", "m-2").with_cancel(cancelled);
        let running = tokio::spawn(async move { demo.handle(job).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.send_replace(Some(ecs_task_protection::worker::CancelReason::Shutdown));
        let outcome = running.await.unwrap();
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_unreadable_body_is_refused_by_the_check_and_failed_by_the_handler() {
        let demo = DemoJob::new(VT);
        let job = Job::new("abc", "m-1");
        let refused = demo.check(&job).unwrap_err();
        assert!(refused.contains("\"abc\""), "{refused}");
        assert_eq!(demo.handle(job).await, Outcome::Failed(refused));
    }
}
