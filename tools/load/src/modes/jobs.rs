//! The `jobs` mode: the queue consumer's throughput against moto's SQS.
//!
//! Each run starts moto's server on a free loopback port, creates a fresh queue and fills it with
//! `--jobs` messages of body `--work-ms` (0: jobs that take no time), 10 to a SendMessageBatch
//! call. Then, measured from the start of the consumer until the queue is empty
//! (ApproximateNumberOfMessages + ApproximateNumberOfMessagesNotVisible = 0, polled every 100 ms):
//!
//! * by default, the release `queue-consumer` (`--worker-bin`) with `WORKER_CONCURRENCY` =
//!   `--concurrency` against an in-process stand-in ECS agent: jobs/s, the agent's protect and
//!   release calls, the worker's peak RSS (VmHWM) and RSS at the end, its CPU, and its `/status`
//!   tallies; then it waits for the release after the hold-over, counts the agent calls of
//!   `--idle-secs` of idling if asked, and stops the worker (SIGTERM);
//! * with `--ceiling`, no worker: `--concurrency` loops in this process of ReceiveMessage (10 at
//!   a time, 1 s long poll) + DeleteMessageBatch of what came, the fastest a consumer can empty
//!   this moto.
//!
//! moto's CPU time over the window (from /proc/<pid>/stat) shows whether moto, a Python process
//! that uses at most about one core, is what limits the figure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};

use super::round;
use crate::moto::{create_queue, depth, fill, sqs_client, Moto};
use crate::procfs::{clock_ticks_per_sec, cpu_ticks, machine_ticks, proc_status_kb};
use crate::target::{
    apply_server_env, free_port, spawn_logging_to_stderr, start_agent, stop_child,
};
use crate::{Common, JobsArgs};

/// The queue's visibility timeout, and the worker's (`VISIBILITY_TIMEOUT_SECS`' default).
const VISIBILITY_SECS: u32 = 60;
/// SendMessageBatch calls in flight while filling the queue.
const FILL_PARALLEL: usize = 4;
/// A run that makes no progress for this long is stopped with an error.
const STALL_LIMIT: Duration = Duration::from_secs(30);

pub(crate) async fn jobs(args: &JobsArgs, common: &Common) -> Result<Value, String> {
    if common.url.is_some() {
        return Err("jobs starts its own moto and worker: --url does not apply".into());
    }
    let program = args
        .moto_server
        .clone()
        .or_else(|| std::env::var("MOTO_SERVER").ok())
        .unwrap_or_else(|| "moto_server".into());
    let mut moto = Moto::start(&program).await?;
    println!(
        "jobs: moto ({program}) pid {} on {}",
        moto.pid.unwrap_or(0),
        moto.endpoint
    );
    let outcome = with_moto(args, common, &moto).await;
    let moto_exit = moto.stop().await;
    let mut report = outcome?;
    if let Some(obj) = report.as_object_mut() {
        obj.insert("moto_exit".into(), json!(moto_exit));
    }
    Ok(report)
}

async fn with_moto(args: &JobsArgs, common: &Common, moto: &Moto) -> Result<Value, String> {
    let sqs = sqs_client(&moto.endpoint);
    let queue = create_queue(&sqs, "load-jobs", VISIBILITY_SECS).await?;
    let body = args.work_ms.to_string();
    let fill_started = Instant::now();
    let accepted = fill(&sqs, &queue, args.jobs, &body, FILL_PARALLEL).await?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let queued = depth(&sqs, &queue).await?;
    if accepted != args.jobs || queued != (args.jobs as u64, 0) {
        return Err(format!(
            "the queue holds {queued:?} (visible, in flight) after sending {} jobs ({accepted} accepted)",
            args.jobs
        ));
    }
    println!(
        "jobs: {} messages of body {body:?} on {queue} in {fill_secs:.2} s ({:.0} messages/s, {FILL_PARALLEL} SendMessageBatch calls at a time)",
        args.jobs,
        args.jobs as f64 / fill_secs
    );
    let mut report = if args.ceiling {
        ceiling(args, moto, &sqs, &queue).await?
    } else {
        worker(args, common, moto, &sqs, &queue).await?
    };
    if let Some(obj) = report.as_object_mut() {
        obj.insert("jobs".into(), json!(args.jobs));
        obj.insert("work_ms".into(), json!(args.work_ms));
        obj.insert("concurrency".into(), json!(args.concurrency));
        obj.insert("fill_secs".into(), json!(round(fill_secs, 2)));
    }
    Ok(report)
}

