//! [`FileStorage`]: one open regular file or block device, with the I/O a block device server and a
//! format driver need. All I/O is positional, so any number of threads may use one `FileStorage`
//! at once, without a lock or a shared file offset.

use std::collections::VecDeque;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};

use crate::allocation::{Allocation, HoleSearch, Runs};
use crate::sys::{sync_file_range, to_off, Writeback};
use crate::{Error, Result};

/// Reads at least this long may be sent with `sendfile` (see `FileStorage::can_sendfile`).
pub const SENDFILE_MIN: u64 = 64 << 10;
/// Whether the page cache keeps the file's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageCache {
    /// The kernel's default: data stays cached.
    #[default]
    Keep,
    /// Drop data from the page cache once it has been read or written back, so that serving a
    /// large image does not push everything else out of memory.
    Evict,
}

/// The access pattern announced to the kernel with `posix_fadvise`; it tunes readahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessPattern {
    /// No particular pattern (the kernel's default).
    #[default]
    Normal,
    /// Random access: read no more than asked.
    Random,
    /// Sequential access: read ahead further.
    Sequential,
}

/// How [`FileStorage::zero`] made a range read as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMethod {
    /// A hole was punched: the space is freed.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`: zeroes that keep their space.
    ZeroRange,
    /// A hole was punched and allocated again, for file systems without `ZERO_RANGE`.
    PunchAndReallocate,
}

impl ZeroMethod {
    /// The method in words, for a log message ("zeroed by punching a hole").
    pub fn describe(self) -> &'static str {
        match self {
            ZeroMethod::PunchHole => "punching a hole",
            ZeroMethod::ZeroRange => "ZERO_RANGE",
            ZeroMethod::PunchAndReallocate => "punching a hole and reallocating",
        }
    }
}

/// True for what [`FileStorage`] can serve: a regular file or a block device.
pub fn is_file_or_block_device(meta: &Metadata) -> bool {
    meta.is_file() || meta.file_type().is_block_device()
}

fn check_type(meta: &Metadata) -> Result<()> {
    if is_file_or_block_device(meta) {
        Ok(())
    } else {
        Err(Error::NotFileOrBlockDevice)
    }
}

/// Opens `path`, for writing too when `write`. `O_NONBLOCK` keeps a FIFO put in place of a file
/// from hanging the open; it changes nothing for files and block devices.
fn open_file(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(write).custom_flags(libc::O_NONBLOCK).open(path)
}

/// True for the errors that mean "this file system or device cannot do that".
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENODEV | libc::ENOTTY))
}

/// Recent writes whose pages [`PageCache::Evict`] will drop from the page cache once written back.
/// Writeback of each write starts at once; the oldest is waited for and dropped when the list is
/// full, so at most [`RecentWrites::KEEP`] writes' worth of dirty data stays cached.
#[derive(Debug, Default)]
struct RecentWrites(Mutex<VecDeque<(u64, u64)>>);

impl RecentWrites {
    const KEEP: usize = 64;
}

/// An open regular file or block device. See the [crate documentation](crate).
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    /// The size when opened (a file may change under us; a block device does not).
    size: u64,
    writable: bool,
    is_block_device: bool,
    hole_search: HoleSearch,
    /// `Some` with [`PageCache::Evict`].
    recent_writes: Option<RecentWrites>,
    /// Cleared when the file system answers `EOPNOTSUPP`, so later requests skip the attempt.
    punch_hole_works: AtomicBool,
    zero_range_works: AtomicBool,
}

