//! The fleet's front door: a small TCP round-robin entrance over the tasks registered with it,
//! standing in for the service's load balancer, so that a browser, WebSocket clients and the
//! load tool can connect to "the service".
//!
//! Each new connection goes to the next registered task in turn (a WebSocket is one long
//! request, so round-robin per connection is what an ALB does for it). A task that is
//! deregistered gets no new connection, but the connections it has are never cut by the front
//! door: they last until the task closes them or its process ends (as an ALB keeps them until the
//! target stops). With no task registered, a connection is answered `HTTP/1.1 503` (the ALB's
//! answer with no healthy target) and closed; a task that refuses the connection is skipped for
//! the next one, and `502` is answered when every one refuses.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How long connecting to a task may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One registered task.
#[derive(Debug, Clone)]
struct Target {
    id: String,
    addr: SocketAddr,
}

/// What the front door shares with its accept loop.
#[derive(Debug, Default)]
struct State {
    /// The registered tasks, in registration order.
    targets: Vec<Target>,
    /// The index of the next target to use.
    next: usize,
    /// Connections handed to each task so far.
    routed: BTreeMap<String, u64>,
    /// Connections open now through each task.
    open: BTreeMap<String, u64>,
    /// The task each open connection went to, by the client's address.
    peers: HashMap<SocketAddr, String>,
}

/// The running front door. Dropping it stops accepting (open connections go on).
#[derive(Debug)]
pub(crate) struct FrontDoor {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FrontDoor {
    /// Listens on `addr` and serves in a task of its own.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers task `id` at `addr`: it gets new connections from now on.
    pub fn register(&self, id: &str, addr: SocketAddr) {
        let mut state = lock(&self.state);
        state.targets.retain(|t| t.id != id);
        state.targets.push(Target {
            id: id.to_string(),
            addr,
        });
    }

    /// Deregisters task `id`: no new connection goes to it; the open ones go on.
    pub fn deregister(&self, id: &str) {
        lock(&self.state).targets.retain(|t| t.id != id);
    }

    /// The registered tasks' IDs, in registration order.
    pub fn registered(&self) -> Vec<String> {
        lock(&self.state)
            .targets
            .iter()
            .map(|t| t.id.clone())
            .collect()
    }

    /// How many connections each task has been handed so far.
    pub fn routed(&self) -> BTreeMap<String, u64> {
        lock(&self.state).routed.clone()
    }

    /// How many connections are open through each task now.
    pub fn open(&self) -> BTreeMap<String, u64> {
        lock(&self.state).open.clone()
    }

    /// The task the open connection from `client` (the client's own address) went to.
    pub fn routed_to(&self, client: SocketAddr) -> Option<String> {
        lock(&self.state).peers.get(&client).cloned()
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors and the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve(client, Arc::clone(&state)));
    }
}

/// The targets to try for one connection: every registered one, starting with the next in turn.
fn candidates(state: &Mutex<State>) -> Vec<Target> {
    let mut state = lock(state);
    let n = state.targets.len();
    if n == 0 {
        return Vec::new();
    }
    let start = state.next % n;
    state.next = (start + 1) % n;
    (0..n)
        .map(|i| state.targets[(start + i) % n].clone())
        .collect()
}