/// CPU time (in ticks) of moto, this process and the machine, at one moment.
struct CpuMark {
    at: Instant,
    moto: Option<u64>,
    own: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl CpuMark {
    fn now(moto: &Moto) -> Self {
        Self {
            at: Instant::now(),
            moto: cpu_ticks(moto.pid),
            own: cpu_ticks(None),
            machine: machine_ticks(),
        }
    }
}

/// Cores used between two marks: (moto, this process, the whole machine).
fn cores_between(a: &CpuMark, b: &CpuMark) -> (Option<f64>, Option<f64>, Option<f64>) {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let tck = clock_ticks_per_sec() as f64;
    let cores = |x: Option<u64>, y: Option<u64>| -> Option<f64> {
        Some(y?.saturating_sub(x?) as f64 / tck / secs)
    };
    (
        cores(a.moto, b.moto),
        cores(a.own, b.own),
        cores(a.machine.map(|m| m.0), b.machine.map(|m| m.0)),
    )
}

/// How the queue emptied.
struct Drained {
    /// From the start to the answer of the first poll that saw it empty.
    secs: f64,
    /// From the start to the first poll that saw a message taken.
    first_taken_ms: Option<u64>,
    /// The most messages in flight (received, not yet deleted) a poll saw.
    max_in_flight: u64,
}

/// Polls the queue's depth every 100 ms from `start` until it is empty. `check` is asked at every
/// poll whether the consumer is still there (an error message if not).
async fn until_empty(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    n: usize,
    start: Instant,
    check: &mut dyn FnMut() -> Option<String>,
) -> Result<Drained, String> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first_taken_ms = None;
    let mut max_in_flight = 0;
    let mut last = (n as u64, 0);
    let mut last_change = Instant::now();
    loop {
        tick.tick().await;
        let (visible, in_flight) = depth(sqs, queue).await?;
        // When the answer came (moto answers slowly while busy): the queue was seen so by then.
        let at = start.elapsed();
        if visible + in_flight == 0 {
            return Ok(Drained {
                secs: at.as_secs_f64(),
                first_taken_ms: first_taken_ms.or(Some(at.as_millis() as u64)),
                max_in_flight,
            });
        }
        if first_taken_ms.is_none() && (visible, in_flight) != (n as u64, 0) {
            first_taken_ms = Some(at.as_millis() as u64);
        }
        max_in_flight = max_in_flight.max(in_flight);
        if (visible, in_flight) != last {
            last = (visible, in_flight);
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL_LIMIT {
            return Err(format!(
                "no progress for {} s: {visible} messages visible, {in_flight} in flight",
                STALL_LIMIT.as_secs()
            ));
        }
        if let Some(gone) = check() {
            return Err(gone);
        }
    }
}

async fn worker(
    args: &JobsArgs,
    common: &Common,
    moto: &Moto,
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
) -> Result<Value, String> {
    let n = args.jobs;
    let agent = start_agent(common).await?;
    // The status endpoint is read once, at the end (its tallies: nothing redone, no errors).
    let status_port = free_port()?;
    let mut env: Vec<(String, String)> = vec![
        ("QUEUE_URL".into(), queue.to_string()),
        ("AWS_ENDPOINT_URL".into(), moto.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("PROTECTION_BACKEND".into(), "agent".into()),
        ("ECS_AGENT_URI".into(), agent.uri()),
        ("STATUS_PORT".into(), status_port.to_string()),
        ("STATUS_BIND_ADDRESS".into(), "127.0.0.1".into()),
        ("WORKER_CONCURRENCY".into(), args.concurrency.to_string()),
        ("RUST_LOG".into(), "warn".into()),
        ("RECEIVE_WAIT_SECS".into(), "1".into()),
    ];
    apply_server_env(&mut env, &common.server_env)?;
    let status_port = env
        .iter()
        .find(|(k, _)| k == "STATUS_PORT")
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .unwrap_or(0);
    println!(
        "jobs: worker {} env {:?}",
        args.worker_bin.display(),
        env.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "QUEUE_URL" | "ECS_AGENT_URI"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    );
    // The worker's log lines go to this tool's stderr, keeping stdout for the figures.
    let before = CpuMark::now(moto);
    let started = Instant::now();
    let mut worker = tokio::process::Command::new(&args.worker_bin);
    worker.env_clear();
    let mut child = spawn_logging_to_stderr(worker, &env, "queue-consumer")?;
    let pid = child.id();
    if let Some(path) = &common.server_pid_file {
        // Both processes, so that a supervising script can make sure neither is left running.
        let pids: Vec<String> = [pid, moto.pid]
            .iter()
            .flatten()
            .map(u32::to_string)
            .collect();
        let _ = std::fs::write(path, pids.join("\n") + "\n");
    }
    let mut check = || match child.try_wait() {
        Ok(Some(status)) => Some(format!(
            "the worker exited before the queue was empty: {status}"
        )),
        _ => None,
    };
    let drained = until_empty(sqs, queue, n, started, &mut check).await?;
    let after = CpuMark::now(moto);
    let peak_rss_kb = proc_status_kb(pid, "VmHWM");
    let end_rss_kb = proc_status_kb(pid, "VmRSS");
    let worker_ticks = cpu_ticks(pid);
    let puts_at_empty = agent.put_calls();
    let status = match status_port {
        0 => None,
        port => worker_status(port).await,
    };
    // The release after the hold-over (6 s by default), then SIGTERM.
    let emptied = Instant::now();
    let mut released_ms = None;
    while emptied.elapsed() < Duration::from_secs(args.release_wait_secs) {
        if !agent.is_protected() {
            released_ms = Some(emptied.elapsed().as_millis() as u64);
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let puts_before_idle = agent.put_calls().len();
    sleep(Duration::from_secs(args.idle_secs)).await;
    let puts_before_stop = agent.put_calls().len();
    let idle_calls = (args.idle_secs > 0).then(|| puts_before_stop - puts_before_idle);
    let (worker_exit, stop_took) = stop_child(child, Duration::from_secs(30)).await;
    let puts = agent.put_calls();
    let all_calls = agent.calls().len();
    let protect_calls = puts.iter().filter(|c| c.enabled == Some(true)).count();
    let release_calls = puts.iter().filter(|c| c.enabled == Some(false)).count();
    let per_1000 = |calls: usize| round(calls as f64 * 1000.0 / n as f64, 2);
    let (moto_cores, own_cores, busy_cores) = cores_between(&before, &after);
    let secs = drained.secs;
    let tck = clock_ticks_per_sec() as f64;
    let worker_cpu_secs = worker_ticks.map(|t| t as f64 / tck);
    let worker_cores = worker_cpu_secs.map(|s| s / secs);
    let other_cores = match (busy_cores, moto_cores, own_cores, worker_cores) {
        (Some(b), Some(m), Some(o), Some(w)) => Some((b - m - o - w).max(0.0)),
        _ => None,
    };
    let jobs_per_sec = n as f64 / secs;
    let after_first = drained
        .first_taken_ms
        .map(|ms| n as f64 / (secs - ms as f64 / 1000.0).max(1e-3));
    let tally = |key: &str| status.as_ref().and_then(|s| s[key].as_u64());
    println!(
        "jobs: worker at concurrency {}: {n} jobs in {secs:.2} s = {jobs_per_sec:.1} jobs/s (first message taken after {:?} ms; at most {} in flight)",
        args.concurrency, drained.first_taken_ms, drained.max_in_flight
    );
    println!(
        "jobs: CPU over the window: moto {} cores ({} ms per job), worker {} cores ({} µs per job), this tool {} cores, everything else {} cores",
        fmt_opt(moto_cores, 2),
        fmt_opt(moto_cores.map(|c| c * secs * 1000.0 / n as f64), 1),
        fmt_opt(worker_cores, 2),
        fmt_opt(worker_cpu_secs.map(|s| s * 1e6 / n as f64), 0),
        fmt_opt(own_cores, 2),
        fmt_opt(other_cores, 2)
    );
    println!(
        "jobs: worker status: received {:?}, done {:?}, receive errors {:?}, delete failures {:?}, invalid {:?}, returned {:?}",
        tally("received"),
        tally("done"),
        tally("receive_errors"),
        tally("delete_failures"),
        tally("invalid"),
        tally("returned")
    );
    println!(
        "jobs: ECS agent PUT calls: {} until the queue was empty ({:.1} a minute), {} by SIGTERM, {} in all (protect {protect_calls}, release {release_calls}; {all_calls} calls of any method) = {} per 1,000 jobs; released {released_ms:?} ms after the queue was empty",
        puts_at_empty.len(),
        puts_at_empty.len() as f64 * 60.0 / secs,
        puts_before_stop,
        puts.len(),
        per_1000(puts.len())
    );
    if let Some(calls) = idle_calls {
        println!(
            "jobs: {calls} agent PUT calls in {} s of idling (empty queue) after that",
            args.idle_secs
        );
    }
    println!(
        "jobs: worker RSS peak (VmHWM) {} MB, at the end {} MB; after SIGTERM: {worker_exit} in {} ms",
        fmt_opt(peak_rss_kb.map(|k| k as f64 / 1024.0), 1),
        fmt_opt(end_rss_kb.map(|k| k as f64 / 1024.0), 1),
        stop_took.as_millis()
    );
    Ok(json!({
        "mode": "jobs",
        "seconds": round(secs, 2),
        "jobs_per_sec": round(jobs_per_sec, 1),
        "jobs_per_sec_after_first_taken": after_first.map(|x| round(x, 1)),
        "first_taken_ms": drained.first_taken_ms,
        "max_in_flight": drained.max_in_flight,
        "moto_cpu_cores": moto_cores.map(|x| round(x, 2)),
        "moto_cpu_ms_per_job": moto_cores.map(|c| round(c * secs * 1000.0 / n as f64, 1)),
        "worker_cpu_cores": worker_cores.map(|x| round(x, 2)),
        "worker_cpu_us_per_job": worker_cpu_secs.map(|s| round(s * 1e6 / n as f64, 0)),
        "load_cpu_cores": own_cores.map(|x| round(x, 2)),
        "other_cpu_cores": other_cores.map(|x| round(x, 2)),
        "worker_received": tally("received"),
        "worker_done": tally("done"),
        "worker_receive_errors": tally("receive_errors"),
        "worker_delete_failures": tally("delete_failures"),
        "worker_invalid": tally("invalid"),
        "worker_returned": tally("returned"),
        "put_calls_until_empty": puts_at_empty.len(),
        "put_calls_before_sigterm": puts_before_stop,
        "put_calls": puts.len(),
        "protect_calls": protect_calls,
        "release_calls": release_calls,
        "agent_calls": all_calls,
        "ecs_calls_per_1000_jobs": per_1000(puts.len()),
        "put_calls_per_busy_minute": round(puts_at_empty.len() as f64 * 60.0 / secs, 1),
        "released_ms_after_empty": released_ms,
        "idle_secs": args.idle_secs,
        "put_calls_while_idle": idle_calls,
        "worker_peak_rss_kb": peak_rss_kb,
        "worker_end_rss_kb": end_rss_kb,
        "worker_exit": worker_exit,
        "worker_stop_ms": stop_took.as_millis() as u64,
        "agent_delay_ms": common.agent_delay_ms,
    }))
}

/// The worker's `/status` document, if it answers.
async fn worker_status(port: u16) -> Option<Value> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}/status");
    http.get(url).send().await.ok()?.json().await.ok()
}

/// The ceiling's tallies, shared by its loops.
#[derive(Default)]
struct Tallies {
    receives: AtomicU64,
    empty_receives: AtomicU64,
    received: AtomicU64,
    delete_calls: AtomicU64,
    deleted: AtomicU64,
    delete_failures: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tallies {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(e);
    }
}

/// One plain consumer loop: ReceiveMessage (10, 1 s long poll), DeleteMessageBatch of what came;
/// until `stop`.
async fn plain_loop(
    sqs: aws_sdk_sqs::Client,
    queue: String,
    stop: Arc<AtomicBool>,
    t: Arc<Tallies>,
) {
    while !stop.load(Ordering::Relaxed) {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(VISIBILITY_SECS as i32)
            .send()
            .await;
        t.receives.fetch_add(1, Ordering::Relaxed);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                t.error(format!("ReceiveMessage: {}", DisplayErrorContext(e)));
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let messages = out.messages();
        if messages.is_empty() {
            t.empty_receives.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        t.received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
            {
                Ok(entry) => entries.push(entry),
                Err(e) => t.error(format!("DeleteMessageBatch entry: {e}")),
            }
        }
        t.delete_calls.fetch_add(1, Ordering::Relaxed);
        match sqs
            .delete_message_batch()
            .queue_url(&queue)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                t.deleted
                    .fetch_add(out.successful().len() as u64, Ordering::Relaxed);
                t.delete_failures
                    .fetch_add(out.failed().len() as u64, Ordering::Relaxed);
            }
            Err(e) => t.error(format!("DeleteMessageBatch: {}", DisplayErrorContext(e))),
        }
    }
}

