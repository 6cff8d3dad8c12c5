//! What the core does for a layer that lacks an operation, as nbdkit does: zero by writing zeroes,
//! FUA by flushing after the write, cache by reading, block status as "all data".
//!
//! Every layer's handle is wrapped once per connection. The wrapper also asks the layer's
//! capabilities once, at open, so the request path never asks again; names the layer for
//! `debug!` during each call; turns `pread` from the layer above into a `read` of this layer, so
//! a layer that serves reads only through `read` (borrowed memory, a file) is read either way; and
//! finalizes the layer once, then the layer below it.

use std::sync::atomic::{AtomicBool, Ordering};

use nbdforge_api::context::enter_layer;
use nbdforge_api::{
    extents, BlockSize, BufferSink, Capabilities, Error, Extents, Flags, Handle, ReadSink, Result, Support,
    BASE_ALLOCATION, ZEROES,
};

/// A layer's handle with the core's emulation around it.
pub(crate) struct Emulated {
    inner: Box<dyn Handle>,
    caps: Capabilities,
    name: &'static str,
    finalized: AtomicBool,
}

impl Emulated {
    pub fn open(inner: Box<dyn Handle>, name: &'static str) -> Result<Box<dyn Handle>> {
        Ok(Box::new(Self::new(inner, name)?))
    }

    pub fn new(inner: Box<dyn Handle>, name: &'static str) -> Result<Emulated> {
        let mut caps = inner.capabilities()?;
        // Writing operations mean nothing without writes; a fast zero needs a native zero.
        if !caps.write {
            caps.trim = false;
            caps.zero = Support::None;
            caps.fua = Support::None;
        }
        caps.fast_zero &= caps.zero == Support::Native;
        Ok(Emulated { inner, caps, name, finalized: AtomicBool::new(false) })
    }

