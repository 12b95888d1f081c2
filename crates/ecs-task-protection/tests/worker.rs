//! The library's SQS worker with Rust handlers, against a real SQS API (moto's server) and the
//! stand-in ECS agent: each outcome does what it says (Done deletes; RetryAfter brings the
//! message back after about the delay; Failed retries with back-off and ends in the dead-letter
//! queue, never deleted; a panic is a failed job and the worker goes on), a job is cancelled at
//! its timeout, at the shutdown timeout and at the drain deadline and its message goes back
//! whatever the handler answers, a handler that ignores its cancellation is let go, the job sees
//! its message's attributes, and on a FIFO queue a group's messages run one at a time, in order,
//! even across a failure, while two groups run in parallel. `check_queue` reads the redrive
//! policy and calls a missing queue a permanent error; `send_jobs_in_group` fills a FIFO queue
//! with identical bodies as distinct jobs.
#![cfg(unix)]

mod sqs_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use ecs_stand_in::StandInAgent;
use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::protection::ProtectionManager;
use ecs_task_protection::worker::{
    CancelReason, DrainKind, Job, Outcome, Worker, WorkerSettings, PROTECTION_DEFAULTS,
};
use sqs_support::moto::Moto;
use tokio::sync::oneshot;

/// Long enough for anything a test waits for on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);

/// One call of a test's handler.
#[derive(Debug, Clone)]
struct Call {
    body: String,
    receive_count: u32,
    group: Option<String>,
    attributes: HashMap<String, String>,
    sent: bool,
    start: Instant,
    end: Option<Instant>,
    outcome: Option<Outcome>,
    cancelled: Option<CancelReason>,
}

/// Every call of a test's handler, in the order they started.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    /// Records the start of `job`'s call; returns its index.
    fn start(&self, job: &Job) -> usize {
        let mut calls = self.0.lock().unwrap();
        calls.push(Call {
            body: job.body().to_string(),
            receive_count: job.receive_count(),
            group: job.group_id().map(str::to_string),
            attributes: job.attributes().clone(),
            sent: job.sent_at().is_some(),
            start: Instant::now(),
            end: None,
            outcome: None,
            cancelled: None,
        });
        calls.len() - 1
    }

    /// Records the end of call `i` and what it answered.
    fn end(&self, i: usize, job: &Job, outcome: Outcome) -> Outcome {
        let mut calls = self.0.lock().unwrap();
        calls[i].end = Some(Instant::now());
        calls[i].outcome = Some(outcome.clone());
        calls[i].cancelled = job.cancel_reason();
        outcome
    }

    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// The calls that answered Done and have ended, by body.
    fn done(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|c| c.outcome == Some(Outcome::Done) && c.cancelled.is_none())
            .map(|c| c.body)
            .collect()
    }

    /// Waits until `what` holds of the calls.
    async fn wait(&self, what: &str, f: impl Fn(&[Call]) -> bool) {
        let start = Instant::now();
        while !f(&self.all()) {
            assert!(
                start.elapsed() < LIMIT,
                "timed out waiting for: {what}; calls: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SDK settings that reach moto at `endpoint` over plain HTTP with test credentials.
fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                sqs_support::credentials(),
            ),
        )
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build()
}

/// Short long polls, so that tests end quickly.
fn settings() -> WorkerSettings {
    WorkerSettings::DEFAULT.with_receive_wait(Duration::from_secs(1))
}

