//! The layer below as an imago `Storage`, so that the qcow2 code of `nbdforge-img` (imago) can
//! read an image that a plugin serves: for the `qcow2dec` filter. Read-only: writes and
//! discards fail with `EROFS`, and nothing is ever opened by name (no backing or data files).

use std::fmt;
use std::io;
use std::sync::Arc;

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageOpenOptions};
use nbdforge_api::{Flags, Handle};

/// The image bytes, read from the layer below.
pub struct Below {
    handle: Arc<dyn Handle>,
    size: u64,
    helper: CommonStorageHelper,
}

impl Below {
    /// The layer below, of `size` bytes.
    pub fn new(handle: Arc<dyn Handle>, size: u64) -> Self {
        Below { handle, size, helper: CommonStorageHelper::default() }
    }
}

impl fmt::Debug for Below {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Below({} bytes)", self.size)
    }
}

impl fmt::Display for Below {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the layer below")
    }
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

impl Storage for Below {
    fn open(_opts: StorageOpenOptions) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "qcow2dec opens no file by name"))
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    /// A read past the end fails: a read-only image never grows, so its tables point there only
    /// when the image is truncated or hostile.
    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, mut offset: u64) -> io::Result<()> {
        for mut buffer in bufv.into_inner() {
            let buffer: &mut [u8] = &mut buffer;
            if offset.saturating_add(buffer.len() as u64) > self.size {
                return Err(io::Error::other(format!(
                    "the image is truncated or corrupt: it points to {} bytes at offset {offset}, past its end ({} bytes)",
                    buffer.len(),
                    self.size
                )));
            }
            self.handle
                .pread(buffer, offset, Flags::NONE)
                .map_err(|e| io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e.message))?;
            offset += buffer.len() as u64;
        }
        Ok(())
    }

    unsafe fn pure_writev(&self, _bufv: IoVector<'_>, _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    unsafe fn pure_discard(&self, _offset: u64, _length: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}
