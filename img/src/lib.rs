//! # nbdforge-img
//!
//! Disk images over NBD with qemu-nbd's command line: the formats layer ([`image`]: raw through
//! `nbdforge-storage`, qcow2 through `imago` or, for what imago refuses, the own [`qcow2`] driver) and the plugin that serves one image with
//! qemu-nbd's policies ([`plugin`]). The `nbdforge-img` binary parses the command line and runs
//! the server with the `nbdforge-process` library.

pub mod authz;
pub mod file;
pub mod image;
pub mod list;
pub mod objects;
pub mod overlay;
pub mod own;
pub mod plugin;
pub mod qcow2;
