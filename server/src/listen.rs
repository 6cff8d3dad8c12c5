//! Listening sockets: TCP on every address of a host (IPv4 and IPv6), Unix sockets, and
//! descriptors inherited from systemd. Binding is separate from serving so that the binary can
//! bind, drop privileges or fork into the background, and only then serve.

use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// A bound, listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A Unix domain socket.
    Unix(UnixListener),
}

/// Binds TCP listeners on `addr` (every address it resolves to) or, when `None`, on every
/// interface (IPv6 `::` and IPv4 `0.0.0.0`). Port 0 picks a free port (the same for all).
pub fn bind_tcp(addr: Option<&str>, port: u16) -> io::Result<Vec<Listener>> {
    let _ = (addr, port);
    todo!()
}

/// Binds a Unix socket at `path`.
pub fn bind_unix(path: &Path) -> io::Result<Listener> {
    let _ = path;
    todo!()
}

impl Listener {
    /// The TCP port, if this is a TCP listener.
    pub fn port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(_) => None,
        }
    }
}
