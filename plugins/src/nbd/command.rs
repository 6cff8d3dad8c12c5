//! `command=`: runs the server below as a child process, handed a listening Unix socket in a
//! private directory by systemd socket activation (`LISTEN_FDS=1`, the socket as descriptor 3),
//! which qemu-nbd and nbdkit both understand. The child is stopped when the plugin is cleaned up.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nbdforge_api::{Error, Result};

/// A running server and the socket it listens on.
pub(crate) struct Captive {
    child: Child,
    dir: PathBuf,
    pub(crate) socket: PathBuf,
}

/// Moves the listening socket (given as stdin) to descriptor 3 and sets LISTEN_PID to the pid the
/// command will have once `exec` replaces the shell: no code runs between fork and exec.
const ACTIVATE: &str = "exec 3<&0 </dev/null; LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; \
                        unset LISTEN_FDNAMES; exec \"$@\"";

impl Captive {
    /// Starts `argv` with a listening socket.
    pub(crate) fn start(argv: &[String]) -> Result<Captive> {
        let fail = |what: String| Error::invalid(format!("command={}: {what}", argv[0]));
        let dir = std::env::temp_dir().join(format!("nbdforge-nbd-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let socket = dir.join("sock");
        let listener = UnixListener::bind(&socket).map_err(|e| fail(format!("{}: {e}", socket.display())))?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(ACTIVATE)
            .arg("nbdforge-nbd")
            .args(argv)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .spawn()
            .map_err(|e| fail(format!("running it: {e}")))?;
        Ok(Captive { child, dir, socket })
    }

    /// Why the server is gone, if it is: `exited with status 1`.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the command {status}")),
            _ => None,
        }
    }

    /// Stops the server and removes its socket.
    pub(crate) fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
