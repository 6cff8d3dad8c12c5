//! Replies that carry data: a READ's data (from a buffer, from the backend's own memory, or from
//! a file with `sendfile`), with hole chunks for the blocks that read as zeroes; and BLOCK_STATUS,
//! one chunk per selected meta context, bounded in length and time.
//!
//! The read path hands the backend a [`ReplySink`]: whichever way the backend offers its data
//! decides how the reply is sent, so zero-copy paths survive any filter that passes reads through.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use nbdforge_api::{is_zeroes, Error, Extents, Flags, ReadSink, Result};
use nbdforge_protocol::transmission::command_name;
use nbdforge_protocol::{ReplyHeader, Request};
use nix::sys::socket::MsgFlags;
use tracing::warn;

use super::budget::Reservation;
use super::splice::{ReplyPipe, SPLICE_MIN};
use super::transmission::{lock, Output, Replied, Transmission};
use crate::transport::write_all_vectored;

/// How long one BLOCK_STATUS reply may spend collecting extents before it is cut short.
const BLOCK_STATUS_TIME: Duration = Duration::from_secs(2);

/// The connection's write half, locked.
type Writer<'t> = MutexGuard<'t, Output>;

/// How a read's reply went out, as the sink saw it.
enum Outcome {
    /// Nothing yet: the backend has not given the data.
    Pending,
    /// The data is in the sink's buffer, to be sent after the backend returns.
    Buffered,
    /// The reply was sent (or the connection failed trying).
    Sent,
}

/// The sink of one READ: see the module comment.
struct ReplySink<'t, 'b> {
    t: &'t Transmission,
    req: &'t Request,
    offset: u64,
    length: u32,
    df: bool,
    buf: &'b mut Vec<u8>,
    held: Reservation<'t>,
    outcome: Outcome,
    /// The write lock and the part of a borrowed reply the socket did not take at once, sent once
    /// the backend has let go of its memory.
    rest: Option<(Writer<'t>, Vec<u8>)>,
    /// The bytes of a reply waiting in this thread's pipe, sent once the backend has let go.
    spliced: Option<usize>,
}

impl<'t> ReadSink for ReplySink<'t, '_> {
    fn buffer(&mut self) -> Result<&mut [u8]> {
        let len = self.length as usize;
        if !self.held.grow(len) {
            return Err(Error::new(libc::ENOMEM, "the server is short of memory for the read"));
        }
        if self.buf.len() < len {
            self.buf
                .try_reserve(len - self.buf.len())
                .map_err(|_| Error::new(libc::ENOMEM, "out of memory for the read"))?;
            self.buf.resize(len, 0);
        }
        self.outcome = Outcome::Buffered;
        Ok(&mut self.buf[..len])
    }

    fn borrowed(&mut self, parts: &[&[u8]]) -> Result<()> {
        if parts.iter().map(|p| p.len() as u64).sum::<u64>() != u64::from(self.length) {
            return Err(Error::io(format!("the backend's borrowed read did not hold {} bytes", self.length)));
        }
        // The backend holds locks while its slices are borrowed, so nothing here may wait: the
        // reply goes out only if the write lock is free, without blocking; what the socket does
        // not take at once is copied and sent after the backend lets go (in `finish`).
        let t: &'t Transmission = self.t;
        if let (Some(socket), Ok(mut writer)) = (&t.socket, t.writer.try_lock()) {
            let reply = t.read_reply(self.req, self.offset, self.df, parts);
            let mut iov = reply.iov();
            if t.hold(&mut writer, &iov) {
                // Another request is waiting: this reply goes out with the next ones.
                self.outcome = Outcome::Sent;
                return Ok(());
            }
            let held = std::mem::take(&mut writer.held);
            if !held.is_empty() {
                iov.insert(0, IoSlice::new(&held));
            }
            let total: usize = iov.iter().map(|s| s.len()).sum();
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            let sent = match nix::sys::socket::sendmsg::<()>(socket.as_raw_fd(), &iov, &[], flags, None) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => 0,
                Err(e) => {
                    t.reply_failed(e);
                    total
                }
            };
            let mut unsent = None;
            if sent < total {
                let mut rest: &mut [IoSlice<'_>] = &mut iov;
                IoSlice::advance_slices(&mut rest, sent);
                let mut bytes = Vec::new();
                if bytes.try_reserve_exact(total - sent).is_ok() {
                    rest.iter().for_each(|s| bytes.extend_from_slice(s));
                    unsent = Some(bytes);
                } else if let Err(e) = write_all_vectored(writer.w.as_mut(), rest) {
                    // No memory for a copy: the rest was sent from the backend's memory, waiting
                    // for the client while its pages are held (only under memory pressure).
                    t.reply_failed(e);
                }
            }
            drop(iov);
            // The held replies went out first (or are in `unsent`); keep the buffer for the next.
            writer.held = held;
            writer.held.clear();
            if let Some(bytes) = unsent {
                self.rest = Some((writer, bytes));
            }
            self.outcome = Outcome::Sent;
            return Ok(());
        }
        self.buf.clear();
        let len = usize::try_from(self.length).unwrap_or(usize::MAX);
        if !self.held.grow(len) || self.buf.try_reserve(len).is_err() {
            return Err(Error::new(libc::ENOMEM, "the server is short of memory for the read"));
        }
        parts.iter().for_each(|p| self.buf.extend_from_slice(p));
        self.outcome = Outcome::Buffered;
        Ok(())
    }

