//! `-L/--list`: `nbdforge-img` as a client, printing what a server offers in qemu-nbd's layout.
//!
//! One connection asks, in turn: STARTTLS (with `--tls-creds`), NBD_OPT_LIST (a server that
//! refuses it is asked about the default export alone), extended headers or else structured
//! replies, then for each export NBD_OPT_INFO (size, flags, block sizes) and
//! NBD_OPT_LIST_META_CONTEXT (every context; and, if none was in the `qemu:` namespace, once more
//! for `qemu:`, as qemu does). It ends with NBD_OPT_ABORT.
//!
//! The server is not trusted: option replies are limited in size and malformed ones are errors
//! saying what was sent.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use nbdforge_protocol::client::{reply_name, MAX_LISTED_EXPORTS, MAX_OPTION_REPLY};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::wire::Cursor;
use nbdforge_server::tls::{TlsClient, TlsStream};

/// Where the server is.
pub enum Address {
    /// `-b HOST -p PORT`.
    Tcp(String, String),
    /// `-k PATH`.
    Unix(std::path::PathBuf),
}

/// What the server said about one export.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: Option<String>,
    pub size: u64,
    pub flags: u16,
    pub block_size: Option<(u32, u32, u32)>,
    pub extended: bool,
    pub contexts: Vec<String>,
}

enum Conn {
    Plain(File),
    Tls(TlsStream),
    Gone,
}

impl Conn {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Plain(f) => f,
            Conn::Tls(t) => t,
            Conn::Gone => unreachable!("the connection is only gone during STARTTLS"),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

struct Client {
    conn: Conn,
}

/// One option reply: its type and data.
struct Reply {
    kind: u32,
    data: Vec<u8>,
}

impl Client {
    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<(), String> {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.conn.io().write_all(&m).map_err(|e| format!("sending option {option}: {e}"))
    }

    fn read(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; n];
        self.conn.io().read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
            _ => format!("reading from the server: {e}"),
        })?;
        Ok(buf)
    }

    fn reply(&mut self, option: u32) -> Result<Reply, String> {
        let header = self.read(20)?;
        let mut c = Cursor::new(&header);
        let (magic, opt, kind, len) = (c.u64(), c.u32(), c.u32(), c.u32());
        let (Some(magic), Some(opt), Some(kind), Some(len)) = (magic, opt, kind, len) else {
            return Err("short option reply".into());
        };
        if magic != OPTION_REPLY_MAGIC {
            return Err(format!("bad option reply magic 0x{magic:016x}"));
        }
        if opt != option {
            return Err(format!("the server replied to option {opt} while option {option} was asked"));
        }
        if len > MAX_OPTION_REPLY {
            return Err(format!("option reply of {len} bytes to option {option} is over the limit"));
        }
        Ok(Reply { kind, data: self.read(len as usize)? })
    }
}

/// A system error as `strerror` words it, without Rust's "(os error N)".
fn plain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

fn is_error(kind: u32) -> bool {
    kind & 0x8000_0000 != 0
}

fn refused(what: &str, r: &Reply) -> String {
    let message = String::from_utf8_lossy(&r.data);
    if message.is_empty() {
        format!("{what}: {}", reply_name(r.kind))
    } else {
        format!("{what}: {}: {message}", reply_name(r.kind))
    }
}

