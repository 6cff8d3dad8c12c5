//! One client connection: the handshake (driving the sans-io negotiation with real I/O), then the
//! transmission phase.
//!
//! Transmission runs on `threads` workers per connection, leader/follower style: a worker takes the
//! read lock, reads one request (header and payload), lets go, runs it against the backend, then
//! takes the write lock and sends the reply in one vectored write. The worker that read a request
//! serves it, so there is no hand-off between threads, and replies go out in whatever order the
//! backend finishes.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use nbdforge_api::{ClientInfo, Error, Extents, Flags, Handle, OpenArgs, Support, ThreadModel};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::transmission::{block_status_payload, command_name, EXTENDED_REQUEST_LEN};
use nbdforge_protocol::{
    oldstyle_greeting, Command, ExportInfo, Exports, Negotiated, Negotiation, NegotiationConfig, OptionError,
    Refusal, Replies, ReplyHeader, Request, Session, Step, TlsPolicy,
};
use nix::sys::socket::MsgFlags;
use tracing::{debug, error, warn};

use crate::server::Shared;
use crate::transport::{write_all_vectored, Stream};
use crate::TlsMode;

/// The largest request the server accepts: payloads up to this are served, larger ones drained and
/// refused. Advertised as the maximum block size.
pub(crate) const MAX_REQUEST: u32 = 64 << 20;
/// Buffers bigger than this are given back after the request that needed them.
const KEEP_BUFFER: usize = 8 << 20;
/// Read-side buffer, so a burst of small requests costs one system call. Kept small because
/// whatever part of a large WRITE payload lands in it is copied once more on its way out.
const READ_BUFFER: usize = 16 << 10;

/// Serves one client to the end.
pub(crate) fn serve(shared: &Shared, stream: Stream, peer: String) {
    let mut exports = ConnExports::new(shared, peer);
    let (stream, negotiated) = match negotiate(shared, stream, &mut exports) {
        Ok((stream, Some(n))) => (stream, n),
        Ok((_, None)) => return,
        Err(e) => {
            debug!("{}: handshake ended: {e}", exports.client.peer);
            return;
        }
    };
    let Some(handle) = exports.opened.take() else { return };
    let socket = stream.plain_socket();
    let (read, write) = match stream.split() {
        Ok(halves) => halves,
        Err(e) => return warn!("{}: {e}", exports.client.peer),
    };
    let conn = Transmission {
        shared,
        handle: handle.as_ref(),
        session: Session::new(&negotiated),
        replies: Replies { structured: negotiated.structured, extended: negotiated.extended },
        reader: Mutex::new(Reader { input: BufReader::with_capacity(READ_BUFFER, read), done: false }),
        writer: Mutex::new(write),
        failed: AtomicBool::new(false),
        buffers: Mutex::new(Vec::new()),
        socket,
    };
    let threads = match shared.thread_model {
        ThreadModel::Parallel => shared.config.threads.max(1),
        _ => 1,
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(|| conn.worker());
        }
        conn.worker();
    });
    if let Ok(mut w) = conn.writer.lock() {
        let _ = w.flush();
    }
    debug!("{}: connection closed", exports.client.peer);
}

