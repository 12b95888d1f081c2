//! The drain watcher with the real `aws-sdk-ecs` client against the local ECS and metadata
//! endpoints, on real time with a 200 ms interval.
//!
//! The stand-in's task is of the service's first deployment ([`FIRST_DEPLOYMENT_ID`]), which
//! `DescribeTasks` reports as its `startedBy`, with the group `service:stand-in-service`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecs_stand_in::{
    self, EcsFault, EcsOperation, ServiceDoc, StandInEcs, CLUSTER_ARN, FIRST_DEPLOYMENT_ID,
    SERVICE_NAME, TASK_ARN,
};
use ecs_task_protection::ecs::drain_watch::{spawn_drain_watch, Replacement};
use ecs_task_protection::ecs::identity::IdentitySource;
use ecs_task_protection::ecs::EcsContext;
use tokio::sync::watch;

const INTERVAL: Duration = Duration::from_millis(200);

/// Starts a watcher on `ecs`'s task; the receiver carries the reason it publishes (for the log).
fn start_watch(ecs: &StandInEcs) -> watch::Receiver<Option<String>> {
    let client = support::ecs_client(&ecs.endpoint_url(), "us-east-1");
    let identity = IdentitySource::metadata(&ecs.metadata_uri(), Duration::from_secs(1)).unwrap();
    let replacements = spawn_drain_watch(&EcsContext::new(client, identity), INTERVAL, None);
    reasons_of(replacements)
}

/// Follows `replacements`, publishing each one's reason (the watcher stops when the returned
/// receiver is dropped, as with the watcher's own).
fn reasons_of(
    mut replacements: watch::Receiver<Option<Replacement>>,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let reason = replacements
                .borrow_and_update()
                .as_ref()
                .map(|r| r.reason.clone());
            tx.send_if_modified(|current| std::mem::replace(current, reason.clone()) != reason);
            tokio::select! {
                changed = replacements.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

fn describes(ecs: &StandInEcs) -> usize {
    ecs.calls_of(EcsOperation::DescribeServices).len()
}

fn task_describes(ecs: &StandInEcs) -> usize {
    ecs.calls_of(EcsOperation::DescribeTasks).len()
}

async fn wait_describes(ecs: &StandInEcs, n: usize) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while describes(ecs) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} DescribeServices calls"));
}

/// Waits for the watch to hold a value satisfying `f`, at most `limit`; returns it.
async fn wait_value(
    rx: &mut watch::Receiver<Option<String>>,
    limit: Duration,
    f: impl FnMut(&Option<String>) -> bool,
) -> Option<String> {
    tokio::time::timeout(limit, rx.wait_for(f))
        .await
        .expect("the watch did not change in time")
        .expect("watcher alive")
        .clone()
}

/// One interval with its jitter, plus the time one call takes on a busy machine.
const ONE_INTERVAL: Duration = Duration::from_millis(200 * 11 / 10 + 400);

#[tokio::test]
async fn a_newer_primary_deployment_is_noticed_within_one_interval_and_clears_when_it_goes_away() {
    let ecs = StandInEcs::start().await.unwrap();
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 1).await;
    assert_eq!(*rx.borrow_and_update(), None, "a service at rest");
    let call = &ecs.calls_of(EcsOperation::DescribeServices)[0];
    assert_eq!(call.cluster.as_deref(), Some(CLUSTER_ARN));
    assert_eq!(call.services, vec![SERVICE_NAME.to_string()]);
    assert_eq!(call.region.as_deref(), Some(ecs_stand_in::REGION));

    let newer = ecs_stand_in::task_definition_arn(2);
    ecs.begin_deployment(&newer);
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some)
        .await
        .unwrap();
    let new_deployment = ecs.primary_deployment_id().unwrap();
    assert_eq!(
        reason,
        format!(
            "deployment in progress: the service is moving to deployment {new_deployment} \
             ({newer}); this task is of deployment {FIRST_DEPLOYMENT_ID}"
        )
    );

    // The deployment is rolled back: the service is on our task definition again.
    ecs.set_service(ServiceDoc::steady(&ecs_stand_in::task_definition_arn(1), 2));
    assert_eq!(
        wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await,
        None
    );
}

#[tokio::test]
async fn a_scale_in_that_needs_this_busy_task_is_noticed_and_clears_when_it_has_finished() {
    let ecs = StandInEcs::start().await.unwrap();
    // Three busy tasks, this one the youngest; desired 1: ECS needs two of them gone.
    ecs.add_busy_tasks(2);
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 1).await;
    ecs.set_counts(1, 3);
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some).await;
    assert_eq!(
        reason.as_deref(),
        Some(
            "scale-in: desired 1, 3 tasks running or starting; ECS needs 2 of the busy tasks \
             gone and this task is among the youngest"
        )
    );
    let listed = &ecs.calls_of(EcsOperation::ListTasks)[0];
    assert_eq!(listed.cluster.as_deref(), Some(CLUSTER_ARN));
    ecs.set_counts(1, 1);
    assert_eq!(
        wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await,
        None
    );
}

