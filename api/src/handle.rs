//! The per-connection object. Opening a plugin or a filter yields a [`Handle`]; a filter's handle
//! owns the handle of the layer below it and returns it from [`Handle::next`], so every method the
//! filter does not override passes straight through. A stack of filters is nesting, nothing more.
//!
//! Methods take `&self` because the server may call them from several threads at once, as the
//! stack's [`ThreadModel`](crate::ThreadModel) allows; a handle that keeps mutable state guards it
//! itself (or declares a serializing thread model).
//!
//! Capabilities are explicit: [`Handle::capabilities`] returns them all at once, and a plugin that
//! does not override it is read-only with nothing optional. The server asks once per connection,
//! after `open`, and checks every request against the answer before the handle sees it: a handle is
//! never asked to write when it said it cannot, nor to read past `get_size`.
//!
//! Reads have two entry points. [`Handle::pread`] fills a buffer: what a plugin implements. The
//! server and the layers above call [`Handle::read`], which hands the data to a [`ReadSink`]:
//! a plugin whose data already sits in memory or in a file can give the sink that memory or that
//! file instead of copying it, and the server sends it from there. A filter that does not change
//! read data says so with [`Handle::reads_unchanged`], and such reads pass through it untouched.

use std::os::fd::BorrowedFd;

use crate::{BlockSize, Capabilities, Error, Extents, Flags, Result};

/// The name of the block status context every export has.
pub const BASE_ALLOCATION: &str = "base:allocation";

macro_rules! pass_through {
    ($self:ident, $call:expr, $leaf:expr) => {
        match $self.next() {
            Some(next) => $call(next),
            None => $leaf,
        }
    };
}

/// Zero bytes any layer may lend: to write zeroes a piece at a time, or as the data of a hole in
/// a borrowed read. A borrowed part that lies in here is sent as a hole (structured replies)
/// without the server looking at its bytes; see [`is_zeroes`].
pub static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

/// Whether `part` is a non-empty piece of [`ZEROES`]: decided by where it is, not by reading it.
pub fn is_zeroes(part: &[u8]) -> bool {
    let zeroes = ZEROES.as_ptr_range();
    let range = part.as_ptr_range();
    !part.is_empty() && zeroes.start <= range.start && range.end <= zeroes.end
}

/// Where a read's data goes. The server gives one to [`Handle::read`]; exactly one of the three
/// methods is called once by the layer that has the data.
pub trait ReadSink {
    /// A buffer of the read's length to fill (the ordinary way: `pread` into it).
    fn buffer(&mut self) -> Result<&mut [u8]>;

    /// The data as slices of the backend's own memory, in order, together the read's length.
    /// The slices must stay unchanged during the call (hold a read lock); the call may send them
    /// to the network but never waits for the client.
    fn borrowed(&mut self, parts: &[&[u8]]) -> Result<()>;

    /// [`borrowed`](Self::borrowed), from memory whose pages are never recycled for other data:
    /// when freed they go back to the kernel (`munmap`, `MADV_DONTNEED`), never to a heap
    /// allocator. The server may then send them without copying them (`vmsplice`): the kernel
    /// keeps the pages until the client has read them, so a write that lands on them meanwhile
    /// may show in this reply, as it may for any read and write of the same bytes in flight
    /// together. Sent that way, the bytes are never read by the server, so it does not look for
    /// zeroes in them as it does in copied data: lend holes as slices of [`ZEROES`]. The
    /// default sends them as `borrowed` does.
    fn borrowed_pages(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.borrowed(parts)
    }

    /// The data in a file: the read's length at `offset` of `file`, which is at least that long.
    /// The server may send it with `sendfile`, kernel to kernel. `holes` are the ranges of the
    /// file known to read as zeroes, as `(start, length)` relative to the start of the read
    /// (empty if unknown): they may travel as hole chunks. Only the layer that owns the file can
    /// say this; block status of a layer above may describe something else.
    fn file(&mut self, file: BorrowedFd<'_>, offset: u64, holes: &[(u64, u64)]) -> Result<()>;
}

/// An open connection to a plugin or filter. See the module documentation.
pub trait Handle: Send + Sync {
    /// The handle of the layer below, for filters. Plugins keep the default (`None`).
    fn next(&self) -> Option<&dyn Handle> {
        None
    }

