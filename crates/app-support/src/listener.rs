//! The HTTP side of every listener of a process: the accept loop and each connection until it
//! upgrades to a WebSocket or ends. The server's public port, its Prometheus port and the queue
//! consumer's status port all go through it, sharing one [`HttpPool`].
//!
//! What it adds to a plain `axum::serve`:
//!
//! * **HTTP/1.1 only.** The load balancer speaks HTTP/1.1 to its targets, and WebSockets upgrade
//!   over HTTP/1.1; HTTP/2 by prior knowledge on a plain port is not offered.
//! * **A header-read timeout** (`HTTP_HEADER_TIMEOUT_SECS`): a request's head must arrive within
//!   it, counted from the connection's start for its first request and from the first byte of
//!   each later one. A socket that never sends a request is closed after it too.
//! * **A keep-alive idle timeout** (`HTTP_IDLE_TIMEOUT_SECS`, 75 s): how long a kept-alive
//!   connection may wait between a response and the next request. Longer than the load
//!   balancer's own idle timeout (60 s), as AWS asks of targets: a target that closes an idle
//!   connection first races the load balancer's next request on it, which the client sees as a
//!   502.
//! * **A small header buffer** (16 KiB instead of hyper's ~400 KiB), so an unfinished header
//!   costs little.
//! * **A cap on connections that have not upgraded** (`MAX_HTTP_CONNECTIONS`), across every
//!   listener of the pool and counted in `/status`: past it, the oldest such connection that is at
//!   least a second old is closed to make room (a storm of players connecting at once is left
//!   alone). Whenever `accept` fails for want of file descriptors, the oldest is closed whatever
//!   its age: the main port's accept takes it from any port, a side port's (metrics, status)
//!   only from its own. A flood of idle sockets, on any port, therefore cannot keep the load
//!   balancer's health check (a new connection) from being answered, and a flood on a side port
//!   cannot close the main port's connections.
//! * **A bounded send buffer** per connection (`SO_SNDBUF` 32 KiB), so a client that stops
//!   reading pins little kernel memory before the write timeout drops it.
//! * **A lingering close.** When a connection ends, the server sends FIN and reads (and drops)
//!   what the peer still sends for a moment before closing the socket. Closing a socket with
//!   unread input makes the kernel send a TCP reset, which can destroy the close frame the peer has
//!   not read yet (RFC 6455 §7.1.1: the server closes the TCP connection first, cleanly).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::origin::AllowedOrigins;
use crate::throttle::Throttle;

/// Limits of the HTTP side, and who may upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// The longest a client may take to send a request's headers: counted from the connection's
    /// start for its first request (so a socket that sends nothing is closed after it), and from
    /// the first byte of the request for the later ones on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// The longest a kept-alive connection may sit idle between a response and the next request.
    /// Keep it above the load balancer's idle timeout (60 s by default).
    pub idle_timeout: Duration,
    /// The most connections that have not upgraded to a WebSocket at once, across every listener
    /// of the pool; past it the oldest is closed.
    pub max_pending: usize,
    /// The web pages that may open a WebSocket (browsers' `Origin`), where a listener upgrades.
    pub allowed_origins: AllowedOrigins,
}

