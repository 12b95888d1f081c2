//! The `websocket` binary as ECS runs it: settings from the environment, SIGTERM with clients
//! connected, and start-up errors.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ecs_stand_in::StandInAgent;
use support::free_port;
use support::{close_code, connect, ping_pong};

fn server(envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_websocket"));
    cmd.env_clear()
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Kills the child if the test ends early (a failed assertion), so no server outlives its test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Collects the child's stdout lines on a thread.
fn capture(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `websocket` process on a free loopback port, healthy, with its stdout collected.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    port: u16,
}

impl Running {
    /// Starts the binary with `envs` (plus PORT) and waits until `/healthz` answers.
    async fn start(envs: &[(&str, String)]) -> Self {
        let port = free_port();
        let mut all = vec![("PORT", port.to_string())];
        all.extend(envs.iter().cloned());
        let mut child = server(&all).spawn().unwrap();
        let lines = capture(&mut child);
        wait_healthy(port).await;
        Self { child, lines, port }
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends SIGTERM.
    fn sigterm(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits (without blocking the runtime) for the process to exit, at most 15 s; returns its
    /// exit code and everything it logged.
    async fn exit(mut self) -> (Option<i32>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "still running 15 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The capture thread ends with the pipe; take what it read.
        let log: Vec<String> = self.lines.iter().collect();
        (status.code(), log.join("\n"))
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_releases_protection_and_exits_0() {
    let agent = StandInAgent::start().await.unwrap();
    let server = Running::start(&[("ECS_AGENT_URI", agent.uri())]).await;
    let url = server.ws_url();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&url).await.0);
    }
    for c in clients.iter_mut() {
        ping_pong(c).await;
    }
    support::eventually("protected", || agent.is_protected()).await;

    server.sigterm();
    for c in clients.iter_mut() {
        assert_eq!(close_code(c).await, 1001);
    }
    let (code, text) = server.exit().await;
    assert_eq!(code, Some(0));
    let calls: Vec<_> = agent
        .put_calls()
        .iter()
        .map(|c| (c.enabled, c.ok))
        .collect();
    assert_eq!(calls, vec![(Some(true), true), (Some(false), true)]);
    for expected in [
        "Task protection backend: ECS agent endpoint",
        "New client connection opened. There are 1 connections",
        "Task protection acquired",
        "Shutting down: SIGTERM received",
        "Task protection released",
        "Shutdown complete",
    ] {
        assert!(text.contains(expected), "log lacks {expected:?}:\n{text}");
    }
}

#[tokio::test]
async fn without_ecs_it_runs_on_the_local_backend_and_says_so_first() {
    let server = Running::start(&[]).await;
    let (mut c, welcome) = connect(&server.ws_url()).await;
    assert_eq!(welcome, "Welcome! There are 1 connections");
    ping_pong(&mut c).await;
    drop(c);
    server.sigterm();
    let (code, text) = server.exit().await;
    assert_eq!(code, Some(0));
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("Task protection backend: local"),
        "first line: {first}"
    );
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable_and_range() {
    for (var, value, range) in [
        ("PROTECTION_DURATION_MINUTES", "0", "1..=2880"),
        ("PROTECTION_MAINTAIN_PERCENT", "150", "0..=100"),
        ("PROTECTION_REFRESH_PERCENT", "0", "1..=100"),
        ("PORT", "70000", "65535"),
    ] {
        let out = server(&[(var, value.to_string())]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var) && err.contains(range),
            "{var}={value}: {err}"
        );
    }
    let out = server(&[("PROTECTION_BACKEND", "agent".into())])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("ECS_AGENT_URI"), "{text}");
}

