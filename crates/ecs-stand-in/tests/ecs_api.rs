//! The stand-in ECS's task table through the real `aws-sdk-ecs` client (so the wire shapes are
//! the ones the SDK reads) and the per-task endpoints over real HTTP: ListTasks, DescribeTasks,
//! GetTaskProtection / UpdateTaskProtection for many tasks, DescribeServices in fleet mode, the
//! per-task agent and metadata endpoints, and faults on the new operations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::DesiredStatus as SdkDesired;
use ecs_stand_in::{
    task_access_key_id, task_arn, EcsFault, EcsOperation, Fault, LastStatus, StandInEcs, TaskSpec,
    CLUSTER_ARN, FIRST_DEPLOYMENT_ID, SERVICE_NAME,
};

/// An SDK client for the stand-in, signing with `access_key` for eu-west-1, one attempt a call.
fn client_as(ecs: &StandInEcs, access_key: &str) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(ecs.endpoint_url())
        .region(aws_sdk_ecs::config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            access_key, "secret", None, None, "test",
        ))
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

fn client(ecs: &StandInEcs) -> aws_sdk_ecs::Client {
    client_as(ecs, "AKIDTEST")
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `n` RUNNING tasks named `<prefix>0`, `<prefix>1`, … of the PRIMARY deployment.
fn add_running(ecs: &StandInEcs, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            ecs.add_task(
                TaskSpec::new()
                    .id(format!("{prefix}{i}"))
                    .started_at(at(1_800_000_000 + i as u64)),
            )
        })
        .collect()
}

#[tokio::test]
async fn list_tasks_filters_by_service_and_desired_status_and_pages() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    let running = add_running(&ecs, "run", 5);
    let stopped: Vec<String> = (0..2)
        .map(|i| {
            ecs.add_task(
                TaskSpec::new()
                    .id(format!("gone{i}"))
                    .status(LastStatus::Stopped),
            )
        })
        .collect();
    let stopping = ecs.add_task(
        TaskSpec::new()
            .id("leaving")
            .status(LastStatus::Deactivating),
    );
    let c = client(&ecs);

    let all = c
        .list_tasks()
        .cluster(CLUSTER_ARN)
        .service_name(SERVICE_NAME)
        .send()
        .await
        .unwrap();
    assert_eq!(
        all.task_arns(),
        running.as_slice(),
        "desired RUNNING by default"
    );
    assert_eq!(all.next_token(), None);

    // Pages of 2: 2, 2, 1.
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_tasks()
            .service_name(SERVICE_NAME)
            .max_results(2)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        pages.push(page.task_arns().to_vec());
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), running);

    let down = c
        .list_tasks()
        .service_name(SERVICE_NAME)
        .desired_status(SdkDesired::Stopped)
        .send()
        .await
        .unwrap();
    let mut expected = stopped.clone();
    expected.push(stopping);
    assert_eq!(down.task_arns(), expected.as_slice());
    // ECS never sets desired status PENDING: the filter is valid and matches nothing.
    let pending = c
        .list_tasks()
        .desired_status(SdkDesired::Pending)
        .send()
        .await
        .unwrap();
    assert!(pending.task_arns().is_empty());
    // Started by the first deployment (all of them were).
    let by = c
        .list_tasks()
        .started_by(FIRST_DEPLOYMENT_ID)
        .send()
        .await
        .unwrap();
    assert_eq!(by.task_arns().len(), 5);

    for (request, code) in [
        (c.list_tasks().max_results(101), "InvalidParameterException"),
        (c.list_tasks().max_results(0), "InvalidParameterException"),
        (
            c.list_tasks().next_token("forged"),
            "InvalidParameterException",
        ),
        (
            c.list_tasks().service_name("other"),
            "ServiceNotFoundException",
        ),
        (c.list_tasks().cluster("other"), "ClusterNotFoundException"),
    ] {
        let e = request.send().await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{e:?}");
    }
}

