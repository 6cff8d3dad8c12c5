//! The image plugin: one disk [`Image`] served under one export name, with qemu-nbd's policies
//! on top of the format layer: `-o` (an offset into the disk), `--discard`, `--detect-zeroes`,
//! `-x`, `-D`, `-A` (the `qemu:allocation-depth` meta context) and `-B` (the
//! `qemu:dirty-bitmap:NAME` contexts, from [`crate::bitmap`]).
//!
//! It is a plugin in the SDK's sense, built from options rather than `key=value` parameters, so
//! the front end puts it at the bottom of an ordinary server stack.

use std::io;
use std::sync::Arc;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    BlockSize, Capabilities, Error, Export, Extents, Flags, Handle, Layer, OpenArgs, Plugin, Result, Support,
};

use crate::bitmap::Bitmaps;
use crate::image::{Image, Status};

/// The meta context of `-A`.
pub const ALLOCATION_DEPTH: &str = "qemu:allocation-depth";

/// `--detect-zeroes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectZeroes {
    /// Writes are written as they are.
    #[default]
    Off,
    /// Writes of zeroes become zero requests.
    On,
    /// As `On`, and the space may be freed when `--discard=unmap`.
    Unmap,
}

impl DetectZeroes {
    /// The mode a `--detect-zeroes` or `detect-zeroes=` value names.
    pub fn parse(v: &str) -> Option<DetectZeroes> {
        match v {
            "off" => Some(DetectZeroes::Off),
            "on" => Some(DetectZeroes::On),
            "unmap" => Some(DetectZeroes::Unmap),
            _ => None,
        }
    }
}

/// Whether a `--discard` or `discard=` value frees space (`unmap`, `on`) or not (`ignore`,
/// `off`).
pub fn parse_discard(v: &str) -> Option<bool> {
    match v {
        "unmap" | "on" => Some(true),
        "ignore" | "off" => Some(false),
        _ => None,
    }
}

/// One of qemu's boolean words.
pub fn qemu_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// What the plugin serves and how.
pub struct Settings {
    /// The image file as the user named it, for messages.
    pub name: String,
    /// `-x`.
    pub export_name: String,
    /// `-D`.
    pub description: Option<String>,
    /// `-o`: the disk starts this far into the image.
    pub offset: u64,
    /// `--image-opts`' raw `size=`: the disk ends this far after `offset` (default: at the end).
    pub size: Option<u64>,
    /// `--discard=unmap`: trims free space; otherwise they are ignored.
    pub discard_unmap: bool,
    /// `--detect-zeroes`.
    pub detect_zeroes: DetectZeroes,
    /// `-A`.
    pub allocation_depth: bool,
    /// `-B`.
    pub bitmaps: Bitmaps,
    /// `-r`.
    pub readonly: bool,
    /// Advertise multi-conn: only when more than one client may connect (`-e` other than 1), as
    /// qemu-nbd; a client that opened several connections to a one-client server would wait
    /// forever for the second.
    pub multi_conn: bool,
    /// `--tls-authz`: which TLS clients may open the export.
    pub authz: Option<crate::authz::Authz>,
}

/// The plugin: the open image and its settings.
pub struct ImagePlugin {
    image: Arc<Image>,
    settings: Arc<Settings>,
}

impl ImagePlugin {
    /// A plugin serving `image`. Fails when `-o` is past the end of the image.
    pub fn new(image: Image, settings: Settings) -> std::result::Result<Self, String> {
        if settings.offset > image.size() {
            return Err(format!(
                "-o {}: the offset is past the end of {} ({} bytes)",
                settings.offset,
                settings.name,
                image.size()
            ));
        }
        if let Some(size) = settings.size {
            if settings.offset.checked_add(size).is_none_or(|end| end > image.size()) {
                return Err(format!(
                    "The sum of offset ({}) and size ({size}) has to be smaller or equal to the actual size of {} ({})",
                    settings.offset,
                    settings.name,
                    image.size()
                ));
            }
        }
        Ok(ImagePlugin { image: Arc::new(image), settings: Arc::new(settings) })
    }
}

impl Layer for ImagePlugin {
    /// The last writes reach the disk when the server stops (and the image's bitmaps stay valid
    /// when nothing was written).
    fn cleanup(&self) {
        if !self.settings.readonly {
            match self.image.flush() {
                Ok(()) => self.settings.bitmaps.close(),
                Err(e) => tracing::error!("{}: flush: {e}", self.settings.name),
            }
        }
    }
}

impl Plugin for ImagePlugin {
    fn list_exports(&self, _readonly: bool, _tls: bool) -> Result<Vec<Export>> {
        Ok(vec![Export { name: self.settings.export_name.clone(), description: self.settings.description.clone() }])
    }

