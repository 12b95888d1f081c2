//! Background tasks a process cannot do without, and what happens when one of them dies.
//!
//! A task spawned with [`spawn`] should run for as long as the process does (the chat backplane's
//! link, the queue consumer's receive loop, a listener); one spawned with [`spawn_may_end`] may
//! return when its work is done (the drain watcher of a task that belongs to no service), but must
//! not panic. Either way a panic is caught, not swallowed, and reported; so is a [`spawn`]ed
//! task's return.
//!
//! Reported to whom: a binary calls [`Supervisor::install`] once, and passes its shutdown signal
//! through [`Supervisor::shutdown_signal`]. The first death then logs one error line naming the
//! task and starts the binary's orderly shutdown, after which [`Supervisor::death`] tells it to
//! exit non-zero: a process that lost a part never looks healthy while doing nothing. Once the
//! shutdown has begun (a death, SIGTERM), tasks that end are part of it and are not reported.
//! Without a supervisor (tests, a library user), a panic is logged at error level and a return
//! at debug level, and the process goes on.
//!
//! Debug builds only (the code is not compiled in release builds): `TASK_PROTECTION_FAULT=<task>`
//! or `<task>@<milliseconds>` panics the named task that long after it starts (at once without
//! a delay), so that the tests can kill each task of the real binaries.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::protection::{ProtectionManager, RECONCILER};

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// It panicked, with this message.
    Panicked(String),
    /// It returned, and was not expected to.
    Returned,
}

/// A background task that ended while the process was not shutting down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} {ended}")]
pub struct TaskDied {
    /// The task's name (`chat backplane link`).
    pub task: &'static str,
    /// How it ended.
    pub ended: Ended,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Panicked(message) => write!(f, "panicked: {message}"),
            Ended::Returned => f.write_str("stopped unexpectedly"),
        }
    }
}

/// What the installed supervisor and the tasks share.
struct Shared {
    /// The first death, once there is one.
    first: watch::Sender<Option<TaskDied>>,
    /// Set once the orderly shutdown has begun: tasks that end from then on are not deaths.
    standing_down: AtomicBool,
}

/// The process's supervisor, once installed.
static INSTALLED: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

fn installed() -> Option<Arc<Shared>> {
    crate::lock(&INSTALLED).as_ref().map(Arc::clone)
}

/// The binary's view of its critical tasks. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("death", &self.death())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Makes this the process's supervisor: from now on, critical tasks that end are reported to
    /// it (replacing any supervisor installed before).
    pub fn install() -> Self {
        let shared = Arc::new(Shared {
            first: watch::channel(None).0,
            standing_down: AtomicBool::new(false),
        });
        *crate::lock(&INSTALLED) = Some(Arc::clone(&shared));
        Self { shared }
    }

    /// Resolves when `signal` does or when a critical task dies, whichever comes first; either
    /// way the orderly shutdown begins then, and tasks that end from then on are not reported. A
    /// death is logged here, once, at error level. Pass the result to the binary's shutdown
    /// sequence in place of `signal`.
    pub fn shutdown_signal(
        &self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let mut first = shared.first.subscribe();
            tokio::select! {
                _ = signal => {}
                died = first.wait_for(Option::is_some) => {
                    if let Ok(died) = died {
                        if let Some(death) = died.as_ref() {
                            tracing::error!(
                                "Background task failed: the {death}. Shutting down; the process \
                                 will exit with status 1 so that it is replaced"
                            );
                        }
                    }
                }
            }
            shared.standing_down.store(true, Ordering::Release);
        }
    }

    /// The death that began the shutdown, if one did.
    pub fn death(&self) -> Option<TaskDied> {
        self.shared.first.borrow().clone()
    }
}

/// Records that `task` ended (`ended`): the first death for the supervisor, a log line otherwise.
pub(crate) fn report(task: &'static str, ended: Ended) {
    let death = TaskDied { task, ended };
    match installed() {
        Some(shared) if !shared.standing_down.load(Ordering::Acquire) => {
            let first = shared.first.send_if_modified(|first| {
                if first.is_none() {
                    *first = Some(death.clone());
                    true
                } else {
                    false
                }
            });
            if !first {
                tracing::warn!("Also: the {death}");
            }
        }
        Some(_) => tracing::debug!("During shutdown: the {death}"),
        None => match death.ended {
            Ended::Returned => tracing::debug!("The {death}"),
            _ => tracing::error!("Background task failed: the {death}"),
        },
    }
}