#[tokio::test]
async fn a_scale_in_that_other_tasks_satisfy_drains_nobody_and_costs_no_call_at_rest() {
    let ecs = StandInEcs::start().await.unwrap();
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 3).await;
    // At rest, DescribeServices alone: nothing about the other tasks is asked.
    assert_eq!(ecs.calls_of(EcsOperation::ListTasks).len(), 0);
    assert_eq!(ecs.calls_of(EcsOperation::GetTaskProtection).len(), 0);

    // This task and an older one are busy, a third is idle; desired 2: ECS stops the idle one.
    let busy = ecs.add_busy_tasks(1);
    let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_100);
    let idle = ecs.add_task(ecs_stand_in::TaskSpec::new().started_at(long_ago));
    ecs.set_counts(2, 3);
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 3).await;
    assert!(!ecs.calls_of(EcsOperation::GetTaskProtection).is_empty());
    assert_eq!(
        *rx.borrow_and_update(),
        None,
        "an idle task is there to stop"
    );
    // The idle one becomes busy: now one busy task must go, the youngest, this one.
    assert!(ecs.set_task_protection(&idle, Some(std::time::SystemTime::now() + INTERVAL * 3000)));
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some)
        .await
        .unwrap();
    assert!(
        reason.contains("ECS needs 1 of the busy tasks gone"),
        "{reason}"
    );
    // ECS stopped the other busy task after all (its players left): no longer needed.
    assert!(ecs.remove_task(&busy[0]));
    ecs.set_counts(2, 2);
    assert_eq!(
        wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await,
        None
    );
}

#[tokio::test]
async fn missing_fleet_data_starts_no_scale_in_drain_and_keeps_one_under_way() {
    let logs = Logs::global();
    let ecs = StandInEcs::start().await.unwrap();
    ecs.add_busy_tasks(1);
    ecs.set_fault_for(EcsOperation::ListTasks, EcsFault::AccessDenied);
    let mut rx = start_watch(&ecs);
    ecs.set_counts(0, 2);
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 4).await;
    assert_eq!(
        *rx.borrow_and_update(),
        None,
        "no drain without the fleet's data"
    );
    let mine = logs.mine();
    assert_eq!(
        mine.lines()
            .filter(|l| l.contains("lacks ecs:ListTasks"))
            .count(),
        1,
        "the missing action, logged once:\n{mine}"
    );

    ecs.set_fault_for(EcsOperation::ListTasks, EcsFault::None);
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some)
        .await
        .unwrap();
    assert!(reason.starts_with("scale-in: desired 0"), "{reason}");
    // GetTaskProtection fails now: the drain under way goes on.
    ecs.set_fault_for(EcsOperation::GetTaskProtection, EcsFault::ServerError);
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 3).await;
    assert_eq!(rx.borrow().as_deref(), Some(reason.as_str()));
}

#[tokio::test]
async fn an_error_keeps_the_previous_value() {
    let ecs = StandInEcs::start().await.unwrap();
    let mut rx = start_watch(&ecs);
    ecs.begin_deployment(&ecs_stand_in::task_definition_arn(2));
    let reason = wait_value(&mut rx, Duration::from_secs(2), Option::is_some).await;

    let missing = EcsFault::Failure {
        reason: "MISSING".into(),
        detail: None,
    };
    for fault in [
        EcsFault::AccessDenied,
        EcsFault::Throttled,
        EcsFault::ServerError,
        missing,
    ] {
        ecs.set_fault_for(EcsOperation::DescribeServices, fault.clone());
        let seen = describes(&ecs);
        wait_describes(&ecs, seen + 2).await;
        assert!(!rx.has_changed().unwrap(), "{fault:?} changed the watch");
        assert_eq!(*rx.borrow(), reason, "{fault:?}");
    }
    let failed = ecs
        .calls_of(EcsOperation::DescribeServices)
        .iter()
        .filter(|c| c.status >= 400)
        .count();
    assert!(failed >= 6, "the HTTP faults were answered: {failed}");

    // ECS answers again, and the deployment is gone.
    ecs.set_fault(EcsFault::None);
    ecs.set_service(ServiceDoc::steady(&ecs_stand_in::task_definition_arn(1), 2));
    assert_eq!(
        wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await,
        None
    );
}

