//! The transmission phase without I/O: parsing request headers, checking them against what was
//! negotiated, and encoding reply headers.
//!
//! Reply headers are returned as small fixed buffers so that the server can send header and
//! payload in one vectored write without copying the payload.

use crate::consts::*;
use crate::negotiation::{truncate, MetaContext, Negotiated};
use crate::wire::Cursor;
use crate::ProtocolError;

/// Length of a request header without extended headers.
pub const COMPACT_REQUEST_LEN: usize = 28;
/// Length of a request header with extended headers.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// The largest READ or WRITE the server serves, whatever the export advertises: its own bound
/// on the memory one request holds.
pub const MAX_REQUEST: u32 = 64 << 20;

/// A request header as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `CMD_FLAG_*` bits.
    pub flags: u16,
    /// `CMD_*`.
    pub kind: u16,
    /// The client's cookie, echoed in every reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Effect length, or payload length for WRITE and commands with `PAYLOAD_LEN`.
    pub length: u64,
    /// The header was an extended (32-byte) one.
    pub extended: bool,
}

impl Request {
    /// Parses a header of [`COMPACT_REQUEST_LEN`] or [`EXTENDED_REQUEST_LEN`] bytes. A wrong magic
    /// number means the stream is out of sync and the connection must close.
    pub fn parse(buf: &[u8], extended: bool) -> Result<Request, ProtocolError> {
        let mut c = Cursor::new(buf);
        let magic = c.u32().unwrap_or_default();
        let expected = if extended { EXTENDED_REQUEST_MAGIC } else { REQUEST_MAGIC };
        if magic != expected {
            return Err(ProtocolError::BadMagic { what: "request", expected: expected as u64, got: magic as u64 });
        }
        let short = || ProtocolError::ShortHeader(buf.len());
        let flags = c.u16().ok_or_else(short)?;
        let kind = c.u16().ok_or_else(short)?;
        let cookie = c.u64().ok_or_else(short)?;
        let offset = c.u64().ok_or_else(short)?;
        let length = if extended { c.u64() } else { c.u32().map(u64::from) }.ok_or_else(short)?;
        Ok(Request { flags, kind, cookie, offset, length, extended })
    }

    /// How many payload bytes follow this header on the wire. `PAYLOAD_LEN` means a payload only
    /// in an extended header; in a compact one it is an invalid flag, refused by
    /// [`Session::check`] without waiting for bytes the client never meant to send.
    pub fn payload_len(&self) -> u64 {
        if self.kind == CMD_WRITE || (self.extended && self.flags & CMD_FLAG_PAYLOAD_LEN != 0) {
            self.length
        } else {
            0
        }
    }
}

/// A request that passed every check, ready for the backend. `offset` and `length` are in
/// bytes; the booleans are the request's flags (`fua`, `df`, `req_one`, `fast`), with `may_trim`
/// the absence of `NO_HOLE`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes (at most the maximum block size, so 32 bits); `df`: do not fragment
    /// the reply.
    Read { offset: u64, length: u32, df: bool },
    /// Write the payload (at most the maximum block size).
    Write { offset: u64, length: u32, fua: bool },
    /// Soft disconnect.
    Disconnect,
    /// Flush.
    Flush,
    /// Trim.
    Trim { offset: u64, length: u64, fua: bool },
    /// Prefetch.
    Cache { offset: u64, length: u64 },
    /// Write zeroes; `may_trim` unless NO_HOLE was sent.
    WriteZeroes { offset: u64, length: u64, fua: bool, may_trim: bool, fast: bool },
    /// Block status of the selected meta contexts.
    BlockStatus { offset: u64, length: u64, req_one: bool },
}

/// Why a request is refused: the errno sent to the client and a message for the error chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `EINVAL`, `ENOSPC`, `EPERM`, ... as sent on the wire.
    pub errno: u32,
    /// What was wrong, with the values the client sent.
    pub message: String,
}

fn refuse(errno: u32, message: String) -> Refusal {
    Refusal { errno, message }
}

