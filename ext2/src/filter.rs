//! The `ext2` filter: serves one file inside an ext2, ext3 or ext4 filesystem held by the layer
//! below, read and written through libext2fs (nbdkit-ext2-filter).
//!
//! `ext2file=PATH` names the file; `ext2file=exportname` serves the file the client names as
//! its export (the layer below then gets the default export, `""`). As in nbdkit, each
//! connection opens the filesystem anew and connections are serialized (two open filesystems
//! writing one disk would corrupt it); symbolic links are followed in the directories of the
//! path but not in its last component, and anything but a regular file is refused.
//!
//! Writes go through libext2fs, which allocates blocks for holes; reads go straight to the
//! disk by runs of contiguous blocks; zeroing writes only over data (holes stay holes); trim
//! deallocates whole blocks (extent-mapped files only: libext2fs 1.47 punches wrong blocks out
//! of indirect-mapped ones). A flush makes the filesystem's metadata durable too when a write
//! allocated or a trim freed blocks (the block bitmaps, group descriptors and superblock), so a
//! flushed filesystem is clean for e2fsck.
//!
//! Where nbdkit serves a filesystem whose journal needs recovery read-write without replaying
//! it, this filter serves it read-only: libext2fs does not replay journals, and writing past an
//! unreplayed journal can lose the writes or the journal's transactions. So are filesystems
//! with features libext2fs cannot write (nbdkit refuses them) and files with inline data
//! (libext2fs cannot write them safely).

use std::sync::{Arc, Mutex, MutexGuard};

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    Backend, BlockSize, Capabilities, Error, Export, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    Registration, Result, Support, ThreadModel, ZEROES,
};

use crate::device::Device;
use crate::superblock::{self, Superblock};
use crate::sys::{Ext2, Ext2Error, Mapping, EXT2_ET_RO_UNSUPP_FEATURE};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ext2", "serve one file inside an ext2, ext3 or ext4 filesystem").help(
        "ext2file=<PATH>    (required) Absolute path of the file inside the filesystem,\n\
         \x20                  or 'exportname' to serve the file the client names.",
    );
    Registration::filter(info, Ext2Filter::default)
}

/// Which file a connection gets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(String),
    ExportName,
}

/// The `ext2` filter.
#[derive(Default)]
pub struct Ext2Filter {
    file: Option<String>,
    target: Option<Target>,
}

/// Block status looks up at most this many mappings (a block, or an extent) per request; the
/// client asks again for more.
const MAX_MAPPED_BLOCKS: u64 = 16384;

impl Layer for Ext2Filter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "ext2file" {
            return Ok(false);
        }
        if self.file.is_some() {
            return Err(Error::invalid(format!("ext2file={value}: ext2file given more than once")));
        }
        self.file = Some(value.to_string());
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.target = Some(match self.file.as_deref() {
            None => return Err(Error::invalid("ext2file=<PATH> parameter missing")),
            Some("exportname") => Target::ExportName,
            Some(p) if p.starts_with('/') => Target::Path(p.to_string()),
            Some(p) => {
                return Err(Error::invalid(format!(
                    "ext2file={p}: must be an absolute path (starting with /) or 'exportname'"
                )))
            }
        });
        Ok(())
    }
}

impl Filter for Ext2Filter {
    fn thread_model(&self, _below: ThreadModel) -> ThreadModel {
        ThreadModel::SerializeConnections
    }