#[tokio::test]
async fn an_unavailable_metadata_endpoint_is_retried_on_the_next_round() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_metadata_available(false);
    ecs.add_busy_tasks(1);
    ecs.set_counts(1, 2);
    let mut rx = start_watch(&ecs);
    tokio::time::timeout(Duration::from_secs(3), async {
        while ecs.metadata_reads() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the metadata endpoint is read again");
    assert_eq!(describes(&ecs), 0);
    ecs.set_metadata_available(true);
    let reason = wait_value(&mut rx, Duration::from_secs(2), Option::is_some).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("scale-in: desired 1, 2 tasks")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn a_standalone_task_stops_the_watch_with_one_log_line() {
    let logs = Logs::global();
    let ecs = StandInEcs::start().await.unwrap();
    // RunTask: no ServiceName, the family as the group, no deployment.
    ecs.set_metadata_service_name(None);
    ecs.set_task_group(Some("family:stand-in"));
    ecs.set_task_started_by(None);
    let mut rx = start_watch(&ecs);
    let closed = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "the watcher ended: {closed:?}"
    );
    assert_eq!(*rx.borrow(), None);
    assert_eq!(describes(&ecs), 0);
    assert_eq!(task_describes(&ecs), 1);
    assert_eq!(ecs.metadata_reads(), 1);
    let text = logs.mine();
    let off: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Drain watch off"))
        .collect();
    assert_eq!(off.len(), 1, "{text}");
    assert!(off[0].contains("\"family:stand-in\""), "{text}");
}

#[tokio::test]
async fn without_service_name_in_the_metadata_the_service_is_found_through_describe_tasks_and_a_newer_deployment_drains(
) {
    let ecs = StandInEcs::start().await.unwrap();
    // Fargate: the task metadata has no ServiceName.
    ecs.set_metadata_service_name(None);
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 1).await;
    assert_eq!(*rx.borrow_and_update(), None, "a service at rest");
    let task_call = &ecs.calls_of(EcsOperation::DescribeTasks)[0];
    assert_eq!(task_call.cluster.as_deref(), Some(CLUSTER_ARN));
    assert_eq!(task_call.tasks, vec![TASK_ARN.to_string()]);
    assert_eq!(task_call.region.as_deref(), Some(ecs_stand_in::REGION));
    let service_call = &ecs.calls_of(EcsOperation::DescribeServices)[0];
    assert_eq!(service_call.services, vec![SERVICE_NAME.to_string()]);

    ecs.begin_deployment(&ecs_stand_in::task_definition_arn(2));
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some)
        .await
        .unwrap();
    let new_deployment = ecs.primary_deployment_id().unwrap();
    assert!(
        reason.starts_with("deployment in progress")
            && reason.contains(&new_deployment)
            && reason.contains(FIRST_DEPLOYMENT_ID),
        "{reason}"
    );
}

#[tokio::test]
async fn a_forced_new_deployment_with_the_same_task_definition_drains() {
    let ecs = StandInEcs::start().await.unwrap();
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 1).await;
    assert_eq!(*rx.borrow_and_update(), None);

    ecs.force_new_deployment();
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some)
        .await
        .unwrap();
    let same = ecs_stand_in::task_definition_arn(ecs_stand_in::REVISION);
    let new_deployment = ecs.primary_deployment_id().unwrap();
    assert_ne!(new_deployment, FIRST_DEPLOYMENT_ID);
    assert_eq!(
        reason,
        format!(
            "deployment in progress: the service is moving to deployment {new_deployment} \
             ({same}); this task is of deployment {FIRST_DEPLOYMENT_ID}"
        )
    );

    // The new deployment is cancelled: the service is back on ours.
    ecs.set_service(ServiceDoc::steady(&same, 2));
    assert_eq!(
        wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await,
        None
    );
}

#[tokio::test]
async fn describe_tasks_denied_falls_back_on_the_metadata_service_name_and_names_the_iam_action_once(
) {
    let logs = Logs::global();
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault_for(EcsOperation::DescribeTasks, EcsFault::AccessDenied);
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 3).await;
    assert_eq!(*rx.borrow_and_update(), None);
    assert_eq!(
        ecs.calls_of(EcsOperation::DescribeServices)[0].services,
        vec![SERVICE_NAME.to_string()],
        "the metadata's ServiceName"
    );

    // The task definition comparison still works.
    let newer = ecs_stand_in::task_definition_arn(2);
    ecs.begin_deployment(&newer);
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some).await;
    assert_eq!(
        reason,
        Some(format!(
            "deployment in progress: the service is moving to {newer}"
        ))
    );
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 2).await;

    assert_eq!(task_describes(&ecs), 1, "a denial is not asked again");
    let text = logs.mine();
    let denied = text
        .lines()
        .filter(|l| l.contains("the task role lacks ecs:DescribeTasks"))
        .count();
    assert_eq!(denied, 1, "{text}");
    assert!(!text.contains("Drain watch off"), "{text}");
}

