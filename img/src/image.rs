//! Disk images: the formats layer under `nbdforge-img` (and, later, the qcow2 decoding filter).
//!
//! A raw image is the file itself, through `nbdforge-storage`'s [`FileStorage`] (positional I/O,
//! holes, zeroing by `fallocate`). A qcow2 image (v2 or v3, with its backing chain of any depth,
//! raw or qcow2, and zlib-compressed clusters) is read and written by the `imago` crate, built
//! with its blocking (`sync`) API so that the SDK's blocking handles call it directly, on files
//! opened through the same engine ([`ImageFile`]). What imago refuses (zstd compression,
//! extended L2 entries, in the image or down its chain) goes to nbdforge's own qcow2 driver
//! ([`crate::own`] over [`crate::qcow2`]).
//!
//! One [`Image`] is opened per server and shared by every connection, as qemu-nbd does: qcow2
//! metadata caches must not be duplicated between writers. Requests take a read lock; discards,
//! which may move clusters under other requests' feet, take the write lock.
//!
//! `-s` puts a temporary qcow2 overlay (deleted as soon as it is open) over the image, which is
//! then opened read-only: every write lands in the overlay (for the own driver's images, a
//! temporary file of grains, [`crate::overlay`]).

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use imago::format::Format as ImagoFormat;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    FormatAccess, FormatCreateBuilder, FormatDriverBuilder, PermissiveImplicitOpenGate, ShallowMapping,
    StorageOpenOptions,
};
use nbdforge_storage::{Allocation, FileStorage, PageCache};

use crate::file::{storage_error, ImageFile};
use crate::qcow2::header::looks_like_qcow2;

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The file is the disk.
    Raw,
    /// QEMU's copy-on-write format, version 2 or 3.
    Qcow2,
}

impl Format {
    /// Parses `-f`'s value (qemu's driver names).
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }

    /// The driver name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// `-f`; probed from the first bytes when `None`.
    pub format: Option<Format>,
    /// Open for writing (the overlay is written with `snapshot`, never the image).
    pub writable: bool,
    /// `-s`: writes go to a temporary overlay.
    pub snapshot: bool,
    /// `-n`, `--cache=none|directsync`: bypass the page cache.
    pub direct: bool,
    /// `-l`: serve this internal snapshot (read-only) instead of the active layer.
    pub load_snapshot: Option<crate::snapshot::Selector>,
}

/// The backing image of a qcow2 image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backing {
    /// The one the image header names, if any.
    #[default]
    Header,
    /// None, whatever the header says (`--image-opts`' `backing=`).
    None,
    /// This image instead (`--image-opts`' `backing.*`); `format` `None`: probed.
    Image { path: PathBuf, format: Option<Format>, backing: Box<Backing> },
}

/// What a run of the disk holds, for `base:allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Data, stored somewhere in the chain.
    Data,
    /// Reads as zeroes and is stored nowhere (an unallocated or zero cluster, a hole).
    Hole,
}

/// The image's data, by format.
enum Body {
    Raw(FileStorage),
    Imago(RwLock<FormatAccess<ImageFile>>),
    /// qcow2 with what imago refuses (zstd, extended L2 entries): the own driver.
    Own(Box<crate::own::OwnQcow2>),
    /// `-s` over an image of the own driver.
    Overlay(crate::overlay::Overlay),
}

/// An open image.
pub struct Image {
    body: Body,
    size: u64,
    format: Format,
    /// The format was guessed as raw: writes must not make it look like another format.
    probed_raw: bool,
}

/// An error naming the file.
fn err(path: &Path, e: impl std::fmt::Display) -> String {
    let message = e.to_string();
    let name = path.display().to_string();
    // imago's messages often start with the file name already.
    match message.strip_prefix(&name).and_then(|m| m.strip_prefix(": ")) {
        Some(rest) => format!("{name}: {rest}"),
        None => format!("{name}: {message}"),
    }
}

impl Image {
    /// Opens the image at `path`. Errors name the file.
    pub fn open(path: &Path, opts: &ImageOptions) -> Result<Image, String> {
        Image::open_with_backing(path, opts, &Backing::Header)
    }

    /// Opens the image at `path`, a qcow2 image over `backing`.
    pub fn open_with_backing(path: &Path, opts: &ImageOptions, backing: &Backing) -> Result<Image, String> {
        Image::open_in_chain(path, opts, backing, 0)
    }

