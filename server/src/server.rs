//! The server: accepts clients on its listeners, runs each connection on its own thread, and shuts
//! down cleanly: stop accepting, let requests in flight finish, then return.
//!
//! Shutdown wakes the accept loop through a socket pair and half-closes the read side of every
//! client socket, so workers blocked waiting for the next request see end-of-file while replies to
//! requests already read still go out.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nbdforge_api::{Backend, ClientInfo, Peer, ThreadModel};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};

use crate::transport::Stream;
use crate::Listener;

/// How the server behaves, from the command line.
#[derive(Clone)]
pub struct ServerConfig {
    /// `-r`: serve every export read-only.
    pub readonly: bool,
    /// `-t`: worker threads per connection (requests in flight at once).
    pub threads: usize,
    /// `-o`: oldstyle handshake.
    pub oldstyle: bool,
    /// `--timeout`: clients that do not finish negotiating in this time are dropped.
    pub handshake_timeout: Option<Duration>,
    /// `--tls`: whether STARTTLS is refused, allowed or required.
    pub tls_mode: crate::TlsMode,
    /// Loaded credentials; required unless `tls_mode` is `Off`.
    pub tls: Option<Arc<crate::tls::TlsContext>>,
    /// `--no-sr` turns structured replies (and so meta contexts and extended headers) off.
    pub structured_replies: bool,
    /// `--no-meta-contexts` turns meta contexts (block status) off.
    pub meta_contexts: bool,
    /// `--mask-handshake`: the handshake flags offered are ANDed with this (testing old clients).
    pub mask_handshake: u16,
    /// `--keepalive`: SO_KEEPALIVE on TCP connections.
    pub keepalive: bool,
    /// qemu-nbd's `-e N`: at most this many clients at once (0: no limit). Further clients wait
    /// in the listen backlog until one leaves.
    pub max_clients: usize,
    /// qemu-nbd without `-t`: stop once the last client has left (after the first one came).
    pub exit_when_idle: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            readonly: false,
            threads: 16,
            oldstyle: false,
            handshake_timeout: Some(Duration::from_secs(10)),
            tls_mode: crate::TlsMode::Off,
            tls: None,
            structured_replies: true,
            meta_contexts: true,
            mask_handshake: u16::MAX,
            keepalive: false,
            max_clients: 0,
            exit_when_idle: false,
        }
    }
}

/// State shared by the accept loop and every connection.
pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    pub config: ServerConfig,
    pub thread_model: ThreadModel,
    /// Held around every backend call under `SerializeAllRequests`.
    pub serialize_all: Option<Mutex<()>>,
    /// The request memory all connections together may hold.
    pub budget: Arc<crate::connection::Budget>,
    /// A layer asked for a shutdown before this server was made.
    shutdown_requested_early: bool,
    /// The poller idle connections wait in, started when the first one is parked.
    parking: std::sync::OnceLock<Option<Arc<crate::connection::Parking>>>,
    stopping: AtomicBool,
    wake: (UnixStream, UnixStream),
    connections: Mutex<Connections>,
    idle: Condvar,
    /// `--metrics`: set before serving starts, if at all.
    pub metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    /// Sockets of live connections, for shutdown. A connection removes its entry before its socket
    /// is closed, so a descriptor here is never a reused one.
    sockets: HashMap<u64, RawFd>,
    live: usize,
}

/// Counts a connection as live until dropped (whatever thread the connection ends on).
pub(crate) struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