#[tokio::test]
async fn describe_tasks_reports_each_task_with_its_times_and_missing_ones_as_failures() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    let deployment = ecs.deploy();
    let started = at(1_800_000_123);
    let a = ecs.add_task(
        TaskSpec::new()
            .id("aaaa")
            .created_at(at(1_800_000_100))
            .started_at(started),
    );
    let b = ecs.add_task(
        TaskSpec::new()
            .id("bbbb")
            .deployment(FIRST_DEPLOYMENT_ID)
            .status(LastStatus::Pending),
    );
    let out = client(&ecs)
        .describe_tasks()
        .cluster(CLUSTER_ARN)
        .tasks(&a)
        .tasks("bbbb")
        .tasks(task_arn("nope"))
        .send()
        .await
        .unwrap();
    let tasks = out.tasks();
    assert_eq!(tasks.len(), 2);
    let ta = &tasks[0];
    assert_eq!(ta.task_arn(), Some(a.as_str()));
    assert_eq!(ta.last_status(), Some("RUNNING"));
    assert_eq!(ta.desired_status(), Some("RUNNING"));
    assert_eq!(ta.group(), Some("service:stand-in-service"));
    assert_eq!(ta.started_by(), Some(deployment.as_str()));
    assert_eq!(
        ta.task_definition_arn(),
        Some(ecs_stand_in::task_definition_arn(2).as_str())
    );
    assert_eq!(ta.started_at().map(|t| t.secs()), Some(1_800_000_123));
    assert_eq!(ta.created_at().map(|t| t.secs()), Some(1_800_000_100));
    let tb = &tasks[1];
    assert_eq!(tb.task_arn(), Some(b.as_str()));
    assert_eq!(tb.last_status(), Some("PENDING"));
    assert_eq!(tb.started_by(), Some(FIRST_DEPLOYMENT_ID));
    assert_eq!(tb.started_at(), None, "not started yet");
    let failures = out.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].reason(), Some("MISSING"));
    assert_eq!(failures[0].arn(), Some(task_arn("nope").as_str()));

    // A stopped task says when and why.
    ecs.stop_task("bbbb").unwrap();
    ecs.set_task_status("bbbb", LastStatus::Stopped);
    let out = client(&ecs)
        .describe_tasks()
        .tasks("bbbb")
        .send()
        .await
        .unwrap();
    let tb = &out.tasks()[0];
    assert_eq!(tb.desired_status(), Some("STOPPED"));
    assert_eq!(tb.stopped_reason(), Some("Task stopped by user"));
    assert!(tb.stopped_at().is_some());

    let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let e = client(&ecs)
        .describe_tasks()
        .set_tasks(Some(many))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterException"));
}

#[tokio::test]
async fn get_task_protection_takes_up_to_100_tasks_and_update_up_to_10() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    let tasks = add_running(&ecs, "t", 12);
    let c = client(&ecs);

    let updated = c
        .update_task_protection()
        .cluster(CLUSTER_ARN)
        .set_tasks(Some(tasks[..10].to_vec()))
        .protection_enabled(true)
        .expires_in_minutes(5)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.protected_tasks().len(), 10);
    let e = c
        .update_task_protection()
        .set_tasks(Some(tasks.clone()))
        .protection_enabled(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterException"), "11 tasks");

    let mut asked = tasks.clone();
    asked.push(task_arn("unknown"));
    let got = c
        .get_task_protection()
        .set_tasks(Some(asked))
        .send()
        .await
        .unwrap();
    let protected = got.protected_tasks();
    assert_eq!(protected.len(), 12);
    let soon = SystemTime::now() + Duration::from_secs(5 * 60);
    for (i, p) in protected.iter().enumerate() {
        assert_eq!(p.task_arn(), Some(tasks[i].as_str()));
        assert_eq!(p.protection_enabled(), i < 10, "task {i}");
        match p.expiration_date() {
            Some(t) => {
                let t = UNIX_EPOCH + Duration::from_secs(t.secs() as u64);
                assert!(t <= soon && t + Duration::from_secs(10) > soon, "{t:?}");
            }
            None => assert!(i >= 10, "task {i} has no expiry"),
        }
    }
    assert_eq!(got.failures().len(), 1);
    assert_eq!(got.failures()[0].reason(), Some("MISSING"));

    let hundred: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let got = c
        .get_task_protection()
        .set_tasks(Some(hundred.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (got.protected_tasks().len(), got.failures().len()),
        (12, 88)
    );
    let mut too_many = hundred;
    too_many.push("t100".into());
    let e = c
        .get_task_protection()
        .set_tasks(Some(too_many))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterException"), "101 tasks");
}

#[tokio::test]
async fn describe_services_counts_the_table_in_fleet_mode() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    ecs.set_desired_count(3);
    add_running(&ecs, "old", 3);
    let new_deployment = ecs.deploy();
    ecs.add_task(TaskSpec::new().id("new0"));
    ecs.add_task(TaskSpec::new().id("new1").status(LastStatus::Activating));
    ecs.add_task(TaskSpec::new().id("new2").status(LastStatus::Provisioning));

    let out = client(&ecs)
        .describe_services()
        .cluster(CLUSTER_ARN)
        .services(SERVICE_NAME)
        .send()
        .await
        .unwrap();
    let s = &out.services()[0];
    assert_eq!(
        (s.desired_count(), s.running_count(), s.pending_count()),
        (3, 4, 2)
    );
    let d = s.deployments();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].id(), Some(new_deployment.as_str()));
    assert_eq!(d[0].status(), Some("PRIMARY"));
    assert_eq!(
        (
            d[0].desired_count(),
            d[0].running_count(),
            d[0].pending_count()
        ),
        (3, 1, 2)
    );
    assert_eq!(d[1].id(), Some(FIRST_DEPLOYMENT_ID));
    assert_eq!(d[1].status(), Some("ACTIVE"));
    // One new task runs: the old deployment still needs 2 to keep 3 running.
    assert_eq!((d[1].desired_count(), d[1].running_count()), (2, 3));
    assert!(s
        .events()
        .iter()
        .any(|e| e.message().is_some_and(|m| m.contains(&new_deployment))));

    // A task on its way down is not running.
    ecs.set_task_status("old0", LastStatus::Deactivating);
    assert_eq!(ecs.service().running_count, 3);
}

