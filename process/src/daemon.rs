//! Going into the background, as nbdkit does without `-f` and qemu-nbd with `--fork`: the command
//! the user typed returns only once the server is ready, with status 0, or with status 1 and the
//! error on stderr if it could not start.
//!
//! The fork happens first, before the stack is configured or anything is bound, so that no thread
//! can exist yet (plugins may start threads in `get_ready`, the server starts them to serve). The
//! child does all the work and tells the parent through a pipe when it is listening; start-up
//! errors reach the user because the child writes them to the stderr both still share. The
//! parent waits: one byte on the pipe means ready (exit 0); end of file means the child died
//! first, and the parent exits with its status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, fork, pipe2, setsid, ForkResult};

use crate::Error;

/// The child's end of the readiness pipe.
pub struct Ready {
    pipe: File,
}

/// Forks. Returns in the child only; the parent waits for the child to be ready and exits.
pub fn fork_into_background(prog: &str) -> Result<Ready, Error> {
    if let Some(n) = thread_count().filter(|&n| n > 1) {
        // Only the forking thread survives in the child; locks other threads held stay locked.
        return Err(Error::plain(format!("internal error: {n} threads running before going into the background")));
    }
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::plain(format!("pipe: {e}")))?;
    // SAFETY: called from main before any thread is started (the stack is not configured yet,
    // the server does not exist), so the child is a complete copy of a single-threaded process.
    match unsafe { fork() }.map_err(|e| Error::plain(format!("fork: {e}")))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let mut pipe = File::from(read_end);
            if matches!(pipe.read(&mut byte), Ok(1)) {
                std::process::exit(0);
            }
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => {
                    eprintln!("{prog}: the server exited before it was ready");
                    1
                }
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    eprintln!("{prog}: the server was killed by signal {} before it was ready", sig as i32);
                    1
                }
                _ => 1,
            };
            std::process::exit(code);
        }
        ForkResult::Child => {
            drop(read_end);
            // A session of its own: no controlling terminal, so the shell's job control and
            // terminal signals (^C) no longer reach the server.
            let _ = setsid();
            Ok(Ready { pipe: File::from(write_end) })
        }
    }
}

/// The number of threads of this process, from /proc/self/status.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

impl Ready {
    /// Detaches from the terminal (stdin and stdout to /dev/null, stderr too unless
    /// `keep_stderr`) and lets the parent exit.
    pub fn notify(mut self, keep_stderr: bool) -> Result<(), Error> {
        let _ = std::io::stdout().flush();
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Error::plain(format!("/dev/null: {e}")))?;
        let null: OwnedFd = null.into();
        let mut targets = vec![0, 1];
        if !keep_stderr {
            targets.push(2);
        }
        for fd in targets {
            dup2(null.as_raw_fd(), fd).map_err(|e| Error::plain(format!("dup2: {e}")))?;
        }
        self.pipe.write_all(b"R").map_err(|e| Error::plain(format!("telling the parent process we are ready: {e}")))
    }
}