impl Shared {
    /// The poller for idle connections; `None` if it could not be started (connections then
    /// keep a thread while idle).
    pub(crate) fn parking(&self) -> Option<&Arc<crate::connection::Parking>> {
        self.parking
            .get_or_init(|| {
                crate::connection::Parking::start()
                    .inspect_err(|e| warn!("cannot start the poller for idle connections: {e}"))
                    .ok()
            })
            .as_ref()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        nbdforge_api::server::mark_shutting_down();
        let _ = (&self.wake.0).write_all(&[1]);
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for &fd in conns.sockets.values() {
            // Not an error if the client already went away.
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read);
        }
        self.idle.notify_all();
    }

    fn register(&self, socket: Option<RawFd>) -> u64 {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.next_id += 1;
        let id = conns.next_id;
        conns.live += 1;
        if let Some(fd) = socket {
            conns.sockets.insert(id, fd);
        }
        id
    }

    fn unregister(&self, id: u64) {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.sockets.remove(&id);
        conns.live -= 1;
        let last = conns.live == 0;
        self.idle.notify_all();
        // The accept loop may be waiting for a free place (max_clients) in poll.
        let _ = (&self.wake.0).write_all(&[0]);
        drop(conns);
        if last && self.config.exit_when_idle {
            self.stop();
        }
    }

    /// Empties the wake-up socket (non-blocking), so that poll does not spin on old wake-ups.
    fn drain_wake(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake.1).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Whether another client may be accepted now (`max_clients`).
    fn has_room(&self) -> bool {
        let max = self.config.max_clients;
        max == 0 || self.connections.lock().unwrap_or_else(|p| p.into_inner()).live < max
    }

    /// Connections open now, and accepted since the start.
    fn connection_counts(&self) -> crate::metrics::ConnectionCounts {
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        crate::metrics::ConnectionCounts { open: conns.live, total: conns.next_id }
    }

    /// The end of serving: the metrics endpoint goes too, then the layers clean up.
    fn finish(&self) {
        if let Some(metrics) = self.metrics.get() {
            metrics.stop();
        }
        self.backend.cleanup();
    }

    /// Blocks until no connection is live, or (with `or_stop`) until shutdown starts.
    fn wait_idle(&self, or_stop: bool) {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        while conns.live > 0 && !(or_stop && self.stopping()) {
            conns = self.idle.wait(conns).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Runs one connection on its own thread, keeping the live count right however it ends. When
/// the system refuses the thread, the connection is closed and the server goes on.
fn spawn_connection(shared: &Arc<Shared>, stream: Stream, socket: Option<RawFd>, client: ClientInfo) {
    let id = shared.register(socket);
    let live = LiveGuard { shared: Arc::clone(shared), id };
    let shared2 = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || crate::connection::serve(&shared2, stream, id, client, live));
    if let Err(e) = spawned {
        // The closure, and with it the stream and the live count, were dropped.
        warn!("cannot start a thread for a new connection, closing it: {e}");
    }
}

/// A server for one backend stack.
pub struct Server {
    shared: Arc<Shared>,
}

/// Asks a running server to stop: stop accepting, finish requests in flight, return from `serve`.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Starts the shutdown. Safe to call from any thread, any number of times.
    pub fn shutdown(&self) {
        self.shared.stop();
    }
}

impl Server {
    /// A server for `backend` (see [`crate::Stack::finish`]).
    pub fn new(backend: Arc<dyn Backend>, config: ServerConfig) -> Self {
        let thread_model = backend.thread_model();
        let wake = UnixStream::pair().expect("socketpair for the shutdown wake-up");
        // Neither end may block: wake-ups are written from connection threads and drained by
        // the accept loop; a full buffer already means a wake-up is pending.
        let _ = wake.0.set_nonblocking(true);
        let _ = wake.1.set_nonblocking(true);
        let shared = Shared {
            serialize_all: (thread_model <= ThreadModel::SerializeAllRequests).then(|| Mutex::new(())),
            budget: crate::connection::total_budget(),
            parking: std::sync::OnceLock::new(),
            shutdown_requested_early: nbdforge_api::server::begin(),
            backend,
            config,
            thread_model,
            stopping: AtomicBool::new(false),
            wake,
            connections: Mutex::new(Connections::default()),
            idle: Condvar::new(),
            metrics: std::sync::OnceLock::new(),
        };
        let shared = Arc::new(shared);
        // A layer's request to shut down (nbdkit_shutdown) stops this server as a signal would.
        let weak = Arc::downgrade(&shared);
        nbdforge_api::server::set_shutdown_hook(move || {
            if let Some(shared) = weak.upgrade() {
                shared.stop();
            }
        });
        Server { shared }
    }

