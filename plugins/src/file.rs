//! The `file` plugin: serves a regular file or a block device (`file=PATH`), or every such file in
//! a directory, chosen by export name (`dir=DIR`).
//!
//! Each connection opens the file itself and then reads and writes with positional I/O, so requests
//! on one connection, or on many, run in parallel without a lock or a shared file offset. Holes
//! are found with `SEEK_DATA`/`SEEK_HOLE` (on tmpfs, where `SEEK_HOLE` is slow, by sampling with
//! `SEEK_DATA`), punched with `fallocate`, and zeroing uses the cheapest
//! of punching (when the client allows holes), `FALLOC_FL_ZERO_RANGE`, or punch-then-reallocate;
//! when none works the core writes zeroes instead.
//!
//! A file the server may only read is served read-only, with a warning, rather than refused: it is
//! the common case of serving a base image owned by another user or on a read-only mount.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    parse_choice, Capabilities, Error, Export, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, ReadSink,
    Registration, Result,
};
use nix::errno::Errno;
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};
use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};
use nix::unistd::{lseek, Whence};

use crate::sys::{io_error, sync_file_range, to_off, Writeback};

/// What the plugin serves.
#[derive(Debug, Clone)]
enum Source {
    /// One file or block device; the export name is ignored.
    File(Location),
    /// The files of a directory, one export each.
    Dir(Location),
}

/// A path as the user typed it (for messages) and made absolute (to open, even if the server
/// changes directory when it daemonizes).
#[derive(Debug, Clone)]
struct Location {
    given: String,
    path: PathBuf,
}

impl Location {
    fn new(key: &str, value: &str) -> Result<Self> {
        if value.is_empty() {
            return Err(Error::invalid(format!("{key}=: the path is empty")));
        }
        let path = std::path::absolute(value).map_err(|e| io_error(format!("{key}={value}"), &e))?;
        Ok(Location { given: value.to_string(), path })
    }
}

/// `cache=`: whether to keep the file's data in the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheMode {
    Default,
    /// Drop data from the page cache once it has been read or written back.
    None,
}

/// The `file` plugin. Configure with `file=PATH` or `dir=DIR`, and optionally `cache=` and
/// `fadvise=`.
pub struct FilePlugin {
    file: Option<Location>,
    dir: Option<Location>,
    source: Option<Source>,
    cache: CacheMode,
    fadvise: PosixFadviseAdvice,
    /// Paths already reported as served read-only, so the warning is not repeated per connection.
    warned_read_only: Mutex<HashSet<PathBuf>>,
    /// `-D file.zero=1`: log how each zero request was done.
    debug_zero: bool,
}

impl Default for FilePlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl FilePlugin {
    /// An unconfigured plugin.
    pub fn new() -> Self {
        FilePlugin {
            file: None,
            dir: None,
            source: None,
            cache: CacheMode::Default,
            fadvise: PosixFadviseAdvice::POSIX_FADV_NORMAL,
            warned_read_only: Mutex::new(HashSet::new()),
            debug_zero: false,
        }
    }

    fn source(&self) -> Result<&Source> {
        self.source.as_ref().ok_or_else(|| Error::invalid("file: used before config_complete"))
    }

