//! Draining: refuse new clients, keep serving those connected, release protection as soon as the
//! last one leaves, and close stragglers after the deadline.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ecs_stand_in::StandInAgent;
use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::ecs::drain_watch::{Replacement, ReplacementKind};
use ecs_task_protection::protection::{ProtectionManager, StateLabel};
use futures_util::SinkExt;
use support::{
    close_code, connect, eventually, next_text, ping_pong, settings, FakeBackend, TestServer,
};
use websocket_server::server::{drain, Hub, SessionLimits, DRAINING_NOTICE};

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn upgrade_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn a_draining_server_refuses_new_clients_keeps_the_others_and_releases_at_zero() {
    let agent = StandInAgent::start().await.unwrap();
    let backend = Arc::new(AgentBackend::new(&agent.uri(), Duration::from_secs(5)).unwrap());
    // A 50 % hold-over would keep protection 15 minutes after the last client: draining skips it.
    let server = TestServer::start(backend, settings(50), SessionLimits::default()).await;
    let (mut a, _) = connect(&server.ws_url()).await;
    let (mut b, _) = connect(&server.ws_url()).await;
    eventually("protected", || agent.is_protected()).await;

    server.hub.begin_drain("deployment in progress", false);
    for c in [&mut a, &mut b] {
        let notice = next_text(c).await;
        assert!(
            notice.starts_with(&format!("{DRAINING_NOTICE}: deployment in progress")),
            "{notice}"
        );
        ping_pong(c).await;
    }
    // Told once, however often the state changes afterwards.
    server.hub.begin_drain("another reason", false);
    ping_pong(&mut a).await;

    assert_eq!(upgrade_status(&server.ws_url()).await, 503);
    assert_eq!(
        get(&server.http_url("/healthz")).await.0,
        200,
        "health stays 200 while draining"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&get(&server.http_url("/status")).await.1).unwrap();
    assert_eq!(doc["draining"], true);
    assert_eq!(doc["drain_reason"], "deployment in progress");
    assert_eq!(doc["protection"]["draining"], true);

    a.close(None).await.unwrap();
    ping_pong(&mut b).await;
    assert_eq!(
        agent.put_calls().len(),
        1,
        "one client left: still protected"
    );
    b.close(None).await.unwrap();
    eventually("released at once, no hold-over", || {
        agent.put_calls().len() == 2
    })
    .await;
    assert!(!agent.is_protected());
}

#[tokio::test]
async fn a_reversible_drain_ends_when_its_cause_goes_away_and_an_operator_drain_does_not() {
    let server = TestServer::start(FakeBackend::new(), settings(0), SessionLimits::default()).await;
    server
        .hub
        .begin_drain("scale-in: desired 1, running 2", true);
    assert_eq!(upgrade_status(&server.ws_url()).await, 503);
    server.hub.end_drain();
    assert_eq!(upgrade_status(&server.ws_url()).await, 101);
    assert!(!server.hub.manager().status().draining);

    server.hub.begin_drain("operator request (SIGUSR1)", false);
    server.hub.end_drain();
    assert_eq!(upgrade_status(&server.ws_url()).await, 503);
}

#[tokio::test]
async fn the_watcher_drives_the_drain() {
    let server = TestServer::start(FakeBackend::new(), settings(0), SessionLimits::default()).await;
    let (tx, rx) = tokio::sync::watch::channel(None::<Replacement>);
    drain::follow_watcher(&server.hub, rx);
    tx.send(Some(Replacement::new(
        ReplacementKind::Deployment,
        "deployment in progress: moving to task-definition/web:8",
    )))
    .unwrap();
    eventually("draining", || server.hub.state().draining.is_some()).await;
    tx.send(None).unwrap();
    eventually("serving again", || server.hub.state().draining.is_none()).await;
}

#[tokio::test]
async fn stragglers_are_closed_with_1001_after_the_drain_deadline() {
    let server = TestServer::start(FakeBackend::new(), settings(0), SessionLimits::default()).await;
    drain::evict_after(&server.hub, Duration::from_millis(300));
    let (mut c, _) = connect(&server.ws_url()).await;
    server.hub.begin_drain("operator request (SIGUSR1)", false);
    assert!(next_text(&mut c).await.starts_with(DRAINING_NOTICE));
    c.send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut c).await, "pong");
    assert_eq!(close_code(&mut c).await, 1001);
    eventually("gone", || server.hub.connections() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_server_protected_for_the_maximum_lifetime_starts_draining() {
    let fake = FakeBackend::new();
    let manager = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let hub = Hub::new(manager.clone(), SessionLimits::default(), 10);
    drain::after_protected_for(&hub, Duration::from_secs(3600));
    let _g = manager.guard();
    manager
        .watch()
        .wait_for(|s| s.state == StateLabel::Protected)
        .await
        .unwrap();
    // Refreshes (every 8 minutes) do not restart the clock.
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert!(hub.state().draining.is_none());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drain = hub
        .state()
        .draining
        .expect("draining after an hour of protection");
    assert!(drain.reason.contains("MAX_PROTECTED_MINUTES"));
    assert!(manager.status().draining);
}

#[tokio::test(start_paused = true)]
async fn a_drain_deadline_caps_protection_and_releases_it_although_a_client_stays() {
    // 10-minute protection refreshed at 80 %, a 15.5-minute drain deadline, and one client (its
    // claim) that never leaves.
    let fake = FakeBackend::new();
    let manager = ProtectionManager::start(fake.clone(), settings(0)).unwrap();
    let hub = Hub::new(manager.clone(), SessionLimits::default(), 10);
    drain::evict_after(&hub, Duration::from_secs(930));
    let _client = manager.guard();
    fake.wait_set_calls(1).await;
    let t0 = tokio::time::Instant::now();
    hub.begin_drain("operator request (SIGUSR1)", false);

    // The refresh at 8 minutes asks only for the 7.5 minutes left until the deadline (rounded up
    // to 8: ECS counts whole minutes), and none follows.
    fake.wait_set_calls(2).await;
    assert_eq!(*fake.protect_minutes.lock().unwrap(), vec![10, 8]);
    // At the deadline: the stragglers are evicted and protection is released, although the
    // client's claim is still held.
    fake.wait_set_calls(3).await;
    let calls = fake.set_calls();
    assert_eq!(calls[2].1, support::Op::Release);
    let at = calls[2].0.duration_since(t0);
    assert!(
        at >= Duration::from_secs(930) && at < Duration::from_secs(945),
        "released {at:?} after the drain began"
    );
    assert!(hub.state().evicting);
    assert_eq!(*fake.protect_minutes.lock().unwrap(), vec![10, 8]);
}
