//! `JOB_COMMAND` and `queue-consumer run -- CMD ARGS…`: a process per message, for any language.
//!
//! No shell is involved (the image has none): the program is started directly with its
//! arguments. The message body goes on its stdin, and its environment is the worker's plus
//! `JOB_MESSAGE_ID`, `JOB_RECEIVE_COUNT` and, on a FIFO queue, `JOB_GROUP_ID`. Exit status 0 is
//! [`Outcome::Done`]; anything else is [`Outcome::Failed`] (retried with back-off). Its stdout and
//! stderr are logged line by line with the message ID. When the job is cancelled (shutdown, drain
//! deadline, job timeout) the child's process group gets SIGTERM, then SIGKILL `kill_after` later.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ecs_task_protection::worker::{CancelReason, Handler, Job, Outcome};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The most of one output line that is logged; the rest of the line is counted and dropped, so a
/// child that prints a 100 MB line costs this much memory, not 100 MB.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// How long the output of a finished child is still read: a process it left running in the
/// background can keep its stdout open for ever, and the job must not wait for that.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// A program and its arguments, as `JOB_COMMAND` or `queue-consumer run -- CMD ARGS…` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCommand {
    program: String,
    args: Vec<String>,
}

/// Why a `JOB_COMMAND` value is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobCommandError {
    /// It starts with `[` but is not a JSON array of strings.
    #[error("not a JSON array of strings ({0}); write it as [\"python3\", \"job.py\"]")]
    Json(String),
    /// No program: an empty array, or a blank program name.
    #[error("no program to run (an empty list, or a blank program name)")]
    NoProgram,
    /// The space-separated form has a quote or a backslash, which it would pass on literally.
    #[error("the space-separated form has no quoting and would pass {0} on as is; use the JSON array form, e.g. [\"python3\", \"job.py\", \"two words\"]")]
    Quoted(char),
    /// A NUL character, which no program name or argument can hold.
    #[error("a program name or argument contains a NUL character")]
    Nul,
}

impl JobCommand {
    /// Reads `JOB_COMMAND`: a JSON array of strings (`["python3", "-u", "job.py"]`: any argument,
    /// spaces and quotes included), or words separated by whitespace (`python3 -u job.py`) with
    /// no quoting of any kind (a quote or a backslash there is refused, since no shell would
    /// remove it). Leading and trailing whitespace is ignored.
    ///
    /// # Errors
    ///
    /// A malformed array, an empty one, a blank program, quoting in the plain form, a NUL.
    pub fn parse(value: &str) -> Result<Self, JobCommandError> {
        let value = value.trim();
        let words = if value.starts_with('[') {
            serde_json::from_str::<Vec<String>>(value)
                .map_err(|e| JobCommandError::Json(e.to_string()))?
        } else {
            if let Some(c) = value.chars().find(|c| matches!(c, '"' | '\'' | '\\')) {
                return Err(JobCommandError::Quoted(c));
            }
            value.split_whitespace().map(str::to_string).collect()
        };
        Self::from_words(words)
    }

