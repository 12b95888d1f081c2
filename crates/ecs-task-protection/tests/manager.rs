//! The protection manager on tokio's paused clock, against a scripted backend: what calls it
//! makes, and when.

mod support;

use std::time::{Duration, SystemTime};

use ecs_task_protection::protection::{
    AcquireError, BackendError, ErrorKind, ProtectionBackend, ProtectionEvent, ProtectionManager,
    ProtectionState, StateLabel,
};
use support::{settings, FakeBackend, Op};
use tokio::time::{sleep, sleep_until, Instant};

const MIN: Duration = Duration::from_secs(60);

async fn wait_state(m: &ProtectionManager, state: StateLabel) {
    let mut rx = m.watch();
    rx.wait_for(|s| s.state == state)
        .await
        .expect("manager alive");
}

#[tokio::test(start_paused = true)]
async fn a_storm_of_1000_guards_makes_one_protect_call_and_one_release() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    // Hold the first call open so that most guards arrive while it is in flight.
    let go = fake.hold_calls();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.guard() })
        })
        .collect();
    let mut guards = Vec::new();
    for t in tasks {
        guards.push(t.await.unwrap());
    }
    fake.wait_set_calls(1).await;
    go.send(true).unwrap();
    wait_state(&m, StateLabel::Protected).await;
    sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect]);
    assert_eq!(m.holds(), 1000);

    let drops: Vec<_> = guards
        .into_iter()
        .map(|g| tokio::spawn(async move { drop(g) }))
        .collect();
    for d in drops {
        d.await.unwrap();
    }
    wait_state(&m, StateLabel::Unprotected).await;
    sleep(MIN * 60).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Release]);
}

#[tokio::test(start_paused = true)]
async fn protection_is_refreshed_at_the_refresh_mark_while_wanted() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let _g = m.guard();
    fake.wait_set_calls(1).await;
    let t0 = fake.set_calls()[0].0;
    // 80 % of 10 minutes.
    sleep_until(t0 + 8 * MIN - Duration::from_secs(1)).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect]);
    fake.wait_set_calls(2).await;
    let t1 = fake.set_calls()[1].0;
    assert_eq!(t1 - t0, 8 * MIN);
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Protect]);
    // And again 8 minutes after the refresh.
    fake.wait_set_calls(3).await;
    assert_eq!(fake.set_calls()[2].0 - t1, 8 * MIN);
}

#[tokio::test(start_paused = true)]
async fn release_soon_after_protecting_is_held_over_until_the_maintain_mark() {
    let fake = FakeBackend::new();
    // maintain 20 % of 10 minutes = 2 minutes.
    let m = ProtectionManager::start(fake.clone(), settings(20)).unwrap();
    let g = m.guard();
    fake.wait_set_calls(1).await;
    let t0 = fake.set_calls()[0].0;
    sleep(Duration::from_secs(30)).await;
    drop(g);
    sleep_until(t0 + 2 * MIN - Duration::from_secs(1)).await;
    assert_eq!(
        fake.set_ops(),
        vec![Op::Protect],
        "released during the hold-over"
    );
    // Work coming back during the hold-over costs no call.
    let g = m.guard();
    sleep(Duration::from_millis(500)).await;
    drop(g);
    fake.wait_set_calls(2).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Release]);
    assert_eq!(fake.set_calls()[1].0 - t0, 2 * MIN);
}

#[tokio::test(start_paused = true)]
async fn rejections_are_retried_with_exponential_back_off() {
    let fake = FakeBackend::new();
    let e = || Err(BackendError::new(ErrorKind::Server, "HTTP 500"));
    fake.push([e(), e(), e()]);
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let mut events = m.subscribe();
    let _g = m.guard();
    fake.wait_set_calls(4).await;
    wait_state(&m, StateLabel::Protected).await;
    let calls = fake.set_calls();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // Equal jitter: the n-th delay is in [base·2ⁿ⁻¹ / 2, base·2ⁿ⁻¹].
    let s = |x: f64| Duration::from_secs_f64(x);
    for (gap, (lo, hi)) in gaps.iter().zip([(0.5, 1.0), (1.0, 2.0), (2.0, 4.0)]) {
        assert!(
            *gap >= s(lo) && *gap <= s(hi),
            "gap {gap:?} not in [{lo}, {hi}] s ({gaps:?})"
        );
    }
    let mut attempts = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let ProtectionEvent::Rejected {
            attempt,
            error,
            protecting,
            ..
        } = ev
        {
            assert!(protecting);
            assert_eq!(error.kind, ErrorKind::Server);
            attempts.push(attempt);
        }
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    let st = m.status();
    assert_eq!(
        (st.calls_made, st.calls_failed),
        (5, 3),
        "1 read + 4 set calls, 3 failed"
    );
    assert!(st.last_rejection.is_none(), "cleared by the success");
}

