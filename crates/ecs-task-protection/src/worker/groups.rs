//! The order of a FIFO queue's message groups: a group's messages in hand run one at a time, in
//! the order they were received, and each starts only once the one before it was done and
//! deleted.
//!
//! SQS hands out no message of a group while an earlier one of that group is in flight, but one
//! receive may bring several messages of a group at once. Each message in hand takes a [`Turn`]
//! in its group as it is received; the turn resolves once the previous message of the group has
//! been deleted, or says that it was not (it failed, was retried, timed out, or went back to the
//! queue unfinished). Then this message goes back to the queue too, unstarted, so that SQS
//! delivers the group again from its earliest message: the order holds across failures.
//! Different groups do not wait for each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::lock;
use tokio::sync::oneshot;

/// The last message in hand of each group: its ticket, and how to learn whether it was deleted.
type Tails = HashMap<String, (u64, oneshot::Receiver<()>)>;

/// The groups with messages in hand.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    tails: Arc<Mutex<Tails>>,
    next: AtomicU64,
}

impl Groups {
    /// A turn in `group` for a message just received: after every message of the group already in
    /// hand. Call in the order the messages were received.
    pub(crate) fn join(&self, group: &str) -> Turn {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let (done, after_me) = oneshot::channel();
        let before = lock(&self.tails)
            .insert(group.to_string(), (ticket, after_me))
            .map(|(_, before)| before);
        Turn {
            group: group.to_string(),
            ticket,
            before,
            done: Some(done),
            tails: Arc::clone(&self.tails),
        }
    }

    /// How many groups have messages in hand.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.tails).len()
    }
}

/// One message's place in its group. Dropped without [`Turn::deleted`], it tells the next message
/// of the group that this one was not deleted.
#[derive(Debug)]
pub(crate) struct Turn {
    group: String,
    ticket: u64,
    before: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    tails: Arc<Mutex<Tails>>,
}

impl Turn {
    /// Resolves once the previous message of the group in hand (if any) has ended: `true` if it
    /// was deleted, `false` if not (this message must then not run).
    pub(crate) async fn previous_deleted(&mut self) -> bool {
        match &mut self.before {
            None => true,
            Some(before) => before.await.is_ok(),
        }
    }

    /// This message was deleted: the next one of the group may run.
    pub(crate) fn deleted(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    /// The group.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut tails = lock(&self.tails);
        if tails.get(&self.group).map(|(ticket, _)| *ticket) == Some(self.ticket) {
            // The last of its group in hand: the group has none left.
            tails.remove(&self.group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    /// Whether the turn is ready now, and with what.
    fn ready(turn: &mut Turn) -> Option<bool> {
        turn.previous_deleted().now_or_never()
    }

    #[test]
    fn the_first_message_of_a_group_runs_at_once_and_the_next_waits_for_its_delete() {
        let groups = Groups::default();
        let mut a1 = groups.join("a");
        let mut a2 = groups.join("a");
        let mut a3 = groups.join("a");
        assert_eq!(ready(&mut a1), Some(true));
        assert_eq!(ready(&mut a2), None, "a2 waits for a1");
        assert_eq!(ready(&mut a3), None, "a3 waits for a2");
        a1.deleted();
        assert_eq!(ready(&mut a2), Some(true));
        assert_eq!(ready(&mut a3), None, "still waiting for a2");
        a2.deleted();
        assert_eq!(ready(&mut a3), Some(true));
    }

    #[test]
    fn a_message_that_is_not_deleted_stops_the_rest_of_its_group() {
        let groups = Groups::default();
        let a1 = groups.join("a");
        let mut a2 = groups.join("a");
        let mut a3 = groups.join("a");
        drop(a1);
        assert_eq!(ready(&mut a2), Some(false));
        // a2 does not run, and so is not deleted either.
        drop(a2);
        assert_eq!(ready(&mut a3), Some(false));
    }

    #[test]
    fn groups_do_not_wait_for_each_other() {
        let groups = Groups::default();
        let _a1 = groups.join("a");
        let mut b1 = groups.join("b");
        assert_eq!(ready(&mut b1), Some(true));
        assert_eq!(b1.group(), "b");
    }

    #[test]
    fn a_group_with_nothing_in_hand_is_forgotten_and_starts_afresh() {
        let groups = Groups::default();
        let a1 = groups.join("a");
        let a2 = groups.join("a");
        let _b1 = groups.join("b");
        a1.deleted();
        assert_eq!(groups.len(), 2, "a2 is still in hand");
        drop(a2);
        assert_eq!(groups.len(), 1, "only b is left");
        // A later receive's message of group a does not wait for a2, which ended.
        let mut a3 = groups.join("a");
        assert_eq!(ready(&mut a3), Some(true));
    }
}
