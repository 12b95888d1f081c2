//! Clients that misbehave on purpose, at the TCP and HTTP level: slow or idle sockets, floods of
//! connections that never upgrade, a client that never reads, and what a client sees when the
//! server closes it for cause.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ecs_task_protection::protection::local::LocalBackend;
use futures_util::{SinkExt, StreamExt};
use support::{within, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use websocket_server::server::{HttpLimits, SessionLimits};

async fn server_with(http: HttpLimits, limits: SessionLimits) -> TestServer {
    TestServer::start_with_http(
        Arc::new(LocalBackend::new()),
        support::settings(0),
        limits,
        10_000,
        http,
    )
    .await
}

async fn status(server: &TestServer) -> serde_json::Value {
    reqwest::get(server.http_url("/status"))
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// Waits until the server closes `stream`: a read returns end of file or an error.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_sockets_are_closed_after_the_header_read_timeout() {
    // The kept-alive connection's idle wait has a timeout of its own since issue 20 (75 s by
    // default, see the next test): set to 1 s here too.
    let server = server_with(
        HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            ..HttpLimits::DEFAULT
        },
        SessionLimits::default(),
    )
    .await;
    // Slowloris: a request head that never ends.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    // An idle socket that never sends a byte.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    // A kept-alive connection that sends no second request.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    within("slowloris closed", closed_by_server(&mut slow)).await;
    within("idle socket closed", closed_by_server(&mut idle)).await;
    within("kept-alive socket closed", closed_by_server(&mut kept)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(status(&server).await["http_connections"], 1); // the status request itself
}

/// Sends `GET /healthz` on `stream` and reads the whole answer; `true` for a 200.
async fn health_on(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer.starts_with(b"HTTP/1.1 200")
}

/// How long after `since` the server closes `stream` (on the runtime's clock).
fn time_to_close(mut stream: TcpStream, since: Instant) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        closed_by_server(&mut stream).await;
        since.elapsed()
    })
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_idle_65_s_still_answers_while_slow_headers_are_cut_at_10_s() {
    // The defaults: a 10 s header-read timeout, a 75 s keep-alive idle timeout (above the ALB's
    // 60 s idle timeout). On tokio's paused clock.
    let server = server_with(HttpLimits::DEFAULT, SessionLimits::default()).await;
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    assert!(health_on(&mut kept).await, "first request");
    let mut kept_then_slow = TcpStream::connect(server.addr).await.unwrap();
    assert!(health_on(&mut kept_then_slow).await, "first request");
    let start = Instant::now();
    // Slowloris on a fresh connection: a request head that never ends.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let slow = time_to_close(slow, start);
    // An idle socket that never sends a byte.
    let idle = time_to_close(TcpStream::connect(server.addr).await.unwrap(), start);

    // A kept-alive connection that starts its next request after 30 s and never finishes it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    kept_then_slow
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let kept_then_slow = time_to_close(kept_then_slow, Instant::now());

    tokio::time::sleep_until(start + Duration::from_secs(65)).await;
    // Idle for 65 s: longer than the header-read timeout and the ALB's idle timeout, and the
    // connection still answers.
    assert!(health_on(&mut kept).await, "a request after 65 s idle");
    // The header-read timeout still cut the slow head, the silent socket and the slow second
    // request (counted from its first byte, not from the end of the first answer).
    for (what, closed) in [
        ("slowloris", slow),
        ("idle socket", idle),
        ("slow second request", kept_then_slow),
    ] {
        let after = closed.await.unwrap();
        assert!(
            after >= Duration::from_secs(10) && after < Duration::from_secs(12),
            "{what} closed after {after:?}"
        );
    }
    // And the kept-alive connection is closed once idle for the idle timeout.
    let idle_since = Instant::now();
    let after = time_to_close(kept, idle_since).await.unwrap();
    assert!(
        after >= Duration::from_secs(75) && after < Duration::from_secs(77),
        "kept-alive connection closed after {after:?} idle"
    );
}