    /// The command from its words as given (the program first), e.g. `queue-consumer run --
    /// python3 job.py`'s.
    ///
    /// # Errors
    ///
    /// No words, a blank program, a NUL.
    pub fn from_words(words: Vec<String>) -> Result<Self, JobCommandError> {
        let mut words = words.into_iter();
        let program = words.next().ok_or(JobCommandError::NoProgram)?;
        if program.trim().is_empty() {
            return Err(JobCommandError::NoProgram);
        }
        let args: Vec<String> = words.collect();
        if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(JobCommandError::Nul);
        }
        Ok(Self { program, args })
    }

    /// The program: a path, or a name looked up in `PATH`.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Where the program is, checked as the worker would start it: a name without a `/` is looked
    /// up in `PATH`, anything else is a path (relative to the working directory); either must be
    /// an executable file. Worth calling at start-up: a program that cannot start fails every job,
    /// and each message then ends in the dead-letter queue.
    ///
    /// # Errors
    ///
    /// Not found, or not executable, in words that say which.
    pub fn find_program(&self) -> Result<PathBuf, String> {
        let program = Path::new(&self.program);
        if self.program.contains('/') {
            return match executable(program) {
                Ok(()) => Ok(program.to_path_buf()),
                Err(why) => Err(format!("{}: {why}", self.program)),
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut seen = None;
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(program);
            match executable(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(why) if candidate.exists() => {
                    seen = Some(format!("{}: {why}", candidate.display()))
                }
                Err(_) => {}
            }
        }
        Err(seen.unwrap_or_else(|| {
            format!(
                "{} is not on PATH ({}); no shell is involved: give its path, or a program on PATH",
                self.program,
                path.to_string_lossy()
            )
        }))
    }
}

/// Whether `path` is a file this process may execute.
fn executable(path: &Path) -> Result<(), &'static str> {
    let metadata = std::fs::metadata(path).map_err(|_| "not found")?;
    if !metadata.is_file() {
        return Err("not a file");
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| "not a path")?;
    // SAFETY: access only reads the NUL-terminated path.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        return Err("not executable (permission denied)");
    }
    Ok(())
}

impl fmt::Display for JobCommand {
    /// The JSON array form, which shows every argument's bounds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect();
        match serde_json::to_string(&words) {
            Ok(json) => f.write_str(&json),
            Err(_) => write!(f, "{words:?}"),
        }
    }
}

/// Runs a process per job: see the [module](self).
#[derive(Debug)]
pub struct CommandHandler {
    command: JobCommand,
    kill_after: Duration,
    /// Whether the last start failed: a program that cannot start is logged once per streak.
    start_failed: AtomicBool,
}

impl CommandHandler {
    /// A handler that runs `command` for each job; a cancelled job's child is killed `kill_after`
    /// after its SIGTERM (the worker's `SHUTDOWN_TIMEOUT_SECS`).
    pub fn new(command: JobCommand, kill_after: Duration) -> Self {
        Self {
            command,
            kill_after,
            start_failed: AtomicBool::new(false),
        }
    }

