//! Where the server listens ([`ListenOn`]): TCP on some or all addresses, a Unix socket at a path
//! or in a private temporary directory, or AF_VSOCK; or sockets inherited from systemd (see
//! `activation`). Also the SELinux label given to the sockets as they are created.
//!
//! Everything here runs before the server is built, so that a port in use or a bad address is
//! reported and the process exits 1 before anything serves. [`Bound`] holds the listeners and
//! what they mean ([`Endpoint`], for URIs and `captive`'s environment), and removes the socket
//! files it created when dropped.

use std::net::{IpAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

use nbdforge_server::{listen as server_listen, Listener};

use crate::{Error, Setting};

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// Address family restriction for TCP (nbdkit's `-4` / `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// Every family the address resolves to.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// Where to listen. Ports are as the user gave them, and parsed here so that errors about them
/// come after those about the SELinux label, whatever the kind of socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOn {
    /// TCP on `host` (every address when None) and `port` (a number or a service name from
    /// /etc/services; [`DEFAULT_PORT`] when None), restricted to `family`.
    Tcp {
        /// The address or host name to listen on.
        host: Option<String>,
        /// The port as given.
        port: Option<String>,
        /// Which of the host's addresses to use.
        family: Family,
    },
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A Unix socket in a new private temporary directory, both removed at exit.
    PrivateUnix,
    /// AF_VSOCK on every CID, on `port` (the NBD port when None).
    Vsock {
        /// The port as given.
        port: Option<String>,
    },
}

/// What clients connect to, for URIs and the captive command's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP host name or address (IPv6 in brackets) and port.
    Tcp {
        /// The host clients should use: `localhost` when listening on every address.
        host: String,
        /// The port actually bound (the kernel's choice for port 0).
        port: u16,
    },
    /// A Unix socket.
    Unix(PathBuf),
    /// An AF_VSOCK port.
    Vsock(u32),
    /// Inherited from systemd: the address is the socket unit's business.
    Activated,
}

/// A private directory for a Unix socket, removed with the socket in it when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    /// The directory.
    pub dir: PathBuf,
    /// The socket in it.
    pub socket: PathBuf,
}

impl PrivateDir {
    fn create() -> Result<PrivateDir, Error> {
        let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
        let template = base.join("nbdforgeXXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(|e| {
            Error::new(
                Setting::PrivateUnixSocket,
                format!("cannot create a private directory in {}: {e}", base.display()),
            )
        })?;
        let socket = dir.join("socket");
        Ok(PrivateDir { dir, socket })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The socket file of a Unix socket at a path, removed at exit if it is still the one we created (a
/// newer server may have replaced it).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl SocketFile {
    fn new(path: PathBuf) -> SocketFile {
        let id = file_id(&path);
        SocketFile { path, id }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The bound sockets and what they mean. Dropping it removes the socket files we created.
#[derive(Debug)]
pub struct Bound {
    /// The listening sockets, for the server.
    pub listeners: Vec<Listener>,
    /// What clients connect to.
    pub endpoint: Endpoint,
    /// The private directory of [`ListenOn::PrivateUnix`].
    pub private_dir: Option<PrivateDir>,
    /// The socket file of [`ListenOn::Unix`].
    pub socket_file: Option<SocketFile>,
}

/// Binds the sockets `on` asks for, labelled `selinux_label` if given.
pub fn bind(on: &ListenOn, selinux_label: Option<&str>) -> Result<Bound, Error> {
    let _label = match selinux_label {
        Some(label) => Some(SocketLabel::set(label)?),
        None => None,
    };
    match on {
        ListenOn::Vsock { port } => {
            let port = match port {
                Some(p) => p
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| Error::with_value(Setting::Port, p, "not an AF_VSOCK port (0 to 4294967295)"))?,
                None => u32::from(DEFAULT_PORT),
            };
            let (fd, port) = bind_vsock(port)?;
            let listeners = vec![vsock_listener(fd)?];
            Ok(Bound { listeners, endpoint: Endpoint::Vsock(port), private_dir: None, socket_file: None })
        }
        ListenOn::Unix(path) => {
            let l = server_listen::bind_unix(path).map_err(|e| Error::new(Setting::UnixSocket, e.to_string()))?;
            let file = SocketFile::new(path.clone());
            Ok(Bound {
                listeners: vec![l],
                endpoint: Endpoint::Unix(path.clone()),
                private_dir: None,
                socket_file: Some(file),
            })
        }
        ListenOn::PrivateUnix => {
            let private = PrivateDir::create()?;
            let l = server_listen::bind_unix(&private.socket)
                .map_err(|e| Error::new(Setting::PrivateUnixSocket, e.to_string()))?;
            Ok(Bound {
                listeners: vec![l],
                endpoint: Endpoint::Unix(private.socket.clone()),
                private_dir: Some(private),
                socket_file: None,
            })
        }
        ListenOn::Tcp { host, port, family } => bind_tcp(host.as_ref(), port.as_deref(), *family),
    }
}

fn bind_tcp(ipaddr: Option<&String>, port: Option<&str>, family: Family) -> Result<Bound, Error> {
    let port = match port {
        Some(p) => parse_port(p)?,
        None => DEFAULT_PORT,
    };
    let where_ = |host: &str| {
        if host.is_empty() {
            format!("port {port}")
        } else {
            format!("{host} port {port}")
        }
    };
    let fail = |host: &str, e: std::io::Error| Error::plain(format!("unable to listen on {}: {e}", where_(host)));
    let listeners = match (ipaddr, family) {
        (None, Family::Any) => server_listen::bind_tcp(None, port).map_err(|e| fail("", e))?,
        (None, Family::V4) => server_listen::bind_tcp(Some("0.0.0.0"), port).map_err(|e| fail("0.0.0.0", e))?,
        (None, Family::V6) => server_listen::bind_tcp(Some("::"), port).map_err(|e| fail("::", e))?,
        (Some(host), Family::Any) => server_listen::bind_tcp(Some(host), port).map_err(|e| fail(host, e))?,
        (Some(host), family) => {
            // -4/-6 restrict what a host name resolves to.
            let addrs: Vec<IpAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| Error::with_value(Setting::Address, host, e.to_string()))?
                .map(|a| a.ip())
                .filter(|ip| ip.is_ipv4() == (family == Family::V4))
                .collect();
            if addrs.is_empty() {
                let fam = if family == Family::V4 { "IPv4" } else { "IPv6" };
                return Err(Error::with_value(Setting::Address, host, format!("no {fam} address")));
            }
            let mut all = Vec::new();
            let mut port = port;
            for ip in addrs {
                let ip = ip.to_string();
                let ls = server_listen::bind_tcp(Some(&ip), port).map_err(|e| fail(&ip, e))?;
                // With -p 0, every address gets the port the first one was given.
                if let Some(p) = ls.iter().find_map(Listener::port) {
                    port = p;
                }
                all.extend(ls);
            }
            all
        }
    };
    let bound_port = listeners.iter().find_map(Listener::port).unwrap_or(port);
    let host = match ipaddr {
        Some(h) if h.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{h}]"),
        Some(h) if !h.is_empty() && h != "0.0.0.0" && h != "::" => h.clone(),
        _ => "localhost".to_string(),
    };
    Ok(Bound { listeners, endpoint: Endpoint::Tcp { host, port: bound_port }, private_dir: None, socket_file: None })
}