    /// Opens `location` for one connection: read-write unless `readonly`, falling back to
    /// read-only (with a warning) when the file may not be written.
    fn open_location(&self, location: &Location, readonly: bool) -> Result<FileHandle> {
        let name = location.given.as_str();
        let (file, writable) = open_image(&location.path, name, readonly, open_file)?;
        if !readonly && !writable {
            let mut warned = self.warned_read_only.lock().unwrap_or_else(|e| e.into_inner());
            if warned.insert(location.path.clone()) {
                tracing::warn!("file: {name}: no write access, serving it read-only");
            }
        }
        let mut handle = FileHandle::new(file, name.to_string(), writable, self.cache, self.fadvise)?;
        handle.debug_zero = self.debug_zero;
        Ok(handle)
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("file", "serves a file or block device, or the files of a directory")
        .help(
            "[file=]<FILENAME>                  The file or block device to serve.\n\
             dir=<DIRECTORY>                    Serve each file in DIRECTORY under its name (instead of file=).\n\
             cache=default|none                 none: keep the file's data out of the page cache.\n\
             fadvise=normal|random|sequential   Hint the kernel about the access pattern (default: normal).",
        )
        .magic("file");
    Registration::plugin(info, FilePlugin::new)
}

impl Layer for FilePlugin {
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        match flag {
            "zero" => self.debug_zero = value != 0,
            _ => return false,
        }
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "file" => self.file = Some(Location::new(key, value)?),
            // directory= is nbdkit's other spelling of dir=.
            "dir" | "directory" => self.dir = Some(Location::new(key, value)?),
            "cache" => {
                self.cache = match parse_choice(key, value, &["default", "none"])? {
                    "none" => CacheMode::None,
                    _ => CacheMode::Default,
                }
            }
            "fadvise" => {
                self.fadvise = match parse_choice(key, value, &["normal", "random", "sequential"])? {
                    "random" => PosixFadviseAdvice::POSIX_FADV_RANDOM,
                    "sequential" => PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
                    _ => PosixFadviseAdvice::POSIX_FADV_NORMAL,
                }
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown parameter '{key}' (file takes file=, dir=, cache= and fadvise=)"
                )))
            }
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.source = Some(match (self.file.clone(), self.dir.clone()) {
            (Some(file), None) => Source::File(file),
            (None, Some(dir)) => Source::Dir(dir),
            (Some(file), Some(dir)) => {
                return Err(Error::invalid(format!(
                    "give file= or dir=, not both (file={}, dir={})",
                    file.given, dir.given
                )))
            }
            (None, None) => {
                return Err(Error::invalid("you must give file=<FILENAME> (or a bare FILENAME) or dir=<DIRECTORY>"))
            }
        });
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        ["file_falloc_fl_punch_hole", "file_falloc_fl_zero_range"]
            .iter()
            .map(|key| (key.to_string(), "yes".to_string()))
            .collect()
    }
}

impl Plugin for FilePlugin {
    /// Checks, before the server listens, that the file can be opened and is a file or block
    /// device, or that the directory can be listed.
    fn get_ready(&mut self) -> Result<()> {
        match self.source()? {
            Source::File(location) => {
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&location.path)
                    .map_err(|e| io_error(&location.given, &e))?;
                let meta = file.metadata().map_err(|e| io_error(&location.given, &e))?;
                if meta.is_dir() {
                    return Err(Error::invalid(format!(
                        "{}: is a directory (use dir={} to serve the files in it)",
                        location.given, location.given
                    )));
                }
                check_servable(&meta, &location.given)
            }
            Source::Dir(location) => {
                std::fs::read_dir(&location.path).map(drop).map_err(|e| io_error(format!("dir={}", location.given), &e))
            }
        }
    }

    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        match self.source()? {
            Source::File(_) => Ok(vec![Export::named(self.default_export(readonly, tls)?)]),
            Source::Dir(location) => list_directory(location),
        }
    }

    /// With `dir=` there is no default export: a client must name a file (nbdkit behaves the
    /// same), so the default resolves to `""`, which `open` refuses with a hint.
    fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
        Ok(String::new())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let handle = match self.source()? {
            Source::File(location) => self.open_location(location, args.readonly)?,
            Source::Dir(dir) => {
                let name = args.export_name.as_str();
                check_export_name(name, &dir.given)?;
                let location = Location {
                    given: format!("{}/{name}", dir.given.trim_end_matches('/')),
                    path: dir.path.join(name),
                };
                self.open_location(&location, args.readonly)?
            }
        };
        Ok(Box::new(handle))
    }
}

/// Refuses export names that are not a plain file name inside the directory.
fn check_export_name(name: &str, dir: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(
            libc::ENOENT,
            format!("file: dir={dir}: there is no default export; ask for a file by name (nbdinfo --list shows them)"),
        ));
    }
    if name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::invalid(format!(
            "file: dir={dir}: export name '{}' is not a file name in the directory ('/', '.' and '..' are refused)",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// The regular files and block devices directly in the directory (following symbolic links), in
/// the order the directory lists them, as nbdkit does. Names that are not UTF-8 cannot be NBD
/// export names and are skipped.
fn list_directory(location: &Location) -> Result<Vec<Export>> {
    let fail = |e: io::Error| io_error(format!("file: dir={}", location.given), &e);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&location.path).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.len() > 4096 {
            continue;
        }
        // Broken links and files that vanished since readdir are simply not listed.
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            if meta.is_file() || meta.file_type().is_block_device() {
                names.push(name);
            }
        }
    }
    Ok(names.into_iter().map(Export::named).collect())
}

/// Refuses what is neither a regular file nor a block device; `context` starts the message.
fn check_servable(meta: &Metadata, context: &str) -> Result<()> {
    if meta.is_file() || meta.file_type().is_block_device() {
        Ok(())
    } else {
        Err(Error::new(libc::ENOENT, format!("{context}: not a regular file or block device")))
    }
}

