//! What a layer may know and ask of the server: who the client is ([`ClientInfo`]), the
//! connection it serves ([`Connection`]: its id, dropping it), and the server as a whole
//! ([`server`]: shutting down, sleeping until shutdown, whether stdio is free). These are nbdkit's
//! `nbdkit_peer_*`, `nbdkit_export_name`, `nbdkit_is_tls`, `nbdkit_disconnect`,
//! `nbdkit_shutdown`, `nbdkit_nanosleep`, `nbdkit_stdio_safe` and `nbdkit_debug`.
//!
//! The server context is process-wide, as in nbdkit: a layer that watches something in a thread
//! of its own (exitwhen) can ask for a shutdown without holding anything.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Where a client connects from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A client on a Unix socket, with its credentials (`SO_PEERCRED`) when the kernel gave them.
    Unix {
        /// Process id of the client when it connected.
        pid: Option<i32>,
        /// User id.
        uid: Option<u32>,
        /// Group id.
        gid: Option<u32>,
    },
    /// A vsock client.
    Vsock {
        /// Context id of the peer (2 is the host).
        cid: u32,
        /// Its port.
        port: u32,
    },
    /// Standard input and output (`-s`), or a connection made by a program, not a peer.
    #[default]
    Local,
}

/// What TLS proved about the client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPeer {
    /// The PSK username, or the subject of the client certificate under `--tls-verify-peer`.
    pub identity: Option<String>,
    /// The client certificate's subject DN (`CN=client,O=Example`), when it sent one.
    pub dn: Option<String>,
    /// The client certificate's issuer DN.
    pub issuer_dn: Option<String>,
}

/// The client of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Where it connects from.
    pub peer: Peer,
    /// What TLS proved, once STARTTLS is done.
    pub tls: Option<TlsPeer>,
}

impl ClientInfo {
    /// The peer as text for logs: `127.0.0.1:41234`, `unix:pid=12,uid=1000`, `vsock:3:1234`.
    pub fn peer_name(&self) -> String {
        match &self.peer {
            Peer::Tcp(addr) => addr.to_string(),
            Peer::Unix { pid, uid, .. } => match (pid, uid) {
                (Some(pid), Some(uid)) => format!("unix:pid={pid},uid={uid}"),
                _ => "unix socket".into(),
            },
            Peer::Vsock { cid, port } => format!("vsock:{cid}:{port}"),
            Peer::Local => "stdin".into(),
        }
    }

    /// The TCP (or vsock-less) address of the peer (`nbdkit_peer_name`), if it has one.
    pub fn address(&self) -> Option<SocketAddr> {
        match self.peer {
            Peer::Tcp(a) => Some(a),
            _ => None,
        }
    }

    fn cred<T>(&self, what: &str, pick: impl Fn(&Peer) -> Option<T>) -> Result<T> {
        pick(&self.peer).ok_or_else(|| {
            Error::new(libc::ENOTSUP, format!("the peer's {what} is only known for Unix socket clients"))
        })
    }

    /// `nbdkit_peer_pid`: the client's process id (Unix sockets only).
    pub fn pid(&self) -> Result<i32> {
        self.cred("pid", |p| if let Peer::Unix { pid, .. } = p { *pid } else { None })
    }

    /// `nbdkit_peer_uid`: the client's user id (Unix sockets only).
    pub fn uid(&self) -> Result<u32> {
        self.cred("uid", |p| if let Peer::Unix { uid, .. } = p { *uid } else { None })
    }

    /// `nbdkit_peer_gid`: the client's group id (Unix sockets only).
    pub fn gid(&self) -> Result<u32> {
        self.cred("gid", |p| if let Peer::Unix { gid, .. } = p { *gid } else { None })
    }

    /// `nbdkit_peer_tls_dn`: the subject DN of the client certificate.
    pub fn tls_dn(&self) -> Option<&str> {
        self.tls.as_ref()?.dn.as_deref()
    }

    /// `nbdkit_peer_tls_issuer_dn`: the issuer DN of the client certificate.
    pub fn tls_issuer_dn(&self) -> Option<&str> {
        self.tls.as_ref()?.issuer_dn.as_deref()
    }
}

/// No request to drop the connection.
const KEEP: u8 = 0;
/// Finish requests in flight, then close.
const SOFT: u8 = 1;
/// Close at once.
const HARD: u8 = 2;

/// One client connection, as layers see it. The server creates it when the client connects; it
/// lives as long as the connection.
pub struct Connection {
    id: u64,
    client: OnceLock<ClientInfo>,
    plain: ClientInfo,
    disconnect: AtomicU8,
    /// How the server acts on a disconnect request at once, even for an idle client.
    hook: OnceLock<Box<dyn Fn(bool) + Send + Sync>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id).field("client", self.client()).finish()
    }
}

