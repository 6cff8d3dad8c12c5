//! Listening sockets: TCP on every address of a host (IPv4 and IPv6), Unix sockets, and
//! descriptors inherited from systemd. Binding is separate from serving so that the binary can
//! bind, drop privileges or fork into the background, and only then serve.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use socket2::{Domain, Socket, Type};

/// Pending connections the kernel queues for us.
const BACKLOG: i32 = 128;

/// A bound, listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A Unix domain socket.
    Unix(UnixListener),
    /// An AF_VSOCK socket (`--vsock`), for clients in virtual machines.
    Vsock(OwnedFd),
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds TCP listeners on `addr` (every address it resolves to) or, when `None`, on every
/// interface (IPv6 `::` and IPv4 `0.0.0.0`). Port 0 picks a free port, the same for all.
pub fn bind_tcp(addr: Option<&str>, port: u16) -> io::Result<Vec<Listener>> {
    let addrs: Vec<SocketAddr> = match addr {
        Some(host) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host, port).to_socket_addrs()?.collect()
        }
        None => vec![(std::net::Ipv6Addr::UNSPECIFIED, port).into(), (std::net::Ipv4Addr::UNSPECIFIED, port).into()],
    };
    let mut listeners = Vec::new();
    let mut chosen = port;
    let mut last_err = None;
    for mut a in addrs {
        a.set_port(chosen);
        match bind_one(a) {
            Ok(l) => {
                chosen = l.local_addr()?.port();
                listeners.push(Listener::Tcp(l));
            }
            // A host without IPv6 (or IPv4) still serves on the other family.
            Err(e) if addr.is_none() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => last_err = Some(e),
            Err(e) if addr.is_none() && a.is_ipv6() && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                last_err = Some(e)
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{a}: {e}"))),
        }
    }
    if listeners.is_empty() {
        return Err(last_err.unwrap_or_else(|| io::Error::other("no address to listen on")));
    }
    Ok(listeners)
}

/// Binds a Unix socket at `path`. An existing file at the path is an error ("Address already in
/// use"), as in nbdkit: replacing it could silently take the name from a live server.
pub fn bind_unix(path: &Path) -> io::Result<Listener> {
    let l = UnixListener::bind(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(Listener::Unix(l))
}

impl Listener {
    /// The TCP port, if this is a TCP listener.
    pub fn port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(_) | Listener::Vsock(_) => None,
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
            Listener::Vsock(fd) => fd.as_fd(),
        }
    }
}