/// Opens `path` the way the plugin does. `O_NONBLOCK` keeps a FIFO in a served directory from
/// hanging the open; it changes nothing for files and block devices.
fn open_file(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(write).custom_flags(libc::O_NONBLOCK).open(path)
}

/// Opens a file or block device for serving, read-write unless `readonly`. When writing is not
/// permitted (`EACCES`, `EROFS`, `EPERM`) it opens read-only instead; the second value says whether
/// the file is writable. `open` is the system call, replaceable in tests.
fn open_image(
    path: &Path,
    name: &str,
    readonly: bool,
    open: impl Fn(&Path, bool) -> io::Result<File>,
) -> Result<(File, bool)> {
    let context = format!("file: {name}");
    let fail = |e: io::Error| io_error(&context, &e);
    // Check the type before opening, so a FIFO or socket is refused without touching it.
    check_servable(&std::fs::metadata(path).map_err(fail)?, &context)?;
    let (file, writable) = if readonly {
        (open(path, false).map_err(fail)?, false)
    } else {
        match open(path, true) {
            Ok(file) => (file, true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS | libc::EPERM)) => {
                (open(path, false).map_err(fail)?, false)
            }
            Err(e) => return Err(fail(e)),
        }
    };
    // The path may have been replaced between the check and the open.
    check_servable(&file.metadata().map_err(fail)?, &context)?;
    Ok((file, writable))
}

/// Recent writes whose pages `cache=none` will drop from the page cache once written back.
/// Writeback of each write starts at once; the oldest is waited for and dropped when the list is
/// full, so at most [`RecentWrites::KEEP`] requests' worth of dirty data stays cached.
struct RecentWrites(Mutex<VecDeque<(u64, u64)>>);

/// How block status finds holes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoleSearch {
    /// Block devices, and file systems without `SEEK_DATA`: no block status.
    Unsupported,
    /// `SEEK_DATA` and `SEEK_HOLE`, exact and cheap on extent-based file systems.
    Exact,
    /// tmpfs, where `SEEK_HOLE` walks every page up to the next hole (often the end of the file)
    /// while `SEEK_DATA` skips holes quickly: sample with `SEEK_DATA` only, every
    /// [`SAMPLE_STEP`] bytes. Holes are reported exactly; a data sample stands for the rest of its
    /// step, so a hole starting inside that step is reported from the next sample on.
    Sampled,
}

/// Distance between `SEEK_DATA` samples on tmpfs.
const SAMPLE_STEP: u64 = 64 * 1024;
/// At most this many samples per request, so one call stays cheap; the client asks again from
/// where the answer stopped.
const MAX_SAMPLES: usize = 256;

impl HoleSearch {
    fn for_file(file: &File, is_block_device: bool) -> Self {
        let fd = file.as_raw_fd();
        if is_block_device || matches!(lseek(fd, 0, Whence::SeekData), Err(e) if e != Errno::ENXIO) {
            return HoleSearch::Unsupported;
        }
        match fstatfs(file) {
            Ok(fs) if fs.filesystem_type() == TMPFS_MAGIC => HoleSearch::Sampled,
            _ => HoleSearch::Exact,
        }
    }
}

impl RecentWrites {
    const KEEP: usize = 64;
}

/// One connection's open file.
struct FileHandle {
    file: File,
    /// The path as the user gave it, for messages.
    name: String,
    size: u64,
    writable: bool,
    is_block_device: bool,
    hole_search: HoleSearch,
    /// `Some` with `cache=none`.
    recent_writes: Option<RecentWrites>,
    /// Cleared when the file system answers `EOPNOTSUPP`, so later requests skip the attempt.
    punch_hole_works: AtomicBool,
    zero_range_works: AtomicBool,
    /// `-D file.zero=1`.
    debug_zero: bool,
}

impl FileHandle {
    fn new(file: File, name: String, writable: bool, cache: CacheMode, fadvise: PosixFadviseAdvice) -> Result<Self> {
        let meta = file.metadata().map_err(|e| io_error(format!("file: {name}"), &e))?;
        let is_block_device = meta.file_type().is_block_device();
        let size = if is_block_device {
            // Seeking only to learn the size: all I/O is positional, so the offset is never used.
            (&file).seek(SeekFrom::End(0)).map_err(|e| io_error(format!("file: {name}: size of block device"), &e))?
        } else {
            meta.len()
        };
        if fadvise != PosixFadviseAdvice::POSIX_FADV_NORMAL {
            // Advice only; a file system that ignores it serves the file just the same.
            let _ = posix_fadvise(file.as_raw_fd(), 0, 0, fadvise);
        }
        let hole_search = HoleSearch::for_file(&file, is_block_device);
        Ok(FileHandle {
            file,
            name,
            size,
            writable,
            is_block_device,
            hole_search,
            recent_writes: (cache == CacheMode::None).then(|| RecentWrites(Mutex::new(VecDeque::new()))),
            punch_hole_works: AtomicBool::new(true),
            zero_range_works: AtomicBool::new(true),
            debug_zero: false,
        })
    }

