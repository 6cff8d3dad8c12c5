//! The `nbd` plugin: a proxy to another NBD server (nbdforge, nbdkit, qemu-nbd, nbd-server), so
//! that filters can be put in front of any server, TLS added or removed, or a qcow2 file served
//! through qemu-nbd (`command=`).
//!
//! This file holds the policy: parameters and URIs, when to connect (per client, or once for all
//! with `shared=true`), and how each request and capability maps onto the server below, which
//! passes through whatever it offers. The connection itself (sockets, TLS, the handshake, requests
//! in flight matched to replies) is `nbd/remote.rs`, the protocol's client side is the protocol
//! crate's `client` module, and `nbd/command.rs` runs `command=`.

mod command;
mod remote;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbdforge_api::{
    parse_bool, parse_delay, parse_int, BlockSize, Capabilities, Error, Export, Extents, Flags, Handle, Layer,
    LayerInfo, OpenArgs, Plugin, Registration, Result, Support,
};
use nbdforge_protocol::client::{ClientConfig, ClientTls, ServerExport};
use nbdforge_protocol::consts::*;
use nbdforge_server::tls::{TlsClient, TlsClientOptions};

use command::Captive;
use remote::{Address, Remote};

/// The default NBD port.
const NBD_PORT: u16 = 10809;
/// Largest read or write sent in one request when the server below gives no maximum.
const DEFAULT_MAX_IO: u64 = 32 << 20;
/// Largest trim, zero, cache or block status length in one compact (32-bit) request.
const COMPACT_MAX: u64 = 1 << 31;

/// Where the server below is, as the parameters said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Address(Address),
    Command(Vec<String>),
}

/// The `nbd` plugin. See the module documentation.
#[derive(Default)]
pub struct NbdPlugin {
    uri: Option<String>,
    socket: Option<PathBuf>,
    hostname: Option<String>,
    vsock: Option<u32>,
    port: Option<String>,
    command: Vec<String>,
    export: Option<String>,
    tls: Option<ClientTls>,
    tls_options: TlsClientOptions,
    tls_verify: Option<bool>,
    shared: Option<bool>,
    retry: u32,
    timeout: Option<Duration>,
    dynamic_export: bool,
    // Settled by config_complete.
    target: Option<Target>,
    /// How messages name the server below.
    name: String,
    tls_client: Option<Arc<TlsClient>>,
    /// The connection every client shares (`shared=true`), made after the fork.
    shared_remote: Mutex<Option<Arc<Remote>>>,
    captive: Mutex<Option<Captive>>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("nbd", "proxy to another NBD server")
        .help(
            "[uri=]<URI>            nbd://, nbds://, nbd+unix://, nbds+unix:// or nbd+vsock:// URI of the server.\n\
             socket=<PATH>          The server's Unix socket.\n\
             hostname=<HOST>        The server's host name (port= for the port, default 10809).\n\
             vsock=<CID>            The server's vsock CID (port= for the port).\n\
             command=<PROG> arg=..  Run the server as a child (socket activation); implies shared=true.\n\
             export=<NAME>          The export to open (default \"\").\n\
             dynamic-export=BOOL    Open the export each client asks for.\n\
             shared=BOOL            One connection below for all clients.\n\
             retry=<N>              Retry the first connection N times, a second apart.\n\
             timeout=<SECS>         Give up a connection whose server does not answer in time.\n\
             tls=off|on|require     TLS to the server; tls-certificates=DIR, tls-verify=BOOL,\n\
             \x20                      tls-psk=FILE, tls-username=NAME.",
        )
        .magic("uri");
    Registration::plugin(info, NbdPlugin::default)
}