    /// Opens the image at `path`, `depth` images down a backing chain.
    pub(crate) fn open_in_chain(
        path: &Path,
        opts: &ImageOptions,
        backing: &Backing,
        depth: u32,
    ) -> Result<Image, String> {
        let (format, probed_raw) = match opts.format {
            Some(f) => (f, false),
            None => {
                let f = probe(path).map_err(|e| err(path, e))?;
                if f == Format::Raw {
                    tracing::warn!(
                        "{}: no format given (-f) and the image looks raw; it is served as raw, and writes that \
                         would make its first sector look like another format are refused. Give -f raw to lift this.",
                        path.display()
                    );
                }
                (f, f == Format::Raw)
            }
        };
        if let Some(selector) = &opts.load_snapshot {
            return Image::open_internal_snapshot(path, format, selector, opts);
        }
        let image_writable = opts.writable && !opts.snapshot;
        if format == Format::Raw && !opts.snapshot {
            let file = if image_writable { FileStorage::open(path) } else { FileStorage::open_read_only(path) }
                .map_err(|e| err(path, e))?;
            if image_writable && !file.is_writable() {
                return Err(err(path, "Permission denied: cannot open it for writing (use -r to serve it read-only)"));
            }
            // Raw files take -n the file plugin's way (cache=none): data is dropped from the page
            // cache after each request, which works on every file system (tmpfs has no O_DIRECT).
            let file = if opts.direct { file.with_page_cache(PageCache::Evict) } else { file };
            let size = file.size();
            return Ok(Image { body: Body::Raw(file), size, format, probed_raw });
        }
        let storage_opts = StorageOpenOptions::new().direct(opts.direct);
        // The own driver takes the backing file the header names: a chain given by --image-opts
        // is left to imago.
        let own_allowed = format == Format::Qcow2 && matches!(backing, Backing::Header);
        let imago = if own_allowed && crate::own::wanted(path) {
            None
        } else {
            Some(open_imago(path, format, image_writable, storage_opts.clone(), backing))
        };
        let base = match imago {
            Some(Ok(base)) => base,
            // What imago refuses, in the image or its backing chain, the own driver may read.
            Some(Err(e)) if !own_allowed => return Err(err(path, e)),
            imago => return Image::open_own(path, opts, depth, imago.and_then(Result::err)),
        };
        let access = if opts.snapshot {
            overlay(base, storage_opts).map_err(|e| err(path, format!("-s: the temporary overlay: {e}")))?
        } else {
            base
        };
        let size = access.size();
        Ok(Image { body: Body::Imago(RwLock::new(access)), size, format, probed_raw })
    }

    /// `-l`: an internal snapshot, read-only.
    fn open_internal_snapshot(
        path: &Path,
        format: Format,
        selector: &crate::snapshot::Selector,
        opts: &ImageOptions,
    ) -> Result<Image, String> {
        // qemu-nbd looks the snapshot up in the temporary overlay, which has none.
        if opts.snapshot {
            return Err(err(path, "Failed to load snapshot: Can't find snapshot (-s puts a new overlay, without snapshots, over the image)"));
        }
        if format != Format::Qcow2 {
            return Err(err(path, "Failed to load snapshot: a raw image has no internal snapshots"));
        }
        crate::snapshot::open(path, selector, opts.direct)
    }

    /// An image served by imago (`-l`'s snapshot view of a qcow2 image).
    pub(crate) fn from_imago(access: FormatAccess<ImageFile>) -> Image {
        let size = access.size();
        Image { body: Body::Imago(RwLock::new(access)), size, format: Format::Qcow2, probed_raw: false }
    }

    /// An image served by the own driver.
    pub(crate) fn from_own(own: crate::own::OwnQcow2) -> Image {
        let size = own.size();
        Image { body: Body::Own(Box::new(own)), size, format: Format::Qcow2, probed_raw: false }
    }

