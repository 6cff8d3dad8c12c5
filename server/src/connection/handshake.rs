//! The handshake of one connection: drives the sans-io negotiation of `nbdforge-protocol` with
//! real I/O under one deadline, and answers its questions about exports from the backend stack
//! (which exports exist, what one looks like, which meta contexts it offers).
//!
//! The deadline (`--timeout`) covers the whole handshake: every read is given only the time that
//! is left, so a client trickling option data a byte at a time is cut off like a silent one.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use nbdforge_api::{Connection, Error, Handle, OpenArgs, Support};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::{
    oldstyle_greeting, ExportInfo, Exports, Negotiated, Negotiation, NegotiationConfig, OptionError, Step, TlsPolicy,
};
use tracing::{debug, warn};

use super::MAX_REQUEST;
use crate::server::Shared;
use crate::transport::Stream;
use crate::TlsMode;

/// What a finished handshake hands to the transmission phase.
pub(super) struct Handshake {
    pub stream: Stream,
    pub negotiated: Negotiated,
    pub handle: Box<dyn Handle>,
}

/// Reads exactly `buf.len()` bytes before `deadline`, giving each read only the time left.
fn read_by(stream: &mut Stream, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake took too long"));
            }
            stream.set_read_timeout(Some(left))?;
        }
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed the connection")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake took too long"))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the handshake. Returns `None` when the client left (or asked for nothing to serve).
pub(super) fn negotiate(shared: &Shared, mut stream: Stream, conn: &Arc<Connection>) -> io::Result<Option<Handshake>> {
    let deadline = shared.config.handshake_timeout.map(|t| Instant::now() + t);
    let mut exports = ConnExports { shared, conn, tls: false, opened: None, spare: None };
    let negotiated = if shared.config.oldstyle {
        let info = exports.open("", true).map_err(|e| io::Error::other(e.message))?;
        stream.write_all(&oldstyle_greeting(info.size, info.flags))?;
        Negotiated { export: info, structured: false, extended: false, contexts: Vec::new() }
    } else {
        let cfg = &shared.config;
        let tls = match cfg.tls_mode {
            TlsMode::Off => TlsPolicy::Off,
            TlsMode::On => TlsPolicy::On,
            TlsMode::Require => TlsPolicy::Require,
        };
        let mut neg = Negotiation::new(NegotiationConfig {
            tls,
            structured_replies: cfg.structured_replies,
            meta_contexts: cfg.meta_contexts,
            handshake_flags: cfg.mask_handshake,
            ..Default::default()
        });
        stream.write_all(&neg.greeting())?;
        let mut flags = [0u8; 4];
        read_by(&mut stream, &mut flags, deadline)?;
        neg.client_flags(flags).map_err(io::Error::other)?;
        let mut data = Vec::new();
        loop {
            let mut header = [0u8; 16];
            read_by(&mut stream, &mut header, deadline)?;
            let header = neg.option_header(&header).map_err(io::Error::other)?;
            data.clear();
            if header.discard {
                drain(&mut stream, u64::from(header.length), deadline)?;
            } else {
                // At most the option limit (64 KiB), checked by option_header.
                data.resize(header.length as usize, 0);
                read_by(&mut stream, &mut data, deadline)?;
            }
            match neg.option(header, &data, &mut exports) {
                Step::Reply(bytes) => stream.write_all(&bytes)?,
                Step::StartTls(bytes) => {
                    stream.write_all(&bytes)?;
                    let Some(tls) = shared.config.tls.as_ref() else {
                        return Err(io::Error::other("TLS is enabled but no credentials are loaded"));
                    };
                    let (upgraded, peer) = stream.start_tls(tls).inspect_err(|e| {
                        warn!("{}: TLS handshake failed: {e}", conn.client().peer_name());
                    })?;
                    stream = upgraded;
                    neg.tls_started();
                    exports.tls = true;
                    conn.set_tls(peer);
                    exports.opened = None;
                    // Opened without TLS: a client asking again now must get a fresh open.
                    exports.drop_spare();
                }
                Step::Close(bytes, why) => {
                    stream.write_all(&bytes)?;
                    debug!("{}: {why}", conn.client().peer_name());
                    return Ok(None);
                }
                Step::Transmission(bytes, negotiated) => {
                    stream.write_all(&bytes)?;
                    break negotiated;
                }
            }
        }
    };
    if deadline.is_some() {
        stream.set_read_timeout(None)?;
    }
    let Some(handle) = exports.opened.take() else { return Ok(None) };
    Ok(Some(Handshake { stream, negotiated, handle }))
}

/// Reads and throws away `len` bytes of option data without holding them in memory.
fn drain(stream: &mut Stream, mut len: u64, deadline: Option<Instant>) -> io::Result<()> {
    let mut scratch = [0u8; 16 << 10];
    while len > 0 {
        let n = len.min(scratch.len() as u64) as usize;
        read_by(stream, &mut scratch[..n], deadline)?;
        len -= n as u64;
    }
    Ok(())
}

/// The backend seen from the handshake: which exports exist and what they look like.
struct ConnExports<'a> {
    shared: &'a Shared,
    conn: &'a Arc<Connection>,
    tls: bool,
    /// The handle opened by GO or EXPORT_NAME, kept for the transmission phase.
    opened: Option<Box<dyn Handle>>,
    /// A handle opened to answer INFO or a meta-context question, with the name asked for and
    /// the export's canonical name: kept for the GO that usually follows for the same export,
    /// so that the layers are not opened twice (a proxy would make two connections below).
    spare: Option<(String, Box<dyn Handle>, String)>,
}