#[tokio::test]
async fn describe_tasks_denied_without_service_name_in_the_metadata_stops_the_watch() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_metadata_service_name(None);
    ecs.set_fault_for(EcsOperation::DescribeTasks, EcsFault::AccessDenied);
    let mut rx = start_watch(&ecs);
    let closed = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "the watcher ended: {closed:?}"
    );
    assert_eq!(describes(&ecs), 0);
    assert_eq!(task_describes(&ecs), 1);
}

#[tokio::test]
async fn describe_tasks_is_called_once_per_task_once_it_has_answered() {
    let ecs = StandInEcs::start().await.unwrap();
    // Failing at first (HTTP 400, which the SDK does not retry): asked again every round, the
    // metadata's ServiceName meanwhile.
    ecs.set_fault_for(EcsOperation::DescribeTasks, EcsFault::InvalidParameter);
    let mut rx = start_watch(&ecs);
    wait_describes(&ecs, 3).await;
    let failed = task_describes(&ecs);
    assert!(failed >= 3, "retried on the next rounds: {failed}");
    // A deployment is still recognised meanwhile, by the task definition.
    ecs.begin_deployment(&ecs_stand_in::task_definition_arn(2));
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("deployment in progress")),
        "{reason:?}"
    );
    ecs.set_service(ServiceDoc::steady(&ecs_stand_in::task_definition_arn(1), 2));
    wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await;

    ecs.set_fault_for(EcsOperation::DescribeTasks, EcsFault::None);
    support::eventually("DescribeTasks answers", || {
        ecs.calls_of(EcsOperation::DescribeTasks)
            .iter()
            .any(|c| c.status == 200)
    })
    .await;
    let asked = task_describes(&ecs);
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 5).await;
    assert_eq!(task_describes(&ecs), asked, "asked again after it answered");
    let answered = ecs
        .calls_of(EcsOperation::DescribeTasks)
        .iter()
        .filter(|c| c.status == 200)
        .count();
    assert_eq!(answered, 1);
    // And what it said is used: a forced new deployment is recognised.
    ecs.force_new_deployment();
    let reason = wait_value(&mut rx, ONE_INTERVAL, Option::is_some)
        .await
        .unwrap();
    assert!(reason.contains(FIRST_DEPLOYMENT_ID), "{reason}");
}

#[tokio::test]
async fn dropping_the_receiver_stops_the_watch() {
    let ecs = StandInEcs::start().await.unwrap();
    let rx = start_watch(&ecs);
    wait_describes(&ecs, 2).await;
    drop(rx);
    tokio::time::sleep(INTERVAL).await;
    let after = describes(&ecs);
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(
        describes(&ecs),
        after,
        "calls went on after the receiver was dropped"
    );
}

/// Everything logged in this test binary, each line with the name of the thread that logged it.
/// A global subscriber (thread-local ones miss events whose callsites other test threads
/// registered first); libtest names each test's thread after the test, and `#[tokio::test]` runs
/// the watcher's task on that thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn global() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_thread_names(true)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            logs
        })
        .clone()
    }

    /// The lines logged on the current thread.
    fn mine(&self) -> String {
        let me = std::thread::current().name().unwrap_or("").to_string();
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| !me.is_empty() && l.contains(me.as_str()))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

#[tokio::test]
async fn each_change_is_logged_once_and_errors_name_the_iam_action() {
    let logs = Logs::global();

    let ecs = StandInEcs::start().await.unwrap();
    let mut rx = start_watch(&ecs);
    ecs.begin_deployment(&ecs_stand_in::task_definition_arn(2));
    wait_value(&mut rx, Duration::from_secs(2), Option::is_some).await;
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 2).await;
    ecs.set_fault_for(EcsOperation::DescribeServices, EcsFault::AccessDenied);
    let seen = describes(&ecs);
    wait_describes(&ecs, seen + 2).await;
    ecs.set_fault(EcsFault::None);
    ecs.set_service(ServiceDoc::steady(&ecs_stand_in::task_definition_arn(1), 2));
    wait_value(&mut rx, ONE_INTERVAL, Option::is_none).await;

    let text = logs.mine();
    assert!(text.contains("Drain watch: asking ECS"), "{text}");
    assert_eq!(
        text.matches("Task is being replaced: deployment in progress")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("Task is no longer being replaced").count(),
        1,
        "{text}"
    );
    let denied = text
        .lines()
        .filter(|l| l.contains("the task role lacks ecs:DescribeServices"))
        .count();
    assert_eq!(denied, 1, "one warning per distinct error: {text}");
}