    // Under ext2file=exportname the client may name any file: none is listed (as in nbdkit;
    // the exportname filter can list some).
    fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        match self.target {
            Some(Target::ExportName) => Ok(Vec::new()),
            _ => next.list_exports(readonly, tls),
        }
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let (path, below_args) =
            match &self.target {
                Some(Target::Path(p)) => (p.clone(), args.clone()),
                _ if args.export_name.is_empty() => return Err(Error::new(
                    libc::ENOENT,
                    "ext2: ext2file=exportname: the client asked for the default export (\"\"): it must name a file",
                )),
                _ => {
                    let name = &args.export_name;
                    let path = if name.starts_with('/') { name.clone() } else { format!("/{name}") };
                    (path, OpenArgs { export_name: String::new(), ..args.clone() })
                }
            };
        let device = Arc::new(Device::new(next.open(&below_args)?)?);
        let mut raw = vec![0u8; superblock::LENGTH];
        if device.size() < superblock::OFFSET + raw.len() as u64 {
            return Err(Error::io(format!("ext2: the disk is too small for a filesystem ({} bytes)", device.size())));
        }
        device.below().pread(&mut raw, superblock::OFFSET, Flags::NONE)?;
        let sb = Superblock::parse(&raw, device.size())?;
        let mut write = !args.readonly && device.writable();
        if write && sb.needs_recovery {
            tracing::warn!(
                "ext2: the filesystem's journal needs recovery (it was not cleanly unmounted): \
                 serving {path} read-only; run e2fsck on it to replay the journal"
            );
            write = false;
        }
        let fail = |what: &str, e: Ext2Error| failure(&device, &path, what, e);
        let mut fs = match Ext2::open(device.clone(), write) {
            Err(e) if write && e.code == EXT2_ET_RO_UNSUPP_FEATURE => {
                tracing::warn!("ext2: {}: serving {path} read-only", e.message);
                write = false;
                Ext2::open(device.clone(), false)
            }
            opened => opened,
        }
        .map_err(|e| fail("opening the filesystem", e))?;
        let ino = fs.lookup(&path).map_err(|e| fail("lookup", e))?;
        let inode = fs.inode(ino).map_err(|e| fail("reading its inode", e))?;
        let kind = match inode.mode & 0o170000 {
            0o100000 => None,
            0o040000 => Some("a directory"),
            0o120000 => Some("a symbolic link; name its target"),
            _ => Some("a device, socket or fifo"),
        };
        if let Some(kind) = kind {
            return Err(Error::new(libc::EINVAL, format!("ext2: {path}: not a regular file ({kind})")));
        }
        // libext2fs 1.47 overruns a buffer when writing inline data other than from byte 0
        // (nbdkit crashes on it); files that small are no disks.
        if write && inode.inline {
            tracing::warn!("ext2: {path}: the file's data is inline in its inode: serving it read-only");
            write = false;
        }
        fs.open_file(ino, write).map_err(|e| fail("open", e))?;
        let size = fs.size().map_err(|e| fail("size", e))?;
        Ok(Box::new(Ext2Handle {
            fs: Mutex::new(Some(Open { fs, allocated: false })),
            device,
            path,
            size,
            write,
            // libext2fs 1.47 punches the wrong blocks out of files mapped by indirect blocks.
            trim: write && inode.extents,
            block_size: sb.block_size,
        }))
    }
}

/// A libext2fs error as the client sees it, with what the layer below said when it was the cause.
fn failure(device: &Device, path: &str, what: &str, e: Ext2Error) -> Error {
    match device.take_error() {
        Some(below) => Error::new(below.errno, format!("ext2: {path}: {what}: {} ({})", e.message, below.message)),
        None => Error::new(e.errno(), format!("ext2: {path}: {what}: {}", e.message)),
    }
}

/// The filesystem of one connection.
struct Open {
    fs: Ext2,
    /// A write or trim since the last flush may have allocated or freed blocks: the next flush
    /// writes metadata.
    allocated: bool,
}

struct Ext2Handle {
    /// `None` once finalized.
    fs: Mutex<Option<Open>>,
    device: Arc<Device>,
    path: String,
    size: u64,
    write: bool,
    /// Trim deallocates blocks (extent-mapped files only).
    trim: bool,
    block_size: u64,
}

