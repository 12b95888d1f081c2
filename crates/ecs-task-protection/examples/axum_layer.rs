//! An axum service whose task stays protected while any request is in flight, through
//! [`ProtectionLayer`](ecs_task_protection::layer::ProtectionLayer).
//!
//! ```sh
//! cargo run --example axum_layer
//! curl -X POST localhost:3001/work    # takes 5 s; meanwhile:
//! curl localhost:3001/protection      # {"state":"protected","wanted":true,...}
//! ```
//!
//! Outside ECS it uses the in-process local backend; inside an ECS task, the agent endpoint.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use ecs_task_protection::ecs::agent::AgentBackend;
use ecs_task_protection::layer::ProtectionLayer;
use ecs_task_protection::protection::{
    local::LocalBackend, ProtectionBackend, ProtectionManager, ProtectionStatus, Settings,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let backend: Arc<dyn ProtectionBackend> = match std::env::var("ECS_AGENT_URI") {
        Ok(uri) => Arc::new(AgentBackend::new(&uri, Duration::from_secs(5))?),
        Err(_) => Arc::new(LocalBackend::new()),
    };
    let manager = ProtectionManager::start(backend, Settings::default())?;

    let status = manager.clone();
    let app = Router::new()
        // Only the routes above the layer hold protection: the work, not the status probe.
        .route(
            "/work",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "done\n"
            }),
        )
        .layer(ProtectionLayer::new(manager.clone()))
        .route(
            "/protection",
            get(move || async move { Json::<ProtectionStatus>(status.status()) }),
        );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Releases protection before the process ends.
    manager.shutdown().await?;
    Ok(())
}
