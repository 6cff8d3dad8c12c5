//! Test helpers shared by the filters' unit tests: a small RAM disk that logs the calls reaching
//! it and can be told to fail, and a one-layer backend that opens it (and can be told to fail
//! opens), so a filter can be opened as the server would.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{Backend, Capabilities, Error, Extents, Filter, Flags, Handle, OpenArgs, Result};

/// A RAM disk whose 512-byte blocks of zeroes are holes, logging `"op offset+count flags"`.
/// `fail_requests` counts down: while above zero, each request fails with `EIO` and takes one
/// off; `requests` counts every request.
#[derive(Clone)]
pub struct MemDisk {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub caps: Capabilities,
    /// Milliseconds each read sleeps after taking its data: widens the window of races.
    pub read_pause_ms: Arc<AtomicU64>,
    pub fail_requests: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub readonly: bool,
}

impl MemDisk {
    pub fn new(size: usize) -> Self {
        MemDisk {
            data: Arc::new(Mutex::new(vec![0; size])),
            log: Arc::default(),
            caps: Capabilities::ALL,
            read_pause_ms: Arc::default(),
            fail_requests: Arc::default(),
            requests: Arc::default(),
            readonly: false,
        }
    }

    /// Logs a request, and fails it while `fail_requests` says so.
    fn record(&self, op: &str, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.log.lock().unwrap().push(format!("{op} {offset}+{count} {}", flags.bits()));
        self.requests.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.fail_requests) {
            return Err(Error::io(format!("memdisk: {op} failed on purpose")));
        }
        Ok(())
    }

    /// The calls so far, emptying the log.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn fill(&self, count: u64, offset: u64, byte: u8) {
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + count as usize].fill(byte);
    }
}

impl Handle for MemDisk {
    fn get_size(&self) -> Result<u64> {
        Ok(self.data.lock().unwrap().len() as u64)
    }
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { write: self.caps.write && !self.readonly, ..self.caps })
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.record("pread", buf.len() as u64, offset, flags)?;
        let o = offset as usize;
        buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
        std::thread::sleep(Duration::from_millis(self.read_pause_ms.load(Ordering::Relaxed)));
        Ok(())
    }
    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.record("pwrite", buf.len() as u64, offset, flags)?;
        if self.readonly {
            return Err(Error::new(libc::EROFS, "memdisk: read-only"));
        }
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self, flags: Flags) -> Result<()> {
        self.record("flush", 0, 0, flags)?;
        Ok(())
    }
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.record("trim", count, offset, flags)?;
        self.fill(count, offset, 0);
        Ok(())
    }
    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.record("zero", count, offset, flags)?;
        self.fill(count, offset, 0);
        Ok(())
    }
    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.record("cache", count, offset, flags)?;
        Ok(())
    }
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.record("extents", count, offset, flags)?;
        let data = self.data.lock().unwrap();
        let end = (offset + count).min(data.len() as u64);
        let mut at = offset;
        while at < end {
            let block_end = ((at / 512 + 1) * 512).min(end);
            let zero = data[at as usize..block_end as usize].iter().all(|&b| b == 0);
            extents.add(at, block_end - at, if zero { HOLE | ZERO } else { DATA })?;
            at = block_end;
        }
        Ok(())
    }
}

/// A stack of one layer opening handles onto the same [`MemDisk`]. `fail_opens` counts down
/// as the disk's `fail_requests` does; `opens` counts every open.
pub struct MemBackend {
    pub disk: MemDisk,
    pub fail_opens: AtomicUsize,
    pub opens: AtomicUsize,
}

impl MemBackend {
    pub fn new(disk: MemDisk) -> Self {
        MemBackend { disk, fail_opens: AtomicUsize::new(0), opens: AtomicUsize::new(0) }
    }

    /// A disk of `size` zero bytes, as the `Arc<dyn Backend>` a filter's open takes.
    pub fn disk(size: usize) -> Arc<dyn Backend> {
        Arc::new(Self::new(MemDisk::new(size)))
    }

    /// The same, failing the first `opens` opens and the first `requests` requests.
    pub fn failing(size: usize, opens: usize, requests: usize) -> Arc<MemBackend> {
        let backend = Self::new(MemDisk::new(size));
        backend.fail_opens.store(opens, Ordering::SeqCst);
        backend.disk.fail_requests.store(requests, Ordering::SeqCst);
        Arc::new(backend)
    }
}

/// Takes one off `counter` if it is above zero; true if it was.
fn take_one(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl Backend for MemBackend {
    fn name(&self) -> &str {
        "memdisk"
    }
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.fail_opens) {
            return Err(Error::io("memdisk: open failed on purpose"));
        }
        Ok(Box::new(MemDisk { readonly: args.readonly, ..self.disk.clone() }))
    }
}

/// Configures `filter` with `params` as the server would and opens it over `disk`.
pub fn open_over<F: Filter>(mut filter: F, params: &[(&str, &str)], disk: &MemDisk) -> Result<Box<dyn Handle>> {
    for (k, v) in params {
        assert!(filter.config(k, v)?, "{k} is the filter's parameter");
    }
    filter.config_complete()?;
    let next: Arc<dyn Backend> = Arc::new(MemBackend::new(disk.clone()));
    filter.get_ready(&next)?;
    filter.open(&next, &OpenArgs::local("", false))
}
