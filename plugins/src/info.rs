//! The `info` plugin: a read-only disk whose contents are something about the connection: the
//! export name the client asked for (as text, or base64-decoded into arbitrary bytes), the
//! client's address, or a clock (the server's, its uptime, the connection's age). Used to test
//! clients' export name handling, to pass a small disk image inside an export name, and to
//! measure latency.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use nbdforge_api::{
    unknown_parameter, Capabilities, Error, Flags, Handle, Layer, LayerInfo, OpenArgs, Peer, Plugin, Registration,
    Result, Support,
};

/// What the disk holds, from `mode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ExportName,
    Base64ExportName,
    Address,
    Time,
    Uptime,
    ConnTime,
}

impl Mode {
    /// The time modes' disks are 12 bytes: seconds (64 bits) and microseconds (32 bits), both
    /// big-endian, as `struct timeval` would give them.
    fn is_clock(self) -> bool {
        matches!(self, Mode::Time | Mode::Uptime | Mode::ConnTime)
    }
}

/// The `info` plugin. Configure with `mode=`.
#[derive(Debug)]
pub struct InfoPlugin {
    mode: Mode,
    /// When the plugin was loaded: what `mode=uptime` counts from.
    loaded: Instant,
}

impl Default for InfoPlugin {
    fn default() -> Self {
        InfoPlugin { mode: Mode::ExportName, loaded: Instant::now() }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("info", "serves information about the client and the server as a disk")
        .help(
            "[mode=]exportname|base64exportname|address|time|uptime|conntime\n\
             \x20                                     Plugin mode (default: exportname).",
        )
        .magic("mode");
    Registration::plugin(info, InfoPlugin::default)
}

fn parse_mode(key: &str, value: &str) -> Result<Mode> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "exportname" | "export-name" => Mode::ExportName,
        "base64exportname" | "base64-export-name" => Mode::Base64ExportName,
        "address" => Mode::Address,
        "time" => Mode::Time,
        "uptime" => Mode::Uptime,
        "conntime" => Mode::ConnTime,
        _ => {
            return Err(Error::invalid(format!(
                "{key}={value}: unknown mode (use exportname, base64exportname, address, time, uptime or conntime)"
            )))
        }
    })
}

impl Layer for InfoPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "mode" => self.mode = parse_mode(key, value)?,
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    /// What nbdkit prints so that scripts can tell these modes are available.
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("info_address".into(), "yes".into()), ("info_base64".into(), "yes".into())]
    }
}

/// The client's address as text: `192.0.2.1:41234`, `[2001:db8::1]:41234`, `unix` for a Unix
/// socket (its path is the server's business, not the client's), and nothing for a vsock peer.
fn address_text(peer: &Peer) -> Result<Vec<u8>> {
    match peer {
        Peer::Tcp(std::net::SocketAddr::V4(a)) => Ok(format!("{}:{}", a.ip(), a.port()).into_bytes()),
        // Without the scope id, as inet_ntop writes it.
        Peer::Tcp(std::net::SocketAddr::V6(a)) => Ok(format!("[{}]:{}", a.ip(), a.port()).into_bytes()),
        Peer::Unix { .. } => Ok(b"unix".to_vec()),
        Peer::Vsock { .. } => Ok(Vec::new()),
        Peer::Local => Err(Error::new(libc::ENOTSOCK, "mode=address: the client is not on a socket")),
    }
}

impl Plugin for InfoPlugin {
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let opened = Instant::now();
        let data = match self.mode {
            Mode::ExportName => args.export_name.as_bytes().to_vec(),
            Mode::Base64ExportName => base64::engine::general_purpose::STANDARD
                .decode(&args.export_name)
                .map_err(|e| Error::invalid(format!("base64: export name '{}': {e}", args.export_name)))?,
            Mode::Address => address_text(&args.conn.client().peer)?,
            Mode::Time | Mode::Uptime | Mode::ConnTime => vec![0; 12],
        };
        Ok(Box::new(InfoHandle { mode: self.mode, data, loaded: self.loaded, opened }))
    }
}

/// One connection: the bytes decided at open, or a clock read on every request.
struct InfoHandle {
    mode: Mode,
    data: Vec<u8>,
    loaded: Instant,
    opened: Instant,
}