impl FileStorage {
    /// Opens a regular file or block device for reading and writing, or only for reading when
    /// writing is not permitted (`EACCES`, `EROFS`, `EPERM`): a base image owned by another user
    /// or on a read-only mount is still useful. [`is_writable`](Self::is_writable) tells which.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, true, open_file)
    }

    /// Opens a regular file or block device for reading only.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        Self::open_with(path, false, open_file)
    }

    /// `open` is the system call, replaceable in tests.
    fn open_with(path: &Path, write: bool, open: impl Fn(&Path, bool) -> io::Result<File>) -> Result<Self> {
        // Check the type before opening, so a FIFO or socket is refused without touching it.
        check_type(&std::fs::metadata(path).map_err(Error::Open)?)?;
        let (file, writable) = if write {
            match open(path, true) {
                Ok(file) => (file, true),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS | libc::EPERM)) => {
                    (open(path, false).map_err(Error::Open)?, false)
                }
                Err(e) => return Err(Error::Open(e)),
            }
        } else {
            (open(path, false).map_err(Error::Open)?, false)
        };
        // The path may have been replaced between the check and the open.
        let meta = file.metadata().map_err(Error::Open)?;
        check_type(&meta)?;
        let is_block_device = meta.file_type().is_block_device();
        let size = if is_block_device {
            // Seeking only to learn the size: all I/O is positional, so the offset is never used.
            (&file).seek(SeekFrom::End(0)).map_err(|e| Error::io("size of block device", e))?
        } else {
            meta.len()
        };
        let hole_search = HoleSearch::for_file(&file, is_block_device);
        Ok(FileStorage {
            file,
            size,
            writable,
            is_block_device,
            hole_search,
            recent_writes: None,
            punch_hole_works: AtomicBool::new(true),
            zero_range_works: AtomicBool::new(true),
        })
    }

    /// Sets what happens to the page cache (by default it keeps the data).
    pub fn with_page_cache(mut self, page_cache: PageCache) -> Self {
        self.recent_writes = (page_cache == PageCache::Evict).then(RecentWrites::default);
        self
    }

    /// Announces how the file will be accessed. Advice only: a file system that ignores it serves
    /// the file just the same, so failure is not reported.
    pub fn advise(&self, pattern: AccessPattern) {
        let advice = match pattern {
            AccessPattern::Normal => PosixFadviseAdvice::POSIX_FADV_NORMAL,
            AccessPattern::Random => PosixFadviseAdvice::POSIX_FADV_RANDOM,
            AccessPattern::Sequential => PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        };
        let _ = posix_fadvise(self.file.as_raw_fd(), 0, 0, advice);
    }

    /// The size in bytes when opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Whether [`allocation`](Self::allocation) can tell holes from data. Block devices and file
    /// systems without `SEEK_DATA` report everything as data.
    pub fn reports_holes(&self) -> bool {
        self.hole_search != HoleSearch::Unsupported
    }

    /// The length of the file now, which writes past the end change (a block device keeps its
    /// size); 0 if it cannot be read. Image formats that grow their file use it.
    pub fn current_len(&self) -> u64 {
        if self.is_block_device {
            return self.size;
        }
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Reads `buf.len()` bytes at `offset`. Reading past the end of the file (which shrank since
    /// it was opened) is an [`Error::ShortRead`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let length = buf.len() as u64;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::ShortRead { length, offset }
            } else {
                Error::io(format!("read at offset {offset}"), e)
            }
        })?;
        if self.recent_writes.is_some() {
            self.drop_cached(offset, length);
        }
        Ok(())
    }

    /// Whether a caller may send `[offset, offset + length)` straight from the descriptor
    /// ([`AsFd`]) with `sendfile`, instead of [`read_at`](Self::read_at). Not with
    /// [`PageCache::Evict`], whose reads drop pages (sendfile would bypass that), and not past the
    /// current end of a file that shrank since it was opened: sendfile would stop short, which a
    /// server cannot report cleanly once the reply has started. Not for reads under
    /// `SENDFILE_MIN` (64 KiB) either: there one copy costs less than the system calls sendfile needs
    /// (the size check, the holes, the header and the data each apart), and a copied reply can
    /// go out together with others.
    pub fn can_sendfile(&self, offset: u64, length: u64) -> bool {
        length >= SENDFILE_MIN && self.recent_writes.is_none() && offset.saturating_add(length) <= self.current_len()
    }

    /// Writes `buf` at `offset`. Not durable until [`sync_data`](Self::sync_data) or
    /// [`flush`](Self::flush).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| Error::io(format!("write at offset {offset}"), e))?;
        if let Some(recent) = &self.recent_writes {
            self.evict_after_write(recent, offset, buf.len() as u64);
        }
        Ok(())
    }

    /// Makes completed writes durable (`fdatasync`).
    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io("fdatasync", e))
    }

    /// [`sync_data`](Self::sync_data), and with [`PageCache::Evict`] drops everything written so
    /// far from the page cache, all of it being clean now.
    pub fn flush(&self) -> Result<()> {
        self.sync_data()?;
        if let Some(recent) = &self.recent_writes {
            let ranges: Vec<_> = recent.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
            for (offset, length) in ranges {
                self.drop_cached(offset, length);
            }
        }
        Ok(())
    }

    /// Punches a hole, freeing the space. Advisory, like a discard: where the file system cannot
    /// punch holes it does nothing and succeeds.
    pub fn trim(&self, offset: u64, length: u64) -> Result<()> {
        if self.punch_hole_works.load(Ordering::Relaxed) {
            let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match self.fallocate(mode, offset, length) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => self.punch_hole_works.store(false, Ordering::Relaxed),
                Err(e) => return Err(Error::io("trim", e)),
            }
        }
        Ok(())
    }

    /// Makes a range read as zeroes the cheapest way the file allows: punching a hole when
    /// `allow_hole`, then `FALLOC_FL_ZERO_RANGE`, then punching and reallocating. `Ok(None)` when
    /// none works here: the caller writes zeroes itself, or with `fast_only` reports that zeroing
    /// would be slow. `fast_only` also skips `ZERO_RANGE` on a block device, where the kernel may
    /// do it by writing zeroes.
    pub fn zero(&self, offset: u64, length: u64, allow_hole: bool, fast_only: bool) -> Result<Option<ZeroMethod>> {
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE;
        if allow_hole && self.try_fallocate(&self.punch_hole_works, punch, offset, length)? {
            return Ok(Some(ZeroMethod::PunchHole));
        }
        let zero_range = FallocateFlags::FALLOC_FL_ZERO_RANGE;
        if !(fast_only && self.is_block_device)
            && self.try_fallocate(&self.zero_range_works, zero_range, offset, length)?
        {
            return Ok(Some(ZeroMethod::ZeroRange));
        }
        // Without ZERO_RANGE (tmpfs, for one) a file can still punch and then reallocate.
        if !self.is_block_device && self.try_fallocate(&self.punch_hole_works, punch, offset, length)? {
            // The range already reads as zeroes; reallocating is only about keeping the space, so
            // a file system that cannot do it has still zeroed the range.
            let _ = self.fallocate(FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, length);
            return Ok(Some(ZeroMethod::PunchAndReallocate));
        }
        Ok(None)
    }

    /// The data and holes of `[offset, offset + length)`, run by run; see [`Runs`].
    pub fn allocation(&self, offset: u64, length: u64) -> Runs<'_> {
        Runs::new(self.file.as_fd(), self.hole_search, offset, length)
    }

    /// The holes in `[offset, offset + length)`, as `(start, length)` relative to `offset`: what a
    /// reader may send as zeroes without reading. Empty when the file system cannot say (holes
    /// are an optimisation, never needed for correct data).
    pub fn holes(&self, offset: u64, length: u64) -> Vec<(u64, u64)> {
        self.allocation(offset, length)
            .map_while(|run| run.ok())
            .filter(|run| run.allocation == Allocation::Hole)
            .map(|run| (run.offset - offset, run.length))
            .collect()
    }

    /// Asks the kernel to read a range into the page cache ahead of use (`POSIX_FADV_WILLNEED`).
    pub fn prefetch(&self, offset: u64, length: u64) -> Result<()> {
        // The step is named as the NBD command that asks for it.
        let fail = |e: io::Error| Error::io("cache", e);
        let (offset, length) = (to_off(offset).map_err(fail)?, to_off(length).map_err(fail)?);
        posix_fadvise(self.file.as_raw_fd(), offset, length, PosixFadviseAdvice::POSIX_FADV_WILLNEED)
            .map_err(|e| fail(e.into()))
    }

    fn fallocate(&self, mode: FallocateFlags, offset: u64, length: u64) -> io::Result<()> {
        fallocate(self.file.as_raw_fd(), mode, to_off(offset)?, to_off(length)?).map_err(io::Error::from)
    }

    /// Tries one `fallocate` mode for zeroing. `Ok(false)` when the file system lacks it (which is
    /// remembered in `works`), an error for any other failure.
    fn try_fallocate(&self, works: &AtomicBool, mode: FallocateFlags, offset: u64, length: u64) -> Result<bool> {
        if !works.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.fallocate(mode | FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, length) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(&e) => {
                works.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(Error::io("zero", e)),
        }
    }

    /// Drops the pages of a range from the page cache. Dirty pages and pages under I/O are kept by
    /// the kernel, so this never loses data.
    ///
    /// The kernel only drops a folio that lies wholly inside the range, and readahead builds folios
    /// of up to 2 MiB, so the range starts at the 2 MiB boundary below `offset`: a stream of small
    /// requests then drops each large folio with the request that finishes it. The end is not
    /// widened, so data read ahead for the next requests stays until they use it.
    fn drop_cached(&self, offset: u64, length: u64) {
        const FOLIO_MAX: u64 = 2 << 20;
        let start = offset / FOLIO_MAX * FOLIO_MAX;
        let end = offset.saturating_add(length);
        if let (Ok(start), Ok(len)) = (to_off(start), to_off(end - start)) {
            let _ = posix_fadvise(self.file.as_raw_fd(), start, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
    }

    /// [`PageCache::Evict`] after a write: start writeback now, and evict the oldest remembered
    /// write.
    fn evict_after_write(&self, recent: &RecentWrites, offset: u64, length: u64) {
        let fd = self.file.as_fd();
        let _ = sync_file_range(fd, offset, length, Writeback::Start);
        let oldest = {
            let mut ranges = recent.0.lock().unwrap_or_else(|e| e.into_inner());
            ranges.push_back((offset, length));
            if ranges.len() > RecentWrites::KEEP {
                ranges.pop_front()
            } else {
                None
            }
        };
        if let Some((offset, length)) = oldest {
            if sync_file_range(fd, offset, length, Writeback::Wait).is_ok() {
                self.drop_cached(offset, length);
            }
        }
    }
}

/// The descriptor, for `sendfile` (check [`FileStorage::can_sendfile`] first). Reading or writing
/// through it directly would bypass the page-cache handling.
impl AsFd for FileStorage {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TempDir;
    use crate::{Allocation, Run};
    use std::os::unix::fs::MetadataExt;

    fn allocated_bytes(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn write_read_sync_flush_prefetch() {
        let dir = TempDir::new();
        let path = dir.file("disk.img", 1 << 20);
        let storage = FileStorage::open(&path).unwrap();
        assert_eq!(storage.size(), 1 << 20);
        assert!(storage.is_writable());
        storage.write_at(b"hello world", 1000).unwrap();
        storage.sync_data().unwrap();
        storage.flush().unwrap();
        let mut back = [0u8; 11];
        storage.read_at(&mut back, 1000).unwrap();
        assert_eq!(&back, b"hello world");
        assert_eq!(&std::fs::read(&path).unwrap()[1000..1011], b"hello world");
        storage.prefetch(0, 4096).unwrap();
        assert!(storage.can_sendfile(0, 1 << 20));
        assert!(!storage.can_sendfile(1, 1 << 20), "past the end");
        assert!(!storage.can_sendfile(0, 4096), "a small read is copied");
    }

    #[test]
    fn short_read_says_the_file_shrank() {
        let dir = TempDir::new();
        let path = dir.file("short.img", 1 << 20);
        let storage = FileStorage::open(&path).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
        assert!(!storage.can_sendfile(0, SENDFILE_MIN), "sendfile would stop short");
        let err = storage.read_at(&mut [0u8; 512], 0).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert_eq!(err.to_string(), "read of 512 bytes at offset 0 ran past the end of the file (did it shrink?)");
    }

    #[test]
    fn trim_and_zero() {
        let dir = TempDir::new();
        let path = dir.file("sparse.img", 4 << 20);
        let storage = FileStorage::open(&path).unwrap();
        assert!(storage.reports_holes(), "the test needs a file system with SEEK_HOLE");
        storage.write_at(&vec![0xab; 1 << 20], 1 << 20).unwrap();

        // Trim punches a hole and frees the space.
        storage.trim(1 << 20, 512 << 10).unwrap();
        assert!(allocated_bytes(&path) <= 512 << 10, "{} bytes still allocated", allocated_bytes(&path));
        let first = storage.allocation(1 << 20, 1 << 20).next().unwrap().unwrap();
        assert_eq!(first, Run { offset: 1 << 20, length: 512 << 10, allocation: Allocation::Hole });

        // Zero without a hole allowed, then with one; both read back as zeroes.
        assert!(storage.zero((3 << 19) + 100, 4096, false, false).unwrap().is_some());
        let method = storage.zero((3 << 19) + 10000, 8192, true, true).unwrap();
        assert_eq!(method, Some(ZeroMethod::PunchHole));
        let mut back = vec![1u8; 1 << 20];
        storage.read_at(&mut back, 1 << 20).unwrap();
        assert!(back[..512 << 10].iter().all(|&b| b == 0));
        assert!(back[512 << 10..(512 << 10) + 100].iter().all(|&b| b == 0xab));
        assert!(back[(512 << 10) + 100..(512 << 10) + 4196].iter().all(|&b| b == 0));
        assert!(back[(512 << 10) + 10000..(512 << 10) + 18192].iter().all(|&b| b == 0));
        assert!(back[(512 << 10) + 18192..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn read_only_open() {
        let dir = TempDir::new();
        let path = dir.file("ro.img", 8192);
        let storage = FileStorage::open_read_only(&path).unwrap();
        assert!(!storage.is_writable());
        assert!(storage.write_at(b"x", 0).is_err());
    }

    #[test]
    fn falls_back_to_read_only_without_write_permission() {
        let dir = TempDir::new();
        let path = dir.file("locked.img", 8192);
        // Simulate a read-only mount: writing is refused with EROFS.
        let refuse_write = |p: &Path, write: bool| {
            if write {
                Err(io::Error::from_raw_os_error(libc::EROFS))
            } else {
                open_file(p, false)
            }
        };
        let storage = FileStorage::open_with(&path, true, refuse_write).unwrap();
        assert!(!storage.is_writable());
        assert_eq!(storage.size(), 8192);
        // Other errors are not turned into read-only service.
        let broken = |_: &Path, _: bool| -> io::Result<File> { Err(io::Error::from_raw_os_error(libc::EIO)) };
        let err = FileStorage::open_with(&path, true, broken).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert_eq!(err.to_string(), "I/O error");
    }

    #[test]
    fn refuses_what_is_not_a_file_or_block_device() {
        let dir = TempDir::new();
        let fifo = dir.0.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for path in [dir.0.as_path(), fifo.as_path(), Path::new("/dev/null")] {
            let err = FileStorage::open(path).unwrap_err();
            assert!(matches!(err, Error::NotFileOrBlockDevice), "{}: {err}", path.display());
            assert_eq!(err.errno(), libc::ENOENT);
        }
        let err = FileStorage::open(&dir.0.join("missing")).unwrap_err();
        assert_eq!((err.errno(), err.to_string()), (libc::ENOENT, "No such file or directory".to_string()));
    }

    #[test]
    fn evicting_the_page_cache_still_serves_data() {
        let dir = TempDir::new();
        let path = dir.file("nocache.img", 1 << 20);
        let storage = FileStorage::open(&path).unwrap().with_page_cache(PageCache::Evict);
        storage.advise(AccessPattern::Sequential);
        assert!(!storage.can_sendfile(0, SENDFILE_MIN), "sendfile would bypass the eviction");
        for i in 0..(RecentWrites::KEEP as u64 + 10) {
            storage.write_at(&[i as u8 + 1; 4096], i * 4096).unwrap();
        }
        storage.flush().unwrap();
        let mut back = [0u8; 4096];
        storage.read_at(&mut back, 70 * 4096).unwrap();
        assert_eq!(back, [71u8; 4096]);
    }
}