    /// Starts the child for `job`: its own process group, stdin, stdout and stderr piped, the
    /// worker's environment plus the job's variables.
    fn spawn(&self, job: &Job) -> io::Result<Child> {
        let mut command = Command::new(&self.command.program);
        command
            .args(&self.command.args)
            .env("JOB_MESSAGE_ID", job.message_id())
            .env("JOB_RECEIVE_COUNT", job.receive_count().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that SIGTERM reaches what it started too, and a Ctrl-C meant for
            // the worker does not reach it before the worker decides.
            .process_group(0)
            .kill_on_drop(true);
        match job.group_id() {
            Some(group) => command.env("JOB_GROUP_ID", group),
            // Not the worker's own, if it has one: only a FIFO message's group is the job's.
            None => command.env_remove("JOB_GROUP_ID"),
        };
        command.spawn()
    }

    /// Says why the program could not start, logging it once per streak of failed starts.
    fn start_failure(&self, id: &str, e: &io::Error) -> Outcome {
        let why = match e.kind() {
            io::ErrorKind::NotFound => {
                "not found (give a path, or a program on PATH; no shell is involved, and a script's #! interpreter must exist too)".to_string()
            }
            io::ErrorKind::PermissionDenied => "not executable (permission denied)".to_string(),
            _ => e.to_string(),
        };
        let reason = format!("cannot start {}: {why}", self.command.program);
        if self.start_failed.swap(true, Ordering::Relaxed) {
            tracing::debug!("{id} - {reason}");
        } else {
            tracing::error!(
                "{id} - {reason}. Every job fails until it can start (logged once until then)"
            );
        }
        Outcome::Failed(reason)
    }
}

#[async_trait]
impl Handler for CommandHandler {
    async fn handle(&self, job: Job) -> Outcome {
        let id: Arc<str> = Arc::from(job.message_id());
        let mut child = match self.spawn(&job) {
            Ok(child) => {
                if self.start_failed.swap(false, Ordering::Relaxed) {
                    tracing::info!("{id} - {} starts again", self.command.program);
                }
                Running(child)
            }
            Err(e) => return self.start_failure(&id, &e),
        };
        tracing::debug!(
            "{id} - Started {} (pid {})",
            self.command,
            child.0.id().unwrap_or(0)
        );
        let stdin = child.0.stdin.take().map(|mut stdin| {
            let body = job.body().to_owned();
            tokio::spawn(async move {
                // A child that does not read its stdin (or exits first) is fine: EPIPE is
                // ignored, and closing stdin tells one that reads it that the body is all there.
                let _ = stdin.write_all(body.as_bytes()).await;
                let _ = stdin.shutdown().await;
            })
        });
        let output = [
            child
                .0
                .stdout
                .take()
                .map(|out| tokio::spawn(log_lines(id.clone(), Stream::Stdout, out))),
            child
                .0
                .stderr
                .take()
                .map(|err| tokio::spawn(log_lines(id.clone(), Stream::Stderr, err))),
        ];
        // At the worker's SIGTERM the child gets SIGTERM too and may finish; once the shutdown
        // timeout has passed (the job is cancelled), it is killed.
        let mut told_to_stop = false;
        let outcome = loop {
            tokio::select! {
                status = child.0.wait() => break match status {
                    Ok(status) => exit_outcome(status),
                    Err(e) => Outcome::Failed(format!("could not wait for {}: {e}", self.command.program)),
                },
                _ = job.stopping(), if !told_to_stop => {
                    told_to_stop = true;
                    tracing::info!("{id} - Worker stopping: SIGTERM to the job's process group");
                    child.signal_group(libc::SIGTERM);
                }
                reason = job.cancelled() => {
                    let kill_after = if told_to_stop { Duration::ZERO } else { self.kill_after };
                    break Outcome::Failed(child.stop(reason, kill_after).await);
                }
            }
        };
        if let Some(stdin) = stdin {
            stdin.abort();
        }
        for reader in output.into_iter().flatten() {
            finish_output(reader).await;
        }
        outcome
    }
}

/// The child, until it has been waited for: dropped early (the job's future dropped), it takes
/// its whole process group down with it (`kill_on_drop` alone would only kill the child).
struct Running(Child);

impl Running {
    /// Stops a cancelled job's child: SIGTERM to its group, SIGKILL `kill_after` later if it has
    /// not exited. Says how it ended.
    async fn stop(&mut self, reason: CancelReason, kill_after: Duration) -> String {
        let why = super::cancel_words(reason);
        self.signal_group(libc::SIGTERM);
        match tokio::time::timeout(kill_after, self.0.wait()).await {
            Ok(Ok(status)) => format!("{why}: stopped with SIGTERM ({})", describe(status)),
            Ok(Err(e)) => format!("{why}: stopped with SIGTERM (could not wait for it: {e})"),
            Err(_) => {
                self.signal_group(libc::SIGKILL);
                let _ = self.0.wait().await;
                format!(
                    "{why}: killed with SIGKILL, still running {} s after SIGTERM",
                    kill_after.as_secs_f64()
                )
            }
        }
    }

