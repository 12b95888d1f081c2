//! The ECS API backend with the real `aws-sdk-ecs` client against a local endpoint that speaks
//! ECS's JSON protocol (and a local task metadata endpoint). No real AWS, dummy credentials.
//! Real time throughout: every test finishes in a few seconds.

mod support;

use std::time::{Duration, SystemTime};

use ecs_stand_in::{self, EcsFault, EcsOperation, StandInEcs, CLUSTER_ARN, TASK_ARN};
use ecs_task_protection::ecs::api::EcsApiBackend;
use ecs_task_protection::ecs::identity::{IdentitySource, TaskIdentity};
use ecs_task_protection::ecs::{EcsContext, EcsSettings};
use ecs_task_protection::protection::{
    AcquireError, ErrorKind, ProtectionBackend, ProtectionEvent, ProtectionManager, Settings,
    StateLabel,
};
use support::{credentials, ecs_client, ecs_client_with, within};

/// A client whose own region (us-east-1) differs from the task's (eu-west-1), so that the tests
/// see which one the calls are signed for.
fn client(ecs: &StandInEcs) -> aws_sdk_ecs::Client {
    ecs_client(&ecs.endpoint_url(), "us-east-1")
}

/// A backend for the task named by hand, through `client`.
fn backend_for(client: aws_sdk_ecs::Client, cluster: &str) -> EcsApiBackend {
    let identity = IdentitySource::given(TaskIdentity::new(cluster, TASK_ARN));
    EcsApiBackend::new(EcsContext::new(client, identity))
}

fn given_backend(ecs: &StandInEcs) -> EcsApiBackend {
    backend_for(client(ecs), CLUSTER_ARN)
}

fn near(t: SystemTime, expected: SystemTime) -> bool {
    let d = t.duration_since(expected).unwrap_or_else(|e| e.duration());
    d < Duration::from_secs(5)
}

/// Short, real-time manager settings: 1 minute protection, no hold-over, quick back-off.
fn fast_settings() -> Settings {
    Settings::default()
        .with_duration_minutes(1)
        .with_maintain_percent(0)
        .with_refresh_percent(80)
        .with_adjust_interval(Duration::from_millis(100))
        .with_call_timeout(Duration::from_secs(5))
        .with_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .with_blocked_retry(Duration::from_millis(300))
}

async fn wait_state(m: &ProtectionManager, state: StateLabel) {
    let mut rx = m.watch();
    within(
        &format!("state {state:?}"),
        rx.wait_for(|s| s.state == state),
    )
    .await
    .expect("manager alive");
}

#[tokio::test]
async fn protect_get_and_release_through_the_real_sdk() {
    let ecs = StandInEcs::start().await.unwrap();
    let backend = given_backend(&ecs);
    assert_eq!(backend.name(), "api");
    assert!(
        backend.describe().contains(TASK_ARN),
        "{}",
        backend.describe()
    );

    let before = SystemTime::now();
    let state = backend.set_protection(true, 30).await.unwrap();
    assert!(state.enabled);
    let expires = state.expires_at.expect("ECS reports the expiry");
    assert!(
        near(expires, before + Duration::from_secs(30 * 60)),
        "{expires:?}"
    );
    assert!(ecs.is_protected());

    let read = backend.get_protection().await.unwrap();
    assert!(read.enabled);
    assert!(near(read.expires_at.unwrap(), expires));

    let state = backend.set_protection(false, 30).await.unwrap();
    assert_eq!((state.enabled, state.expires_at), (false, None));
    assert!(!ecs.is_protected());
    assert!(!backend.get_protection().await.unwrap().enabled);

    let calls = ecs.calls();
    let ops: Vec<&str> = calls.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        ops,
        [
            "UpdateTaskProtection",
            "GetTaskProtection",
            "UpdateTaskProtection",
            "GetTaskProtection"
        ]
    );
    let protect = &calls[0];
    assert_eq!(protect.protection_enabled, Some(true));
    assert_eq!(protect.expires_in_minutes, Some(30));
    assert_eq!(protect.cluster.as_deref(), Some(CLUSTER_ARN));
    assert_eq!(protect.tasks, vec![TASK_ARN.to_string()]);
    // Signed for the task's region (from its ARN), not the client's default.
    assert_eq!(protect.region.as_deref(), Some(ecs_stand_in::REGION));
    let release = &calls[2];
    assert_eq!(release.protection_enabled, Some(false));
    assert_eq!(
        release.expires_in_minutes, None,
        "no expiry is sent when releasing"
    );
    assert!(calls.iter().all(|c| c.status == 200));
}

