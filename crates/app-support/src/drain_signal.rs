//! SIGUSR1: an operator's request that a running process drain (stop taking new work, finish what
//! it has, let protection go). The image has no shell, so each binary sends it itself
//! ([`send`], behind its `drain` command), and listens for it from start-up on ([`listen`]).

use std::process::ExitCode;

/// The operator's drain signal, listened for from start-up on.
#[derive(Debug)]
pub struct DrainSignal {
    #[cfg(unix)]
    usr1: Option<tokio::signal::unix::Signal>,
}

/// Starts listening for SIGUSR1. Call it first thing in the runtime, before anything slow: until
/// a handler is installed, SIGUSR1's default action ends the process, and once it is, a signal
/// that arrives before the program is ready is kept and acted on as soon as it is.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn listen() -> DrainSignal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let usr1 = signal(SignalKind::user_defined1())
            .inspect_err(|e| tracing::warn!("Cannot listen for SIGUSR1 (operator drain): {e}"))
            .ok();
        DrainSignal { usr1 }
    }
    #[cfg(not(unix))]
    DrainSignal {}
}

impl DrainSignal {
    /// Waits for the next SIGUSR1; `false` when none can come (it could not be listened for).
    pub async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        if let Some(usr1) = &mut self.usr1 {
            return usr1.recv().await.is_some();
        }
        false
    }
}

/// Sends SIGUSR1 to process `pid` (a binary's `drain --pid N` command), saying what happened:
/// exit code 2 for a process id that is not positive (kill(2) would signal a whole process
/// group), 1 when the process cannot be signalled.
pub fn send(pid: i32) -> ExitCode {
    if pid <= 0 {
        // Settings already refuse these; kill(2) would signal a whole process group.
        eprintln!("--pid must be a positive process id, got {pid}");
        return ExitCode::from(2);
    }
    #[cfg(unix)]
    {
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, libc::SIGUSR1) };
        if rc == 0 {
            println!("Asked process {pid} to drain (SIGUSR1)");
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "cannot signal process {pid}: {}",
                std::io::Error::last_os_error()
            );
            ExitCode::FAILURE
        }
    }
    #[cfg(not(unix))]
    {
        eprintln!("`drain` needs a Unix system (it sends SIGUSR1 to process {pid})");
        ExitCode::FAILURE
    }
}