#[tokio::test(start_paused = true)]
async fn release_during_an_in_flight_protect_call_releases_after_it() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let go = fake.hold_calls();
    let g = m.guard();
    fake.wait_set_calls(1).await;
    drop(g);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fake.set_ops(),
        vec![Op::Protect],
        "a second call while one is in flight"
    );
    go.send(true).unwrap();
    fake.wait_set_calls(2).await;
    wait_state(&m, StateLabel::Unprotected).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Release]);
}

#[tokio::test(start_paused = true)]
async fn acquire_returns_the_rejection_instead_of_hanging() {
    let fake = FakeBackend::new();
    fake.push([Err(BackendError::new(ErrorKind::Failure, "TASK_NOT_VALID"))]);
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    match m.acquire().await {
        Err(AcquireError::Rejected(e)) => {
            assert_eq!(e.kind, ErrorKind::Failure);
            assert!(e.message.contains("TASK_NOT_VALID"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The claim stays and is retried; a second acquire succeeds once ECS accepts.
    m.acquire().await.expect("protected on retry");
    assert_eq!(m.holds(), 2);
    m.release();
    m.release();
    m.release(); // extra releases do nothing
    assert_eq!(m.holds(), 0);
    wait_state(&m, StateLabel::Unprotected).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Protect, Op::Release]);
}

#[tokio::test(start_paused = true)]
async fn protection_that_cannot_be_refreshed_lapses_at_its_expiry() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let _g = m.guard();
    fake.wait_set_calls(1).await;
    let t0 = fake.set_calls()[0].0;
    fake.push((0..100).map(|_| Err(BackendError::new(ErrorKind::Throttled, "Rate exceeded"))));
    wait_state(&m, StateLabel::Unprotected).await;
    let lapsed_at = Instant::now();
    assert!(lapsed_at - t0 >= 10 * MIN && lapsed_at - t0 < 10 * MIN + Duration::from_secs(1));
    // Retries go on while wanted, spaced by at most the back-off cap (15 s).
    let calls = fake.set_calls();
    assert!(calls.len() >= 6, "{calls:?}");
    assert!(calls
        .windows(2)
        .skip(1)
        .all(|w| w[1].0 - w[0].0 <= Duration::from_secs(15)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_protection_even_while_claims_are_held() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(50)).unwrap();
    let _g = m.guard();
    wait_state(&m, StateLabel::Protected).await;
    m.shutdown().await.expect("released");
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Release]);
    assert_eq!(m.status().state, StateLabel::Unprotected);
}

#[tokio::test(start_paused = true)]
async fn protection_left_by_a_previous_process_is_released_at_start_up() {
    let fake = FakeBackend::new();
    *fake.initial.lock().unwrap() = Some(ProtectionState {
        enabled: true,
        expires_at: Some(SystemTime::now() + 5 * MIN),
    });
    let m = ProtectionManager::start(fake.clone(), settings(50)).unwrap();
    fake.wait_set_calls(1).await;
    assert_eq!(fake.ops(), vec![Op::Get, Op::Release]);
    wait_state(&m, StateLabel::Unprotected).await;
}

#[tokio::test(start_paused = true)]
async fn draining_skips_the_hold_over() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(50)).unwrap();
    let g = m.guard();
    fake.wait_set_calls(1).await;
    let t0 = fake.set_calls()[0].0;
    m.set_skip_hold_over(true);
    drop(g);
    fake.wait_set_calls(2).await;
    assert!(fake.set_calls()[1].0 - t0 < Duration::from_secs(1));
    assert!(m.status().draining);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_manager_handle_releases_protection() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(50)).unwrap();
    let g = m.guard();
    wait_state(&m, StateLabel::Protected).await;
    let clone = m.clone();
    drop(m);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect], "a clone is still alive");
    drop(clone);
    fake.wait_set_calls(2).await;
    assert_eq!(fake.set_ops(), vec![Op::Protect, Op::Release]);
    drop(g);
}

