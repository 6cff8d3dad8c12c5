//! The layer below as libext2fs's disk: byte-addressed reads and writes with a small cache of
//! single blocks.
//!
//! libext2fs reads one block at a time: a file's data, and for every data block the blocks
//! that map it (indirect blocks, extent tree nodes, the inode table). The cache keeps the last
//! few of those so that mapping a block does not go back down the stack each time. It is
//! write-through and belongs to one connection's filesystem, so it cannot go stale: every write
//! goes through it.
//!
//! An I/O error keeps its message here ([`Device::remember`]) so that the filter can say what
//! the layer below reported, not only libext2fs's errno.

use std::sync::Mutex;

use nbdforge_api::{Error, Flags, Handle, Result};

/// Blocks kept: enough for an inode table block and a few levels of mapping blocks.
const CACHE_BLOCKS: usize = 64;

/// The layer below, as libext2fs sees it.
pub struct Device {
    below: Box<dyn Handle>,
    size: u64,
    writable: bool,
    can_flush: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    block_size: usize,
    /// (byte offset, contents, last use), at most CACHE_BLOCKS, each `block_size` long.
    cache: Vec<(u64, Vec<u8>, u64)>,
    clock: u64,
    last_error: Option<Error>,
}

impl Device {
    /// The layer below's handle, with its size and capabilities.
    pub fn new(below: Box<dyn Handle>) -> Result<Device> {
        let size = below.get_size()?;
        let caps = below.capabilities()?;
        Ok(Device { below, size, writable: caps.write, can_flush: caps.flush, state: Mutex::default() })
    }

    /// The layer below's handle.
    pub fn below(&self) -> &dyn Handle {
        &*self.below
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The layer below takes writes.
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// libext2fs changed its block size: cached blocks of the old size are dropped.
    pub fn set_block_size(&self, size: usize) {
        let mut s = self.state();
        s.block_size = size;
        s.cache.clear();
    }

    /// Keeps the message of the error just returned to libext2fs.
    pub fn remember(&self, e: Error) {
        self.state().last_error = Some(e);
    }

    /// The message of the last I/O error, taken.
    pub fn take_error(&self) -> Option<Error> {
        self.state().last_error.take()
    }

    fn check(&self, offset: u64, len: usize, what: &str) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::io(format!(
                "ext2: the filesystem asked to {what} {len} bytes at byte {offset}, past the end of the disk \
                 ({} bytes): corrupt or truncated filesystem",
                self.size
            ))),
        }
    }

    /// Reads `buf.len()` bytes at `offset`; `one_block` reads may be served from the cache.
    pub fn read(&self, offset: u64, buf: &mut [u8], one_block: bool) -> Result<()> {
        self.check(offset, buf.len(), "read")?;
        let mut s = self.state();
        let cacheable = one_block && buf.len() == s.block_size;
        if cacheable {
            s.clock += 1;
            let now = s.clock;
            if let Some(entry) = s.cache.iter_mut().find(|e| e.0 == offset) {
                buf.copy_from_slice(&entry.1);
                entry.2 = now;
                return Ok(());
            }
        }
        drop(s);
        self.below.pread(buf, offset, Flags::NONE)?;
        if cacheable {
            let mut s = self.state();
            if s.block_size == buf.len() {
                let now = s.clock;
                if s.cache.len() >= CACHE_BLOCKS {
                    let oldest = s.cache.iter().enumerate().min_by_key(|(_, e)| e.2).map(|(i, _)| i);
                    if let Some(i) = oldest {
                        s.cache.swap_remove(i);
                    }
                }
                s.cache.push((offset, buf.to_vec(), now));
            }
        }
        Ok(())
    }

    /// Writes `buf` at `offset`, through the cache.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check(offset, buf.len(), "write")?;
        if !self.writable {
            return Err(Error::new(libc::EROFS, "ext2: the layer below is read-only"));
        }
        let end = offset + buf.len() as u64;
        let result = self.below.pwrite(buf, offset, Flags::NONE);
        self.state().cache.retain(|e| e.0 + e.1.len() as u64 <= offset || e.0 >= end);
        result
    }

    /// Makes what was written durable below.
    pub fn flush(&self) -> Result<()> {
        if self.can_flush {
            self.below.flush(Flags::NONE)?;
        }
        Ok(())
    }
}