#[tokio::test]
async fn faults_per_operation_cover_the_new_operations() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    let tasks = add_running(&ecs, "t", 2);
    let c = client(&ecs);

    ecs.set_fault_for(EcsOperation::ListTasks, EcsFault::AccessDenied);
    let e = c.list_tasks().send().await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert!(
        e.message().unwrap_or_default().contains("ecs:ListTasks"),
        "{e:?}"
    );
    ecs.set_fault_for(EcsOperation::ListTasks, EcsFault::OmitTask);
    assert!(c.list_tasks().send().await.unwrap().task_arns().is_empty());
    ecs.set_fault_for(EcsOperation::ListTasks, EcsFault::None);
    assert_eq!(c.list_tasks().send().await.unwrap().task_arns().len(), 2);

    // A failure for each task named.
    ecs.set_fault_for(
        EcsOperation::GetTaskProtection,
        EcsFault::Failure {
            reason: "TASK_NOT_VALID".into(),
            detail: None,
        },
    );
    let got = c
        .get_task_protection()
        .set_tasks(Some(tasks.clone()))
        .send()
        .await
        .unwrap();
    assert!(got.protected_tasks().is_empty());
    assert_eq!(got.failures().len(), 2);
    assert_eq!(got.failures()[1].arn(), Some(tasks[1].as_str()));

    // A hang holds the call until released.
    ecs.set_fault_for(EcsOperation::GetTaskProtection, EcsFault::Hang);
    let call = tokio::spawn({
        let c = c.clone();
        let tasks = tasks.clone();
        async move { c.get_task_protection().set_tasks(Some(tasks)).send().await }
    });
    ecs.wait_for_calls(ecs.calls().len() + 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "a hanging call answered");
    ecs.release_hangs();
    let got = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert_eq!(got.protected_tasks().len(), 2);
}