impl InfoHandle {
    /// The 12 bytes of the clock now.
    fn clock(&self) -> [u8; 12] {
        let elapsed = match self.mode {
            Mode::Uptime => self.loaded.elapsed(),
            Mode::ConnTime => self.opened.elapsed(),
            _ => SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO),
        };
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&(elapsed.as_secs() as i64).to_be_bytes());
        out[8..].copy_from_slice(&(elapsed.subsec_micros() as i32).to_be_bytes());
        out
    }
}

impl Handle for InfoHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }

    /// Several connections see the same disk only when it is made of the export name: addresses
    /// and clocks differ from one connection to the next.
    fn capabilities(&self) -> Result<Capabilities> {
        let multi_conn = matches!(self.mode, Mode::ExportName | Mode::Base64ExportName);
        Ok(Capabilities { multi_conn, cache: Support::Native, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let start = offset as usize;
        if self.mode.is_clock() {
            buf.copy_from_slice(&self.clock()[start..start + buf.len()]);
        } else {
            buf.copy_from_slice(&self.data[start..start + buf.len()]);
        }
        Ok(())
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::{ClientInfo, Connection};

    fn open(mode: &str, export: &str, peer: Peer) -> Result<Box<dyn Handle>> {
        let mut plugin = InfoPlugin::default();
        plugin.config("mode", mode)?;
        plugin.config_complete()?;
        let mut args = OpenArgs::local(export, true);
        args.conn = Connection::new(1, ClientInfo { peer, tls: None });
        plugin.open(&args)
    }

    fn contents(h: &dyn Handle) -> Vec<u8> {
        let mut buf = vec![0u8; h.get_size().unwrap() as usize];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        buf
    }

    #[test]
    fn export_names_plain_and_base64() {
        let h = open("exportname", "hello", Peer::Local).unwrap();
        assert_eq!(contents(&*h), b"hello");
        assert!(h.capabilities().unwrap().multi_conn);
        let h = open("Base64-Export-Name", "AAEC/w==", Peer::Local).unwrap();
        assert_eq!(contents(&*h), [0, 1, 2, 0xff]);
        assert_eq!(open("base64exportname", "", Peer::Local).unwrap().get_size().unwrap(), 0);
        let err = open("base64exportname", "not base64!", Peer::Local).err().unwrap();
        assert!(err.message.starts_with("base64: export name 'not base64!'"), "{}", err.message);
    }

    #[test]
    fn addresses() {
        let tcp4 = Peer::Tcp("192.0.2.1:41234".parse().unwrap());
        assert_eq!(contents(&*open("address", "", tcp4).unwrap()), b"192.0.2.1:41234");
        let ip6 = "2001:db8::1".parse().unwrap();
        let tcp6 = Peer::Tcp(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(ip6, 8, 0, 3)));
        assert_eq!(contents(&*open("address", "", tcp6).unwrap()), b"[2001:db8::1]:8");
        let unix = Peer::Unix { pid: Some(1), uid: Some(0), gid: Some(0) };
        let h = open("address", "", unix).unwrap();
        assert_eq!(contents(&*h), b"unix");
        assert!(!h.capabilities().unwrap().multi_conn);
        assert!(open("address", "", Peer::Local).is_err());
    }

    #[test]
    fn clocks() {
        let h = open("time", "", Peer::Local).unwrap();
        assert_eq!(h.get_size().unwrap(), 12);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let secs = i64::from_be_bytes(contents(&*h)[..8].try_into().unwrap());
        assert!((secs - now).abs() <= 2, "{secs} vs {now}");
        let h = open("conntime", "", Peer::Local).unwrap();
        let bytes = contents(&*h);
        assert_eq!(&bytes[..8], &[0; 8], "a connection just opened is not a second old");
        assert!(u32::from_be_bytes(bytes[8..].try_into().unwrap()) < 1_000_000);
        let mut tail = [0u8; 4];
        open("uptime", "", Peer::Local).unwrap().pread(&mut tail, 8, Flags::NONE).unwrap();
    }

    #[test]
    fn unknown_mode_names_the_value() {
        let err = InfoPlugin::default().config("mode", "weather").unwrap_err();
        assert!(err.message.starts_with("mode=weather: unknown mode"), "{}", err.message);
    }
}
