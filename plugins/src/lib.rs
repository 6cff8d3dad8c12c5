//! # nbdforge-plugins: the plugins built into nbdforge
//!
//! Each plugin is one small file holding only its policy (parameters, capabilities, how a request
//! maps onto its storage), written against the `nbdforge-api` SDK like any outside plugin:
//!
//! - [`memory`]: a RAM disk, sparse by default, up to 2^63-1 bytes;
//! - [`file`](mod@file): a file or block device, or each file of a directory as its own export;
//! - [`null`]: discards writes and reads back zeroes;
//! - [`pattern`]: read-only, each 8-byte word holds its own offset;
//! - [`zero`]: an empty read-only disk;
//! - [`full`]: reads as zeroes, every write fails with `ENOSPC`;
//! - [`ones`]: every byte 0xff (or `byte=`), writes discarded;
//! - [`random`]: pseudo-random bytes, the same as nbdkit's for the same `seed=`;
//! - [`sparse_random`]: runs of random data between holes, also nbdkit's for the same `seed=`;
//! - [`info`]: the export name, client address or a clock as a disk;
//! - [`split`]: several files concatenated into one disk;
//! - [`partitioning`]: a partitioned disk made from files, one partition each;
//! - [`floppy`]: a FAT32 disk made from a directory, read-only;
//! - [`nbd`]: a proxy to another NBD server (the protocol crate's client side);
//! - [`data`]: a RAM disk initialized from the command line, in nbdkit's data format;
//! - [`sh`] and [`eval`]: plugins written as scripts, with nbdkit's calling convention;
//! - [`iso`]: a CD-ROM image made from directories by xorriso, genisoimage or mkisofs;
//! - [`linuxdisk`]: a partitioned disk with an ext2/3/4 file system made from a directory;
//! - [`tmpdisk`]: a fresh temporary file system (or any disk a command makes) per connection;
//! - [`ondemand`]: a persistent file system per export name, made the first time it is asked for;
//! - [`curl`]: a disk image read by ranged requests over HTTP(S), FTP or file:// (libcurl).
//! - [`ssh`]: a disk image on another machine, over SFTP.
//!
//! Shared machinery lives beside them: [`sparse_array`] (pages allocated on first write, behind
//! lock stripes), `flat_buffer` (one mapping for `memory allocator=malloc`), `data_format` (the
//! data plugin's language), `script` (running the scripts of `sh` and `eval`), `fs_image` (making
//! a disk with the system's tools, for the last four), `virtual_disk` (a disk laid out as regions
//! of synthesized bytes and host files, for `partitioning` and `floppy`) and `fat32` (the
//! floppy's file system); the file, split and partitioning plugins' I/O is the
//! `nbdforge-storage` crate, and nbdkit's pseudo-random generator, for the plugins whose data a
//! seed decides, is the SDK's `nbdforge_api::prng`. The binary finds a plugin by name in
//! [`registrations`].

#![warn(missing_docs)]

mod bucket;
pub mod curl;
pub mod data;
mod data_format;
pub mod eval;
mod fat32;
pub mod file;
mod flat_buffer;
pub mod floppy;
mod fs_image;
pub mod full;
pub mod info;
pub mod iso;
pub mod linuxdisk;
pub mod memory;
pub mod nbd;
pub mod null;
pub mod ondemand;
pub mod ones;
pub mod partitioning;
pub mod pattern;
pub mod random;
pub mod s3;
mod script;
pub mod script_plugin;
pub mod sh;
pub mod sparse_array;
pub mod sparse_random;
pub mod split;
pub mod ssh;
mod sys;
pub mod tmpdisk;
mod virtual_disk;
pub mod zero;

use nbdforge_api::Registration;

/// The built-in plugins: their entries in the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![
        memory::registration(),
        nbd::registration(),
        file::registration(),
        null::registration(),
        pattern::registration(),
        zero::registration(),
        full::registration(),
        ones::registration(),
        random::registration(),
        sparse_random::registration(),
        info::registration(),
        split::registration(),
        data::registration(),
        sh::registration(),
        eval::registration(),
        partitioning::registration(),
        floppy::registration(),
        iso::registration(),
        linuxdisk::registration(),
        tmpdisk::registration(),
        ondemand::registration(),
        curl::registration(),
        ssh::registration(),
        s3::registration(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_a_plugin_with_a_unique_name() {
        let table = registrations();
        for r in &table {
            assert!(r.is_plugin(), "{}", r.info.name);
            assert_eq!(table.iter().filter(|o| o.info.name == r.info.name).count(), 1);
            assert!(r.new_plugin().is_some());
        }
        assert!(nbdforge_api::find(&table, "memory", true).is_some());
        assert!(nbdforge_api::find(&table, "nosuch", true).is_none());
    }
}