#[tokio::test(start_paused = true)]
async fn deployment_blocked_is_retried_every_half_minute_or_so_and_protection_follows_when_ecs_allows(
) {
    let fake = FakeBackend::new();
    let blocked = || Err(BackendError::new(ErrorKind::Blocked, "DEPLOYMENT_BLOCKED"));
    // Blocked for ten tries, then ECS allows it.
    fake.push(std::iter::repeat_with(blocked).take(10));
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let mut events = m.subscribe();
    let t0 = Instant::now();
    let _g = m.guard();
    fake.wait_set_calls(2).await;
    assert!(m.status().blocked, "the status says blocked");
    assert_eq!(m.status().state, StateLabel::Unprotected);
    fake.wait_set_calls(11).await;
    wait_state(&m, StateLabel::Protected).await;
    assert!(!m.status().blocked, "cleared by the success");
    let calls = fake.set_calls();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // 30 s × a random 0.5–1.5: never the 1 s, 2 s, 4 s… fault back-off, and not growing.
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_secs(15) && *gap <= Duration::from_secs(45),
            "gap {gap:?} ({gaps:?})"
        );
    }
    // Ten blocked tries took at least 150 s; the fault back-off would have made them within
    // about 100 s, and faster still at its start.
    let elapsed = calls.last().unwrap().0 - t0;
    assert!(elapsed >= Duration::from_secs(150), "{elapsed:?}");
    let mut kinds = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let ProtectionEvent::Rejected { error, .. } = ev {
            kinds.push(error.kind);
        }
    }
    assert_eq!(
        kinds,
        vec![ErrorKind::Blocked; 10],
        "a kind a library user can match on"
    );
}

/// A user's backend that panics in every call (or only in protect calls).
struct PanickingBackend {
    on_get: bool,
}

#[async_trait::async_trait]
impl ProtectionBackend for PanickingBackend {
    fn name(&self) -> &'static str {
        "panicking"
    }

    fn describe(&self) -> String {
        "a backend that panics".into()
    }

    async fn set_protection(&self, _: bool, _: u32) -> Result<ProtectionState, BackendError> {
        panic!("the backend's protect call panicked");
    }

    async fn get_protection(&self) -> Result<ProtectionState, BackendError> {
        if self.on_get {
            panic!("the backend's first read panicked");
        }
        Ok(ProtectionState {
            enabled: false,
            expires_at: None,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_reconciler_that_panics_is_reported_as_dead_not_left_looking_healthy() {
    // At start-up (its first read), as a blank AWS_ENDPOINT_URL_ECS used to make it.
    let m = ProtectionManager::start(
        std::sync::Arc::new(PanickingBackend { on_get: true }),
        settings(0),
    )
    .unwrap();
    let _guard = m.guard();
    let error = tokio::time::timeout(MIN, m.died())
        .await
        .expect("died() resolves");
    assert_eq!(error.kind, ErrorKind::Panicked);
    assert!(error.message.contains("first read panicked"), "{error}");
    let status = m.status();
    assert!(status.failed, "{status:?}");
    assert_eq!(
        status.last_rejection.map(|e| e.kind),
        Some(ErrorKind::Panicked)
    );
    assert_eq!(
        serde_json::to_value(m.status()).unwrap()["last_rejection"],
        "panicked"
    );
    // acquire() does not hang on a manager that can no longer call ECS.
    let acquired = tokio::time::timeout(MIN, m.acquire())
        .await
        .expect("settles");
    assert!(
        matches!(acquired, Err(AcquireError::Rejected(ref e)) if e.kind == ErrorKind::Panicked),
        "{acquired:?}"
    );
    let shutdown = m.shutdown().await.unwrap_err();
    assert_eq!(shutdown.kind, ErrorKind::Panicked);

    // In a call it makes later (a protect call), the same.
    let m = ProtectionManager::start(
        std::sync::Arc::new(PanickingBackend { on_get: false }),
        settings(0),
    )
    .unwrap();
    let waiting = tokio::spawn({
        let m = m.clone();
        async move { m.acquire().await }
    });
    let error = tokio::time::timeout(MIN, m.died())
        .await
        .expect("died() resolves");
    assert!(error.message.contains("protect call panicked"), "{error}");
    let acquired = tokio::time::timeout(MIN, waiting).await.unwrap().unwrap();
    assert!(
        matches!(acquired, Err(AcquireError::Rejected(_))),
        "{acquired:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_manager_that_shuts_down_in_order_has_not_died() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let died = m.died();
    m.shutdown().await.unwrap();
    assert!(
        tokio::time::timeout(MIN * 60, died).await.is_err(),
        "died() resolved on an orderly shutdown"
    );
    assert!(!m.status().failed);
}
