//! The target: a spawned server with an in-process stand-in agent, or a running one.

use std::net::SocketAddr;
use std::time::Duration;

use ecs_stand_in::{Fault, StandInAgent};
use serde_json::Value;
use tokio::time::{sleep, timeout, Instant};

use crate::{Common, Mode};

/// One recorded agent call, as the stand-in reports it.
#[derive(Debug, Clone)]
pub(crate) struct AgentCall {
    method: String,
    pub(crate) enabled: Option<bool>,
    ok: bool,
}

impl AgentCall {
    fn is_put(&self) -> bool {
        self.method == "PUT"
    }
}

pub(crate) struct Target {
    pub(crate) ws_url: String,
    pub(crate) addr: SocketAddr,
    http: reqwest::Client,
    agent_url: Option<String>,
    pub(crate) agent: Option<StandInAgent>,
    server: Option<tokio::process::Child>,
    pub(crate) pid: Option<u32>,
}

impl Target {
    pub(crate) async fn start(common: &Common, mode: &Mode) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        if let Some(url) = &common.url {
            let addr = loopback_addr(url)?;
            return Ok(Self {
                ws_url: url.clone(),
                addr,
                http,
                agent_url: common.agent.clone(),
                agent: None,
                server: None,
                pid: common.server_pid,
            });
        }
        let agent = start_agent(common).await?;
        let port = free_port()?;
        let mut env: Vec<(String, String)> = vec![
            ("PORT".into(), port.to_string()),
            ("BIND_ADDRESS".into(), "127.0.0.1".into()),
            ("ECS_AGENT_URI".into(), agent.uri()),
            ("PROTECTION_BACKEND".into(), "agent".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        match mode {
            // The release must not be held over: the storm counts it.
            Mode::Storm { .. } => env.push(("PROTECTION_MAINTAIN_PERCENT".into(), "0".into())),
            // A 1-minute duration with the default 10 % maintain: a 6 s hold-over.
            Mode::Churn { .. } => {
                env.push(("PROTECTION_DURATION_MINUTES".into(), "1".into()));
                env.push(("PROTECTION_MAINTAIN_PERCENT".into(), "10".into()));
            }
            _ => {}
        }
        apply_server_env(&mut env, &common.server_env)?;
        // The server's log lines go to this tool's stderr, keeping stdout for the figures.
        let server = tokio::process::Command::new(&common.server_bin);
        let child = spawn_logging_to_stderr(server, &env, "websocket")?;
        let pid = child.id();
        if let (Some(path), Some(pid)) = (&common.server_pid_file, pid) {
            let _ = std::fs::write(path, format!("{pid}\n"));
        }
        let ws_url = format!("ws://127.0.0.1:{port}/ws");
        let addr = loopback_addr(&ws_url)?;
        let target = Self {
            ws_url,
            addr,
            http,
            agent_url: None,
            agent: Some(agent),
            server: Some(child),
            pid,
        };
        // Ready when /healthz answers (at most 15 s).
        let ready_by = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = target.http.get(target.http_url("/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > ready_by {
                return Err("the server did not answer /healthz within 15 s".into());
            }
            sleep(Duration::from_millis(50)).await;
        }
        println!(
            "server pid {} on {} (agent stand-in {}), env {:?}",
            pid.unwrap_or(0),
            target.ws_url,
            target.agent.as_ref().map(|a| a.uri()).unwrap_or_default(),
            env.iter()
                .filter(|(k, _)| k != "ECS_AGENT_URI")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        );
        Ok(target)
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the spawned server: SIGTERM, then SIGKILL after 20 s. Returns how it ended.
    pub(crate) async fn stop(&mut self) -> Option<String> {
        let child = self.server.take()?;
        Some(stop_child(child, Duration::from_secs(20)).await.0)
    }

    /// The `/status` document.
    pub(crate) async fn status(&self) -> Result<Value, String> {
        let r = self
            .http
            .get(self.http_url("/status"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json::<Value>().await.map_err(|e| e.to_string())
    }

    pub(crate) async fn connections(&self) -> Option<u64> {
        self.status()
            .await
            .ok()
            .and_then(|s| s["connections"].as_u64())
    }

    /// Waits (polling /status every 50 ms, at most `limit`) until `cond` holds; the time it took.
    pub(crate) async fn wait_status(
        &self,
        limit: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(s) = self.status().await {
                if cond(&s) {
                    return Some(start.elapsed());
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The agent's calls so far, if they can be known.
    async fn calls(&self) -> Option<Vec<AgentCall>> {
        if let Some(agent) = &self.agent {
            return Some(
                agent
                    .calls()
                    .into_iter()
                    .map(|c| AgentCall {
                        method: c.method,
                        enabled: c.enabled,
                        ok: c.ok,
                    })
                    .collect(),
            );
        }
        let url = self.agent_url.as_ref()?;
        let list: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        Some(
            list.as_array()?
                .iter()
                .map(|c| AgentCall {
                    method: c["method"].as_str().unwrap_or_default().to_string(),
                    enabled: c["enabled"].as_bool(),
                    ok: c["ok"].as_bool().unwrap_or(false),
                })
                .collect(),
        )
    }

    pub(crate) async fn puts(&self) -> Option<Vec<AgentCall>> {
        Some(
            self.calls()
                .await?
                .into_iter()
                .filter(AgentCall::is_put)
                .collect(),
        )
    }

    /// The PUT calls after the first `before` (none if the calls cannot be read).
    pub(crate) async fn puts_since(&self, before: usize) -> Vec<AgentCall> {
        self.puts()
            .await
            .unwrap_or_default()
            .into_iter()
            .skip(before)
            .collect()
    }

    /// Whether the agent holds protection now (stand-in in-process: its own state; remote: the
    /// last successful PUT).
    pub(crate) async fn agent_protected(&self) -> Option<bool> {
        if let Some(agent) = &self.agent {
            return Some(agent.is_protected());
        }
        let puts = self.puts().await?;
        Some(
            puts.iter()
                .rev()
                .find(|c| c.ok)
                .and_then(|c| c.enabled)
                .unwrap_or(false),
        )
    }
}

fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("the URL must start with ws://")?;
    let host = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| format!("{host}: {e} (give an IP:PORT)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: this tool only loads loopback"
        ));
    }
    Ok(addr)
}

/// Stops a child process: SIGTERM, then SIGKILL after `grace`. Returns how it ended and how long
/// that took.
pub(crate) async fn stop_child(
    mut child: tokio::process::Child,
    grace: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let how = match timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            let _ = child.start_kill();
            let _ = timeout(Duration::from_secs(5), child.wait()).await;
            format!("killed after {} s", grace.as_secs())
        }
    };
    (how, start.elapsed())
}

/// Applies the `--server-env KEY=VALUE` settings over `env` (each replaces a default of the same
/// key).
pub(crate) fn apply_server_env(
    env: &mut Vec<(String, String)>,
    overrides: &[String],
) -> Result<(), String> {
    for kv in overrides {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--server-env {kv}: expected KEY=VALUE"))?;
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    Ok(())
}

pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts the in-process stand-in agent, slowed by `--agent-delay-ms` when given.
pub(crate) async fn start_agent(common: &Common) -> Result<StandInAgent, String> {
    let agent = StandInAgent::start()
        .await
        .map_err(|e| format!("stand-in agent: {e}"))?;
    if common.agent_delay_ms > 0 {
        agent.set_fault(Fault::Slow(Duration::from_millis(common.agent_delay_ms)));
    }
    Ok(agent)
}

/// Spawns `command` (a release binary of this workspace, `bin`) with `env` added, its stdin
/// closed and its log lines on this tool's stderr (stdout is kept for the figures); it is killed
/// if dropped.
pub(crate) fn spawn_logging_to_stderr(
    mut command: tokio::process::Command,
    env: &[(String, String)],
    bin: &str,
) -> Result<tokio::process::Child, String> {
    let stdout_to_stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map_err(|e| format!("stderr: {e}"))?;
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stdout_to_stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot run {program} (build it with `cargo build --release --bin {bin}`): {e}")
        })
}
