//! The smallest use of the library: a loop that protects its ECS task while each job runs.
//!
//! ```sh
//! cargo run --example protect_while_busy
//! ```
//!
//! Outside ECS it uses the in-process local backend, so it runs anywhere; inside an ECS task
//! (where the agent sets `ECS_AGENT_URI`) it protects the real task through the agent endpoint.
//! Each job holds a [`ProtectionGuard`](ecs_task_protection::protection::ProtectionGuard): the first
//! job of a busy period makes one protect call, the next ones find the task protected, and the
//! manager releases protection once the last guard is dropped (after its hold-over).

use std::sync::Arc;
use std::time::Duration;

use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::protection::{
    local::LocalBackend, ProtectionBackend, ProtectionEvent, ProtectionManager, Settings,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let backend: Arc<dyn ProtectionBackend> = match std::env::var("ECS_AGENT_URI") {
        Ok(uri) => Arc::new(AgentBackend::new(&uri, Duration::from_secs(5))?),
        Err(_) => Arc::new(LocalBackend::new()),
    };
    // No hold-over, so that the release shows at once in this short demo.
    let settings = Settings::default().with_maintain_percent(0);
    let manager = ProtectionManager::start(backend, settings)?;
    let mut events = manager.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                ProtectionEvent::Protected { .. } => println!("event: protected"),
                ProtectionEvent::Unprotected => println!("event: unprotected"),
                ProtectionEvent::Rejected { error, .. } => println!("event: ECS said no: {error}"),
                _ => {}
            }
        }
    });

    for job in 1..=3 {
        // Protection is wanted from here until `_guard` is dropped at the end of the iteration.
        let _guard = manager.guard();
        // Optionally wait (briefly) until ECS confirms, so the work never runs unprotected.
        let _ = tokio::time::timeout(Duration::from_secs(2), manager.protected()).await;
        println!(
            "job {job}: working, task protected: {:?}",
            manager.status().state
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Idle now: the manager releases protection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("idle, task protected: {:?}", manager.status().state);
    manager.shutdown().await?;
    Ok(())
}