    /// Opens a qcow2 image with the own driver; `imago_error` is imago's refusal, reported
    /// when the own driver cannot open the image either.
    fn open_own(path: &Path, opts: &ImageOptions, depth: u32, imago_error: Option<io::Error>) -> Result<Image, String> {
        let own = crate::own::open(path, opts, depth).map_err(|e| err(path, imago_error.unwrap_or(e)))?;
        let image = Image::from_own(own);
        let size = image.size;
        if !opts.snapshot {
            return Ok(image);
        }
        let overlay =
            crate::overlay::Overlay::new(image).map_err(|e| err(path, format!("-s: the temporary overlay: {e}")))?;
        Ok(Image { body: Body::Overlay(overlay), size, format: Format::Qcow2, probed_raw: false })
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The format of the image file (not of a `-s` overlay).
    pub fn format(&self) -> Format {
        self.format
    }

    fn access(&self) -> std::sync::RwLockReadGuard<'_, FormatAccess<ImageFile>> {
        match &self.body {
            Body::Imago(a) => a.read().unwrap_or_else(|p| p.into_inner()),
            _ => unreachable!("only imago images have imago access"),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.body {
            Body::Raw(f) => f.read_at(buf, offset).map_err(storage_error),
            Body::Imago(_) => self.access().read(buf, offset),
            Body::Own(q) => q.read(buf, offset),
            Body::Overlay(o) => o.read(buf, offset),
        }
    }

    /// Writes `buf` at `offset`. A raw image whose format was probed refuses a write that would
    /// make its first sector look like a qcow2 image (magic and version) (the next open would trust that header).
    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.probed_raw && offset < 8 {
            let mut head = [0u8; 8];
            self.read(&mut head, 0)?;
            let start = offset as usize;
            let n = (8 - start).min(buf.len());
            head[start..start + n].copy_from_slice(&buf[..n]);
            if looks_like_qcow2(&head) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        match &self.body {
            Body::Raw(f) => f.write_at(buf, offset).map_err(storage_error),
            Body::Imago(_) => self.access().write(buf, offset),
            Body::Own(q) => q.write(buf, offset),
            Body::Overlay(o) => o.write(buf, offset),
        }
    }

    /// Makes `length` bytes at `offset` read as zeroes; `unmap` lets it free the space.
    pub fn zero(&self, offset: u64, length: u64, unmap: bool) -> io::Result<()> {
        match &self.body {
            Body::Raw(f) => match f.zero(offset, length, unmap, false).map_err(storage_error)? {
                Some(_) => Ok(()),
                None => write_zero_buffers(length, offset, |buf, at| f.write_at(buf, at).map_err(storage_error)),
            },
            Body::Imago(a) => {
                let zeroed = if unmap {
                    a.write().unwrap_or_else(|p| p.into_inner()).discard_to_zero(offset, length)
                } else {
                    self.access().write_zeroes(offset, length)
                };
                match zeroed {
                    // qcow2 v2 has no zero clusters: write zeroes as data.
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        let access = self.access();
                        write_zero_buffers(length, offset, |buf, at| access.write(buf, at))
                    }
                    r => r,
                }
            }
            Body::Own(q) => q.zero(offset, length, unmap),
            Body::Overlay(o) => o.zero(offset, length),
        }
    }