/// What a connection may do in the transmission phase, fixed at the end of negotiation.
#[derive(Debug, Clone)]
pub struct Session {
    /// Export size.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies negotiated.
    pub structured: bool,
    /// Extended headers negotiated.
    pub extended: bool,
    /// The meta contexts selected.
    pub contexts: Vec<MetaContext>,
    /// Block size constraints (minimum, preferred, maximum) as advertised. They are advice to
    /// the client: the session does not refuse requests that ignore them (a layer may).
    pub block_size: (u32, u32, u32),
}

impl Session {
    /// The session a negotiation ended in.
    pub fn new(n: &Negotiated) -> Self {
        Session {
            size: n.export.size,
            flags: n.export.flags,
            structured: n.structured,
            extended: n.extended,
            contexts: n.contexts.clone(),
            block_size: n.export.block_size,
        }
    }

    /// The largest payload accepted in a WRITE; larger ones are drained and refused.
    pub fn max_payload(&self) -> u64 {
        MAX_REQUEST as u64
    }

    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Checks a request against the export and what was negotiated. `effect_len` is the effect
    /// length from a BLOCK_STATUS payload, when `PAYLOAD_LEN` was used.
    pub fn check(&self, req: &Request) -> Result<Command, Refusal> {
        let (offset, length, f) = (req.offset, req.length, req.flags);
        let name = command_name(req.kind);
        let allowed = match req.kind {
            CMD_READ => CMD_FLAG_DF,
            CMD_WRITE => CMD_FLAG_PAYLOAD_LEN,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            CMD_DISC | CMD_FLUSH | CMD_TRIM | CMD_CACHE => 0,
            other => return Err(refuse(EINVAL, format!("unknown command type {other}"))),
        } | CMD_FLAG_FUA;
        if f & !allowed != 0 {
            return Err(refuse(EINVAL, format!("{name}: flags 0x{:x} are not valid for this command", f & !allowed)));
        }
        if f & CMD_FLAG_PAYLOAD_LEN != 0 && !self.extended {
            return Err(refuse(EINVAL, format!("{name}: PAYLOAD_LEN flag without extended headers")));
        }
        let fua = f & CMD_FLAG_FUA != 0;
        let is_write = matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM);
        if fua && is_write && !self.has(FLAG_SEND_FUA) && !self.has(FLAG_READ_ONLY) {
            return Err(refuse(EINVAL, format!("{name}: FUA flag but the export does not support FUA")));
        }
        if is_write && self.has(FLAG_READ_ONLY) {
            return Err(refuse(EPERM, format!("{name}: the export is read-only")));
        }
        let needs = match req.kind {
            CMD_FLUSH => Some((FLAG_SEND_FLUSH, "flush")),
            CMD_TRIM => Some((FLAG_SEND_TRIM, "trim")),
            CMD_CACHE => Some((FLAG_SEND_CACHE, "cache")),
            CMD_WRITE_ZEROES => Some((FLAG_SEND_WRITE_ZEROES, "write zeroes")),
            _ => None,
        };
        if let Some((flag, what)) = needs {
            if !self.has(flag) {
                return Err(refuse(EINVAL, format!("{name}: the export does not support {what}")));
            }
        }
        if f & CMD_FLAG_DF != 0 && !self.has(FLAG_SEND_DF) {
            return Err(refuse(EINVAL, format!("{name}: DF flag without structured replies")));
        }
        if f & CMD_FLAG_FAST_ZERO != 0 && !self.has(FLAG_SEND_FAST_ZERO) {
            return Err(refuse(EINVAL, format!("{name}: FAST_ZERO flag but the export does not support it")));
        }
        if req.kind == CMD_BLOCK_STATUS && self.contexts.is_empty() {
            return Err(refuse(EINVAL, format!("{name}: no metadata context was negotiated")));
        }
        match req.kind {
            CMD_DISC => return Ok(Command::Disconnect),
            CMD_FLUSH => return Ok(Command::Flush),
            _ => {}
        }
        let end = offset.checked_add(length);
        if length == 0 || end.is_none_or(|e| e > self.size) {
            let errno = if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) && length > 0 { ENOSPC } else { EINVAL };
            return Err(refuse(
                errno,
                format!("{name}: offset {offset} length {length} is outside the export of {} bytes", self.size),
            ));
        }
        // Alignment and the advertised maximum are the layers' business (nbdkit's model); the
        // session only bounds what one request may make the server hold.
        let max = MAX_REQUEST;
        let data_length = u32::try_from(length).ok().filter(|&l| l <= max);
        if matches!(req.kind, CMD_READ | CMD_WRITE) && data_length.is_none() {
            let errno = if req.kind == CMD_READ && self.structured { EOVERFLOW } else { EINVAL };
            return Err(refuse(errno, format!("{name}: length {length} is over the maximum of {max} bytes")));
        }
        let data_length = data_length.unwrap_or(0);
        Ok(match req.kind {
            CMD_READ => Command::Read { offset, length: data_length, df: f & CMD_FLAG_DF != 0 },
            CMD_WRITE => Command::Write { offset, length: data_length, fua },
            CMD_TRIM => Command::Trim { offset, length, fua },
            CMD_CACHE => Command::Cache { offset, length },
            CMD_WRITE_ZEROES => Command::WriteZeroes {
                offset,
                length,
                fua,
                may_trim: f & CMD_FLAG_NO_HOLE == 0,
                fast: f & CMD_FLAG_FAST_ZERO != 0,
            },
            _ => Command::BlockStatus { offset, length, req_one: f & CMD_FLAG_REQ_ONE != 0 },
        })
    }
}