#[tokio::test]
async fn a_failures_entry_is_a_rejection_with_its_reason() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault(EcsFault::Failure {
        reason: "TASK_NOT_VALID".into(),
        detail: Some("The task is not part of a service".into()),
    });
    let e = given_backend(&ecs)
        .set_protection(true, 30)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failure);
    assert!(e.message.contains("TASK_NOT_VALID"), "{e}");
    assert!(e.message.contains("not part of a service"), "{e}");
    assert!(e.hint().unwrap().contains("service"));
    assert!(!ecs.is_protected());
}

#[tokio::test]
async fn an_answer_without_our_task_is_malformed() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault(EcsFault::OmitTask);
    let e = given_backend(&ecs)
        .set_protection(true, 30)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed, "{e}");
    ecs.set_fault(EcsFault::Malformed);
    let e = given_backend(&ecs).get_protection().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed, "{e}");
}

#[tokio::test]
async fn throttling_is_throttled_after_one_sdk_retry() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault(EcsFault::Throttled);
    let e = given_backend(&ecs)
        .set_protection(true, 30)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    assert!(e.message.contains("Rate exceeded"), "{e}");
    // The SDK makes at most 2 attempts; the manager does the rest.
    assert_eq!(ecs.updates(), vec![true, true]);
}

#[tokio::test]
async fn access_denied_names_the_missing_iam_action_and_is_not_retried() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault(EcsFault::AccessDenied);
    let backend = given_backend(&ecs);
    let e = backend.set_protection(true, 30).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AccessDenied, "{e}");
    assert!(
        e.message
            .contains("the task role lacks ecs:UpdateTaskProtection"),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("ecs:UpdateTaskProtection"));
    let e = backend.get_protection().await.unwrap_err();
    assert!(
        e.message
            .contains("the task role lacks ecs:GetTaskProtection"),
        "{e}"
    );
    assert_eq!(
        ecs.calls().len(),
        2,
        "access denied is not retried by the SDK"
    );
}

#[tokio::test]
async fn other_ecs_errors_are_classified() {
    let ecs = StandInEcs::start().await.unwrap();
    let backend = given_backend(&ecs);
    for (fault, kind) in [
        (EcsFault::ServerError, ErrorKind::Server),
        (EcsFault::InvalidParameter, ErrorKind::InvalidRequest),
        (EcsFault::ClusterNotFound, ErrorKind::NotFound),
    ] {
        ecs.set_fault(fault.clone());
        let e = backend.set_protection(true, 30).await.unwrap_err();
        assert_eq!(e.kind, kind, "{fault:?}: {e}");
    }
    // A cluster ECS does not know is reported as such (the stand-in checks what is sent).
    ecs.set_fault(EcsFault::None);
    let wrong = backend_for(client(&ecs), "other-cluster");
    assert_eq!(
        wrong.set_protection(true, 30).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unreachable() {
    let port = support::free_port();
    let backend = backend_for(
        ecs_client(&format!("http://127.0.0.1:{port}"), "us-east-1"),
        CLUSTER_ARN,
    );
    let e = backend.set_protection(true, 30).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
}

#[tokio::test]
async fn the_sdk_timeout_is_a_timeout() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault(EcsFault::Hang);
    let timeouts = aws_sdk_ecs::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(200))
        .operation_timeout(Duration::from_millis(300))
        .build();
    let backend = backend_for(
        ecs_client_with(&ecs.endpoint_url(), "us-east-1", Some(timeouts)),
        CLUSTER_ARN,
    );
    let e = within("the SDK timeout", backend.set_protection(true, 30))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    ecs.release_hangs();
}

#[tokio::test]
async fn a_hang_trips_the_managers_call_timeout_and_protection_follows_once_ecs_answers() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault(EcsFault::Hang);
    let settings = fast_settings().with_call_timeout(Duration::from_millis(300));
    let m = ProtectionManager::start(std::sync::Arc::new(given_backend(&ecs)), settings).unwrap();
    let mut events = m.subscribe();
    let _g = m.guard();
    let started = std::time::Instant::now();
    let error = within("a rejection", async {
        loop {
            if let Ok(ProtectionEvent::Rejected {
                error,
                protecting: true,
                ..
            }) = events.recv().await
            {
                return error;
            }
        }
    })
    .await;
    assert_eq!(error.kind, ErrorKind::Timeout, "{error}");
    // The start-up read and the protect call each waited 300 ms, no more.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    ecs.release_hangs();
    wait_state(&m, StateLabel::Protected).await;
    assert!(ecs.is_protected());
    m.shutdown().await.unwrap();
    assert!(!ecs.is_protected(), "released on shutdown");
}

