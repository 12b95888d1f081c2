//! What this task lets in of the other tasks' chat: remote chat obeys this task's rules, so that
//! what another task (or anyone who can publish on the channel) sends can never cost this task's
//! clients their connection.
//!
//! * **Length.** Text longer than this task's `MAX_MESSAGE_BYTES` is refused: each client's write
//!   buffer holds one largest message plus 4 KiB, so a longer line would fill every client's
//!   buffer at once, and every client would be dropped as one that stopped reading. In a fleet
//!   whose tasks have different limits (a rolling deployment that changes `MAX_MESSAGE_BYTES`),
//!   a line longer than a task's limit reaches only the tasks whose limit allows it.
//! * **Budget.** Remote chat may bring at most half a client's queue (`CLIENT_QUEUE_MESSAGES / 2`
//!   messages, 128 by default) at once, refilled at that many a second. A burst from other tasks
//!   beyond it is dropped here, and counted, instead of pushing every client more than its queue
//!   behind (which closes it with 1008), and half of each queue stays for this task's own chat.
//!   What passes then pays the room's delivery budget (`CHAT_ROOM_DELIVERIES_PER_SEC`), shared
//!   with local chat, like any message.
//!
//! The checks are made in the link, before the hub sees the text: a refused message reaches no
//! client and costs nothing of the room's budget.

use super::super::hub::SessionLimits;
use super::super::throttle::TokenBucket;

/// What happens to one message from another task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Hand it to the room (which may still drop it if the room's budget is spent).
    Deliver,
    /// Longer than this task's `MAX_MESSAGE_BYTES`: refused.
    TooLong,
    /// Over the budget for remote chat: dropped.
    OverBudget,
}

/// The rules remote chat obeys on this task, with the budget's state.
#[derive(Debug)]
pub(super) struct Inbound {
    max_bytes: usize,
    per_sec: u32,
    budget: TokenBucket,
}

impl Inbound {
    /// The rules for clients with these `limits`.
    pub(super) fn new(limits: &SessionLimits) -> Self {
        let per_sec = Self::per_sec(limits.queue_messages);
        Self {
            max_bytes: limits.max_message_bytes,
            per_sec,
            budget: TokenBucket::new(f64::from(per_sec), 1.0),
        }
    }

    /// The remote messages allowed per second (and at once): half of a client's queue, at least
    /// one.
    pub(super) fn per_sec(queue_messages: usize) -> u32 {
        u32::try_from(queue_messages / 2).unwrap_or(u32::MAX).max(1)
    }

    /// The budget's rate, for the log.
    pub(super) fn rate(&self) -> u32 {
        self.per_sec
    }

    /// This task's `MAX_MESSAGE_BYTES`, for the log.
    pub(super) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Judges one message: the length first (a refused message does not spend the budget), then
    /// the budget.
    pub(super) fn judge(&mut self, text: &str) -> Verdict {
        if text.len() > self.max_bytes {
            Verdict::TooLong
        } else if self.budget.take(1.0) {
            Verdict::Deliver
        } else {
            Verdict::OverBudget
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max_message_bytes: usize, queue_messages: usize) -> SessionLimits {
        SessionLimits {
            max_message_bytes,
            queue_messages,
            ..SessionLimits::DEFAULT
        }
    }

    #[tokio::test(start_paused = true)]
    async fn text_longer_than_max_message_bytes_is_refused_and_spends_nothing() {
        let mut inbound = Inbound::new(&limits(16, 2)); // a budget of 1 message
        assert_eq!(inbound.judge(&"x".repeat(17)), Verdict::TooLong);
        assert_eq!(inbound.judge(&"é".repeat(9)), Verdict::TooLong); // 18 bytes
        assert_eq!(inbound.judge(&"x".repeat(16)), Verdict::Deliver);
        assert_eq!(inbound.max_bytes(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_gets_half_a_queue_then_half_a_queue_a_second() {
        let mut inbound = Inbound::new(&limits(4096, 256));
        assert_eq!(inbound.rate(), 128);
        let burst: Vec<_> = (0..1000).map(|_| inbound.judge("hi")).collect();
        assert_eq!(
            burst.iter().filter(|v| **v == Verdict::Deliver).count(),
            128
        );
        assert!(burst[128..].iter().all(|v| *v == Verdict::OverBudget));
        tokio::time::advance(Duration::from_millis(500)).await;
        let next: Vec<_> = (0..100).map(|_| inbound.judge("hi")).collect();
        assert_eq!(next.iter().filter(|v| **v == Verdict::Deliver).count(), 64);
    }

    #[test]
    fn the_budget_is_at_least_one_message() {
        assert_eq!(Inbound::per_sec(1), 1);
        assert_eq!(Inbound::per_sec(3), 1);
        assert_eq!(Inbound::per_sec(65_536), 32_768);
    }
}