    /// The length of the file now (a block device keeps its size); 0 if it cannot be read.
    fn current_len(&self) -> u64 {
        if self.is_block_device {
            return self.size;
        }
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn error(&self, what: &str, e: impl Into<io::Error>) -> Error {
        io_error(format!("file: {}: {what}", self.name), &e.into())
    }

    fn fallocate(&self, mode: FallocateFlags, count: u64, offset: u64) -> io::Result<()> {
        fallocate(self.file.as_raw_fd(), mode, to_off(offset)?, to_off(count)?).map_err(io::Error::from)
    }

    /// Tries one `fallocate` mode for zeroing. `Ok(false)` when the file system lacks it (which is
    /// remembered in `works`), an error for any other failure.
    fn try_fallocate(&self, works: &AtomicBool, mode: FallocateFlags, count: u64, offset: u64) -> Result<bool> {
        if !works.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.fallocate(mode | FallocateFlags::FALLOC_FL_KEEP_SIZE, count, offset) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(&e) => {
                works.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(self.error("zero", e)),
        }
    }

    fn sync_if_fua(&self, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FUA) {
            self.file.sync_data().map_err(|e| self.error("fdatasync", e))?;
        }
        Ok(())
    }

    /// Drops the pages of a range from the page cache (`cache=none`). Dirty pages and pages under
    /// I/O are kept by the kernel, so this never loses data.
    ///
    /// The kernel only drops a folio that lies wholly inside the range, and readahead builds folios
    /// of up to 2 MiB, so the range starts at the 2 MiB boundary below `offset`: a stream of small
    /// requests then drops each large folio with the request that finishes it. The end is not
    /// widened, so data read ahead for the next requests stays until they use it.
    fn drop_cached(&self, offset: u64, count: u64) {
        const FOLIO_MAX: u64 = 2 << 20;
        let start = offset / FOLIO_MAX * FOLIO_MAX;
        let end = offset.saturating_add(count);
        if let (Ok(start), Ok(len)) = (to_off(start), to_off(end - start)) {
            let _ = posix_fadvise(self.file.as_raw_fd(), start, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
    }

    /// `cache=none` after a write: start writeback now, and evict the oldest remembered write.
    fn evict_after_write(&self, recent: &RecentWrites, offset: u64, count: u64) {
        let fd = self.file.as_fd();
        let _ = sync_file_range(fd, offset, count, Writeback::Start);
        let oldest = {
            let mut ranges = recent.0.lock().unwrap_or_else(|e| e.into_inner());
            ranges.push_back((offset, count));
            if ranges.len() > RecentWrites::KEEP {
                ranges.pop_front()
            } else {
                None
            }
        };
        if let Some((offset, count)) = oldest {
            if sync_file_range(fd, offset, count, Writeback::Wait).is_ok() {
                self.drop_cached(offset, count);
            }
        }
    }
}

/// True for the errors that mean "this file system or device cannot do that".
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENODEV | libc::ENOTTY))
}

