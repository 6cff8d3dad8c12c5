//! # nbdforge-ext2: the `ext2` filter
//!
//! Serves one file inside an ext2, ext3 or ext4 filesystem, as nbdkit-ext2-filter does, through
//! e2fsprogs' libext2fs (the library e2fsck and nbdkit use).
//!
//! - [`filter`]: the filter's policy: parameters, which file, capabilities, requests.
//! - [`superblock`]: sanity checks of the superblock before libext2fs sees it.
//! - [`device`]: the layer below as libext2fs's disk, with a small block cache.
//! - [`sys`]: the binding to libext2fs and its I/O manager (the crate's only `unsafe` code).
//!
//! A crate of its own because it links libext2fs: a build without it should not need
//! libext2fs-dev.

#![warn(missing_docs)]

pub mod device;
pub mod filter;
pub mod superblock;
pub mod sys;

use nbdforge_api::Registration;

/// The crate's filters: their entries in the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![filter::registration()]
}

#[cfg(test)]
mod tests;
