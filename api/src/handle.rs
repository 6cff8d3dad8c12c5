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

use crate::{BlockSize, Capabilities, Error, Extents, Flags, Result};

macro_rules! pass_through {
    ($self:ident, $call:expr, $leaf:expr) => {
        match $self.next() {
            Some(next) => $call(next),
            None => $leaf,
        }
    };
}

/// An open connection to a plugin or filter. See the module documentation.
pub trait Handle: Send + Sync {
    /// The handle of the layer below, for filters. Plugins keep the default (`None`).
    fn next(&self) -> Option<&dyn Handle> {
        None
    }

    /// Size of the export in bytes.
    fn get_size(&self) -> Result<u64> {
        pass_through!(self, |n: &dyn Handle| n.get_size(), Err(Error::unsupported("get_size")))
    }

    /// Block size constraints, or `None` for no constraints.
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

    /// A faster read, for backends that hold the data in memory: calls `send` once with slices
    /// of the backend's own memory that together hold the `count` bytes at `offset`, in order,
    /// and returns `Ok(true)`. The server sends them to the client straight from there, saving
    /// the copy into a buffer that `pread` costs. The slices must stay unchanged while `send`
    /// runs (hold a read lock), and `send` may block on the network.
    ///
    /// The default returns `Ok(false)`, and the server calls `pread` instead. It does not pass
    /// through to `next`: a filter that changes data in `pread` must not be bypassed.
    fn pread_borrowed(&self, count: u64, offset: u64, send: &mut dyn FnMut(&[&[u8]])) -> Result<bool> {
        let _ = (count, offset, send);
        Ok(false)
    }

    /// A faster read, for backends whose data sits in a file: the descriptor and the file offset
    /// that hold the `count` bytes at `offset`. The server sends them with `sendfile`, so the data
    /// never passes through a buffer of ours. The file must be at least `file_offset + count`
    /// bytes long; a failure while sending ends the connection (the reply was already promised).
    ///
    /// The default returns `Ok(None)` and the server calls `pread`. Like `pread_borrowed`, it
    /// does not pass through to `next`.
    fn pread_file(&self, count: u64, offset: u64) -> Result<Option<(std::os::fd::BorrowedFd<'_>, u64)>> {
        let _ = (count, offset);
        Ok(None)
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

    /// Describes the allocation state from `extents.next_offset()` onwards. Must add at least one
    /// run; with [`Flags::REQ_ONE`] one run is enough.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.extents(count, offset, flags, extents), Err(Error::unsupported("extents")))
    }

    /// Prefetches `count` bytes at `offset` (advisory).
    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, |n: &dyn Handle| n.cache(count, offset, flags), Err(Error::unsupported("cache")))
    }
}
