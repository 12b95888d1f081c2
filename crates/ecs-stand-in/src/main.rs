//! `cargo run -p ecs-stand-in`: starts the stand-in ECS agent endpoint and the stand-in ECS API
//! (with its task metadata endpoint) on loopback, prints the settings that point the server at
//! them, and prints every call they receive until Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use ecs_stand_in::{StandInAgent, StandInEcs};

/// Stand-ins for the ECS agent's task protection endpoint and the ECS API, for local experiments.
#[derive(Parser)]
#[command(name = "ecs-stand-in")]
struct Args {
    /// Port of the agent endpoint stand-in (0: a free one).
    #[arg(long, default_value_t = 0)]
    agent_port: u16,
    /// Port of the ECS API and task metadata stand-in (0: a free one).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let at = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let agent = StandInAgent::bind(at(args.agent_port)).await?;
    let ecs = StandInEcs::bind(at(args.api_port)).await?;
    println!("Stand-in ECS agent endpoint; run the server with:");
    println!("  PROTECTION_BACKEND=agent ECS_AGENT_URI={}", agent.uri());
    println!("Stand-in ECS API and task metadata endpoint; or with:");
    println!(
        "  PROTECTION_BACKEND=api ECS_ENDPOINT_URL={} ECS_CONTAINER_METADATA_URI_V4={} \
         AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test",
        ecs.endpoint_url(),
        ecs.metadata_uri()
    );
    println!(
        "Recorded calls: {}/_calls and {}/_calls",
        agent.uri(),
        ecs.endpoint_url()
    );
    println!("Ctrl-C stops them.");

    let (mut agent_seen, mut ecs_seen) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        print_answered(&agent.calls(), &mut agent_seen, |c| {
            (
                c.status,
                format!(
                    "agent: {} enabled={:?} minutes={:?}",
                    c.method, c.enabled, c.expires_in_minutes
                ),
            )
        });
        print_answered(&ecs.calls(), &mut ecs_seen, |c| {
            (
                c.status,
                format!(
                    "api: {} enabled={:?} minutes={:?}",
                    c.operation, c.protection_enabled, c.expires_in_minutes
                ),
            )
        });
    }
}

/// Prints the calls after the first `seen` that have been answered (in order, stopping at the
/// first still in flight), each as `<line> -> <status>`; `describe` gives a call's status (0 while
/// in flight) and line.
fn print_answered<C>(calls: &[C], seen: &mut usize, describe: impl Fn(&C) -> (u16, String)) {
    for call in &calls[(*seen).min(calls.len())..] {
        let (status, line) = describe(call);
        if status == 0 {
            return;
        }
        println!("{line} -> {status}");
        *seen += 1;
    }
}