impl Layer for NbdPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let path = |v: &str| -> Result<PathBuf> {
            // Made absolute now: the server may change directory when it goes into the background.
            std::path::absolute(v).map_err(|e| Error::invalid(format!("{key}={v}: {e}")))
        };
        match key {
            "uri" => self.uri = Some(value.to_string()),
            "socket" => self.socket = Some(path(value)?),
            "hostname" => self.hostname = Some(value.to_string()),
            "vsock" | "vhost-cid" => self.vsock = Some(parse_int::<u32>(key, value)?),
            "port" => self.port = Some(value.to_string()),
            "command" => {
                if !self.command.is_empty() {
                    return Err(Error::invalid(format!("command={value}: command= given twice")));
                }
                self.command.push(value.to_string())
            }
            "arg" => {
                if self.command.is_empty() {
                    return Err(Error::invalid(format!("arg={value}: arg= must follow command=")));
                }
                self.command.push(value.to_string())
            }
            "socket-fd" => {
                return Err(Error::invalid(format!("{key}={value}: socket-fd= is not supported by nbdforge")))
            }
            "export" => self.export = Some(value.to_string()),
            "tls" => {
                self.tls = Some(match value {
                    "off" => ClientTls::Off,
                    "on" => ClientTls::On,
                    "require" => ClientTls::Require,
                    _ => return Err(Error::invalid(format!("tls={value}: expected off, on or require"))),
                })
            }
            "tls-certificates" => self.tls_options.certificates = Some(path(value)?),
            "tls-psk" => self.tls_options.psk_file = Some(path(value)?),
            "tls-username" => self.tls_options.username = Some(value.to_string()),
            "tls-verify" => self.tls_verify = Some(parse_bool(key, value)?),
            "shared" => self.shared = Some(parse_bool(key, value)?),
            "retry" => self.retry = parse_int::<u32>(key, value)?,
            "timeout" => self.timeout = Some(parse_delay(key, value)?).filter(|t| !t.is_zero()),
            "dynamic-export" => self.dynamic_export = parse_bool(key, value)?,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown parameter '{key}' (see nbdforge nbd --help for the parameters)"
                )))
            }
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let given = [
            self.uri.is_some(),
            self.socket.is_some(),
            self.hostname.is_some(),
            self.vsock.is_some(),
            !self.command.is_empty(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(Error::invalid("exactly one of uri=, socket=, hostname=, vsock= or command= is required"));
        }
        if self.port.is_some() && self.hostname.is_none() && self.vsock.is_none() {
            return Err(Error::invalid("port= goes with hostname= or vsock= only"));
        }
        let mut tls_required = false;
        let (target, name) = if let Some(uri) = &self.uri {
            if self.export.is_some() {
                return Err(Error::invalid(format!(
                    "export= cannot be used with uri={uri}: put the export in the URI"
                )));
            }
            let parsed = parse_uri(uri)?;
            tls_required = parsed.tls;
            if !self.dynamic_export {
                self.export = Some(parsed.export);
            }
            if let Some(file) = parsed.psk_file {
                self.tls_options.psk_file.get_or_insert(file);
            }
            if let Some(user) = parsed.username {
                self.tls_options.username.get_or_insert(user);
            }
            (Target::Address(parsed.address), uri.clone())
        } else if let Some(socket) = &self.socket {
            (Target::Address(Address::Unix(socket.clone())), format!("socket {}", socket.display()))
        } else if let Some(host) = &self.hostname {
            let port = match self.port.as_deref() {
                None | Some("nbd") => NBD_PORT,
                Some(p) => parse_int::<u16>("port", p)?,
            };
            (Target::Address(Address::Tcp { host: host.clone(), port }), format!("{host}:{port}"))
        } else if let Some(cid) = self.vsock {
            let port = self.port.as_deref().map(|p| parse_int::<u32>("port", p)).transpose()?;
            let port = port.unwrap_or(u32::from(NBD_PORT));
            (Target::Address(Address::Vsock { cid, port }), format!("vsock {cid}:{port}"))
        } else {
            (Target::Command(self.command.clone()), format!("command {}", self.command[0]))
        };
        let is_command = matches!(target, Target::Command(_));
        let shared = *self.shared.get_or_insert(is_command);
        if self.dynamic_export && (shared || self.export.is_some()) {
            return Err(Error::invalid(
                "dynamic-export=true cannot be used with shared=true, export= or command= (each client opens its own export)",
            ));
        }
        if is_command && !shared {
            return Err(Error::invalid("command= needs shared=true: the child serves one connection"));
        }
        let any_tls_option = self.tls_options.psk_file.is_some()
            || self.tls_options.certificates.is_some()
            || self.tls_options.username.is_some()
            || self.tls_verify.is_some();
        let tls = match (self.tls, tls_required) {
            (Some(ClientTls::Off), true) => {
                return Err(Error::invalid("tls=off cannot be used with an nbds:// URI, which requires TLS"))
            }
            (_, true) => ClientTls::Require,
            (Some(t), false) => t,
            (None, false) if any_tls_option => ClientTls::On,
            (None, false) => ClientTls::Off,
        };
        self.tls = Some(tls);
        if tls != ClientTls::Off {
            self.tls_options.verify = self.tls_verify.unwrap_or(true);
            self.tls_client = Some(Arc::new(TlsClient::new(&self.tls_options).map_err(Error::invalid)?));
        }
        self.target = Some(target);
        self.name = name;
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        ["libnbd_tls", "libnbd_uri", "libnbd_vsock", "libnbd_dynamic_list"]
            .iter()
            .map(|k| (k.to_string(), "1".to_string()))
            .collect()
    }

    fn cleanup(&self) {
        if let Some(remote) = self.shared_remote.lock().unwrap_or_else(|e| e.into_inner()).take() {
            remote.disconnect();
        }
        if let Some(mut captive) = self.captive.lock().unwrap_or_else(|e| e.into_inner()).take() {
            captive.stop();
        }
    }
}

