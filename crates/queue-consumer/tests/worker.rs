//! The `queue-consumer` binary against a real SQS API (moto's server) and the stand-in ECS agent:
//! jobs run once and are deleted, protection follows the jobs in hand and not the polling (nor a
//! trickle of jobs), long jobs stay hidden from other workers, SIGTERM returns what is unfinished,
//! bad messages go to the dead-letter queue, SQS outages are survived, permanent SQS errors end
//! the jobs' holds, and the worker drains when the stand-in ECS API says a deployment or a
//! scale-in wants the task gone (or on SIGUSR1).
#![cfg(unix)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use ecs_stand_in::{task_definition_arn, Fault, StandInAgent, StandInEcs};
use support::moto::Moto;
use support::process::Proc;
use support::proxy::FaultProxy;

/// Long enough for anything a test waits for on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);

/// Starts a worker on `queue` through `endpoint`, with the stand-in agent, polling every second,
/// plus `extra` settings.
fn worker(queue: &str, endpoint: &str, agent: &StandInAgent, extra: &[(&str, &str)]) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_queue-consumer"));
    command
        .env_clear()
        .env("QUEUE_URL", queue)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PROTECTION_BACKEND", "agent")
        .env("ECS_AGENT_URI", agent.uri())
        .env("STATUS_PORT", "0")
        .env("RECEIVE_WAIT_SECS", "1")
        .env("RUST_LOG", "info");
    for (k, v) in extra {
        command.env(k, v);
    }
    Proc::spawn("queue-consumer", command, false).expect("start queue-consumer")
}

