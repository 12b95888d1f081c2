//! The server with real WebSocket clients: the protocol, the close codes, the status document,
//! and the connection count driving protection through a stand-in agent endpoint.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ecs_stand_in::{Fault, StandInAgent};
use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::protection::local::LocalBackend;
use ecs_task_protection::protection::ProtectionBackend;
use futures_util::{SinkExt, StreamExt};
use support::{close_code, connect, eventually, next_text, ping_pong, TestServer};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use websocket_server::server::{SessionLimits, CHAT_PREFIX, REJECTED_NOTICE, ROOM_BUSY_NOTICE};

fn agent_backend(agent: &StandInAgent) -> Arc<dyn ProtectionBackend> {
    Arc::new(AgentBackend::new(&agent.uri(), Duration::from_secs(2)).unwrap())
}

async fn local_server() -> TestServer {
    TestServer::start(
        Arc::new(LocalBackend::new()),
        support::settings(0),
        SessionLimits::default(),
    )
    .await
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("http get");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn clients_are_welcomed_get_pongs_and_chat_reaches_the_others() {
    let server = local_server().await;
    let (mut a, welcome_a) = connect(&server.ws_url()).await;
    assert_eq!(welcome_a, "Welcome! There are 1 connections");
    let (mut b, welcome_b) = connect(&server.ws_url()).await;
    assert_eq!(welcome_b, "Welcome! There are 2 connections");
    ping_pong(&mut a).await;
    ping_pong(&mut b).await;

    a.send(Message::text("hello from a")).await.unwrap();
    assert_eq!(next_text(&mut b).await, "chat: hello from a");
    // The sender does not get its own message back: its next message is the pong.
    ping_pong(&mut a).await;
}

#[tokio::test]
async fn the_page_status_and_health_are_served() {
    let server = local_server().await;
    let (status, body) = get(&server.http_url("/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>"), "the page");
    assert_eq!(get(&server.http_url("/healthz")).await.0, 200);

    let (_c, _) = connect(&server.ws_url()).await;
    eventually("protected", || {
        server.hub.manager().status().state
            == ecs_task_protection::protection::StateLabel::Protected
    })
    .await;
    let (status, body) = get(&server.http_url("/status")).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["connections"], 1);
    assert_eq!(doc["shutting_down"], false);
    assert_eq!(doc["protection"]["backend"], "local");
    assert_eq!(doc["protection"]["state"], "protected");
    assert_eq!(doc["protection"]["wanted"], true);
    assert!(doc["protection"]["expires_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(
        doc["protection"]["calls_made"], 2,
        "one read at start-up, one protect"
    );
    assert_eq!(doc["protection"]["calls_failed"], 0);
}

#[tokio::test]
async fn the_page_is_gzip_compressed_for_browsers_that_ask_and_plain_for_others() {
    use std::io::Read;
    let server = local_server().await;
    let client = reqwest::Client::new();
    let plain = client.get(server.http_url("/")).send().await.unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    let page = plain.text().await.unwrap();
    assert!(page.contains("<title>"), "the page");

    let zipped = client
        .get(server.http_url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(
        zipped
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert_eq!(
        zipped.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-cache"[..])
    );
    let bytes = zipped.bytes().await.unwrap();
    assert!(
        bytes.len() * 2 < page.len(),
        "{} bytes compressed, {} plain",
        bytes.len(),
        page.len()
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, page);
    // The status document is not compressed (the page's polling stays cheap to serve).
    let status = client
        .get(server.http_url("/status"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(status.headers().get("content-encoding"), None);
}

#[tokio::test]
async fn protection_is_acquired_at_the_first_client_and_released_after_the_last() {
    let agent = StandInAgent::start().await.unwrap();
    let server = TestServer::start(
        agent_backend(&agent),
        support::settings(0),
        SessionLimits::default(),
    )
    .await;
    let (mut a, _) = connect(&server.ws_url()).await;
    eventually("protect call", || agent.put_calls().len() == 1).await;
    assert!(agent.is_protected());
    let (mut b, _) = connect(&server.ws_url()).await;
    a.close(None).await.unwrap();
    ping_pong(&mut b).await;
    assert_eq!(agent.put_calls().len(), 1, "still one client: no call");
    b.close(None).await.unwrap();
    eventually("release call", || agent.put_calls().len() == 2).await;
    let calls: Vec<_> = agent.put_calls().iter().map(|c| c.enabled).collect();
    assert_eq!(calls, vec![Some(true), Some(false)]);
    assert!(!agent.is_protected());
}

#[tokio::test]
async fn a_storm_of_1000_clients_makes_exactly_one_protect_and_one_release_call() {
    let agent = StandInAgent::start().await.unwrap();
    // A slow agent, so that most clients arrive while the first call is in flight.
    agent.set_fault(Fault::Slow(Duration::from_millis(200)));
    let server = TestServer::start(
        agent_backend(&agent),
        support::settings(0),
        SessionLimits::default(),
    )
    .await;
    let clients = support::connect_many(&server.ws_url(), 1000).await;
    assert_eq!(server.hub.connections(), 1000);
    eventually("protected", || agent.is_protected()).await;
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.close(None).await }))
        .collect();
    for c in closes {
        let _ = c.await.unwrap();
    }
    eventually("all gone", || server.hub.connections() == 0).await;
    eventually("released", || agent.put_calls().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls: Vec<_> = agent.put_calls().iter().map(|c| c.enabled).collect();
    assert_eq!(calls, vec![Some(true), Some(false)]);
}

#[tokio::test]
async fn a_failure_body_is_told_to_clients_once_and_never_counted_as_protected() {
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(Fault::Failure("TASK_NOT_VALID".into()));
    let settings =
        support::settings(0).with_backoff(Duration::from_millis(30), Duration::from_millis(60));
    let server = TestServer::start(agent_backend(&agent), settings, SessionLimits::default()).await;
    let (mut c, _) = connect(&server.ws_url()).await;
    assert_eq!(next_text(&mut c).await, REJECTED_NOTICE);
    eventually("several retries", || agent.put_calls().len() >= 5).await;
    let status = server.hub.manager().status();
    assert_ne!(
        status.state,
        ecs_task_protection::protection::StateLabel::Protected
    );
    assert!(status
        .last_rejection
        .unwrap()
        .message
        .contains("TASK_NOT_VALID"));
    // Told once per failure streak, not once per retry: the next message is the pong.
    ping_pong(&mut c).await;
    agent.set_fault(Fault::None);
    eventually("protected after recovery", || agent.is_protected()).await;
}

#[tokio::test]
async fn misbehaving_clients_are_closed_alone_with_the_right_code() {
    let limits = SessionLimits {
        max_message_bytes: 1024,
        ..SessionLimits::default()
    };
    let server =
        TestServer::start(Arc::new(LocalBackend::new()), support::settings(0), limits).await;
    let (mut good, _) = connect(&server.ws_url()).await;

    let (mut binary, _) = connect(&server.ws_url()).await;
    binary.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(close_code(&mut binary).await, 1003);
    ping_pong(&mut good).await;

    let (mut big, _) = connect(&server.ws_url()).await;
    big.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(close_code(&mut big).await, 1009);
    ping_pong(&mut good).await;

    let (mut bad_utf8, _) = connect(&server.ws_url()).await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    bad_utf8.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut bad_utf8).await, 1007);
    ping_pong(&mut good).await;

    // A plain GET on /ws is refused without an upgrade.
    let (status, _) = get(&server.http_url("/ws")).await;
    assert!((400..500).contains(&status), "status {status}");
    ping_pong(&mut good).await;
    eventually("only the good client left", || {
        server.hub.connections() == 1
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_while_the_others_keep_their_pongs() {
    let limits = SessionLimits {
        queue_messages: 64,
        max_message_bytes: 64 * 1024,
        write_timeout: Duration::from_millis(500),
        chat_per_sec: 0,
        ..SessionLimits::default()
    };
    let server =
        TestServer::start(Arc::new(LocalBackend::new()), support::settings(0), limits).await;
    // The stalled client: connects, then never reads again.
    let (stalled, _) = connect(&server.ws_url()).await;
    let (mut flooder, _) = connect(&server.ws_url()).await;
    let (mut good, _) = connect(&server.ws_url()).await;
    let line = "y".repeat(32 * 1024);
    // Bursts smaller than the queue, until the stalled client's socket buffers are full and it
    // is dropped (at most 200 bursts of 512 KiB).
    for _ in 0..200 {
        for _ in 0..16 {
            flooder.feed(Message::text(line.clone())).await.unwrap();
        }
        flooder.flush().await.unwrap();
        // The good client keeps up: it reads what it is sent and still gets its pong.
        support::ping_pong_skipping_chat(&mut good).await;
        if server.hub.connections() == 2 {
            break;
        }
    }
    eventually("the stalled client is gone", || {
        server.hub.connections() == 2
    })
    .await;
    drop(stalled);
    support::ping_pong_skipping_chat(&mut good).await;
    ping_pong(&mut flooder).await;
}

#[tokio::test]
async fn a_client_flooding_the_room_is_closed_and_the_others_stay() {
    let limits = SessionLimits {
        chat_per_sec: 5,
        ..SessionLimits::default()
    };
    let server =
        TestServer::start(Arc::new(LocalBackend::new()), support::settings(0), limits).await;
    let (mut flooder, _) = connect(&server.ws_url()).await;
    let (mut good, _) = connect(&server.ws_url()).await;
    for i in 0..50 {
        if flooder
            .send(Message::text(format!("spam {i}")))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut flooder).await, 1008);
    // The good client saw at most the burst allowance (10), then keeps its pongs.
    good.send(Message::text("ping")).await.unwrap();
    let mut spam = 0;
    loop {
        let t = next_text(&mut good).await;
        if t == "pong" {
            break;
        }
        assert!(t.starts_with("chat: spam"), "{t}");
        spam += 1;
    }
    assert!(spam <= 10, "{spam} chat messages passed the limit");
    ping_pong(&mut good).await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_two_ping_intervals() {
    let limits = SessionLimits {
        ping_interval: Duration::from_millis(200),
        ..SessionLimits::default()
    };
    let server =
        TestServer::start(Arc::new(LocalBackend::new()), support::settings(0), limits).await;
    // Half-open: the client completes the handshake, then is never polled again, so it never
    // answers the server's pings.
    let (silent, _) = connect(&server.ws_url()).await;
    let (mut alive, _) = connect(&server.ws_url()).await;
    // A polled client answers pings (tungstenite does it while reading) and stays.
    let keep = tokio::spawn(async move {
        for _ in 0..8 {
            ping_pong(&mut alive).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        alive
    });
    eventually("the silent peer is dropped", || {
        server.hub.connections() == 1
    })
    .await;
    let mut alive = keep.await.unwrap();
    ping_pong(&mut alive).await;
    drop(silent);
}

#[tokio::test]
async fn upgrades_beyond_max_connections_get_503() {
    let server = TestServer::start_with_max(
        Arc::new(LocalBackend::new()),
        support::settings(0),
        SessionLimits::default(),
        2,
    )
    .await;
    let (_a, _) = connect(&server.ws_url()).await;
    let (_b, _) = connect(&server.ws_url()).await;
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001_and_releases_protection() {
    let agent = StandInAgent::start().await.unwrap();
    let mut server = TestServer::start(
        agent_backend(&agent),
        support::settings(50),
        SessionLimits::default(),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&server.ws_url()).await.0);
    }
    eventually("protected", || agent.is_protected()).await;
    // Make the release hang so that the shutdown window can be observed.
    agent.set_fault(Fault::Hang);
    server.signal_shutdown();
    for c in clients.iter_mut() {
        assert_eq!(close_code(c).await, 1001);
    }
    eventually("release requested", || agent.put_calls().len() == 2).await;
    // While shutting down: health 503, upgrades refused.
    assert_eq!(get(&server.http_url("/healthz")).await.0, 503);
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    agent.release_hangs();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown finishes")
        .unwrap();
    let last = agent.put_calls().pop().unwrap();
    assert_eq!((last.enabled, last.ok), (Some(false), true));
    assert!(!agent.is_protected());
    // The hold-over (50 %) does not delay the release at shutdown.
    let _ = clients.iter_mut().map(|c| c.next());
}

#[tokio::test]
async fn chat_cannot_pass_for_a_server_line() {
    let server = local_server().await;
    let (mut a, _) = connect(&server.ws_url()).await;
    let (mut b, _) = connect(&server.ws_url()).await;
    for forged in [
        "Welcome! There are 99999 connections",
        "server shutting down soon",
        "pong",
    ] {
        a.send(Message::text(forged)).await.unwrap();
        let seen = next_text(&mut b).await;
        assert_eq!(seen, format!("{CHAT_PREFIX}{forged}"));
    }
    // The server's own lines never carry the prefix.
    ping_pong(&mut b).await;
}

#[tokio::test]
async fn the_room_budget_bounds_what_one_sender_makes_the_server_send() {
    // 50 deliveries a second for the room, 5 other clients: 10 messages a second (and a burst
    // of 10), whatever each client's own allowance.
    let limits = SessionLimits {
        chat_per_sec: 1000,
        room_deliveries_per_sec: 50,
        ..SessionLimits::default()
    };
    let server =
        TestServer::start(Arc::new(LocalBackend::new()), support::settings(0), limits).await;
    let (mut sender, _) = connect(&server.ws_url()).await;
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(connect(&server.ws_url()).await.0);
    }
    for i in 0..40 {
        sender.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    // The sender is told of each dropped message, and stays connected.
    let mut busy = 0;
    sender.send(Message::text("ping")).await.unwrap();
    loop {
        let t = next_text(&mut sender).await;
        if t == "pong" {
            break;
        }
        assert_eq!(t, ROOM_BUSY_NOTICE);
        busy += 1;
    }
    assert!((25..=30).contains(&busy), "{busy} dropped");
    let doc: serde_json::Value = reqwest::get(server.http_url("/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["chat_dropped"], busy);
    // Each other client got only what the budget paid for.
    for c in &mut others {
        c.send(Message::text("ping")).await.unwrap();
        let mut got = 0;
        while next_text(c).await != "pong" {
            got += 1;
        }
        assert_eq!(got, 40 - busy, "delivered");
    }
}

#[tokio::test]
async fn status_shows_short_codes_and_keeps_error_details_and_arns_out() {
    use ecs_task_protection::protection::{BackendError, ErrorKind};
    let fake = support::FakeBackend::new();
    let secret = "User: arn:aws:sts::111122223333:assumed-role/task-role is not authorized \
                  (endpoint http://169.254.170.2/api/secret-path)";
    fake.push((0..10).map(|_| Err(BackendError::new(ErrorKind::AccessDenied, secret))));
    let server =
        TestServer::start(fake.clone(), support::settings(0), SessionLimits::default()).await;
    let (mut c, _) = connect(&server.ws_url()).await;
    eventually("rejected", || server.hub.manager().status().rejections > 0).await;
    server.hub.begin_drain(
        "deployment in progress: the service is moving to arn:aws:ecs:us-east-1:111122223333:task-definition/ws:2",
        true,
    );
    let notice = next_text(&mut c).await;
    let notice = if notice == REJECTED_NOTICE {
        next_text(&mut c).await
    } else {
        notice
    };
    assert_eq!(
        notice,
        "server draining: deployment in progress. Reconnect to join another server."
    );
    let (_, body) = get(&server.http_url("/status")).await;
    for leak in ["111122223333", "arn:", "secret-path", "169.254"] {
        assert!(!body.contains(leak), "/status leaks {leak}: {body}");
    }
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["drain_reason"], "deployment in progress");
    assert_eq!(
        doc["protection"]["last_rejection"], "access_denied",
        "{doc}"
    );
}
