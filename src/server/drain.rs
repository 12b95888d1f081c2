//! What starts and ends a drain, each a small task feeding [`Hub::begin_drain`]:
//! an operator's SIGUSR1, the drain watcher's view of ECS, a maximum protected lifetime, and the
//! deadline after which the remaining clients are closed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use app_support::drain_signal::DrainSignal;

use super::Hub;
use ecs_task_protection::ecs::drain_watch::Replacement;
use ecs_task_protection::protection::ProtectionEvent;
use ecs_task_protection::supervise;

/// Drains on SIGUSR1 (an operator's request, e.g. `websocket drain` through
/// `copilot svc exec`). Not reversible.
pub fn on_sigusr1(hub: &Arc<Hub>, mut signal: DrainSignal) {
    let hub = Arc::downgrade(hub);
    supervise::spawn_may_end("SIGUSR1 listener", async move {
        while signal.recv().await {
            let Some(hub) = hub.upgrade() else { return };
            hub.begin_drain("operator request (SIGUSR1)", false);
        }
    });
}

/// Follows the drain watcher: drains (reversibly) while it reports a reason, stops when it
/// reports none. A deployment's drain is bounded by the drain deadline; a scale-in's is not
/// ([`DrainKind::ScaleIn`](super::DrainKind::ScaleIn)).
pub fn follow_watcher(hub: &Arc<Hub>, mut reasons: watch::Receiver<Option<Replacement>>) {
    let hub = Arc::downgrade(hub);
    supervise::spawn_may_end("drain follower", async move {
        loop {
            let reason = reasons.borrow_and_update().clone();
            {
                let Some(hub) = hub.upgrade() else { return };
                match reason {
                    Some(r) => hub.begin_drain_as(&r.reason, r.kind.into()),
                    None => hub.end_drain(),
                }
            }
            if reasons.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Bounds every drain but a scale-in's ([`DrainKind::ScaleIn`](super::DrainKind::ScaleIn)) to `deadline`: protection is never
/// asked for past it (the manager's deadline), and once it passes the remaining clients are
/// closed with 1001 and protection is released. A reversible drain that ends sooner, or turns
/// into a scale-in's, lifts the deadline.
pub fn evict_after(hub: &Arc<Hub>, deadline: Duration) {
    let weak = Arc::downgrade(hub);
    let mut state = hub.watch_state();
    let manager = hub.manager().clone();
    supervise::spawn_may_end("drain deadline", async move {
        loop {
            let bounded = |s: &super::ServerState| s.draining.as_ref().is_some_and(|d| d.bounded());
            if state.wait_for(bounded).await.is_err() {
                return;
            }
            let until = Instant::now() + deadline;
            manager.set_deadline(Some(until));
            let ended = async {
                let _ = state.wait_for(|s| !bounded(s)).await;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    let Some(hub) = weak.upgrade() else { return };
                    tracing::warn!(
                        "Drain deadline ({deadline:?}) passed: closing the remaining {} clients",
                        hub.connections()
                    );
                    hub.evict_all();
                    return;
                }
                _ = ended => manager.set_deadline(None),
            }
        }
    });
}

/// Drains once protection has been held without a break for `limit`, so that a server that is
/// never empty still lets a deployment replace it eventually.
pub fn after_protected_for(hub: &Arc<Hub>, limit: Duration) {
    let events = hub.manager().subscribe();
    let since =
        hub.manager().status().state == ecs_task_protection::protection::StateLabel::Protected;
    supervise::spawn_may_end(
        "protected time limit",
        lifetime_limit(Arc::downgrade(hub), events, limit, since.then(Instant::now)),
    );
}

async fn lifetime_limit(
    hub: Weak<Hub>,
    mut events: broadcast::Receiver<ProtectionEvent>,
    limit: Duration,
    mut protected_since: Option<Instant>,
) {
    loop {
        let deadline = protected_since.map(|t| t + limit);
        let next = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            event = events.recv() => match event {
                Ok(ProtectionEvent::Protected { refreshed: false, .. }) => protected_since = Some(Instant::now()),
                Ok(ProtectionEvent::Unprotected) => protected_since = None,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = next => {
                let Some(hub) = hub.upgrade() else { return };
                let minutes = limit.as_secs() / 60;
                hub.begin_drain(&format!("protected for {minutes} minutes, the most allowed (MAX_PROTECTED_MINUTES)"), false);
                return;
            }
        }
    }
}
