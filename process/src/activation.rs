//! systemd socket activation: when `LISTEN_PID` is our pid and `LISTEN_FDS` is N, descriptors
//! 3 to 3+N-1 are sockets systemd made for us (sd_listen_fds(3)). With `Accept=no` they are
//! listening sockets, served instead of binding our own; with `Accept=yes` there is one, an
//! accepted connection, served alone before exiting (a process per connection, as from inetd).
//! libnbd uses the same protocol to start a server it talks to (`nbdinfo -- [ nbdforge ... ]`).
//!
//! [`take_listen_fds`] runs first, since it decides what else may be asked for; [`target`] then
//! turns the descriptors into what to serve.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};

use nbdforge_server::Listener;

use crate::sockets::{Bound, Endpoint};
use crate::stdio::dup_owned;
use crate::{Error, Target};

const FIRST_FD: RawFd = 3;

/// The descriptors systemd passed, or `None` when this is not socket activation. The variables
/// are removed from the environment so that nothing we start believes it was activated too.
pub fn take_listen_fds() -> Result<Option<Vec<OwnedFd>>, Error> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| Error::plain(format!("socket activation: LISTEN_PID={pid}: not a process id")))?;
    if pid != std::process::id() {
        // Meant for another process (our parent, which did not clear it).
        return Ok(None);
    }
    let n: RawFd = fds.trim().parse().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| {
        Error::plain(format!("socket activation: LISTEN_FDS={fds}: not a number of descriptors from 1 to 1024"))
    })?;
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let mut owned = Vec::new();
    for fd in FIRST_FD..FIRST_FD + n {
        let flags = fcntl(fd, FcntlArg::F_GETFD)
            .map_err(|e| Error::plain(format!("socket activation: descriptor {fd} (of LISTEN_FDS={n}): {e}")))?;
        // Not to be inherited by anything we start.
        let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
        fcntl(fd, FcntlArg::F_SETFD(flags))
            .map_err(|e| Error::plain(format!("socket activation: descriptor {fd}: {e}")))?;
        // SAFETY: the socket activation protocol hands descriptors 3..3+LISTEN_FDS to this
        // process; fcntl just showed this one is open, nothing else in the process knows it, and
        // each number is wrapped exactly once.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(Some(owned))
}

/// What systemd handed us in one descriptor.
pub enum Inherited {
    /// A listening socket (`Accept=no`): serve it like one we bound.
    Listener(Listener),
    /// One accepted connection (`Accept=yes`, a process per connection): serve it and exit.
    Connection(OwnedFd),
}

/// Classifies an inherited descriptor, after checking that it is a stream socket of a family the
/// server can serve.
pub fn classify(fd: OwnedFd) -> Result<Inherited, Error> {
    let raw = fd.as_raw_fd();
    let what = |e: &dyn std::fmt::Display| Error::plain(format!("socket activation: descriptor {raw}: {e}"));
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|e| what(&e))?;
    if ty != SockType::Stream {
        return Err(what(&"not a stream socket (use ListenStream= in the .socket unit)"));
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(|e| what(&e))? {
        return Ok(Inherited::Connection(fd));
    }
    let addr: SockaddrStorage = getsockname(raw).map_err(|e| what(&e))?;
    match addr.family() {
        Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {
            Ok(Inherited::Listener(Listener::Tcp(TcpListener::from(fd))))
        }
        Some(AddressFamily::Unix) => Ok(Inherited::Listener(Listener::Unix(UnixListener::from(fd)))),
        Some(AddressFamily::Vsock) => crate::sockets::vsock_listener(fd).map(Inherited::Listener),
        other => Err(what(&format!("unsupported address family {other:?}"))),
    }
}

/// The sockets systemd passed: listening ones (`Accept=no`), or one accepted connection
/// (`Accept=yes`).
pub fn target(fds: Vec<OwnedFd>) -> Result<Target, Error> {
    let mut listeners = Vec::new();
    let mut connections = Vec::new();
    for fd in fds {
        match classify(fd)? {
            Inherited::Listener(l) => listeners.push(l),
            Inherited::Connection(c) => connections.push(c),
        }
    }
    match (listeners.is_empty(), connections.pop()) {
        (true, Some(conn)) if connections.is_empty() => {
            let other = dup_owned(conn.as_raw_fd())?;
            Ok(Target::One(conn, other))
        }
        (false, None) => {
            Ok(Target::Listen(Bound { listeners, endpoint: Endpoint::Activated, private_dir: None, socket_file: None }))
        }
        _ => Err(Error::plain(
            "socket activation: expected listening sockets (Accept=no) or one connection (Accept=yes), got a mixture",
        )),
    }
}
