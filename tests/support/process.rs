//! Child processes for the tests: output captured line by line (to wait for a log line, and for
//! diagnostics), signals sent with the `kill` command, and a guard that kills whatever is still
//! running when dropped (on success, on an error, and on a panic alike).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything a child printed, stdout and stderr interleaved as the lines arrived.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    fn capture(&self, stream: impl Read + Send + 'static, tag: &'static str) {
        let lines = Arc::clone(&self.0);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(format!("[{tag}] {line}"));
            }
        });
    }

    /// Every line so far, without its `[stdout]`/`[stderr]` tag.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                l.split_once("] ")
                    .map_or(l.as_str(), |(_, rest)| rest)
                    .to_string()
            })
            .collect()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (on real time) until at least `n` lines contain `needle`, at most `limit`; panics
    /// with the output's tail otherwise.
    pub async fn wait_for(&self, needle: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.count(needle) < n {
            assert!(
                start.elapsed() < limit,
                "fewer than {n} lines with {needle:?} within {limit:?}; output:\n{}",
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `n` lines, one per line.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap();
        let skip = lines.len().saturating_sub(n);
        let mut text = String::new();
        if skip > 0 {
            text.push_str(&format!("  ... ({skip} earlier lines)\n"));
        }
        for line in &lines[skip..] {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        if lines.is_empty() {
            text.push_str("  (no output)\n");
        }
        text
    }
}

/// A child process that is killed when dropped, unless it has exited already.
pub struct Proc {
    pub name: String,
    child: Child,
    pub output: Output,
    /// Started as the leader of its own process group: the whole group (a browser started by the
    /// driver included) is killed on drop.
    own_group: bool,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `command` with its output captured; `own_group` puts it in a new process group.
    pub fn spawn(name: &str, mut command: Command, own_group: bool) -> Result<Self, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let output = Output::default();
        output.capture(child.stdout.take().expect("piped stdout"), "stdout");
        output.capture(child.stderr.take().expect("piped stderr"), "stderr");
        Ok(Self {
            name: name.to_owned(),
            child,
            output,
            own_group,
            exited: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `signal` (such as "TERM") to the process.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        send_signal(signal, &self.pid().to_string()).map_err(|e| {
            format!(
                "cannot send SIG{signal} to {} (pid {}): {e}",
                self.name,
                self.pid()
            )
        })
    }

    /// Waits (without blocking the runtime) until the process exits, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{} (pid {}) still running {limit:?} after being told to stop",
                    self.name,
                    self.pid()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let running = self.exited().is_none();
        if self.own_group {
            // The group outlives its leader when the leader's children (the browser) are alive.
            let _ = send_signal("KILL", &format!("-{}", self.pid()));
        } else if running {
            let _ = self.child.kill();
        }
        if running {
            let _ = self.child.wait();
        }
    }
}

/// `kill -SIGNAL -- TARGET`; falls back to the shell's built-in `kill` where procps is missing.
fn send_signal(signal: &str, target: &str) -> Result<(), String> {
    let flag = format!("-{signal}");
    let status = match Command::new("kill")
        .args([flag.as_str(), "--", target])
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Command::new("sh")
            // dash's `kill` takes no `--` but reads `-SIGNAL -PGID` right.
            .args(["-c", "kill \"$1\" \"$2\"", "sh", flag.as_str(), target])
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill exited with {status}"))
    }
}

/// A fresh directory under the system's temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `queue-consumer` binary, for the tests that run it beside the server. It belongs to
/// another package of the workspace, so Cargo gives this one no `CARGO_BIN_EXE_` for it: it is
/// found next to this package's binaries, where `cargo test` at the workspace root builds it.
pub fn queue_consumer_bin() -> String {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|test| Some(test.parent()?.parent()?.join("queue-consumer")))
        .expect("the test binary's directory");
    assert!(
        bin.exists(),
        "{} is not built: run the tests from the workspace root (`cargo test`), or `cargo build \
         -p queue-consumer` first",
        bin.display()
    );
    bin.to_string_lossy().into_owned()
}
