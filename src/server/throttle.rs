//! Rate-limited log lines: a warning that a client (or a flood of them) can trigger is written at
//! most once per period, and the next line says how many were suppressed in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lets one line through per `period`, counting the others.
#[derive(Debug)]
pub(super) struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// A throttle that lets one line through per `period`.
    pub(super) const fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now (`n` lines were suppressed since the last one),
    /// `None` if this one is suppressed.
    pub(super) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }

    /// " (N similar lines suppressed)", or nothing when none were.
    pub(super) fn suppressed_note(n: u64) -> String {
        if n == 0 {
            String::new()
        } else {
            format!(" ({n} similar lines suppressed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_and_the_next_counts_the_suppressed() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..499 {
            assert_eq!(t.allow(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.allow(), Some(499));
        assert_eq!(t.allow(), None);
        assert_eq!(Throttle::suppressed_note(0), "");
        assert_eq!(
            Throttle::suppressed_note(3),
            " (3 similar lines suppressed)"
        );
    }
}
