//! The `openonce` filter: opens the layer below once per export (and read-only or not) and
//! shares that one handle among every connection, for plugins that are slow to open (remote
//! logins, VMware). The shared handles stay open until the server exits, when `cleanup`
//! finalizes them.
//!
//! Each connection's handle forwards every call to the shared one instead of exposing it
//! through [`Handle::next`], so that the server does not finalize it when a connection ends.
//! The shared handle was opened with the first client's connection context.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nbdforge_api::{
    debug, Backend, BlockSize, Capabilities, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink,
    Registration, Result, ThreadModel,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(LayerInfo::new("openonce", "opens the underlying plugin once"), OpenOnceFilter::default)
}

/// Handles of the layer below by export name and read-only flag.
type Shared = HashMap<(String, bool), Arc<dyn Handle>>;

/// The `openonce` filter. It takes no parameters.
#[derive(Default)]
pub struct OpenOnceFilter {
    shared: Mutex<Shared>,
}

impl std::fmt::Debug for OpenOnceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOnceFilter").field("open", &self.lock().len()).finish()
    }
}

impl OpenOnceFilter {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Layer for OpenOnceFilter {
    fn cleanup(&self) {
        for ((export, _), handle) in self.lock().drain() {
            if let Err(e) = handle.finalize() {
                debug!("finalizing the shared handle of export '{export}': {e}");
            }
        }
    }
}

impl Filter for OpenOnceFilter {
    fn thread_model(&self, below: ThreadModel) -> ThreadModel {
        // Every connection's requests reach the one handle below: a layer that takes one
        // request at a time per handle now takes one at a time overall.
        if below == ThreadModel::SerializeRequests {
            ThreadModel::SerializeAllRequests
        } else {
            below
        }
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        // Held while opening, so that two first clients do not both open the layer below.
        let mut shared = self.lock();
        let key = (args.export_name.clone(), args.readonly);
        let handle = match shared.get(&key) {
            Some(handle) => Arc::clone(handle),
            None => {
                debug!("opening the layer below for export '{}'", args.export_name);
                let handle: Arc<dyn Handle> = Arc::from(next.open(args)?);
                shared.insert(key, Arc::clone(&handle));
                handle
            }
        };
        Ok(Box::new(OpenOnceHandle { shared: handle }))
    }
}

/// One connection's view of the shared handle.
struct OpenOnceHandle {
    shared: Arc<dyn Handle>,
}

impl Handle for OpenOnceHandle {
    fn get_size(&self) -> Result<u64> {
        self.shared.get_size()
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.shared.block_size()
    }

    fn export_description(&self) -> Result<Option<String>> {
        self.shared.export_description()
    }

    fn capabilities(&self) -> Result<Capabilities> {
        self.shared.capabilities()
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.shared.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.shared.pread(buf, offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.shared.pwrite(buf, offset, flags)
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.shared.flush(flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.shared.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.shared.zero(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.shared.extents(count, offset, flags, extents)
    }

    fn meta_contexts(&self) -> Result<Vec<String>> {
        self.shared.meta_contexts()
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.shared.block_status(context, count, offset, flags, extents)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.shared.cache(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;
    use std::sync::atomic::Ordering;

    #[test]
    fn one_open_per_export_shared_by_every_connection() {
        let f = OpenOnceFilter::default();
        let memory = MemBackend::failing(4096, 0, 0);
        let next: Arc<dyn Backend> = memory.clone();
        let a = f.open(&next, &OpenArgs::local("", false)).unwrap();
        let b = f.open(&next, &OpenArgs::local("", false)).unwrap();
        a.pwrite(b"shared", 0, Flags::NONE).unwrap();
        let mut buf = [0u8; 6];
        b.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"shared");
        assert_eq!(memory.opens.load(Ordering::SeqCst), 1);
        let _ro = f.open(&next, &OpenArgs::local("", true)).unwrap();
        let _other = f.open(&next, &OpenArgs::local("other", false)).unwrap();
        assert_eq!(memory.opens.load(Ordering::SeqCst), 3, "one more per export and mode");
        f.cleanup();
        assert!(f.lock().is_empty());
    }
}