impl NbdPlugin {
    /// Where the server below is now.
    fn address(&self) -> Result<Address> {
        Ok(match &self.target {
            Some(Target::Address(a)) => a.clone(),
            Some(Target::Command(_)) => match self.captive.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                Some(c) => match c.exited() {
                    Some(why) => return Err(Error::io(format!("{}: {why}", self.name))),
                    None => Address::Unix(c.socket.clone()),
                },
                None => return Err(Error::io("the command's server is not running")),
            },
            None => return Err(Error::invalid("opened before config_complete")),
        })
    }

    /// Connects to the server below for the export `export`, trying `retry` more times.
    fn connect(&self, export: &str) -> Result<Arc<Remote>> {
        let address = self.address()?;
        let config = ClientConfig { tls: self.tls.unwrap_or(ClientTls::Off), ..ClientConfig::new(export) };
        let mut attempt = 0;
        loop {
            match Remote::connect(&self.name, &address, config.clone(), self.tls_client.as_deref(), self.timeout) {
                Ok(r) => return Ok(r),
                Err(e) if attempt < self.retry => {
                    tracing::debug!("nbd: {}; retrying", e.message);
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Plugin for NbdPlugin {
    /// With dynamic-export=true, the server below's own list (as nbdkit does with a libnbd that
    /// can list); otherwise the one export every client gets.
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        if !self.dynamic_export {
            return Ok(vec![Export::named(self.default_export(readonly, tls)?)]);
        }
        let config = ClientConfig { tls: self.tls.unwrap_or(ClientTls::Off), ..ClientConfig::new("") };
        let list = Remote::list(&self.name, &self.address()?, config, self.tls_client.as_deref())
            .map_err(|e| Error::new(e.errno, format!("nbd: {}", e.message)))?;
        Ok(list.into_iter().map(|(name, description)| Export { name, description }).collect())
    }

    fn after_fork(&self) -> Result<()> {
        if let Some(Target::Command(argv)) = &self.target {
            *self.captive.lock().unwrap_or_else(|e| e.into_inner()) = Some(Captive::start(argv)?);
        }
        if self.shared == Some(true) {
            let remote = self.connect(self.export.as_deref().unwrap_or(""))?;
            *self.shared_remote.lock().unwrap_or_else(|e| e.into_inner()) = Some(remote);
        }
        Ok(())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let export = if self.dynamic_export { args.export_name.as_str() } else { self.export.as_deref().unwrap_or("") };
        let connect = || {
            self.connect(export).map_err(|e| {
                // The client only gets an error code; the reason belongs in the log, as in nbdkit.
                tracing::error!("nbd: {}", e.message);
                Error::new(e.errno, format!("nbd: {}", e.message))
            })
        };
        if self.shared != Some(true) {
            return Ok(Box::new(NbdHandle { remote: connect()?, owned: true }));
        }
        let mut shared = self.shared_remote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(remote) = shared.as_ref().filter(|r| !r.is_dead()) {
            return Ok(Box::new(NbdHandle { remote: remote.clone(), owned: false }));
        }
        // The shared connection broke: the clients that still hold it get EIO, and this one
        // (a new client, or the retry filter reopening) makes a new one for everybody after it.
        let remote = connect()?;
        *shared = Some(remote.clone());
        Ok(Box::new(NbdHandle { remote, owned: false }))
    }
}

/// One client's view of a connection below (its own, or the shared one).
struct NbdHandle {
    remote: Arc<Remote>,
    owned: bool,
}

impl Drop for NbdHandle {
    fn drop(&mut self) {
        if self.owned {
            self.remote.disconnect();
        }
    }
}

impl NbdHandle {
    fn export(&self) -> &ServerExport {
        self.remote.export()
    }

    fn has(&self, flag: u16) -> bool {
        self.export().has(flag)
    }

    fn max_io(&self) -> u64 {
        self.export().block_size.map_or(DEFAULT_MAX_IO, |b| u64::from(b.2).min(DEFAULT_MAX_IO))
    }

    /// The longest effect length one request of a length-only command may carry.
    fn max_effect(&self) -> u64 {
        if self.export().extended {
            u64::MAX
        } else {
            COMPACT_MAX
        }
    }

    /// Sends `kind` over `[offset, offset + count)` in as many requests as the headers need.
    fn ranged(&self, kind: u16, flags: u16, count: u64, offset: u64) -> Result<()> {
        let max = self.max_effect();
        let mut done = 0;
        while done < count {
            let n = (count - done).min(max);
            self.remote.call(kind, flags, offset + done, n, &[])?;
            done += n;
        }
        Ok(())
    }
}

fn fua(flags: Flags) -> u16 {
    if flags.contains(Flags::FUA) {
        CMD_FLAG_FUA
    } else {
        0
    }
}

impl Handle for NbdHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.export().size)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(self.export().block_size.map(|(minimum, preferred, maximum)| BlockSize { minimum, preferred, maximum }))
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self.export().description.clone())
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let write = !self.has(FLAG_READ_ONLY);
        let flush = self.has(FLAG_SEND_FLUSH);
        Ok(Capabilities {
            write,
            flush,
            rotational: self.has(FLAG_ROTATIONAL),
            trim: write && self.has(FLAG_SEND_TRIM),
            zero: match (write, self.has(FLAG_SEND_WRITE_ZEROES)) {
                (false, _) => Support::None,
                (true, true) => Support::Native,
                (true, false) => Support::Emulate,
            },
            fast_zero: self.has(FLAG_SEND_WRITE_ZEROES) && self.has(FLAG_SEND_FAST_ZERO),
            fua: match (self.has(FLAG_SEND_FUA), flush) {
                (true, _) => Support::Native,
                (false, true) => Support::Emulate,
                (false, false) => Support::None,
            },
            multi_conn: self.has(FLAG_CAN_MULTI_CONN),
            extents: self.export().base_allocation.is_some(),
            cache: if self.has(FLAG_SEND_CACHE) { Support::Native } else { Support::None },
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let max = self.max_io() as usize;
        let mut at = 0;
        for piece in buf.chunks_mut(max) {
            let answer = self.remote.call(CMD_READ, 0, offset + at, piece.len() as u64, &[])?;
            piece.copy_from_slice(&answer.data);
            at += piece.len() as u64;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let max = self.max_io() as usize;
        let mut at = 0;
        for piece in buf.chunks(max) {
            self.remote.call(CMD_WRITE, fua(flags), offset + at, piece.len() as u64, piece)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.remote.call(CMD_FLUSH, 0, 0, 0, &[]).map(|_| ())
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.ranged(CMD_TRIM, fua(flags), count, offset)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let mut wire = fua(flags);
        if !flags.contains(Flags::MAY_TRIM) {
            wire |= CMD_FLAG_NO_HOLE;
        }
        if flags.contains(Flags::FAST_ZERO) {
            wire |= CMD_FLAG_FAST_ZERO;
        }
        self.ranged(CMD_WRITE_ZEROES, wire, count, offset)
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.ranged(CMD_CACHE, 0, count, offset)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let wire = if flags.contains(Flags::REQ_ONE) { CMD_FLAG_REQ_ONE } else { 0 };
        let length = count.min(self.max_effect());
        let answer = self.remote.call(CMD_BLOCK_STATUS, wire, offset, length, &[])?;
        let mut at = offset;
        for (len, state) in answer.runs {
            if len == 0 || extents.is_full() {
                break;
            }
            extents.add(at, len, state & (HOLE | ZERO))?;
            at = at.saturating_add(len);
        }
        if at == offset {
            return Err(Error::io(format!(
                "nbd: {}: NBD_CMD_BLOCK_STATUS: the server sent no extents",
                self.remote_name()
            )));
        }
        Ok(())
    }
}

impl NbdHandle {
    fn remote_name(&self) -> &str {
        self.remote.name()
    }
}

const HOLE: u32 = nbdforge_api::extents::HOLE;
const ZERO: u32 = nbdforge_api::extents::ZERO;

/// What an NBD URI says.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUri {
    address: Address,
    export: String,
    tls: bool,
    psk_file: Option<PathBuf>,
    username: Option<String>,
}

/// Parses `nbd[s]://[user@]host[:port][/export]`, `nbd[s]+unix:///[export]?socket=PATH` and
/// `nbd[s]+vsock://cid[:port][/export]`, with the `tls-psk-file=` query of the NBD URI spec.
fn parse_uri(uri: &str) -> Result<ParsedUri> {
    let bad = |why: &str| Error::invalid(format!("uri={uri}: {why}"));
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("not a URI (expected nbd://...)"))?;
    let (tls, transport) = match scheme {
        "nbd" => (false, "tcp"),
        "nbds" => (true, "tcp"),
        "nbd+unix" => (false, "unix"),
        "nbds+unix" => (true, "unix"),
        "nbd+vsock" => (false, "vsock"),
        "nbds+vsock" => (true, "vsock"),
        _ => return Err(bad("unknown scheme (nbd, nbds, nbd+unix, nbds+unix, nbd+vsock)")),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
    let (username, host_port) = match authority.rsplit_once('@') {
        Some((user, hp)) => (Some(percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?), hp),
        None => (None, authority),
    };
    let mut socket = None;
    let mut psk_file = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| bad("bad %-escape in the query"))?;
        match k {
            "socket" => socket = Some(PathBuf::from(v)),
            "tls-psk-file" => psk_file = Some(PathBuf::from(v)),
            // Other queries (tls-certificates, tls-verify-peer...) are for the parameters instead.
            _ => {}
        }
    }
    let split_port = |hp: &str| -> (String, Option<String>) {
        if let Some(v6) = hp.strip_prefix('[') {
            let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
            (host.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match hp.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.to_string())),
                None => (hp.to_string(), None),
            }
        }
    };
    let address = match transport {
        "unix" => {
            if !host_port.is_empty() {
                return Err(bad("a Unix socket URI has no host (nbd+unix:///export?socket=PATH)"));
            }
            Address::Unix(socket.ok_or_else(|| bad("the socket=PATH query is required"))?)
        }
        "vsock" => {
            let (cid, port) = split_port(host_port);
            let cid = parse_int::<u32>("uri cid", &cid).map_err(|e| bad(&e.message))?;
            let port = port.map(|p| parse_int::<u32>("uri port", &p)).transpose().map_err(|e| bad(&e.message))?;
            Address::Vsock { cid, port: port.unwrap_or(u32::from(NBD_PORT)) }
        }
        _ => {
            let (host, port) = split_port(host_port);
            let port = port.filter(|p| !p.is_empty()).map(|p| parse_int::<u16>("uri port", &p)).transpose();
            let port = port.map_err(|e| bad(&e.message))?.unwrap_or(NBD_PORT);
            Address::Tcp { host: if host.is_empty() { "localhost".into() } else { host }, port }
        }
    };
    Ok(ParsedUri { address, export, tls, psk_file, username })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = parse_uri("nbd://example.com:10810/my%20disk").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "example.com".into(), port: 10810 });
        assert_eq!((u.export.as_str(), u.tls), ("my disk", false));
        let u = parse_uri("nbds://alice@[::1]/").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "::1".into(), port: 10809 });
        assert!(u.tls && u.username.as_deref() == Some("alice"));
        let u = parse_uri("nbd+unix:///e?socket=/tmp/s&tls-psk-file=/k").unwrap();
        assert_eq!(u.address, Address::Unix("/tmp/s".into()));
        assert_eq!((u.export.as_str(), u.psk_file), ("e", Some(PathBuf::from("/k"))));
        assert_eq!(parse_uri("nbd+vsock://2:99").unwrap().address, Address::Vsock { cid: 2, port: 99 });
        for bad in ["http://x/", "nbd+unix:///e", "nbd://h:port/", "nbd://h/%zz", "nbd+unix://host/?socket=/s"] {
            let e = parse_uri(bad).unwrap_err();
            assert!(e.message.starts_with(&format!("uri={bad}: ")), "{}", e.message);
        }
    }

    fn configured(params: &[(&str, &str)]) -> Result<NbdPlugin> {
        let mut p = NbdPlugin::default();
        for (k, v) in params {
            p.config(k, v)?;
        }
        p.config_complete()?;
        Ok(p)
    }

    #[test]
    fn parameter_rules() {
        let e = |params: &[(&str, &str)]| configured(params).err().expect("refused").message;
        assert!(e(&[]).contains("exactly one of"));
        assert!(e(&[("socket", "/s"), ("hostname", "h")]).contains("exactly one of"));
        assert!(e(&[("uri", "nbd://h/x"), ("export", "y")]).contains("export= cannot be used with uri="));
        assert!(e(&[("socket", "/s"), ("port", "1")]).contains("port="));
        assert!(e(&[("socket", "/s"), ("dynamic-export", "true"), ("shared", "true")]).contains("dynamic-export"));
        assert!(e(&[("command", "qemu-nbd"), ("shared", "false")]).contains("shared=true"));
        assert!(e(&[("uri", "nbds://h/"), ("tls", "off")]).contains("tls=off"));
        assert!(e(&[("arg", "x")]).contains("arg= must follow command="));
        assert!(e(&[("socket", "/s"), ("tls", "maybe")]).contains("tls=maybe"));
        let p = configured(&[("command", "qemu-nbd"), ("arg", "-f")]).unwrap();
        assert_eq!(p.shared, Some(true));
        assert_eq!(p.target, Some(Target::Command(vec!["qemu-nbd".into(), "-f".into()])));
        let p = configured(&[("hostname", "h"), ("port", "10900")]).unwrap();
        assert_eq!(p.target, Some(Target::Address(Address::Tcp { host: "h".into(), port: 10900 })));
        assert_eq!((p.shared, p.tls), (Some(false), Some(ClientTls::Off)));
    }
}
