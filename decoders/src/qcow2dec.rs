//! The `qcow2dec` filter: serves the disk of a qcow2 image that the layer below holds, read-only
//! (nbdkit-qcow2dec-filter).
//!
//! The image is read by imago, the qcow2 code of `nbdforge-img`, over [`Below`]: v2 and v3
//! images, zlib-compressed clusters, zero clusters. Block status comes from the image's own
//! mapping (unallocated and zero clusters are holes). An image that names a backing file or an
//! external data file cannot be opened: the filter sees bytes, not files, as nbdkit's does.
//! Each connection opens the image anew (its header and tables, checked by imago).

use std::sync::Arc;

use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, ShallowMapping};
use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

use crate::below::Below;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("qcow2dec", "serve the disk of a qcow2 image held by the plugin (read-only)");
    Registration::filter(info, || Qcow2Dec)
}

/// The `qcow2dec` filter.
pub struct Qcow2Dec;

impl Layer for Qcow2Dec {
    /// The compression types it decodes, as nbdkit lists them (imago has no zstd).
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("qcow2dec_deflate".into(), "yes".into())]
    }
}

/// An imago error as the filter's: the errno it carries, or `EIO`.
fn error(what: &str, e: &std::io::Error) -> Error {
    Error::new(e.raw_os_error().unwrap_or(libc::EIO), format!("qcow2dec: {what}: {e}"))
}

impl Filter for Qcow2Dec {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below: Arc<dyn Handle> = Arc::from(next.open(&args.read_only())?);
        let size = below.get_size()?;
        let image = Qcow2::<Below>::builder(Below::new(below.clone(), size))
            .write(false)
            .open(DenyImplicitOpenGate::default())
            .map_err(|e| error("opening the image", &e))?;
        let image = FormatAccess::new(image);
        Ok(Box::new(Qcow2Handle { size: image.size(), image, below }))
    }
}

/// One connection: the open image.
struct Qcow2Handle {
    below: Arc<dyn Handle>,
    image: FormatAccess<Below>,
    size: u64,
}

impl Handle for Qcow2Handle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn block_size(&self) -> Result<Option<nbdforge_api::BlockSize>> {
        Ok(None)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { extents: true, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let len = buf.len();
        self.image.read(buf, offset).map_err(|e| error(&format!("reading {len} bytes at {offset}"), &e))
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        let end = (offset + count).min(self.size);
        let mut at = extents.next_offset().max(offset);
        while at < end && !extents.is_full() {
            let (mapping, len) = self.image.get_shallow_mapping(at, end - at).map_err(|e| error("mapping", &e))?;
            let len = len.clamp(1, end - at);
            let flags = match mapping {
                ShallowMapping::Zero { .. } | ShallowMapping::Eof { .. } => HOLE | ZERO,
                _ => DATA,
            };
            extents.add(at, len, flags)?;
            at += len;
        }
        Ok(())
    }
}