/// Runs the handshake. Returns the stream (a TLS one after STARTTLS) and, unless the client left,
/// what the transmission phase starts with.
fn negotiate(shared: &Shared, mut stream: Stream, exports: &mut ConnExports) -> io::Result<(Stream, Option<Negotiated>)> {
    let deadline = shared.config.handshake_timeout.map(|t| Instant::now() + t);
    let read = |stream: &mut Stream, buf: &mut [u8]| -> io::Result<()> {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake took too long"));
            }
            stream.set_read_timeout(Some(left))?;
        }
        stream.read_exact(buf)
    };
    let result = if shared.config.oldstyle {
        let info = exports.open("", true).map_err(|e| io::Error::other(e.message))?;
        stream.write_all(&oldstyle_greeting(info.size, info.flags))?;
        Some(Negotiated { export: info, structured: false, extended: false, base_allocation: false })
    } else {
        let tls = match shared.config.tls_mode {
            TlsMode::Off => TlsPolicy::Off,
            TlsMode::On => TlsPolicy::On,
            TlsMode::Require => TlsPolicy::Require,
        };
        let cfg = &shared.config;
        let mut neg = Negotiation::new(NegotiationConfig {
            tls,
            structured_replies: cfg.structured_replies,
            meta_contexts: cfg.meta_contexts,
            handshake_flags: cfg.mask_handshake,
            ..Default::default()
        });
        stream.write_all(&neg.greeting())?;
        let mut flags = [0u8; 4];
        read(&mut stream, &mut flags)?;
        neg.client_flags(flags).map_err(io::Error::other)?;
        let mut data = Vec::new();
        loop {
            let mut header = [0u8; 16];
            read(&mut stream, &mut header)?;
            let header = neg.option_header(&header).map_err(io::Error::other)?;
            data.clear();
            if header.discard {
                drain(&mut |b: &mut [u8]| read(&mut stream, b), header.length as u64)?;
            } else {
                data.resize(header.length as usize, 0);
                read(&mut stream, &mut data)?;
            }
            match neg.option(header, &data, exports) {
                Step::Reply(bytes) => stream.write_all(&bytes)?,
                Step::StartTls(bytes) => {
                    stream.write_all(&bytes)?;
                    let Some(tls) = shared.config.tls.as_ref() else {
                        return Err(io::Error::other("TLS is enabled but no credentials are loaded"));
                    };
                    let (upgraded, identity) = stream.start_tls(tls).inspect_err(|e| {
                        warn!("{}: TLS handshake failed: {e}", exports.client.peer);
                    })?;
                    stream = upgraded;
                    neg.tls_started();
                    exports.tls = true;
                    exports.client.tls_identity = identity;
                    exports.opened = None;
                }
                Step::Close(bytes, why) => {
                    stream.write_all(&bytes)?;
                    debug!("{}: {why}", exports.client.peer);
                    return Ok((stream, None));
                }
                Step::Transmission(bytes, negotiated) => {
                    stream.write_all(&bytes)?;
                    break Some(negotiated);
                }
            }
        }
    };
    if deadline.is_some() {
        stream.set_read_timeout(None)?;
    }
    Ok((stream, result))
}