async fn serve(mut client: TcpStream, state: Arc<Mutex<State>>) {
    let peer = client.peer_addr().ok();
    let targets = candidates(&state);
    if targets.is_empty() {
        let _ = client
            .write_all(&plain_answer(
                "503 Service Unavailable",
                "no task is registered\n",
            ))
            .await;
        return;
    }
    for target in targets {
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await;
        let Ok(Ok(mut upstream)) = connected else {
            continue;
        };
        {
            let mut state = lock(&state);
            *state.routed.entry(target.id.clone()).or_default() += 1;
            *state.open.entry(target.id.clone()).or_default() += 1;
            if let Some(peer) = peer {
                state.peers.insert(peer, target.id.clone());
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        let mut state = lock(&state);
        if let Some(n) = state.open.get_mut(&target.id) {
            *n = n.saturating_sub(1);
        }
        if let Some(peer) = peer {
            state.peers.remove(&peer);
        }
        return;
    }
    let _ = client
        .write_all(&plain_answer(
            "502 Bad Gateway",
            "no task took the connection\n",
        ))
        .await;
}

/// A whole HTTP/1.1 answer with a plain-text body, closing the connection.
fn plain_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    //! Paced tests over real TCP: small servers that greet each connection with their name and
    //! then echo, standing in for tasks.
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    /// A server that answers every connection with `<name>\n`, then echoes each line.
    async fn named_server(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    if write
                        .write_all(format!("{name}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if write
                            .write_all(format!("{line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A connection through the front door, and the name of the task that greeted it.
    async fn connect(door: &FrontDoor) -> (BufReader<TcpStream>, String) {
        let stream = TcpStream::connect(door.addr()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut name = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut name))
            .await
            .expect("a greeting in time")
            .unwrap();
        (reader, name.trim().to_string())
    }

    async fn echo(conn: &mut BufReader<TcpStream>, text: &str) -> String {
        conn.get_mut()
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut line))
            .await
            .expect("an echo in time")
            .unwrap();
        line.trim().to_string()
    }

    #[tokio::test]
    async fn connections_are_spread_round_robin_over_the_registered_tasks() {
        let door = FrontDoor::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        for name in ["a", "b", "c"] {
            door.register(name, named_server(name).await);
        }
        let mut names = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..6 {
            // Paced: one connection at a time.
            let (conn, name) = connect(&door).await;
            names.push(name);
            conns.push(conn);
        }
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
        for (conn, name) in conns.iter().zip(&names) {
            let local = conn.get_ref().local_addr().unwrap();
            assert_eq!(door.routed_to(local).as_deref(), Some(name.as_str()));
        }
        assert_eq!(
            door.routed().values().copied().collect::<Vec<_>>(),
            [2, 2, 2]
        );
        assert_eq!(door.open().values().copied().collect::<Vec<_>>(), [2, 2, 2]);
    }

    #[tokio::test]
    async fn a_deregistered_task_gets_no_new_connection_and_keeps_the_ones_it_has() {
        let door = FrontDoor::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        door.register("a", named_server("a").await);
        door.register("b", named_server("b").await);
        let (mut on_a, name) = connect(&door).await;
        assert_eq!(name, "a");
        let (mut on_b, name) = connect(&door).await;
        assert_eq!(name, "b");

        door.deregister("a");
        assert_eq!(door.registered(), ["b"]);
        for _ in 0..4 {
            let (_conn, name) = connect(&door).await;
            assert_eq!(name, "b", "a deregistered task got a new connection");
        }
        // The connection made before the deregistration still works, both ways.
        assert_eq!(echo(&mut on_a, "still here").await, "still here");
        assert_eq!(echo(&mut on_b, "me too").await, "me too");
        assert_eq!(door.open().get("a"), Some(&1));
    }

    /// What the front door itself answers a new connection with, read until it closes it.
    async fn answer(door: &FrontDoor) -> String {
        let mut stream = TcpStream::connect(door.addr()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("the front door answers and closes")
            .unwrap();
        answer
    }

    #[tokio::test]
    async fn with_no_task_registered_the_answer_is_503_and_a_refusing_task_is_skipped() {
        let door = FrontDoor::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(answer(&door).await.starts_with("HTTP/1.1 503 "));

        // A task whose port refuses connections (its process ended): the next one takes it.
        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        door.register("gone", refused);
        door.register("b", named_server("b").await);
        for _ in 0..3 {
            assert_eq!(connect(&door).await.1, "b");
        }
        door.deregister("b");
        assert!(answer(&door).await.starts_with("HTTP/1.1 502 "));
    }
}