#[tokio::test]
async fn the_identity_is_read_from_the_metadata_endpoint_once_and_a_failure_is_retried() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_metadata_available(false);
    let identity = IdentitySource::metadata(&ecs.metadata_uri(), Duration::from_secs(1)).unwrap();
    let backend = EcsApiBackend::new(EcsContext::new(client(&ecs), identity.clone()));

    let e = backend.set_protection(true, 10).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("task metadata endpoint"), "{e}");
    assert!(e.message.contains("HTTP 500"), "{e}");
    assert!(ecs.calls().is_empty(), "no ECS call without an identity");

    ecs.set_metadata_available(true);
    assert!(backend.set_protection(true, 10).await.unwrap().enabled);
    assert!(backend.get_protection().await.unwrap().enabled);
    assert_eq!(
        ecs.metadata_reads(),
        2,
        "one failed read, one good read, then cached"
    );

    let known = identity.cached().expect("cached");
    assert_eq!(known.cluster, CLUSTER_ARN);
    assert_eq!(known.task_arn, TASK_ARN);
    assert_eq!(
        known.service_name.as_deref(),
        Some(ecs_stand_in::SERVICE_NAME)
    );
    assert_eq!(
        known.task_definition_arn(),
        Some(ecs_stand_in::task_definition_arn(ecs_stand_in::REVISION))
    );
    let call = &ecs.calls()[0];
    assert_eq!(call.cluster.as_deref(), Some(CLUSTER_ARN));
    assert_eq!(call.tasks, vec![TASK_ARN.to_string()]);
    assert_eq!(call.region.as_deref(), Some(ecs_stand_in::REGION));
}

#[tokio::test]
async fn from_loader_uses_the_endpoint_override_and_the_region_of_the_task() {
    let ecs = StandInEcs::start().await.unwrap();
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(credentials());
    let settings = EcsSettings {
        endpoint_url: Some(ecs.endpoint_url()),
        metadata_uri: Some(ecs.metadata_uri()),
        ..EcsSettings::default()
    };
    let backend = EcsApiBackend::new(EcsContext::from_loader(loader, settings).await.unwrap());
    assert!(backend.describe().contains(&ecs.endpoint_url()));
    assert!(backend.set_protection(true, 5).await.unwrap().enabled);
    let call = &ecs.calls()[0];
    assert_eq!(call.expires_in_minutes, Some(5));
    assert_eq!(call.region.as_deref(), Some(ecs_stand_in::REGION));
}

#[tokio::test]
async fn from_env_needs_an_identity() {
    let given = |cluster: Option<&str>, task_arn: Option<&str>| EcsSettings {
        cluster: cluster.map(str::to_string),
        task_arn: task_arn.map(str::to_string),
        ..EcsSettings::default()
    };
    let e = EcsContext::from_env(given(Some("c"), None))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("ECS_CLUSTER and ECS_TASK_ARN"), "{e}");
    let e = EcsContext::from_env(given(None, None)).await.unwrap_err();
    assert!(e.message.contains("ECS_CONTAINER_METADATA_URI_V4"), "{e}");
    let e = EcsContext::from_env(given(Some("c"), Some("task-1")))
        .await
        .unwrap_err();
    assert!(e.message.contains("not a task ARN"), "{e}");
}

#[tokio::test]
async fn the_manager_learns_leftover_protection_at_start_up_and_releases_it() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_protected_until(Some(SystemTime::now() + Duration::from_secs(20 * 60)));
    let m = ProtectionManager::start(std::sync::Arc::new(given_backend(&ecs)), fast_settings())
        .unwrap();
    wait_state(&m, StateLabel::Unprotected).await;
    let ops: Vec<(String, Option<bool>)> = ecs
        .calls()
        .into_iter()
        .map(|c| (c.operation, c.protection_enabled))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("GetTaskProtection".to_string(), None),
            ("UpdateTaskProtection".to_string(), Some(false)),
        ]
    );
    assert!(!ecs.is_protected());
}