/// A TCP port: a number, or a service name from /etc/services (`nbd`), as getaddrinfo takes.
pub fn parse_port(p: &str) -> Result<u16, Error> {
    let p = p.trim();
    if let Ok(n) = p.parse::<u16>() {
        return Ok(n);
    }
    if !p.is_empty() && !p.chars().all(|c| c.is_ascii_digit()) {
        if let Some(n) = service_port(p) {
            return Ok(n);
        }
    }
    Err(Error::with_value(Setting::Port, p, "not a port number (0 to 65535) or a service name from /etc/services"))
}

fn service_port(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let aliases: Vec<&str> = words.collect();
        (proto == "tcp" && (service == name || aliases.contains(&name))).then(|| port.parse().ok()).flatten()
    })
}

/// Binds an AF_VSOCK stream socket on every CID, returning it and its port.
fn bind_vsock(port: u32) -> Result<(OwnedFd, u32), Error> {
    let fail = |what: &str, e: nix::Error| Error::new(Setting::Vsock, format!("port {port}: {what}: {e}"));
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| fail("socket (is the vsock module loaded?)", e))?;
    nix::sys::socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(|e| fail("bind", e))?;
    listen(&fd, Backlog::MAXCONN).map_err(|e| fail("listen", e))?;
    let port = match nix::sys::socket::getsockname::<VsockAddr>(fd.as_raw_fd()) {
        Ok(a) => a.port(),
        Err(_) => port,
    };
    Ok((fd, port))
}

/// The server's listener for an AF_VSOCK socket.
pub fn vsock_listener(fd: OwnedFd) -> Result<Listener, Error> {
    Ok(Listener::Vsock(fd))
}

/// The SELinux label: sockets created while this lives get it (setsockcreatecon(3) by way of
/// /proc/thread-self/attr/sockcreate, for this thread only).
struct SocketLabel;

const SOCKCREATE: &str = "/proc/thread-self/attr/sockcreate";

impl SocketLabel {
    fn set(label: &str) -> Result<SocketLabel, Error> {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(Error::with_value(
                Setting::SelinuxLabel,
                label,
                "SELinux is not enabled on this system (no /sys/fs/selinux), so sockets cannot be labelled",
            ));
        }
        std::fs::write(SOCKCREATE, label)
            .map_err(|e| Error::with_value(Setting::SelinuxLabel, label, format!("{SOCKCREATE}: {e}")))?;
        Ok(SocketLabel)
    }
}

impl Drop for SocketLabel {
    fn drop(&mut self) {
        // Back to the default context for sockets created later (client connections are
        // accepted, not created, but plugins may open sockets of their own).
        let _ = std::fs::write(SOCKCREATE, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("10809").unwrap(), 10809);
        assert_eq!(parse_port("0").unwrap(), 0);
        let e = parse_port("65536").unwrap_err();
        assert_eq!((e.setting, e.value.as_deref()), (Some(Setting::Port), Some("65536")));
        assert!(parse_port("no-such-service-xyz").is_err());
    }
}
