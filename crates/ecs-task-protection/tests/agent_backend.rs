//! The agent endpoint backend against a real HTTP server answering every shape the ECS agent
//! answers (see `ecs-facts.md`): what each becomes, and that a `failure` body is never success.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ecs_stand_in::{Fault, StandInAgent};
use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::protection::{
    ErrorKind, ProtectionBackend, ProtectionManager, StateLabel,
};

fn backend(agent: &StandInAgent) -> AgentBackend {
    AgentBackend::new(&agent.uri(), Duration::from_millis(500)).expect("valid uri")
}

async fn kind_for(fault: Fault) -> ErrorKind {
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(fault);
    backend(&agent)
        .set_protection(true, 30)
        .await
        .unwrap_err()
        .kind
}

#[tokio::test]
async fn http_200_protection_is_success_with_the_reported_expiry() {
    let agent = StandInAgent::start().await.unwrap();
    let b = backend(&agent);
    let state = b.set_protection(true, 30).await.unwrap();
    assert!(state.enabled);
    let left = state
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(29 * 60) && left <= Duration::from_secs(30 * 60),
        "{left:?}"
    );
    assert!(agent.is_protected());
    // The agent rejects unknown fields and requires ProtectionEnabled: our body passed.
    let calls = agent.put_calls();
    assert_eq!(
        (calls[0].enabled, calls[0].expires_in_minutes, calls[0].ok),
        (Some(true), Some(30), true)
    );

    let state = b.set_protection(false, 30).await.unwrap();
    assert_eq!((state.enabled, state.expires_at), (false, None));
    assert!(!agent.is_protected());
    assert!(!b.get_protection().await.unwrap().enabled);
}

#[tokio::test]
async fn http_200_with_a_failure_body_is_a_rejection() {
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(Fault::Failure("TASK_NOT_VALID".into()));
    let e = backend(&agent).set_protection(true, 30).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failure);
    assert!(e.message.contains("TASK_NOT_VALID"), "{e}");
}

#[tokio::test]
async fn every_error_shape_maps_to_its_kind() {
    assert_eq!(kind_for(Fault::Throttled).await, ErrorKind::Throttled);
    assert_eq!(
        kind_for(Fault::Failure("DEPLOYMENT_BLOCKED".into())).await,
        ErrorKind::Blocked
    );
    assert_eq!(kind_for(Fault::AccessDenied).await, ErrorKind::AccessDenied);
    assert_eq!(kind_for(Fault::NotFound).await, ErrorKind::NotFound);
    assert_eq!(kind_for(Fault::ServerError).await, ErrorKind::Server);
    assert_eq!(kind_for(Fault::GatewayTimeout).await, ErrorKind::Server);
    assert_eq!(kind_for(Fault::Malformed).await, ErrorKind::Malformed);
    assert_eq!(kind_for(Fault::Hang).await, ErrorKind::Timeout);
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let port = support::free_port();
    let b = AgentBackend::new(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_millis(500),
    )
    .unwrap();
    assert_eq!(
        b.set_protection(true, 30).await.unwrap_err().kind,
        ErrorKind::Unreachable
    );
}

#[tokio::test]
async fn a_bad_agent_uri_is_a_config_error() {
    assert_eq!(
        AgentBackend::new("169.254.170.2/v1", Duration::from_secs(1))
            .unwrap_err()
            .kind,
        ErrorKind::Config
    );
}

#[tokio::test]
async fn the_manager_never_believes_a_failure_body_and_retries_it_with_back_off() {
    let agent = StandInAgent::start().await.unwrap();
    agent.set_fault(Fault::Failure("TASK_NOT_VALID".into()));
    let settings =
        support::settings(0).with_backoff(Duration::from_millis(50), Duration::from_millis(400));
    let m = ProtectionManager::start(Arc::new(backend(&agent)), settings).unwrap();
    let g = m.guard();
    // Initial GET + at least 4 PUT attempts.
    agent.wait_for_calls(5).await;
    let st = m.status();
    assert_ne!(st.state, StateLabel::Protected);
    assert!(st
        .last_rejection
        .unwrap()
        .message
        .contains("TASK_NOT_VALID"));
    assert!(agent
        .put_calls()
        .iter()
        .all(|c| !c.ok && c.enabled == Some(true)));
    // Once ECS accepts, protection is established by the next retry.
    agent.set_fault(Fault::None);
    let mut rx = m.watch();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.state == StateLabel::Protected),
    )
    .await
    .expect("protected after recovery")
    .unwrap();
    drop(g);
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.state == StateLabel::Unprotected),
    )
    .await
    .expect("released")
    .unwrap();
    let last = agent.put_calls().pop().unwrap();
    assert_eq!((last.enabled, last.ok), (Some(false), true));
}