    /// A handle that stops the server from another thread (a signal handler thread, `--run`).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: Arc::clone(&self.shared) }
    }

    /// Stops the server on SIGINT, SIGTERM or SIGQUIT (more signals change nothing). The signal
    /// handler only wakes a watcher thread (signal-hook's self-pipe), so no signal mask is left
    /// for child processes to inherit.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGQUIT])?;
        let handle = self.shutdown_handle();
        std::thread::Builder::new().name("nbd-signals".into()).spawn(move || {
            for sig in signals.forever() {
                let name = signal_hook::low_level::signal_name(sig).unwrap_or("signal");
                info!("{name}: shutting down");
                handle.shutdown();
            }
        })?;
        Ok(())
    }

    /// Serves live metrics (`--metrics`) on `listener` in Prometheus' text format, from a thread of
    /// its own, until the server stops. Call it before [`Server::serve`]: connections made earlier
    /// are not counted.
    pub fn serve_metrics(&self, listener: std::net::TcpListener) -> io::Result<()> {
        let registry = Arc::new(crate::metrics::Registry::default());
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        let metrics = crate::metrics::Metrics::new(Arc::clone(&registry), stop_tx);
        if self.shared.metrics.set(metrics).is_err() {
            return Err(io::Error::other("the metrics endpoint is already running"));
        }
        let shared = Arc::downgrade(&self.shared);
        crate::metrics::spawn(listener, stop_rx, move || match shared.upgrade() {
            Some(shared) => crate::metrics::render(&registry, shared.connection_counts()),
            None => Vec::new(),
        })
    }

    /// Accepts clients on `listeners` until shut down, then waits for connections to finish.
    pub fn serve(&self, listeners: Vec<Listener>) -> io::Result<()> {
        let shared = &self.shared;
        // A layer may have asked for a shutdown before the server ran (from after_fork).
        if shared.shutdown_requested_early {
            shared.stop();
        }
        let serialize_connections = shared.thread_model == ThreadModel::SerializeConnections;
        while !shared.stopping() {
            // At the client limit only the wake-up is watched: a leaving client writes to it.
            let room = shared.has_room();
            let mut fds: Vec<PollFd> = if room {
                listeners.iter().map(|l| PollFd::new(l.fd(), PollFlags::POLLIN)).collect()
            } else {
                Vec::new()
            };
            fds.push(PollFd::new(shared.wake.1.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
            drop(fds);
            if ready.pop() == Some(true) {
                shared.drain_wake();
            }
            for (listener, _) in listeners.iter().zip(ready).filter(|(_, r)| *r) {
                if shared.stopping() {
                    break;
                }
                match accept(listener, shared.config.keepalive) {
                    Ok((fd, client)) => {
                        debug!("accepted {}", client.peer_name());
                        let raw = fd.as_raw_fd();
                        spawn_connection(shared, Stream::socket(fd), Some(raw), client);
                        if serialize_connections {
                            shared.wait_idle(false);
                        }
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => {
                        // Running out of descriptors should not end the server: back off a little.
                        warn!("accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        drop(listeners);
        shared.wait_idle(false);
        shared.finish();
        Ok(())
    }

    /// Serves a single client on an already connected stream (`-s` passes stdin and stdout) and
    /// returns when it disconnects or the server is shut down.
    pub fn serve_one(&self, read: OwnedFd, write: OwnedFd) -> io::Result<()> {
        let is_socket = |fd: &OwnedFd| {
            nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd.as_raw_fd()).is_ok()
                || nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd()).is_ok()
        };
        let socket = (read.as_raw_fd() == write.as_raw_fd() || is_socket(&read)).then(|| read.as_raw_fd());
        let stream = Stream::Pipes { read: read.into(), write: write.into() };
        nbdforge_api::server::set_stdio_in_use(true);
        spawn_connection(&self.shared, stream, socket, ClientInfo::default());
        self.shared.wait_idle(true);
        self.shared.finish();
        Ok(())
    }
}

/// Send buffer of accepted Unix socket connections.
const UNIX_SEND_BUFFER: usize = 2 << 20;

fn accept(listener: &Listener, keepalive: bool) -> io::Result<(OwnedFd, ClientInfo)> {
    let peer = match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept()?;
            s.set_nodelay(true)?;
            if keepalive {
                socket2::SockRef::from(&s).set_keepalive(true)?;
            }
            return Ok((s.into(), ClientInfo { peer: Peer::Tcp(addr), tls: None }));
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept()?;
            // A 2 MiB send buffer lets a 256 KiB reply go out in one call without waiting for
            // the client (the default is about 200 KiB); measured +4-11% on mem-read-256k. It
            // caps what the kernel may queue, so idle clients cost nothing for it.
            let _ = socket2::SockRef::from(&s).set_send_buffer_size(UNIX_SEND_BUFFER);
            let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok();
            let peer =
                Peer::Unix { pid: cred.map(|c| c.pid()), uid: cred.map(|c| c.uid()), gid: cred.map(|c| c.gid()) };
            return Ok((s.into(), ClientInfo { peer, tls: None }));
        }
        Listener::Vsock(fd) => fd,
    };
    use nix::sys::socket::{accept4, getpeername, SockFlag, VsockAddr};
    let raw = accept4(peer.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    let s = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let peer = match getpeername::<VsockAddr>(raw) {
        Ok(a) => Peer::Vsock { cid: a.cid(), port: a.port() },
        Err(_) => Peer::Local,
    };
    Ok((s, ClientInfo { peer, tls: None }))
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted)
}