impl HttpLimits {
    /// The defaults (also the defaults of the settings in `config`).
    pub const DEFAULT: HttpLimits = HttpLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_pending: 1000,
        allowed_origins: AllowedOrigins::SameHost,
    };
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The largest request head the server reads (hyper's smallest allowed buffer is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The kernel send buffer of each connection (Linux doubles it, and stops growing it on its
/// own). Plenty for chat; and a client that stops reading pins at most this much kernel memory
/// (counted in the task's memory) before the write timeout drops it, not the 4 MiB the kernel's
/// autotuning may reach.
const SEND_BUFFER_BYTES: libc::c_int = 32 * 1024;

/// A connection that has not upgraded is closed to make room (past `MAX_HTTP_CONNECTIONS`) only
/// once it is this old: a handshake takes milliseconds, so an older one is idle or slow. Out of
/// file descriptors, the oldest goes whatever its age.
const GRACE: Duration = Duration::from_secs(1);

/// How often the connections over the cap are looked at when no new one arrives.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// How long a closing connection's input is read and dropped before the socket is closed.
const LINGER: Duration = Duration::from_secs(2);

/// The HTTP connections of a process that have not upgraded, whatever listener accepted them,
/// with the limits every listener applies: one cap on them, and one place to free a file
/// descriptor from when `accept` runs out. Cheap to clone.
#[derive(Clone)]
pub struct HttpPool {
    pending: Arc<Pending>,
    limits: Arc<HttpLimits>,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpPool {
    /// A pool with these limits. With `report`, each change of its count of connections that
    /// have not upgraded is reported (the server's `/status` and metrics show it as
    /// `http_connections`).
    pub fn new(limits: HttpLimits, report: Option<CountReport>) -> Self {
        Self {
            pending: Arc::new(Pending::new(report)),
            limits: Arc::new(limits),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Serves `router` on `listener` for as long as the process runs (a side port: metrics,
    /// status), as a critical task named `task` (see [`ecs_task_protection::supervise`]).
    pub fn spawn(
        &self,
        task: &'static str,
        listener: TcpListener,
        router: Router,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        ecs_task_protection::supervise::spawn(task, async move {
            pool.accept_loop(Port::Side, listener, router, std::future::pending())
                .await;
        })
    }

    /// Serves `router` on `listener` (the main port) until `stop` resolves; then closes the
    /// connections of the pool that have not upgraded (WebSocket sessions are the hub's to end).
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        stop: impl Future<Output = ()>,
    ) {
        self.accept_loop(Port::Main, listener, router, stop).await;
        while self.pending.evict_oldest(Port::Main) {}
    }

    /// The accept loop of one listener.
    async fn accept_loop(
        &self,
        port: Port,
        listener: TcpListener,
        router: Router,
        stop: impl Future<Output = ()>,
    ) {
        let pending = &self.pending;
        let limits = &*self.limits;
        let accept_failed = Throttle::new(Duration::from_secs(10));
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut stop => break,
                accepted = listener.accept() => accepted,
                _ = sweep.tick() => {
                    pending.trim(limits.max_pending, GRACE);
                    continue;
                }
            };
            match accepted {
                Ok((stream, _peer)) => {
                    // Make room, but only by closing connections old enough to be idle or slow: a
                    // storm of players connecting at once is many young handshakes, all wanted.
                    pending.trim(limits.max_pending.saturating_sub(1), GRACE);
                    // Registered here, not in the task, so that the count is right at the next
                    // accept.
                    let (id, evicted) = pending.register(port);
                    tokio::spawn(connection(
                        stream,
                        router.clone(),
                        Arc::clone(pending),
                        (id, evicted),
                        Timeouts {
                            header: limits.header_read_timeout,
                            idle: limits.idle_timeout,
                        },
                    ));
                }
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE) or buffers: free one by closing the
                    // oldest connection that has not upgraded, so the next accept (perhaps the
                    // load balancer's health check) can succeed. The main port takes it from any
                    // port; a side port only from its own, so that a flood there never closes the
                    // main port's connections before they are answered.
                    let evicted = pending.evict_oldest(port);
                    if let Some(suppressed) = accept_failed.allow() {
                        tracing::warn!(
                            "Cannot accept a connection: {e}{}{}",
                            if evicted {
                                "; closed the oldest connection that has not upgraded"
                            } else {
                                ""
                            },
                            Throttle::suppressed_note(suppressed)
                        );
                    }
                    // The main port tries again at once (once the closed connection's task has
                    // let its descriptor go); a side port leaves the main port time to take it.
                    let pause = match (port, evicted) {
                        (Port::Main, true) => 1,
                        _ => 50,
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }
}

/// Which kind of listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The server's public port (the only one the load balancer reaches).
    Main,
    /// The metrics or status port.
    Side,
}

/// A connection's two timeouts.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// One connection: HTTP/1.1 with upgrades, until it upgrades, ends, or is evicted.
async fn connection(
    stream: TcpStream,
    router: Router,
    pending: Arc<Pending>,
    (id, evicted): (u64, Arc<Notify>),
    timeouts: Timeouts,
) {
    let _ = stream.set_nodelay(true);
    set_send_buffer(&stream, SEND_BUFFER_BYTES);
    let flags = Arc::new(ConnFlags::default());
    let io = TokioIo::new(Lingering {
        stream: Some(stream),
        flags: Arc::clone(&flags),
    });
    let service = TowerToHyperService::new(router);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(HeadTimer {
        flags: Arc::clone(&flags),
        timeouts,
        heads: AtomicU32::new(0),
    })
    .header_read_timeout(timeouts.header)
    .max_buf_size(MAX_HEAD_BYTES);
    let served = http.serve_connection(io, service).with_upgrades();
    tokio::select! {
        // Ends when the connection closes, times out, or has been handed to a WebSocket session.
        _ = served => {}
        _ = evicted.notified() => {
            // Close at once: the point is to free the file descriptor now.
            flags.set(ABORT);
        }
    }
    pending.remove(id);
}

/// `ConnFlags`: close at once when dropped (evicted), rather than lingering.
const ABORT: u8 = 1;
/// `ConnFlags`: bytes have been read since the header timer was last armed.
const READ: u8 = 2;

/// What a connection's socket and its header timer share. One byte, in the allocation the
/// socket wrapper had anyway (an upgraded connection keeps it): no cost per connection.
#[derive(Debug, Default)]
struct ConnFlags(AtomicU8);

// An upgraded connection keeps its `Lingering` and with it this allocation: it must stay the size
// of the `AtomicBool` it replaced (BENCHMARKS.md counts the bytes per idle connection).
const _: () = assert!(std::mem::size_of::<ConnFlags>() == std::mem::size_of::<AtomicBool>());

impl ConnFlags {
    fn set(&self, flag: u8) {
        if self.0.load(Ordering::Acquire) & flag == 0 {
            self.0.fetch_or(flag, Ordering::AcqRel);
        }
    }

    fn clear(&self, flag: u8) {
        self.0.fetch_and(!flag, Ordering::AcqRel);
    }

    fn is_set(&self, flag: u8) -> bool {
        self.0.load(Ordering::Acquire) & flag != 0
    }
}

/// hyper's header-read timer, taught the difference between a kept-alive connection waiting for
/// its next request and a request whose head is arriving.
///
/// hyper (1.x) arms one timer whenever it starts reading a request head, including right after
/// the previous response on a kept-alive connection: on its own, `header_read_timeout` bounds
/// the idle wait between requests as well. This timer answers the first arming of a connection
/// (its first request) as asked, and each later one with the idle timeout until the first byte
/// of the next request is read, then with the header timeout from that byte on.
struct HeadTimer {
    flags: Arc<ConnFlags>,
    timeouts: Timeouts,
    /// How many request heads the timer was armed for.
    heads: AtomicU32,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep(duration)),
            idle: None,
        })
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        if self.heads.fetch_add(1, Ordering::AcqRel) == 0 {
            // The first request: its head is due `header` after the connection started, as a
            // socket that sends nothing at all is.
            return Box::pin(HeadSleep {
                sleep: Box::pin(tokio::time::sleep_until(Instant::from_std(deadline))),
                idle: None,
            });
        }
        // Between requests: idle until the first byte of the next one.
        self.flags.clear(READ);
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep(self.timeouts.idle)),
            idle: Some((Arc::clone(&self.flags), self.timeouts.header)),
        })
    }

    fn now(&self) -> std::time::Instant {
        // The runtime's clock, so that tests on tokio's paused clock see the same time.
        Instant::now().into_std()
    }
}

