//! Stand-ins for the parts of Amazon ECS that the protection code talks to: real HTTP servers on
//! loopback that answer as ECS does, record every call in order, and fail on demand.
//!
//! * [`StandInAgent`]: the ECS container agent's task protection endpoint
//!   (`$ECS_AGENT_URI/task-protection/v1/state`).
//! * [`StandInEcs`]: the ECS API (`awsJson1_1`, enough for the real `aws-sdk-ecs` client) and the
//!   task metadata v4 endpoint, over a table of tasks ([`TaskInfo`]): one task by default, as
//!   many as a test adds ([`TaskSpec`]) or a fleet runs, each with its own protection, metadata
//!   and agent endpoint.
//! * [`Fleet`]: a local ECS service of real task processes on a [`StandInEcs`] in fleet mode,
//!   behind a front door standing in for the load balancer, scaled, deployed and stopped with
//!   ECS's rules for scale-in protection (`cargo run -p ecs-stand-in -- fleet`).
//!
//! Both share one mechanism ([`Journal`]) for recording calls, holding them (a hang), and telling
//! waiters how many have arrived, and one simulation of a task's protection ([`Protection`]).
//! Each also answers `GET /_calls` with its recorded calls as JSON, so that another process (the
//! load tool, a person with `curl`) can read them.
//!
//! This crate is a dev-dependency of the product: a release build of the server never compiles
//! it. `cargo run -p ecs-stand-in` starts both stand-ins on loopback for experiments by hand.

#![warn(missing_docs)]

mod agent;
mod api;
mod fleet;
mod scheduler;
mod tasks;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

pub use agent::{Call, Fault, StandInAgent};
pub use api::{
    task_access_key_id, task_definition_arn, DeploymentDoc, EcsCall, EcsFault, EcsOperation,
    ServiceDoc, StandInEcs, TaskAgentCall, ACCOUNT, CLUSTER_ARN, CLUSTER_NAME, FAMILY,
    FIRST_DEPLOYMENT_ID, MAX_DESIRED_COUNT, REGION, REVISION, SERVICE_NAME, TASK_ARN, TASK_ID,
};
pub use fleet::{sibling_binary, Fleet, FleetConfig, FleetError, FleetView, TaskKind, TaskLine};
pub use tasks::{task_arn, DesiredStatus, LastStatus, TaskInfo, TaskSpec};

/// ECS's own limits on `ExpiresInMinutes` / `expiresInMinutes` (1..=2880, 120 when omitted). The
/// stand-ins model ECS, so they keep ECS's numbers rather than borrowing the product's.
const ECS_EXPIRES_IN_MINUTES: std::ops::RangeInclusive<u32> = 1..=2880;
/// What ECS uses when `ExpiresInMinutes` is omitted.
const ECS_DEFAULT_EXPIRES_IN_MINUTES: u32 = 120;

/// How long a faulty call waits before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delay {
    /// Answer at once.
    None,
    /// Wait until [`Journal::release_hangs`].
    Hang,
    /// Wait this long.
    Slow(Duration),
}

/// The calls one stand-in has received, in arrival order, shared by its handlers and its owner.
///
/// A handler [`record`](Self::record)s a call as soon as it arrives (so a hanging call is visible
/// to the test), waits out its [`Delay`], then [`finish`](Self::finish)es the record with what it
/// answered.
struct Journal<C> {
    calls: Mutex<Vec<C>>,
    /// The number of calls recorded; also bumped when a call finishes, so waiters look again.
    changed: watch::Sender<usize>,
    /// Bumped to let every hanging call go.
    hangs: watch::Sender<u64>,
}

impl<C: Clone> Journal<C> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            hangs: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<C>> {
        // A panic in a handler leaves plain data behind; keep serving.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a call that just arrived; returns its index for [`finish`](Self::finish).
    fn record(&self, call: C) -> usize {
        let index = {
            let mut calls = self.lock();
            calls.push(call);
            calls.len() - 1
        };
        self.changed.send_modify(|n| *n = index + 1);
        index
    }