/// How many times each message ID was logged with `what` (e.g. `- Done`).
fn ids_with(proc: &Proc, what: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for line in proc.output.lines() {
        if let Some(before) = line.strip_suffix(what) {
            if let Some(id) = before.split_whitespace().last() {
                *ids.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    ids
}

/// Sends SIGTERM and returns the exit code.
async fn stop(mut proc: Proc) -> Option<i32> {
    proc.signal("TERM").expect("SIGTERM");
    let status = proc.wait_exit(Duration::from_secs(15)).await.expect("exit");
    status.code()
}

fn protect_calls(agent: &StandInAgent) -> usize {
    agent
        .put_calls()
        .iter()
        .filter(|c| c.enabled == Some(true))
        .count()
}

/// The first message (id, body) that reaches dead-letter queue `dlq` within `limit`; fails with
/// the worker's output otherwise.
async fn dead_lettered(moto: &Moto, dlq: &str, w: &Proc, limit: Duration) -> (String, String) {
    let start = std::time::Instant::now();
    loop {
        let got = moto.receive(dlq, Duration::from_secs(1), 1).await;
        if let Some(m) = got.first() {
            return m.clone();
        }
        assert!(
            start.elapsed() < limit,
            "not in the dead-letter queue:\n{}",
            w.output.tail(20)
        );
    }
}

async fn wait_depth(moto: &Moto, queue: &str, depth: (u64, u64)) {
    let start = std::time::Instant::now();
    while moto.depth(queue).await != depth {
        assert!(
            start.elapsed() < LIMIT,
            "queue depth {:?}, wanted {depth:?}",
            moto.depth(queue).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_job_runs_once_and_is_deleted_and_a_burst_costs_one_protect_call() {
    let Some(moto) = Moto::start("every_job_runs_once").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("burst", 60, None).await;
    let mut sent = Vec::new();
    for _ in 0..30 {
        sent.push(moto.send(&queue, "20").await);
    }
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("WORKER_CONCURRENCY", "5")],
    );
    w.output.wait_for("- Done", 30, LIMIT).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let done = ids_with(&w, "- Done");
    sent.sort();
    assert_eq!(
        done.keys().cloned().collect::<Vec<_>>(),
        sent,
        "every job done"
    );
    assert!(
        done.values().all(|n| *n == 1),
        "each exactly once: {done:?}"
    );
    let protects = protect_calls(&agent);
    assert!(
        (1..=2).contains(&protects),
        "{protects} protect calls for a burst of 30 jobs"
    );
    assert_eq!(stop(w).await, Some(0));
    assert!(!agent.is_protected(), "released at shutdown");
}

#[tokio::test]
async fn a_busy_period_longer_than_the_hold_over_keeps_one_protection_without_releasing() {
    let Some(moto) = Moto::start("a_busy_period").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("busy", 60, None).await;
    // One job at a time for about 10 s: longer than the 6 s hold-over, shorter than the 48 s
    // refresh mark. Between jobs no job is in hand for an instant.
    for _ in 0..40 {
        moto.send(&queue, "250").await;
    }
    let w = worker(&queue, moto.endpoint(), &agent, &[]);
    w.output.wait_for("- Done", 40, LIMIT).await;
    let puts: Vec<Option<bool>> = agent.put_calls().iter().map(|c| c.enabled).collect();
    assert_eq!(
        puts.iter().filter(|e| **e == Some(true)).count(),
        1,
        "one protect call for the busy period: {puts:?}"
    );
    assert_eq!(puts.first(), Some(&Some(true)), "{puts:?}");
    assert!(
        !puts.contains(&Some(false)) || puts.last() == Some(&Some(false)),
        "no release while jobs kept coming: {puts:?}"
    );
    assert_eq!(stop(w).await, Some(0));
    assert!(!agent.is_protected());
}

#[tokio::test]
async fn an_idle_worker_polls_without_protecting_the_task() {
    let Some(moto) = Moto::start("an_idle_worker").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let (queue, _) = moto.queue("idle", 60, None).await;
    let w = worker(&queue, &proxy.url(), &agent, &[]);
    // Three long polls of 1 s, all empty.
    let start = std::time::Instant::now();
    while proxy.forwarded() < 4 {
        assert!(start.elapsed() < LIMIT, "the worker did not poll");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        protect_calls(&agent),
        0,
        "no protection while only waiting for work"
    );
    assert!(!agent.is_protected());
    // Then a job arrives: protected while it runs, released after the 6 s hold-over... or at
    // shutdown, whichever comes first.
    moto.send(&queue, "300").await;
    w.output.wait_for("- Done", 1, LIMIT).await;
    assert_eq!(protect_calls(&agent), 1);
    assert_eq!(stop(w).await, Some(0));
    assert!(!agent.is_protected());
}

#[tokio::test]
async fn a_job_three_visibility_timeouts_long_is_not_handed_to_a_second_worker() {
    let Some(moto) = Moto::start("a_long_job").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("long", 3, None).await;
    let id = moto.send(&queue, "9000").await;
    let settings = [("VISIBILITY_TIMEOUT_SECS", "3")];
    let first = worker(&queue, moto.endpoint(), &agent, &settings);
    first.output.wait_for("- Working for 9000", 1, LIMIT).await;
    let second = worker(&queue, moto.endpoint(), &agent, &settings);
    first.output.wait_for("- Done", 1, LIMIT).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    assert_eq!(ids_with(&first, "- Done").get(&id), Some(&1));
    assert_eq!(
        second.output.count(&id),
        0,
        "the second worker never saw the message:\n{}",
        second.output.tail(20)
    );
    assert_eq!(stop(second).await, Some(0));
    assert_eq!(stop(first).await, Some(0));
}

#[tokio::test]
async fn sigterm_mid_job_returns_the_message_at_once_releases_protection_and_exits_0() {
    let Some(moto) = Moto::start("sigterm_mid_job").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("term", 60, None).await;
    let id = moto.send(&queue, "60000").await;
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("SHUTDOWN_TIMEOUT_SECS", "1")],
    );
    w.output.wait_for("- Working for 60000", 1, LIMIT).await;
    assert!(agent.is_protected(), "protected while the job runs");
    let output = w.output.clone();
    assert_eq!(stop(w).await, Some(0));
    assert!(
        output.count("Returned to the queue") >= 1,
        "{}",
        output.tail(20)
    );
    assert!(!agent.is_protected(), "released at shutdown");
    // Visible again at once, not after the 60 s visibility timeout.
    let got = moto.receive(&queue, Duration::from_secs(5), 60).await;
    assert_eq!(got.first().map(|m| m.0.clone()), Some(id));
}

#[tokio::test]
async fn a_message_received_but_not_started_goes_back_at_once_on_sigterm() {
    let Some(moto) = Moto::start("not_started").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    // The protect call hangs, and jobs wait up to a minute for it: the job never starts.
    agent.set_fault(Fault::Hang);
    let (queue, _) = moto.queue("waiting", 60, None).await;
    let id = moto.send(&queue, "10").await;
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("PROTECTION_WAIT_MS", "60000")],
    );
    w.output.wait_for("- Received", 1, LIMIT).await;
    let output = w.output.clone();
    assert_eq!(stop(w).await, Some(0));
    agent.release_hangs();
    assert_eq!(output.count("- Working for"), 0);
    assert_eq!(
        output.count("Returned to the queue (shutting down before it started)"),
        1
    );
    let got = moto.receive(&queue, Duration::from_secs(5), 60).await;
    assert_eq!(got.first().map(|m| m.0.clone()), Some(id));
}

