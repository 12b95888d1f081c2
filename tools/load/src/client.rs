//! Clients: each connection is one task that keeps reading (so it answers the server's pings and
//! counts notices) and takes commands.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;
use crate::Common;

/// What the server tells every client once when ECS rejects protection.
const NOTICE: &str = websocket_server::server::REJECTED_NOTICE;

type Ws = WebSocketStream<TcpStream>;

pub(crate) enum Cmd {
    /// Send "ping", wait for "pong": the round-trip time, or `None`.
    Ping(oneshot::Sender<Option<Duration>>),
    /// Closed loop of ping→pong; latencies (µs) of round trips started in `[measure_from, end)`.
    Loop {
        measure_from: Instant,
        end: Instant,
        reply: oneshot::Sender<(Vec<u32>, u32)>,
    },
    /// Close (close frame, wait for the server's) and end.
    Close(oneshot::Sender<bool>),
}

#[derive(Default)]
pub(crate) struct ClientState {
    pub(crate) notices: AtomicU32,
    pub(crate) closed: AtomicBool,
}

pub(crate) struct Client {
    pub(crate) tx: mpsc::Sender<Cmd>,
    pub(crate) state: Arc<ClientState>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn ping(&self) -> Option<Duration> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Ping(reply)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Asks for a close; the answer arrives on the receiver.
    async fn close(&self) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Close(reply)).await;
        rx
    }
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn client_config(common: &Common) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(common.client_read_buffer.max(256))
        .write_buffer_size(0)
}

/// Connects and waits for the welcome.
pub(crate) async fn connect(
    addr: SocketAddr,
    url: &str,
    config: WebSocketConfig,
) -> Result<(Ws, String), String> {
    timeout(ANSWER_TIMEOUT, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok((ws, t.to_string())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("before welcome: {e}")),
                None => return Err("closed before welcome".into()),
            }
        }
    })
    .await
    .map_err(|_| "no welcome within 30 s".to_string())?
}

pub(crate) fn spawn_client(ws: Ws) -> Client {
    let (tx, rx) = mpsc::channel(2);
    let state = Arc::new(ClientState::default());
    let task = tokio::spawn(client_task(ws, rx, Arc::clone(&state)));
    Client { tx, state, task }
}

async fn client_task(mut ws: Ws, mut rx: mpsc::Receiver<Cmd>, state: Arc<ClientState>) {
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => {
                    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                    break;
                }
                Some(Cmd::Ping(reply)) => {
                    let r = round_trip(&mut ws, &state).await;
                    let ok = r.is_some();
                    let _ = reply.send(r);
                    if !ok {
                        break;
                    }
                }
                Some(Cmd::Loop { measure_from, end, reply }) => {
                    let mut lat = Vec::with_capacity(256);
                    let mut errors = 0;
                    while Instant::now() < end {
                        let start = Instant::now();
                        match round_trip(&mut ws, &state).await {
                            Some(d) if start >= measure_from => lat.push(d.as_micros().min(u32::MAX as u128) as u32),
                            Some(_) => {}
                            None => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                    let failed = errors > 0;
                    let _ = reply.send((lat, errors));
                    if failed {
                        break;
                    }
                }
                Some(Cmd::Close(reply)) => {
                    let ok = timeout(Duration::from_secs(10), async {
                        if ws.close(None).await.is_err() {
                            return false;
                        }
                        // Read until the server's close frame or the end of the stream.
                        while let Some(m) = ws.next().await {
                            match m {
                                Ok(Message::Text(t)) => note(&state, &t),
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        true
                    })
                    .await
                    .unwrap_or(false);
                    state.closed.store(true, Ordering::Release);
                    let _ = reply.send(ok);
                    return;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => note(&state, &t),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
    state.closed.store(true, Ordering::Release);
}

fn note(state: &ClientState, text: &str) {
    if text == NOTICE {
        state.notices.fetch_add(1, Ordering::Relaxed);
    }
}

/// "ping" → "pong", counting notices seen on the way.
async fn round_trip(ws: &mut Ws, state: &ClientState) -> Option<Duration> {
    let start = Instant::now();
    ws.send(Message::text("ping")).await.ok()?;
    timeout(ANSWER_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "pong" => return Some(start.elapsed()),
                Some(Ok(Message::Text(t))) => note(state, &t),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Opens `n` clients, `concurrency` at a time; the clients and the failures (first few reasons).
pub(crate) async fn open_clients(
    target: &Target,
    common: &Common,
    n: usize,
    concurrency: usize,
) -> (Vec<Client>, usize, Vec<String>) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let config = client_config(common);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let sem = Arc::clone(&sem);
        let url = target.ws_url.clone();
        let addr = target.addr;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            Some(
                connect(addr, &url, config)
                    .await
                    .map(|(ws, _)| spawn_client(ws)),
            )
        });
    }
    collect_clients(set).await
}

pub(crate) async fn collect_clients(
    mut set: tokio::task::JoinSet<Option<Result<Client, String>>>,
) -> (Vec<Client>, usize, Vec<String>) {
    let mut clients = Vec::new();
    let mut failures = 0;
    let mut reasons = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Some(Ok(c))) => clients.push(c),
            Ok(Some(Err(e))) => {
                failures += 1;
                if reasons.len() < 5 {
                    reasons.push(e);
                }
            }
            _ => failures += 1,
        }
    }
    (clients, failures, reasons)
}

/// Pings every client (all at once); how many answered.
pub(crate) async fn ping_all(clients: &[Client]) -> (usize, Vec<u32>) {
    let results = futures_util::future::join_all(clients.iter().map(|c| c.ping())).await;
    let lat: Vec<u32> = results
        .iter()
        .flatten()
        .map(|d| d.as_micros() as u32)
        .collect();
    (lat.len(), lat)
}

/// Closes every client (all at once); how many closed cleanly.
pub(crate) async fn close_all(clients: Vec<Client>) -> usize {
    let mut waits = Vec::with_capacity(clients.len());
    for c in &clients {
        waits.push(c.close().await);
    }
    let clean = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    for c in clients {
        c.task.abort();
    }
    clean
}