impl Connection {
    /// A connection with id `id` from `client` (the server calls this).
    pub fn new(id: u64, client: ClientInfo) -> Arc<Self> {
        Arc::new(Connection {
            id,
            client: OnceLock::new(),
            plain: client,
            disconnect: AtomicU8::new(KEEP),
            hook: OnceLock::new(),
        })
    }

    /// A connection that is no client's (tests, tools).
    pub fn detached() -> Arc<Self> {
        Self::new(0, ClientInfo::default())
    }

    /// A number unique to this connection in this server's life, from 1.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who the client is.
    pub fn client(&self) -> &ClientInfo {
        self.client.get().unwrap_or(&self.plain)
    }

    /// Records what TLS proved (the server calls this once, after STARTTLS).
    pub fn set_tls(&self, tls: TlsPeer) {
        let _ = self.client.set(ClientInfo { tls: Some(tls), ..self.plain.clone() });
    }

    /// Whether the client negotiated TLS (`nbdkit_is_tls`).
    pub fn is_tls(&self) -> bool {
        self.client().tls.is_some()
    }

    /// Asks the server to drop this client (`nbdkit_disconnect`): with `force`, at once; without,
    /// after the requests in flight have been answered. Requests read afterwards get
    /// `ESHUTDOWN`.
    pub fn disconnect(&self, force: bool) {
        self.disconnect.fetch_max(if force { HARD } else { SOFT }, Ordering::SeqCst);
        server::wake_sleepers();
        if let Some(hook) = self.hook.get() {
            hook(force);
        }
    }

    /// For the server: what to do at once when a layer asks to drop this client (stop reading
    /// from its socket, so that even an idle client is let go). Set once.
    pub fn set_disconnect_hook(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    /// Whether a disconnect was asked for, and whether it was forced.
    pub fn disconnect_requested(&self) -> Option<bool> {
        match self.disconnect.load(Ordering::Relaxed) {
            KEEP => None,
            n => Some(n == HARD),
        }
    }

    /// Sleeps for `duration`, or less if the server shuts down or this connection is being
    /// dropped; then fails with `ESHUTDOWN` (`nbdkit_nanosleep`).
    pub fn sleep(&self, duration: Duration) -> Result<()> {
        server::sleep_until(duration, || self.disconnect_requested().is_some())
    }
}

/// The server as a whole: shutting down, sleeping, stdio.
pub mod server {
    use super::*;

    struct State {
        stopping: AtomicBool,
        /// A layer asked for the shutdown (as opposed to the server stopping by itself).
        requested: AtomicBool,
        stdio_in_use: AtomicBool,
        hook: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
        generation: Mutex<u64>,
        wake: Condvar,
    }

    fn state() -> &'static State {
        static STATE: OnceLock<State> = OnceLock::new();
        STATE.get_or_init(|| State {
            stopping: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            stdio_in_use: AtomicBool::new(false),
            hook: Mutex::new(None),
            generation: Mutex::new(0),
            wake: Condvar::new(),
        })
    }

    /// Asks the server to shut down as a signal would (`nbdkit_shutdown`): stop accepting, finish
    /// requests in flight, exit. Safe from any thread.
    pub fn shutdown() {
        let s = state();
        s.requested.store(true, Ordering::SeqCst);
        s.stopping.store(true, Ordering::SeqCst);
        wake_sleepers();
        if let Some(hook) = s.hook.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            hook();
        }
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down() -> bool {
        state().stopping.load(Ordering::Relaxed)
    }

    /// Sleeps for `duration`, or less if the server shuts down, then fails with `ESHUTDOWN`.
    /// Prefer [`Connection::sleep`] on a connection's path: it also ends when that client is
    /// dropped.
    pub fn sleep(duration: Duration) -> Result<()> {
        sleep_until(duration, || false)
    }

    /// Whether standard input and output are free for the plugin (not the NBD stream of `-s`,
    /// not closed by the background fork): `nbdkit_stdio_safe`.
    pub fn stdio_safe() -> bool {
        !state().stdio_in_use.load(Ordering::Relaxed)
    }

    /// For the server: what `shutdown` runs besides marking the state (wake the accept loop).
    pub fn set_shutdown_hook(hook: impl Fn() + Send + Sync + 'static) {
        *state().hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
    }

    /// For the server, when one starts: forgets an earlier server's shutdown, and says whether a
    /// layer already asked for one (from `get_ready` or `after_fork`), which the new server must
    /// then honour.
    pub fn begin() -> bool {
        let s = state();
        let requested = s.requested.swap(false, Ordering::SeqCst);
        s.stopping.store(requested, Ordering::SeqCst);
        requested
    }

    /// For the server: the server began shutting down by itself (a signal).
    pub fn mark_shutting_down() {
        state().stopping.store(true, Ordering::SeqCst);
        wake_sleepers();
    }

