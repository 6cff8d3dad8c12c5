//! For the filters' unit tests: a layer below to open, a RAM disk shared by all its handles,
//! that can be told to fail opens and requests and counts what reached it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nbdforge_api::{
    Backend, Capabilities, ClientInfo, Error, Export, Extents, Flags, Handle, OpenArgs, Result, ThreadModel,
};

/// A RAM disk backend. `fail_opens` and `fail_requests` count down: while above zero, each
/// open (or data request) fails with `EIO` and takes one off.
pub struct MemoryBackend {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub fail_opens: AtomicUsize,
    pub fail_requests: Arc<AtomicUsize>,
    pub opens: AtomicUsize,
    pub requests: Arc<AtomicUsize>,
}

impl MemoryBackend {
    /// A disk of `size` zero bytes, as the `Arc<dyn Backend>` a filter's open takes.
    pub fn disk(size: usize) -> Arc<dyn Backend> {
        Self::failing(size, 0, 0)
    }

    /// The same, failing the first `opens` opens and the first `requests` requests.
    pub fn failing(size: usize, opens: usize, requests: usize) -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend {
            data: Arc::new(Mutex::new(vec![0; size])),
            fail_opens: AtomicUsize::new(opens),
            fail_requests: Arc::new(AtomicUsize::new(requests)),
            opens: AtomicUsize::new(0),
            requests: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// Takes one off `counter` if it is above zero; true if it was.
fn take_one(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl Backend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }
    fn preconnect(&self, _client: &ClientInfo, _readonly: bool) -> Result<()> {
        Ok(())
    }
    fn list_exports(&self, _readonly: bool, _tls: bool) -> Result<Vec<Export>> {
        Ok(vec![Export::named("")])
    }
    fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
        Ok(String::new())
    }
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.fail_opens) {
            return Err(Error::io("memory: open failed on purpose"));
        }
        Ok(Box::new(MemoryHandle {
            data: Arc::clone(&self.data),
            readonly: args.readonly,
            fail_requests: Arc::clone(&self.fail_requests),
            requests: Arc::clone(&self.requests),
        }))
    }
    fn cleanup(&self) {}
}

struct MemoryHandle {
    data: Arc<Mutex<Vec<u8>>>,
    readonly: bool,
    fail_requests: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl MemoryHandle {
    fn request(&self) -> Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.fail_requests) {
            return Err(Error::io("memory: request failed on purpose"));
        }
        Ok(())
    }
}

impl Handle for MemoryHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.data.lock().unwrap().len() as u64)
    }
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { write: !self.readonly, ..Capabilities::ALL })
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.request()?;
        let o = offset as usize;
        buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
        Ok(())
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.request()?;
        if self.readonly {
            return Err(Error::new(libc::EROFS, "memory: read-only"));
        }
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.request()?;
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + count as usize].fill(0);
        Ok(())
    }
    fn trim(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        self.request()
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        self.request()
    }
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        self.request()
    }
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        self.request()?;
        extents.add(offset, count, 0)
    }
}