/// Reads and throws away `len` bytes without holding them all in memory.
fn drain(read: &mut dyn FnMut(&mut [u8]) -> io::Result<()>, mut len: u64) -> io::Result<()> {
    let mut scratch = [0u8; 64 << 10];
    while len > 0 {
        let n = len.min(scratch.len() as u64) as usize;
        read(&mut scratch[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// The backend seen from the handshake: which exports exist and what they look like.
struct ConnExports<'a> {
    shared: &'a Shared,
    client: ClientInfo,
    tls: bool,
    /// The handle opened by GO or EXPORT_NAME, kept for the transmission phase.
    opened: Option<Box<dyn Handle>>,
}

impl<'a> ConnExports<'a> {
    fn new(shared: &'a Shared, peer: String) -> Self {
        ConnExports { shared, client: ClientInfo { peer, tls_identity: None }, tls: false, opened: None }
    }

    fn option_error(e: Error) -> OptionError {
        let reply = match e.errno {
            libc::EPERM | libc::EACCES => REP_ERR_POLICY,
            libc::ESHUTDOWN => REP_ERR_SHUTDOWN,
            libc::ENOENT => REP_ERR_UNKNOWN,
            libc::ENOTSUP => REP_ERR_UNSUP,
            _ => REP_ERR_UNKNOWN,
        };
        OptionError::new(reply, e.message)
    }
}

impl Exports for ConnExports<'_> {
    fn list(&mut self) -> Result<Vec<(String, Option<String>)>, OptionError> {
        let cfg = &self.shared.config;
        let backend = &self.shared.backend;
        let mut list = backend.list_exports(cfg.readonly, self.tls).map_err(Self::option_error)?;
        if let Some(name) = &cfg.export_name {
            let default = backend.default_export(cfg.readonly, self.tls).map_err(Self::option_error)?;
            for e in &mut list {
                if e.name.is_empty() || e.name == default {
                    e.name = name.clone();
                }
            }
        }
        Ok(list.into_iter().map(|e| (e.name, e.description)).collect())
    }

    fn open(&mut self, name: &str, keep: bool) -> Result<ExportInfo, OptionError> {
        if self.shared.stopping() {
            return Err(OptionError::new(REP_ERR_SHUTDOWN, "the server is shutting down"));
        }
        let cfg = &self.shared.config;
        let backend = &self.shared.backend;
        let is_default = name.is_empty() || cfg.export_name.as_deref() == Some(name);
        let (plugin_name, canonical) = if is_default {
            let default = backend.default_export(cfg.readonly, self.tls).map_err(Self::option_error)?;
            let canonical = cfg.export_name.clone().unwrap_or_else(|| default.clone());
            (default, canonical)
        } else {
            (name.to_string(), name.to_string())
        };
        let args = OpenArgs { readonly: cfg.readonly, export_name: &plugin_name, tls: self.tls, client: &self.client };
        let handle = backend.open(&args).map_err(Self::option_error)?;
        let info = describe(handle.as_ref(), canonical, cfg.readonly).map_err(Self::option_error)?;
        if keep {
            self.opened = Some(handle);
        }
        Ok(info)
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
    let block_size = match h.block_size()? {
        Some(b) => (b.minimum.max(1), b.preferred.max(b.minimum).max(1), b.maximum.min(MAX_REQUEST).max(b.minimum)),
        None => (1, 4096, MAX_REQUEST),
    };
    Ok(ExportInfo { name, size: h.get_size()?, flags, block_size, description: h.export_description()? })
}

struct Reader {
    input: BufReader<Box<dyn Read + Send>>,
    /// No more requests will be read: the client disconnected, or the stream broke.
    done: bool,
}

struct Transmission<'a> {
    shared: &'a Shared,
    handle: &'a dyn Handle,
    session: Session,
    replies: Replies,
    reader: Mutex<Reader>,
    writer: Mutex<Box<dyn Write + Send>>,
    failed: AtomicBool,
    /// The socket, for replies sent on it directly (see `read_borrowed` and `read_sendfile`);
    /// `None` for TLS and pipes.
    socket: Option<std::fs::File>,
    /// Request buffers, last freed first: a buffer is still in the CPU cache when the next request
    /// reuses it, where one buffer per worker would cycle through all of them.
    buffers: Mutex<Vec<Vec<u8>>>,
}

/// A request read off the wire, with its payload in the worker's buffer.
struct Incoming {
    req: Request,
    /// The payload was refused (over the limit) and drained.
    refused: Option<Refusal>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The NBD error for an errno from a backend.
fn wire_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => EPERM,
        libc::EIO => EIO,
        libc::ENOMEM => ENOMEM,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => ENOSPC,
        libc::EOVERFLOW => EOVERFLOW,
        libc::ENOTSUP => ENOTSUP,
        libc::ESHUTDOWN => ESHUTDOWN,
        _ => EINVAL,
    }
}

impl Transmission<'_> {
    fn worker(&self) {
        while let Some((incoming, mut buf)) = self.next_request() {
            let disconnect = incoming.req.kind == CMD_DISC;
            let req = incoming.req;
            // A panicking plugin fails its request, not the connection (which would leave the
            // client waiting for a reply that never comes).
            let run = std::panic::AssertUnwindSafe(|| self.dispatch(incoming, &mut buf));
            if std::panic::catch_unwind(run).is_err() {
                error!("{}: the backend panicked", command_name(req.kind));
                self.send_error(&req, EIO, "internal error in the backend");
            }
            if buf.capacity() <= KEEP_BUFFER {
                lock(&self.buffers).push(buf);
            }
            if disconnect {
                break;
            }
        }
    }

    /// Reads the next request and its payload into a buffer from the pool, or `None` when the
    /// connection is over.
    fn next_request(&self) -> Option<(Incoming, Vec<u8>)> {
        let mut rd = lock(&self.reader);
        if rd.done || self.failed.load(Ordering::Relaxed) {
            return None;
        }
        // Taken only now, so this request gets the buffer the last reply freed, still in cache.
        let mut buf = lock(&self.buffers).pop().unwrap_or_default();
        let result = self.read_request(&mut rd.input, &mut buf);
        match result {
            Ok(mut incoming) => {
                // Requests read before shutdown began are in flight and finish; later ones are
                // refused as the spec asks, so the client knows to disconnect.
                if self.shared.stopping() && incoming.refused.is_none() && incoming.req.kind != CMD_DISC {
                    let message = "the server is shutting down".to_string();
                    incoming.refused = Some(Refusal { errno: ESHUTDOWN, message });
                }
                if incoming.req.kind == CMD_DISC {
                    rd.done = true;
                }
                Some((incoming, buf))
            }
            Err(e) => {
                rd.done = true;
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    warn!("connection dropped: {e}");
                }
                None
            }
        }
    }

    fn read_request(&self, input: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<Incoming> {
        let mut header = [0u8; EXTENDED_REQUEST_LEN];
        let header = &mut header[..if self.session.extended { 32 } else { 28 }];
        input.read_exact(header)?;
        let req = Request::parse(header, self.session.extended).map_err(io::Error::other)?;
        let len = req.payload_len();
        let limit = if req.kind == CMD_WRITE { self.session.max_payload() } else { 64 << 10 };
        if len > limit {
            drain(&mut |b: &mut [u8]| input.read_exact(b), len)?;
            let message = format!("{}: payload of {len} bytes is over the limit of {limit}", command_name(req.kind));
            return Ok(Incoming { req, refused: Some(Refusal { errno: EINVAL, message }) });
        }
        let len = len as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        input.read_exact(&mut buf[..len])?;
        Ok(Incoming { req, refused: None })
    }

    fn send(&self, parts: &mut [IoSlice<'_>]) {
        let mut w = lock(&self.writer);
        if let Err(e) = write_all_vectored(w.as_mut(), parts) {
            self.reply_failed(e);
        }
    }

    /// A reply could not be written: the client is gone, and no more requests are read.
    fn reply_failed(&self, e: impl std::fmt::Display) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            debug!("writing a reply failed: {e}");
        }
    }

    fn send_error(&self, req: &Request, errno: u32, message: &str) {
        let mut out = Vec::with_capacity(64 + message.len());
        self.replies.error(&mut out, req.cookie, req.offset, errno, message);
        self.send(&mut [IoSlice::new(&out)]);
    }

    fn dispatch(&self, incoming: Incoming, buf: &mut Vec<u8>) {
        let Incoming { mut req, refused } = incoming;
        if let Some(r) = refused {
            return self.send_error(&req, r.errno, &r.message);
        }
        if req.kind == CMD_BLOCK_STATUS && req.flags & CMD_FLAG_PAYLOAD_LEN != 0 {
            match block_status_payload(&buf[..req.length as usize]) {
                Some((effect, _ids)) => {
                    req.length = effect;
                    req.flags &= !CMD_FLAG_PAYLOAD_LEN;
                }
                None => return self.send_error(&req, EINVAL, "NBD_CMD_BLOCK_STATUS: malformed payload"),
            }
        }
        let cmd = match self.session.check(&req) {
            Ok(cmd) => cmd,
            Err(r) => {
                debug!("refused: {}", r.message);
                if req.kind == CMD_DISC {
                    return;
                }
                return self.send_error(&req, r.errno, &r.message);
            }
        };
        let _serialized = self.shared.serialize_all.as_ref().map(lock);
        let h = self.handle;
        let fua = |fua: bool| if fua { Flags::FUA } else { Flags::NONE };
        let result = match cmd {
            Command::Disconnect => return,
            Command::Read { offset, length, df } => return self.read(&req, offset, length, df, buf),
            Command::BlockStatus { offset, length, req_one } => return self.block_status(&req, offset, length, req_one),
            Command::Write { offset, length, fua: f } => h.pwrite(&buf[..length as usize], offset, fua(f)),
            Command::Flush => h.flush(Flags::NONE),
            Command::Trim { offset, length, fua: f } => h.trim(length, offset, fua(f)),
            Command::Cache { offset, length } => h.cache(length, offset, Flags::NONE),
            Command::WriteZeroes { offset, length, fua: f, may_trim, fast } => {
                let mut flags = fua(f);
                if may_trim {
                    flags |= Flags::MAY_TRIM;
                }
                if fast {
                    flags |= Flags::FAST_ZERO;
                }
                h.zero(length, offset, flags)
            }
        };
        match result {
            Ok(()) => self.send(&mut [IoSlice::new(self.replies.ok(req.cookie, req.offset).as_bytes())]),
            Err(e) => self.backend_error(&req, e),
        }
    }

    fn backend_error(&self, req: &Request, e: Error) {
        let errno = wire_errno(e.errno);
        // Fast-zero refusals are routine (clients probe with them); everything else is worth a line.
        if errno == ENOTSUP && req.kind == CMD_WRITE_ZEROES {
            debug!("{}: {}", command_name(req.kind), e.message);
        } else {
            error!("{}: {}", command_name(req.kind), e.message);
        }
        self.send_error(req, errno, &e.message);
    }

    fn read(&self, req: &Request, offset: u64, length: u64, df: bool, buf: &mut Vec<u8>) {
        if let Some(socket) = &self.socket {
            match self.read_borrowed(req, offset, length, df, buf, socket.as_raw_fd()) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => return self.backend_error(req, e),
            }
            match self.handle.pread_file(length, offset) {
                Ok(Some((file, at))) => return self.read_sendfile(req, offset, length, df, socket, file, at),
                Ok(None) => {}
                Err(e) => return self.backend_error(req, e),
            }
        }
        let len = length as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let data = &mut buf[..len];
        match self.handle.pread(data, offset, Flags::NONE) {
            Ok(()) => self.send_read(req, offset, length, df, &[data]),
            Err(e) => self.backend_error(req, e),
        }
    }

    /// Sends a read straight from the backend's memory when it offers its data that way
    /// (`pread_borrowed`), saving a copy. The backend holds locks while its slices are borrowed,
    /// so nothing here may wait then: the reply goes out only if the write lock is free, without
    /// blocking; what the socket does not take at once is copied out and sent after the backend
    /// has let go. Returns false when the backend does not offer borrowed reads.
    fn read_borrowed(&self, req: &Request, offset: u64, length: u64, df: bool, buf: &mut Vec<u8>, socket: RawFd) -> nbdforge_api::Result<bool> {
        enum Outcome<'w> {
            Sent,
            /// The write lock, held, and the bytes of the reply still to send.
            Rest(MutexGuard<'w, Box<dyn Write + Send>>, Vec<u8>),
            /// The writer was busy: the data was copied into `buf`.
            Copied,
            WrongLength,
        }
        let mut outcome = None;
        let offered = self.handle.pread_borrowed(length, offset, &mut |parts| {
            if parts.iter().map(|p| p.len() as u64).sum::<u64>() != length {
                outcome = Some(Outcome::WrongLength);
                return;
            }
            outcome = Some(match self.writer.try_lock() {
                Ok(writer) => {
                    let reply = self.read_reply(req, offset, df, parts);
                    let mut iov = reply.iov();
                    let total: usize = iov.iter().map(|s| s.len()).sum();
                    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                    let sent = match nix::sys::socket::sendmsg::<()>(socket, &iov, &[], flags, None) {
                        Ok(n) => n,
                        Err(nix::errno::Errno::EAGAIN) => 0,
                        Err(e) => {
                            self.reply_failed(e);
                            total
                        }
                    };
                    if sent == total {
                        Outcome::Sent
                    } else {
                        let mut rest: &mut [IoSlice<'_>] = &mut iov;
                        IoSlice::advance_slices(&mut rest, sent);
                        let mut bytes = Vec::with_capacity(total - sent);
                        rest.iter().for_each(|s| bytes.extend_from_slice(s));
                        Outcome::Rest(writer, bytes)
                    }
                }
                Err(_) => {
                    buf.clear();
                    parts.iter().for_each(|p| buf.extend_from_slice(p));
                    Outcome::Copied
                }
            });
        })?;
        match (offered, outcome) {
            (false, _) => Ok(false),
            (true, Some(Outcome::Sent)) => Ok(true),
            (true, Some(Outcome::Rest(mut writer, rest))) => {
                if let Err(e) = writer.write_all(&rest) {
                    self.reply_failed(e);
                }
                Ok(true)
            }
            (true, Some(Outcome::Copied)) => {
                self.send_read(req, offset, length, df, &[&buf[..length as usize]]);
                Ok(true)
            }
            (true, Some(Outcome::WrongLength)) | (true, None) => {
                Err(Error::io(format!("the backend's borrowed read did not hold {length} bytes")))
            }
        }
    }

    /// Sends a read with `sendfile` from the backend's file, so the data never passes through our
    /// memory. Ranges the backend's extents call zero go out as hole chunks (zeroes written as
    /// data are sent as data, as qemu-nbd does). The reply is promised before the data is read,
    /// so a failure part-way ends the connection.
    #[allow(clippy::too_many_arguments)]
    fn read_sendfile(&self, req: &Request, offset: u64, length: u64, df: bool, socket: &std::fs::File, file: BorrowedFd<'_>, at: u64) {
        let runs = if self.replies.structured && !df { self.extent_runs(offset, length) } else { vec![(offset, length, false)] };
        let last = runs.len() - 1;
        let mut writer = lock(&self.writer);
        for (i, &(start, n, zero)) in runs.iter().enumerate() {
            let header = if zero {
                self.replies.read_hole(req.cookie, offset, start, n as u32, i == last)
            } else {
                self.replies.read_data(req.cookie, offset, start, n, i == last)
            };
            let mut sent = writer.write_all(header.as_bytes());
            if !zero && sent.is_ok() {
                sent = send_file(socket, file, at + (start - offset), n);
            }
            if let Err(e) = sent {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    warn!("{}: sending {n} bytes at {start} failed, closing the connection: {e}", command_name(req.kind));
                }
                let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                return;
            }
        }
    }

    /// Runs `(start, length, reads_as_zero)` covering a read, from the backend's extents; all data
    /// when they are unknown.
    fn extent_runs(&self, offset: u64, length: u64) -> Vec<(u64, u64, bool)> {
        let mut ext = Extents::new(offset, offset + length);
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        if self.handle.extents(length, offset, Flags::NONE, &mut ext).is_ok() {
            for e in ext.as_slice() {
                let zero = e.flags & nbdforge_api::extents::ZERO != 0;
                match runs.last_mut() {
                    Some(run) if run.2 == zero => run.1 += e.length,
                    _ => runs.push((e.offset, e.length, zero)),
                }
            }
        }
        let covered = runs.last().map_or(offset, |r| r.0 + r.1);
        if covered < offset + length {
            match runs.last_mut() {
                Some(run) if !run.2 => run.1 += offset + length - covered,
                _ => runs.push((covered, offset + length - covered, false)),
            }
        }
        runs
    }

    /// Sends the reply to a successful read whose data is `parts`, one after another.
    fn send_read(&self, req: &Request, offset: u64, length: u64, df: bool, parts: &[&[u8]]) {
        if parts.iter().map(|p| p.len() as u64).sum::<u64>() != length {
            let e = Error::io(format!("the backend returned data of the wrong length for {length} bytes"));
            return self.backend_error(req, e);
        }
        self.send(&mut self.read_reply(req, offset, df, parts).iov());
    }

    /// The reply to a successful read of `parts`: data chunks, and hole chunks for the blocks
    /// that read as zeroes (structured replies, without DF).
    ///
    /// Finding zero blocks by looking at the data costs next to nothing for real data (the scan
    /// stops at the first non-zero word) and less than sending them for zeroes; asking the
    /// backend's extents instead can cost a scan of the whole file per read (SEEK_HOLE on tmpfs).
    fn read_reply<'a>(&self, req: &Request, offset: u64, df: bool, parts: &[&'a [u8]]) -> ReadReply<'a> {
        let mut runs: Vec<Run> = Vec::new();
        let mut data: Vec<&'a [u8]> = Vec::with_capacity(parts.len());
        let mut pos = offset;
        for &part in parts {
            let pieces = if self.replies.structured && !df { zero_pieces(part) } else { vec![(0, part.len(), false)] };
            for (at, n, zero) in pieces {
                match runs.last_mut() {
                    Some(run) if run.zero == zero => run.length += n as u64,
                    _ => runs.push(Run { start: pos, length: n as u64, zero, first: data.len(), count: 0 }),
                }
                if !zero {
                    data.push(&part[at..at + n]);
                    runs.last_mut().expect("a run was just pushed").count += 1;
                }
                pos += n as u64;
            }
        }
        let last = runs.len().saturating_sub(1);
        let headers = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.zero {
                    self.replies.read_hole(req.cookie, offset, r.start, r.length as u32, i == last)
                } else {
                    self.replies.read_data(req.cookie, offset, r.start, r.length, i == last)
                }
            })
            .collect();
        ReadReply { headers, data, runs }
    }

    fn block_status(&self, req: &Request, offset: u64, length: u64, req_one: bool) {
        let mut ext = Extents::new(offset, offset + length);
        let flags = if req_one { Flags::REQ_ONE } else { Flags::NONE };
        if let Err(e) = self.handle.extents(length, offset, flags, &mut ext) {
            return self.backend_error(req, e);
        }
        let mut runs: Vec<(u64, u32)> = ext.as_slice().iter().map(|e| (e.length, e.flags)).collect();
        if req_one {
            runs.truncate(1);
        }
        let mut out = Vec::with_capacity(40 + runs.len() * 16);
        self.replies.block_status(&mut out, req.cookie, offset, BASE_ALLOCATION_ID, &runs);
        self.send(&mut [IoSlice::new(&out)]);
    }
}