#[tokio::test]
async fn each_task_has_its_own_agent_endpoint_on_its_own_protection() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    let tasks = add_running(&ecs, "t", 2);
    let http = reqwest::Client::new();
    let state = |task: &str| format!("{}/task-protection/v1/state", ecs.agent_uri_for(task));

    // The second task (not the table's first entry) protects itself.
    let answer = http
        .put(state(&tasks[1]))
        .body(r#"{"ProtectionEnabled":true,"ExpiresInMinutes":3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["protection"]["ProtectionEnabled"], true);
    assert_eq!(body["protection"]["TaskArn"], tasks[1].as_str());

    // The ECS API sees the same protection: task 1 protected, task 0 not.
    let got = client(&ecs)
        .get_task_protection()
        .set_tasks(Some(tasks.clone()))
        .send()
        .await
        .unwrap();
    let enabled: Vec<bool> = got
        .protected_tasks()
        .iter()
        .map(|p| p.protection_enabled())
        .collect();
    assert_eq!(enabled, [false, true]);
    assert!(ecs.task(&tasks[1]).unwrap().protected_until.is_some());
    assert!(!ecs.is_protected(), "the first task is not");
    let read: serde_json::Value = http
        .get(state(&tasks[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["protection"]["ProtectionEnabled"], false);

    // The agent's own parsing and answers: a bad body, a fault, an unknown task.
    let bad = http
        .put(state(&tasks[0]))
        .body(r#"{"ProtectionEnabled":true,"Extra":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(bad["error"]["Code"], "InvalidParameterException");
    assert!(ecs.set_agent_fault(&tasks[0], Fault::Failure("TASK_NOT_VALID".into())));
    let failed: serde_json::Value = http
        .get(state(&tasks[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failed["failure"]["Reason"], "TASK_NOT_VALID");
    assert_eq!(failed["failure"]["Arn"], tasks[0].as_str());
    let unknown = http.get(state("nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    let calls = ecs.agent_calls();
    let per_task: Vec<(&str, &str, u16)> = calls
        .iter()
        .map(|c| (c.task_id.as_str(), c.call.method.as_str(), c.call.status))
        .collect();
    assert_eq!(
        per_task,
        [
            ("t1", "PUT", 200),
            ("t0", "GET", 200),
            ("t0", "PUT", 400),
            ("t0", "GET", 200),
            ("nope", "GET", 404)
        ]
    );
}

#[tokio::test]
async fn each_task_has_its_own_metadata_without_a_service_name() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    ecs.deploy();
    let task = ecs.add_task(TaskSpec::new().id("abcd"));
    let doc: serde_json::Value = reqwest::get(format!("{}/task", ecs.metadata_uri_for(&task)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["TaskARN"], task.as_str());
    assert_eq!(doc["Cluster"], CLUSTER_ARN);
    assert_eq!(doc["Family"], "stand-in");
    assert_eq!(doc["Revision"], "2");
    assert!(doc.get("ServiceName").is_none(), "{doc}");
    let missing = reqwest::get(format!("{}/task", ecs.metadata_uri_for("nope")))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The single-task stand-in keeps its first task's metadata, ServiceName included.
    let single = StandInEcs::start().await.unwrap();
    let doc: serde_json::Value = reqwest::get(format!("{}/task", single.metadata_uri()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["TaskARN"], ecs_stand_in::TASK_ARN);
    assert_eq!(doc["ServiceName"], SERVICE_NAME);
}

#[tokio::test]
async fn a_call_is_attributed_to_the_task_whose_credentials_signed_it() {
    let ecs = StandInEcs::start_fleet().await.unwrap();
    let tasks = add_running(&ecs, "t", 1);
    client_as(&ecs, &task_access_key_id("t0"))
        .describe_tasks()
        .tasks(&tasks[0])
        .send()
        .await
        .unwrap();
    client(&ecs).list_tasks().send().await.unwrap();
    let calls = ecs.calls();
    let callers: Vec<Option<&str>> = calls.iter().map(|c| c.caller_task()).collect();
    assert_eq!(callers, [Some("t0"), None]);
}

#[tokio::test]
async fn the_single_task_methods_act_on_the_first_entry_of_the_table() {
    let ecs = StandInEcs::start().await.unwrap();
    assert_eq!(ecs.tasks().len(), 1);
    assert!(!ecs.is_protected());
    ecs.set_protected_until(Some(SystemTime::now() + Duration::from_secs(60)));
    assert!(ecs.is_protected());
    assert!(ecs.tasks()[0].protected_until.is_some());
    // A second task does not change what they act on.
    ecs.add_task(TaskSpec::new().id("second"));
    ecs.set_task_group(Some("family:stand-in"));
    let tasks = ecs.tasks();
    assert_eq!(tasks[0].group.as_deref(), Some("family:stand-in"));
    assert_eq!(tasks[1].group.as_deref(), Some("service:stand-in-service"));
    assert!(ecs.remove_task("second"));
    assert!(!ecs.remove_task("second"));
}