/// The command's name for messages.
pub fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "NBD_CMD_READ",
        CMD_WRITE => "NBD_CMD_WRITE",
        CMD_DISC => "NBD_CMD_DISC",
        CMD_FLUSH => "NBD_CMD_FLUSH",
        CMD_TRIM => "NBD_CMD_TRIM",
        CMD_CACHE => "NBD_CMD_CACHE",
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        _ => "unknown command",
    }
}

/// Parses the payload of a BLOCK_STATUS sent with `PAYLOAD_LEN`: the effect length and the
/// context ids the client wants.
pub fn block_status_payload(payload: &[u8]) -> Option<(u64, Vec<u32>)> {
    let mut c = Cursor::new(payload);
    let length = c.u64()?;
    if !c.remaining().is_multiple_of(4) {
        return None;
    }
    let mut ids = Vec::with_capacity(c.remaining() / 4);
    while c.remaining() > 0 {
        ids.push(c.u32()?);
    }
    Some((length, ids))
}

/// A reply header with the fixed part of its chunk payload: up to 48 bytes (an extended header
/// of 32 plus a hole chunk's 12), of which `len` are used.
#[derive(Debug, Clone, Copy)]
pub struct ReplyHeader {
    buf: [u8; 48],
    len: usize,
}

impl ReplyHeader {
    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// A simple reply (no structured replies): magic, error, cookie. Data follows for a READ.
    pub fn simple(cookie: u64, error: u32) -> Self {
        let mut h = ReplyHeader { buf: [0; 48], len: 16 };
        h.buf[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h.buf[4..8].copy_from_slice(&error.to_be_bytes());
        h.buf[8..16].copy_from_slice(&cookie.to_be_bytes());
        h
    }

    /// A structured reply chunk header, compact (20 bytes) or extended (32 bytes). `offset` is the
    /// request's offset (only sent with extended headers); `payload` the length of what follows.
    pub fn chunk(extended: bool, flags: u16, kind: u16, cookie: u64, offset: u64, payload: u64) -> Self {
        let mut h = ReplyHeader { buf: [0; 48], len: 0 };
        let magic = if extended { EXTENDED_REPLY_MAGIC } else { STRUCTURED_REPLY_MAGIC };
        h.buf[..4].copy_from_slice(&magic.to_be_bytes());
        h.buf[4..6].copy_from_slice(&flags.to_be_bytes());
        h.buf[6..8].copy_from_slice(&kind.to_be_bytes());
        h.buf[8..16].copy_from_slice(&cookie.to_be_bytes());
        if extended {
            h.buf[16..24].copy_from_slice(&offset.to_be_bytes());
            h.buf[24..32].copy_from_slice(&payload.to_be_bytes());
            h.len = 32;
        } else {
            // Every compact payload is small (reads are at most the maximum block size, block
            // status replies at most MAX_EXTENTS runs); saturating keeps a bug from wrapping.
            debug_assert!(payload <= u32::MAX as u64);
            h.buf[16..20].copy_from_slice(&u32::try_from(payload).unwrap_or(u32::MAX).to_be_bytes());
            h.len = 20;
        }
        h
    }

    /// Appends raw bytes (the fixed part of a chunk payload) after the header.
    pub fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }
}

