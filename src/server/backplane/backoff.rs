//! How long to wait between tries to reach the backplane: 0.5 s doubling to 30 s, each wait
//! × a random 0.5–1, so that a fleet of tasks does not knock on a restarted cache in step.
//!
//! A connection that works starts the back-off over only once it has lasted [`STABLE`]: a link
//! that connects and is lost again at once (a backplane that accepts the connection and then
//! fails it) keeps backing off instead of knocking every half second forever.

use std::time::Duration;

use ecs_task_protection::protection::retry_delay;

/// The first wait.
pub const FIRST: Duration = Duration::from_millis(500);
/// The longest wait.
pub const MAX: Duration = Duration::from_secs(30);
/// How long a connection must last for the back-off to start over when it is lost.
pub const STABLE: Duration = MAX;

/// Exponential back-off with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// A back-off at its first step.
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connected spell that lasted `lasted` has ended: the back-off starts over if it lasted
    /// [`STABLE`], and goes on from where it was otherwise.
    pub fn after_spell(&mut self, lasted: Duration) {
        if lasted >= STABLE {
            self.reset();
        }
    }

    /// The next wait, with `jitter` in 0..1 (a random number in production).
    pub fn next_with(&mut self, jitter: f64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        retry_delay(self.attempt, FIRST, MAX, jitter)
    }

    /// The next wait, jittered.
    pub fn next_wait(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_half_a_second_to_thirty_and_resets() {
        let mut b = Backoff::new();
        let full: Vec<_> = (0..9).map(|_| b.next_with(1.0).as_millis()).collect();
        assert_eq!(
            full,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(250));
        for _ in 0..100 {
            let d = b.next_wait();
            assert!(d >= Duration::from_millis(250) && d <= MAX, "{d:?}");
        }
    }

    #[test]
    fn a_connection_lost_at_once_does_not_start_the_back_off_over() {
        let mut b = Backoff::new();
        for _ in 0..3 {
            b.next_with(1.0);
        }
        // Connected, then lost after a second: the next wait goes on doubling.
        b.after_spell(Duration::from_secs(1));
        assert_eq!(b.next_with(1.0), Duration::from_secs(4));
        b.after_spell(STABLE - Duration::from_millis(1));
        assert_eq!(b.next_with(1.0), Duration::from_secs(8));
        // Connected for long enough: back to the first wait.
        b.after_spell(STABLE);
        assert_eq!(b.next_with(1.0), FIRST);
    }
}