/// Sends `count` bytes of `file` from `at` to the socket, kernel to kernel.
fn send_file(socket: &std::fs::File, file: BorrowedFd<'_>, at: u64, count: u64) -> io::Result<()> {
    let mut offset = i64::try_from(at).map_err(|_| io::Error::other("file offset out of range"))?;
    let mut left = count;
    while left > 0 {
        match nix::sys::sendfile::sendfile64(socket, file, Some(&mut offset), left.min(1 << 30) as usize) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early")),
            Ok(n) => left -= n as u64,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A run of a read reply: data or zeroes, and which data slices belong to it.
struct Run {
    start: u64,
    length: u64,
    zero: bool,
    first: usize,
    count: usize,
}

/// The chunks of a read reply: a header per run, followed by the run's data slices.
struct ReadReply<'a> {
    headers: Vec<ReplyHeader>,
    data: Vec<&'a [u8]>,
    runs: Vec<Run>,
}

impl ReadReply<'_> {
    fn iov(&self) -> Vec<IoSlice<'_>> {
        let mut iov = Vec::with_capacity(self.runs.len() + self.data.len());
        for (h, r) in self.headers.iter().zip(&self.runs) {
            iov.push(IoSlice::new(h.as_bytes()));
            iov.extend(self.data[r.first..r.first + r.count].iter().map(|d| IoSlice::new(d)));
        }
        iov
    }
}

