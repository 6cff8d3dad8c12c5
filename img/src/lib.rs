//! # nbdforge-img
//!
//! Disk images over NBD with qemu-nbd's command line: the formats layer ([`image`]: raw through
//! `nbdforge-storage`, qcow2 through `imago` or, for what imago refuses (zstd, extended L2
//! entries), the own [`qcow2`] driver) and the plugin that serves one image with qemu-nbd's
//! policies ([`plugin`]), with what imago does not read of a qcow2 image: internal snapshots
//! ([`snapshot`], `-l`) and persistent dirty bitmaps ([`bitmap`], `-B`), from the header and
//! bitmaps that [`qcow2`] reads for its own driver too. The `nbdforge-img` binary parses the command line and
//! runs the server with the `nbdforge-process` library.

pub mod authz;
pub mod bitmap;
pub mod file;
pub mod image;
pub mod image_opts;
pub mod kernel;
pub mod list;
pub mod objects;
pub mod overlay;
pub mod own;
pub mod plugin;
pub mod qcow2;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