#[tokio::test]
async fn websocket_drain_sends_sigusr1_which_refuses_new_clients_and_keeps_health_200() {
    let server = Running::start(&[]).await;
    let url = server.ws_url();
    let (mut c, _) = connect(&url).await;
    // `websocket drain` is how an operator sends SIGUSR1 in a shell-less container.
    let out = Command::new(env!("CARGO_BIN_EXE_websocket"))
        .args(["drain", "--pid", &server.pid()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notice = support::next_text(&mut c).await;
    assert!(
        notice.starts_with("server draining: operator request (SIGUSR1)"),
        "{notice}"
    );
    ping_pong(&mut c).await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let health = reqwest::get(server.http_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    server.sigterm();
    assert_eq!(close_code(&mut c).await, 1001);
    assert_eq!(server.exit().await.0, Some(0));
}

#[tokio::test]
async fn on_the_ecs_api_a_newer_deployment_drains_the_server_and_the_last_client_releases_at_once()
{
    use ecs_stand_in::{task_definition_arn, StandInEcs};
    let ecs = StandInEcs::start().await.unwrap();
    let server = Running::start(&[
        // auto picks the API because the metadata endpoint is set and the agent's is not.
        ("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri()),
        ("ECS_ENDPOINT_URL", ecs.endpoint_url()),
        ("AWS_ACCESS_KEY_ID", "AKIDTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("DRAIN_WATCH_INTERVAL_SECS", "1".into()),
        // A 50 % hold-over would keep protection for 15 minutes: draining skips it.
        ("PROTECTION_MAINTAIN_PERCENT", "50".into()),
    ])
    .await;
    let url = server.ws_url();
    let (mut a, _) = connect(&url).await;
    let (mut b, _) = connect(&url).await;
    support::eventually("protected through the API", || ecs.is_protected()).await;
    assert_eq!(ecs.updates(), vec![true]);

    ecs.begin_deployment(&task_definition_arn(2));
    for c in [&mut a, &mut b] {
        let notice = support::next_text(c).await;
        assert!(
            notice.starts_with("server draining: deployment in progress"),
            "{notice}"
        );
        ping_pong(c).await;
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503 while draining, got {other:?}"),
    }
    let status: serde_json::Value = reqwest::get(server.http_url("/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["draining"], true);
    assert_eq!(status["protection"]["backend"], "api");

    drop(a);
    ping_pong(&mut b).await;
    assert_eq!(
        ecs.updates(),
        vec![true],
        "one client left: still protected"
    );
    drop(b);
    support::eventually("released as soon as the last client left", || {
        ecs.updates() == vec![true, false]
    })
    .await;
    server.sigterm();
    let (code, text) = server.exit().await;
    assert_eq!(code, Some(0));
    assert!(text.contains("Draining: deployment in progress"), "{text}");
}

#[tokio::test]
async fn logs_written_to_a_pipe_have_no_colour_codes() {
    let server = Running::start(&[]).await;
    server.sigterm();
    let (code, text) = server.exit().await;
    assert_eq!(code, Some(0));
    assert!(text.contains("Listening on http://"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in piped logs: {text:?}"
    );
}

#[test]
fn websocket_drain_accepts_only_the_positive_pid_of_a_running_process() {
    // 0 would signal the caller's own process group, -1 every process the user may signal.
    for pid in ["0", "-1", "-42"] {
        let out = Command::new(env!("CARGO_BIN_EXE_websocket"))
            .args(["drain", &format!("--pid={pid}")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--pid {pid}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--pid") && err.contains("1.."), "{err}");
    }
    // A process that is not running: a clear error, exit 1. (Pid numbers are reused only after
    // the kernel's pid_max wraps; a child that has been reaped is gone.)
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id().to_string();
    child.wait().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_websocket"))
        .args(["drain", "--pid", &gone])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such process"), "{err}");
}

#[tokio::test]
async fn health_answers_while_idle_sockets_exhaust_the_file_descriptors() {
    // 48 file descriptors for the whole process, and 100 idle connections: accept fails for want
    // of descriptors until the server closes the oldest connection that has not upgraded.
    let port = free_port();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=48:48", "--", env!("CARGO_BIN_EXE_websocket")])
        .env_clear()
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let lines = capture(&mut child);
    let mut child = KillOnDrop(child);
    wait_healthy(port).await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    health_answers_three_times_then_term(port, &mut child, "under fd pressure").await;
    let log: Vec<String> = lines.iter().collect();
    let warnings = log.iter().filter(|l| l.contains("Cannot accept")).count();
    assert!(
        warnings <= 2,
        "accept failures are logged at most every 10 s: {log:#?}"
    );
}

#[tokio::test]
async fn refused_upgrades_do_not_flood_the_log_and_a_vanished_client_is_not_a_protocol_error() {
    let server = Running::start(&[("MAX_CONNECTIONS", "1".to_string())]).await;
    let (mut c, _) = connect(&server.ws_url()).await;
    for _ in 0..50 {
        assert!(tokio_tungstenite::connect_async(server.ws_url())
            .await
            .is_err());
    }
    ping_pong(&mut c).await;
    // Gone without a close frame: the TCP connection just ends.
    drop(c);
    let url = server.http_url("/status");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let doc: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if doc["connections"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the vanished client is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.sigterm();
    let (code, log) = server.exit().await;
    assert_eq!(code, Some(0));
    assert_eq!(log.matches("Refused a client").count(), 1, "{log}");
    assert!(!log.contains("1002"), "{log}");
    assert!(
        log.contains("Client connection closed. There are 0 connections"),
        "{log}"
    );
}

#[tokio::test]
async fn the_server_reports_connections_as_emf_lines_and_prometheus_text() {
    let prom = free_port();
    let server = Running::start(&[
        ("METRICS_EMF", "on".to_string()),
        ("METRICS_INTERVAL_SECS", "1".to_string()),
        ("METRICS_SERVICE_NAME", "websocket".to_string()),
        ("METRICS_PROMETHEUS_PORT", prom.to_string()),
        ("METRICS_BIND_ADDRESS", "127.0.0.1".to_string()),
    ])
    .await;
    let (mut a, _) = connect(&server.ws_url()).await;
    let (mut b, _) = connect(&server.ws_url()).await;
    ping_pong(&mut a).await;
    ping_pong(&mut b).await;
    // Prometheus text, parsed: two clients, protected (local backend).
    let text = support::prometheus_text(&prom.to_string()).await;
    assert_eq!(
        support::prometheus_value(&text, "ecs_task_protection_connections"),
        2.0
    );
    assert!(text.contains("# TYPE ecs_task_protection_protection_calls_total counter"));
    // EMF: wait for a line taken while both were connected (one a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let line = server
            .lines
            .recv_timeout(Duration::from_secs(5))
            .expect("an EMF line within 5 s");
        if !line.contains("\"_aws\"") {
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&line).expect("EMF is JSON");
        if doc["Connections"] == 2.0 || Instant::now() > deadline {
            break doc;
        }
    };
    assert_eq!(doc["Connections"], 2.0, "{doc}");
    assert_eq!(doc["Protected"], 1.0, "{doc}");
    assert_eq!(doc["ServiceName"], "websocket");
    assert_eq!(doc["ClusterName"], "local");
    let cw = &doc["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(cw["Namespace"], "ECSTaskProtection");
    assert_eq!(
        cw["Dimensions"],
        serde_json::json!([["ClusterName", "ServiceName"]])
    );
    assert!(cw["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["Name"] == "Connections" && m["Unit"] == "Count"));
    drop((a, b));
    server.sigterm();
    assert_eq!(server.exit().await.0, Some(0));
}

#[tokio::test]
async fn a_drain_asked_for_during_a_slow_start_up_is_kept_and_carried_out() {
    use std::io::Write as _;
    // The SDK reads its config file while the server starts (to find the Region); a FIFO that
    // nobody writes to yet holds start-up right there, before the backend exists.
    let dir = support::process::TempDir::new("slow-start").unwrap();
    let fifo = dir.0.join("aws-config");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let port = free_port();
    let mut child = server(&[
        ("PORT", port.to_string()),
        ("PROTECTION_BACKEND", "api".to_string()),
        ("ECS_CLUSTER", "task-protection".to_string()),
        (
            "ECS_TASK_ARN",
            "arn:aws:ecs:us-east-1:123456789012:task/task-protection/0123456789abcdef".to_string(),
        ),
        ("ECS_ENDPOINT_URL", "http://127.0.0.1:9".to_string()),
        ("AWS_CONFIG_FILE", fifo.display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
    ])
    .spawn()
    .unwrap();
    let lines = capture(&mut child);
    let mut child = KillOnDrop(child);
    // Opening the FIFO for writing returns once the server has opened it: start-up is stalled
    // there until this thread writes. The SDK may read the file more than once; later reads are
    // answered too (a pause between two answers lets the reader see the end of the file: a
    // writer that opens before the last one's close is read would extend the same read).
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let path = fifo.clone();
    std::thread::spawn(move || {
        for n in 0..50 {
            let Ok(mut writer) = std::fs::OpenOptions::new().write(true).open(&path) else {
                return;
            };
            if n == 0 {
                let _ = opened_tx.send(());
                let _ = go_rx.recv();
            }
            let _ = writer.write_all(b"[default]\nregion = us-east-1\n");
            drop(writer);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    tokio::task::spawn_blocking(move || opened_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the server opened its AWS config file");
    let drained = Command::new(env!("CARGO_BIN_EXE_websocket"))
        .args(["drain", "--pid", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(drained.success());
    // Let start-up go on.
    go_tx.send(()).unwrap();
    wait_healthy(port).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGUSR1 ended the process"
    );
    // The drain was carried out once the server was up: upgrades are refused.
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503 while draining, got {other:?}"),
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let status = child.0.wait().unwrap();
    let log: Vec<String> = lines.iter().collect();
    assert_eq!(status.code(), Some(0), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("Draining: operator request (SIGUSR1)")),
        "{log:#?}"
    );
}

/// Runs the server with `envs` and returns its exit code and what it wrote to stderr, or `None`
/// if it was still running after 5 s (it took the settings and served: killed, then).
fn start_up_outcome(envs: &[(&str, String)]) -> Option<(Option<i32>, String)> {
    let mut cmd = server(envs);
    cmd.env("PORT", "0");
    let mut child = KillOnDrop(cmd.spawn().expect("start websocket"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut stderr) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            }
            return Some((status.code(), err));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn settings_that_cannot_work_stop_start_up_naming_the_variable() {
    for (envs, variable, also) in [
        // A full room (20,000 clients) costs 19,999 deliveries a message: 10,000 a second never
        // deliver one.
        (
            vec![("CHAT_ROOM_DELIVERIES_PER_SEC", "10000")],
            "CHAT_ROOM_DELIVERIES_PER_SEC",
            "MAX_CONNECTIONS",
        ),
        (
            vec![
                ("CHAT_ROOM_DELIVERIES_PER_SEC", "99"),
                ("MAX_CONNECTIONS", "100"),
            ],
            "CHAT_ROOM_DELIVERIES_PER_SEC",
            "100..=100000000",
        ),
        // No origin at all: every browser would be refused.
        (
            vec![("ALLOWED_ORIGINS", ",")],
            "ALLOWED_ORIGINS",
            "same-host",
        ),
        (
            vec![("ALLOWED_ORIGINS", " , ,")],
            "ALLOWED_ORIGINS",
            "same-host",
        ),
        (
            vec![("CHAT_BACKPLANE_URL", "redis://127.0.0.1:0")],
            "CHAT_BACKPLANE_URL",
            "1..=65535",
        ),
        // TLS without certificate checks.
        (
            vec![("CHAT_BACKPLANE_URL", "rediss://127.0.0.1/#insecure")],
            "CHAT_BACKPLANE_URL",
            "#insecure",
        ),
    ] {
        let envs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let outcome = start_up_outcome(&envs);
        let Some((code, err)) = outcome else {
            panic!("{envs:?} was accepted: the server started");
        };
        assert_eq!(code, Some(2), "{envs:?}: {err}");
        assert!(
            err.contains(variable) && err.contains(also),
            "{envs:?}: {err}"
        );
    }
    // The edges that can work still start: a budget of exactly one full room, and 0 (no limit).
    for envs in [
        vec![
            ("CHAT_ROOM_DELIVERIES_PER_SEC", "100"),
            ("MAX_CONNECTIONS", "100"),
        ],
        vec![("CHAT_ROOM_DELIVERIES_PER_SEC", "0")],
    ] {
        let envs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(start_up_outcome(&envs), None, "{envs:?} was refused");
    }
}

/// A `websocket` (or `queue-consumer`) process with nothing of the test's environment, its output
/// captured.
fn spawn_binary(program: &str, name: &str, envs: &[(&str, String)]) -> support::process::Proc {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("RUST_LOG", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    support::process::Proc::spawn(name, cmd, false).unwrap()
}

/// The settings of a `queue-consumer` whose queue does not answer (its receive loop retries with
/// back-off): enough for its tasks to run, no SQS needed.
fn worker_env(status_port: u16) -> Vec<(&'static str, String)> {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    vec![
        ("QUEUE_URL", format!("{nobody}/123456789012/jobs")),
        ("AWS_ENDPOINT_URL", nobody),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("RECEIVE_WAIT_SECS", "1".into()),
        ("STATUS_PORT", status_port.to_string()),
    ]
}

/// The lines of `output` logged at error level.
fn error_lines(proc: &support::process::Proc) -> Vec<String> {
    proc.output
        .lines()
        .into_iter()
        .filter(|l| l.contains(" ERROR "))
        .collect()
}

#[tokio::test]
async fn every_critical_task_that_dies_ends_the_process_with_status_1_and_one_error_line() {
    use ecs_stand_in::StandInEcs;
    const SERVER: &str = env!("CARGO_BIN_EXE_websocket");
    let worker_bin = support::process::queue_consumer_bin();
    let ecs = StandInEcs::start().await.unwrap();
    let server_env = || {
        vec![
            ("BIND_ADDRESS", "127.0.0.1".to_string()),
            ("PORT", free_port().to_string()),
        ]
    };
    let with = |mut env: Vec<(&'static str, String)>, more: &[(&'static str, String)]| {
        env.extend(more.iter().cloned());
        env
    };
    let on_the_api = [
        ("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri()),
        ("ECS_ENDPOINT_URL", ecs.endpoint_url()),
        ("AWS_ACCESS_KEY_ID", "AKIDTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("DRAIN_WATCH_INTERVAL_SECS", "1".into()),
    ];
    let backplane = (
        "CHAT_BACKPLANE_URL",
        format!("redis://127.0.0.1:{}", free_port()),
    );
    // A free port each time: the processes run at once.
    let metrics = || {
        [
            ("METRICS_PROMETHEUS_PORT", free_port().to_string()),
            ("METRICS_BIND_ADDRESS", "127.0.0.1".to_string()),
            ("METRICS_EMF", "on".to_string()),
        ]
    };
    // (binary, task killed, its settings): each task where it runs.
    type Env = Vec<(&'static str, String)>;
    let cases: Vec<(&str, &str, Env)> = vec![
        (SERVER, "task protection reconciler", server_env()),
        (SERVER, "HTTP listener", server_env()),
        (
            SERVER,
            "chat backplane link",
            with(server_env(), std::slice::from_ref(&backplane)),
        ),
        (SERVER, "drain watcher", with(server_env(), &on_the_api)),
        (SERVER, "drain follower", with(server_env(), &on_the_api)),
        (SERVER, "drain deadline", server_env()),
        (SERVER, "SIGUSR1 listener", server_env()),
        (
            SERVER,
            "protected time limit",
            with(server_env(), &[("MAX_PROTECTED_MINUTES", "60".into())]),
        ),
        (SERVER, "rejection relay", server_env()),
        (SERVER, "metrics endpoint", with(server_env(), &metrics())),
        (SERVER, "EMF metrics writer", with(server_env(), &metrics())),
        (
            &worker_bin,
            "task protection reconciler",
            worker_env(free_port()),
        ),
        (&worker_bin, "receive loop", worker_env(free_port())),
        (&worker_bin, "visibility keeper", worker_env(free_port())),
        (&worker_bin, "delete loop", worker_env(free_port())),
        (&worker_bin, "status endpoint", worker_env(free_port())),
        (
            &worker_bin,
            "drain follower",
            with(worker_env(free_port()), &on_the_api),
        ),
        (&worker_bin, "drain deadline", worker_env(free_port())),
        (&worker_bin, "SIGUSR1 listener", worker_env(free_port())),
        (
            &worker_bin,
            "metrics endpoint",
            with(worker_env(free_port()), &metrics()[..2]),
        ),
    ];
    let mut running = Vec::new();
    for (program, task, mut env) in cases {
        env.push(("TASK_PROTECTION_FAULT", format!("{task}@1000")));
        running.push((task, spawn_binary(program, task, &env)));
    }
    // Each is also run without the fault and stopped with SIGTERM: an orderly shutdown, in which
    // every task ends, still exits 0 with no error line.
    let mut calm = vec![
        spawn_binary(
            SERVER,
            "websocket",
            &with(
                with(with(server_env(), &on_the_api), &metrics()),
                std::slice::from_ref(&backplane),
            ),
        ),
        spawn_binary(
            &worker_bin,
            "queue-consumer",
            &with(worker_env(free_port()), &metrics()[..2]),
        ),
    ];
    for (task, proc) in &mut running {
        let status = match proc.wait_exit(Duration::from_secs(30)).await {
            Ok(status) => status,
            Err(e) => panic!("{e}; output:\n{}", proc.output.tail(30)),
        };
        let errors = error_lines(proc);
        assert_eq!(
            status.code(),
            Some(1),
            "{} with the {task} killed; output:\n{}",
            proc.name,
            proc.output.tail(30)
        );
        assert_eq!(
            errors.len(),
            1,
            "one error line, with the {task} killed:\n{}",
            proc.output.tail(30)
        );
        let want =
            format!("Background task failed: the {task} panicked: killed by TASK_PROTECTION_FAULT");
        assert!(errors[0].contains(&want), "{}", errors[0]);
        assert!(
            proc.output.count("Shutdown complete") == 1,
            "shut down in order:\n{}",
            proc.output.tail(30)
        );
    }
    for proc in &mut calm {
        proc.signal("TERM").unwrap();
        let status = proc.wait_exit(Duration::from_secs(30)).await.unwrap();
        assert_eq!(status.code(), Some(0), "{}", proc.output.tail(30));
        assert_eq!(error_lines(proc), Vec::<String>::new());
    }
}

#[tokio::test]
async fn an_invalid_ecs_agent_uri_stops_start_up_with_exit_2_naming_the_variable() {
    for program in [
        env!("CARGO_BIN_EXE_websocket").to_string(),
        support::process::queue_consumer_bin(),
    ] {
        for bad in ["ftp://169.254.170.2/api", "not a url", "http://"] {
            let out = Command::new(&program)
                .env_clear()
                .env("ECS_AGENT_URI", bad)
                .env("QUEUE_URL", "http://127.0.0.1:9/123456789012/jobs")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{program} {bad:?}: {err}");
            assert!(
                err.contains("ECS_AGENT_URI") && err.contains("http"),
                "{program} {bad:?}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn a_blank_aws_endpoint_url_ecs_counts_as_unset() {
    use ecs_stand_in::StandInEcs;
    let ecs = StandInEcs::start().await.unwrap();
    // The SDK's own endpoint settings lead to the stand-in; the ECS one is blank, as a template
    // that leaves it empty sets it. The SDK would take it for an endpoint and panic ("URL was
    // unset") in the reconciler's first call.
    let server = Running::start(&[
        ("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri()),
        ("AWS_ENDPOINT_URL", ecs.endpoint_url()),
        ("AWS_ENDPOINT_URL_ECS", String::new()),
        ("AWS_ACCESS_KEY_ID", "AKIDTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ])
    .await;
    let (mut c, _) = connect(&server.ws_url()).await;
    ping_pong(&mut c).await;
    support::eventually("protected through the API", || ecs.is_protected()).await;
    drop(c);
    server.sigterm();
    let (code, log) = server.exit().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test]
async fn a_blank_aws_endpoint_url_sqs_counts_as_unset() {
    let Some(moto) =
        support::moto::Moto::start("a_blank_aws_endpoint_url_sqs_counts_as_unset").await
    else {
        return;
    };
    let (queue, _) = moto.queue("blank-endpoint", 30, None).await;
    let mut env = worker_env(0);
    env.retain(|(k, _)| !matches!(*k, "QUEUE_URL" | "AWS_ENDPOINT_URL"));
    env.extend([
        ("QUEUE_URL", queue.clone()),
        ("AWS_ENDPOINT_URL", moto.endpoint().to_string()),
        ("AWS_ENDPOINT_URL_SQS", "  ".to_string()),
    ]);
    let mut worker = spawn_binary(
        &support::process::queue_consumer_bin(),
        "queue-consumer",
        &env,
    );
    moto.sqs()
        .send_message()
        .queue_url(&queue)
        .message_body("10")
        .send()
        .await
        .unwrap();
    worker
        .output
        .wait_for(" - Done", 1, Duration::from_secs(20))
        .await;
    worker.signal("TERM").unwrap();
    let status = worker.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output.tail(30));
    assert_eq!(error_lines(&worker), Vec::<String>::new());
}

#[tokio::test]
async fn health_answers_while_idle_sockets_on_the_metrics_port_exhaust_the_file_descriptors() {
    // As above, but the 100 idle connections go to the Prometheus port: they share the main
    // port's pool, so the main port's accept, out of descriptors, closes the oldest of them.
    let port = free_port();
    let metrics = free_port();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=48:48", "--", env!("CARGO_BIN_EXE_websocket")])
        .env_clear()
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("METRICS_PROMETHEUS_PORT", metrics.to_string())
        .env("METRICS_BIND_ADDRESS", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let lines = capture(&mut child);
    let mut child = KillOnDrop(child);
    wait_healthy(port).await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", metrics))
                .await
                .unwrap(),
        );
    }
    // Only once the server has run out of descriptors: a health check sent sooner may be
    // accepted before the metrics port has taken them all.
    let lines = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
                let out_of_fds = line.contains("Too many open files");
                seen.push(line);
                if out_of_fds {
                    break;
                }
            }
        }
        seen
    })
    .await
    .unwrap();
    assert!(
        lines.iter().any(|l| l.contains("Too many open files")),
        "the server did not run out of file descriptors: {lines:#?}"
    );
    health_answers_three_times_then_term(port, &mut child, "while the metrics port is flooded")
        .await;
}

/// Asks the server on `port` for `/healthz` three times (each must answer 200 within 5 s: `when`
/// says under what), then stops it with SIGTERM and waits for it.
async fn health_answers_three_times_then_term(port: u16, child: &mut KillOnDrop, when: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..3 {
        let health = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("health not answered {when}: {e}"));
        assert_eq!(health.status(), 200);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
}

/// Sends `GET path` on a kept-alive `stream` and reads the answer; its status, or `None` if the
/// connection was closed.
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return head.get(9..12)?.parse().ok();
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// How long until the server closes `stream`, at most `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// On the side port at `addr` (path `path`): a slow request head is cut at the 1 s header
/// timeout, and a kept-alive connection idle for 3 s (within the 5 s idle timeout) still answers.
async fn side_port_is_bounded(addr: (&str, u16), path: &str) {
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut kept, path).await, Some(200), "{addr:?}{path}");
    let cut = closed_within(&mut slow, Duration::from_secs(4)).await;
    assert!(
        cut.is_some(),
        "{addr:?}: the slow head is still open after 4 s"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get_on(&mut kept, path).await,
        Some(200),
        "{addr:?}{path} after 3 s idle"
    );
}

#[tokio::test]
async fn the_metrics_and_status_ports_have_the_header_and_idle_timeouts_of_the_main_port() {
    let limits = [
        ("HTTP_HEADER_TIMEOUT_SECS", "1".to_string()),
        ("HTTP_IDLE_TIMEOUT_SECS", "5".to_string()),
    ];
    let metrics = free_port();
    let port = free_port();
    let mut server_env = vec![
        ("BIND_ADDRESS", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
        ("METRICS_PROMETHEUS_PORT", metrics.to_string()),
        ("METRICS_BIND_ADDRESS", "127.0.0.1".to_string()),
    ];
    server_env.extend(limits.iter().cloned());
    let mut server = spawn_binary(env!("CARGO_BIN_EXE_websocket"), "websocket", &server_env);
    let status = free_port();
    let worker_metrics = free_port();
    let mut env = worker_env(status);
    env.extend(limits.iter().cloned());
    env.extend([
        ("METRICS_PROMETHEUS_PORT", worker_metrics.to_string()),
        ("METRICS_BIND_ADDRESS", "127.0.0.1".to_string()),
    ]);
    let mut worker = spawn_binary(
        &support::process::queue_consumer_bin(),
        "queue-consumer",
        &env,
    );
    wait_healthy(port).await;
    wait_healthy(status).await;
    tokio::join!(
        side_port_is_bounded(("127.0.0.1", port), "/healthz"),
        side_port_is_bounded(("127.0.0.1", metrics), "/metrics"),
        side_port_is_bounded(("127.0.0.1", status), "/healthz"),
        side_port_is_bounded(("127.0.0.1", worker_metrics), "/metrics"),
    );
    for proc in [&mut server, &mut worker] {
        proc.signal("TERM").unwrap();
        let status = proc.wait_exit(Duration::from_secs(30)).await.unwrap();
        assert_eq!(status.code(), Some(0), "{}", proc.output.tail(20));
    }
}