    /// For the server: stdio carries the protocol or is closed.
    pub fn set_stdio_in_use(in_use: bool) {
        state().stdio_in_use.store(in_use, Ordering::Relaxed);
    }

    pub(crate) fn wake_sleepers() {
        let s = state();
        *s.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        s.wake.notify_all();
    }

    pub(crate) fn sleep_until(duration: Duration, cancelled: impl Fn() -> bool) -> Result<()> {
        let s = state();
        let end = Instant::now() + duration;
        let mut gen = s.generation.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if is_shutting_down() || cancelled() {
                return Err(Error::new(libc::ESHUTDOWN, "interrupted: the server or connection is shutting down"));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            gen = s.wake.wait_timeout(gen, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

thread_local! {
    static CURRENT_LAYER: Cell<&'static str> = const { Cell::new("") };
}

/// Marks the calls made on this thread as the layer `name`'s until the guard is dropped, so that
/// [`debug!`](crate::debug) names the layer. The server does this around every call into a layer.
pub fn enter_layer(name: &'static str) -> LayerGuard {
    LayerGuard(CURRENT_LAYER.with(|c| c.replace(name)))
}

/// Restores the previous layer name when dropped; see [`enter_layer`].
pub struct LayerGuard(&'static str);

impl Drop for LayerGuard {
    fn drop(&mut self) {
        CURRENT_LAYER.with(|c| c.set(self.0));
    }
}

/// The layer running on this thread, or `""` outside any layer.
pub fn current_layer() -> &'static str {
    CURRENT_LAYER.with(|c| c.get())
}

/// Logs a debug message (shown with `-v`) prefixed with the name of the layer that logs it, as
/// `nbdkit_debug` does: `memory: allocated 2 MiB`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        $crate::log_debug(::std::format_args!($($arg)*))
    };
}

#[doc(hidden)]
pub fn log_debug(args: std::fmt::Arguments<'_>) {
    let layer = current_layer();
    if layer.is_empty() {
        tracing::debug!("{args}");
    } else {
        tracing::debug!("{layer}: {args}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credentials_only_for_unix_sockets() {
        let unix = ClientInfo { peer: Peer::Unix { pid: Some(7), uid: Some(1000), gid: Some(100) }, tls: None };
        assert_eq!((unix.pid().unwrap(), unix.uid().unwrap(), unix.gid().unwrap()), (7, 1000, 100));
        assert_eq!(unix.peer_name(), "unix:pid=7,uid=1000");
        let tcp = ClientInfo { peer: Peer::Tcp("127.0.0.1:5000".parse().unwrap()), tls: None };
        assert_eq!(tcp.pid().unwrap_err().errno, libc::ENOTSUP);
        assert_eq!(tcp.address().unwrap().port(), 5000);
    }

    #[test]
    fn tls_is_recorded_once() {
        let c = Connection::new(3, ClientInfo::default());
        assert!(!c.is_tls());
        c.set_tls(TlsPeer { identity: Some("alice".into()), dn: Some("CN=alice".into()), issuer_dn: None });
        assert!(c.is_tls());
        assert_eq!(c.client().tls_dn(), Some("CN=alice"));
        assert_eq!(c.client().tls_issuer_dn(), None);
        assert_eq!(c.id(), 3);
    }

    #[test]
    fn connection_sleep_ends_early_on_disconnect() {
        let c = Connection::new(1, ClientInfo::default());
        assert!(c.sleep(Duration::from_millis(1)).is_ok());
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        c.disconnect(false);
        assert_eq!(t.join().unwrap().unwrap_err().errno, libc::ESHUTDOWN);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(c.disconnect_requested(), Some(false));
        c.disconnect(true);
        assert_eq!(c.disconnect_requested(), Some(true));
    }

    #[test]
    fn a_disconnect_reaches_the_servers_hook() {
        let c = Connection::new(2, ClientInfo::default());
        let seen = Arc::new(AtomicU8::new(0));
        let s2 = Arc::clone(&seen);
        c.set_disconnect_hook(move |force| s2.store(if force { 2 } else { 1 }, Ordering::SeqCst));
        c.disconnect(false);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        c.disconnect(true);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn stdio_is_safe_unless_the_server_says_otherwise() {
        assert!(server::stdio_safe());
        server::set_stdio_in_use(true);
        assert!(!server::stdio_safe());
        server::set_stdio_in_use(false);
        assert!(server::stdio_safe());
    }

    #[test]
    fn layer_names_nest() {
        assert_eq!(current_layer(), "");
        let outer = enter_layer("cow");
        {
            let _inner = enter_layer("file");
            assert_eq!(current_layer(), "file");
        }
        assert_eq!(current_layer(), "cow");
        drop(outer);
        assert_eq!(current_layer(), "");
    }
}
