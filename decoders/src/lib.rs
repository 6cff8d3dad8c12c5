//! # nbdforge-decoders: filters that serve what a compressed or container file holds
//!
//! - [`gzip`], [`bzip2`]: formats without an index, decompressed whole into a temporary file
//!   on the first open ([`whole`]).
//! - [`xz`], [`lzip`]: formats of independently compressed blocks, decompressed block by
//!   block as reads need them, with a small cache ([`blocks`]).
//! - [`qcow2dec`]: a qcow2 image served by any plugin, read by imago (the qcow2 code of
//!   `nbdforge-img`) over the layer below ([`below`]).
//!
//! A crate of its own because of its dependencies (liblzma, the compression crates, imago), which a
//! build without these filters should not wait for. [`source`] reads the layer below for them.

#![warn(missing_docs)]

pub mod below;
pub mod blocks;
pub mod bzip2;
pub mod gzip;
pub mod lzip;
pub mod qcow2dec;
pub mod source;
pub mod whole;
pub mod xz;

use nbdforge_api::Registration;

/// The decoding filters: their entries in the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![
        gzip::registration(),
        bzip2::registration(),
        xz::registration(),
        lzip::registration(),
        qcow2dec::registration(),
    ]
}