    fn borrowed_pages(&mut self, parts: &[&[u8]]) -> Result<()> {
        let t: &'t Transmission = self.t;
        if t.socket.is_some() && self.length as usize >= SPLICE_MIN {
            let reply = t.read_reply(self.req, self.offset, self.df, parts);
            if let Some(n) = ReplyPipe::load(&reply.pieces()) {
                self.spliced = Some(n);
                self.outcome = Outcome::Sent;
                return Ok(());
            }
        }
        self.borrowed(parts)
    }

    fn file(&mut self, file: BorrowedFd<'_>, at: u64, holes: &[(u64, u64)]) -> Result<()> {
        let Some(socket) = &self.t.socket else {
            // TLS or pipes: the data must pass through our memory anyway.
            let buf = self.buffer()?;
            return nbdforge_api::BufferSink(buf).file(file, at, holes);
        };
        self.t.read_sendfile(self.req, self.offset, u64::from(self.length), self.df, socket, file, at, holes);
        self.outcome = Outcome::Sent;
        Ok(())
    }
}

impl Transmission {
    pub(super) fn read<'s>(
        &'s self,
        req: &'s Request,
        offset: u64,
        length: u32,
        df: bool,
        buf: &mut Vec<u8>,
    ) -> Replied {
        let held = Reservation::new(&self.budget, &self.shared.budget);
        let mut sink = ReplySink {
            t: self,
            req,
            offset,
            length,
            df,
            buf,
            held,
            outcome: Outcome::Pending,
            rest: None,
            spliced: None,
        };
        let result =
            self.timed(u64::from(length), || self.handle.read(u64::from(length), offset, Flags::NONE, &mut sink));
        if let Some((mut writer, rest)) = sink.rest.take() {
            if let Err(e) = writer.w.write_all(&rest) {
                self.reply_failed(e);
            }
        }
        if let (Some(n), Some(socket)) = (sink.spliced.take(), &self.socket) {
            self.last_reply.store(n as u64, Ordering::Relaxed);
            let mut out = lock(&self.writer);
            if let Err(e) = out.flush_held().and_then(|()| ReplyPipe::send(socket, n)) {
                self.reply_failed(e);
            }
        }
        let outcome = std::mem::replace(&mut sink.outcome, Outcome::Pending);
        match (result, outcome) {
            (Err(e), Outcome::Sent) => {
                // The reply went out before the backend failed: too late to tell the client.
                warn!("{}: {} after its reply was sent", command_name(req.kind), e.message);
                None
            }
            (Err(e), _) => self.backend_error(req, e),
            (Ok(()), Outcome::Sent) => None,
            (Ok(()), Outcome::Buffered) => {
                let data = &sink.buf[..length as usize];
                self.send(&mut self.read_reply(req, offset, df, &[data]).iov());
                None
            }
            (Ok(()), Outcome::Pending) => self.backend_error(req, Error::io("the backend's read returned no data")),
        }
    }

    /// Sends a read with `sendfile` from the backend's file, so the data never passes through our
    /// memory. The file's holes (as the layer that owns it reported them) go out as hole chunks;
    /// zeroes written as data are sent as data, as qemu-nbd does. The reply is promised before the
    /// data is read, so a failure part-way ends the connection.
    #[allow(clippy::too_many_arguments)]
    fn read_sendfile(
        &self,
        req: &Request,
        offset: u64,
        length: u64,
        df: bool,
        socket: &std::fs::File,
        file: BorrowedFd<'_>,
        at: u64,
        holes: &[(u64, u64)],
    ) {
        let runs = if self.replies.structured && !df {
            file_runs(offset, length, holes)
        } else {
            vec![(offset, length, false)]
        };
        let last = runs.len() - 1;
        self.last_reply.store(length, Ordering::Relaxed);
        let mut out = lock(&self.writer);
        let mut sent = out.flush_held();
        let writer = &mut out.w;
        for (i, &(start, n, zero)) in runs.iter().enumerate() {
            let header = if zero {
                // A run of a read is at most the read's length, which is 32 bits.
                self.replies.read_hole(req.cookie, offset, start, u32::try_from(n).unwrap_or(u32::MAX), i == last)
            } else {
                self.replies.read_data(req.cookie, offset, start, n, i == last)
            };
            if sent.is_ok() {
                sent = writer.write_all(header.as_bytes());
            }
            if !zero && sent.is_ok() {
                sent = send_file(socket, file, at + (start - offset), n);
            }
            if let Err(e) = sent {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    warn!(
                        "{}: sending {n} bytes at {start} failed, closing the connection: {e}",
                        command_name(req.kind)
                    );
                }
                let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                return;
            }
        }
    }

    /// The reply to a successful read of `parts`: data chunks, and hole chunks for the blocks
    /// that read as zeroes (structured replies, without DF).
    ///
    /// Parts lent from the SDK's `ZEROES` are holes, known without reading them. Other zero
    /// blocks are found by looking at the data: that costs next to nothing for real data (the
    /// scan stops at the first non-zero word) and less than sending them for zeroes; asking the
    /// backend's extents instead can cost a scan of the whole file per read (SEEK_HOLE on tmpfs).
    fn read_reply<'a>(&self, req: &Request, offset: u64, df: bool, parts: &[&'a [u8]]) -> ReadReply<'a> {
        let mut runs: Vec<Run> = Vec::new();
        let mut data: Vec<&'a [u8]> = Vec::with_capacity(parts.len());
        let mut pos = offset;
        let holes = self.replies.structured && !df;
        for &part in parts {
            let pieces = if holes && is_zeroes(part) {
                vec![(0, part.len(), true)]
            } else if holes {
                zero_pieces(part)
            } else {
                vec![(0, part.len(), false)]
            };
            for (at, n, zero) in pieces {
                match runs.last_mut() {
                    Some(run) if run.zero == zero => run.length += n as u64,
                    _ => runs.push(Run { start: pos, length: n as u64, zero, first: data.len(), count: 0 }),
                }
                if !zero {
                    data.push(&part[at..at + n]);
                    if let Some(run) = runs.last_mut() {
                        run.count += 1;
                    }
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
                    let len = u32::try_from(r.length).unwrap_or(u32::MAX);
                    self.replies.read_hole(req.cookie, offset, r.start, len, i == last)
                } else {
                    self.replies.read_data(req.cookie, offset, r.start, r.length, i == last)
                }
            })
            .collect();
        ReadReply { headers, data, runs }
    }

    /// Block status of the selected contexts (or of `wanted` ids among them), one chunk each,
    /// each bounded to `MAX_EXTENTS` runs and the whole reply to [`BLOCK_STATUS_TIME`].
    pub(super) fn block_status(
        &self,
        req: &Request,
        offset: u64,
        length: u64,
        req_one: bool,
        wanted: Option<&[u32]>,
    ) -> Replied {
        let contexts: Vec<_> = match wanted {
            None => self.session.contexts.iter().collect(),
            Some(ids) => {
                let mut chosen = Vec::new();
                for id in ids {
                    match self.session.contexts.iter().find(|c| c.id == *id) {
                        Some(c) if !chosen.iter().any(|x: &&nbdforge_protocol::MetaContext| x.id == *id) => {
                            chosen.push(c)
                        }
                        Some(_) => {}
                        None => {
                            return self.send_error(
                                req,
                                nbdforge_protocol::consts::EINVAL,
                                &format!("NBD_CMD_BLOCK_STATUS: context id {id} was not negotiated"),
                            )
                        }
                    }
                }
                if chosen.is_empty() {
                    self.session.contexts.iter().collect()
                } else {
                    chosen
                }
            }
        };
        let flags = if req_one { Flags::REQ_ONE } else { Flags::NONE };
        let deadline = Some(Instant::now() + BLOCK_STATUS_TIME);
        let mut out = Vec::new();
        for (i, context) in contexts.iter().enumerate() {
            let max = if req_one { 1 } else { nbdforge_api::extents::MAX_EXTENTS };
            let mut ext = Extents::bounded(offset, offset.saturating_add(length), max, deadline);
            if let Err(e) = self.handle.block_status(&context.name, length, offset, flags, &mut ext) {
                return self.backend_error(req, e);
            }
            let runs: Vec<(u64, u32)> = ext.as_slice().iter().map(|e| (e.length, e.flags)).collect();
            self.replies.block_status(&mut out, req.cookie, offset, context.id, &runs, i + 1 == contexts.len());
        }
        self.send(&mut [IoSlice::new(&out)]);
        None
    }
}

