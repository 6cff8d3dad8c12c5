//! The `file` plugin: serves a regular file or a block device (`file=PATH`), or every such file in
//! a directory, chosen by export name (`dir=DIR`).
//!
//! The I/O is `nbdforge-storage`'s [`FileStorage`]: each connection opens the file itself, and
//! requests map one to one onto it (positional I/O, holes by `SEEK_DATA`/`SEEK_HOLE`, zeroing by
//! `fallocate`, or by the core writing zeroes when no way works). This file holds only the
//! plugin's policy: parameters, export names, messages, and how NBD flags choose storage calls.
//!
//! A file the server may only read is served read-only, with a warning, rather than refused: it is
//! the common case of serving a base image owned by another user or on a read-only mount.

use std::collections::HashSet;
use std::fmt::Display;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    parse_choice, Capabilities, Error, Export, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, ReadSink,
    Registration, Result,
};
use nbdforge_storage::{is_file_or_block_device, AccessPattern, Allocation, FileStorage, PageCache};

use crate::sys::io_error;

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

/// A storage error as the client and the log see it: `context: what failed: why`.
fn storage_error(context: impl Display, e: nbdforge_storage::Error) -> Error {
    Error::new(e.errno(), format!("{context}: {e}"))
}

/// The `file` plugin. Configure with `file=PATH` or `dir=DIR`, and optionally `cache=` and
/// `fadvise=`.
#[derive(Default)]
pub struct FilePlugin {
    file: Option<Location>,
    dir: Option<Location>,
    source: Option<Source>,
    /// `cache=none` evicts.
    page_cache: PageCache,
    fadvise: AccessPattern,
    /// Paths already reported as served read-only, so the warning is not repeated per connection.
    warned_read_only: Mutex<HashSet<PathBuf>>,
    /// `-D file.zero=1`: log how each zero request was done.
    debug_zero: bool,
}

impl FilePlugin {
    /// An unconfigured plugin.
    pub fn new() -> Self {
        Self::default()
    }

    fn source(&self) -> Result<&Source> {
        self.source.as_ref().ok_or_else(|| Error::invalid("file: used before config_complete"))
    }

    /// Opens `location` for one connection: read-write unless `readonly`, falling back to
    /// read-only (with a warning) when the file may not be written.
    fn open_location(&self, location: &Location, readonly: bool) -> Result<FileHandle> {
        let name = location.given.as_str();
        let opened =
            if readonly { FileStorage::open_read_only(&location.path) } else { FileStorage::open(&location.path) };
        let storage = opened.map_err(|e| storage_error(format_args!("file: {name}"), e))?;
        if !readonly && !storage.is_writable() {
            let mut warned = self.warned_read_only.lock().unwrap_or_else(|e| e.into_inner());
            if warned.insert(location.path.clone()) {
                tracing::warn!("file: {name}: no write access, serving it read-only");
            }
        }
        let storage = storage.with_page_cache(self.page_cache);
        if self.fadvise != AccessPattern::Normal {
            storage.advise(self.fadvise);
        }
        Ok(FileHandle { storage, name: format!("file: {name}"), debug_zero: self.debug_zero })
    }
}

