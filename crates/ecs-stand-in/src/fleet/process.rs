//! A fleet's task processes: started with the environment ECS gives a task, their output kept
//! line by line (prefixed with the task ID), stopped with SIGTERM then SIGKILL.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::broadcast;

/// How many output lines a fleet keeps (the oldest go first).
const KEPT_LINES: usize = 20_000;

/// Settings a task process must not inherit from the fleet's own environment: they would name
/// another task, cluster or credentials than the ones the fleet gives it.
const NOT_INHERITED: [&str; 9] = [
    "ECS_CLUSTER",
    "ECS_TASK_ARN",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// Every line the fleet's tasks (and the fleet itself) printed, in arrival order, each prefixed
/// with its source (`[0a1b2c3d] …`, `[ecs] …`).
#[derive(Debug, Clone)]
pub(crate) struct Output {
    lines: Arc<Mutex<VecDeque<String>>>,
    live: broadcast::Sender<String>,
}

impl Output {
    pub fn new() -> Self {
        Self {
            lines: Arc::new(Mutex::new(VecDeque::new())),
            live: broadcast::channel(4096).0,
        }
    }

    /// Adds a line.
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line.clone());
        // Sent under the lock, so that a subscriber gets each line exactly once.
        let _ = self.live.send(line);
    }

    /// Every line kept.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Every line kept, and a receiver of the lines that follow them.
    pub fn subscribe(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        (lines.iter().cloned().collect(), self.live.subscribe())
    }

    /// Copies `stream` into the output line by line, each prefixed with `[tag] `.
    fn capture(&self, stream: impl AsyncRead + Unpin + Send + 'static, tag: String) {
        let output = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                output.push(format!("[{tag}] {line}"));
            }
        });
    }
}

/// The short form of a task ID the output and the table use (its first 8 digits).
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A free TCP port on 127.0.0.1 (free a moment ago).
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// What one task process is started with.
pub(crate) struct Launch<'a> {
    /// The executable.
    pub program: &'a std::path::Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Its environment, on top of the fleet's own minus [`NOT_INHERITED`].
    pub env: Vec<(String, String)>,
}

/// One running task process.
pub(crate) struct TaskProcess {
    child: Child,
    pid: Option<u32>,
    exited: Option<ExitStatus>,
}

impl TaskProcess {
    /// Starts `launch` for task `id`, its output going to `output` prefixed with the task's short
    /// ID. It runs in a process group of its own, so that a Ctrl-C meant for the fleet is not
    /// delivered to it as well (the fleet stops it with SIGTERM), and it is killed if the fleet
    /// is dropped.
    pub fn spawn(id: &str, launch: Launch<'_>, output: &Output) -> std::io::Result<Self> {
        let mut command = Command::new(launch.program);
        command
            .args(launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in NOT_INHERITED {
            command.env_remove(name);
        }
        command.envs(launch.env);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn()?;
        let tag = short_id(id).to_string();
        if let Some(stdout) = child.stdout.take() {
            output.capture(stdout, tag.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            output.capture(stderr, tag);
        }
        Ok(Self {
            pid: child.id(),
            child,
            exited: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends SIGTERM (what ECS sends first when it stops a task).
    pub fn terminate(&self) -> std::io::Result<()> {
        match self.pid {
            Some(pid) => send_signal(pid, Signal::Term),
            None => Ok(()),
        }
    }

    /// Sends SIGKILL (what ECS sends once the stop timeout has passed).
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.start_kill()
    }
}

/// The signals the fleet sends.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
}

#[cfg(unix)]
fn send_signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let signal = match signal {
        Signal::Term => libc::SIGTERM,
    };
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::other(format!("process id {pid} out of range")))?;
    if pid <= 0 {
        return Err(std::io::Error::other("not a process id"));
    }
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions; the pid is a
    // positive id of our own child, so no process group is signalled.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn send_signal(_pid: u32, _signal: Signal) -> std::io::Result<()> {
    Err(std::io::Error::other("SIGTERM needs a Unix system"))
}

/// The loopback address of a task's port.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