/// The timer [`HeadTimer`] hands hyper. While `idle` is set, the connection waits between
/// requests; the first byte read switches the deadline to the header timeout from then.
struct HeadSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    idle: Option<(Arc<ConnFlags>, Duration)>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // hyper polls this timer each time it finds a request head incomplete, so right after
        // the read that brought the first byte.
        if let Some((flags, header)) = &this.idle {
            if flags.is_set(READ) {
                let header = *header;
                this.idle = None;
                this.sleep.as_mut().reset(Instant::now() + header);
            }
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// Sets `SO_SNDBUF` (best effort: the default autotuning stays if the kernel refuses).
fn set_send_buffer(stream: &TcpStream, bytes: libc::c_int) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: setsockopt on a socket this stream owns, with a pointer to a live c_int and
        // its size; no memory is retained by the call.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::from_ref(&bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "setsockopt(SO_SNDBUF) failed: {}",
                io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (stream, bytes);
}

/// The connections that have not upgraded, by id (the accept order), each with its accept time
/// and a way to close it; and the next id.
type Registry = (u64, BTreeMap<u64, (Instant, Arc<Notify>, Port)>);

/// Where a pool reports its count of connections that have not upgraded, on each change.
pub type CountReport = Arc<dyn Fn(usize) + Send + Sync>;

