//! placeholder
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nbdforge_api::Backend;

use crate::Listener;

/// How the server behaves, from the command line.
#[derive(Clone)]
pub struct ServerConfig {
    /// `-r`: serve every export read-only.
    pub readonly: bool,
    /// `-t`: worker threads per connection (requests in flight at once).
    pub threads: usize,
    /// `-e`: the export name used for the default export ("" from clients).
    pub export_name: Option<String>,
    /// `-o`: oldstyle handshake.
    pub oldstyle: bool,
    /// `--timeout` / default handshake limit: clients that do not finish negotiating in this time
    /// are dropped.
    pub handshake_timeout: Option<Duration>,
    /// `--tls`: whether STARTTLS is refused, allowed or required.
    pub tls_mode: crate::TlsMode,
    /// Loaded credentials; required unless `tls_mode` is `Off`.
    pub tls: Option<Arc<crate::tls::TlsContext>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { readonly: false, threads: 16, export_name: None, oldstyle: false, handshake_timeout: None, tls_mode: crate::TlsMode::Off, tls: None }
    }
}

/// A server for one backend stack.
pub struct Server {
    _backend: Arc<dyn Backend>,
    _config: ServerConfig,
}

/// Asks a running server to stop: stop accepting, finish requests in flight, return from `serve`.
#[derive(Clone)]
pub struct ShutdownHandle {}

impl ShutdownHandle {
    /// Starts the shutdown. Safe to call from any thread, any number of times.
    pub fn shutdown(&self) {
        todo!()
    }
}

impl Server {
    /// A server for `backend` (see [`crate::Stack::finish`]).
    pub fn new(backend: Arc<dyn Backend>, config: ServerConfig) -> Self {
        Server { _backend: backend, _config: config }
    }

    /// A handle that stops the server from another thread (a signal handler thread, `--run`).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        todo!()
    }

    /// Stops the server on SIGINT, SIGTERM or SIGQUIT, and ignores SIGPIPE.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        todo!()
    }

    /// Accepts clients on `listeners` until shut down, then waits for connections to finish.
    pub fn serve(&self, listeners: Vec<Listener>) -> io::Result<()> {
        let _ = listeners;
        todo!()
    }

    /// Serves a single client on an already connected stream (`-s` passes stdin and stdout) and
    /// returns when it disconnects.
    pub fn serve_one(&self, read: OwnedFd, write: OwnedFd) -> io::Result<()> {
        let _ = (read, write);
        todo!()
    }
}
