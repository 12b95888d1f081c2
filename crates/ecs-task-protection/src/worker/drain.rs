//! Draining the worker: what starts and ends a drain (the drain watcher's view of ECS, or the
//! program's own request, such as an operator's signal), the rules of which drain wins, and the
//! drain deadline.
//!
//! While the worker drains it takes no new jobs (a long poll in progress is cancelled; messages
//! received but not started go back to the queue at once), lets the jobs in hand finish, and
//! releases protection as soon as the last one ends (no hold-over, no grace). `/healthz` stays
//! 200. A deployment's drain and an operator's are bounded by `DRAIN_DEADLINE_SECS`: at the
//! deadline the jobs still running go back to the queue and protection is released. A scale-in's
//! drain is not bounded: its jobs finish. A drain the watcher started ends when its cause goes
//! away, and the worker takes jobs again; an operator's does not end.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Shared, Worker};
pub use crate::ecs::drain_watch::DrainKind;
use crate::ecs::drain_watch::{Drain, Replacement};

/// The worker's drain state, which the receive loop and every job follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DrainState {
    /// Draining, and why: no receives; protection goes when the last job ends.
    pub(crate) draining: Option<Drain>,
    /// The drain deadline passed: running jobs go back to the queue.
    pub(crate) evicting: bool,
    /// Counts the stretches of bounded drains: a new one begins when a bounded drain follows no
    /// drain or a scale-in's. Each has its own deadline, even when the deadline's task sees the
    /// end of one and the start of the next as a single change.
    pub(crate) episode: u64,
}

impl DrainState {
    /// The state after a drain of `kind` for `reason` is asked for, or `None` when nothing
    /// changes: an operator's drain stays whatever comes after it, and a drain of the kind in
    /// progress is kept (with its deadline). Another kind replaces the current one: a deployment
    /// that begins during a scale-in's drain brings its deadline; a scale-in after a
    /// deployment's lifts it.
    pub(crate) fn begin(&self, reason: &str, kind: DrainKind) -> Option<DrainState> {
        if !Drain::starts(self.draining.as_ref(), kind) {
            return None;
        }
        let draining = Drain::new(reason, kind);
        let same_stretch = self.bounded() && draining.bounded();
        Some(DrainState {
            draining: Some(draining),
            evicting: false,
            episode: self.episode + u64::from(!same_stretch),
        })
    }

    /// The state once the drain watcher no longer sees a cause, or `None` when nothing changes:
    /// the watcher's drains end, an operator's does not.
    pub(crate) fn end(&self) -> Option<DrainState> {
        match &self.draining {
            Some(d) if d.reversible() => Some(DrainState {
                draining: None,
                evicting: false,
                episode: self.episode,
            }),
            _ => None,
        }
    }

    /// Whether a drain that the deadline applies to is in progress.
    pub(crate) fn bounded(&self) -> bool {
        self.draining.as_ref().is_some_and(Drain::bounded)
    }

    /// Whether the worker is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_some()
    }
}

/// Starts draining for `reason`, if that changes anything ([`DrainState::begin`]).
pub(super) fn begin(s: &Shared, reason: &str, kind: DrainKind) {
    let started = s
        .drain
        .send_if_modified(|state| match state.begin(reason, kind) {
            Some(next) => {
                *state = next;
                true
            }
            None => false,
        });
    if started {
        tracing::warn!(
            "Draining: {reason}. No new jobs are taken; protection is released when the last of \
             {} jobs in hand ends",
            *s.in_hand.borrow()
        );
        s.manager.set_skip_hold_over(true);
    }
}

/// Ends a drain whose cause went away ([`DrainState::end`]): the worker takes jobs again.
pub(super) fn end(s: &Shared) {
    let ended = s.drain.send_if_modified(|state| match state.end() {
        Some(next) => {
            *state = next;
            true
        }
        None => false,
    });
    if ended {
        tracing::info!("No longer draining: taking jobs again");
        s.manager.set_skip_hold_over(false);
    }
}