    /// Sends `signal` to the child's process group, if the child has not been waited for yet (its
    /// process ID, the group's ID, is still its own until then: never someone else's).
    fn signal_group(&self, signal: libc::c_int) {
        let Some(pid) = self.0.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
            return;
        };
        // SAFETY: killpg only sends a signal; the group is the child's own (process_group(0)).
        let result = unsafe { libc::killpg(pid, signal) };
        if result != 0 {
            tracing::debug!(
                "Could not signal process group {pid}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
    }
}

/// Exit status 0 is done; anything else failed.
fn exit_outcome(status: ExitStatus) -> Outcome {
    if status.success() {
        Outcome::Done
    } else {
        Outcome::Failed(describe(status))
    }
}

/// An exit status in words: `exited with status 3`, `killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGHUP => " (SIGHUP)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGPIPE => " (SIGPIPE)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        (None, None) => format!("ended: {status}"),
    }
}

/// Waits for an output reader to log what the child wrote, for [`OUTPUT_GRACE`] at most.
async fn finish_output(mut reader: JoinHandle<()>) {
    if tokio::time::timeout(OUTPUT_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// Which of the child's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Logs what the child writes to one of its outputs, a line at a time: `<id> - stdout: <line>` at
/// info, `<id> - stderr: <line>` at warn.
async fn log_lines(id: Arc<str>, stream: Stream, output: impl AsyncRead + Unpin) {
    let mut output = BufReader::new(output);
    let mut line = LineBuffer::default();
    loop {
        let chunk = match output.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::debug!("{id} - Stopped reading the job's {stream:?}: {e}");
                break;
            }
        };
        if chunk.is_empty() {
            if let Some(text) = line.finish() {
                log_line(&id, stream, &text);
            }
            break;
        }
        let (used, done) = line.feed(chunk);
        output.consume(used);
        if let Some(text) = done {
            log_line(&id, stream, &text);
        }
    }
}

fn log_line(id: &str, stream: Stream, text: &str) {
    match stream {
        Stream::Stdout => tracing::info!("{id} - stdout: {text}"),
        Stream::Stderr => tracing::warn!("{id} - stderr: {text}"),
    }
}

/// One line of output being gathered, of at most [`MAX_LINE_BYTES`]: what comes beyond that is
/// counted, not kept.
#[derive(Debug, Default)]
struct LineBuffer {
    kept: Vec<u8>,
    dropped: usize,
}

impl LineBuffer {
    /// Takes bytes up to and including the first newline of `chunk`: how many it took, and the
    /// line when it ended.
    fn feed(&mut self, chunk: &[u8]) -> (usize, Option<String>) {
        let (part, used, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => (&chunk[..end], end + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(self.kept.len());
        let keep = part.len().min(room);
        self.kept.extend_from_slice(&part[..keep]);
        self.dropped += part.len() - keep;
        (used, ended.then(|| self.take()))
    }

    /// The last line, when the output ended without a newline after it.
    fn finish(&mut self) -> Option<String> {
        (!self.kept.is_empty() || self.dropped > 0).then(|| self.take())
    }

    /// The line gathered so far as text (invalid UTF-8 replaced, a trailing CR removed, what was
    /// dropped counted), leaving the buffer empty.
    fn take(&mut self) -> String {
        if self.dropped == 0 && self.kept.last() == Some(&b'\r') {
            self.kept.pop();
        }
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!("… ({} more bytes not logged)", self.dropped));
        }
        self.kept.clear();
        self.dropped = 0;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &JobCommand) -> Vec<&str> {
        std::iter::once(c.program())
            .chain(c.args().iter().map(String::as_str))
            .collect()
    }

