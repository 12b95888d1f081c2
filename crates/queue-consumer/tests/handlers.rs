//! The job handlers any language can use, called directly with `Job::new(…)`: the command handler
//! with real child processes (shell and Python scripts written to a temporary directory), the HTTP
//! handler against a real local HTTP server (axum), and both against the examples in
//! `examples/jobs/`.
#![cfg(unix)]

use std::convert::Infallible;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use ecs_task_protection::worker::{CancelReason, Handler, Job, Outcome};
use queue_consumer::handlers::{CommandHandler, HttpHandler, JobCommand, JobUrl};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// What the tests share: the log, temporary directories, waits.

/// Everything logged by the handlers, as text: one subscriber for the whole test binary.
fn logs() -> String {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(log.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    });
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that contain `text`.
fn log_lines(text: &str) -> Vec<String> {
    logs()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

/// A directory of its own for a test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "queue-consumer-handlers-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes an executable script. Run it as `sh SCRIPT`: executing a file just written can fail
    /// with ETXTBSY while another test's thread forks (its child holds the file open for writing
    /// until it execs), which has nothing to do with the handler.
    fn script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.sync_all().unwrap();
        drop(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path(name)).ok()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` (real time) until it is true, failing after 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f`, failing the test after 10 s (real time).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// Whether a process is running (a zombie is not).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        // "pid (comm) STATE …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn command(words: &[&str], kill_after: Duration) -> CommandHandler {
    let words = words.iter().map(|w| w.to_string()).collect();
    CommandHandler::new(JobCommand::from_words(words).unwrap(), kill_after)
}