    /// Called right after open, the layer below already prepared (nbdkit's `prepare`).
    fn prepare(&self, readonly: bool) -> Result<()> {
        let _ = readonly;
        Ok(())
    }

    /// Called when the connection ends, before the handle is dropped, this layer before the one
    /// below (nbdkit's `finalize`): flush what must be durable here. The server finalizes the
    /// layer of [`Handle::next`] itself; a handle that opened further contexts below finalizes
    /// those.
    fn finalize(&self) -> Result<()> {
        Ok(())
    }

    /// Size of the export in bytes.
    fn get_size(&self) -> Result<u64> {
        pass_through!(self, |n: &dyn Handle| n.get_size(), Err(Error::unsupported("get_size")))
    }

    /// Block size constraints to advertise, or `None` for none. Advice to the client only:
    /// requests that ignore them still arrive (see [`BlockSize::check`] to refuse them).
    fn block_size(&self) -> Result<Option<BlockSize>> {
        pass_through!(self, |n: &dyn Handle| n.block_size(), Ok(None))
    }

    /// A description of the export for `NBD_INFO_DESCRIPTION`.
    fn export_description(&self) -> Result<Option<String>> {
        pass_through!(self, |n: &dyn Handle| n.export_description(), Ok(None))
    }

    /// What the handle can do. The server asks once per connection, right after `open`.
    /// A plugin returns its capabilities explicitly, usually built from
    /// [`Capabilities::READ_ONLY`] or [`Capabilities::ALL`]; a filter usually asks the layer below
    /// and changes what it alters.
    fn capabilities(&self) -> Result<Capabilities> {
        pass_through!(self, |n: &dyn Handle| n.capabilities(), Ok(Capabilities::READ_ONLY))
    }

    /// Reads `buf.len()` bytes at `offset`. The range is inside the export.
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.pread(buf, offset, flags), Err(Error::unsupported("pread")))
    }

    /// Reads `count` bytes at `offset` into `sink`: what the server and the layers above call.
    ///
    /// The default passes the read to the layer below when [`reads_unchanged`](Self::reads_unchanged)
    /// says so, and otherwise fills the sink's buffer with [`pread`](Self::pread). Override it
    /// to offer data without a copy (`sink.borrowed`, `sink.file`), or in a filter that must see
    /// every read without changing it (count, log, delay) and then calls `next.read`.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        match self.next() {
            Some(next) if self.reads_unchanged() => next.read(count, offset, flags, sink),
            _ => {
                let buf = sink.buffer()?;
                debug_assert_eq!(buf.len() as u64, count);
                self.pread(buf, offset, flags)
            }
        }
    }

    /// For filters: true when the filter's `pread` would return exactly what the layer below
    /// returns at the same offset, so that reads may bypass it (and keep the zero-copy paths of
    /// the layer below). The default is false, which is always correct.
    fn reads_unchanged(&self) -> bool {
        false
    }

    /// Writes `buf` at `offset`. With [`Flags::FUA`] (only when `fua` is `Native`) the data
    /// must be durable before returning.
    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.pwrite(buf, offset, flags), Err(Error::unsupported("pwrite")))
    }

    /// Makes all completed writes durable.
    fn flush(&self, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.flush(flags), Err(Error::unsupported("flush")))
    }

    /// Discards `count` bytes at `offset`; later reads may return anything until rewritten.
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.trim(count, offset, flags), Err(Error::unsupported("trim")))
    }

    /// Makes `count` bytes at `offset` read as zeroes (only called when `zero` is
    /// [`Support::Native`](crate::Support::Native)). With [`Flags::MAY_TRIM`] it may punch a
    /// hole. With [`Flags::FAST_ZERO`] it must fail with `ENOTSUP` rather than be slow. A native
    /// implementation may return `EOPNOTSUPP` for a particular request, and the core then falls back
    /// to writing zeroes (unless FAST_ZERO was asked for).
    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.zero(count, offset, flags), Err(Error::unsupported("zero")))
    }

    /// Describes the allocation state (`base:allocation`) from `extents.next_offset()` onwards.
    /// Must add at least one run; with [`Flags::REQ_ONE`] one run is enough. Stop adding when
    /// [`Extents::is_full`] says so: the reply has a cap on its length and on its time.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        pass_through!(
            self,
            |n: &dyn Handle| n.extents(count, offset, flags, extents),
            Err(Error::unsupported("extents"))
        )
    }

    /// The block status contexts this handle answers for, by full name (`base:allocation`,
    /// `qemu:dirty-bitmap:backup0`). The server always offers `base:allocation` (emulating it when
    /// needed); add others here. The default is the layer below's list, or none for a plugin.
    fn meta_contexts(&self) -> Result<Vec<String>> {
        pass_through!(self, |n: &dyn Handle| n.meta_contexts(), Ok(Vec::new()))
    }

    /// Block status of `context` (one of [`meta_contexts`](Self::meta_contexts), or
    /// `base:allocation`), in the context's own flags. The default answers `base:allocation`
    /// with [`extents`](Self::extents) and passes other contexts to the layer below.
    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        if context == BASE_ALLOCATION {
            return self.extents(count, offset, flags, extents);
        }
        pass_through!(
            self,
            |n: &dyn Handle| n.block_status(context, count, offset, flags, extents),
            Err(Error::invalid(format!("unknown meta context '{context}'")))
        )
    }

    /// A hint, not a request: `count` bytes at `offset` will be read or written soon (the server
    /// has that request queued behind the one it is serving). A layer whose data sits in memory
    /// may start bringing it into the CPU cache, so that the request does not wait on a cache
    /// miss. The range is inside the export. It must be cheap and never block. It keeps to the
    /// thread model: under `SerializeAllRequests` it is never called. The default passes the hint
    /// down through a filter whose reads are unchanged, and otherwise does nothing.
    fn prefetch(&self, count: u64, offset: u64) {
        if let Some(next) = self.next().filter(|_| self.reads_unchanged()) {
            next.prefetch(count, offset);
        }
    }

    /// Prefetches `count` bytes at `offset` (advisory).
    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.cache(count, offset, flags), Err(Error::unsupported("cache")))
    }
}

