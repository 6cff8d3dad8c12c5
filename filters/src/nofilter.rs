//! The `nofilter` filter: passes every request and every reply through unchanged.
//!
//! It exists to prove the filter mechanism (and as the smallest filter to copy): its handle owns
//! the handle of the layer below and returns it from [`Handle::next`], overriding nothing else,
//! so the SDK's pass-through defaults forward every call; and it declares that it leaves read
//! data unchanged, so reads keep the zero-copy paths of the layer below.

use std::sync::Arc;

use nbdforge_api::{Backend, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result};

/// The `nofilter` filter. It takes no parameters.
#[derive(Debug, Default)]
pub struct NoFilter;

impl NoFilter {
    /// The filter, ready to use.
    pub fn new() -> Self {
        NoFilter
    }
}

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(LayerInfo::new("nofilter", "passes everything through unchanged"), NoFilter::new)
}

impl Layer for NoFilter {}

impl Filter for NoFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(NoFilterHandle { next: next.open(args)? }))
    }
}

/// A connection through the filter: only a link to the layer below.
struct NoFilterHandle {
    next: Box<dyn Handle>,
}

impl Handle for NoFilterHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::{Capabilities, Error, Export, Extents, Flags, Support};
    use std::sync::Mutex;

    type CallLog = Arc<Mutex<Vec<&'static str>>>;

    /// A 4 KiB writable RAM disk that records which calls reached it.
    struct RecordingHandle {
        data: Mutex<Vec<u8>>,
        calls: CallLog,
    }

    impl RecordingHandle {
        fn record(&self, call: &'static str) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Handle for RecordingHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(4096)
        }
        fn capabilities(&self) -> Result<Capabilities> {
            Ok(Capabilities { write: true, zero: Support::Native, extents: true, ..Capabilities::READ_ONLY })
        }
        fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
            self.record("pread");
            let o = offset as usize;
            buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
            Ok(())
        }
        fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
            self.record("pwrite");
            let o = offset as usize;
            self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn zero(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
            self.record("zero");
            Err(Error::new(libc::ENOSPC, "recording: disk full"))
        }
        fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
            self.record("extents");
            extents.add(offset, count, nbdforge_api::extents::HOLE)
        }
    }

    /// A stack of one plugin layer, opening [`RecordingHandle`]s.
    struct RecordingBackend {
        calls: CallLog,
    }

    impl Backend for RecordingBackend {
        fn name(&self) -> &str {
            "recording"
        }
        fn list_exports(&self, _readonly: bool, _tls: bool) -> Result<Vec<Export>> {
            Ok(vec![Export::named("only")])
        }
        fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
            Ok("only".into())
        }
        fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
            assert_eq!(args.export_name, "only");
            assert_eq!(args.conn.id(), 0);
            Ok(Box::new(RecordingHandle { data: Mutex::new(vec![0; 4096]), calls: self.calls.clone() }))
        }
    }

    #[test]
    fn everything_passes_through() {
        let filter = NoFilter::new();
        let args = OpenArgs::local("only", false);
        let calls = CallLog::default();
        let backend: Arc<dyn Backend> = Arc::new(RecordingBackend { calls: Arc::clone(&calls) });
        let h = filter.open(&backend, &args).unwrap();
        assert_eq!(filter.list_exports(backend.as_ref(), false, false).unwrap(), vec![Export::named("only")]);
        assert_eq!(filter.default_export(backend.as_ref(), false, false).unwrap(), "only");

        assert_eq!(h.get_size().unwrap(), 4096);
        let caps = h.capabilities().unwrap();
        assert!(caps.write && caps.extents);
        assert!(!caps.trim, "capabilities of the layer below, not defaults of the filter");
        assert_eq!(caps.zero, Support::Native);
        h.pwrite(b"through", 10, Flags::NONE).unwrap();
        let mut back = [0u8; 7];
        h.pread(&mut back, 10, Flags::NONE).unwrap();
        assert_eq!(&back, b"through");
        let err = h.zero(1, 0, Flags::NONE).unwrap_err();
        assert_eq!((err.errno, err.message.as_str()), (libc::ENOSPC, "recording: disk full"));
        let mut e = Extents::new(0, 4096);
        h.extents(4096, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice()[0].flags, nbdforge_api::extents::HOLE);

        assert_eq!(*calls.lock().unwrap(), ["pwrite", "pread", "zero", "extents"]);
        let below = h.next().expect("the filter exposes the layer below");
        assert_eq!(below.get_size().unwrap(), 4096);
    }
}