#[tokio::test]
async fn an_unreadable_body_is_never_deleted_and_ends_in_the_dead_letter_queue() {
    let Some(moto) = Moto::start("unreadable_body").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, dlq) = moto.queue("bad", 60, Some(2)).await;
    let dlq = dlq.expect("dead-letter queue");
    let id = moto.send(&queue, "abc").await;
    let w = worker(&queue, moto.endpoint(), &agent, &[]);
    w.output.wait_for("- Cannot run it", 2, LIMIT).await;
    let moved = dead_lettered(&moto, &dlq, &w, LIMIT).await;
    assert_eq!(moved, (id, "abc".to_string()));
    assert_eq!(w.output.count("- Done"), 0);
    assert_eq!(
        protect_calls(&agent),
        0,
        "a message that is not a job takes no protection"
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_json_job_with_fields_besides_work_ms_is_a_job_not_a_dead_letter() {
    let Some(moto) = Moto::start("unknown_json_fields").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, dlq) = moto.queue("traced", 60, Some(1)).await;
    let dlq = dlq.expect("dead-letter queue");
    let id = moto
        .send(&queue, r#"{"work_ms":200,"trace_id":"abc"}"#)
        .await;
    let w = worker(&queue, moto.endpoint(), &agent, &[]);
    w.output.wait_for("- Done", 1, LIMIT).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    assert_eq!(ids_with(&w, "- Done").get(&id), Some(&1));
    assert_eq!(w.output.count("- Working for 200 milliseconds"), 1);
    assert_eq!(
        w.output.count("- Cannot run it"),
        0,
        "{}",
        w.output.tail(10)
    );
    assert_eq!(moto.depth(&dlq).await, (0, 0), "nothing dead-lettered");
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn job_timeout_secs_cancels_a_long_job_and_leaves_its_message_for_a_retry() {
    let Some(moto) = Moto::start("job_timeout_secs").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("timeout", 60, None).await;
    let id = moto.send(&queue, "60000").await;
    let port = support::free_port().to_string();
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("JOB_TIMEOUT_SECS", "1"), ("STATUS_PORT", &port)],
    );
    w.output.wait_for("- Timed out after", 1, LIMIT).await;
    // Retried after the back-off (2 s), and timed out again: never deleted.
    w.output.wait_for("- Timed out after", 2, LIMIT).await;
    assert_eq!(ids_with(&w, "- Received").get(&id), Some(&2));
    assert_eq!(w.output.count("- Done"), 0);
    let doc = status(&port).await;
    // One message timed out on both its deliveries: counted once (messages, not receives).
    assert_eq!(doc["timed_out"], 1, "{doc}");
    assert_eq!(doc["redelivered"], 1, "{doc}");
    assert_eq!(doc["done"], 0, "{doc}");
    assert_eq!(moto.depth(&queue).await.0 + moto.depth(&queue).await.1, 1);
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn sqs_failing_for_a_while_is_logged_once_and_the_worker_resumes_by_itself() {
    let Some(moto) = Moto::start("sqs_outage").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let (queue, _) = moto.queue("outage", 60, None).await;
    proxy.set_failing(true);
    let w = worker(&queue, &proxy.url(), &agent, &[]);
    // The check of the queue at start-up meets the outage first (and starts anyway); then three
    // receives fail.
    w.output
        .wait_for("Cannot receive from the queue", 1, LIMIT)
        .await;
    let failed_before = proxy.failed();
    let start = std::time::Instant::now();
    while proxy.failed() < failed_before + 2 {
        assert!(
            start.elapsed() < LIMIT,
            "the worker gave up retrying:\n{}",
            w.output.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        moto.send(&queue, "10").await;
    }
    proxy.set_failing(false);
    w.output.wait_for("- Done", 3, LIMIT).await;
    assert_eq!(
        w.output.count("Cannot receive from the queue"),
        1,
        "{}",
        w.output.tail(30)
    );
    assert_eq!(w.output.count("Receiving from the queue works again"), 1);
    assert_eq!(stop(w).await, Some(0));
}

/// Jobs run and are deleted while ECS refuses protection with `fault`; the refusal is logged once.
async fn jobs_run_while_protection_is_refused(test: &str, fault: Fault) {
    let Some(moto) = Moto::start(test).await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(fault);
    let (queue, _) = moto.queue("refused", 60, None).await;
    moto.send(&queue, "10").await;
    moto.send(&queue, "10").await;
    let w = worker(&queue, moto.endpoint(), &agent, &[]);
    w.output.wait_for("- Done", 2, LIMIT).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    assert_eq!(
        w.output.count("Task protection rejected"),
        1,
        "logged once per streak"
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_job_whose_protection_is_rejected_still_runs_and_is_deleted() {
    jobs_run_while_protection_is_refused("rejected", Fault::Failure("TASK_NOT_VALID".into())).await;
}

#[tokio::test]
async fn a_job_whose_protection_is_blocked_by_the_deployment_still_runs_and_is_deleted() {
    jobs_run_while_protection_is_refused("blocked", Fault::Failure("DEPLOYMENT_BLOCKED".into()))
        .await;
}

#[tokio::test]
async fn create_queue_and_send_need_neither_the_console_nor_the_aws_cli() {
    let Some(moto) = Moto::start("create_queue_and_send").await else {
        return;
    };
    let run = |args: &[&str], queue: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_queue-consumer"));
        command
            .env_clear()
            .env("AWS_ENDPOINT_URL", moto.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .args(args);
        if let Some(queue) = queue {
            command.env("QUEUE_URL", queue);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let queue = run(&["create-queue", "made"], None);
    assert!(queue.ends_with("/made"), "{queue}");
    let attrs = moto
        .sqs()
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    let redrive = &attrs[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy];
    assert!(
        redrive.contains("made-dlq") && redrive.contains('3'),
        "{redrive}"
    );
    assert_eq!(
        attrs[&aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout],
        "60"
    );

    let sent = run(&["send", "--count", "12", "250"], Some(&queue));
    assert!(sent.contains("Sent 12 jobs of 250 milliseconds"), "{sent}");
    assert_eq!(moto.depth(&queue).await, (12, 0));
    let got = moto.receive(&queue, Duration::from_secs(1), 60).await;
    assert!(!got.is_empty() && got.iter().all(|m| m.1 == "250"));
}

#[test]
fn without_a_queue_it_exits_2_and_says_which_variable_to_set() {
    let out = Command::new(env!("CARGO_BIN_EXE_queue-consumer"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("QUEUE_URL") && err.contains("COPILOT_QUEUE_URI"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_queue-consumer"))
        .env_clear()
        .env("QUEUE_URL", "http://127.0.0.1:1/q")
        .env("WORKER_CONCURRENCY", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WORKER_CONCURRENCY") && err.contains("1..=100"),
        "{err}"
    );
}

/// The EMF documents in a process's output, parsed.
fn emf_lines(proc: &Proc) -> Vec<serde_json::Value> {
    proc.output
        .lines()
        .iter()
        .filter(|l| l.starts_with('{') && l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).expect("an EMF line is JSON"))
        .collect()
}

#[tokio::test]
async fn the_worker_reports_its_jobs_as_emf_lines_and_prometheus_text() {
    let Some(moto) = Moto::start("worker_metrics").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("metrics", 60, None).await;
    for _ in 0..3 {
        moto.send(&queue, "10").await;
    }
    let port = support::free_port().to_string();
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("METRICS_EMF", "on"),
            ("METRICS_INTERVAL_SECS", "1"),
            ("METRICS_SERVICE_NAME", "queue-consumer"),
            ("METRICS_PROMETHEUS_PORT", &port),
            ("METRICS_BIND_ADDRESS", "127.0.0.1"),
        ],
    );
    w.output.wait_for("- Done", 3, LIMIT).await;
    // EMF: JobsDone is what each interval added; over the lines it sums to the jobs done.
    let start = std::time::Instant::now();
    let done = loop {
        let lines = emf_lines(&w);
        let done: f64 = lines.iter().map(|d| d["JobsDone"].as_f64().unwrap()).sum();
        if done >= 3.0 || start.elapsed() > LIMIT {
            break (done, lines);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.0, 3.0, "{:#?}", done.1);
    let first = &done.1[0];
    assert_eq!(first["ServiceName"], "queue-consumer");
    assert_eq!(first["ClusterName"], "local");
    assert_eq!(
        first["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "ECSTaskProtection"
    );
    // Prometheus: running totals.
    let text = support::prometheus_text(&port).await;
    let value = |name: &str| support::prometheus_value(&text, name);
    assert_eq!(value("ecs_task_protection_jobs_done_total"), 3.0);
    assert!(value("ecs_task_protection_protection_calls_total") >= 1.0);
    assert_eq!(stop(w).await, Some(0));
}

/// The settings that run the drain watcher against `ecs` (its API and task metadata endpoint),
/// looking every second, with `/healthz` and `/status` on `port`.
fn watching(ecs: &StandInEcs, port: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri()),
        ("ECS_ENDPOINT_URL", ecs.endpoint_url()),
        ("DRAIN_WATCH_INTERVAL_SECS", "1".into()),
        ("STATUS_PORT", port.into()),
    ]
}

/// Borrowed settings for [`worker`].
fn refs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `GET http://127.0.0.1:PORT/PATH`: the HTTP status and the body.
async fn get(port: &str, path: &str) -> (u16, String) {
    let answer = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .expect("the status endpoint answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

/// The worker's `/status`.
async fn status(port: &str) -> serde_json::Value {
    let (code, body) = get(port, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// Waits until `/healthz` answers `code`.
async fn wait_health(port: &str, code: u16) {
    let start = std::time::Instant::now();
    loop {
        let (got, body) = get(port, "/healthz").await;
        if got == code {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "/healthz answers {got} ({body:?}), wanted {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of the first line containing `needle`.
fn line_of(proc: &Proc, needle: &str) -> Option<usize> {
    proc.output.lines().iter().position(|l| l.contains(needle))
}

/// A long poll cancelled by a drain may still take a message that arrives while moto finishes it
/// (SQS does the same); sending after one long poll (1 s in these tests) has surely ended avoids
/// that.
const ONE_LONG_POLL: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_trickle_of_jobs_leaves_the_task_unprotected_between_them_after_a_short_grace() {
    let Some(moto) = Moto::start("trickle").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("trickle", 60, None).await;
    // A long poll as long as SQS allows, which a trickle of jobs never lets come back empty; no
    // hold-over, so that only the grace after a job keeps protection.
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("RECEIVE_WAIT_SECS", "20"),
            ("PROTECTION_MAINTAIN_PERCENT", "0"),
        ],
    );
    w.output.wait_for("Taking jobs from", 1, LIMIT).await;
    for n in 1..=3 {
        moto.send(&queue, "100").await;
        w.output.wait_for("- Done", n, LIMIT).await;
        let done = std::time::Instant::now();
        while agent.is_protected() {
            assert!(
                done.elapsed() < Duration::from_secs(5),
                "job {n} ended with nothing else in hand, and the task is still protected \
                 {:?} later: {:?}",
                done.elapsed(),
                agent.put_calls()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let released_after = done.elapsed();
        assert!(
            released_after >= Duration::from_millis(1500),
            "kept for the 2 s grace, released after {released_after:?}"
        );
        // And it stays unprotected while nothing is in hand.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!agent.is_protected(), "protected again with no job in hand");
    }
    let puts: Vec<Option<bool>> = agent.put_calls().iter().map(|c| c.enabled).collect();
    assert_eq!(
        puts,
        [Some(true), Some(false)].repeat(3),
        "a protect and a release per job"
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_deployment_drains_the_worker_its_job_finishes_protection_goes_and_a_rollback_resumes_it()
{
    let Some(moto) = Moto::start("deployment_drain").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let ecs = StandInEcs::start().await.unwrap();
    let steady = ecs.service();
    let (queue, _) = moto.queue("deploy", 60, None).await;
    let first = moto.send(&queue, "6000").await;
    let port = support::free_port().to_string();
    let mut settings = watching(&ecs, &port);
    // A free slot, so that the worker would receive while the first job runs.
    settings.push(("WORKER_CONCURRENCY", "2".into()));
    // A 50 % hold-over would keep protection for 30 s after the job: draining skips it.
    settings.push(("PROTECTION_MAINTAIN_PERCENT", "50".into()));
    let w = worker(&queue, moto.endpoint(), &agent, &refs(&settings));
    w.output.wait_for("- Working for 6000", 1, LIMIT).await;
    assert!(agent.is_protected());

    ecs.begin_deployment(&task_definition_arn(2));
    w.output
        .wait_for("Draining: deployment in progress", 1, LIMIT)
        .await;
    assert!(
        w.output.count("No new jobs are taken") == 1,
        "{}",
        w.output.tail(10)
    );
    let doc = status(&port).await;
    assert_eq!(doc["draining"], true, "{doc}");
    assert_eq!(doc["drain_reason"], "deployment in progress", "{doc}");
    assert_eq!(doc["protection"]["draining"], true, "{doc}");
    assert_eq!(
        get(&port, "/healthz").await.0,
        200,
        "healthy while draining"
    );
    tokio::time::sleep(ONE_LONG_POLL).await;
    let second = moto.send(&queue, "100").await;

    // The job in hand finishes; protection goes at once; the second job stays on the queue.
    w.output.wait_for("- Done", 1, LIMIT).await;
    assert!(
        line_of(&w, "Draining:") < line_of(&w, "- Done"),
        "the job finished while draining:\n{}",
        w.output.tail(20)
    );
    support::eventually(
        "released as soon as the job ended, skipping the hold-over",
        || !agent.is_protected(),
    )
    .await;
    wait_depth(&moto, &queue, (1, 0)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.output.count(&second), 0, "no receive while draining");
    assert_eq!(get(&port, "/healthz").await.0, 200);

    // Rolled back: the service is on the task's own deployment again.
    ecs.set_service(steady);
    w.output
        .wait_for("No longer draining: taking jobs again", 1, LIMIT)
        .await;
    w.output.wait_for("- Done", 2, LIMIT).await;
    let mut both = vec![first, second];
    both.sort();
    assert_eq!(ids_with(&w, "- Done").into_keys().collect::<Vec<_>>(), both);
    assert_eq!(status(&port).await["draining"], false);
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_deployments_drain_deadline_returns_a_job_still_running_to_the_queue_at_once() {
    let Some(moto) = Moto::start("drain_deadline").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let ecs = StandInEcs::start().await.unwrap();
    let (queue, _) = moto.queue("deadline", 60, None).await;
    let id = moto.send(&queue, "60000").await;
    let port = support::free_port().to_string();
    let mut settings = watching(&ecs, &port);
    settings.push(("DRAIN_DEADLINE_SECS", "2".into()));
    let w = worker(&queue, moto.endpoint(), &agent, &refs(&settings));
    w.output.wait_for("- Working for 60000", 1, LIMIT).await;
    ecs.begin_deployment(&task_definition_arn(2));
    w.output
        .wait_for("Draining: deployment in progress", 1, LIMIT)
        .await;
    w.output
        .wait_for(
            "Returned to the queue (the drain deadline passed before it finished)",
            1,
            LIMIT,
        )
        .await;
    support::eventually("released at the deadline", || !agent.is_protected()).await;
    // Visible again at once, not after the 60 s visibility timeout.
    let got = moto.receive(&queue, Duration::from_secs(5), 60).await;
    assert_eq!(got.first().map(|m| m.0.clone()), Some(id));
    let doc = status(&port).await;
    assert_eq!(doc["returned"], 1, "{doc}");
    assert_eq!(
        doc["draining"], true,
        "still draining: the deployment goes on"
    );
    assert_eq!(get(&port, "/healthz").await.0, 200);
    assert_eq!(w.output.count("- Done"), 0);
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_scale_in_drain_lets_a_long_job_finish_past_the_drain_deadline() {
    let Some(moto) = Moto::start("scale_in_drain").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let ecs = StandInEcs::start().await.unwrap();
    let (queue, _) = moto.queue("scale-in", 60, None).await;
    moto.send(&queue, "5000").await;
    let port = support::free_port().to_string();
    let mut settings = watching(&ecs, &port);
    settings.push(("DRAIN_DEADLINE_SECS", "1".into()));
    let w = worker(&queue, moto.endpoint(), &agent, &refs(&settings));
    w.output.wait_for("- Working for 5000", 1, LIMIT).await;
    // Every task busy (ECS's table says so), this one the youngest: ECS needs it gone.
    ecs.add_busy_tasks(2);
    ecs.set_counts(1, 3);
    w.output.wait_for("Draining: scale-in", 1, LIMIT).await;
    assert_eq!(status(&port).await["drain_reason"], "scale-in");
    w.output.wait_for("- Done", 1, LIMIT).await;
    assert!(
        line_of(&w, "Draining: scale-in") < line_of(&w, "- Done"),
        "{}",
        w.output.tail(20)
    );
    assert_eq!(w.output.count("Returned to the queue"), 0);
    assert_eq!(w.output.count("Drain deadline"), 0);
    wait_depth(&moto, &queue, (0, 0)).await;
    support::eventually("released once the job ended", || !agent.is_protected()).await;
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn queue_consumer_drain_sends_sigusr1_which_stops_receiving_and_keeps_health_200() {
    let Some(moto) = Moto::start("sigusr1_drain").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("operator", 60, None).await;
    moto.send(&queue, "3000").await;
    let port = support::free_port().to_string();
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("STATUS_PORT", &port),
            ("WORKER_CONCURRENCY", "2"),
            ("PROTECTION_MAINTAIN_PERCENT", "50"),
        ],
    );
    w.output.wait_for("- Working for 3000", 1, LIMIT).await;
    // `queue-consumer drain` is how an operator sends SIGUSR1 in a shell-less container.
    let out = Command::new(env!("CARGO_BIN_EXE_queue-consumer"))
        .env_clear()
        .args(["drain", "--pid", &w.pid().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.output
        .wait_for("Draining: operator request (SIGUSR1)", 1, LIMIT)
        .await;
    assert_eq!(
        status(&port).await["drain_reason"],
        "operator request (SIGUSR1)"
    );
    assert_eq!(get(&port, "/healthz").await.0, 200);
    tokio::time::sleep(ONE_LONG_POLL).await;
    let second = moto.send(&queue, "100").await;
    w.output.wait_for("- Done", 1, LIMIT).await;
    support::eventually("released as soon as the job ended", || {
        !agent.is_protected()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.output.count(&second), 0, "no receive while draining");
    assert_eq!(moto.depth(&queue).await, (1, 0));
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_queue_deleted_mid_job_ends_the_jobs_hold_is_logged_once_and_turns_health_503() {
    let Some(moto) = Moto::start("deleted_queue").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("deleted", 60, None).await;
    moto.send(&queue, "3000").await;
    moto.send(&queue, "3000").await;
    let port = support::free_port().to_string();
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("STATUS_PORT", &port),
            ("WORKER_CONCURRENCY", "2"),
            ("PROTECTION_MAINTAIN_PERCENT", "0"),
        ],
    );
    w.output.wait_for("- Working for 3000", 2, LIMIT).await;
    moto.sqs()
        .delete_queue()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    w.output.wait_for("- Done", 2, LIMIT).await;
    support::eventually(
        "no protection held for jobs that cannot be finished",
        || !agent.is_protected(),
    )
    .await;
    wait_health(&port, 503).await;
    let doc = status(&port).await;
    assert!(
        doc["last_delete_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("queue not found: sqs:DeleteMessage")),
        "{doc}"
    );
    assert_eq!(doc["delete_failures"], 2, "{doc}");
    assert_eq!(
        w.output
            .count("Cannot delete finished messages: queue not found: sqs:DeleteMessage"),
        1,
        "logged once, with the action:\n{}",
        w.output.tail(20)
    );
    w.output
        .wait_for(
            "Cannot receive from the queue: queue not found: sqs:ReceiveMessage",
            1,
            LIMIT,
        )
        .await;
    assert_eq!(w.output.count("task not found"), 0, "{}", w.output.tail(20));
    assert_eq!(w.output.count("by ECS"), 0, "{}", w.output.tail(20));
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_delete_the_task_role_may_not_make_ends_the_jobs_hold_and_health_recovers_once_it_may() {
    let Some(moto) = Moto::start("delete_denied").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    proxy.deny(Some("DeleteMessageBatch"));
    let (queue, _) = moto.queue("denied", 60, None).await;
    moto.send(&queue, "100").await;
    moto.send(&queue, "100").await;
    let port = support::free_port().to_string();
    let w = worker(
        &queue,
        &proxy.url(),
        &agent,
        &[("STATUS_PORT", &port), ("PROTECTION_MAINTAIN_PERCENT", "0")],
    );
    w.output.wait_for("- Done", 2, LIMIT).await;
    support::eventually("no protection held for jobs that cannot be deleted", || {
        !agent.is_protected()
    })
    .await;
    wait_health(&port, 503).await;
    let denied =
        "Cannot delete finished messages: access denied: the task role lacks sqs:DeleteMessage";
    assert_eq!(
        w.output.count(denied),
        1,
        "logged once:\n{}",
        w.output.tail(20)
    );
    assert_eq!(
        w.output
            .count("Hint: the task role needs sqs:DeleteMessage on the queue"),
        1
    );
    // The role is fixed: the next delete works, and so does the health check.
    proxy.deny(None);
    moto.send(&queue, "100").await;
    w.output.wait_for("- Done", 3, LIMIT).await;
    w.output
        .wait_for("Deleting messages works again", 1, LIMIT)
        .await;
    wait_health(&port, 200).await;
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_queue_that_does_not_exist_is_reported_as_a_missing_queue_not_as_an_ecs_error() {
    let Some(moto) = Moto::start("unknown_queue").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let queue = format!("{}/123456789012/nowhere", moto.endpoint());
    // Since issue 18 the worker does not start on it (exit 2; tests/worker_ops.rs has the rest).
    let mut w = worker(&queue, moto.endpoint(), &agent, &[]);
    let exit = w.wait_exit(LIMIT).await.expect("exits at start-up");
    assert_eq!(exit.code(), Some(2), "{}", w.output.tail(10));
    assert_eq!(
        w.output.count("queue not found: sqs:GetQueueAttributes"),
        1,
        "{}",
        w.output.tail(10)
    );
    assert_eq!(w.output.count("task not found"), 0);
}

#[tokio::test]
async fn a_malformed_queue_url_or_region_exits_2_naming_the_variable() {
    for (variable, value) in [
        ("QUEUE_URL", "jobs"),
        ("QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/jobs"),
        (
            "COPILOT_QUEUE_URI",
            "sqs.us-east-1.amazonaws.com/123456789012/jobs",
        ),
        ("QUEUE_REGION", "us-east"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_queue-consumer"));
        command
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("STATUS_PORT", "0")
            .env(variable, value);
        if variable != "QUEUE_URL" && variable != "COPILOT_QUEUE_URI" {
            command.env("QUEUE_URL", "http://127.0.0.1:1/123456789012/jobs");
        }
        let mut proc = Proc::spawn("queue-consumer", command, false).unwrap();
        let exit = proc
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{variable}={value}: started instead of exiting: {e}"));
        assert_eq!(exit.code(), Some(2), "{variable}={value}");
        assert!(
            proc.output.count(variable) >= 1,
            "{variable}={value}: the error names the variable:\n{}",
            proc.output.tail(5)
        );
    }
}

/// A script in a temporary directory, run as `sh SCRIPT` (a script just written can fail to exec
/// with ETXTBSY while another test thread forks).
fn script(dir: &support::process::TempDir, name: &str, text: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    serde_json::json!(["/bin/sh", path.to_string_lossy()]).to_string()
}

#[tokio::test]
async fn job_command_runs_each_job_once_with_its_message_id_and_body_while_the_task_is_protected() {
    let Some(moto) = Moto::start("job_command").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("command-jobs", 60, None).await;
    let dir = support::process::TempDir::new("job-command").unwrap();
    let out = dir.0.join("done");
    std::fs::create_dir(&out).unwrap();
    // Records each job as a file named after JOB_MESSAGE_ID holding the body and the receive
    // count, and fails if a file is there already (a job run twice).
    let command = script(
        &dir,
        "job.sh",
        &format!(
            "f={}/$JOB_MESSAGE_ID\n[ -e \"$f\" ] && exit 9\nbody=$(cat)\n\
             echo \"$body $JOB_RECEIVE_COUNT ${{JOB_GROUP_ID-none}}\" > \"$f\"\n\
             echo \"did $body\"\n",
            out.display()
        ),
    );
    let mut sent = BTreeMap::new();
    for i in 0..20 {
        sent.insert(moto.send(&queue, &format!("job-{i}")).await, i);
    }
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("JOB_COMMAND", &command),
            ("WORKER_CONCURRENCY", "4"),
            ("PATH", "/usr/bin:/bin"),
        ],
    );
    w.output.wait_for("- Done", 20, LIMIT).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let ran: BTreeMap<String, String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), text)
        })
        .collect();
    assert_eq!(ran.len(), 20, "one file per job: {ran:?}");
    for (id, i) in &sent {
        assert_eq!(
            ran.get(id).map(String::as_str),
            Some(format!("job-{i} 1 none\n").as_str()),
            "JOB_MESSAGE_ID is the SQS message ID, the body came on stdin"
        );
    }
    assert!(ids_with(&w, "- Done").values().all(|n| *n == 1));
    assert_eq!(
        w.output.count("- stdout: did job-"),
        20,
        "the child's output is logged"
    );
    assert_eq!(
        protect_calls(&agent),
        1,
        "one busy period, one protect call"
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn a_failing_job_command_is_never_deleted_and_ends_in_the_dead_letter_queue() {
    let Some(moto) = Moto::start("job_command_fails").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, dlq) = moto.queue("command-fails", 60, Some(2)).await;
    let dlq = dlq.expect("dead-letter queue");
    let dir = support::process::TempDir::new("job-command-fails").unwrap();
    let command = script(&dir, "fail.sh", "cat >/dev/null\necho no >&2\nexit 3\n");
    let id = moto.send(&queue, "doomed").await;
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("JOB_COMMAND", &command), ("PATH", "/usr/bin:/bin")],
    );
    w.output.wait_for("exited with status 3", 2, LIMIT).await;
    let moved = dead_lettered(&moto, &dlq, &w, LIMIT * 2).await;
    assert_eq!(moved, (id, "doomed".to_string()));
    assert_eq!(w.output.count("- Done"), 0, "never deleted");
    assert!(w.output.count("- stderr: no") >= 2);
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn sigterm_reaches_the_job_commands_child_and_its_message_comes_back() {
    let Some(moto) = Moto::start("job_command_sigterm").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("command-sigterm", 60, None).await;
    let dir = support::process::TempDir::new("job-command-sigterm").unwrap();
    let marker = dir.0.join("got-sigterm");
    // Writes a file on SIGTERM and exits 143, as a well-behaved job does.
    let command = script(
        &dir,
        "long.sh",
        &format!(
            "trap 'echo term > {}; exit 143' TERM\ncat >/dev/null\necho started\n\
             i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n",
            marker.display()
        ),
    );
    moto.send(&queue, "long").await;
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("JOB_COMMAND", &command),
            ("SHUTDOWN_TIMEOUT_SECS", "10"),
            ("PATH", "/usr/bin:/bin"),
        ],
    );
    w.output.wait_for("- stdout: started", 1, LIMIT).await;
    support::eventually("protected while the command runs", || agent.is_protected()).await;
    // At the worker's SIGTERM, not at the end of its 10 s shutdown timeout.
    let mut w = w;
    w.signal("TERM").expect("SIGTERM");
    let asked = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "the child got no SIGTERM within 3 s of the worker's:\n{}",
            w.output.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = w.wait_exit(Duration::from_secs(15)).await.expect("exit");
    assert_eq!(status.code(), Some(0));
    // The job did not finish: its message is visible again, at once.
    wait_depth(&moto, &queue, (1, 0)).await;
    assert!(!agent.is_protected(), "protection released on the way out");
}

#[tokio::test]
async fn job_url_deletes_on_2xx_and_a_503_with_retry_after_comes_back_after_it() {
    use std::sync::{Arc, Mutex};
    let Some(moto) = Moto::start("job_url").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("url-jobs", 60, None).await;
    // The app: 200 for "fine"; for "busy", 503 with Retry-After: 1 the first time, then 200.
    // Records (when, message id, receive count, body) of every POST.
    type Seen = Arc<Mutex<Vec<(std::time::Instant, String, String, String)>>>;
    let seen: Seen = Arc::default();
    let app = {
        let seen = Arc::clone(&seen);
        axum::Router::new().route(
            "/jobs",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = Arc::clone(&seen);
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let mut seen = seen.lock().unwrap();
                    let busy_before = seen.iter().any(|(_, _, _, b)| b == "busy");
                    seen.push((
                        std::time::Instant::now(),
                        header("x-message-id"),
                        header("x-receive-count"),
                        body.clone(),
                    ));
                    if body == "busy" && !busy_before {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "1")],
                            "later",
                        )
                    } else {
                        (axum::http::StatusCode::OK, [("retry-after", "0")], "ok")
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jobs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fine = moto.send(&queue, "fine").await;
    let busy = moto.send(&queue, "busy").await;
    let w = worker(&queue, moto.endpoint(), &agent, &[("JOB_URL", &url)]);
    w.output.wait_for("- Done", 2, LIMIT).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let seen = seen.lock().unwrap().clone();
    let of = |id: &str| {
        seen.iter()
            .filter(|s| s.1 == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&fine).len(), 1, "2xx deleted it: {seen:?}");
    let busy_posts = of(&busy);
    assert_eq!(busy_posts.len(), 2, "503 once, then 200: {seen:?}");
    assert_eq!(
        (busy_posts[0].2.as_str(), busy_posts[1].2.as_str()),
        ("1", "2"),
        "X-Receive-Count"
    );
    let waited = busy_posts[1].0 - busy_posts[0].0;
    assert!(
        waited >= Duration::from_millis(900),
        "came back after Retry-After, not at once: {waited:?}"
    );
    assert_eq!(stop(w).await, Some(0));
}