/// Granularity of hole detection in reads: zero runs shorter than this travel as data.
const HOLE_BLOCK: usize = 4096;

/// Splits read data into runs `(start, length, all_zero)` at [`HOLE_BLOCK`] granularity.
fn zero_pieces(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut pieces: Vec<(usize, usize, bool)> = Vec::new();
    for (i, block) in data.chunks(HOLE_BLOCK).enumerate() {
        let zero = is_zero(block);
        match pieces.last_mut() {
            Some(last) if last.2 == zero => last.1 += block.len(),
            _ => pieces.push((i * HOLE_BLOCK, block.len(), zero)),
        }
    }
    pieces
}

/// Whether every byte is zero: checks the first word at once, then 64 bytes at a time so the
/// compiler can vectorise the comparison.
fn is_zero(block: &[u8]) -> bool {
    if block.first().is_some_and(|&b| b != 0) {
        return false;
    }
    let mut chunks = block.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pieces_split_at_block_granularity() {
        let mut data = vec![0u8; 4 * HOLE_BLOCK + 10];
        data[HOLE_BLOCK + 5] = 1;
        data[4 * HOLE_BLOCK + 9] = 7;
        assert_eq!(
            zero_pieces(&data),
            vec![(0, HOLE_BLOCK, true), (HOLE_BLOCK, HOLE_BLOCK, false), (2 * HOLE_BLOCK, 2 * HOLE_BLOCK, true), (4 * HOLE_BLOCK, 10, false)]
        );
        assert_eq!(zero_pieces(&[1u8; 100]), vec![(0, 100, false)]);
        assert!(is_zero(&[0u8; 1000]));
        assert!(!is_zero(&{ let mut b = [0u8; 1000]; b[999] = 1; b }));
    }
}