impl Ext2Handle {
    fn lock(&self) -> MutexGuard<'_, Option<Open>> {
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, what: &str, op: impl FnOnce(&mut Open) -> std::result::Result<T, Ext2Error>) -> Result<T> {
        let mut guard = self.lock();
        let open = guard.as_mut().ok_or_else(|| Error::io(format!("ext2: {}: already closed", self.path)))?;
        op(open).map_err(|e| failure(&self.device, &self.path, what, e))
    }

    /// Fills `part`, the file from byte `at`, whose first block maps to `mapping` and the rest
    /// follow it.
    fn read_run(&self, part: &mut [u8], at: u64, mapping: Mapping) -> Result<()> {
        match mapping {
            Mapping::Data(block) => {
                let from = block.checked_mul(self.block_size).and_then(|b| b.checked_add(at % self.block_size));
                let from = from.ok_or_else(|| Error::io(format!("ext2: {}: block {block} out of range", self.path)))?;
                self.device.read(from, part, false)
            }
            Mapping::Hole | Mapping::Unwritten => {
                part.fill(0);
                Ok(())
            }
        }
    }

    /// The blocks of `[offset, offset + len)`, as block numbers.
    fn blocks(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / self.block_size..(offset + len).div_ceil(self.block_size)
    }
}

/// Whether every block of `blocks` holds data, looked up a run (an extent) at a time, so a
/// write over an allocated file does not ask for each of its blocks.
fn all_data(fs: &mut Ext2, mut blocks: std::ops::Range<u64>) -> bool {
    while blocks.start < blocks.end {
        match fs.map_run(blocks.start) {
            Ok((Mapping::Data(_), n)) => blocks.start = blocks.start.saturating_add(n.max(1)),
            _ => return false,
        }
    }
    true
}