impl Worker {
    /// Follows the drain watcher ([`spawn_drain_watch`](crate::ecs::drain_watch::spawn_drain_watch)):
    /// drains while it reports a replacement, and takes jobs again when it reports none. A
    /// deployment's drain is bounded by the drain deadline; a scale-in's is not.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn follow_watcher(&self, mut replacements: watch::Receiver<Option<Replacement>>) {
        let shared = Arc::downgrade(&self.shared);
        crate::supervise::spawn_may_end("drain follower", async move {
            loop {
                let replacement = replacements.borrow_and_update().clone();
                {
                    let Some(s) = shared.upgrade() else { return };
                    match replacement {
                        Some(r) => begin(&s, &r.reason, r.kind.into()),
                        None => end(&s),
                    }
                }
                if replacements.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Drains for `reason` (`<cause>` or `<cause>: <details>`; `/status` shows the cause only):
    /// takes no new jobs (a long poll in progress is cancelled, messages received but not started
    /// go back to the queue at once), lets the jobs in hand finish, and releases protection as the
    /// last one ends. A drain of `kind` [`DrainKind::Final`] (an operator's request) wins over any
    /// other and never ends; another kind replaces the drain in progress unless it is the same
    /// kind.
    pub fn begin_drain(&self, reason: &str, kind: DrainKind) {
        begin(&self.shared, reason, kind);
    }

    /// Ends a drain that is not [`DrainKind::Final`]: the worker takes jobs again.
    pub fn end_drain(&self) {
        end(&self.shared);
    }
}

/// Bounds every drain but a scale-in's to `deadline`: protection is never asked for past it (the
/// manager's deadline), and once it passes the jobs still running go back to the queue and
/// protection is released. A drain that ends sooner, or turns into a scale-in's, lifts the
/// deadline; so does the end of a drain whose deadline passed, so that the worker is protected
/// again when it takes jobs again.
pub(super) async fn enforce_deadline(shared: Weak<Shared>, deadline: Duration) {
    let (mut state, manager) = match shared.upgrade() {
        Some(s) => (s.drain.subscribe(), s.manager.clone()),
        None => return,
    };
    loop {
        let episode = match state.wait_for(DrainState::bounded).await {
            Ok(d) => d.episode,
            Err(_) => return,
        };
        let over = move |d: &DrainState| !d.bounded() || d.episode != episode;
        let until = Instant::now() + deadline;
        manager.set_deadline(Some(until));
        let passed = tokio::select! {
            _ = tokio::time::sleep_until(until) => true,
            _ = state.wait_for(over) => false,
        };
        if passed {
            let Some(s) = shared.upgrade() else { return };
            let evicting = s
                .drain
                .send_if_modified(|d| !over(d) && !std::mem::replace(&mut d.evicting, true));
            if evicting {
                tracing::warn!(
                    "Drain deadline ({deadline:?}) passed: returning the jobs still running to \
                     the queue ({} in hand) and releasing protection",
                    *s.in_hand.borrow()
                );
            }
            drop(s);
            if state.wait_for(over).await.is_err() {
                return;
            }
        }
        manager.set_deadline(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::drain_watch::ReplacementKind;

    fn draining(kind: DrainKind) -> DrainState {
        DrainState::default().begin("cause: details", kind).unwrap()
    }

    #[test]
    fn any_drain_starts_from_no_drain() {
        for kind in [DrainKind::Final, DrainKind::Reversible, DrainKind::ScaleIn] {
            let s = draining(kind);
            assert_eq!(s.draining.as_ref().map(|d| d.kind), Some(kind));
            assert!(!s.evicting);
        }
    }

    #[test]
    fn an_operators_drain_is_never_replaced_nor_ended() {
        let s = draining(DrainKind::Final);
        assert_eq!(
            s.begin("deployment in progress", DrainKind::Reversible),
            None
        );
        assert_eq!(s.begin("scale-in", DrainKind::ScaleIn), None);
        assert_eq!(s.end(), None);
    }

    #[test]
    fn the_same_kind_again_changes_nothing_and_another_kind_replaces_it() {
        let s = draining(DrainKind::Reversible);
        assert_eq!(
            s.begin("deployment in progress: other", DrainKind::Reversible),
            None
        );
        let scale_in = s.begin("scale-in", DrainKind::ScaleIn).unwrap();
        assert!(!scale_in.bounded(), "a scale-in lifts the deadline");
        let back = scale_in
            .begin("deployment in progress", DrainKind::Reversible)
            .unwrap();
        assert!(back.bounded(), "a deployment brings it back");
        // An operator's request wins over the watcher's drains.
        let op = back
            .begin("operator request (SIGUSR1)", DrainKind::Final)
            .unwrap();
        assert_eq!(op.draining.unwrap().kind, DrainKind::Final);
    }

    #[test]
    fn the_watchers_drains_end_when_their_cause_goes_away_and_the_eviction_with_them() {
        for kind in [DrainKind::Reversible, DrainKind::ScaleIn] {
            let mut s = draining(kind);
            s.evicting = true;
            let ended = s.end().unwrap();
            assert_eq!((ended.draining, ended.evicting), (None, false));
        }
        assert_eq!(DrainState::default().end(), None);
    }

    #[test]
    fn each_stretch_of_bounded_drains_has_its_own_deadline() {
        let first = draining(DrainKind::Reversible);
        // An operator's request during a deployment's drain: the same stretch, the same deadline.
        let op = first.begin("operator request (SIGUSR1)", DrainKind::Final);
        assert_eq!(op.unwrap().episode, first.episode);
        // Ended and begun again, or back from a scale-in's: a new stretch.
        let again = first
            .end()
            .unwrap()
            .begin("deployment in progress", DrainKind::Reversible);
        assert_ne!(again.unwrap().episode, first.episode);
        let scale_in = first.begin("scale-in", DrainKind::ScaleIn).unwrap();
        let back = scale_in.begin("deployment in progress", DrainKind::Reversible);
        assert_ne!(back.unwrap().episode, scale_in.episode);
    }

    #[test]
    fn only_a_scale_in_drain_is_unbounded() {
        assert!(draining(DrainKind::Final).bounded());
        assert!(draining(DrainKind::Reversible).bounded());
        assert!(!draining(DrainKind::ScaleIn).bounded());
        assert!(!DrainState::default().bounded());
    }

    #[test]
    fn status_shows_the_cause_only() {
        let s = DrainState::default()
            .begin(
                "deployment in progress: this task is of ecs-svc/1, the service is moving to ecs-svc/2",
                DrainKind::Reversible,
            )
            .unwrap();
        assert_eq!(
            s.draining.unwrap().public_reason(),
            "deployment in progress"
        );
        let s = draining(DrainKind::ScaleIn).begin("scale-in", DrainKind::Reversible);
        assert_eq!(s.unwrap().draining.unwrap().public_reason(), "scale-in");
    }

    #[test]
    fn a_replacement_maps_to_its_drain() {
        assert_eq!(
            DrainKind::from(ReplacementKind::ScaleIn),
            DrainKind::ScaleIn
        );
        assert_eq!(
            DrainKind::from(ReplacementKind::Deployment),
            DrainKind::Reversible
        );
    }
}
