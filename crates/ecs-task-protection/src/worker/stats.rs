//! The worker's running tallies behind [`WorkerStatus`](super::WorkerStatus): messages, not
//! receives.
//!
//! SQS delivers a message again after a failure, a retry, a return to the queue or a lapse of its
//! visibility, and says how often it has (`ApproximateReceiveCount`). Counting every delivery
//! would count a bad message received 3 times as 3 bad messages; so a message counts once:
//!
//! * it is **received** on its first delivery (receive count 1), and every later delivery of it
//!   is a **redelivery**;
//! * it is **done** when its job succeeds and its message is deleted, on whichever delivery;
//! * any other outcome (invalid, failed, retried, timed out, returned) counts on its first
//!   delivery only: the outcome of the first attempt. What its later deliveries do shows in
//!   `redelivered`, and where it ends up in the queue's dead-letter queue.
//!
//! Because the rule rests on SQS's receive count rather than on this worker's memory, it holds
//! across a fleet too: the tallies of all the workers of a queue add up to each message once,
//! whichever worker got which delivery. Errors count calls: each failed receive, each done job
//! whose delete did not go through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// What became of one delivery of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    /// Done and deleted.
    Done,
    /// Refused by the handler's check.
    Invalid,
    /// The handler failed, or panicked.
    Failed,
    /// The handler asked for a retry after a delay.
    Retried,
    /// Cancelled at its timeout.
    TimedOut,
    /// Handed back to the queue unfinished.
    Returned,
}

/// Whether the outcome `tally` of a delivery with SQS's `receive_count` counts: a success always
/// (a message is deleted once), any other outcome on the message's first delivery only.
pub(crate) fn counts(tally: Tally, receive_count: u32) -> bool {
    tally == Tally::Done || receive_count <= 1
}

/// Durations observed: how many, their sum, the longest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Timing {
    /// How many were observed.
    pub count: u64,
    /// Their sum, in seconds (the mean is `sum_seconds / count`).
    pub sum_seconds: f64,
    /// The longest, in seconds.
    pub max_seconds: f64,
}

/// A [`Timing`] being added to.
#[derive(Debug, Default)]
pub(crate) struct Timer(Mutex<(u64, Duration, Duration)>);

impl Timer {
    /// Adds one observation.
    pub(crate) fn record(&self, d: Duration) {
        let mut t = crate::lock(&self.0);
        t.0 += 1;
        t.1 += d;
        t.2 = t.2.max(d);
    }

    /// What it has seen so far.
    pub(crate) fn read(&self) -> Timing {
        let (count, sum, max) = *crate::lock(&self.0);
        Timing {
            count,
            sum_seconds: sum.as_secs_f64(),
            max_seconds: max.as_secs_f64(),
        }
    }
}

/// The running tallies.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) returned: AtomicU64,
    pub(crate) delete_failures: AtomicU64,
    pub(crate) receive_errors: AtomicU64,
    /// How long handlers ran, each run (cancelled ones too).
    pub(crate) job_duration: Timer,
    /// How long new messages waited in the queue: from their `SentTimestamp` to their first
    /// delivery.
    pub(crate) message_age: Timer,
}

impl Counters {
    /// Adds one to `counter`.
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery with SQS's `receive_count`: a message received (the first delivery), whose age
    /// is `age` when SQS gave its sent time, or a redelivery.
    pub(crate) fn delivered(&self, receive_count: u32, age: Option<Duration>) {
        if receive_count <= 1 {
            Self::add(&self.received);
            if let Some(age) = age {
                self.message_age.record(age);
            }
        } else {
            Self::add(&self.redelivered);
        }
    }

    /// What became of a delivery with SQS's `receive_count`, counted by [`counts`].
    pub(crate) fn outcome(&self, tally: Tally, receive_count: u32) {
        if counts(tally, receive_count) {
            Self::add(match tally {
                Tally::Done => &self.done,
                Tally::Invalid => &self.invalid,
                Tally::Failed => &self.failed,
                Tally::Retried => &self.retried,
                Tally::TimedOut => &self.timed_out,
                Tally::Returned => &self.returned,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn a_message_that_never_succeeds_counts_once_under_its_first_outcome() {
        let c = Counters::default();
        // 8 unreadable messages, each delivered 3 times (then dead-lettered by SQS).
        for _ in 0..8 {
            for receive in 1..=3 {
                c.delivered(receive, None);
                c.outcome(Tally::Invalid, receive);
            }
        }
        assert_eq!(get(&c.received), 8);
        assert_eq!(get(&c.redelivered), 16);
        assert_eq!(get(&c.invalid), 8);
        // A message that times out, then fails twice: one message, timed out at first.
        c.outcome(Tally::TimedOut, 1);
        c.outcome(Tally::Failed, 2);
        c.outcome(Tally::Failed, 3);
        assert_eq!((get(&c.timed_out), get(&c.failed)), (1, 0));
    }

    #[test]
    fn a_success_counts_on_whichever_delivery_it_comes() {
        assert!(counts(Tally::Done, 1));
        assert!(counts(Tally::Done, 5));
        let c = Counters::default();
        c.outcome(Tally::Failed, 1);
        c.outcome(Tally::Done, 2);
        assert_eq!((get(&c.failed), get(&c.done)), (1, 1));
    }

    #[test]
    fn every_outcome_but_success_counts_on_the_first_delivery_only() {
        for tally in [
            Tally::Invalid,
            Tally::Failed,
            Tally::Retried,
            Tally::TimedOut,
            Tally::Returned,
        ] {
            assert!(counts(tally, 1), "{tally:?}");
            // SQS leaves the attribute out only if asked for none: read as 1.
            assert!(counts(tally, 0), "{tally:?}");
            assert!(!counts(tally, 2), "{tally:?}");
        }
    }

    #[test]
    fn message_age_is_taken_on_first_deliveries_only_and_timings_keep_count_sum_and_max() {
        let c = Counters::default();
        c.delivered(1, Some(Duration::from_millis(1500)));
        c.delivered(1, Some(Duration::from_millis(500)));
        c.delivered(1, None);
        c.delivered(2, Some(Duration::from_secs(600)));
        let age = c.message_age.read();
        assert_eq!(age.count, 2);
        assert!((age.sum_seconds - 2.0).abs() < 1e-9, "{age:?}");
        assert!((age.max_seconds - 1.5).abs() < 1e-9, "{age:?}");
        assert_eq!(c.job_duration.read(), Timing::default());
    }
}