    /// Runs a write-like operation, turning FUA into a flush when the layer only emulates it.
    fn with_fua(&self, flags: Flags, op: impl FnOnce(Flags) -> Result<()>) -> Result<()> {
        if flags.contains(Flags::FUA) && self.caps.fua == Support::Emulate {
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
    fn next(&self) -> Option<&dyn Handle> {
        self.inner.next()
    }
    fn finalize(&self) -> Result<()> {
        if self.finalized.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mine = {
            let _layer = enter_layer(self.name);
            self.inner.finalize()
        };
        // The layer below is finalized even when this one failed, as it will be closed anyway.
        let below = self.inner.next().map_or(Ok(()), |next| next.finalize());
        mine.and(below)
    }
    fn get_size(&self) -> Result<u64> {
        let _layer = enter_layer(self.name);
        self.inner.get_size()
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        let _layer = enter_layer(self.name);
        self.inner.block_size()
    }
    fn export_description(&self) -> Result<Option<String>> {
        let _layer = enter_layer(self.name);
        self.inner.export_description()
    }
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(self.caps)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let _layer = enter_layer(self.name);
        self.inner.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let _layer = enter_layer(self.name);
        self.inner.read(count, offset, flags, sink)
    }

    // A hint that must stay cheap: no layer name for it.
    fn prefetch(&self, count: u64, offset: u64) {
        self.inner.prefetch(count, offset)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let _layer = enter_layer(self.name);
        self.with_fua(flags, |f| self.inner.pwrite(buf, offset, f))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        let _layer = enter_layer(self.name);
        if self.caps.flush {
            self.inner.flush(flags)
        } else {
            Ok(())
        }
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if !self.caps.trim {
            // Trim is advisory: a layer that cannot discard has nothing to do.
            return Ok(());
        }
        let _layer = enter_layer(self.name);
        self.with_fua(flags, |f| self.inner.trim(count, offset, f))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let fast = flags.contains(Flags::FAST_ZERO);
        if fast && !self.caps.fast_zero {
            return Err(Error::new(libc::ENOTSUP, "fast zero is not supported by this backend"));
        }
        let _layer = enter_layer(self.name);
        self.with_fua(flags, |f| {
            if self.caps.zero == Support::Native {
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
        if !self.caps.extents {
            return out.add(offset, count, extents::DATA);
        }
        let _layer = enter_layer(self.name);
        let before = out.next_offset();
        self.inner.extents(count, offset, flags, out)?;
        if out.next_offset() == before {
            return Err(Error::io("extents: the backend returned no extents"));
        }
        Ok(())
    }

    fn meta_contexts(&self) -> Result<Vec<String>> {
        let _layer = enter_layer(self.name);
        let mut contexts = self.inner.meta_contexts()?;
        // Every export answers base:allocation, natively or by emulation, and it comes first so
        // that its id is always 1.
        contexts.retain(|c| c != BASE_ALLOCATION);
        contexts.insert(0, BASE_ALLOCATION.to_string());
        Ok(contexts)
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, out: &mut Extents) -> Result<()> {
        if context == BASE_ALLOCATION {
            return self.extents(count, offset, flags, out);
        }
        let _layer = enter_layer(self.name);
        let before = out.next_offset();
        self.inner.block_status(context, count, offset, flags, out)?;
        if out.next_offset() == before {
            return Err(Error::io(format!("block status of {context}: the backend returned no extents")));
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let _layer = enter_layer(self.name);
        match self.caps.cache {
            Support::Native => self.inner.cache(count, offset, flags),
            Support::Emulate => {
                let mut buf = vec![0u8; count.min(1 << 20) as usize];
                let mut done = 0;
                while done < count {
                    let n = (count - done).min(buf.len() as u64) as usize;
                    self.inner.read(n as u64, offset + done, Flags::NONE, &mut BufferSink(&mut buf[..n]))?;
                    done += n as u64;
                }
                Ok(())
            }
            Support::None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use nbdforge_api::extents::DATA;
    use nbdforge_api::Extent;

    use super::*;

    type Calls = Arc<Mutex<Vec<&'static str>>>;

    /// A writable RAM disk that implements only pread, pwrite and flush, and records its calls.
    struct Minimal {
        data: Mutex<Vec<u8>>,
        calls: Calls,
    }

    fn minimal(size: usize) -> (Emulated, Calls) {
        let calls = Calls::default();
        let disk = Minimal { data: Mutex::new(vec![0xff; size]), calls: Arc::clone(&calls) };
        (Emulated::new(Box::new(disk), "minimal").unwrap(), calls)
    }

    fn take(calls: &Calls) -> Vec<&'static str> {
        std::mem::take(&mut *calls.lock().unwrap())
    }

    impl Handle for Minimal {
        fn get_size(&self) -> Result<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }
        fn capabilities(&self) -> Result<Capabilities> {
            Ok(Capabilities {
                write: true,
                flush: true,
                zero: Support::Emulate,
                fua: Support::Emulate,
                cache: Support::Emulate,
                // Meaningless without a native zero: the core must not offer it.
                fast_zero: true,
                ..Capabilities::READ_ONLY
            })
        }
        fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
            self.calls.lock().unwrap().push("pread");
            let o = offset as usize;
            buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
            Ok(())
        }
        fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
            assert!(!flags.contains(Flags::FUA), "FUA reached a layer that only emulates it");
            self.calls.lock().unwrap().push("pwrite");
            let o = offset as usize;
            self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self, _flags: Flags) -> Result<()> {
            self.calls.lock().unwrap().push("flush");
            Ok(())
        }
    }

    #[test]
    fn zero_is_written_as_zeroes_and_fua_becomes_a_flush() {
        let (e, calls) = minimal(3 << 20);
        assert!(!e.capabilities().unwrap().fast_zero, "fast zero needs a native zero");
        e.zero(2 << 20, 4096, Flags::FUA | Flags::MAY_TRIM).unwrap();
        assert_eq!(take(&calls), ["pwrite", "pwrite", "flush"], "1 MiB writes of zeroes, then the flush for FUA");
        let mut buf = vec![1u8; (2 << 20) + 2];
        e.pread(&mut buf, 4095, Flags::NONE).unwrap();
        assert_eq!(buf[0], 0xff, "the byte before the range is untouched");
        assert_eq!(*buf.last().unwrap(), 0xff, "the byte after the range is untouched");
        assert!(buf[1..buf.len() - 1].iter().all(|&b| b == 0));
    }

    #[test]
    fn fast_zero_is_refused_without_touching_the_disk() {
        let (e, calls) = minimal(4096);
        assert_eq!(e.zero(4096, 0, Flags::FAST_ZERO).unwrap_err().errno, libc::ENOTSUP);
        assert!(take(&calls).is_empty());
    }

    #[test]
    fn write_with_fua_is_followed_by_a_flush() {
        let (e, calls) = minimal(4096);
        e.pwrite(&[7; 512], 0, Flags::FUA).unwrap();
        e.pwrite(&[7; 512], 512, Flags::NONE).unwrap();
        assert_eq!(take(&calls), ["pwrite", "flush", "pwrite"]);
    }

    #[test]
    fn cache_reads_and_extents_report_all_data() {
        let (e, calls) = minimal(3 << 20);
        e.cache(3 << 20, 0, Flags::NONE).unwrap();
        assert_eq!(take(&calls), ["pread", "pread", "pread"], "cache reads the range in 1 MiB pieces");
        let mut ext = Extents::new(0, 3 << 20);
        e.extents(3 << 20, 0, Flags::NONE, &mut ext).unwrap();
        assert_eq!(ext.as_slice(), &[Extent { offset: 0, length: 3 << 20, flags: DATA }]);
    }
}