/// Runs `(start, length, reads_as_zero)` covering the read `[offset, offset + length)` from the
/// holes a layer reported, `(start, length)` relative to the read; what they do not cover is data.
/// Holes out of order or out of range are ignored (they only save bytes).
fn file_runs(offset: u64, length: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let mut runs = Vec::with_capacity(2 * holes.len() + 1);
    let mut pos = 0;
    for &(start, len) in holes {
        let end = start.saturating_add(len).min(length);
        if start < pos || start >= end {
            continue;
        }
        if start > pos {
            runs.push((offset + pos, start - pos, false));
        }
        runs.push((offset + start, end - start, true));
        pos = end;
    }
    if pos < length {
        runs.push((offset + pos, length - pos, false));
    }
    runs
}

/// Sends `count` bytes of `file` from `at` to the socket, kernel to kernel.
fn send_file(socket: &std::fs::File, file: BorrowedFd<'_>, at: u64, count: u64) -> io::Result<()> {
    let mut offset = i64::try_from(at).map_err(|_| io::Error::other("file offset out of range"))?;
    let mut left = count;
    while left > 0 {
        let n = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match nix::sys::sendfile::sendfile64(socket, file, Some(&mut offset), n) {
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
    /// The reply's pieces, each marked `true` if it is a header (server memory, to be copied
    /// by a pipe) and `false` if it is the backend's data.
    fn pieces(&self) -> Vec<(IoSlice<'_>, bool)> {
        let mut pieces = Vec::with_capacity(self.runs.len() + self.data.len());
        for (h, r) in self.headers.iter().zip(&self.runs) {
            pieces.push((IoSlice::new(h.as_bytes()), true));
            pieces.extend(self.data[r.first..r.first + r.count].iter().map(|d| (IoSlice::new(d), false)));
        }
        pieces
    }

    fn iov(&self) -> Vec<IoSlice<'_>> {
        self.pieces().into_iter().map(|(piece, _)| piece).collect()
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
    fn file_runs_follow_the_holes_given() {
        assert_eq!(file_runs(100, 50, &[]), [(100, 50, false)]);
        assert_eq!(file_runs(100, 50, &[(0, 10), (20, 100)]), [(100, 10, true), (110, 10, false), (120, 30, true)]);
        assert_eq!(file_runs(0, 50, &[(10, 5), (12, 10), (60, 5)]), [(0, 10, false), (10, 5, true), (15, 35, false)]);
    }

    #[test]
    fn zero_pieces_split_at_block_granularity() {
        let mut data = vec![0u8; 4 * HOLE_BLOCK + 10];
        data[HOLE_BLOCK + 5] = 1;
        data[4 * HOLE_BLOCK + 9] = 7;
        assert_eq!(
            zero_pieces(&data),
            vec![
                (0, HOLE_BLOCK, true),
                (HOLE_BLOCK, HOLE_BLOCK, false),
                (2 * HOLE_BLOCK, 2 * HOLE_BLOCK, true),
                (4 * HOLE_BLOCK, 10, false)
            ]
        );
        assert_eq!(zero_pieces(&[1u8; 100]), vec![(0, 100, false)]);
        assert!(is_zero(&[0u8; 1000]));
        assert!(!is_zero(&{
            let mut b = [0u8; 1000];
            b[999] = 1;
            b
        }));
    }
}
