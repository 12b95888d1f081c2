//! Faults and pressure: a hanging agent, an outage, random sequences of claims and failures, and
//! storms. Deterministic: assertions are about order and counts, never about how fast.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ecs_stand_in::{Fault, StandInAgent};
use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::protection::{
    BackendError, ErrorKind, ProtectionBackend, ProtectionManager, Settings, StateLabel,
};
use futures_util::SinkExt;
use proptest::prelude::*;
use support::{connect, eventually, next_text, ping_pong, settings, FakeBackend, Op, TestServer};
use websocket_server::server::{SessionLimits, REJECTED_NOTICE};

fn agent_backend(agent: &StandInAgent) -> Arc<dyn ProtectionBackend> {
    Arc::new(AgentBackend::new(&agent.uri(), Duration::from_secs(30)).unwrap())
}

#[tokio::test]
async fn a_client_gets_its_pong_while_the_agent_call_hangs() {
    let agent = StandInAgent::start().await.unwrap();
    let server =
        TestServer::start(agent_backend(&agent), settings(0), SessionLimits::default()).await;
    agent.wait_for_calls(1).await; // the start-up GET, answered
    agent.set_fault(Fault::Hang);
    let (mut c, welcome) = connect(&server.ws_url()).await;
    assert_eq!(welcome, "Welcome! There are 1 connections");
    agent.wait_for_calls(2).await; // the protect PUT, hanging
    ping_pong(&mut c).await;
    let calls = agent.put_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, 0, "the protect call is still unanswered");
    let (mut d, welcome) = connect(&server.ws_url()).await;
    assert_eq!(welcome, "Welcome! There are 2 connections");
    ping_pong(&mut d).await;
    agent.release_hangs();
    eventually("protected once the agent answers", || agent.is_protected()).await;
    assert_eq!(agent.put_calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_agent_outage_follows_the_back_off_schedule_and_recovers_at_once() {
    let fake = FakeBackend::new();
    let m = ProtectionManager::start(fake.clone(), Settings::default()).unwrap();
    fake.push((0..1000).map(|_| {
        Err(BackendError::new(
            ErrorKind::Server,
            "HTTP 500 ServerException",
        ))
    }));
    let _g = m.guard();
    fake.wait_set_calls(1).await;
    let t0 = fake.set_calls()[0].0;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let calls = fake.set_calls();
    // 1 s, 2 s, 4 s, 8 s, then 15 s (each × 0.5–1): 5 to 8 calls in 30 s (the goal: ≤ 10).
    let in_window = calls
        .iter()
        .filter(|c| c.0 - t0 <= Duration::from_secs(30))
        .count();
    assert!((5..=8).contains(&in_window), "{in_window} calls in 30 s");
    let gaps: Vec<f64> = calls
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    for (i, gap) in gaps.iter().enumerate() {
        let full = 2f64.powi(i as i32).min(15.0);
        assert!(
            *gap >= full / 2.0 && *gap <= full,
            "gap {i} = {gap} s, expected within [{}, {full}]",
            full / 2.0
        );
    }
    // The agent recovers: the very next retry protects.
    fake.script.lock().unwrap().clear();
    let before = fake.set_calls().len();
    let mut rx = m.watch();
    rx.wait_for(|s| s.state == StateLabel::Protected)
        .await
        .unwrap();
    assert_eq!(fake.set_calls().len(), before + 1);
}

#[tokio::test]
async fn during_an_outage_each_client_is_told_once_and_protection_returns_with_the_agent() {
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(Fault::ServerError);
    let fast = settings(0).with_backoff(Duration::from_millis(20), Duration::from_millis(40));
    let server = TestServer::start(agent_backend(&agent), fast, SessionLimits::default()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(&server.ws_url()).await.0);
    }
    eventually("many failed calls", || agent.put_calls().len() >= 10).await;
    agent.set_fault(Fault::None);
    eventually("protected after the outage", || agent.is_protected()).await;
    for c in clients.iter_mut() {
        // Exactly one notice, then the pong: nothing per retry.
        let mut notices = 0;
        c.send(tokio_tungstenite::tungstenite::Message::text("ping"))
            .await
            .unwrap();
        loop {
            let t = next_text(c).await;
            if t == "pong" {
                break;
            }
            assert_eq!(t, REJECTED_NOTICE);
            notices += 1;
        }
        assert_eq!(notices, 1);
    }
}

