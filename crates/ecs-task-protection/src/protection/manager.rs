//! The protection manager: its handles, guards, status and events, and the one reconciler task
//! that keeps ECS's protection where the program wants it.
//!
//! Holders take a [`ProtectionGuard`] (or call [`ProtectionManager::acquire`]); the count of
//! holders is the wanted state. Only the 0→1 and 1→0 transitions wake the reconciler, which asks
//! [`policy::decide`] what to do and makes at most one call to ECS at a time. Any number of
//! acquires during a call coalesce into it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{broadcast, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backend::{BackendError, ErrorKind, ProtectionBackend, ProtectionState};
use super::policy::{self, Decision, EcsState, Settings};
use crate::lock;

/// The name of the reconciler task, in logs and in [`crate::supervise`]'s reports.
pub const RECONCILER: &str = "task protection reconciler";

/// The protection state as the manager last knew it, readable at any time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProtectionStatus {
    /// The backend's name (`agent`, `api`, `local`).
    pub backend: &'static str,
    /// `protected`, `unprotected` or `unknown`.
    pub state: StateLabel,
    /// Whether protection is wanted (some holder exists).
    pub wanted: bool,
    /// When ECS will drop protection unless refreshed.
    #[serde(with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    /// The last rejection of the current failure streak, `None` after a success. Serialized as
    /// its kind's short code only ([`ErrorKind::code`]): the message can name endpoints, ARNs and
    /// the account, and is logged instead.
    #[serde(serialize_with = "kind_code_opt")]
    pub last_rejection: Option<BackendError>,
    /// How many rejections there have been since start-up (changes with every rejection).
    pub rejections: u64,
    /// Whether the last attempt to protect was refused with `DEPLOYMENT_BLOCKED` (the service is at
    /// its limit of protected tasks); cleared by the next success.
    pub blocked: bool,
    /// Whether the hold-over is skipped (the task is draining).
    pub draining: bool,
    /// Calls made to ECS since start-up.
    pub calls_made: u64,
    /// Calls that failed.
    pub calls_failed: u64,
    /// Whether the reconciler has died (a panic, in the backend's call or in the manager): no
    /// more calls are made and protection is no longer managed; `last_rejection` is `panicked`.
    /// See [`ProtectionManager::died`].
    pub failed: bool,
}

/// The three states the task's protection can be known to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateLabel {
    /// ECS said the task is protected.
    Protected,
    /// ECS said the task is not protected, or the protection expired.
    Unprotected,
    /// Not known yet.
    Unknown,
}

/// What happened to protection; any number of subscribers can follow these.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ProtectionEvent {
    /// Protection was set or refreshed.
    Protected {
        /// When ECS will drop it unless refreshed.
        expires_at: Option<SystemTime>,
        /// `true` for a refresh of protection already held.
        refreshed: bool,
    },
    /// Protection was released, or lapsed.
    Unprotected,
    /// A call to ECS failed.
    Rejected {
        /// Whether the call was trying to protect (`true`) or release.
        protecting: bool,
        /// Why.
        error: BackendError,
        /// The number of this failure in the current streak (1 for the first).
        attempt: u32,
        /// When the next try will be made.
        retry_in: Duration,
    },
}

/// Why [`ProtectionManager::acquire`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// ECS rejected the protection. The hold stays in place and the manager keeps retrying with
    /// back-off; call [`ProtectionManager::release`] when the work is done.
    #[error("task protection rejected: {0}")]
    Rejected(BackendError),
    /// The manager has shut down.
    #[error("the protection manager has shut down")]
    Shutdown,
}

/// Keeps the task's scale-in protection in the state the program wants. Cheap to clone.
///
/// When the last clone is dropped (without [`shutdown`](Self::shutdown)), the reconciler releases
/// protection and stops, as on shutdown.
#[derive(Clone)]
pub struct ProtectionManager {
    inner: Arc<Inner>,
    /// Dropping the last clone drops the sender, which stops the reconciler.
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl std::fmt::Debug for ProtectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionManager")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// What the handles, the guards and the reconciler share.
struct Inner {
    /// Every claim on protection: live guards plus unreleased `acquire()` calls. The wanted state
    /// is `holds > 0`; only its 0→1 and 1→0 transitions wake the reconciler.
    holds: AtomicUsize,
    /// The part of `holds` taken by `acquire()`, so that `release()` gives back only those (an
    /// extra `release()` must not drop a guard's claim).
    manual_holds: Mutex<usize>,
    /// Wakes the reconciler when the wanted state or the hold-over flag changes.
    wake: Notify,
    /// Skip the hold-over (draining): release as soon as the last claim goes.
    skip_hold: AtomicBool,
    /// No protection past this instant (a drain deadline).
    deadline: Mutex<Option<Instant>>,
    /// The current status; every change is seen by `watch()` receivers and by `acquire()`.
    status: watch::Sender<ProtectionStatus>,
    /// Events for `subscribe()` receivers.
    events: broadcast::Sender<ProtectionEvent>,
    /// The reconciler task, taken by `shutdown()` to wait for the final release.
    task: Mutex<Option<JoinHandle<Result<(), BackendError>>>>,
}

impl Inner {
    fn add_hold(&self) {
        if self.holds.fetch_add(1, Ordering::AcqRel) == 0 {
            self.wake.notify_one();
        }
    }