/// The connections that have not upgraded, oldest first, each with a way to close it.
struct Pending {
    /// Where the count goes, if anywhere.
    report: Option<CountReport>,
    next: Mutex<Registry>,
}

impl Pending {
    fn new(report: Option<CountReport>) -> Self {
        Self {
            report,
            next: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// Reports the count `n`.
    fn report(&self, n: usize) {
        if let Some(report) = &self.report {
            report(n);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, port: Port) -> (u64, Arc<Notify>) {
        let notify = Arc::new(Notify::new());
        let mut guard = self.lock();
        let (next, map) = &mut *guard;
        let id = *next;
        *next += 1;
        map.insert(id, (Instant::now(), Arc::clone(&notify), port));
        self.report(map.len());
        (id, notify)
    }

    fn remove(&self, id: u64) {
        let mut guard = self.lock();
        guard.1.remove(&id);
        self.report(guard.1.len());
    }

    /// Closes the oldest connections that are at least `grace` old until at most `keep` are left.
    fn trim(&self, keep: usize, grace: Duration) {
        let mut guard = self.lock();
        let map = &mut guard.1;
        while map.len() > keep {
            match map.first_key_value() {
                Some((_, (since, _, _))) if since.elapsed() >= grace => {
                    if let Some((_, (_, notify, _))) = map.pop_first() {
                        notify.notify_one();
                    }
                }
                _ => break,
            }
        }
        self.report(map.len());
    }

    /// Closes the oldest connection, whatever its age: of any port for [`Port::Main`], of a side
    /// port for [`Port::Side`]. `false` if there is none.
    fn evict_oldest(&self, by: Port) -> bool {
        let mut guard = self.lock();
        let map = &mut guard.1;
        let oldest = match by {
            Port::Main => map.first_key_value().map(|(id, _)| *id),
            Port::Side => map
                .iter()
                .find(|(_, (_, _, port))| *port == Port::Side)
                .map(|(id, _)| *id),
        };
        match oldest.and_then(|id| map.remove(&id)) {
            Some((_, notify, _)) => {
                // `notify_one` keeps a permit if the connection is not waiting yet.
                notify.notify_one();
                self.report(guard.1.len());
                true
            }
            None => false,
        }
    }
}

/// Connections in their lingering close, across the process.
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Waits (at most `limit`) for the lingering closes to finish, so that the clients closed on
/// shutdown get a clean end of stream rather than a reset when the process exits.
pub async fn wait_for_lingering(limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        while LINGERING.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A TCP stream that closes the way RFC 6455 asks when dropped: FIN first, then the peer's
/// remaining input is read and dropped for up to [`LINGER`], then the socket is closed. Unless
/// it was evicted ([`ABORT`]): then it is closed at once.
struct Lingering {
    stream: Option<TcpStream>,
    /// Shared with the connection's header timer, which learns from [`READ`] that a request has
    /// begun.
    flags: Arc<ConnFlags>,
}

impl Lingering {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if self.flags.is_set(ABORT) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        LINGERING.fetch_add(1, Ordering::AcqRel);
        runtime.spawn(async move {
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            LINGERING.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.flags.set(READ);
        }
        read
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }
}