#[tokio::test]
async fn past_the_cap_the_oldest_connection_that_has_not_upgraded_makes_room() {
    let server = server_with(
        HttpLimits {
            max_pending: 5,
            ..HttpLimits::DEFAULT
        },
        SessionLimits::default(),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Once they are old enough to be idle (a second), the oldest 15 are closed to get back to the
    // cap of 5; health still answers.
    within("the oldest closed", closed_by_server(&mut idle[0])).await;
    within("the 15th closed", closed_by_server(&mut idle[14])).await;
    let health = reqwest::get(server.http_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let doc = status(&server).await;
    let open = doc["http_connections"].as_u64().unwrap();
    assert!(open <= 6, "{doc}");
    // The 5 youngest were kept.
    let mut byte = [0u8; 1];
    let kept = tokio::time::timeout(Duration::from_millis(100), idle[19].read(&mut byte)).await;
    assert!(kept.is_err(), "the youngest is still open");
    // A WebSocket is not counted once it has upgraded.
    let (_ws, _) = support::connect(&server.ws_url()).await;
    assert_eq!(status(&server).await["connections"], 1);
}

#[tokio::test]
async fn http2_by_prior_knowledge_is_not_served() {
    let server = server_with(HttpLimits::DEFAULT, SessionLimits::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within("answer", s.read_to_end(&mut answer)).await;
    // An HTTP/2 server answers with a SETTINGS frame (type 4 in the fourth byte).
    assert!(
        answer.len() < 9 || answer[3] != 4 || answer.starts_with(b"HTTP/1.1"),
        "{answer:?}"
    );
}

/// Opens a WebSocket over raw TCP (so the test controls every byte) with a small receive buffer.
async fn raw_websocket(server: &TestServer) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s
}

#[tokio::test]
async fn a_client_that_sends_pings_and_never_reads_is_dropped_after_the_write_timeout() {
    let server = server_with(
        HttpLimits::DEFAULT,
        SessionLimits {
            write_timeout: Duration::from_secs(1),
            ..SessionLimits::default()
        },
    )
    .await;
    let mut s = raw_websocket(&server).await;
    support::eventually("connected", || server.hub.connections() == 1).await;
    // 1,500 pings with 125-byte payloads (masked with a zero key): 190 KB of pongs owed. The
    // server holds at most a few KiB of them (its write buffer), and once the socket takes no
    // more for the write timeout the client is dropped; the 256 KiB buffer it had before held
    // them all without complaint.
    let mut frame = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    frame.extend(std::iter::repeat_n(b'p', 125));
    for _ in 0..1500 {
        if s.write_all(&frame).await.is_err() {
            break; // dropped already
        }
    }
    within("dropped", async {
        while server.hub.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn clients_closed_for_cause_receive_the_close_code_not_a_reset() {
    let server = server_with(
        HttpLimits::DEFAULT,
        SessionLimits {
            chat_per_sec: 5,
            ..SessionLimits::default()
        },
    )
    .await;
    let url = server.ws_url();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            let _welcome = ws.next().await;
            if i % 2 == 0 {
                // Larger than MAX_MESSAGE_BYTES (4096), sent in one go: 1009.
                let _ = ws.send(Message::text("x".repeat(64 * 1024))).await;
            } else {
                // A chat flood past the client's budget: 1008.
                for _ in 0..200 {
                    if ws.send(Message::text("flood")).await.is_err() {
                        break;
                    }
                }
            }
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => return Ok(u16::from(frame.code)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed without a close frame".to_string()),
                }
            }
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let seen = within("close", task).await.unwrap();
        let want = if i % 2 == 0 { 1009 } else { 1008 };
        assert_eq!(seen, Ok(want), "client {i}");
    }
}

/// The HTTP status of a WebSocket handshake sent with this `Origin` (none if `None`).
async fn handshake_with_origin(server: &TestServer, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws_url().into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn a_foreign_web_page_cannot_open_a_websocket_by_default() {
    let server = server_with(HttpLimits::DEFAULT, SessionLimits::default()).await;
    let own = format!("http://{}", server.addr);
    assert_eq!(handshake_with_origin(&server, Some(&own)).await, 101);
    assert_eq!(
        handshake_with_origin(&server, None).await,
        101,
        "not a browser"
    );
    assert_eq!(
        handshake_with_origin(&server, Some("https://evil.example")).await,
        403
    );
    assert_eq!(server.hub.connections(), 0);

    let listed = server_with(
        HttpLimits {
            allowed_origins: "https://game.example".parse().unwrap(),
            ..HttpLimits::DEFAULT
        },
        SessionLimits::default(),
    )
    .await;
    assert_eq!(
        handshake_with_origin(&listed, Some("https://game.example")).await,
        101
    );
    let own = format!("http://{}", listed.addr);
    assert_eq!(handshake_with_origin(&listed, Some(&own)).await, 403);
}

#[tokio::test]
async fn a_storm_of_players_connecting_at_once_is_not_cut_by_the_cap() {
    // 300 WebSocket handshakes at once against a cap of 20 connections that have not upgraded:
    // none is old enough to count as idle, so all of them upgrade.
    let server = server_with(
        HttpLimits {
            max_pending: 20,
            ..HttpLimits::DEFAULT
        },
        SessionLimits::default(),
    )
    .await;
    let url = server.ws_url();
    let clients = futures_util::future::join_all(
        (0..300).map(|_| tokio_tungstenite::connect_async(url.clone())),
    )
    .await;
    let failed = clients.iter().filter(|c| c.is_err()).count();
    assert_eq!(failed, 0, "handshakes cut by the cap");
    support::eventually("all 300 counted", || server.hub.connections() == 300).await;
}