async fn ceiling(
    args: &JobsArgs,
    moto: &Moto,
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
) -> Result<Value, String> {
    let n = args.jobs;
    let loops = args.concurrency.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tallies::default());
    let before = CpuMark::now(moto);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..loops {
        set.spawn(plain_loop(
            sqs.clone(),
            queue.to_string(),
            Arc::clone(&stop),
            Arc::clone(&t),
        ));
    }
    let drained = until_empty(sqs, queue, n, started, &mut || None).await;
    let after = CpuMark::now(moto);
    stop.store(true, Ordering::Relaxed);
    // A loop may be in a 1 s long poll of the empty queue.
    let _ = timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
    let drained = drained?;
    let secs = drained.secs;
    let (moto_cores, own_cores, busy_cores) = cores_between(&before, &after);
    let other_cores = match (busy_cores, moto_cores, own_cores) {
        (Some(b), Some(m), Some(o)) => Some((b - m - o).max(0.0)),
        _ => None,
    };
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let jobs_per_sec = n as f64 / secs;
    let first_error = t
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    println!(
        "jobs: ceiling, {loops} receive+delete loop(s) in this process: {n} messages in {secs:.2} s = {jobs_per_sec:.1} messages/s (first taken after {:?} ms; at most {} in flight)",
        drained.first_taken_ms, drained.max_in_flight
    );
    println!(
        "jobs: {} receives ({} empty), {} received, {} DeleteMessageBatch calls, {} deleted, {} delete failures, {} errors (first: {first_error:?})",
        get(&t.receives),
        get(&t.empty_receives),
        get(&t.received),
        get(&t.delete_calls),
        get(&t.deleted),
        get(&t.delete_failures),
        get(&t.errors)
    );
    println!(
        "jobs: CPU over the window: moto {} cores ({} ms per job), this tool {} cores, everything else {} cores",
        fmt_opt(moto_cores, 2),
        fmt_opt(moto_cores.map(|c| c * secs * 1000.0 / n as f64), 1),
        fmt_opt(own_cores, 2),
        fmt_opt(other_cores, 2)
    );
    Ok(json!({
        "mode": "jobs-ceiling",
        "seconds": round(secs, 2),
        "jobs_per_sec": round(jobs_per_sec, 1),
        "first_taken_ms": drained.first_taken_ms,
        "max_in_flight": drained.max_in_flight,
        "moto_cpu_cores": moto_cores.map(|x| round(x, 2)),
        "moto_cpu_ms_per_job": moto_cores.map(|c| round(c * secs * 1000.0 / n as f64, 1)),
        "load_cpu_cores": own_cores.map(|x| round(x, 2)),
        "other_cpu_cores": other_cores.map(|x| round(x, 2)),
        "receives": get(&t.receives),
        "empty_receives": get(&t.empty_receives),
        "received": get(&t.received),
        "delete_calls": get(&t.delete_calls),
        "deleted": get(&t.deleted),
        "delete_failures": get(&t.delete_failures),
        "errors": get(&t.errors),
        "first_error": first_error,
    }))
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) => format!("{v:.digits$}"),
        None => "?".into(),
    }
}