    /// The empty name is only the export when `-x` did not name it otherwise (qemu-nbd has no
    /// default export besides).
    fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
        Ok(String::new())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        if args.export_name != self.settings.export_name {
            return Err(Error::new(
                libc::ENOENT,
                format!("export '{}' not found (this server serves '{}')", args.export_name, self.settings.export_name),
            ));
        }
        if let Some(authz) = &self.settings.authz {
            let tls = args.conn.client().tls.clone().unwrap_or_default();
            let identity = tls.dn.as_deref().map(crate::authz::qemu_dn).or(tls.identity);
            let allowed = authz.allows(identity.as_deref()).map_err(|e| Error::new(libc::EIO, e))?;
            if !allowed {
                return Err(Error::new(
                    libc::EPERM,
                    format!(
                        "--tls-authz: client {} is not authorized",
                        identity.as_deref().unwrap_or("without identity")
                    ),
                ));
            }
        }
        Ok(Box::new(ImageHandle {
            image: Arc::clone(&self.image),
            settings: Arc::clone(&self.settings),
            readonly: args.readonly || self.settings.readonly,
        }))
    }
}

/// One connection's view of the shared image.
struct ImageHandle {
    image: Arc<Image>,
    settings: Arc<Settings>,
    readonly: bool,
}

impl ImageHandle {
    fn error(&self, what: &str, e: io::Error) -> Error {
        let errno = e.raw_os_error().unwrap_or(match e.kind() {
            io::ErrorKind::PermissionDenied => libc::EPERM,
            io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => libc::EINVAL,
            io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
            io::ErrorKind::StorageFull => libc::ENOSPC,
            _ => libc::EIO,
        });
        Error::new(errno, format!("{}: {what}: {e}", self.settings.name))
    }

    /// The image offset of a disk offset.
    fn at(&self, offset: u64) -> u64 {
        offset + self.settings.offset
    }

    fn flush_if_fua(&self, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FUA) {
            self.image.flush().map_err(|e| self.error("flush", e))?;
        }
        Ok(())
    }
}

impl Handle for ImageHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.settings.size.unwrap_or(self.image.size() - self.settings.offset))
    }

    /// As qemu-nbd: byte-sized requests, 4 KiB preferred, 32 MiB at most.
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(Some(BlockSize { minimum: 1, preferred: 4096, maximum: 32 << 20 }))
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self.settings.description.clone())
    }

    fn capabilities(&self) -> Result<Capabilities> {
        // One image shared by every connection: a flush on one covers the writes of all, so
        // multi-conn is safe whenever several connections are allowed.
        Ok(Capabilities {
            write: !self.readonly,
            fast_zero: false,
            cache: Support::Emulate,
            multi_conn: self.settings.multi_conn,
            ..Capabilities::ALL
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.image.read(buf, self.at(offset)).map_err(|e| self.error("read", e))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.settings.bitmaps.written(self.at(offset), buf.len() as u64);
        if self.settings.detect_zeroes != DetectZeroes::Off && buf.iter().all(|&b| b == 0) {
            let unmap = self.settings.detect_zeroes == DetectZeroes::Unmap && self.settings.discard_unmap;
            self.image.zero(self.at(offset), buf.len() as u64, unmap).map_err(|e| self.error("write zeroes", e))?;
        } else {
            self.image.write(buf, self.at(offset)).map_err(|e| self.error("write", e))?;
        }
        self.flush_if_fua(flags)
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.image.flush().map_err(|e| self.error("flush", e))
    }

    /// `--discard=ignore` (the default) accepts trims and does nothing, as qemu-nbd.
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if self.settings.discard_unmap {
            self.settings.bitmaps.written(self.at(offset), count);
            self.image.discard(self.at(offset), count).map_err(|e| self.error("trim", e))?;
        }
        self.flush_if_fua(flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let unmap = flags.contains(Flags::MAY_TRIM) && self.settings.discard_unmap;
        self.settings.bitmaps.written(self.at(offset), count);
        self.image.zero(self.at(offset), count, unmap).map_err(|e| self.error("zero", e))?;
        self.flush_if_fua(flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.runs(count, offset, flags, extents, "block status", |at, len| {
            let (status, len) = self.image.status(at, len)?;
            Ok((if status == Status::Data { DATA } else { HOLE | ZERO }, len))
        })
    }

    fn meta_contexts(&self) -> Result<Vec<String>> {
        let mut contexts = self.settings.bitmaps.contexts();
        if self.settings.allocation_depth {
            contexts.insert(0, ALLOCATION_DEPTH.to_string());
        }
        Ok(contexts)
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        if context == ALLOCATION_DEPTH && self.settings.allocation_depth {
            return self.runs(count, offset, flags, extents, "allocation depth", |at, len| self.image.depth(at, len));
        }
        if let Some(bitmap) = self.settings.bitmaps.get(context) {
            return self.runs(count, offset, flags, extents, context, |at, len| {
                bitmap.status(at, len).map(|(dirty, len)| (u32::from(dirty), len))
            });
        }
        if context == nbdforge_api::BASE_ALLOCATION {
            return self.extents(count, offset, flags, extents);
        }
        Err(Error::invalid(format!("unknown meta context '{context}'")))
    }
}

impl ImageHandle {
    /// Fills `extents` with the runs `status` finds from image offsets (flags, length).
    fn runs(
        &self,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
        what: &str,
        status: impl Fn(u64, u64) -> io::Result<(u32, u64)>,
    ) -> Result<()> {
        let end = offset + count;
        let mut at = extents.next_offset().max(offset);
        while at < end && !extents.is_full() {
            let (state, len) = status(self.at(at), end - at).map_err(|e| self.error(what, e))?;
            let len = len.max(1).min(end - at);
            extents.add(at, len, state)?;
            at += len;
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
        }
        Ok(())
    }
}