    /// Completes the record of call `index` (its answer is known).
    fn finish(&self, index: usize, complete: impl FnOnce(&mut C)) {
        if let Some(call) = self.lock().get_mut(index) {
            complete(call);
        }
        self.changed.send_modify(|_| {});
    }

    /// Every call so far, in arrival order.
    fn calls(&self) -> Vec<C> {
        self.lock().clone()
    }

    /// Waits until at least `n` calls have been recorded.
    async fn wait_for(&self, n: usize) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// Waits as `delay` says.
    async fn delay(&self, delay: Delay) {
        match delay {
            Delay::None => {}
            Delay::Hang => {
                let mut rx = self.hangs.subscribe();
                let _ = rx.changed().await;
            }
            Delay::Slow(d) => tokio::time::sleep(d).await,
        }
    }

    /// Lets every hanging call answer.
    fn release_hangs(&self) {
        self.hangs.send_modify(|g| *g += 1);
    }
}

/// `GET /_calls`: the recorded calls as JSON.
async fn list_calls<C: Clone + Serialize + Send + Sync + 'static>(
    State(journal): State<Arc<Journal<C>>>,
) -> Json<Vec<C>> {
    Json(journal.calls())
}

/// A task's scale-in protection as ECS keeps it: on until an expiry, or off.
#[derive(Debug, Default)]
struct Protection {
    expires_at: Option<SystemTime>,
}

impl Protection {
    /// Turns protection on for `minutes` (ECS's default when `None`), or off.
    fn set(&mut self, enabled: bool, minutes: Option<u32>) {
        self.expires_at = enabled.then(|| {
            let m = minutes.unwrap_or(ECS_DEFAULT_EXPIRES_IN_MINUTES);
            SystemTime::now() + Duration::from_secs(u64::from(m) * 60)
        });
    }

    /// The expiry, while protection is on.
    fn current(&self) -> Option<SystemTime> {
        self.expires_at.filter(|t| *t > SystemTime::now())
    }
}

/// What a stand-in's handlers share: its simulation (`S`, behind a lock) and its journal of calls
/// (`C`).
struct Shared<S, C> {
    sim: Arc<Mutex<S>>,
    journal: Arc<Journal<C>>,
}

impl<S, C> Clone for Shared<S, C> {
    fn clone(&self) -> Self {
        Self {
            sim: Arc::clone(&self.sim),
            journal: Arc::clone(&self.journal),
        }
    }
}

impl<S, C> Shared<S, C> {
    fn sim(&self) -> MutexGuard<'_, S> {
        // A panic in a handler leaves plain data behind; keep serving.
        self.sim.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stand-in's running server. Dropping it stops the server.
struct Served<S, C> {
    addr: SocketAddr,
    shared: Shared<S, C>,
    /// Dropping it ends the server task's graceful shutdown wait.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl<S, C> Served<S, C>
where
    S: Send + 'static,
    C: Clone + Serialize + Send + Sync + 'static,
{
    /// Binds `addr` and serves `routes` (plus `GET /_calls`) over `sim` and a new journal, in a
    /// task, until dropped.
    async fn start(
        addr: SocketAddr,
        sim: S,
        routes: Router<Shared<S, C>>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            sim: Arc::new(Mutex::new(sim)),
            journal: Journal::new(),
        };
        let app = routes.with_state(shared.clone()).route(
            "/_calls",
            axum::routing::get(list_calls::<C>).with_state(Arc::clone(&shared.journal)),
        );
        Ok(Self {
            addr,
            shared,
            _stop: serve_until_dropped(listener, app),
        })
    }
}

/// Where a stand-in listens when none is given: a free port on loopback.
const ANY_LOOPBACK_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Formats a time as ECS's agent does (RFC 3339, UTC, whole seconds).
fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let dt = dt.replace_nanosecond(0).unwrap_or(dt);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Serves `app` on `listener` in a task of its own until the returned sender is dropped (a
/// stand-in's, or a test's own server's, lifetime).
pub fn serve_until_dropped(
    listener: tokio::net::TcpListener,
    app: Router,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}
