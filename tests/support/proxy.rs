//! A pass-through HTTP proxy with an off switch, to put between a client and a real local service
//! (moto's SQS) and make that service fail for a while: every request is forwarded as it is, or,
//! while failing, answered HTTP 500 with an AWS JSON `InternalError` body; and one operation can
//! be denied (HTTP 400 `AccessDenied`, as IAM answers a role that lacks the action).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

struct Shared {
    upstream: String,
    client: reqwest::Client,
    failing: AtomicBool,
    failed: AtomicUsize,
    forwarded: AtomicUsize,
    /// The operation (`X-Amz-Target` after the `.`, e.g. `DeleteMessageBatch`) denied.
    denied: Mutex<Option<String>>,
}

/// The running proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            failing: AtomicBool::new(false),
            failed: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            denied: Mutex::new(None),
        });
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let stop = ecs_stand_in::serve_until_dropped(listener, app);
        Self {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// The URL to give clients instead of the upstream's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails every following request (`true`) or forwards them again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Denies every following call of `operation` (e.g. `DeleteMessageBatch`), or none.
    pub fn deny(&self, operation: Option<&str>) {
        *self.shared.denied.lock().unwrap() = operation.map(str::to_string);
    }

    /// How many requests were forwarded.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// How many requests were answered with a failure.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.failing.load(Ordering::SeqCst) {
        shared.failed.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"__type":"InternalError","message":"stand-in outage"}"#;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/x-amz-json-1.0")],
            body,
        )
            .into_response();
    }
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .map(str::to_string);
    let denied = shared.denied.lock().unwrap().clone();
    if denied.is_some() && operation == denied {
        shared.failed.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            r#"{{"__type":"com.amazon.coral.service#AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/task/stand-in is not authorized to perform: sqs:{}"}}"#,
            operation.unwrap_or_default()
        );
        return (
            StatusCode::BAD_REQUEST,
            [
                ("content-type", "application/x-amz-json-1.0"),
                ("x-amzn-query-error", "AccessDenied;Sender"),
            ],
            body,
        )
            .into_response();
    }
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = shared
        .client
        .request(method, format!("{}{path}", shared.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut out = HeaderMap::new();
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                    out.insert(name, value.clone());
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