    /// Discards `length` bytes at `offset` (what they read afterwards is unspecified).
    pub fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        match &self.body {
            Body::Raw(f) => f.trim(offset, length).map_err(storage_error),
            Body::Imago(a) => match a.write().unwrap_or_else(|p| p.into_inner()).discard_to_any(offset, length) {
                Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
                r => r,
            },
            Body::Own(q) => q.discard(offset, length),
            // Discards are advisory.
            Body::Overlay(_) => Ok(()),
        }
    }

    /// Writes cached metadata and data out and syncs them.
    pub fn flush(&self) -> io::Result<()> {
        match &self.body {
            Body::Raw(f) => f.flush().map_err(storage_error),
            Body::Imago(_) => {
                let a = self.access();
                a.flush()?;
                a.sync()
            }
            Body::Own(q) => q.flush(),
            Body::Overlay(_) => Ok(()),
        }
    }

    /// The allocation status at `offset` and how far (at most `length` bytes) it goes on.
    pub fn status(&self, offset: u64, length: u64) -> io::Result<(Status, u64)> {
        match &self.body {
            Body::Raw(f) => match f.allocation(offset, length).next() {
                Some(run) => {
                    let run = run.map_err(storage_error)?;
                    let status = if run.allocation == Allocation::Data { Status::Data } else { Status::Hole };
                    Ok((status, run.length.min(length)))
                }
                None => Ok((Status::Data, length)),
            },
            Body::Own(q) => crate::own::status(q, offset, length),
            Body::Overlay(o) => o.status(offset, length),
            Body::Imago(_) => {
                let top = self.access();
                let mut layer: &FormatAccess<ImageFile> = &top;
                let (mut at, mut max) = (offset, length);
                loop {
                    let (mapping, len) = layer.get_shallow_mapping(at, max)?;
                    let len = len.min(max);
                    match mapping {
                        ShallowMapping::Indirect { layer: next, offset: next_at, .. } => {
                            layer = next;
                            at = next_at;
                            max = len;
                        }
                        ShallowMapping::Zero { .. } => return Ok((Status::Hole, len)),
                        ShallowMapping::Eof { .. } => return Ok((Status::Hole, max)),
                        // A raw layer's file may have holes, which read as zeroes.
                        ShallowMapping::Raw { storage, offset, .. } if layer.inner().format() == ImagoFormat::Raw => {
                            return Ok(self.file_status(storage, offset, len).unwrap_or((Status::Data, len)))
                        }
                        _ => return Ok((Status::Data, len)),
                    }
                }
            }
        }
    }

    /// Holes in the file under a raw layer (imago does not report them).
    fn file_status(&self, file: &ImageFile, offset: u64, length: u64) -> Option<(Status, u64)> {
        let run = file.storage().allocation(offset, length).next()?.ok()?;
        let status = if run.allocation == Allocation::Data { Status::Data } else { Status::Hole };
        Some((status, run.length.clamp(1, length)))
    }

    /// Where the data at `offset` is, for `qemu:allocation-depth`: 0 in no layer, 1 in the image
    /// itself, 2 and more in its backing chain; and how far (at most `length`) that goes on.
    pub fn depth(&self, offset: u64, length: u64) -> io::Result<(u32, u64)> {
        match &self.body {
            Body::Raw(_) => return Ok((1, length)),
            Body::Own(q) => return crate::own::depth(q, offset, length),
            Body::Overlay(o) => return o.depth(offset, length),
            Body::Imago(_) => {}
        }
        let top = self.access();
        let mut layer: &FormatAccess<ImageFile> = &top;
        let (mut at, mut max, mut depth) = (offset, length, 1u32);
        loop {
            let (mapping, len) = layer.get_shallow_mapping(at, max)?;
            match mapping {
                ShallowMapping::Indirect { layer: next, offset: next_at, .. } => {
                    layer = next;
                    at = next_at;
                    max = len.min(max);
                    depth += 1;
                }
                ShallowMapping::Zero { explicit: false, .. } => return Ok((0, len.min(max))),
                // Past the end of a shorter backing file: nothing is allocated there.
                ShallowMapping::Eof { .. } => return Ok((0, max)),
                _ => return Ok((depth, len.min(max))),
            }
        }
    }
}

/// The format from the image's first bytes: qcow2 by its magic, raw otherwise.
fn probe(path: &Path) -> io::Result<Format> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path)?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(if got == head.len() && looks_like_qcow2(&head) { Format::Qcow2 } else { Format::Raw })
}

/// Opens a raw or qcow2 image (with its backing chain) through imago.
fn open_imago(
    path: &Path,
    format: Format,
    writable: bool,
    opts: StorageOpenOptions,
    backing: &Backing,
) -> io::Result<FormatAccess<ImageFile>> {
    match format {
        Format::Qcow2 => {
            let builder = Qcow2::<ImageFile>::builder_path(path).write(writable).storage_open_options(opts.clone());
            let builder = match backing {
                Backing::Header => builder,
                Backing::None => builder.backing(None),
                Backing::Image { path, format, backing } => {
                    let format = match format {
                        Some(f) => *f,
                        None => probe(path).map_err(|e| io::Error::new(e.kind(), err(path, e)))?,
                    };
                    let image = open_imago(path, format, false, opts, backing)
                        .map_err(|e| io::Error::new(e.kind(), err(path, e)))?;
                    builder.backing(Some(image))
                }
            };
            let q = builder.open(PermissiveImplicitOpenGate::default())?;
            Ok(FormatAccess::new(q))
        }
        Format::Raw => {
            let r = Raw::<ImageFile>::builder_path(path)
                .write(writable)
                .storage_open_options(opts)
                .open(PermissiveImplicitOpenGate::default())?;
            Ok(FormatAccess::new(r))
        }
    }
}

