//! The `queue-consumer` binary's honest counters, loud failures and FIFO commands, against a real
//! SQS API (moto's server) and the stand-in ECS agent: a queue that does not exist (or that the
//! task role may not read) stops start-up with exit code 2; a queue deleted while the worker runs
//! turns `/healthz` 503 once receives have failed for `UNHEALTHY_AFTER_SECS`, and 200 again once
//! one works; 8 bad messages received 3 times each count as 8; the outcome counters, errors and
//! durations are in `/status`, in the EMF lines and in the Prometheus text; and `create-queue
//! --fifo --max-receive-count N` and `send --group-id` make and fill a FIFO queue the worker then
//! empties.
#![cfg(unix)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use ecs_stand_in::StandInAgent;
use support::moto::Moto;
use support::process::Proc;
use support::proxy::FaultProxy;

/// Long enough for anything a test waits for on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);

/// The binary with test credentials for moto at `endpoint`, and nothing else of the environment.
fn command(endpoint: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_queue-consumer"));
    command
        .env_clear()
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// Starts a worker on `queue` through `endpoint`, with the stand-in agent, polling every second,
/// plus `extra` settings.
fn worker(queue: &str, endpoint: &str, agent: &StandInAgent, extra: &[(&str, &str)]) -> Proc {
    let mut command = command(endpoint);
    command
        .env("QUEUE_URL", queue)
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

/// Runs a command of the binary to its end: (exit code, stdout, stderr).
fn run(mut command: Command, args: &[&str]) -> (Option<i32>, String, String) {
    let out = command.args(args).output().expect("run queue-consumer");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Sends SIGTERM and returns the exit code.
async fn stop(mut proc: Proc) -> Option<i32> {
    proc.signal("TERM").expect("SIGTERM");
    let status = proc.wait_exit(Duration::from_secs(15)).await.expect("exit");
    status.code()
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

/// Waits until `/healthz` answers `code`; returns its body.
async fn wait_health(port: &str, code: u16, proc: &Proc) -> String {
    let start = Instant::now();
    loop {
        let (got, body) = get(port, "/healthz").await;
        if got == code {
            return body;
        }
        assert!(
            start.elapsed() < LIMIT,
            "/healthz answers {got} ({body:?}), wanted {code}:\n{}",
            proc.output.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The EMF documents in a process's output, parsed as JSON.
fn emf_lines(proc: &Proc) -> Vec<serde_json::Value> {
    proc.output
        .lines()
        .iter()
        .filter(|l| l.starts_with('{') && l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).expect("an EMF line is JSON"))
        .collect()
}

/// What the EMF lines of `lines` add up to for the counter `name` (each line carries what it
/// added in its interval), checking that every line declares it with the unit Count.
fn emf_sum(lines: &[serde_json::Value], name: &str) -> f64 {
    lines
        .iter()
        .map(|doc| {
            let declared = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .expect("metric definitions")
                .iter()
                .any(|m| m["Name"] == name && m["Unit"] == "Count");
            assert!(declared, "{name} is declared with unit Count in {doc}");
            doc[name]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} in {doc}"))
        })
        .sum()
}

/// Parses Prometheus text (format 0.0.4, no labels): every sample line is `NAME VALUE` with a
/// number, and belongs to a family declared by a `# TYPE` line before it (a summary's samples are
/// `FAMILY_sum` and `FAMILY_count`). Returns the samples by name, and the families' types.
fn parse_prometheus(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
            types.insert(family.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(' ').expect("NAME VALUE");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        let family = match types.get(name) {
            Some(_) => name,
            None => name
                .strip_suffix("_sum")
                .or_else(|| name.strip_suffix("_count"))
                .filter(|f| types.get(*f).map(String::as_str) == Some("summary"))
                .unwrap_or_else(|| panic!("{name} has no # TYPE line before it:\n{text}")),
        };
        assert!(!family.is_empty());
        samples.insert(name.to_string(), value);
    }
    (samples, types)
}

#[tokio::test]
async fn a_queue_that_does_not_exist_stops_start_up_with_exit_2_naming_queue_url_and_the_action() {
    let Some(moto) = Moto::start("missing_queue_exits_2").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let queue = format!("{}/123456789012/nowhere", moto.endpoint());
    for variable in ["QUEUE_URL", "COPILOT_QUEUE_URI"] {
        let mut command = command(moto.endpoint());
        command
            .env(variable, &queue)
            .env("PROTECTION_BACKEND", "agent")
            .env("ECS_AGENT_URI", agent.uri())
            .env("STATUS_PORT", "0");
        let mut proc = Proc::spawn("queue-consumer", command, false).unwrap();
        let exit = proc
            .wait_exit(LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{variable}: kept running on a missing queue: {e}"));
        assert_eq!(exit.code(), Some(2), "{}", proc.output.tail(10));
        let said = proc.output.tail(10);
        for needle in [
            variable,
            "queue not found: sqs:GetQueueAttributes",
            "/123456789012/nowhere",
        ] {
            assert!(said.contains(needle), "{variable}: {needle:?} in:\n{said}");
        }
        assert_eq!(proc.output.count("Taking jobs from"), 0, "{said}");
        assert_eq!(proc.output.count(".."), 0, "one period at a time: {said}");
        assert_eq!(
            proc.output.count("task not found"),
            0,
            "worded as SQS's: {said}"
        );
    }
}

#[tokio::test]
async fn a_queue_the_task_role_may_not_read_stops_start_up_with_exit_2_naming_the_actions() {
    let Some(moto) = Moto::start("unreadable_queue_exits_2").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    proxy.deny(Some("GetQueueAttributes"));
    let (queue, _) = moto.queue("forbidden", 60, None).await;
    let mut proc = worker(&queue, &proxy.url(), &agent, &[]);
    let exit = proc.wait_exit(LIMIT).await.expect("exits");
    assert_eq!(exit.code(), Some(2), "{}", proc.output.tail(10));
    let said = proc.output.tail(10);
    for needle in [
        "QUEUE_URL",
        "access denied: the task role lacks sqs:GetQueueAttributes",
        "sqs:ReceiveMessage, sqs:ChangeMessageVisibility and sqs:DeleteMessage",
    ] {
        assert!(said.contains(needle), "{needle:?} in:\n{said}");
    }
}

#[tokio::test]
async fn a_queue_deleted_while_running_turns_healthz_503_after_the_window_and_200_once_it_is_back()
{
    let Some(moto) = Moto::start("deleted_queue_health").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("vanishing", 60, None).await;
    let port = support::free_port().to_string();
    // The window shortened from a minute to 3 s through its setting.
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("STATUS_PORT", &port), ("UNHEALTHY_AFTER_SECS", "3")],
    );
    w.output.wait_for("Taking jobs from", 1, LIMIT).await;
    assert_eq!(wait_health(&port, 200, &w).await, "ok\n");
    moto.sqs()
        .delete_queue()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    let deleted = Instant::now();
    w.output
        .wait_for(
            "Cannot receive from the queue: queue not found: sqs:ReceiveMessage",
            1,
            LIMIT,
        )
        .await;
    let (code, _) = get(&port, "/healthz").await;
    assert_eq!(code, 200, "not at the first failed receive");
    let body = wait_health(&port, 503, &w).await;
    let after = deleted.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "503 only once receives have failed for the window: {after:?}"
    );
    assert_eq!(body, "unhealthy: receives have been failing\n");
    let doc = status(&port).await;
    assert_eq!(doc["healthy"], false, "{doc}");
    assert_eq!(doc["unhealthy_reason"], "receives_failing", "{doc}");
    assert!(doc["receive_errors"].as_u64().unwrap() >= 2, "{doc}");
    w.output
        .wait_for("Every receive has failed for", 1, LIMIT)
        .await;
    // The queue is back: the next receive works, and so does the health check.
    let (again, _) = moto.queue("vanishing", 60, None).await;
    assert_eq!(again, queue);
    wait_health(&port, 200, &w).await;
    w.output
        .wait_for("Receiving from the queue works again", 1, LIMIT)
        .await;
    assert_eq!(
        status(&port).await["unhealthy_reason"],
        serde_json::Value::Null
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn eight_bad_messages_received_three_times_each_count_as_eight_in_status_emf_and_prometheus()
{
    let Some(moto) = Moto::start("eight_bad_messages").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, dlq) = moto.queue("poison", 60, Some(3)).await;
    let dlq = dlq.expect("dead-letter queue");
    for _ in 0..8 {
        moto.send(&queue, "abc").await;
    }
    let port = support::free_port().to_string();
    let prometheus = support::free_port().to_string();
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("STATUS_PORT", &port),
            ("WORKER_CONCURRENCY", "10"),
            ("METRICS_EMF", "on"),
            ("METRICS_INTERVAL_SECS", "1"),
            ("METRICS_PROMETHEUS_PORT", &prometheus),
            ("METRICS_BIND_ADDRESS", "127.0.0.1"),
        ],
    );
    // Each is refused 3 times (after back-offs of 2 s and 4 s); the 4th receive moves it.
    w.output.wait_for("- Cannot run it", 24, LIMIT).await;
    let start = Instant::now();
    while moto.depth(&dlq).await != (8, 0) {
        assert!(
            start.elapsed() < LIMIT,
            "dead-letter queue {:?}:\n{}",
            moto.depth(&dlq).await,
            w.output.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let doc = status(&port).await;
    assert_eq!(doc["invalid"], 8, "{doc}");
    assert_eq!(doc["received"], 8, "{doc}");
    assert_eq!(doc["redelivered"], 16, "{doc}");
    assert_eq!(
        (doc["done"].clone(), doc["failed"].clone()),
        (0.into(), 0.into())
    );
    // Every line written after the last refusal has the totals.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = emf_lines(&w);
    assert_eq!(emf_sum(&lines, "JobsInvalid"), 8.0);
    assert_eq!(emf_sum(&lines, "MessagesReceived"), 8.0);
    assert_eq!(emf_sum(&lines, "MessagesRedelivered"), 16.0);
    let (samples, _) = parse_prometheus(&support::prometheus_text(&prometheus).await);
    assert_eq!(samples["ecs_task_protection_jobs_invalid_total"], 8.0);
    assert_eq!(samples["ecs_task_protection_messages_received_total"], 8.0);
    assert_eq!(
        samples["ecs_task_protection_messages_redelivered_total"],
        16.0
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn the_metric_outputs_carry_every_outcome_counter_the_errors_and_the_durations() {
    let Some(moto) = Moto::start("outcome_metrics").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("outcomes", 60, None).await;
    for body in ["100", "100", "100", "abc", "abc", "60000"] {
        moto.send(&queue, body).await;
    }
    let port = support::free_port().to_string();
    let prometheus = support::free_port().to_string();
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[
            ("STATUS_PORT", &port),
            ("WORKER_CONCURRENCY", "6"),
            ("JOB_TIMEOUT_SECS", "1"),
            ("METRICS_EMF", "on"),
            ("METRICS_INTERVAL_SECS", "1"),
            ("METRICS_SERVICE_NAME", "queue-consumer"),
            ("METRICS_PROMETHEUS_PORT", &prometheus),
            ("METRICS_BIND_ADDRESS", "127.0.0.1"),
        ],
    );
    w.output.wait_for("- Done", 3, LIMIT).await;
    w.output.wait_for("- Timed out after", 1, LIMIT).await;
    w.output.wait_for("- Cannot run it", 2, LIMIT).await;
    // One more EMF line after the last outcome.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let doc = status(&port).await;
    for (field, want) in [
        ("received", 6),
        ("done", 3),
        ("invalid", 2),
        ("timed_out", 1),
        ("failed", 0),
        ("retried", 0),
        ("receive_errors", 0),
        ("delete_failures", 0),
    ] {
        assert_eq!(doc[field], want, "{field}: {doc}");
    }
    let runs = doc["job_duration"]["count"].as_u64().unwrap();
    assert!(runs >= 4, "3 done and at least 1 timed out: {doc}");
    assert!(
        doc["job_duration"]["max_seconds"].as_f64().unwrap() >= 0.9,
        "the timed-out job ran about 1 s: {doc}"
    );
    assert_eq!(doc["message_age"]["count"], 6, "one age per message: {doc}");

    let lines = emf_lines(&w);
    for (name, want) in [
        ("MessagesReceived", 6.0),
        ("JobsDone", 3.0),
        ("JobsInvalid", 2.0),
        ("JobsTimedOut", 1.0),
        ("JobsFailed", 0.0),
        ("JobsRetried", 0.0),
        ("JobsReturned", 0.0),
        ("ReceiveErrors", 0.0),
        ("DeleteErrors", 0.0),
    ] {
        assert_eq!(emf_sum(&lines, name), want, "{name}");
    }
    // Durations: each line with one has it as the interval's mean, in seconds, declared so.
    let with_duration: Vec<_> = lines
        .iter()
        .filter(|d| d.get("JobDuration").is_some())
        .collect();
    assert!(!with_duration.is_empty(), "{lines:#?}");
    for doc in &with_duration {
        let mean = doc["JobDuration"].as_f64().unwrap();
        assert!((0.05..=2.0).contains(&mean), "{doc}");
        assert!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["Name"] == "JobDuration" && m["Unit"] == "Seconds"),
            "{doc}"
        );
    }
    assert!(lines.iter().any(|d| d.get("MessageAge").is_some()));
    // JobsInHand is in every line: the CDK app counts the tasks by its samples.
    assert!(lines.iter().all(|d| d["JobsInHand"].is_number()));

    let (samples, types) = parse_prometheus(&support::prometheus_text(&prometheus).await);
    let p = |name: &str| samples[&format!("ecs_task_protection_{name}")];
    for (name, want) in [
        ("messages_received_total", 6.0),
        ("jobs_done_total", 3.0),
        ("jobs_invalid_total", 2.0),
        ("jobs_timed_out_total", 1.0),
        ("jobs_failed_total", 0.0),
        ("jobs_retried_total", 0.0),
        ("jobs_returned_total", 0.0),
        ("receive_errors_total", 0.0),
        ("delete_errors_total", 0.0),
        ("message_age_seconds_count", 6.0),
    ] {
        assert_eq!(p(name), want, "{name}");
    }
    assert!(p("job_duration_seconds_count") >= 4.0);
    assert!(
        p("job_duration_seconds_sum") >= 1.2,
        "3 × 0.1 s and 1 s at least"
    );
    assert_eq!(
        types["ecs_task_protection_job_duration_seconds"], "summary",
        "{types:?}"
    );
    assert_eq!(stop(w).await, Some(0));
}

#[tokio::test]
async fn create_queue_fifo_with_max_receive_count_and_send_group_id_make_and_fill_a_fifo_queue() {
    let Some(moto) = Moto::start("fifo_commands").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (code, queue, err) = run(
        command(moto.endpoint()),
        &[
            "create-queue",
            "--fifo",
            "--max-receive-count",
            "5",
            "orders",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(queue.ends_with("/orders.fifo"), "{queue}");
    let attributes = |url: String| {
        let sqs = moto.sqs();
        async move {
            sqs.get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .unwrap()
                .attributes()
                .cloned()
                .unwrap_or_default()
        }
    };
    let attrs = attributes(queue.clone()).await;
    assert_eq!(attrs[&QueueAttributeName::FifoQueue], "true");
    assert_eq!(
        attrs[&QueueAttributeName::ContentBasedDeduplication],
        "true"
    );
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "5",
        "{redrive}"
    );
    assert!(
        redrive["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(":orders-dlq.fifo"),
        "{redrive}"
    );
    let dlq = queue.replace("/orders.fifo", "/orders-dlq.fifo");
    assert_eq!(
        attributes(dlq).await[&QueueAttributeName::FifoQueue],
        "true"
    );

    // Identical bodies are three jobs, not one: each message has a deduplication ID of its own.
    let mut send = command(moto.endpoint());
    send.env("QUEUE_URL", &queue);
    let (code, out, err) = run(
        send,
        &["send", "--group-id", "customer-7", "--count", "3", "200"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Sent 3 jobs of 200 milliseconds"), "{out}");
    assert!(out.contains("customer-7"), "{out}");
    assert_eq!(moto.depth(&queue).await, (3, 0));
    // Without a group, a FIFO queue is refused before any call, saying what to add.
    let mut send = command(moto.endpoint());
    send.env("QUEUE_URL", &queue);
    let (code, _, err) = run(send, &["send", "200"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--group-id") && err.contains("QUEUE_URL"),
        "{err}"
    );

    // The worker takes them: the queue's redrive policy is logged, the group's jobs run in order.
    let w = worker(
        &queue,
        moto.endpoint(),
        &agent,
        &[("WORKER_CONCURRENCY", "3")],
    );
    w.output
        .wait_for(
            "Queue: a FIFO queue; its redrive policy moves a message to the dead-letter queue after 5 receives",
            1,
            LIMIT,
        )
        .await;
    w.output.wait_for("- Done", 3, LIMIT).await;
    let start = Instant::now();
    while moto.depth(&queue).await != (0, 0) {
        assert!(start.elapsed() < LIMIT, "{}", w.output.tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stop(w).await, Some(0));

    // A standard queue takes --max-receive-count too.
    let (code, standard, err) = run(
        command(moto.endpoint()),
        &["create-queue", "--max-receive-count", "7", "plain"],
    );
    assert_eq!(code, Some(0), "{err}");
    let attrs = attributes(standard).await;
    assert!(
        !attrs.contains_key(&QueueAttributeName::FifoQueue)
            || attrs[&QueueAttributeName::FifoQueue] == "false"
    );
    assert!(
        attrs[&QueueAttributeName::RedrivePolicy].contains('7'),
        "{attrs:?}"
    );
}