impl Handle for Ext2Handle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(self.device.below())
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    // The layer below's constraints are about the filesystem's disk, not this file.
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(None)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let rotational = self.device.below().capabilities()?.rotational;
        Ok(Capabilities {
            write: self.write,
            flush: true,
            rotational,
            trim: self.trim,
            zero: if self.write { Support::Native } else { Support::None },
            fua: if self.write { Support::Emulate } else { Support::None },
            extents: true,
            cache: Support::Emulate,
            ..Capabilities::READ_ONLY
        })
    }

    // Runs of blocks contiguous on the disk are read with one request below, holes filled
    // here; libext2fs's own reading (a block at a time) is kept for files without a block map
    // (inline data). Every write is flushed out of libext2fs's file buffer, so the disk is
    // up to date.
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut guard = self.lock();
        let open = guard.as_mut().ok_or_else(|| Error::io(format!("ext2: {}: already closed", self.path)))?;
        let fail = |e| failure(&self.device, &self.path, "read", e);
        let bs = self.block_size;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        // The run being gathered: where it starts in the file, and its mapping there.
        let mut run: Option<(u64, Mapping)> = None;
        while pos < end {
            let (mapping, blocks) = match open.fs.map_run(pos / bs) {
                Ok(m) => m,
                Err(_) if pos == offset => {
                    self.device.take_error();
                    return open.fs.read_at(buf, offset).map_err(fail);
                }
                Err(e) => return Err(fail(e)),
            };
            let follows = match (run, mapping) {
                (None, _) => false,
                (Some((at, Mapping::Data(a))), Mapping::Data(b)) => Some(b) == a.checked_add(pos / bs - at / bs),
                (Some((_, Mapping::Data(_))), _) | (_, Mapping::Data(_)) => false,
                _ => true,
            };
            if !follows {
                if let Some((at, m)) = run {
                    self.read_run(&mut buf[(at - offset) as usize..(pos - offset) as usize], at, m)?;
                }
                run = Some((pos, mapping));
            }
            pos = ((pos / bs).saturating_add(blocks).saturating_mul(bs)).min(end);
        }
        if let Some((at, m)) = run {
            self.read_run(&mut buf[(at - offset) as usize..], at, m)?;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let blocks = self.blocks(offset, buf.len() as u64);
        self.with("write", |o| {
            // A hole, an unwritten extent or a file without a block map (inline data, which
            // a write may move out to a block): the write may change metadata.
            if !o.allocated && !all_data(&mut o.fs, blocks) {
                self.device.take_error();
                o.allocated = true;
            }
            o.fs.write_at(buf, offset)?;
            o.fs.flush_file()
        })
    }

    // Holes and unwritten extents already read as zeroes: only blocks with data are written,
    // so zeroing never allocates (the core's emulation, writing zeroes, would fill the holes).
    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let bs = self.block_size;
        let end = offset + count;
        self.with("zero", |o| {
            let mut pos = offset;
            while pos < end {
                let (mapping, blocks) = match o.fs.map_run(pos / bs) {
                    Ok(m) => m,
                    // No block map (inline data): the core writes zeroes instead.
                    Err(_) if pos == offset => {
                        self.device.take_error();
                        return Err(Ext2Error { code: libc::EOPNOTSUPP.into(), message: "no block map".into() });
                    }
                    Err(e) => return Err(e),
                };
                let next = (pos / bs).saturating_add(blocks).saturating_mul(bs).min(end);
                if let Mapping::Data(_) = mapping {
                    let mut at = pos;
                    while at < next {
                        let n = (next - at).min(ZEROES.len() as u64) as usize;
                        o.fs.write_at(&ZEROES[..n], at)?;
                        at += n as u64;
                    }
                }
                pos = next;
            }
            o.fs.flush_file()
        })
    }

    // The whole blocks of the range are deallocated (and then read as zeroes); the partial
    // blocks at its ends are left alone, as trim allows.
    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let first = offset.div_ceil(self.block_size);
        let end = (offset + count) / self.block_size;
        if first >= end {
            return Ok(());
        }
        self.with("trim", |o| {
            o.fs.flush_file()?;
            o.allocated = true;
            o.fs.punch(first, end - 1)
        })
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        let wrote_metadata = self.with("flush", |o| {
            o.fs.flush_file()?;
            // Writing the metadata flushes the device too.
            if o.allocated {
                o.fs.flush_fs()?;
                o.allocated = false;
                return Ok(true);
            }
            Ok(false)
        })?;
        if !wrote_metadata {
            self.device.flush()?;
        }
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let start = extents.next_offset().max(offset);
        let end = (offset + count).min(self.size);
        let mut guard = self.lock();
        let open = guard.as_mut().ok_or_else(|| Error::io(format!("ext2: {}: already closed", self.path)))?;
        // Runs of one kind, merged here so that REQ_ONE gets a whole run.
        let (mut run_start, mut run_flags) = (start, None);
        let mut pos = start;
        let mut budget = MAX_MAPPED_BLOCKS;
        while pos < end && budget > 0 {
            let block = pos / self.block_size;
            let (kind, blocks) = match open.fs.map_run(block) {
                Ok((Mapping::Hole, n)) => (HOLE | ZERO, n),
                Ok((Mapping::Unwritten, n)) => (ZERO, n),
                Ok((Mapping::Data(_), n)) => (DATA, n),
                // Files without a block map (inline data) are data.
                Err(_) if pos == start => {
                    self.device.take_error();
                    return extents.add(start, end - start, DATA);
                }
                Err(_) => break,
            };
            if run_flags.is_some_and(|f| f != kind) {
                extents.add(run_start, pos - run_start, run_flags.unwrap_or(DATA))?;
                if flags.contains(Flags::REQ_ONE) || extents.is_full() {
                    return Ok(());
                }
                run_start = pos;
            }
            run_flags = Some(kind);
            pos = (block.saturating_add(blocks).saturating_mul(self.block_size)).min(end);
            budget -= 1;
        }
        if let Some(kind) = run_flags {
            extents.add(run_start, pos - run_start, kind)?;
        }
        Ok(())
    }

    fn meta_contexts(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        if context == nbdforge_api::BASE_ALLOCATION {
            return self.extents(count, offset, flags, extents);
        }
        Err(Error::invalid(format!("ext2: unknown meta context '{context}'")))
    }

    fn finalize(&self) -> Result<()> {
        let Some(mut open) = self.lock().take() else {
            return Ok(());
        };
        let flushed = open.fs.flush_file();
        let closed = flushed.and(open.fs.close());
        closed.map_err(|e| failure(&self.device, &self.path, "close", e))?;
        if self.write {
            self.device.flush()?;
        }
        Ok(())
    }
}
