//! The files under a qcow2 image, for `imago`: its `Storage` trait over `nbdforge-storage`'s
//! [`FileStorage`], so that qcow2 images do their I/O through the same engine as raw images and
//! the `file` plugin (positional I/O, hole punching, page-cache eviction for `-n`), and so that
//! the holes of a raw backing file can be asked of the file itself.
//!
//! A qcow2 image grows its file by writing past the end, and may read past it (a cluster being
//! allocated): those reads return zeroes, as reads of a hole would.
//!
//! An internal snapshot is served by presenting its L1 table and size in place of the header's
//! ([`ImageFile::with_header`], used by [`crate::snapshot`]): imago then reads the snapshot as if
//! it were the active layer.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageOpenOptions};
use nbdforge_storage::{FileStorage, PageCache};

/// An image file (a qcow2 image, its backing files, its data file) as imago sees it.
#[derive(Debug)]
pub struct ImageFile {
    storage: FileStorage,
    path: PathBuf,
    helper: CommonStorageHelper,
    /// Bytes that reads from offset 0 see instead of the file's (the file is then read-only).
    header: Option<Vec<u8>>,
}

impl ImageFile {
    /// Opens `path`; `evict` keeps its data out of the page cache (`-n`).
    pub fn open(path: &Path, writable: bool, evict: bool) -> io::Result<ImageFile> {
        let opened = if writable { FileStorage::open(path) } else { FileStorage::open_read_only(path) };
        let storage = opened.map_err(storage_error)?;
        if writable && !storage.is_writable() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "Permission denied: cannot open it for writing (use -r to serve it read-only)",
            ));
        }
        let storage = if evict { storage.with_page_cache(PageCache::Evict) } else { storage };
        Ok(ImageFile { storage, path: path.to_path_buf(), helper: CommonStorageHelper::default(), header: None })
    }

    /// The same file, whose first `header.len()` bytes read as `header`. Writes are refused.
    pub fn with_header(self, header: Vec<u8>) -> ImageFile {
        ImageFile { header: Some(header), ..self }
    }

    /// The file's I/O engine.
    pub fn storage(&self) -> &FileStorage {
        &self.storage
    }

    /// Reads at `offset`; what lies past the end of the file reads as zeroes.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let available = self.storage.current_len().saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, past_end) = buf.split_at_mut(available);
        if !data.is_empty() {
            self.storage.read_at(data, offset).map_err(storage_error)?;
        }
        past_end.fill(0);
        if let Some(header) = &self.header {
            if offset < header.len() as u64 {
                let from = &header[offset as usize..];
                let n = from.len().min(buf.len());
                buf[..n].copy_from_slice(&from[..n]);
            }
        }
        Ok(())
    }
}

impl fmt::Display for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// An error of the storage engine, keeping its errno.
pub(crate) fn storage_error(e: nbdforge_storage::Error) -> io::Error {
    let errno = io::Error::from_raw_os_error(e.errno());
    io::Error::new(errno.kind(), e.to_string())
}

impl Storage for ImageFile {
    fn open(opts: StorageOpenOptions) -> io::Result<Self> {
        let path = opts
            .get_filename()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an image file without a name"))?;
        ImageFile::open(path, opts.get_writable(), opts.get_direct())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.storage.current_len())
    }

    /// Backing and data file names are relative to the image's directory.
    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        Ok(self.path.parent().unwrap_or(Path::new(".")).join(relative))
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, mut offset: u64) -> io::Result<()> {
        for mut buffer in bufv.into_inner() {
            let buffer: &mut [u8] = &mut buffer;
            self.read_at(buffer, offset)?;
            offset += buffer.len() as u64;
        }
        Ok(())
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, mut offset: u64) -> io::Result<()> {
        if self.header.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        for buffer in bufv.into_inner() {
            let buffer: &[u8] = &buffer;
            self.storage.write_at(buffer, offset).map_err(storage_error)?;
            offset += buffer.len() as u64;
        }
        Ok(())
    }

    /// Punches a hole; a file system that cannot is not an error (discards are advisory).
    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        self.storage.trim(offset, length).map_err(storage_error)
    }

    /// Nothing is buffered here: writes are in the kernel once they return.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.storage.flush().map_err(storage_error)
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}
