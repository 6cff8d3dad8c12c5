//! A captive command (nbdkit's `--run CMD`, nbdkit-captive(1)): once the server listens, CMD runs
//! under /bin/sh with the connection details in its environment; when CMD exits the server shuts
//! down and the process exits with CMD's status (128+N if a signal N killed it, as the shell
//! reports it).
//!
//! The variables are exported, so programs CMD starts see them too: `uri` and `nbd` (the same
//! NBD URI, from `uri`), `exportname`, `port` (empty for a Unix socket), `unixsocket` (empty for
//! TCP), and with TLS on `tls` (1 when offered, 2 when required), `tls_certificates`, `tls_psk`.

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use nbdforge_server::{ShutdownHandle, TlsMode, TlsOptions};

use crate::sockets::Endpoint;
use crate::{Error, Setting};

/// The environment CMD gets.
pub fn environment(
    endpoint: &Endpoint,
    uri: Option<&str>,
    export: &str,
    tls: &TlsOptions,
) -> Vec<(&'static str, Option<String>)> {
    let (port, unixsocket) = match endpoint {
        Endpoint::Tcp { port, .. } => (port.to_string(), String::new()),
        Endpoint::Vsock(port) => (port.to_string(), String::new()),
        Endpoint::Unix(path) => (String::new(), path.display().to_string()),
        Endpoint::Activated => (String::new(), String::new()),
    };
    let tls_on = tls.mode != TlsMode::Off;
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().filter(|_| tls_on).map(|p| p.display().to_string());
    vec![
        ("uri", uri.map(String::from)),
        ("nbd", uri.map(String::from)),
        ("exportname", Some(export.to_string())),
        ("port", Some(port)),
        ("unixsocket", Some(unixsocket)),
        (
            "tls",
            match tls.mode {
                TlsMode::Off => None,
                TlsMode::On => Some("1".into()),
                TlsMode::Require => Some("2".into()),
            },
        ),
        ("tls_certificates", path(&tls.certificates)),
        ("tls_psk", path(&tls.psk_file)),
    ]
}

/// CMD, running; a thread waits for it and stops the server when it exits.
pub struct Captive {
    pid: u32,
    done: Arc<AtomicBool>,
    waiter: JoinHandle<std::io::Result<ExitStatus>>,
}

impl Captive {
    /// Starts `cmd` with `env` (a variable is removed when its value is None); `shutdown` stops the
    /// server when it exits.
    pub fn start(
        cmd: &str,
        env: &[(&'static str, Option<String>)],
        shutdown: ShutdownHandle,
    ) -> Result<Captive, Error> {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(cmd);
        for (k, v) in env {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        let mut child: Child = command.spawn().map_err(|e| Error::new(Setting::Run, format!("/bin/sh: {e}")))?;
        let pid = child.id();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let waiter = std::thread::Builder::new()
            .name("run-command".into())
            .spawn(move || {
                let status = child.wait();
                flag.store(true, Ordering::SeqCst);
                shutdown.shutdown();
                status
            })
            .map_err(|e| Error::new(Setting::Run, e.to_string()))?;
        Ok(Captive { pid, done, waiter })
    }

    /// Waits for CMD and returns the exit status the process should have. If the server stopped
    /// first (a signal, an error), CMD is sent SIGTERM: it has nothing left to talk to. What goes
    /// wrong is printed on stderr after `prefix` (nbdkit's front end says `nbdforge: --run`).
    pub fn finish(self, prefix: &str) -> u8 {
        if !self.done.load(Ordering::SeqCst) {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        }
        match self.waiter.join() {
            Ok(Ok(status)) => exit_code(prefix, status),
            Ok(Err(e)) => {
                eprintln!("{prefix}: waiting for the command: {e}");
                1
            }
            Err(_) => 1,
        }
    }
}

fn exit_code(prefix: &str, status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return code as u8;
    }
    if let Some(sig) = status.signal() {
        eprintln!("{prefix}: the command was killed by signal {sig}");
        return 128u8.wrapping_add(sig as u8);
    }
    1
}
