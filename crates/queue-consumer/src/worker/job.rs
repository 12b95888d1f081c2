//! What a message asks for: the job format (the sample's whole number of milliseconds, or JSON
//! `{"work_ms": N}`), parsed without side effects.

use std::time::Duration;

/// The longest job SQS can keep hidden from other workers: a message's visibility can be extended
/// to at most 12 hours after it was received.
pub(crate) const SQS_MAX_INVISIBLE: Duration = Duration::from_secs(12 * 60 * 60);

/// A job: simulated work of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Job {
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

/// Reads a message body: `10000` or `{"work_ms": 10000}` (whitespace around either is fine). The
/// work must end within 12 hours of the receive, less one `visibility_timeout` of margin, since
/// SQS cannot hide the message for longer.
pub(crate) fn parse(body: &str, visibility_timeout: Duration) -> Result<Job, JobError> {
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
    Ok(Job {
        work: Duration::from_millis(ms),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    fn anything_else_is_unreadable_and_says_how_it_starts() {
        for body in [
            "abc",
            "",
            "-5",
            "1.5",
            "10 ms",
            r#"{"work":5}"#,
            r#"{"work_ms":"5"}"#,
            r#"{"work_ms":5,"extra":1}"#,
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
}