/// Connects and asks the server about every export.
pub fn list(address: &Address, tls: Option<(&TlsClient, Option<&str>)>) -> Result<Vec<ExportInfo>, String> {
    let fd: OwnedFd = match address {
        Address::Tcp(host, port) => std::net::TcpStream::connect(format!("{host}:{port}"))
            .or_else(|e| {
                // An IPv6 literal needs brackets to be joined to a port.
                std::net::TcpStream::connect(format!("[{host}]:{port}")).map_err(|_| e)
            })
            .map_err(|e| format!("Failed to connect to '{host}:{port}': {}", plain(&e)))?
            .into(),
        Address::Unix(path) => std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| format!("Failed to connect to '{}': {}", path.display(), plain(&e)))?
            .into(),
    };
    let mut c = Client { conn: Conn::Plain(File::from(fd)) };
    let greeting = c.read(18)?;
    let mut g = Cursor::new(&greeting);
    let (magic, style, flags) = (g.u64().unwrap_or(0), g.u64().unwrap_or(0), g.u16().unwrap_or(0));
    if magic != NBDMAGIC {
        return Err(format!("the server sent 0x{magic:016x} where the NBD magic belongs: not an NBD server"));
    }
    if style != IHAVEOPT {
        return Err("Server does not support export lists: it speaks the oldstyle protocol".into());
    }
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err("Server does not support export lists: it does not speak fixed newstyle".into());
    }
    let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
    if flags & FLAG_NO_ZEROES != 0 {
        client_flags |= FLAG_C_NO_ZEROES;
    }
    c.conn.io().write_all(&client_flags.to_be_bytes()).map_err(|e| format!("sending flags: {e}"))?;

    if let Some((tls, hostname)) = tls {
        c.send_option(OPT_STARTTLS, &[])?;
        let r = c.reply(OPT_STARTTLS)?;
        if r.kind != REP_ACK {
            return Err(refused("the server refused TLS", &r));
        }
        let Conn::Plain(file) = std::mem::replace(&mut c.conn, Conn::Gone) else { unreachable!("TLS starts once") };
        let stream = tls.connect(OwnedFd::from(file), hostname).map_err(|e| format!("TLS handshake: {e}"))?;
        c.conn = Conn::Tls(stream);
    }

    let mut exports: Vec<ExportInfo> = Vec::new();
    c.send_option(OPT_LIST, &[])?;
    loop {
        let r = c.reply(OPT_LIST)?;
        match r.kind {
            REP_SERVER => {
                let mut d = Cursor::new(&r.data);
                let name = d.string32().ok_or("malformed NBD_REP_SERVER reply")?.to_string();
                let description = d.string(d.remaining()).map(str::to_string).filter(|s| !s.is_empty());
                if exports.len() < MAX_LISTED_EXPORTS {
                    exports.push(ExportInfo { name, description, ..ExportInfo::default() });
                }
            }
            REP_ACK => break,
            // Without lists, the default export is all that can be asked about.
            REP_ERR_UNSUP => {
                exports = vec![ExportInfo::default()];
                break;
            }
            k if is_error(k) => return Err(refused("the server refused to list its exports", &r)),
            k => return Err(format!("unexpected reply {k} to NBD_OPT_LIST")),
        }
    }

    let mut structured = false;
    let mut extended = false;
    for option in [OPT_EXTENDED_HEADERS, OPT_STRUCTURED_REPLY] {
        c.send_option(option, &[])?;
        let r = c.reply(option)?;
        if r.kind == REP_ACK {
            structured = true;
            extended = option == OPT_EXTENDED_HEADERS;
            break;
        }
        if !is_error(r.kind) {
            return Err(format!("unexpected reply {} to option {option}", r.kind));
        }
    }

    for e in &mut exports {
        info(&mut c, e)?;
        e.extended = extended;
        if structured {
            e.contexts = meta_contexts(&mut c, &e.name, None)?;
            if !e.contexts.is_empty() && !e.contexts.iter().any(|n| n.starts_with("qemu:")) {
                let more = meta_contexts(&mut c, &e.name, Some("qemu:"))?;
                e.contexts.extend(more);
            }
        }
    }
    // Best effort: the listing is complete whatever the server does with the abort.
    let _ = c.send_option(OPT_ABORT, &[]);
    Ok(exports)
}