/// A sink over a caller's buffer: borrowed data is copied into it, file data read into it. What
/// a filter uses to read from a layer below into memory of its own (the server's emulation does
/// this for `pread`).
pub struct BufferSink<'a>(pub &'a mut [u8]);

impl ReadSink for BufferSink<'_> {
    fn buffer(&mut self) -> Result<&mut [u8]> {
        Ok(self.0)
    }

    fn borrowed(&mut self, parts: &[&[u8]]) -> Result<()> {
        let mut at = 0;
        for p in parts {
            let end = at + p.len();
            let Some(dst) = self.0.get_mut(at..end) else {
                return Err(Error::io("borrowed read: more data than asked for"));
            };
            dst.copy_from_slice(p);
            at = end;
        }
        if at != self.0.len() {
            return Err(Error::io(format!("borrowed read: {at} bytes where {} were asked for", self.0.len())));
        }
        Ok(())
    }

    fn file(&mut self, file: BorrowedFd<'_>, offset: u64, _holes: &[(u64, u64)]) -> Result<()> {
        let mut done = 0;
        while done < self.0.len() {
            let at = i64::try_from(offset + done as u64).map_err(|_| Error::invalid("file offset out of range"))?;
            match nix::sys::uio::pread(file, &mut self.0[done..], at) {
                Ok(0) => {
                    return Err(Error::io(format!("read from file: it ends before offset {}", offset + done as u64)))
                }
                Ok(n) => done += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::new(e as i32, format!("read from file: {e}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    struct Words;
    impl Handle for Words {
        fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = (offset as usize + i) as u8);
            Ok(())
        }
    }

    struct Borrowing(Vec<u8>);
    impl Handle for Borrowing {
        fn read(&self, count: u64, offset: u64, _flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
            let o = offset as usize;
            let (a, b) = self.0[o..o + count as usize].split_at(count as usize / 2);
            sink.borrowed(&[a, b])
        }
    }

    struct Passing<H>(H, bool);
    impl<H: Handle> Handle for Passing<H> {
        fn next(&self) -> Option<&dyn Handle> {
            Some(&self.0)
        }
        fn reads_unchanged(&self) -> bool {
            self.1
        }
    }

    /// Notes the prefetch hints it is given.
    #[derive(Default)]
    struct Hinted(std::sync::Mutex<Vec<(u64, u64)>>);
    impl Handle for Hinted {
        fn prefetch(&self, count: u64, offset: u64) {
            self.0.lock().unwrap().push((count, offset));
        }
    }

    #[test]
    fn prefetch_hints_pass_only_filters_whose_reads_are_unchanged() {
        let unchanged = Passing(Hinted::default(), true);
        unchanged.prefetch(4096, 8192);
        assert_eq!(*unchanged.0 .0.lock().unwrap(), [(4096, 8192)]);
        // A filter that may change data may also move it: the hint would name the wrong bytes.
        let changing = Passing(Hinted::default(), false);
        changing.prefetch(4096, 8192);
        assert!(changing.0 .0.lock().unwrap().is_empty());
        Words.prefetch(1, 0);
    }

    #[test]
    fn zeroes_are_known_by_where_they_are() {
        assert!(is_zeroes(&ZEROES[..]));
        assert!(is_zeroes(&ZEROES[4096..8192]));
        assert!(!is_zeroes(&[0u8; 16]), "zero bytes elsewhere are not ZEROES");
        let copy = ZEROES[..64].to_vec();
        assert!(!is_zeroes(&copy));
        assert!(!is_zeroes(&ZEROES[..0]), "an empty piece would make an empty hole chunk");
    }

    #[test]
    fn reads_reach_a_buffer_sink_every_way() {
        let mut buf = [0u8; 6];
        Words.read(6, 10, Flags::NONE, &mut BufferSink(&mut buf)).unwrap();
        assert_eq!(buf, [10, 11, 12, 13, 14, 15]);
        let mem = Borrowing((0..100).collect());
        mem.read(6, 20, Flags::NONE, &mut BufferSink(&mut buf)).unwrap();
        assert_eq!(buf, [20, 21, 22, 23, 24, 25]);
        // Through a filter, whether it declares its reads unchanged or not.
        Passing(Borrowing((0..100).collect()), true).read(6, 30, Flags::NONE, &mut BufferSink(&mut buf)).unwrap();
        assert_eq!(buf[0], 30);
        Passing(Words, false).read(6, 40, Flags::NONE, &mut BufferSink(&mut buf)).unwrap();
        assert_eq!(buf[0], 40);
    }

    #[test]
    fn file_data_and_wrong_lengths() {
        let dir = std::env::temp_dir().join(format!("nbdforge-sink-{}", std::process::id()));
        let mut f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&dir).unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut buf = [0u8; 4];
        BufferSink(&mut buf).file(f.as_fd(), 3, &[]).unwrap();
        assert_eq!(&buf, b"3456");
        assert!(BufferSink(&mut buf).file(f.as_fd(), 8, &[]).is_err(), "short file");
        std::fs::remove_file(&dir).unwrap();
        assert!(BufferSink(&mut buf).borrowed(&[b"ab"]).is_err());
        assert!(BufferSink(&mut buf).borrowed(&[b"abcde"]).is_err());
    }

    #[test]
    fn contexts_default_to_base_allocation_through_extents() {
        struct Holes;
        impl Handle for Holes {
            fn extents(&self, count: u64, offset: u64, _f: Flags, e: &mut Extents) -> Result<()> {
                e.add(offset, count, crate::extents::HOLE)
            }
        }
        let h = Passing(Holes, true);
        let mut e = Extents::new(0, 10);
        h.block_status(BASE_ALLOCATION, 10, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice()[0].flags, crate::extents::HOLE);
        let err = h.block_status("qemu:dirty-bitmap:x", 10, 0, Flags::NONE, &mut Extents::new(0, 10)).unwrap_err();
        assert!(err.message.contains("qemu:dirty-bitmap:x"));
        assert!(h.meta_contexts().unwrap().is_empty());
    }
}