#[tokio::test]
async fn the_manager_protects_refreshes_and_releases_through_the_sdk() {
    let ecs = StandInEcs::start().await.unwrap();
    // 1 % of 1 minute: a refresh every 0.6 s.
    let settings = fast_settings().with_refresh_percent(1);
    let m = ProtectionManager::start(std::sync::Arc::new(given_backend(&ecs)), settings).unwrap();
    let g = m.guard();
    wait_state(&m, StateLabel::Protected).await;
    let expiry = m.status().expires_at.unwrap();
    assert!(near(expiry, SystemTime::now() + Duration::from_secs(60)));
    within("a refresh", async {
        while ecs.updates().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(g);
    wait_state(&m, StateLabel::Unprotected).await;
    let updates = ecs.updates();
    assert!(updates.len() >= 3, "{updates:?}");
    assert!(
        updates[..updates.len() - 1].iter().all(|u| *u),
        "{updates:?}"
    );
    assert_eq!(updates.last(), Some(&false));
    assert!(ecs
        .calls_of(EcsOperation::UpdateTaskProtection)
        .iter()
        .filter(|c| c.protection_enabled == Some(true))
        .all(|c| c.expires_in_minutes == Some(1)));
    assert!(!ecs.is_protected());
}

#[tokio::test]
async fn the_manager_reports_a_failures_entry_as_a_rejection() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault_for(
        EcsOperation::UpdateTaskProtection,
        EcsFault::Failure {
            reason: "TASK_NOT_VALID".into(),
            detail: None,
        },
    );
    let m = ProtectionManager::start(std::sync::Arc::new(given_backend(&ecs)), fast_settings())
        .unwrap();
    match within("acquire", m.acquire()).await {
        Err(AcquireError::Rejected(e)) => {
            assert_eq!(e.kind, ErrorKind::Failure);
            assert!(e.message.contains("TASK_NOT_VALID"), "{e}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(m.status().state, StateLabel::Unprotected);
    m.release();
}

#[tokio::test]
async fn deployment_blocked_in_failures_is_its_own_kind_retried_slowly_until_ecs_allows() {
    let ecs = StandInEcs::start().await.unwrap();
    let blocked = EcsFault::Failure {
        reason: "DEPLOYMENT_BLOCKED".into(),
        detail: None,
    };
    ecs.set_fault_for(EcsOperation::UpdateTaskProtection, blocked);
    let e = given_backend(&ecs)
        .set_protection(true, 1)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Blocked, "{e}");
    assert!(e.hint().unwrap().contains("desired count"));
    // The manager's fast settings retry faults every 100–400 ms and DEPLOYMENT_BLOCKED every
    // 150–450 ms; once ECS allows it, protection follows.
    let m = ProtectionManager::start(std::sync::Arc::new(given_backend(&ecs)), fast_settings())
        .unwrap();
    let _g = m.guard();
    let mut rx = m.watch();
    within("blocked", rx.wait_for(|s| s.blocked)).await.unwrap();
    ecs.set_fault_for(EcsOperation::UpdateTaskProtection, EcsFault::None);
    wait_state(&m, StateLabel::Protected).await;
    assert!(!m.status().blocked);
    assert!(ecs.is_protected());
}

#[tokio::test]
async fn the_manager_backs_off_on_throttling_then_protects() {
    let ecs = StandInEcs::start().await.unwrap();
    ecs.set_fault_for(EcsOperation::UpdateTaskProtection, EcsFault::Throttled);
    let m = ProtectionManager::start(std::sync::Arc::new(given_backend(&ecs)), fast_settings())
        .unwrap();
    let mut events = m.subscribe();
    let _g = m.guard();
    let mut rejections = Vec::new();
    within("two throttled attempts", async {
        while rejections.len() < 2 {
            if let Ok(ProtectionEvent::Rejected {
                error,
                attempt,
                retry_in,
                ..
            }) = events.recv().await
            {
                assert_eq!(error.kind, ErrorKind::Throttled, "{error}");
                rejections.push((attempt, retry_in, std::time::Instant::now()));
            }
        }
    })
    .await;
    assert_eq!(rejections[0].0, 1);
    assert_eq!(rejections[1].0, 2);
    // Equal jitter: the first delay is in [50, 100] ms, the second in [100, 200] ms.
    assert!(
        rejections[0].1 >= Duration::from_millis(50)
            && rejections[0].1 <= Duration::from_millis(100)
    );
    assert!(
        rejections[1].1 >= Duration::from_millis(100)
            && rejections[1].1 <= Duration::from_millis(200)
    );
    assert!(
        rejections[1].2 - rejections[0].2 >= rejections[0].1,
        "the manager waited"
    );
    ecs.set_fault(EcsFault::None);
    wait_state(&m, StateLabel::Protected).await;
    assert!(ecs.is_protected());
    let updates = ecs.updates();
    assert!(
        updates.len() >= 5,
        "2 SDK attempts per throttled call, then one success: {updates:?}"
    );
    assert!(updates.iter().all(|u| *u));
}