/// A running worker: stop it with [`Running::stop`].
struct Running {
    worker: Worker,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a worker on `queue` with `handler` and `settings`, protected through `agent`.
    fn start(
        moto: &Moto,
        agent: &StandInAgent,
        queue: &str,
        settings: WorkerSettings,
        handler: impl ecs_task_protection::worker::Handler,
    ) -> Running {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let backend = AgentBackend::new(&agent.uri(), Duration::from_secs(5)).unwrap();
        let manager = ProtectionManager::start(Arc::new(backend), PROTECTION_DEFAULTS).unwrap();
        let worker = Worker::builder(&sdk_config(moto.endpoint()), queue)
            .handler(handler)
            .settings(settings)
            .build(manager)
            .unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn({
            let worker = worker.clone();
            async move {
                worker
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        Running {
            worker,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the worker and waits for its shutdown to complete.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.task)
            .await
            .expect("the worker shut down in time")
            .expect("the worker did not panic");
    }
}

/// Waits until `what` holds of the worker's status.
async fn wait_status(
    worker: &Worker,
    what: &str,
    f: impl Fn(&ecs_task_protection::worker::WorkerStatus) -> bool,
) {
    let start = Instant::now();
    while !f(&worker.status()) {
        assert!(
            start.elapsed() < LIMIT,
            "timed out waiting for: {what}; {:?}",
            worker.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_depth(moto: &Moto, queue: &str, depth: (u64, u64)) {
    let start = Instant::now();
    while moto.depth(queue).await != depth {
        assert!(
            start.elapsed() < LIMIT,
            "queue depth {:?}, wanted {depth:?}",
            moto.depth(queue).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates FIFO queue `name.fifo` (content-based deduplication); returns its URL.
async fn fifo_queue(moto: &Moto, name: &str) -> String {
    moto.sqs()
        .create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .expect("create the FIFO queue")
        .queue_url()
        .expect("url")
        .to_string()
}

/// Sends `body` to FIFO queue `queue` in group `group`.
async fn send_in_group(moto: &Moto, queue: &str, group: &str, body: &str) {
    moto.sqs()
        .send_message()
        .queue_url(queue)
        .message_body(body)
        .message_group_id(group)
        .send()
        .await
        .expect("send to the FIFO queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_deletes_the_message_and_the_job_sees_its_attributes() {
    let Some(moto) = Moto::start("done_deletes").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("done", 60, None).await;
    moto.sqs()
        .send_message()
        .queue_url(&queue)
        .message_body("resize cat.png")
        .message_attributes(
            "trace_id",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("abc")
                .build()
                .unwrap(),
        )
        .message_attributes(
            "priority",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("5")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |job: Job| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&job);
                calls.end(i, &job, Outcome::Done)
            }
        }
    };
    let w = Running::start(&moto, &agent, &queue, settings(), handler);
    calls.wait("the job done", |c| c.len() == 1).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let call = &calls.all()[0];
    assert_eq!(call.receive_count, 1);
    assert_eq!(call.group, None, "a standard queue has no groups");
    assert!(call.sent, "the sent time is there");
    assert_eq!(
        call.attributes.get("trace_id").map(String::as_str),
        Some("abc")
    );
    assert_eq!(
        call.attributes.get("priority").map(String::as_str),
        Some("5")
    );
    wait_status(&w.worker, "counted done", |s| s.done == 1).await;
    let status = w.worker.status();
    assert_eq!((status.received, status.done, status.failed), (1, 1, 0));
    assert_eq!(
        agent
            .put_calls()
            .iter()
            .filter(|c| c.enabled == Some(true))
            .count(),
        1,
        "protected while the job ran"
    );
    w.stop().await;
    assert!(!agent.is_protected(), "released at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_brings_the_message_back_after_about_the_delay() {
    let Some(moto) = Moto::start("retry_after").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("retry", 60, None).await;
    moto.send(&queue, "not yet").await;
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |job: Job| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&job);
                let outcome = if job.receive_count() == 1 {
                    Outcome::RetryAfter(Duration::from_secs(3))
                } else {
                    Outcome::Done
                };
                calls.end(i, &job, outcome)
            }
        }
    };
    let w = Running::start(&moto, &agent, &queue, settings(), handler);
    calls.wait("the retry done", |c| c.len() == 2).await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let all = calls.all();
    let gap = all[1].start - all[0].end.unwrap();
    assert!(
        gap >= Duration::from_millis(2500) && gap < Duration::from_secs(8),
        "visible again {gap:?} after the handler asked for 3 s"
    );
    assert_eq!(all[1].receive_count, 2);
    wait_status(&w.worker, "counted done", |s| s.done == 1).await;
    let status = w.worker.status();
    assert_eq!((status.retried, status.done, status.failed), (1, 1, 0));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_is_retried_with_back_off_then_dead_lettered_and_never_deleted() {
    let Some(moto) = Moto::start("failed_job").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, dlq) = moto.queue("failing", 60, Some(2)).await;
    let dlq = dlq.expect("dead-letter queue");
    let id = moto.send(&queue, "always fails").await;
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |job: Job| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&job);
                calls.end(i, &job, Outcome::Failed("the image is corrupt".into()))
            }
        }
    };
    let w = Running::start(&moto, &agent, &queue, settings(), handler);
    let start = Instant::now();
    let moved = loop {
        let got = moto.receive(&dlq, Duration::from_secs(1), 1).await;
        if let Some(m) = got.first() {
            break m.clone();
        }
        assert!(
            start.elapsed() < LIMIT,
            "not dead-lettered: {:#?}",
            calls.all()
        );
    };
    assert_eq!(moved, (id, "always fails".to_string()));
    let all = calls.all();
    assert_eq!(all.len(), 2, "tried as often as the redrive policy allows");
    let gap = all[1].start - all[0].end.unwrap();
    assert!(
        gap >= Duration::from_millis(1500),
        "retried after the 2 s back-off, not at once: {gap:?}"
    );
    let status = w.worker.status();
    // One message, failed on both its deliveries: counted once (messages, not receives).
    assert_eq!(
        (
            status.received,
            status.redelivered,
            status.failed,
            status.done
        ),
        (1, 1, 1, 0),
        "never deleted"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failed_job_and_the_worker_goes_on() {
    let Some(moto) = Moto::start("panicking_handler").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("panics", 60, None).await;
    moto.send(&queue, "boom").await;
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |job: Job| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&job);
                if job.body() == "boom" {
                    panic!("the handler hit a bug");
                }
                calls.end(i, &job, Outcome::Done)
            }
        }
    };
    let w = Running::start(&moto, &agent, &queue, settings(), handler);
    calls.wait("the panic", |c| !c.is_empty()).await;
    // The worker goes on: the next jobs run and are deleted.
    for n in 0..3 {
        moto.send(&queue, &format!("fine {n}")).await;
    }
    calls
        .wait("three jobs after the panic", |c| {
            c.iter().filter(|c| c.body.starts_with("fine")).count() == 3
        })
        .await;
    wait_status(&w.worker, "three done", |s| s.done == 3).await;
    let status = w.worker.status();
    assert!(status.failed >= 1, "the panic is a failed job: {status:?}");
    assert!(w.worker.is_healthy());
    // Not deleted: it comes back after the back-off and panics again, still not deleted.
    calls
        .wait("the panicking job retried", |c| {
            c.iter().any(|c| c.body == "boom" && c.receive_count == 2)
        })
        .await;
    assert_eq!(moto.depth(&queue).await.0 + moto.depth(&queue).await.1, 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_cancelled_and_retried_whatever_it_answers() {
    let Some(moto) = Moto::start("job_timeout").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("timeout", 60, None).await;
    moto.send(&queue, "slow").await;
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |job: Job| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&job);
                if job.receive_count() == 1 {
                    job.cancelled().await;
                    // Answers Done once cancelled: the message must come back all the same.
                }
                calls.end(i, &job, Outcome::Done)
            }
        }
    };
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings().with_job_timeout(Some(Duration::from_secs(1))),
        handler,
    );
    calls
        .wait("the retry", |c| c.len() == 2 && c[1].end.is_some())
        .await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let all = calls.all();
    assert_eq!(all[0].cancelled, Some(CancelReason::Timeout));
    let ran = all[0].end.unwrap() - all[0].start;
    assert!(
        ran >= Duration::from_millis(900) && ran < Duration::from_secs(5),
        "cancelled at its 1 s timeout, after {ran:?}"
    );
    assert_eq!(all[1].receive_count, 2, "retried");
    assert_eq!(all[1].cancelled, None);
    wait_status(&w.worker, "counted done", |s| s.done == 1).await;
    let status = w.worker.status();
    assert_eq!((status.timed_out, status.done), (1, 1));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_ignores_its_cancellation_is_let_go_after_the_grace_and_the_worker_goes_on()
{
    let Some(moto) = Moto::start("deaf_handler").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("deaf", 60, None).await;
    moto.send(&queue, "deaf").await;
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |job: Job| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&job);
                if job.body() == "deaf" {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                calls.end(i, &job, Outcome::Done)
            }
        }
    };
    // One job at a time: the next runs only once the deaf one gave its slot back.
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings()
            .with_job_timeout(Some(Duration::from_secs(1)))
            .with_cancel_grace(Duration::from_secs(1)),
        handler,
    );
    calls.wait("the deaf job", |c| !c.is_empty()).await;
    moto.send(&queue, "next").await;
    calls
        .wait("the next job done", |c| {
            c.iter().any(|c| c.body == "next" && c.end.is_some())
        })
        .await;
    assert_eq!(w.worker.status().timed_out, 1);
    w.stop().await;
}