/// Makes the death of `manager`'s reconciler ([`ProtectionManager::died`]) that of a critical task
/// named [`RECONCILER`]. Must be called within a tokio runtime.
pub fn watch_reconciler(manager: &ProtectionManager) {
    let died = manager.died();
    tokio::spawn(async move {
        let error = died.await;
        report(RECONCILER, Ended::Panicked(error.message));
    });
}

/// Spawns a critical task named `task`: it should run as long as the process, so its return is
/// reported as well as its panic. Must be called within a tokio runtime.
pub fn spawn<F>(task: &'static str, future: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        match guarded(task, future).await {
            Ok(()) => report(task, Ended::Returned),
            Err(message) => report(task, Ended::Panicked(message)),
        }
    })
}

/// Spawns a task named `task` that may end when its work is done, but must not panic: a panic is
/// reported. Must be called within a tokio runtime.
pub fn spawn_may_end<F>(task: &'static str, future: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(message) = guarded(task, future).await {
            report(task, Ended::Panicked(message));
        }
    })
}

/// Runs `future`, catching a panic (its message is the error). In debug builds, the fault
/// injection of `TASK_PROTECTION_FAULT` applies (see the module's documentation).
pub(crate) async fn guarded<F: Future>(task: &'static str, future: F) -> Result<F::Output, String> {
    #[cfg(debug_assertions)]
    let future = fault::inject(task, future);
    #[cfg(not(debug_assertions))]
    let _ = task;
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// The message a panic carried (`panic!("…")`), or a placeholder.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// The tests' way to kill a task of a real binary. Debug builds only.
#[cfg(debug_assertions)]
mod fault {
    use std::future::Future;
    use std::time::Duration;

    /// `<task>` or `<task>@<milliseconds>`: the task that panics, and how long after it starts.
    pub(super) const VARIABLE: &str = "TASK_PROTECTION_FAULT";

    /// `future`, made to panic after the delay `TASK_PROTECTION_FAULT` sets when it names `task`.
    pub(super) async fn inject<F: Future>(task: &'static str, future: F) -> F::Output {
        let Some(after) = delay_for(task, std::env::var(VARIABLE).ok().as_deref()) else {
            return future.await;
        };
        tokio::select! {
            output = future => output,
            _ = tokio::time::sleep(after) => panic!("killed by {VARIABLE} (fault injection)"),
        }
    }

    /// The delay `setting` gives `task`, if it names it.
    pub(super) fn delay_for(task: &str, setting: Option<&str>) -> Option<Duration> {
        let setting = setting?.trim();
        let (name, millis) = match setting.rsplit_once('@') {
            Some((name, millis)) => (name.trim(), millis.trim().parse().ok()?),
            None => (setting, 0),
        };
        (name == task).then(|| Duration::from_millis(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_names_the_task_and_how_it_ended() {
        let died = TaskDied {
            task: "receive loop",
            ended: Ended::Panicked("boom".into()),
        };
        assert_eq!(died.to_string(), "receive loop panicked: boom");
        let died = TaskDied {
            task: "chat backplane link",
            ended: Ended::Returned,
        };
        assert_eq!(died.to_string(), "chat backplane link stopped unexpectedly");
    }

    #[tokio::test]
    async fn a_panic_is_caught_with_its_message() {
        let caught = guarded("test task", async { panic!("boom {}", 1) }).await;
        assert_eq!(caught, Err("boom 1".to_string()));
        let caught = guarded("test task", async { 7 }).await;
        assert_eq!(caught, Ok(7));
    }

    #[cfg(debug_assertions)]
    #[test]
    fn the_fault_setting_names_a_task_and_a_delay() {
        use std::time::Duration;
        assert_eq!(
            fault::delay_for("receive loop", Some("receive loop")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            fault::delay_for("receive loop", Some("receive loop@250")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            fault::delay_for("receive loop", Some("delete loop@250")),
            None
        );
        assert_eq!(
            fault::delay_for("receive loop", Some("receive loop@soon")),
            None
        );
        assert_eq!(fault::delay_for("receive loop", None), None);
    }
}
