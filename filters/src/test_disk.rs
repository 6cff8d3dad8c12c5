//! Test helpers shared by the data-path filters' unit tests (the operational filters use
//! `testing`): a small RAM disk that logs the calls reaching
//! it, and a one-layer backend that opens it, so a filter can be opened as the server would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    Backend, Capabilities, ClientInfo, Export, Extents, Filter, Flags, Handle, OpenArgs, Result, ThreadModel,
};

/// A RAM disk whose 512-byte blocks of zeroes are holes, logging `"op offset+count flags"`.
#[derive(Clone)]
pub struct MemDisk {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub caps: Capabilities,
    /// Milliseconds each read sleeps after taking its data: widens the window of races.
    pub read_pause_ms: Arc<AtomicU64>,
}

impl MemDisk {
    pub fn new(size: usize) -> Self {
        MemDisk {
            data: Arc::new(Mutex::new(vec![0; size])),
            log: Arc::default(),
            caps: Capabilities::ALL,
            read_pause_ms: Arc::default(),
        }
    }

    fn record(&self, op: &str, count: u64, offset: u64, flags: Flags) {
        self.log.lock().unwrap().push(format!("{op} {offset}+{count} {}", flags.bits()));
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
        Ok(self.caps)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.record("pread", buf.len() as u64, offset, flags);
        let o = offset as usize;
        buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
        std::thread::sleep(Duration::from_millis(self.read_pause_ms.load(Ordering::Relaxed)));
        Ok(())
    }
    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.record("pwrite", buf.len() as u64, offset, flags);
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self, flags: Flags) -> Result<()> {
        self.record("flush", 0, 0, flags);
        Ok(())
    }
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.record("trim", count, offset, flags);
        self.fill(count, offset, 0);
        Ok(())
    }
    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.record("zero", count, offset, flags);
        self.fill(count, offset, 0);
        Ok(())
    }
    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.record("cache", count, offset, flags);
        Ok(())
    }
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
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

/// A stack of one layer opening handles onto the same [`MemDisk`].
pub struct MemBackend(pub MemDisk);

impl Backend for MemBackend {
    fn name(&self) -> &str {
        "memdisk"
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
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(self.0.clone()))
    }
    fn cleanup(&self) {}
}

/// Configures `filter` with `params` as the server would and opens it over `disk`.
pub fn open_over<F: Filter>(mut filter: F, params: &[(&str, &str)], disk: &MemDisk) -> Result<Box<dyn Handle>> {
    for (k, v) in params {
        assert!(filter.config(k, v)?, "{k} is the filter's parameter");
    }
    filter.config_complete()?;
    let next: Arc<dyn Backend> = Arc::new(MemBackend(disk.clone()));
    filter.get_ready(&next)?;
    filter.open(&next, &OpenArgs::local("", false))
}
