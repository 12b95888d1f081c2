//! The tower layer on a real axum service over real TCP: protection is wanted exactly while a
//! request is in flight, through a streaming response body, and concurrent requests share one
//! protect call.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::routing::get;
use axum::Router;
use ecs_task_protection::layer::ProtectionLayer;
use ecs_task_protection::protection::{local::LocalBackend, ProtectionManager, Settings};
use support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex};

/// A manager on the local backend that releases as soon as nothing holds it (no hold-over).
fn manager() -> ProtectionManager {
    let settings = Settings::default().with_maintain_percent(0);
    ProtectionManager::start(Arc::new(LocalBackend::new()), settings).unwrap()
}

/// What the test's handlers wait on.
struct Gates {
    /// `/slow` answers once this is `true`.
    slow: watch::Sender<bool>,
    /// `/stream`'s body takes its chunks from here (the test keeps the sender).
    chunks: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

/// Serves `/slow` and `/stream` behind the layer on a free loopback port.
async fn serve(manager: &ProtectionManager, gates: Arc<Gates>) -> std::net::SocketAddr {
    let slow_gates = Arc::clone(&gates);
    let app = Router::new()
        .route(
            "/slow",
            get(move || async move {
                let _ = slow_gates.slow.subscribe().wait_for(|open| *open).await;
                "done"
            }),
        )
        .route(
            "/stream",
            get(move || async move {
                let rx = gates.chunks.lock().await.take().expect("one stream");
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                });
                Body::from_stream(stream)
            }),
        )
        .layer(ProtectionLayer::new(manager.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `GET path` on a new connection (the server closes it after the response).
async fn request(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads until `needle` has arrived; returns everything read.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the response arrives")
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn gates() -> (Arc<Gates>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(4);
    let gates = Arc::new(Gates {
        slow: watch::channel(false).0,
        chunks: Mutex::new(Some(rx)),
    });
    (gates, tx)
}

#[tokio::test]
async fn protection_is_held_while_requests_are_in_flight_and_shared_by_them() {
    let manager = manager();
    let (gates, _chunks) = gates();
    let addr = serve(&manager, Arc::clone(&gates)).await;
    assert!(!manager.status().wanted);

    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(request(addr, "/slow").await);
    }
    eventually("protected while 10 requests wait", || {
        manager.status().state == ecs_task_protection::protection::StateLabel::Protected
    })
    .await;
    assert!(manager.status().wanted);

    gates.slow.send_replace(true);
    for client in &mut clients {
        read_until(client, "done").await;
    }
    eventually("released once every response is out", || {
        !manager.status().wanted
            && manager.status().state == ecs_task_protection::protection::StateLabel::Unprotected
    })
    .await;
    let status = manager.status();
    assert_eq!(
        status.calls_made, 3,
        "one read at start-up, one protect for 10 requests, one release: {status:?}"
    );
}

/// A manager, and a client whose `/stream` response has begun (its first chunk read); the sender
/// gives the rest of the body.
async fn streaming() -> (ProtectionManager, TcpStream, mpsc::Sender<Bytes>) {
    let manager = manager();
    let (gates, chunks) = gates();
    let addr = serve(&manager, gates).await;
    let mut client = request(addr, "/stream").await;
    chunks
        .send(Bytes::from_static(b"first-chunk"))
        .await
        .unwrap();
    read_until(&mut client, "first-chunk").await;
    (manager, client, chunks)
}

#[tokio::test]
async fn a_streaming_response_holds_protection_until_its_last_chunk() {
    let (manager, mut client, chunks) = streaming().await;
    // The handler has returned; the body is still streaming.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(manager.status().wanted, "released mid-stream");

    chunks
        .send(Bytes::from_static(b"last-chunk"))
        .await
        .unwrap();
    drop(chunks);
    read_until(&mut client, "last-chunk").await;
    eventually("released after the last chunk", || !manager.status().wanted).await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_releases_its_hold() {
    let (manager, client, chunks) = streaming().await;
    assert!(manager.status().wanted);
    drop(client);
    // The server notices the closed connection when it next writes.
    let _ = chunks.send(Bytes::from_static(b"more")).await;
    eventually("released when the client left", || !manager.status().wanted).await;
}
