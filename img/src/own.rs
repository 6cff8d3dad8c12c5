//! The own qcow2 driver ([`crate::qcow2`]) as a body of an [`Image`]: its source is the image
//! file, its backing file is another [`Image`] (raw, qcow2 through imago, or this driver again),
//! and `base:allocation` and `qemu:allocation-depth` come from its mapping and, where a cluster
//! is not allocated, from the backing image's. The backing chain is only ever read.

use std::io;
use std::path::Path;

use crate::file::{storage_error, ImageFile};
use crate::image::{Format, Image, ImageOptions, Status};
use crate::qcow2::header::{be32, be64, looks_like_qcow2, Header, COMPRESSION_TYPE, EXTENDED_L2};
use crate::qcow2::l2::Kind;
use crate::qcow2::{Backing, Qcow2, Source};

/// The driver over an image file and its backing image.
pub type OwnQcow2 = Qcow2<ImageFile, Image>;

/// Backing chains longer than this are refused (a chain that loops back on itself would be
/// endless).
const MAX_CHAIN: u32 = 64;

impl Source for ImageFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        ImageFile::read_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.storage().current_len())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.storage().write_at(buf, offset).map_err(storage_error)
    }

    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        self.storage().trim(offset, length).map_err(storage_error)
    }

    fn sync(&self) -> io::Result<()> {
        self.storage().flush().map_err(storage_error)
    }
}

impl Backing for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Image::read(self, buf, offset)
    }
}

/// Whether the qcow2 image at `path` asks for what only this driver reads (zstd compression,
/// extended L2 entries): then this driver's checks of the rest of the header are the ones to
/// report.
pub fn wanted(path: &Path) -> bool {
    let Ok(file) = ImageFile::open(path, false, false) else { return false };
    let mut head = [0u8; 80];
    if file.read_at(&mut head, 0).is_err() || !looks_like_qcow2(&head[..8].try_into().expect("8 bytes")) {
        return false;
    }
    be32(&head, 4) == 3 && be64(&head, 72) & (COMPRESSION_TYPE | EXTENDED_L2) != 0
}

/// Opens the qcow2 image at `path` with its backing chain (read-only), for writing with
/// `opts.writable` (and not `-s`); `depth` is how deep in a chain it is.
pub fn open(path: &Path, opts: &ImageOptions, depth: u32) -> io::Result<OwnQcow2> {
    let file = ImageFile::open(path, opts.writable && !opts.snapshot, opts.direct)?;
    let header = Header::read(&file)?;
    open_with(path, file, header, opts, depth)
}

/// Opens the qcow2 image at `path`, already open as `file`, with `header`: the file's own, or
/// a view of it with an internal snapshot's L1 table and size ([`crate::snapshot`], read-only).
pub fn open_with(
    path: &Path,
    file: ImageFile,
    header: Header,
    opts: &ImageOptions,
    depth: u32,
) -> io::Result<OwnQcow2> {
    header.check_supported()?;
    let writable = opts.writable && !opts.snapshot;
    let backing = match &header.backing_file {
        None => None,
        Some(_) if depth >= MAX_CHAIN => {
            return Err(io::Error::other(format!("the backing chain is longer than {MAX_CHAIN} images")))
        }
        Some(name) => {
            let format = match header.backing_format.as_deref() {
                None => None,
                Some(f) => Some(Format::parse(f).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, format!("backing format '{f}' is not supported"))
                })?),
            };
            let backing_path = path.parent().unwrap_or(Path::new(".")).join(name);
            let backing_opts =
                ImageOptions { format, writable: false, snapshot: false, direct: opts.direct, load_snapshot: None };
            let image = Image::open_in_chain(&backing_path, &backing_opts, &crate::image::Backing::Header, depth + 1)
                .map_err(|e| io::Error::other(format!("backing file: {e}")))?;
            Some(image)
        }
    };
    let mut q = OwnQcow2::open(file, header, backing)?;
    if writable {
        q.enable_writes().map_err(|e| {
            io::Error::new(e.kind(), format!("{e}; serve it read-only (-r) or with a temporary overlay (-s)"))
        })?;
    }
    Ok(q)
}

/// `base:allocation` at `offset`: data stored here or in the chain, holes where it reads as
/// zeroes stored nowhere.
pub fn status(q: &OwnQcow2, offset: u64, length: u64) -> io::Result<(Status, u64)> {
    let (kind, len) = q.mapping(offset, length)?;
    Ok(match kind {
        Kind::Data(_) | Kind::Compressed { .. } => (Status::Data, len),
        Kind::Zero => (Status::Hole, len),
        Kind::Unallocated => match q.backing() {
            Some(b) if offset < b.size() => b.status(offset, len.min(b.size() - offset))?,
            _ => (Status::Hole, len),
        },
    })
}

/// `qemu:allocation-depth` at `offset`: 1 where this image holds it (data or zeroes), one more
/// than the backing image's depth where that does, 0 where no layer does.
pub fn depth(q: &OwnQcow2, offset: u64, length: u64) -> io::Result<(u32, u64)> {
    let (kind, len) = q.mapping(offset, length)?;
    Ok(match kind {
        Kind::Unallocated => match q.backing() {
            Some(b) if offset < b.size() => {
                let (d, l) = b.depth(offset, len.min(b.size() - offset))?;
                (if d == 0 { 0 } else { d + 1 }, l)
            }
            _ => (0, len),
        },
        _ => (1, len),
    })
}