fn info(c: &mut Client, e: &mut ExportInfo) -> Result<(), String> {
    let mut d = Vec::new();
    d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
    d.extend_from_slice(e.name.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    c.send_option(OPT_INFO, &d)?;
    let mut have_size = false;
    loop {
        let r = c.reply(OPT_INFO)?;
        match r.kind {
            REP_INFO => {
                let mut i = Cursor::new(&r.data);
                match i.u16() {
                    Some(INFO_EXPORT) => match (i.u64(), i.u16()) {
                        (Some(size), Some(flags)) => {
                            (e.size, e.flags, have_size) = (size, flags, true);
                        }
                        _ => return Err(format!("malformed NBD_INFO_EXPORT of {} bytes", r.data.len())),
                    },
                    Some(INFO_BLOCK_SIZE) => match (i.u32(), i.u32(), i.u32()) {
                        (Some(min), Some(pref), Some(max)) => e.block_size = Some((min, pref, max)),
                        _ => return Err(format!("malformed NBD_INFO_BLOCK_SIZE of {} bytes", r.data.len())),
                    },
                    _ => {}
                }
            }
            REP_ACK if have_size => return Ok(()),
            REP_ACK => return Err(format!("export '{}': the server sent no size", e.name)),
            k if is_error(k) => return Err(refused(&format!("export '{}'", e.name), &r)),
            k => return Err(format!("unexpected reply {k} to NBD_OPT_INFO")),
        }
    }
}

fn meta_contexts(c: &mut Client, export: &str, query: Option<&str>) -> Result<Vec<String>, String> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    match query {
        Some(q) => {
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        None => d.extend_from_slice(&0u32.to_be_bytes()),
    }
    c.send_option(OPT_LIST_META_CONTEXT, &d)?;
    let mut names = Vec::new();
    loop {
        let r = c.reply(OPT_LIST_META_CONTEXT)?;
        match r.kind {
            REP_META_CONTEXT => {
                let mut m = Cursor::new(&r.data);
                let _id = m.u32().ok_or("malformed NBD_REP_META_CONTEXT")?;
                names.push(String::from_utf8_lossy(&r.data[4..]).into_owned());
            }
            REP_ACK => return Ok(names),
            // A server without meta contexts simply has none to list.
            k if is_error(k) => return Ok(names),
            k => return Err(format!("unexpected reply {k} to NBD_OPT_LIST_META_CONTEXT")),
        }
    }
}

/// The listing in qemu-nbd's layout.
pub fn format(exports: &[ExportInfo]) -> String {
    const NAMES: [(u16, &str); 12] = [
        (FLAG_READ_ONLY, "readonly"),
        (FLAG_SEND_FLUSH, "flush"),
        (FLAG_SEND_FUA, "fua"),
        (FLAG_ROTATIONAL, "rotational"),
        (FLAG_SEND_TRIM, "trim"),
        (FLAG_SEND_WRITE_ZEROES, "zeroes"),
        (FLAG_SEND_DF, "df"),
        (FLAG_CAN_MULTI_CONN, "multi"),
        (FLAG_SEND_RESIZE, "resize"),
        (FLAG_SEND_CACHE, "cache"),
        (FLAG_SEND_FAST_ZERO, "fast-zero"),
        (FLAG_BLOCK_STAT_PAYLOAD, "block-status-payload"),
    ];
    let mut s = format!("exports available: {}\n", exports.len());
    for e in exports {
        s += &format!(" export: '{}'\n", e.name);
        if let Some(d) = &e.description {
            s += &format!("  description: {d}\n");
        }
        if e.flags & FLAG_HAS_FLAGS != 0 {
            s += &format!("  size:  {}\n  flags: 0x{:x} (", e.size, e.flags);
            for (bit, name) in NAMES {
                if e.flags & bit != 0 {
                    s += &format!(" {name}");
                }
            }
            s += " )\n";
        }
        if let Some((min, pref, max)) = e.block_size.filter(|b| b.0 != 0) {
            s += &format!("  min block: {min}\n  opt block: {pref}\n  max block: {max}\n");
        }
        s += &format!("  transaction size: {}\n", if e.extended { "64-bit" } else { "32-bit" });
        if !e.contexts.is_empty() {
            s += &format!("  available meta contexts: {}\n", e.contexts.len());
            for c in &e.contexts {
                s += &format!("   {c}\n");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_layout() {
        let e = ExportInfo {
            name: "disk".into(),
            description: Some("a disk".into()),
            size: 1048576,
            flags: 0x58f,
            block_size: Some((1, 4096, 33554432)),
            extended: true,
            contexts: vec!["base:allocation".into(), "qemu:allocation-depth".into()],
        };
        assert_eq!(
            format(&[e]),
            "exports available: 1\n export: 'disk'\n  description: a disk\n  size:  1048576\n  \
             flags: 0x58f ( readonly flush fua df multi cache )\n  min block: 1\n  opt block: 4096\n  \
             max block: 33554432\n  transaction size: 64-bit\n  available meta contexts: 2\n   \
             base:allocation\n   qemu:allocation-depth\n"
        );
    }
}
