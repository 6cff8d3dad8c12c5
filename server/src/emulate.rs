//! What the core does for a layer that lacks an operation, as nbdkit does: zero by writing zeroes,
//! FUA by flushing after the write, cache by reading, block status as "all data".
//!
//! Every layer's handle is wrapped once per connection. The wrapper also asks the layer's
//! capabilities once, at open, so the request path never calls `can_*` again.

use nbdforge_api::{extents, BlockSize, Error, Extents, Flags, Handle, Result, Support};

/// Zeroes for emulated zeroing, shared and never written.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

/// A layer's capabilities, asked once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub can_write: bool,
    pub can_flush: bool,
    pub is_rotational: bool,
    pub can_trim: bool,
    pub can_zero: Support,
    pub can_fast_zero: bool,
    pub can_fua: Support,
    pub can_multi_conn: bool,
    pub can_extents: bool,
    pub can_cache: Support,
}

impl Caps {
    fn of(h: &dyn Handle) -> Result<Caps> {
        let can_write = h.can_write()?;
        let can_zero = if can_write { h.can_zero()? } else { Support::None };
        Ok(Caps {
            can_write,
            can_flush: h.can_flush()?,
            is_rotational: h.is_rotational()?,
            can_trim: can_write && h.can_trim()?,
            can_zero,
            can_fast_zero: can_zero == Support::Native && h.can_fast_zero()?,
            can_fua: if can_write { h.can_fua()? } else { Support::None },
            can_multi_conn: h.can_multi_conn()?,
            can_extents: h.can_extents()?,
            can_cache: h.can_cache()?,
        })
    }
}

/// A layer's handle with the core's emulation around it.
pub(crate) struct Emulated {
    inner: Box<dyn Handle>,
    pub caps: Caps,
}

impl Emulated {
    pub fn open(inner: Box<dyn Handle>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(Self::new(inner)?))
    }

    pub fn new(inner: Box<dyn Handle>) -> Result<Emulated> {
        let caps = Caps::of(inner.as_ref())?;
        Ok(Emulated { inner, caps })
    }

    /// Runs a write-like operation, turning FUA into a flush when the layer only emulates it.
    fn with_fua(&self, flags: Flags, op: impl FnOnce(Flags) -> Result<()>) -> Result<()> {
        if flags.contains(Flags::FUA) && self.caps.can_fua == Support::Emulate {
            op(flags.without(Flags::FUA))?;
            self.inner.flush(Flags::NONE)
        } else {
            op(flags)
        }
    }

    fn write_zeroes(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let mut done = 0;
        while done < count {
            let n = (count - done).min(ZEROES.len() as u64);
            self.inner.pwrite(&ZEROES[..n as usize], offset + done, flags.without(Flags::FUA))?;
            done += n;
        }
        Ok(())
    }
}

impl Handle for Emulated {
    fn get_size(&self) -> Result<u64> {
        self.inner.get_size()
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.inner.block_size()
    }
    fn export_description(&self) -> Result<Option<String>> {
        self.inner.export_description()
    }
    fn can_write(&self) -> Result<bool> {
        Ok(self.caps.can_write)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(self.caps.can_flush)
    }
    fn is_rotational(&self) -> Result<bool> {
        Ok(self.caps.is_rotational)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(self.caps.can_trim)
    }
    fn can_zero(&self) -> Result<Support> {
        Ok(self.caps.can_zero)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(self.caps.can_fast_zero)
    }
    fn can_fua(&self) -> Result<Support> {
        Ok(self.caps.can_fua)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(self.caps.can_multi_conn)
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(self.caps.can_extents)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(self.caps.can_cache)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.inner.pread(buf, offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.with_fua(flags, |f| self.inner.pwrite(buf, offset, f))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        if self.caps.can_flush {
            self.inner.flush(flags)
        } else {
            Ok(())
        }
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if !self.caps.can_trim {
            // Trim is advisory: a layer that cannot discard has nothing to do.
            return Ok(());
        }
        self.with_fua(flags, |f| self.inner.trim(count, offset, f))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let fast = flags.contains(Flags::FAST_ZERO);
        if fast && !self.caps.can_fast_zero {
            return Err(Error::new(libc::ENOTSUP, "fast zero is not supported by this backend"));
        }
        self.with_fua(flags, |f| {
            if self.caps.can_zero == Support::Native {
                match self.inner.zero(count, offset, f) {
                    Err(e) if !fast && (e.errno == libc::EOPNOTSUPP || e.errno == libc::ENOTSUP) => {}
                    other => return other,
                }
            }
            self.write_zeroes(count, offset, f)?;
            if f.contains(Flags::FUA) {
                self.inner.flush(Flags::NONE)?;
            }
            Ok(())
        })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, out: &mut Extents) -> Result<()> {
        if !self.caps.can_extents {
            return out.add(offset, count, extents::DATA);
        }
        let before = out.next_offset();
        self.inner.extents(count, offset, flags, out)?;
        if out.next_offset() == before {
            return Err(Error::io("extents: the backend returned no extents"));
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match self.caps.can_cache {
            Support::Native => self.inner.cache(count, offset, flags),
            Support::Emulate => {
                let mut buf = vec![0u8; count.min(1 << 20) as usize];
                let mut done = 0;
                while done < count {
                    let n = (count - done).min(buf.len() as u64) as usize;
                    self.inner.pread(&mut buf[..n], offset + done, Flags::NONE)?;
                    done += n as u64;
                }
                Ok(())
            }
            Support::None => Ok(()),
        }
    }
}