    fn drop_hold(&self) {
        if self.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake.notify_one();
        }
    }
}

/// One holder's claim on protection. Dropping it (even by a panic unwinding) gives the claim up.
#[must_use = "protection is wanted only while the guard is alive"]
pub struct ProtectionGuard {
    inner: Arc<Inner>,
}

impl Drop for ProtectionGuard {
    fn drop(&mut self) {
        self.inner.drop_hold();
    }
}

impl std::fmt::Debug for ProtectionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProtectionGuard")
    }
}

impl ProtectionManager {
    /// Starts the manager's reconciler on the current tokio runtime, after reading the task's
    /// current protection (so a restarted process learns that its task is still protected).
    ///
    /// # Errors
    ///
    /// A setting out of its range ([`Settings::validate`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the reconciler). Call it from async code, or inside
    /// `Runtime::enter`.
    pub fn start(
        backend: Arc<dyn ProtectionBackend>,
        settings: Settings,
    ) -> Result<Self, policy::SettingsError> {
        settings.validate()?;
        tracing::info!("Task protection backend: {}", backend.describe());
        let (status, _) = watch::channel(ProtectionStatus {
            backend: backend.name(),
            state: StateLabel::Unknown,
            wanted: false,
            expires_at: None,
            last_rejection: None,
            rejections: 0,
            blocked: false,
            draining: false,
            calls_made: 0,
            calls_failed: 0,
            failed: false,
        });
        let (events, _) = broadcast::channel(64);
        let (stop_tx, stop_rx) = oneshot::channel();
        let inner = Arc::new(Inner {
            holds: AtomicUsize::new(0),
            manual_holds: Mutex::new(0),
            wake: Notify::new(),
            skip_hold: AtomicBool::new(false),
            deadline: Mutex::new(None),
            status,
            events,
            task: Mutex::new(None),
        });
        let reconciler = Reconciler {
            inner: Arc::clone(&inner),
            backend,
            settings,
            ecs: EcsState::Unknown,
            failures: 0,
            retry_at: None,
            logged: None,
        };
        let handle = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                // A panic (a user's backend can panic) is caught and recorded, not swallowed.
                match crate::supervise::guarded(RECONCILER, reconciler.run(stop_rx)).await {
                    Ok(result) => result,
                    Err(panic) => {
                        let error = BackendError::new(ErrorKind::Panicked, panic);
                        inner.status.send_modify(|s| {
                            s.failed = true;
                            s.last_rejection = Some(error.clone());
                            s.rejections += 1;
                        });
                        Err(error)
                    }
                }
            })
        };
        *lock(&inner.task) = Some(handle);
        Ok(Self {
            inner,
            stop: Arc::new(Mutex::new(Some(stop_tx))),
        })
    }

    /// Takes a claim on protection; protection is wanted while any guard is alive.
    /// Never blocks: the reconciler acts in the background.
    pub fn guard(&self) -> ProtectionGuard {
        self.inner.add_hold();
        ProtectionGuard {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Like the Node.js sample's `acquire()`: takes a claim and waits until ECS confirms
    /// protection. Unlike the sample, it returns an error as soon as ECS rejects the attempt,
    /// instead of never settling. Either way the claim stays until [`release`](Self::release).
    ///
    /// # Errors
    ///
    /// The first rejection after the call ([`AcquireError`]), or the reconciler's death.
    pub async fn acquire(&self) -> Result<(), AcquireError> {
        let rx = self.inner.status.subscribe();
        let seen = rx.borrow().rejections;
        {
            *lock(&self.inner.manual_holds) += 1;
        }
        self.inner.add_hold();
        confirmation(rx, seen).await
    }

    /// Waits until ECS confirms protection, or until a call fails after this was called. For a
    /// holder of a [`guard`](Self::guard) that wants to start its work only once the task is
    /// protected: bound the wait with a timeout of your own, since a rejection is retried in the
    /// background and the guard keeps its claim either way.
    ///
    /// # Errors
    ///
    /// The first rejection after the call ([`AcquireError`]), or the reconciler's death.
    pub async fn protected(&self) -> Result<(), AcquireError> {
        let rx = self.inner.status.subscribe();
        let seen = rx.borrow().rejections;
        confirmation(rx, seen).await
    }

    /// Gives up one claim taken by [`acquire`](Self::acquire). Extra calls do nothing.
    pub fn release(&self) {
        let mut manual = lock(&self.inner.manual_holds);
        if *manual > 0 {
            *manual -= 1;
            self.inner.drop_hold();
        }
    }

    /// How many claims are held now.
    pub fn holds(&self) -> usize {
        self.inner.holds.load(Ordering::Acquire)
    }

    /// The current state.
    pub fn status(&self) -> ProtectionStatus {
        let mut status = self.inner.status.borrow().clone();
        status.wanted = self.holds() > 0;
        status
    }

    /// A receiver that sees every change of state.
    pub fn watch(&self) -> watch::Receiver<ProtectionStatus> {
        self.inner.status.subscribe()
    }

    /// A receiver of [`ProtectionEvent`]s from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ProtectionEvent> {
        self.inner.events.subscribe()
    }

    /// Skips (or restores) the hold-over: while set, protection is released as soon as the last
    /// claim goes. Used when the task is draining.
    pub fn set_skip_hold_over(&self, skip: bool) {
        if self.inner.skip_hold.swap(skip, Ordering::AcqRel) != skip {
            self.inner.status.send_modify(|s| s.draining = skip);
            self.inner.wake.notify_one();
        }
    }

    /// Sets (or lifts, with `None`) a deadline: no protection is asked for past it, and at the
    /// deadline protection is released even if claims are still held. Used with a drain deadline,
    /// so that a task that is draining cannot hold protection longer than the drain may last.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        let changed = {
            let mut current = lock(&self.inner.deadline);
            std::mem::replace(&mut *current, deadline) != deadline
        };
        if changed {
            self.inner.wake.notify_one();
        }
    }

    /// Resolves if the reconciler dies (a panic in the backend's call or in the manager itself),
    /// with an [`ErrorKind::Panicked`] error carrying the panic's message: from then on no call
    /// is made and protection is no longer managed, so the program should end (the binaries
    /// exit with status 1). Never resolves otherwise, shutdown included. The manager does not log
    /// the death itself (the panic hook prints the panic); [`status`](Self::status) shows it as
    /// `failed`, and [`acquire`](Self::acquire) and [`protected`](Self::protected) return it.
    pub fn died(&self) -> impl std::future::Future<Output = BackendError> + Send + 'static {
        let mut rx = self.inner.status.subscribe();
        async move {
            let died = rx
                .wait_for(|s| s.failed)
                .await
                .map(|s| s.last_rejection.clone());
            match died {
                Ok(error) => {
                    error.unwrap_or_else(|| BackendError::new(ErrorKind::Panicked, "no message"))
                }
                // Every handle is gone: it can no longer die.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Stops the reconciler and releases protection (regardless of claims: the process is going
    /// away), waiting at most for one call.
    ///
    /// # Errors
    ///
    /// The release call's error, if it failed, or the reconciler's death.
    pub async fn shutdown(&self) -> Result<(), BackendError> {
        if let Some(tx) = lock(&self.stop).take() {
            let _ = tx.send(());
        }
        let handle = lock(&self.inner.task).take();
        match handle {
            Some(h) => h
                .await
                .unwrap_or_else(|e| Err(BackendError::new(ErrorKind::Panicked, e.to_string()))),
            None => Ok(()),
        }
    }
}

/// Resolves when `rx` shows protection, or a rejection beyond the first `seen`.
async fn confirmation(
    mut rx: watch::Receiver<ProtectionStatus>,
    seen: u64,
) -> Result<(), AcquireError> {
    loop {
        {
            let st = rx.borrow_and_update();
            if st.state == StateLabel::Protected {
                return Ok(());
            }
            if st.rejections != seen || st.failed {
                let error = st
                    .last_rejection
                    .clone()
                    .unwrap_or_else(|| BackendError::new(ErrorKind::Failure, "rejected"));
                return Err(AcquireError::Rejected(error));
            }
        }
        if rx.changed().await.is_err() {
            return Err(AcquireError::Shutdown);
        }
    }
}

/// The reconciler: the only code that calls the backend. It owns everything the policy needs
/// that the handles do not share.
struct Reconciler {
    inner: Arc<Inner>,
    backend: Arc<dyn ProtectionBackend>,
    settings: Settings,
    /// What ECS last said (the policy's view of it).
    ecs: EcsState,
    /// Failed calls in the current streak (0 after a success); sets the back-off.
    failures: u32,
    /// No call before this instant (back-off).
    retry_at: Option<Instant>,
    /// The failure last logged at warning level in the current streak (protecting?, kind).
    logged: Option<(bool, ErrorKind)>,
}

impl Reconciler {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<(), BackendError> {
        tokio::select! {
            _ = &mut stop => return self.final_release().await,
            _ = self.read_initial_state() => {}
        }
        loop {
            let now = Instant::now();
            let decision = policy::decide(policy::Input {
                wanted: self.inner.holds.load(Ordering::Acquire) > 0,
                ecs: self.ecs,
                retry_at: self.retry_at,
                skip_hold: self.inner.skip_hold.load(Ordering::Acquire),
                deadline: *lock(&self.inner.deadline),
                settings: &self.settings,
                now,
            });
            let wait_until = match decision {
                Decision::Protect { minutes } => {
                    tokio::select! {
                        _ = &mut stop => return self.final_release().await,
                        _ = self.call(true, minutes) => {}
                    }
                    continue;
                }
                Decision::Release => {
                    tokio::select! {
                        _ = &mut stop => return self.final_release().await,
                        _ = self.call(false, self.settings.duration_minutes) => {}
                    }
                    continue;
                }
                Decision::Lapsed => {
                    tracing::warn!("Task protection expired before it was refreshed");
                    self.set_ecs(EcsState::Unprotected, None);
                    let _ = self.inner.events.send(ProtectionEvent::Unprotected);
                    continue;
                }
                Decision::WaitUntil(t) => t.min(now + self.settings.adjust_interval),
                Decision::Idle => now + self.settings.adjust_interval,
            };
            tokio::select! {
                _ = &mut stop => return self.final_release().await,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// Learns whether a previous process left the task protected.
    async fn read_initial_state(&mut self) {
        let result = self.timed(self.backend.get_protection()).await;
        self.count_call(result.is_ok());
        match result {
            Ok(state) if state.enabled => {
                let expires_at = self.expiry_instant(&state, self.settings.duration_minutes);
                tracing::info!(
                    "Task protection is already on (expires {}); it will be released unless work arrives",
                    fmt_time(state.expires_at)
                );
                self.set_ecs(
                    EcsState::Protected {
                        since: None,
                        expires_at,
                    },
                    state.expires_at,
                );
            }
            Ok(_) => self.set_ecs(EcsState::Unprotected, None),
            Err(e) => tracing::warn!("Could not read the task protection state: {e}"),
        }
    }

    async fn call(&mut self, protect: bool, minutes: u32) {
        let result = self
            .timed(self.backend.set_protection(protect, minutes))
            .await
            .and_then(|state| {
                if state.enabled == protect {
                    Ok(state)
                } else {
                    Err(BackendError::new(
                        ErrorKind::Malformed,
                        format!(
                            "asked for protectionEnabled={protect}, ECS answered {}",
                            state.enabled
                        ),
                    ))
                }
            });
        self.count_call(result.is_ok());
        match result {
            Ok(state) if protect => {
                let refreshed = matches!(self.ecs, EcsState::Protected { since: Some(_), .. });
                self.failures = 0;
                self.retry_at = None;
                self.logged = None;
                let expires_at = self.expiry_instant(&state, minutes);
                self.set_ecs(
                    EcsState::Protected {
                        since: Some(Instant::now()),
                        expires_at,
                    },
                    state.expires_at,
                );
                if refreshed {
                    tracing::info!(
                        "Task protection refreshed until {}",
                        fmt_time(state.expires_at)
                    );
                } else {
                    tracing::info!("Task protection acquired");
                }
                let _ = self.inner.events.send(ProtectionEvent::Protected {
                    expires_at: state.expires_at,
                    refreshed,
                });
            }
            Ok(_) => {
                self.failures = 0;
                self.retry_at = None;
                self.logged = None;
                self.released();
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let delay = policy::retry_delay_after(
                    error.kind,
                    self.failures,
                    &self.settings,
                    rand::random::<f64>(),
                );
                self.retry_at = Some(Instant::now() + delay);
                let what = if protect {
                    "Task protection rejected"
                } else {
                    "Task protection release failed"
                };
                let hint = error
                    .hint()
                    .map(|h| format!(". Hint: {h}"))
                    .unwrap_or_default();
                // Once per streak and kind of failure; the retries that fail the same way are
                // logged at debug level only.
                let repeat = self.logged == Some((protect, error.kind));
                if repeat {
                    tracing::debug!(
                        "{what} again: {error}; retrying in {:.1} s (attempt {})",
                        delay.as_secs_f64(),
                        self.failures
                    );
                } else {
                    tracing::warn!(
                        "{what}: {error}; retrying in {:.1} s (attempt {}), quietly while it fails this way{hint}",
                        delay.as_secs_f64(),
                        self.failures
                    );
                }
                self.logged = Some((protect, error.kind));
                self.inner.status.send_modify(|s| {
                    s.last_rejection = Some(error.clone());
                    s.rejections += 1;
                    s.blocked = protect && error.kind == ErrorKind::Blocked;
                });
                let _ = self.inner.events.send(ProtectionEvent::Rejected {
                    protecting: protect,
                    error,
                    attempt: self.failures,
                    retry_in: delay,
                });
            }
        }
    }

    /// Releases protection on the way out, if it may be on.
    async fn final_release(mut self) -> Result<(), BackendError> {
        if matches!(self.ecs, EcsState::Unprotected) {
            return Ok(());
        }
        let result = self
            .timed(
                self.backend
                    .set_protection(false, self.settings.duration_minutes),
            )
            .await;
        self.count_call(result.is_ok());
        match result {
            Ok(_) => {
                self.released();
                Ok(())
            }
            Err(e) => {
                tracing::warn!("Task protection release failed at shutdown: {e}");
                Err(e)
            }
        }
    }

    /// Records a successful release: state, log line, event.
    fn released(&mut self) {
        self.set_ecs(EcsState::Unprotected, None);
        tracing::info!("Task protection released");
        let _ = self.inner.events.send(ProtectionEvent::Unprotected);
    }

    async fn timed<F>(&self, call: F) -> Result<ProtectionState, BackendError>
    where
        F: std::future::Future<Output = Result<ProtectionState, BackendError>>,
    {
        match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::new(
                ErrorKind::Timeout,
                format!("no answer within {:?}", self.settings.call_timeout),
            )),
        }
    }

    /// Converts the expiry ECS reported into an instant on the runtime's clock (assuming the
    /// `minutes` asked for when ECS did not say).
    fn expiry_instant(&self, state: &ProtectionState, minutes: u32) -> Instant {
        let left = match state.expires_at {
            Some(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => super::backend::minutes(minutes),
        };
        Instant::now() + left
    }

    fn set_ecs(&mut self, ecs: EcsState, expires_at: Option<SystemTime>) {
        self.ecs = ecs;
        let wanted = self.inner.holds.load(Ordering::Acquire) > 0;
        self.inner.status.send_modify(|s| {
            s.wanted = wanted;
            match ecs {
                EcsState::Protected { .. } => {
                    s.state = StateLabel::Protected;
                    s.expires_at = expires_at;
                    s.last_rejection = None;
                    s.blocked = false;
                }
                EcsState::Unprotected => {
                    s.state = StateLabel::Unprotected;
                    s.expires_at = None;
                    if !wanted {
                        s.blocked = false;
                    }
                }
                EcsState::Unknown => s.state = StateLabel::Unknown,
            }
        });
    }

    fn count_call(&self, ok: bool) {
        let wanted = self.inner.holds.load(Ordering::Acquire) > 0;
        self.inner.status.send_modify(|s| {
            s.calls_made += 1;
            if !ok {
                s.calls_failed += 1;
            }
            s.wanted = wanted;
        });
    }
}

/// Formats an expiry for logs.
pub(crate) fn fmt_time(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => rfc3339(t),
        None => "an unreported time".to_string(),
    }
}

/// Formats a time as RFC 3339 (UTC, whole seconds).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::from(t));
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn kind_code_opt<S: serde::Serializer>(v: &Option<BackendError>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(e) => s.serialize_str(e.kind.code()),
        None => s.serialize_none(),
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }
}