/// A handler that records each job, waits until it is cancelled, and answers `Done` (too late to
/// count).
struct DoneWhenCancelled(Calls);

#[ecs_task_protection::worker::async_trait]
impl ecs_task_protection::worker::Handler for DoneWhenCancelled {
    async fn handle(&self, job: Job) -> Outcome {
        let i = self.0.start(&job);
        job.cancelled().await;
        self.0.end(i, &job, Outcome::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_running_job_after_the_shutdown_timeout_and_returns_its_message() {
    let Some(moto) = Moto::start("shutdown_cancel").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("shutdown", 60, None).await;
    let id = moto.send(&queue, "long").await;
    let calls = Calls::default();
    let handler = DoneWhenCancelled(calls.clone());
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings().with_shutdown_timeout(Duration::from_secs(1)),
        handler,
    );
    calls.wait("the job started", |c| !c.is_empty()).await;
    let worker = w.worker.clone();
    w.stop().await;
    let all = calls.all();
    assert_eq!(all[0].cancelled, Some(CancelReason::Shutdown));
    assert_eq!(
        worker.status().done,
        0,
        "its Done came after the cancellation"
    );
    // Visible again at once, not after the 60 s visibility timeout.
    let got = moto.receive(&queue, Duration::from_secs(5), 60).await;
    assert_eq!(got.first().map(|m| m.0.clone()), Some(id));
    assert!(!agent.is_protected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cancels_a_running_job_and_returns_its_message() {
    let Some(moto) = Moto::start("drain_cancel").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let (queue, _) = moto.queue("drain", 60, None).await;
    let id = moto.send(&queue, "long").await;
    let calls = Calls::default();
    let handler = DoneWhenCancelled(calls.clone());
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings().with_drain_deadline(Some(Duration::from_secs(1))),
        handler,
    );
    calls.wait("the job started", |c| !c.is_empty()).await;
    w.worker
        .begin_drain("deployment in progress: test", DrainKind::Reversible);
    calls
        .wait("the job cancelled", |c| c[0].end.is_some())
        .await;
    assert_eq!(calls.all()[0].cancelled, Some(CancelReason::DrainDeadline));
    let got = moto.receive(&queue, Duration::from_secs(5), 60).await;
    assert_eq!(got.first().map(|m| m.0.clone()), Some(id));
    let status = w.worker.status();
    assert_eq!((status.returned, status.done), (1, 0));
    w.stop().await;
}

/// A handler that works `work` on each job, recording it; fails each body in `fail_once` on its
/// first receive.
fn working(
    calls: &Calls,
    work: Duration,
    fail_once: &'static [&'static str],
) -> impl Fn(Job) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
       + Send
       + Sync
       + 'static {
    let calls = calls.clone();
    move |job: Job| {
        let calls = calls.clone();
        Box::pin(async move {
            let i = calls.start(&job);
            tokio::time::sleep(work).await;
            let outcome = if job.receive_count() == 1 && fail_once.contains(&job.body()) {
                Outcome::Failed("the first try fails".into())
            } else {
                Outcome::Done
            };
            calls.end(i, &job, outcome)
        })
    }
}

/// Asserts that `calls` never overlap: each starts after the one before it ended.
fn one_at_a_time(calls: &[Call]) {
    for pair in calls.windows(2) {
        assert!(
            pair[1].start >= pair[0].end.expect("ended"),
            "{} started before {} ended: {calls:#?}",
            pair[1].body,
            pair[0].body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_groups_messages_run_one_at_a_time_in_order() {
    let Some(moto) = Moto::start("fifo_order").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let queue = fifo_queue(&moto, "ordered").await;
    let bodies: Vec<String> = (1..=6).map(|n| format!("g-{n}")).collect();
    for body in &bodies {
        send_in_group(&moto, &queue, "g", body).await;
    }
    let calls = Calls::default();
    // Four free slots: one receive brings several messages of the group at once.
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings().with_concurrency(4),
        working(&calls, Duration::from_millis(200), &[]),
    );
    calls
        .wait("every job done", |c| c.len() == 6 && c[5].end.is_some())
        .await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let all = calls.all();
    assert_eq!(calls.done(), bodies, "in the order sent");
    one_at_a_time(&all);
    assert!(all.iter().all(|c| c.group.as_deref() == Some("g")));
    wait_status(&w.worker, "six done", |s| s.done == 6).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_holds_back_the_rest_of_its_fifo_group_and_the_order_holds() {
    let Some(moto) = Moto::start("fifo_failure").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let queue = fifo_queue(&moto, "held-back").await;
    let bodies: Vec<String> = (1..=5).map(|n| format!("g-{n}")).collect();
    for body in &bodies {
        send_in_group(&moto, &queue, "g", body).await;
    }
    let calls = Calls::default();
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings().with_concurrency(4),
        working(&calls, Duration::from_millis(100), &["g-2"]),
    );
    calls
        .wait("every job done", |c| {
            c.iter()
                .filter(|c| c.outcome == Some(Outcome::Done))
                .count()
                == 5
        })
        .await;
    wait_depth(&moto, &queue, (0, 0)).await;
    let all = calls.all();
    assert_eq!(calls.done(), bodies, "done in the order sent: {all:#?}");
    one_at_a_time(&all);
    // Nothing after g-2 ran before g-2 was done: the calls are g-1, g-2 (failed), g-2, g-3, …
    let order: Vec<&str> = all.iter().map(|c| c.body.as_str()).collect();
    assert_eq!(order, ["g-1", "g-2", "g-2", "g-3", "g-4", "g-5"]);
    let status = w.worker.status();
    assert_eq!(status.failed, 1);
    assert!(
        status.returned >= 1,
        "the rest of the group in hand went back: {status:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fifo_groups_run_in_parallel() {
    let Some(moto) = Moto::start("fifo_parallel").await else {
        return;
    };
    let agent = StandInAgent::start().await.unwrap();
    let queue = fifo_queue(&moto, "parallel").await;
    for n in 1..=2 {
        send_in_group(&moto, &queue, "a", &format!("a-{n}")).await;
        send_in_group(&moto, &queue, "b", &format!("b-{n}")).await;
    }
    let calls = Calls::default();
    let started = Instant::now();
    let w = Running::start(
        &moto,
        &agent,
        &queue,
        settings().with_concurrency(2),
        working(&calls, Duration::from_millis(1500), &[]),
    );
    calls
        .wait("every job done", |c| {
            c.iter().filter(|c| c.end.is_some()).count() == 4
        })
        .await;
    let elapsed = started.elapsed();
    let all = calls.all();
    let group = |g: &str| -> Vec<Call> {
        all.iter()
            .filter(|c| c.group.as_deref() == Some(g))
            .cloned()
            .collect()
    };
    let (a, b) = (group("a"), group("b"));
    one_at_a_time(&a);
    one_at_a_time(&b);
    assert_eq!(
        a.iter().map(|c| c.body.as_str()).collect::<Vec<_>>(),
        ["a-1", "a-2"]
    );
    assert_eq!(
        b.iter().map(|c| c.body.as_str()).collect::<Vec<_>>(),
        ["b-1", "b-2"]
    );
    let overlap = a.iter().any(|x| {
        b.iter()
            .any(|y| x.start < y.end.unwrap() && y.start < x.end.unwrap())
    });
    assert!(overlap, "the groups ran side by side: {all:#?}");
    assert!(
        elapsed < Duration::from_millis(5500),
        "four 1.5 s jobs in two groups took {elapsed:?}: not in parallel"
    );
    w.stop().await;
}

/// A worker on `queue` that is never run: for [`Worker::check_queue`].
fn idle_worker(moto: &Moto, queue: &str) -> Worker {
    let manager = ProtectionManager::start(
        Arc::new(ecs_task_protection::protection::local::LocalBackend::new()),
        PROTECTION_DEFAULTS,
    )
    .unwrap();
    Worker::builder(&sdk_config(moto.endpoint()), queue)
        .handler(|_job: Job| async { Outcome::Done })
        .settings(settings())
        .build(manager)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_queue_reads_the_redrive_policy_and_calls_a_missing_queue_a_permanent_sqs_error() {
    let Some(moto) = Moto::start("check_queue").await else {
        return;
    };
    let (queue, _) = moto.queue("checked", 60, Some(4)).await;
    let info = idle_worker(&moto, &queue).check_queue().await.unwrap();
    assert_eq!(info.max_receive_count, Some(4));
    assert!(info
        .dead_letter_queue
        .as_deref()
        .is_some_and(|arn| arn.ends_with(":checked-dlq")));
    assert!(!info.fifo);
    let (plain, _) = moto.queue("no-redrive", 60, None).await;
    let info = idle_worker(&moto, &plain).check_queue().await.unwrap();
    assert_eq!(info.max_receive_count, None, "no dead-letter queue");

    let missing = format!("{}/123456789012/nowhere", moto.endpoint());
    let e = idle_worker(&moto, &missing)
        .check_queue()
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(
        e.to_string()
            .starts_with("queue not found: sqs:GetQueueAttributes"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_jobs_in_group_fills_a_fifo_queue_with_identical_bodies_as_distinct_jobs() {
    let Some(moto) = Moto::start("send_in_group").await else {
        return;
    };
    let sqs = moto.sqs();
    let queue = sqs
        .create_queue()
        .queue_name("ordered.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let sdk = sdk_config(moto.endpoint());
    let bodies = vec!["same".to_string(); 12];
    // Without a group a FIFO queue is refused before any call.
    let e = ecs_task_protection::worker::send_jobs(&sdk, &queue, None, &bodies)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("send_jobs_in_group"), "{e}");
    let e = ecs_task_protection::worker::send_jobs_in_group(&sdk, &queue, None, "a b", &bodies)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("message group ID"), "{e}");
    assert_eq!(moto.depth(&queue).await, (0, 0));
    // 12 identical bodies in two batches: 12 messages, despite content-based deduplication.
    let ids = ecs_task_protection::worker::send_jobs_in_group(&sdk, &queue, None, "g-1", &bodies)
        .await
        .unwrap();
    assert_eq!(ids.len(), 12);
    assert_eq!(moto.depth(&queue).await, (12, 0));
    let info = idle_worker(&moto, &queue).check_queue().await.unwrap();
    assert!(info.fifo && info.content_based_deduplication);
}
