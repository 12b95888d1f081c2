//! Rate limits: [`Throttle`] for log lines (a warning that a client, or a flood of them, can
//! trigger is written at most once per period, and the next line says how many were suppressed in
//! between), and [`TokenBucket`] for chat budgets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lets one line through per `period`, counting the others.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// A throttle that lets one line through per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now (`n` lines were suppressed since the last one),
    /// `None` if this one is suppressed.
    pub fn allow(&self) -> Option<u64> {
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
    pub fn suppressed_note(n: u64) -> String {
        if n == 0 {
            String::new()
        } else {
            format!(" ({n} similar lines suppressed)")
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `rate × burst_secs`. A rate of 0
/// means no limit.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst_secs: f64) -> Self {
        let capacity = rate * burst_secs;
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if there are that many; always succeeds when the rate is 0.
    pub fn take(&mut self, n: f64) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
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

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(10.0, 2.0);
        assert!((0..20).all(|_| b.take(1.0)));
        assert!(!b.take(1.0));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take(5.0));
        assert!(!b.take(1.0));
        let mut unlimited = TokenBucket::new(0.0, 2.0);
        assert!((0..1000).all(|_| unlimited.take(100.0)));
    }
}