fn failed(outcome: Outcome) -> String {
    match outcome {
        Outcome::Failed(why) => why,
        other => panic!("not a failure: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The command handler.

/// Writes what the job saw to files in $1, and a line to stdout and to stderr.
const REPORTING_JOB: &str = r#"#!/bin/sh
cat > "$1/stdin"
printf '%s\n' "$JOB_MESSAGE_ID" "$JOB_RECEIVE_COUNT" "${JOB_GROUP_ID-unset}" > "$1/env"
printf '%s' "$PATH" > "$1/path"
echo "hello from stdout"
echo "something on stderr" >&2
printf 'no newline at the end'
exit 0
"#;

#[tokio::test]
async fn exit_0_is_done_with_the_body_on_stdin_and_the_job_in_the_environment() {
    logs();
    let dir = TempDir::new("done");
    let script = dir.script("job.sh", REPORTING_JOB);
    let handler = command(
        &["sh", script.to_str().unwrap(), dir.0.to_str().unwrap()],
        Duration::from_secs(5),
    );
    let body = "{\"text\": \"two words\"}\nand a second line, no newline at the end";
    let job = Job::new(body, "cmd-done-1")
        .with_receive_count(3)
        .with_group_id("group-7");
    assert_eq!(handler.handle(job).await, Outcome::Done);
    assert_eq!(
        dir.read("stdin").as_deref(),
        Some(body),
        "the body, exactly"
    );
    assert_eq!(
        dir.read("env").as_deref(),
        Some("cmd-done-1\n3\ngroup-7\n"),
        "JOB_MESSAGE_ID, JOB_RECEIVE_COUNT, JOB_GROUP_ID"
    );
    assert_eq!(
        dir.read("path"),
        std::env::var("PATH").ok(),
        "the worker's environment is passed on"
    );

    // No group: no JOB_GROUP_ID at all.
    let job = Job::new("x", "cmd-done-2");
    assert_eq!(handler.handle(job).await, Outcome::Done);
    assert_eq!(dir.read("env").as_deref(), Some("cmd-done-2\n1\nunset\n"));

    // Every line logged with the message ID: stdout at info, stderr at warn.
    let out = log_lines("cmd-done-1 - stdout: hello from stdout");
    assert_eq!(out.len(), 1, "{}", logs());
    assert!(out[0].contains(" INFO "), "{}", out[0]);
    let err = log_lines("cmd-done-1 - stderr: something on stderr");
    assert_eq!(err.len(), 1, "{}", logs());
    assert!(err[0].contains(" WARN "), "{}", err[0]);
    assert_eq!(
        log_lines("cmd-done-1 - stdout: no newline at the end").len(),
        1,
        "the last line without a newline is logged too"
    );
}

#[tokio::test]
async fn another_exit_status_is_a_failure_naming_it() {
    logs();
    let handler = command(
        &["sh", "-c", "echo 'it broke' >&2; exit 3"],
        Duration::from_secs(5),
    );
    let why = failed(handler.handle(Job::new("", "cmd-exit-3")).await);
    assert_eq!(why, "exited with status 3");
    assert_eq!(log_lines("cmd-exit-3 - stderr: it broke").len(), 1);
    let handler = command(&["sh", "-c", "kill -SEGV $$"], Duration::from_secs(5));
    let why = failed(handler.handle(Job::new("", "cmd-segv")).await);
    assert_eq!(why, "killed by signal 11 (SIGSEGV)");
}

#[tokio::test]
async fn a_program_that_cannot_start_fails_saying_why_logged_once() {
    logs();
    let dir = TempDir::new("missing");
    let missing = dir.path("no-such-job");
    let handler = command(&[missing.to_str().unwrap()], Duration::from_secs(5));
    for n in 0..3 {
        let why = failed(
            handler
                .handle(Job::new("", format!("cmd-missing-{n}")))
                .await,
        );
        assert!(
            why.starts_with(&format!("cannot start {}: not found", missing.display())),
            "{why}"
        );
    }
    let errors: Vec<_> = log_lines("cannot start")
        .into_iter()
        .filter(|l| l.contains(" ERROR ") && l.contains("no-such-job"))
        .collect();
    assert_eq!(errors.len(), 1, "logged once: {errors:?}");
    assert!(errors[0].contains("cmd-missing-0"), "{}", errors[0]);

    let not_executable = dir.path("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    let noexec = command(&[not_executable.to_str().unwrap()], Duration::from_secs(5));
    let why = failed(noexec.handle(Job::new("", "cmd-noexec")).await);
    assert!(why.ends_with("not executable (permission denied)"), "{why}");

    // The same handler works again once the program is there, and says so.
    std::fs::write(&missing, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        handler.handle(Job::new("", "cmd-back")).await,
        Outcome::Done
    );
    assert_eq!(
        log_lines(&format!("cmd-back - {} starts again", missing.display())).len(),
        1,
        "{}",
        logs()
    );
}

#[tokio::test]
async fn a_cancelled_jobs_child_gets_sigterm_and_the_job_fails() {
    logs();
    let dir = TempDir::new("sigterm");
    let script = dir.script(
        "job.sh",
        r#"#!/bin/sh
trap 'echo term > "$1/got-term"; exit 0' TERM
echo ready > "$1/ready"
while :; do sleep 0.05; done
"#,
    );
    let handler = Arc::new(command(
        &["sh", script.to_str().unwrap(), dir.0.to_str().unwrap()],
        Duration::from_secs(10),
    ));
    let (cancel, cancelled) = watch::channel(None);
    let job = Job::new("", "cmd-term").with_cancel(cancelled);
    let running = tokio::spawn({
        let handler = handler.clone();
        async move { handler.handle(job).await }
    });
    eventually("the job to start", || dir.read("ready").is_some()).await;
    let start = Instant::now();
    cancel.send(Some(CancelReason::Shutdown)).unwrap();
    let why = failed(within("the job to end", running).await.unwrap());
    assert_eq!(
        dir.read("got-term").as_deref(),
        Some("term\n"),
        "SIGTERM reached it"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "it ended on SIGTERM, not at the SIGKILL 10 s later"
    );
    assert_eq!(
        why, "cancelled at shutdown: stopped with SIGTERM (exited with status 0)",
        "a cancelled job fails even if its child exits 0"
    );
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_after_the_grace_with_its_own_children() {
    logs();
    let dir = TempDir::new("sigkill");
    let script = dir.script(
        "job.sh",
        r#"#!/bin/sh
trap '' TERM
echo $$ > "$1/pid"
sleep 60 &
echo $! > "$1/grandchild"
echo ready > "$1/ready"
wait
"#,
    );
    let kill_after = Duration::from_millis(500);
    let handler = Arc::new(command(
        &["sh", script.to_str().unwrap(), dir.0.to_str().unwrap()],
        kill_after,
    ));
    let (cancel, cancelled) = watch::channel(None);
    let job = Job::new("", "cmd-kill").with_cancel(cancelled);
    let running = tokio::spawn({
        let handler = handler.clone();
        async move { handler.handle(job).await }
    });
    eventually("the job to start", || dir.read("ready").is_some()).await;
    let (pid, grandchild) = (dir.read("pid").unwrap(), dir.read("grandchild").unwrap());
    assert!(alive(&pid) && alive(&grandchild));
    let start = Instant::now();
    cancel.send(Some(CancelReason::Timeout)).unwrap();
    let why = failed(within("the job to end", running).await.unwrap());
    let took = start.elapsed();
    assert!(took >= kill_after, "SIGKILL only after the grace: {took:?}");
    assert!(took < kill_after + Duration::from_secs(3), "{took:?}");
    assert_eq!(
        why,
        "cancelled: the job timed out: killed with SIGKILL, still running 0.5 s after SIGTERM"
    );
    assert!(!alive(&pid), "the child is gone");
    eventually("the grandchild to be gone too", || !alive(&grandchild)).await;
}

#[tokio::test]
async fn a_dropped_job_takes_its_process_group_down() {
    logs();
    let dir = TempDir::new("dropped");
    let script = dir.script(
        "job.sh",
        r#"#!/bin/sh
echo $$ > "$1/pid"
sleep 60 &
echo $! > "$1/grandchild"
echo ready > "$1/ready"
wait
"#,
    );
    let handler = Arc::new(command(
        &["sh", script.to_str().unwrap(), dir.0.to_str().unwrap()],
        Duration::from_secs(60),
    ));
    let running = tokio::spawn({
        let handler = handler.clone();
        async move { handler.handle(Job::new("", "cmd-dropped")).await }
    });
    eventually("the job to start", || dir.read("ready").is_some()).await;
    let (pid, grandchild) = (dir.read("pid").unwrap(), dir.read("grandchild").unwrap());
    running.abort();
    let _ = running.await;
    eventually("the child to be gone", || !alive(&pid)).await;
    eventually("the grandchild to be gone", || !alive(&grandchild)).await;
}

#[tokio::test]
async fn a_huge_line_is_logged_cut_short_and_the_next_one_whole() {
    logs();
    // 10 MB on one line, then a short one.
    let handler = command(
        &[
            "python3",
            "-c",
            "import sys; sys.stdout.write('x' * 10_000_000 + '\\nafter the long one\\n')",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(
        handler.handle(Job::new("", "cmd-long")).await,
        Outcome::Done
    );
    let long = log_lines("cmd-long - stdout: xxx");
    assert_eq!(long.len(), 1);
    let cut = 10_000_000 - queue_consumer::handlers::command::MAX_LINE_BYTES;
    assert!(
        long[0].ends_with(&format!("… ({cut} more bytes not logged)")),
        "{}",
        &long[0][long[0].len() - 80..]
    );
    assert!(long[0].len() < 20_000, "{} bytes logged", long[0].len());
    assert_eq!(log_lines("cmd-long - stdout: after the long one").len(), 1);
}

/// The repository's `examples/jobs/` directory.
fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs")
}

#[tokio::test]
async fn the_example_python_job_runs_under_the_command_handler() {
    logs();
    let job_py = examples().join("job.py");
    let handler = command(
        &["python3", job_py.to_str().unwrap()],
        Duration::from_secs(5),
    );
    let job = Job::new(r#"{"text": "three little words"}"#, "example-job-1")
        .with_receive_count(2)
        .with_group_id("g");
    assert_eq!(handler.handle(job).await, Outcome::Done);
    assert_eq!(
        log_lines("example-job-1 - stdout: 3 words (message example-job-1, attempt 2 in group g)")
            .len(),
        1,
        "{:?}",
        log_lines("example-job-1")
    );
    let why = failed(handler.handle(Job::new("not json", "example-job-2")).await);
    assert_eq!(why, "exited with status 1");
    assert_eq!(log_lines("example-job-2 - stderr: not a job").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// The HTTP handler.

/// What an endpoint was sent: each request's headers and body.
type Requests = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A local endpoint that answers by the body, records what it was sent, and counts the TCP
/// connections it accepted.
struct Endpoint {
    url: JobUrl,
    requests: Requests,
    connections: Arc<AtomicUsize>,
}

async fn answer(
    State(requests): State<Requests>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Infallible> {
    requests.lock().unwrap().push((headers, body.clone()));
    Ok(match &body[..] {
        b"busy" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "busy",
        )
            .into_response(),
        b"busy, no retry-after" => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
        b"boom" => (StatusCode::INTERNAL_SERVER_ERROR, "Traceback: boom").into_response(),
        b"hang" => std::future::pending().await,
        b"big" => (StatusCode::OK, "x".repeat(256 * 1024)).into_response(),
        _ => (StatusCode::OK, "done").into_response(),
    })
}

impl Endpoint {
    async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            JobUrl::parse(&format!("http://{}/jobs", listener.local_addr().unwrap())).unwrap();
        let counter = connections.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let app = axum::Router::new()
            .route("/jobs", axum::routing::post(answer))
            .with_state(requests.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            requests,
            connections,
        }
    }

    fn handler(&self, timeout: Duration) -> HttpHandler {
        HttpHandler::new(self.url.clone(), timeout).unwrap()
    }
}

#[tokio::test]
async fn a_2xx_answer_is_done_and_the_request_carries_the_job() {
    let endpoint = Endpoint::start().await;
    let handler = endpoint.handler(Duration::from_secs(5));
    let job = Job::new(r#"{"text": "é, exactly"}"#, "http-done-1")
        .with_receive_count(2)
        .with_group_id("group-7")
        .with_attribute("Content-Type", "application/json")
        .with_attribute("tenant", "acme");
    assert_eq!(handler.handle(job).await, Outcome::Done);
    assert_eq!(
        handler.handle(Job::new("plain", "http-done-2")).await,
        Outcome::Done
    );
    let requests = endpoint.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let (headers, body) = &requests[0];
    let header = |h: &HeaderMap, name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        &body[..],
        r#"{"text": "é, exactly"}"#.as_bytes(),
        "the body as sent"
    );
    assert_eq!(
        header(headers, "x-message-id").as_deref(),
        Some("http-done-1")
    );
    assert_eq!(header(headers, "x-receive-count").as_deref(), Some("2"));
    assert_eq!(header(headers, "x-group-id").as_deref(), Some("group-7"));
    assert_eq!(
        header(headers, "x-attribute-tenant").as_deref(),
        Some("acme")
    );
    assert_eq!(
        header(headers, "content-type").as_deref(),
        Some("application/json"),
        "from the Content-Type attribute"
    );
    let (headers, body) = &requests[1];
    assert_eq!(&body[..], b"plain");
    assert_eq!(
        header(headers, "x-message-id").as_deref(),
        Some("http-done-2")
    );
    assert_eq!(header(headers, "x-receive-count").as_deref(), Some("1"));
    assert_eq!(header(headers, "x-group-id"), None, "no group: no header");
    assert_eq!(
        header(headers, "content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn a_503_with_retry_after_comes_back_after_it_and_without_it_fails() {
    let endpoint = Endpoint::start().await;
    let handler = endpoint.handler(Duration::from_secs(5));
    assert_eq!(
        handler.handle(Job::new("busy", "http-busy")).await,
        Outcome::RetryAfter(Duration::from_secs(1))
    );
    let why = failed(
        handler
            .handle(Job::new("busy, no retry-after", "http-busy-2"))
            .await,
    );
    assert_eq!(why, "HTTP 503 Service Unavailable without Retry-After");
}

#[tokio::test]
async fn a_500_is_a_failure_quoting_the_answer() {
    let endpoint = Endpoint::start().await;
    let handler = endpoint.handler(Duration::from_secs(5));
    let why = failed(handler.handle(Job::new("boom", "http-500")).await);
    assert_eq!(why, "HTTP 500 Internal Server Error: Traceback: boom");
}

#[tokio::test]
async fn an_endpoint_that_never_answers_fails_at_the_timeout() {
    let endpoint = Endpoint::start().await;
    let timeout = Duration::from_millis(300);
    let handler = endpoint.handler(timeout);
    let start = Instant::now();
    let why = failed(within("the timeout", handler.handle(Job::new("hang", "http-hang"))).await);
    let took = start.elapsed();
    assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(why, format!("no answer from {} within 0.3 s", endpoint.url));
}

#[tokio::test]
async fn a_cancelled_job_stops_waiting_for_the_answer() {
    let endpoint = Endpoint::start().await;
    let handler = Arc::new(endpoint.handler(Duration::from_secs(60)));
    let (cancel, cancelled) = watch::channel(None);
    let job = Job::new("hang", "http-cancel").with_cancel(cancelled);
    let running = tokio::spawn({
        let handler = handler.clone();
        async move { handler.handle(job).await }
    });
    eventually("the request to arrive", || {
        endpoint.requests.lock().unwrap().len() == 1
    })
    .await;
    cancel.send(Some(CancelReason::DrainDeadline)).unwrap();
    let why = failed(within("the job to end", running).await.unwrap());
    assert_eq!(
        why,
        format!(
            "cancelled at the drain deadline before {} answered",
            endpoint.url
        )
    );
}

#[tokio::test]
async fn jobs_reuse_one_connection() {
    let endpoint = Endpoint::start().await;
    let handler = endpoint.handler(Duration::from_secs(5));
    for n in 0..5 {
        let job = Job::new(format!("job {n}"), format!("http-reuse-{n}"));
        assert_eq!(handler.handle(job).await, Outcome::Done);
    }
    // Errors and long answers keep the connection too: their bodies are read to the end.
    let _ = handler.handle(Job::new("boom", "http-reuse-boom")).await;
    assert_eq!(
        handler.handle(Job::new("big", "http-reuse-big")).await,
        Outcome::Done
    );
    assert_eq!(
        handler.handle(Job::new("x", "http-reuse-7")).await,
        Outcome::Done
    );
    assert_eq!(endpoint.requests.lock().unwrap().len(), 8);
    assert_eq!(
        endpoint.connections.load(Ordering::SeqCst),
        1,
        "8 jobs, 1 TCP connection"
    );
}

#[tokio::test]
async fn an_endpoint_that_is_not_there_is_a_failure_saying_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = JobUrl::parse(&format!("http://127.0.0.1:{port}/jobs")).unwrap();
    let handler = HttpHandler::new(url.clone(), Duration::from_secs(5)).unwrap();
    let why = failed(handler.handle(Job::new("x", "http-refused")).await);
    assert!(why.starts_with(&format!("POST {url} failed: ")), "{why}");
    assert!(why.to_lowercase().contains("connection refused"), "{why}");
}

#[tokio::test]
async fn the_example_web_app_takes_jobs_from_the_http_handler() {
    let dir = TempDir::new("app");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut app = tokio::process::Command::new("python3")
        .arg(examples().join("app.py"))
        .env("PORT", port.to_string())
        .env("PAUSE_FILE", dir.path("paused"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example app");
    let mut stdout = tokio::io::BufReader::new(app.stdout.take().unwrap());
    let mut first = String::new();
    within(
        "the app to listen",
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first),
    )
    .await
    .unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    let url = JobUrl::parse(&format!("http://127.0.0.1:{port}/jobs")).unwrap();
    let handler = HttpHandler::new(url, Duration::from_secs(5)).unwrap();
    for n in 0..3 {
        let job = Job::new(r#"{"text": "three little words"}"#, format!("app-{n}"));
        assert_eq!(handler.handle(job).await, Outcome::Done);
    }
    let why = failed(handler.handle(Job::new("not json", "app-bad")).await);
    assert!(why.starts_with("HTTP 400 Bad Request: not a job"), "{why}");
    std::fs::write(dir.path("paused"), "").unwrap();
    assert_eq!(
        handler.handle(Job::new("{}", "app-paused")).await,
        Outcome::RetryAfter(Duration::from_secs(30))
    );
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
        .await
        .unwrap();
    assert_eq!(line, "app-0: 3 words (attempt 1)\n");
    app.kill().await.unwrap();
}