/// One connection's handle on the image at `path`, served as this plugin serves a file (holes,
/// trim, zeroing, flush, `sendfile`), read-only when `readonly`: for the plugins that make an
/// image with the system's tools first (`iso`, `linuxdisk`, `tmpdisk`, `ondemand`). `name`
/// begins the messages (`tmpdisk: disk of connection 3`).
pub(crate) fn open_image(path: &std::path::Path, name: &str, readonly: bool) -> Result<Box<dyn Handle>> {
    let opened = if readonly { FileStorage::open_read_only(path) } else { FileStorage::open(path) };
    let storage = opened.map_err(|e| storage_error(name, e))?;
    Ok(Box::new(FileHandle { storage, name: name.to_string(), debug_zero: false }))
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
                self.page_cache = match parse_choice(key, value, &["default", "none"])? {
                    "none" => PageCache::Evict,
                    _ => PageCache::Keep,
                }
            }
            "fadvise" => {
                self.fadvise = match parse_choice(key, value, &["normal", "random", "sequential"])? {
                    "random" => AccessPattern::Random,
                    "sequential" => AccessPattern::Sequential,
                    _ => AccessPattern::Normal,
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
                let meta = std::fs::metadata(&location.path).map_err(|e| io_error(&location.given, &e))?;
                if meta.is_dir() {
                    return Err(Error::invalid(format!(
                        "{}: is a directory (use dir={} to serve the files in it)",
                        location.given, location.given
                    )));
                }
                FileStorage::open_read_only(&location.path).map(drop).map_err(|e| storage_error(&location.given, e))
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
            if is_file_or_block_device(&meta) {
                names.push(name);
            }
        }
    }
    Ok(names.into_iter().map(Export::named).collect())
}

/// One connection's open file.
struct FileHandle {
    storage: FileStorage,
    /// What messages begin with: `file: ` and the path as the user gave it.
    name: String,
    /// `-D file.zero=1`.
    debug_zero: bool,
}

impl FileHandle {
    fn error(&self, e: nbdforge_storage::Error) -> Error {
        storage_error(&self.name, e)
    }

    fn sync_if_fua(&self, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FUA) {
            self.storage.sync_data().map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}

impl Handle for FileHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.storage.size())
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: self.storage.is_writable(),
            extents: self.storage.reports_holes(),
            ..Capabilities::ALL
        })
    }

    /// Reads offer the file itself, for the server to send with `sendfile`, when the storage says
    /// that is safe for the range (not with cache=none, not past the end of a file that shrank).
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if self.storage.can_sendfile(offset, count) {
            sink.file(self.storage.as_fd(), offset, &self.storage.holes(offset, count))
        } else {
            self.pread(sink.buffer()?, offset, flags)
        }
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.storage.read_at(buf, offset).map_err(|e| self.error(e))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.storage.write_at(buf, offset).map_err(|e| self.error(e))?;
        self.sync_if_fua(flags)
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.storage.flush().map_err(|e| self.error(e))
    }

    /// Punches a hole. Trim is advisory, so a file system that cannot punch is not an error.
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.storage.trim(offset, count).map_err(|e| self.error(e))?;
        self.sync_if_fua(flags)
    }

    /// Zeroes by `fallocate` (punching only with MAY_TRIM). When the storage has no efficient way,
    /// `EOPNOTSUPP` tells the core to write zeroes, or to fail a fast zero.
    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let fast = flags.contains(Flags::FAST_ZERO);
        let zeroed = self.storage.zero(offset, count, flags.contains(Flags::MAY_TRIM), fast);
        let Some(method) = zeroed.map_err(|e| self.error(e))? else {
            let why = if fast {
                "fast zero is not possible here"
            } else {
                "no efficient way to zero; the core will write zeroes"
            };
            if self.debug_zero {
                tracing::debug!("{}: zero {count} bytes at {offset}: {why}", self.name);
            }
            return Err(Error::new(libc::EOPNOTSUPP, format!("{}: zero: {why}", self.name)));
        };
        if self.debug_zero {
            tracing::debug!("{}: zero {count} bytes at {offset} by {}", self.name, method.describe());
        }
        self.sync_if_fua(flags)
    }

    /// Runs of data and holes, pulled from the storage only while the reply has room.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let mut runs = self.storage.allocation(offset, count);
        while !extents.is_full() {
            let Some(run) = runs.next() else { break };
            let run = run.map_err(|e| self.error(e))?;
            let state = match run.allocation {
                Allocation::Data => DATA,
                Allocation::Hole => HOLE | ZERO,
            };
            extents.add(run.offset, run.length, state)?;
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.storage.prefetch(offset, count).map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests;