#[tokio::test]
async fn deployment_blocked_tells_no_client_admits_players_and_protects_once_ecs_allows() {
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(Fault::Failure("DEPLOYMENT_BLOCKED".into()));
    let cadence = Duration::from_millis(200);
    let fast = settings(0)
        .with_backoff(Duration::from_millis(20), Duration::from_millis(40))
        .with_blocked_retry(cadence);
    let server = TestServer::start(agent_backend(&agent), fast, SessionLimits::default()).await;
    let (mut first, _) = connect(&server.ws_url()).await;
    let started = std::time::Instant::now();
    eventually("three blocked protect calls", || {
        agent.put_calls().len() >= 3
    })
    .await;
    let status = server.hub.status();
    assert!(status.protection.blocked, "/status says blocked");
    assert_ne!(status.protection.state, StateLabel::Protected);
    assert!(!status.draining, "blocked is not a reason to drain");
    // New players are admitted, and nobody is told the server is going away: the next text after
    // a ping is the pong, not a notice.
    let (mut second, welcome) = connect(&server.ws_url()).await;
    assert_eq!(welcome, "Welcome! There are 2 connections");
    ping_pong(&mut first).await;
    ping_pong(&mut second).await;
    // Few calls: the slow cadence (200 ms × 0.5–1.5 here), not the fault back-off (20–40 ms).
    let calls = agent.put_calls().len() as u128;
    let most = started.elapsed().as_millis() / 100 + 2;
    assert!(calls <= most, "{calls} calls in {:?}", started.elapsed());
    agent.set_fault(Fault::None);
    eventually("protected once ECS allows it", || agent.is_protected()).await;
    eventually("no longer blocked", || {
        !server.hub.status().protection.blocked
    })
    .await;
    ping_pong(&mut first).await;
}

#[tokio::test]
async fn after_ten_storms_the_count_is_zero_and_exactly_one_release_is_outstanding() {
    let agent = StandInAgent::start().await.unwrap();
    // 1 minute protection, 10 % hold-over = 6 s.
    let s = settings(10)
        .with_duration_minutes(1)
        .with_maintain_percent(10);
    let server = TestServer::start(agent_backend(&agent), s, SessionLimits::default()).await;
    let url = server.ws_url();
    for _ in 0..10 {
        for mut c in support::connect_many(&url, 100).await {
            c.close(None).await.unwrap();
        }
        eventually("storm closed", || server.hub.connections() == 0).await;
    }
    let status = server.hub.manager().status();
    assert_eq!(server.hub.connections(), 0);
    assert!(!status.wanted);
    assert_eq!(status.state, StateLabel::Protected, "held over");
    let calls: Vec<_> = agent.put_calls().iter().map(|c| c.enabled).collect();
    assert_eq!(
        calls,
        vec![Some(true)],
        "one protect for all ten storms, the release outstanding"
    );
    eventually("the one release", || agent.put_calls().len() == 2).await;
    let calls: Vec<_> = agent.put_calls().iter().map(|c| c.enabled).collect();
    assert_eq!(calls, vec![Some(true), Some(false)]);
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// A new holder appears.
    Claim,
    /// The holder at this index (modulo the number held) goes away.
    Drop(usize),
    /// The next `n` calls to ECS fail.
    Fail(u8),
    /// Time passes.
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Claim),
        3 => any::<usize>().prop_map(Step::Drop),
        1 => (1u8..6).prop_map(Step::Fail),
        2 => (0u16..400).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happens, once the faults stop the protection converges to what is wanted, every
    /// call is counted, and the task (unprotected at start-up) is never sent a release first.
    #[test]
    fn protection_converges_to_what_is_wanted(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let fake = FakeBackend::new();
            let m = ProtectionManager::start(fake.clone(), settings(20)).unwrap();
            let mut held = Vec::new();
            for s in steps {
                match s {
                    Step::Claim => held.push(m.guard()),
                    Step::Drop(i) if !held.is_empty() => { let n = held.len(); drop(held.remove(i % n)); }
                    Step::Drop(_) => {}
                    Step::Fail(n) => fake.push((0..n).map(|_| Err(BackendError::new(ErrorKind::Throttled, "Rate exceeded")))),
                    Step::Wait(s) => tokio::time::sleep(Duration::from_secs(s.into())).await,
                }
                tokio::task::yield_now().await;
            }
            fake.script.lock().unwrap().clear();
            // Longer than the back-off cap plus the hold-over (2 minutes).
            tokio::time::sleep(Duration::from_secs(240)).await;
            let wanted = !held.is_empty();
            let st = m.status();
            let expected = if wanted { StateLabel::Protected } else { StateLabel::Unprotected };
            // With nothing ever wanted, the task stays as it started: unprotected after the read.
            assert_eq!(st.state, expected, "wanted={wanted}, status {st:?}, calls {:?}", fake.ops());
            assert_eq!(st.calls_made as usize, fake.ops().len());
            let ops = fake.set_ops();
            prop_assert!(ops.first().is_none_or(|o| *o == Op::Protect));
            Ok(())
        })?;
    }
}