/// A temporary qcow2 overlay over `base`, in `$TMPDIR` (or /var/tmp, as qemu uses), unlinked
/// once open.
fn overlay(base: FormatAccess<ImageFile>, opts: StorageOpenOptions) -> io::Result<FormatAccess<ImageFile>> {
    let dir = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let path = dir.join(format!("nbdforge-img-snapshot-{}.qcow2", std::process::id()));
    OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let result = (|| {
        let storage = ImageFile::open(&path, true, false)?;
        Qcow2::<ImageFile>::create_builder(storage).size(base.size()).create()?;
        let q = Qcow2::<ImageFile>::builder_path(&path)
            .write(true)
            .storage_open_options(opts)
            .backing(Some(base))
            .open(PermissiveImplicitOpenGate::default())?;
        Ok(FormatAccess::new(q))
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Writes zeroes a buffer at a time, where the file system cannot zero a range.
fn write_zero_buffers(length: u64, offset: u64, mut write: impl FnMut(&[u8], u64) -> io::Result<()>) -> io::Result<()> {
    let zeroes = vec![0u8; length.min(1 << 20) as usize];
    let mut done = 0;
    while done < length {
        let n = (length - done).min(zeroes.len() as u64);
        write(&zeroes[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Scratch;

    #[test]
    fn qcow2_headers_are_told_by_magic_and_version() {
        assert!(looks_like_qcow2(b"QFI\xfb\0\0\0\x03"));
        assert!(looks_like_qcow2(b"QFI\xfb\0\0\0\x02"));
        assert!(!looks_like_qcow2(b"QFI\xfb\0\0\0\x00"));
        assert!(!looks_like_qcow2(b"QFI\xfa\0\0\0\x03"));
    }

    #[test]
    fn a_probed_raw_image_refuses_a_qcow2_header() {
        let dir = Scratch::new("probe");
        let path = dir.0.join("disk.raw");
        std::fs::write(&path, vec![0u8; 65536]).unwrap();
        let image = Image::open(&path, &ImageOptions { writable: true, ..Default::default() }).unwrap();
        assert_eq!(image.format(), Format::Raw);
        let e = image.write(b"QFI\xfb\0\0\0\x03", 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // Split over two writes: the version completes the header.
        image.write(b"QFI\xfb", 0).unwrap();
        assert_eq!(image.write(b"\0\0\0\x02", 4).unwrap_err().raw_os_error(), Some(libc::EPERM));
        image.write(b"\0\0\0\x09", 4).unwrap();
        let forced = ImageOptions { writable: true, format: Some(Format::Raw), ..Default::default() };
        Image::open(&path, &forced).unwrap().write(b"QFI\xfb\0\0\0\x03", 0).unwrap();
        // Now it probes as qcow2 (and is not a valid one).
        assert!(Image::open(&path, &ImageOptions::default()).is_err());
    }

    #[test]
    fn qcow2_status_depth_and_snapshot() {
        let dir = Scratch::new("qcow2");
        let path = dir.qcow2("disk.qcow2", 4 << 20);
        let rw = ImageOptions { writable: true, ..Default::default() };
        {
            let image = Image::open(&path, &rw).unwrap();
            assert_eq!(image.format(), Format::Qcow2);
            assert_eq!(image.size(), 4 << 20);
            image.write(&[7u8; 65536], 1 << 20).unwrap();
            image.zero(2 << 20, 65536, false).unwrap();
            image.flush().unwrap();
            assert_eq!(image.status(0, 4 << 20).unwrap(), (Status::Hole, 1 << 20));
            assert_eq!(image.status(1 << 20, 4 << 20).unwrap(), (Status::Data, 65536));
            assert_eq!(image.status(2 << 20, 65536).unwrap().0, Status::Hole);
            assert_eq!(image.depth(0, 4 << 20).unwrap(), (0, 1 << 20));
            assert_eq!(image.depth(1 << 20, 4 << 20).unwrap(), (1, 65536));
            // A zero cluster is allocated in the image.
            assert_eq!(image.depth(2 << 20, 65536).unwrap(), (1, 65536));
        }
        let before = std::fs::read(&path).unwrap();
        {
            let snap = ImageOptions { writable: true, snapshot: true, ..Default::default() };
            let image = Image::open(&path, &snap).unwrap();
            image.write(&[9u8; 4096], 0).unwrap();
            let mut buf = [0u8; 4096];
            image.read(&mut buf, 0).unwrap();
            assert_eq!(buf, [9u8; 4096]);
            image.read(&mut buf, 1 << 20).unwrap();
            assert_eq!(buf, [7u8; 4096]);
            // Data in the image under the overlay is one layer down.
            assert_eq!(image.depth(1 << 20, 65536).unwrap(), (2, 65536));
            image.flush().unwrap();
        }
        assert!(std::fs::read(&path).unwrap() == before, "-s changed the image");
    }
}