/// Writes reply messages for one negotiated session.
#[derive(Debug, Clone, Copy)]
pub struct Replies {
    /// Structured replies are on.
    pub structured: bool,
    /// Extended headers are on.
    pub extended: bool,
}

impl Replies {
    /// A successful reply with no payload.
    pub fn ok(&self, cookie: u64, offset: u64) -> ReplyHeader {
        if self.extended {
            ReplyHeader::chunk(true, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, offset, 0)
        } else {
            ReplyHeader::simple(cookie, 0)
        }
    }

    /// An error reply, with a message when structured replies are on.
    pub fn error(&self, out: &mut Vec<u8>, cookie: u64, offset: u64, errno: u32, message: &str) {
        if !self.structured {
            out.extend_from_slice(ReplyHeader::simple(cookie, errno).as_bytes());
            return;
        }
        let message = truncate(message);
        let message_len = u16::try_from(message.len()).unwrap_or(0);
        let message = &message[..usize::from(message_len)];
        let payload = 6 + u64::from(message_len);
        let h = ReplyHeader::chunk(self.extended, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, offset, payload);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&errno.to_be_bytes());
        out.extend_from_slice(&message_len.to_be_bytes());
        out.extend_from_slice(message.as_bytes());
    }

    /// Header for a successful READ's data: a simple reply, or an OFFSET_DATA chunk of
    /// `data_len` bytes at `chunk_offset` (the data itself is sent after the header).
    pub fn read_data(&self, cookie: u64, offset: u64, chunk_offset: u64, data_len: u64, done: bool) -> ReplyHeader {
        if !self.structured {
            return ReplyHeader::simple(cookie, 0);
        }
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        let mut h = ReplyHeader::chunk(self.extended, flags, REPLY_TYPE_OFFSET_DATA, cookie, offset, 8 + data_len);
        h.push(&chunk_offset.to_be_bytes());
        h
    }

    /// An OFFSET_HOLE chunk: `hole_len` bytes at `chunk_offset` read as zeroes. Structured only.
    pub fn read_hole(&self, cookie: u64, offset: u64, chunk_offset: u64, hole_len: u32, done: bool) -> ReplyHeader {
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        let mut h = ReplyHeader::chunk(self.extended, flags, REPLY_TYPE_OFFSET_HOLE, cookie, offset, 12);
        h.push(&chunk_offset.to_be_bytes());
        h.push(&hole_len.to_be_bytes());
        h
    }

    /// A complete BLOCK_STATUS reply chunk for one context: `(length, flags)` runs. With extended
    /// headers it is `BLOCK_STATUS_EXT` with 64-bit lengths. Otherwise lengths are 32 bits: a run
    /// longer than that is clipped and ends the list (a shorter reply is allowed). `done` marks the
    /// last chunk of the reply.
    pub fn block_status(
        &self,
        out: &mut Vec<u8>,
        cookie: u64,
        offset: u64,
        context: u32,
        runs: &[(u64, u32)],
        done: bool,
    ) {
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        let count = u32::try_from(runs.len()).unwrap_or(u32::MAX);
        let runs = &runs[..count as usize];
        if self.extended {
            let payload = 8 + 16 * u64::from(count);
            let h = ReplyHeader::chunk(true, flags, REPLY_TYPE_BLOCK_STATUS_EXT, cookie, offset, payload);
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&context.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
            for &(len, flags) in runs {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&u64::from(flags).to_be_bytes());
            }
        } else {
            let clipped = runs.iter().position(|&(len, _)| len > u64::from(u32::MAX)).map_or(runs.len(), |i| i + 1);
            let runs = &runs[..clipped];
            let payload = 4 + 8 * runs.len() as u64;
            let h = ReplyHeader::chunk(false, flags, REPLY_TYPE_BLOCK_STATUS, cookie, offset, payload);
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&context.to_be_bytes());
            for &(len, flags) in runs {
                out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
        }
    }
}
