//! The per-connection object. Opening a plugin or a filter yields a [`Handle`]; a filter's handle
//! owns the handle of the layer below it and returns it from [`Handle::next`], so every method the
//! filter does not override passes straight through. A stack of filters is nesting, nothing more.
//!
//! Methods take `&self` because the server may call them from several threads at once, as the
//! stack's [`ThreadModel`](crate::ThreadModel) allows; a handle that keeps mutable state guards it
//! itself (or declares a serializing thread model).
//!
//! Capabilities are explicit. A plugin (a handle with no `next`) gets conservative defaults:
//! read-only, no flush, no trim, zero emulated by writing, FUA emulated by flushing when it can
//! flush, no cache, no extents (the server reports everything as data), no multi-conn.
//!
//! The server asks each capability once per connection, after `open`, and checks every request
//! against them before the handle sees it: a handle is never asked to write when `can_write` said
//! no, nor to read past `get_size`.

use crate::{BlockSize, Error, Extents, Flags, Result, Support};

macro_rules! pass_through {
    ($self:ident, $name:literal, $call:expr, $leaf:expr) => {
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
        pass_through!(self, "get_size", |n: &dyn Handle| n.get_size(), Err(Error::unsupported("get_size")))
    }

    /// Block size constraints, or `None` for no constraints.
    fn block_size(&self) -> Result<Option<BlockSize>> {
        pass_through!(self, "block_size", |n: &dyn Handle| n.block_size(), Ok(None))
    }

    /// A description of the export for `NBD_INFO_DESCRIPTION`.
    fn export_description(&self) -> Result<Option<String>> {
        pass_through!(self, "export_description", |n: &dyn Handle| n.export_description(), Ok(None))
    }

    /// Whether writes are possible. The server also refuses writes when the export is read-only.
    fn can_write(&self) -> Result<bool> {
        pass_through!(self, "can_write", |n: &dyn Handle| n.can_write(), Ok(false))
    }

    /// Whether `flush` does anything.
    fn can_flush(&self) -> Result<bool> {
        pass_through!(self, "can_flush", |n: &dyn Handle| n.can_flush(), Ok(false))
    }

    /// Advertised as `NBD_FLAG_ROTATIONAL`.
    fn is_rotational(&self) -> Result<bool> {
        pass_through!(self, "is_rotational", |n: &dyn Handle| n.is_rotational(), Ok(false))
    }

    /// Whether `trim` is implemented.
    fn can_trim(&self) -> Result<bool> {
        pass_through!(self, "can_trim", |n: &dyn Handle| n.can_trim(), Ok(false))
    }

    /// Whether `zero` is implemented natively; `Emulate` makes the core write zeroes instead.
    fn can_zero(&self) -> Result<Support> {
        pass_through!(self, "can_zero", |n: &dyn Handle| n.can_zero(), Ok(Support::Emulate))
    }

    /// Whether `zero` with [`Flags::FAST_ZERO`] can be honoured. When false the core answers
    /// fast-zero requests with `ENOTSUP` without calling `zero`.
    fn can_fast_zero(&self) -> Result<bool> {
        pass_through!(self, "can_fast_zero", |n: &dyn Handle| n.can_fast_zero(), Ok(false))
    }

    /// How FUA is honoured: `Native` passes [`Flags::FUA`] to writes; `Emulate` makes the core
    /// call `flush` after the write.
    fn can_fua(&self) -> Result<Support> {
        pass_through!(self, "can_fua", |n: &dyn Handle| n.can_fua(), {
            Ok(if self.can_flush()? { Support::Emulate } else { Support::None })
        })
    }

    /// Whether several connections see each other's flushed writes (`NBD_FLAG_CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> Result<bool> {
        pass_through!(self, "can_multi_conn", |n: &dyn Handle| n.can_multi_conn(), Ok(false))
    }

    /// Whether `extents` is implemented. Without it the server reports the whole range as data.
    fn can_extents(&self) -> Result<bool> {
        pass_through!(self, "can_extents", |n: &dyn Handle| n.can_extents(), Ok(false))
    }

    /// How `NBD_CMD_CACHE` is honoured: `Emulate` makes the core read and discard the range.
    fn can_cache(&self) -> Result<Support> {
        pass_through!(self, "can_cache", |n: &dyn Handle| n.can_cache(), Ok(Support::None))
    }

    /// Reads `buf.len()` bytes at `offset`. The range is inside the export.
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, "pread", |n: &dyn Handle| n.pread(buf, offset, flags), Err(Error::unsupported("pread")))
    }

    /// Writes `buf` at `offset`. With [`Flags::FUA`] (only when `can_fua` is `Native`) the data
    /// must be durable before returning.
    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, "pwrite", |n: &dyn Handle| n.pwrite(buf, offset, flags), Err(Error::unsupported("pwrite")))
    }

    /// Makes all completed writes durable.
    fn flush(&self, flags: Flags) -> Result<()> {
        pass_through!(self, "flush", |n: &dyn Handle| n.flush(flags), Err(Error::unsupported("flush")))
    }

    /// Discards `count` bytes at `offset`; later reads may return anything until rewritten.
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, "trim", |n: &dyn Handle| n.trim(count, offset, flags), Err(Error::unsupported("trim")))
    }

    /// Makes `count` bytes at `offset` read as zeroes. With [`Flags::MAY_TRIM`] it may punch a
    /// hole. With [`Flags::FAST_ZERO`] it must fail with `ENOTSUP` rather than be slow. A native
    /// implementation may return `EOPNOTSUPP` for a particular request, and the core then falls back
    /// to writing zeroes (unless FAST_ZERO was asked for).
    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, "zero", |n: &dyn Handle| n.zero(count, offset, flags), Err(Error::unsupported("zero")))
    }

    /// Describes the allocation state from `extents.next_offset()` onwards. Must add at least one
    /// run; with [`Flags::REQ_ONE`] one run is enough.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        pass_through!(self, "extents", |n: &dyn Handle| n.extents(count, offset, flags, extents), Err(Error::unsupported("extents")))
    }

    /// Prefetches `count` bytes at `offset` (advisory).
    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pass_through!(self, "cache", |n: &dyn Handle| n.cache(count, offset, flags), Err(Error::unsupported("cache")))
    }
}