impl Handle for FileHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: self.writable,
            extents: self.hole_search != HoleSearch::Unsupported,
            ..Capabilities::ALL
        })
    }

    /// Reads offer the file itself, for the server to send with `sendfile`; except with
    /// cache=none, which drops pages after each read (sendfile would bypass that), and past the
    /// current end of a file that shrank since open, which must fail the read cleanly, not the
    /// connection.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if self.recent_writes.is_some() || offset.saturating_add(count) > self.current_len() {
            return self.pread(sink.buffer()?, offset, flags);
        }
        sink.file(self.file.as_fd(), offset)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::io(format!(
                    "file: {}: read of {} bytes at offset {offset} ran past the end of the file (did it shrink?)",
                    self.name,
                    buf.len()
                ))
            } else {
                self.error(&format!("read at offset {offset}"), e)
            }
        })?;
        if self.recent_writes.is_some() {
            self.drop_cached(offset, buf.len() as u64);
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| self.error(&format!("write at offset {offset}"), e))?;
        self.sync_if_fua(flags)?;
        if let Some(recent) = &self.recent_writes {
            self.evict_after_write(recent, offset, buf.len() as u64);
        }
        Ok(())
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.file.sync_data().map_err(|e| self.error("fdatasync", e))?;
        if let Some(recent) = &self.recent_writes {
            // Everything written so far is clean now, so all of it can leave the cache.
            let ranges: Vec<_> = recent.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
            for (offset, count) in ranges {
                self.drop_cached(offset, count);
            }
        }
        Ok(())
    }

    /// Punches a hole. Trim is advisory, so a file system that cannot punch is not an error.
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if self.punch_hole_works.load(Ordering::Relaxed) {
            let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match self.fallocate(mode, count, offset) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => self.punch_hole_works.store(false, Ordering::Relaxed),
                Err(e) => return Err(self.error("trim", e)),
            }
        }
        self.sync_if_fua(flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let may_trim = flags.contains(Flags::MAY_TRIM);
        let fast = flags.contains(Flags::FAST_ZERO);
        // Punching is the cheapest zero, and a hole is what the client allowed.
        let method = if may_trim
            && self.try_fallocate(&self.punch_hole_works, FallocateFlags::FALLOC_FL_PUNCH_HOLE, count, offset)?
        {
            "punching a hole"
        // On a block device the kernel may implement ZERO_RANGE by writing zeroes, which is no
        // faster than the write a fast-zero request wants to avoid.
        } else if !(fast && self.is_block_device)
            && self.try_fallocate(&self.zero_range_works, FallocateFlags::FALLOC_FL_ZERO_RANGE, count, offset)?
        {
            "ZERO_RANGE"
        // Without ZERO_RANGE (tmpfs, for one) a file can still punch and then reallocate.
        } else if !self.is_block_device && self.punch_and_reallocate(count, offset)? {
            "punching a hole and reallocating"
        } else {
            let why = if fast {
                "fast zero is not possible here"
            } else {
                "no efficient way to zero; the core will write zeroes"
            };
            if self.debug_zero {
                tracing::debug!("file: {}: zero {count} bytes at {offset}: {why}", self.name);
            }
            return Err(Error::new(libc::EOPNOTSUPP, format!("file: {}: zero: {why}", self.name)));
        };
        if self.debug_zero {
            tracing::debug!("file: {}: zero {count} bytes at {offset} by {method}", self.name);
        }
        self.sync_if_fua(flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        if self.hole_search == HoleSearch::Sampled {
            return self.sampled_extents(count, offset, extents);
        }
        let fd = self.file.as_raw_fd();
        let end = offset.saturating_add(count);
        let mut pos = offset;
        while pos < end && !extents.is_full() {
            let at = to_off(pos).map_err(|e| self.error("extents", e))?;
            let next = match lseek(fd, at, Whence::SeekData) {
                Ok(data) if data as u64 > pos => {
                    extents.add(pos, data as u64 - pos, HOLE | ZERO)?;
                    data as u64
                }
                Ok(_) => {
                    let hole = lseek(fd, at, Whence::SeekHole).map_err(|e| self.error("SEEK_HOLE", e))?;
                    // SEEK_HOLE is never before pos; an answer of pos would mean a race with a
                    // write, so report at least the byte at pos as data.
                    let hole = (hole as u64).max(pos + 1);
                    extents.add(pos, hole - pos, DATA)?;
                    hole
                }
                // No data after pos: the rest of the file is a hole.
                Err(Errno::ENXIO) => {
                    extents.add(pos, end - pos, HOLE | ZERO)?;
                    end
                }
                Err(e) => return Err(self.error("SEEK_DATA", e)),
            };
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
            pos = next;
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let (offset, count) =
            (to_off(offset).map_err(|e| self.error("cache", e))?, to_off(count).map_err(|e| self.error("cache", e))?);
        posix_fadvise(self.file.as_raw_fd(), offset, count, PosixFadviseAdvice::POSIX_FADV_WILLNEED)
            .map_err(|e| self.error("cache", e))
    }
}

impl FileHandle {
    /// Block status from `SEEK_DATA` samples (see [`HoleSearch::Sampled`]). A run reported as a
    /// hole holds no data; a run reported as data may end in a hole, which the protocol allows
    /// (data is the claim that promises nothing).
    fn sampled_extents(&self, count: u64, offset: u64, extents: &mut Extents) -> Result<()> {
        let fd = self.file.as_raw_fd();
        let end = offset.saturating_add(count);
        let mut pos = offset;
        for _ in 0..MAX_SAMPLES {
            if pos >= end || extents.is_full() {
                break;
            }
            let at = to_off(pos).map_err(|e| self.error("extents", e))?;
            pos = match lseek(fd, at, Whence::SeekData) {
                Ok(data) if data as u64 > pos => {
                    extents.add(pos, data as u64 - pos, HOLE | ZERO)?;
                    data as u64
                }
                Ok(_) => {
                    let step_end = ((pos / SAMPLE_STEP) + 1) * SAMPLE_STEP;
                    extents.add(pos, step_end.min(end) - pos, DATA)?;
                    step_end
                }
                Err(Errno::ENXIO) => {
                    extents.add(pos, end - pos, HOLE | ZERO)?;
                    end
                }
                Err(e) => return Err(self.error("SEEK_DATA", e)),
            };
        }
        Ok(())
    }

    /// Punches a hole and allocates it again: zeroes that keep their disk space, for file systems
    /// without `FALLOC_FL_ZERO_RANGE`.
    fn punch_and_reallocate(&self, count: u64, offset: u64) -> Result<bool> {
        if !self.try_fallocate(&self.punch_hole_works, FallocateFlags::FALLOC_FL_PUNCH_HOLE, count, offset)? {
            return Ok(false);
        }
        // The range already reads as zeroes; reallocating is only about keeping the space, so a
        // file system that cannot do it has still zeroed the range.
        let _ = self.fallocate(FallocateFlags::FALLOC_FL_KEEP_SIZE, count, offset);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Extent;
    use std::sync::atomic::AtomicUsize;

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("nbdforge-file-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn file(&self, name: &str, size: u64) -> PathBuf {
            let path = self.0.join(name);
            File::create(&path).unwrap().set_len(size).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn plugin(params: &[(&str, &str)]) -> Result<FilePlugin> {
        let mut plugin = FilePlugin::new();
        for (key, value) in params {
            plugin.config(key, value)?;
        }
        plugin.config_complete()?;
        plugin.get_ready()?;
        Ok(plugin)
    }

    fn open(plugin: &FilePlugin, export_name: &str, readonly: bool) -> Result<Box<dyn Handle>> {
        plugin.open(&OpenArgs::local(export_name, readonly))
    }

    fn map(h: &dyn Handle, count: u64, offset: u64) -> Vec<Extent> {
        let mut e = Extents::new(offset, offset + count);
        h.extents(count, offset, Flags::NONE, &mut e).unwrap();
        e.into_vec()
    }

    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn write_read_flush_fua() {
        let dir = TempDir::new();
        let path = dir.file("disk.img", 1 << 20);
        let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
        let h = open(&p, "ignored", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 1 << 20);
        let caps = h.capabilities().unwrap();
        assert!(caps.write && caps.flush && caps.multi_conn);
        assert_eq!(caps.fua, nbdforge_api::Support::Native);
        h.pwrite(b"hello world", 1000, Flags::FUA).unwrap();
        h.flush(Flags::NONE).unwrap();
        let mut back = [0u8; 11];
        h.pread(&mut back, 1000, Flags::NONE).unwrap();
        assert_eq!(&back, b"hello world");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[1000..1011], b"hello world");
        h.cache(4096, 0, Flags::NONE).unwrap();
    }

    #[test]
    fn short_read_is_an_error_naming_the_file() {
        let dir = TempDir::new();
        let path = dir.file("short.img", 4096);
        let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
        let h = open(&p, "", false).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
        let err = h.pread(&mut [0u8; 512], 0, Flags::NONE).unwrap_err();
        assert_eq!(err.errno, libc::EIO);
        assert!(err.message.starts_with(&format!("file: {}: read of 512 bytes", path.display())), "{}", err.message);
    }

    #[test]
    fn extents_trim_and_zero() {
        let dir = TempDir::new();
        let path = dir.file("sparse.img", 4 << 20);
        let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
        let h = open(&p, "", false).unwrap();
        assert!(h.capabilities().unwrap().extents, "the test needs a file system with SEEK_HOLE");
        assert_eq!(map(&*h, 4 << 20, 0), vec![Extent { offset: 0, length: 4 << 20, flags: HOLE | ZERO }]);

        h.pwrite(&vec![0xab; 1 << 20], 1 << 20, Flags::NONE).unwrap();
        assert_eq!(
            map(&*h, 4 << 20, 0),
            vec![
                Extent { offset: 0, length: 1 << 20, flags: HOLE | ZERO },
                Extent { offset: 1 << 20, length: 1 << 20, flags: DATA },
                Extent { offset: 2 << 20, length: 2 << 20, flags: HOLE | ZERO },
            ]
        );
        let mut one = Extents::new(0, 4 << 20);
        h.extents(4 << 20, 0, Flags::REQ_ONE, &mut one).unwrap();
        assert_eq!(one.as_slice(), &[Extent { offset: 0, length: 1 << 20, flags: HOLE | ZERO }]);

        // Trim punches a hole and frees the space.
        h.trim(512 << 10, 1 << 20, Flags::NONE).unwrap();
        assert!(allocated_bytes(&path) <= 512 << 10, "{} bytes still allocated", allocated_bytes(&path));
        assert_eq!(map(&*h, 1 << 20, 1 << 20)[0], Extent { offset: 1 << 20, length: 512 << 10, flags: HOLE | ZERO });

        // Zero without MAY_TRIM, then with it; both read back as zeroes.
        h.zero(4096, (3 << 19) + 100, Flags::NONE).unwrap();
        h.zero(8192, (3 << 19) + 10000, Flags::MAY_TRIM | Flags::FAST_ZERO | Flags::FUA).unwrap();
        let mut back = vec![1u8; 1 << 20];
        h.pread(&mut back, 1 << 20, Flags::NONE).unwrap();
        assert!(back[..512 << 10].iter().all(|&b| b == 0));
        assert!(back[512 << 10..(512 << 10) + 100].iter().all(|&b| b == 0xab));
        assert!(back[(512 << 10) + 100..(512 << 10) + 4196].iter().all(|&b| b == 0));
        assert!(back[(512 << 10) + 10000..(512 << 10) + 18192].iter().all(|&b| b == 0));
        assert!(back[(512 << 10) + 18192..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn sampled_extents_report_holes_exactly_and_data_by_step() {
        let dir = TempDir::new();
        let path = dir.file("sampled.img", 1 << 20);
        let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
        let h = open(&p, "", false).unwrap();
        h.pwrite(&[1; 4096], 256 << 10, Flags::NONE).unwrap();
        let (file, _) = open_image(&path, "sampled.img", true, open_file).unwrap();
        let handle = FileHandle::new(
            file,
            "sampled.img".into(),
            false,
            CacheMode::Default,
            PosixFadviseAdvice::POSIX_FADV_NORMAL,
        )
        .unwrap();
        let mut e = Extents::new(0, 1 << 20);
        handle.sampled_extents(1 << 20, 0, &mut e).unwrap();
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 0, length: 256 << 10, flags: HOLE | ZERO },
                Extent { offset: 256 << 10, length: SAMPLE_STEP, flags: DATA },
                Extent { offset: (256 << 10) + SAMPLE_STEP, length: (768 << 10) - SAMPLE_STEP, flags: HOLE | ZERO },
            ]
        );
        // One call does a bounded amount of work and says how far it got.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(64 << 20).unwrap();
        h.pwrite(&vec![1; 32 << 20], 0, Flags::NONE).unwrap();
        let mut e = Extents::new(0, 64 << 20);
        handle.sampled_extents(64 << 20, 0, &mut e).unwrap();
        assert_eq!(e.as_slice(), &[Extent { offset: 0, length: MAX_SAMPLES as u64 * SAMPLE_STEP, flags: DATA }]);
    }

    #[test]
    fn tmpfs_files_use_sampling() {
        let path = Path::new("/dev/shm").join(format!("nbdforge-file-test-{}.img", std::process::id()));
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let (file, _) = open_image(&path, "shm.img", true, open_file).unwrap();
        let on_tmpfs = fstatfs(&file).unwrap().filesystem_type() == TMPFS_MAGIC;
        let search = HoleSearch::for_file(&file, false);
        std::fs::remove_file(&path).unwrap();
        assert!(on_tmpfs, "/dev/shm is expected to be tmpfs on Linux");
        assert_eq!(search, HoleSearch::Sampled);
    }

    #[test]
    fn read_only_open_when_the_server_says_so() {
        let dir = TempDir::new();
        let path = dir.file("ro.img", 8192);
        let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
        let h = open(&p, "", true).unwrap();
        assert!(!h.capabilities().unwrap().write);
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
        let (file, writable) = open_image(&path, "locked.img", false, refuse_write).unwrap();
        assert!(!writable);
        let h = FileHandle::new(
            file,
            "locked.img".into(),
            writable,
            CacheMode::Default,
            PosixFadviseAdvice::POSIX_FADV_NORMAL,
        )
        .unwrap();
        assert!(!h.capabilities().unwrap().write);
        assert_eq!(h.get_size().unwrap(), 8192);
        // Other errors are not turned into read-only service.
        let broken = |_: &Path, _: bool| -> io::Result<File> { Err(io::Error::from_raw_os_error(libc::EIO)) };
        let err = open_image(&path, "locked.img", false, broken).unwrap_err();
        assert_eq!(err.errno, libc::EIO);
        assert!(err.message.starts_with("file: locked.img: "), "{}", err.message);
    }

    #[test]
    fn real_read_only_file_is_served_read_only() {
        let dir = TempDir::new();
        let path = dir.file("mode0444.img", 8192);
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&path, perms).unwrap();
        let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
        let h = open(&p, "", false).unwrap();
        // root may write any file, so only a non-root run can see the fallback on a real file.
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(h.capabilities().unwrap().write, root);
    }

    #[test]
    fn missing_file_fails_before_serving() {
        let err = plugin(&[("file", "/nonexistent")]).err().unwrap();
        assert_eq!(err.errno, libc::ENOENT);
        assert_eq!(err.message, "/nonexistent: No such file or directory");
    }

    #[test]
    fn parameter_errors() {
        let dir = TempDir::new();
        let d = dir.0.to_str().unwrap();
        let err = plugin(&[("file", d)]).err().unwrap();
        assert!(err.message.contains("is a directory (use dir="), "{}", err.message);
        let err = plugin(&[("file", "/dev/null")]).err().unwrap();
        assert_eq!(err.message, "/dev/null: not a regular file or block device");
        let err = plugin(&[("file", "a.img"), ("dir", d)]).err().unwrap();
        assert_eq!(err.message, format!("give file= or dir=, not both (file=a.img, dir={d})"));
        assert!(plugin(&[]).err().unwrap().message.contains("file=<FILENAME>"));
        let mut p = FilePlugin::new();
        assert_eq!(
            p.config("cache", "writeback").unwrap_err().message,
            "cache=writeback: must be one of default, none"
        );
        assert_eq!(
            p.config("fadvise", "often").unwrap_err().message,
            "fadvise=often: must be one of normal, random, sequential"
        );
        assert!(p.config("rdelay", "1").unwrap_err().message.contains("'rdelay'"));
    }

    #[test]
    fn cache_none_and_fadvise_still_serve_data() {
        let dir = TempDir::new();
        let path = dir.file("nocache.img", 1 << 20);
        let p = plugin(&[("file", path.to_str().unwrap()), ("cache", "none"), ("fadvise", "sequential")]).unwrap();
        let h = open(&p, "", false).unwrap();
        for i in 0..(RecentWrites::KEEP as u64 + 10) {
            h.pwrite(&[i as u8 + 1; 4096], i * 4096, Flags::NONE).unwrap();
        }
        h.flush(Flags::NONE).unwrap();
        let mut back = [0u8; 4096];
        h.pread(&mut back, 70 * 4096, Flags::NONE).unwrap();
        assert_eq!(back, [71u8; 4096]);
    }

    #[test]
    fn directory_exports() {
        let dir = TempDir::new();
        dir.file("b.img", 2048);
        dir.file("a.img", 1024);
        std::fs::create_dir(dir.0.join("subdir")).unwrap();
        std::os::unix::fs::symlink("a.img", dir.0.join("link")).unwrap();
        std::os::unix::fs::symlink("missing", dir.0.join("dangling")).unwrap();
        nix::unistd::mkfifo(&dir.0.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let d = dir.0.to_str().unwrap();
        let p = plugin(&[("dir", d)]).unwrap();
        let mut names: Vec<String> = p.list_exports(false, false).unwrap().into_iter().map(|e| e.name).collect();
        let listed: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| ["a.img", "b.img", "link"].contains(&n.as_str()))
            .collect();
        assert_eq!(names, listed, "exports in the order the directory lists them");
        names.sort();
        assert_eq!(names, ["a.img", "b.img", "link"]);
        assert_eq!(p.default_export(false, false).unwrap(), "");

        let h = open(&p, "b.img", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 2048);
        assert_eq!(open(&p, "link", false).unwrap().get_size().unwrap(), 1024);

        let err = open(&p, "", false).err().unwrap();
        assert_eq!(err.errno, libc::ENOENT);
        assert!(err.message.contains("no default export"), "{}", err.message);
        for bad in ["../etc/passwd", "..", ".", "subdir/x", "/etc/passwd"] {
            let err = open(&p, bad, false).err().unwrap();
            assert_eq!(err.errno, libc::EINVAL, "{bad}");
        }
        for not_a_file in ["subdir", "fifo", "dangling", "nosuch"] {
            let err = open(&p, not_a_file, false).err().unwrap();
            assert_eq!(err.errno, libc::ENOENT, "{not_a_file}: {}", err.message);
            assert!(err.message.starts_with(&format!("file: {d}/{not_a_file}: ")), "{}", err.message);
        }
    }

    #[test]
    fn missing_directory_fails_before_serving() {
        let err = plugin(&[("dir", "/nonexistent-dir")]).err().unwrap();
        assert_eq!(err.message, "dir=/nonexistent-dir: No such file or directory");
    }
}