impl Drop for ConnExports<'_> {
    fn drop(&mut self) {
        self.drop_spare();
    }
}

impl ConnExports<'_> {
    fn option_error(e: Error) -> OptionError {
        let reply = match e.errno {
            libc::EPERM | libc::EACCES => REP_ERR_POLICY,
            libc::ESHUTDOWN => REP_ERR_SHUTDOWN,
            libc::ENOTSUP => REP_ERR_UNSUP,
            _ => REP_ERR_UNKNOWN,
        };
        OptionError::new(reply, e.message)
    }

    fn drop_spare(&mut self) {
        if let Some((_, handle, _)) = self.spare.take() {
            finalize(handle.as_ref(), self.conn);
        }
    }

    /// The spare handle if it was opened for `name`, or a newly opened one.
    fn spare_or_open(&mut self, name: &str) -> Result<(Box<dyn Handle>, String), OptionError> {
        match self.spare.take() {
            Some((asked, handle, canonical)) if asked == name => return Ok((handle, canonical)),
            Some((_, handle, _)) => finalize(handle.as_ref(), self.conn),
            None => {}
        }
        self.open_handle(name)
    }

    /// Opens the export `name` (`""` is the plugin's default export) for this connection.
    fn open_handle(&self, name: &str) -> Result<(Box<dyn Handle>, String), OptionError> {
        if self.shared.stopping() {
            return Err(OptionError::new(REP_ERR_SHUTDOWN, "the server is shutting down"));
        }
        let cfg = &self.shared.config;
        let backend = &self.shared.backend;
        let canonical = if name.is_empty() {
            backend.default_export(cfg.readonly, self.tls).map_err(Self::option_error)?
        } else {
            name.to_string()
        };
        let args = OpenArgs {
            readonly: cfg.readonly,
            export_name: canonical.clone(),
            tls: self.tls,
            conn: Arc::clone(self.conn),
        };
        // The client gets the message in its option reply, which most clients do not show, so
        // the log gets it too.
        let handle = backend.open(&args).map_err(|e| {
            tracing::error!("{}: opening export {canonical:?}: {}", self.conn.client().peer_name(), e.message);
            Self::option_error(e)
        })?;
        Ok((handle, canonical))
    }
}

impl Exports for ConnExports<'_> {
    fn list(&mut self) -> Result<Vec<(String, Option<String>)>, OptionError> {
        let list =
            self.shared.backend.list_exports(self.shared.config.readonly, self.tls).map_err(Self::option_error)?;
        Ok(list.into_iter().map(|e| (e.name, e.description)).collect())
    }

    fn open(&mut self, name: &str, keep: bool) -> Result<ExportInfo, OptionError> {
        let (handle, canonical) = self.spare_or_open(name)?;
        let info = describe(handle.as_ref(), canonical.clone(), self.shared.config.readonly);
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                finalize(handle.as_ref(), self.conn);
                return Err(Self::option_error(e));
            }
        };
        if keep {
            self.opened = Some(handle);
        } else {
            self.spare = Some((name.to_string(), handle, canonical));
        }
        Ok(info)
    }

    fn meta_contexts(&mut self, name: &str) -> Result<Vec<String>, OptionError> {
        let (handle, canonical) = self.spare_or_open(name)?;
        let contexts = handle.meta_contexts().map_err(Self::option_error);
        self.spare = Some((name.to_string(), handle, canonical));
        contexts
    }
}

/// Finalizes a handle before it is dropped, logging a failure (the client cannot be told).
pub(super) fn finalize(handle: &dyn Handle, conn: &Connection) {
    if let Err(e) = handle.finalize() {
        tracing::error!("{}: finalize: {}", conn.client().peer_name(), e.message);
    }
}

/// Size, transmission flags and block sizes of an open export.
fn describe(h: &dyn Handle, name: String, readonly: bool) -> nbdforge_api::Result<ExportInfo> {
    let caps = h.capabilities()?;
    let writable = !readonly && caps.write;
    let flags = [
        (true, FLAG_HAS_FLAGS),
        (!writable, FLAG_READ_ONLY),
        (caps.flush, FLAG_SEND_FLUSH),
        (writable && caps.fua != Support::None, FLAG_SEND_FUA),
        (caps.rotational, FLAG_ROTATIONAL),
        (writable && caps.trim, FLAG_SEND_TRIM),
        (writable && caps.zero != Support::None, FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO),
        (caps.multi_conn, FLAG_CAN_MULTI_CONN),
        (caps.cache != Support::None, FLAG_SEND_CACHE),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |acc, (_, flag)| acc | flag);
    // What the layers advertise goes to the client as it is (nbdkit's model): a maximum over the
    // server's own MAX_REQUEST is still refused per request, and alignment is the layers' to enforce.
    let block_size = match h.block_size()? {
        Some(b) => (b.minimum.max(1), b.preferred.max(b.minimum).max(1), b.maximum.max(b.minimum)),
        None => (1, 4096, MAX_REQUEST),
    };
    Ok(ExportInfo { name, size: h.get_size()?, flags, block_size, description: h.export_description()? })
}
