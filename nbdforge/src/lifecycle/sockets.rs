//! Where the server listens: TCP (`-p`, `-i`, `-4`, `-6`), a Unix socket (`-U PATH`, or `-U -`
//! for one in a private temporary directory), AF_VSOCK (`--vsock`), or sockets inherited from
//! systemd. Also `--selinux-label`, which labels the sockets as they are created.
//!
//! Everything here runs before the server is built, so that a port in use or a bad address is
//! reported and the process exits 1 before anything serves.

use std::net::{IpAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

use nbdforge_server::{listen as server_listen, Listener};

use crate::options::{Family, Options, UnixSocket};

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// What clients connect to, for `$uri` and `--print-uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    Vsock(u32),
    /// Inherited from systemd: the address is the socket unit's business.
    Activated,
}

/// A private directory for `-U -`, removed with the socket in it when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl PrivateDir {
    fn create() -> Result<PrivateDir, String> {
        let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
        let template = base.join("nbdforgeXXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| format!("-U -: cannot create a private directory in {}: {e}", base.display()))?;
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

/// The socket file of `-U PATH`, removed at exit if it is still the one we created (a newer
/// server may have replaced it).
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
    pub listeners: Vec<Listener>,
    pub endpoint: Endpoint,
    pub private_dir: Option<PrivateDir>,
    pub socket_file: Option<SocketFile>,
}

/// Binds what the options ask for. `--run` without `-p` or `-U` gets a private Unix socket.
pub fn bind_from_options(o: &Options) -> Result<Bound, String> {
    let _label = match &o.selinux_label {
        Some(label) => Some(SocketLabel::set(label)?),
        None => None,
    };
    if o.vsock {
        let port = match &o.port {
            Some(p) => p.trim().parse::<u32>().map_err(|_| format!("-p {p}: not an AF_VSOCK port (0 to 4294967295)"))?,
            None => u32::from(DEFAULT_PORT),
        };
        let (fd, port) = bind_vsock(port)?;
        let listeners = vec![vsock_listener(fd)?];
        return Ok(Bound { listeners, endpoint: Endpoint::Vsock(port), private_dir: None, socket_file: None });
    }
    let unix = match (&o.unix, o.run.is_some() && o.port.is_none()) {
        (Some(u), _) => Some(u.clone()),
        (None, true) => Some(UnixSocket::Private),
        (None, false) => None,
    };
    match unix {
        Some(UnixSocket::Path(path)) => {
            let l = server_listen::bind_unix(&path).map_err(|e| format!("-U: {e}"))?;
            let file = SocketFile::new(path.clone());
            Ok(Bound { listeners: vec![l], endpoint: Endpoint::Unix(path), private_dir: None, socket_file: Some(file) })
        }
        Some(UnixSocket::Private) => {
            let private = PrivateDir::create()?;
            let l = server_listen::bind_unix(&private.socket).map_err(|e| format!("-U -: {e}"))?;
            Ok(Bound {
                listeners: vec![l],
                endpoint: Endpoint::Unix(private.socket.clone()),
                private_dir: Some(private),
                socket_file: None,
            })
        }
        None => bind_tcp(o),
    }
}

fn bind_tcp(o: &Options) -> Result<Bound, String> {
    let port = match &o.port {
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
    let fail = |host: &str, e: std::io::Error| format!("unable to listen on {}: {e}", where_(host));
    let listeners = match (&o.ipaddr, o.family) {
        (None, Family::Any) => server_listen::bind_tcp(None, port).map_err(|e| fail("", e))?,
        (None, Family::V4) => server_listen::bind_tcp(Some("0.0.0.0"), port).map_err(|e| fail("0.0.0.0", e))?,
        (None, Family::V6) => server_listen::bind_tcp(Some("::"), port).map_err(|e| fail("::", e))?,
        (Some(host), Family::Any) => server_listen::bind_tcp(Some(host), port).map_err(|e| fail(host, e))?,
        (Some(host), family) => {
            // -4/-6 restrict what a host name resolves to.
            let addrs: Vec<IpAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("-i {host}: {e}"))?
                .map(|a| a.ip())
                .filter(|ip| ip.is_ipv4() == (family == Family::V4))
                .collect();
            if addrs.is_empty() {
                let fam = if family == Family::V4 { "IPv4" } else { "IPv6" };
                return Err(format!("-i {host}: no {fam} address"));
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
    let host = match &o.ipaddr {
        Some(h) if h.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{h}]"),
        Some(h) if !h.is_empty() && h != "0.0.0.0" && h != "::" => h.clone(),
        _ => "localhost".to_string(),
    };
    Ok(Bound { listeners, endpoint: Endpoint::Tcp { host, port: bound_port }, private_dir: None, socket_file: None })
}

/// A TCP port: a number, or a service name from /etc/services (`nbd`), as getaddrinfo takes.
pub fn parse_port(p: &str) -> Result<u16, String> {
    let p = p.trim();
    if let Ok(n) = p.parse::<u16>() {
        return Ok(n);
    }
    if !p.is_empty() && !p.chars().all(|c| c.is_ascii_digit()) {
        if let Some(n) = service_port(p) {
            return Ok(n);
        }
    }
    Err(format!("-p {p}: not a port number (0 to 65535) or a service name from /etc/services"))
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
fn bind_vsock(port: u32) -> Result<(OwnedFd, u32), String> {
    let fail = |what: &str, e: nix::Error| format!("--vsock: port {port}: {what}: {e}");
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| fail("socket (is the vsock module loaded?)", e))?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(|e| fail("bind", e))?;
    listen(&fd, Backlog::MAXCONN).map_err(|e| fail("listen", e))?;
    let port = match nix::sys::socket::getsockname::<VsockAddr>(fd.as_raw_fd()) {
        Ok(a) => a.port(),
        Err(_) => port,
    };
    Ok((fd, port))
}

/// The server's listener for an AF_VSOCK socket.
pub fn vsock_listener(fd: OwnedFd) -> Result<Listener, String> {
    Ok(Listener::Vsock(fd))
}

/// `--selinux-label`: sockets created while this lives get the label (setsockcreatecon(3) by
/// way of /proc/thread-self/attr/sockcreate, for this thread only).
struct SocketLabel;

const SOCKCREATE: &str = "/proc/thread-self/attr/sockcreate";

impl SocketLabel {
    fn set(label: &str) -> Result<SocketLabel, String> {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(format!(
                "--selinux-label={label}: SELinux is not enabled on this system (no /sys/fs/selinux), so sockets cannot be labelled"
            ));
        }
        std::fs::write(SOCKCREATE, label).map_err(|e| format!("--selinux-label={label}: {SOCKCREATE}: {e}"))?;
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
        assert!(parse_port("65536").unwrap_err().contains("-p 65536"));
        assert!(parse_port("no-such-service-xyz").is_err());
    }
}