    #[test]
    fn job_command_is_a_json_array_or_words_without_quoting() {
        let c = JobCommand::parse(r#" ["python3", "-u", "my job.py", "it's"] "#).unwrap();
        assert_eq!(words(&c), ["python3", "-u", "my job.py", "it's"]);
        let c = JobCommand::parse("  /app/job  --fast\t-v ").unwrap();
        assert_eq!(words(&c), ["/app/job", "--fast", "-v"]);
        assert_eq!(
            c.to_string(),
            r#"["/app/job","--fast","-v"]"#,
            "shown as JSON"
        );
    }

    #[test]
    fn a_malformed_job_command_says_what_is_wrong() {
        for (value, error) in [
            ("[]", JobCommandError::NoProgram),
            (r#"["", "x"]"#, JobCommandError::NoProgram),
            ("   ", JobCommandError::NoProgram),
            ("python3 'my job.py'", JobCommandError::Quoted('\'')),
            (r#"python3 "job.py""#, JobCommandError::Quoted('"')),
            (r"python3 my\ job.py", JobCommandError::Quoted('\\')),
            ("[\"a\\u0000b\"]", JobCommandError::Nul),
        ] {
            assert_eq!(JobCommand::parse(value), Err(error), "{value}");
        }
        for value in [
            r#"["python3", 3]"#,
            "[python3]",
            r#"["python3""#,
            r#"{"a":1}"#,
        ] {
            // An object does not start with '[': it is one word with a quote in it.
            assert!(JobCommand::parse(value).is_err(), "{value}");
        }
        assert!(matches!(
            JobCommand::parse(r#"["python3", 3]"#),
            Err(JobCommandError::Json(_))
        ));
    }

    #[test]
    fn the_program_is_found_on_path_or_as_a_path_and_must_be_executable() {
        let sh = JobCommand::parse("sh -c true")
            .unwrap()
            .find_program()
            .unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        let e = JobCommand::parse("no-such-program-here x")
            .unwrap()
            .find_program()
            .unwrap_err();
        assert!(
            e.starts_with("no-such-program-here is not on PATH ("),
            "{e}"
        );
        let e = JobCommand::parse("/no/such/job")
            .unwrap()
            .find_program()
            .unwrap_err();
        assert_eq!(e, "/no/such/job: not found");
        let e = JobCommand::parse("/").unwrap().find_program().unwrap_err();
        assert_eq!(e, "/: not a file");
        // A file without the execute bit (this crate's manifest).
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let e = JobCommand::from_words(vec![manifest.into()])
            .unwrap()
            .find_program()
            .unwrap_err();
        // Root too: access(X_OK) wants an execute bit on a file, whoever asks.
        assert!(e.ends_with("not executable (permission denied)"), "{e}");
    }

    #[test]
    fn an_exit_status_in_words() {
        assert_eq!(exit_outcome(ExitStatus::from_raw(0)), Outcome::Done);
        assert_eq!(
            exit_outcome(ExitStatus::from_raw(3 << 8)),
            Outcome::Failed("exited with status 3".into())
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn a_line_is_kept_up_to_its_bound_and_the_rest_counted() {
        let mut line = LineBuffer::default();
        // Up to the newline only: the rest is fed again.
        assert_eq!(line.feed(b"one\r\ntwo"), (5, Some("one".to_string())));
        assert_eq!(line.feed(b"tw"), (2, None));
        assert_eq!(line.feed(b"o\n"), (2, Some("two".to_string())));
        // 100 MB without a newline, in 64 KiB chunks: never more than the bound is held.
        let chunk = vec![b'x'; 64 * 1024];
        let mut total = 0;
        while total < 100_000_000 {
            let (used, done) = line.feed(&chunk);
            assert_eq!((used, done), (chunk.len(), None));
            assert!(line.kept.len() <= MAX_LINE_BYTES);
            assert!(line.kept.capacity() <= 2 * MAX_LINE_BYTES);
            total += used;
        }
        let (_, done) = line.feed(b"y\nz");
        let done = done.unwrap();
        assert!(
            done.starts_with(&"x".repeat(MAX_LINE_BYTES)),
            "kept the start"
        );
        assert!(
            done.ends_with(&format!(
                "… ({} more bytes not logged)",
                total + 1 - MAX_LINE_BYTES
            )),
            "{}",
            &done[MAX_LINE_BYTES..]
        );
        assert_eq!(line.finish(), None, "nothing left over");
        line.feed(b"last, no newline");
        assert_eq!(line.finish().as_deref(), Some("last, no newline"));
    }
}
