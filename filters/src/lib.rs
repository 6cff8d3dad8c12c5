//! # nbdforge-filters: the filters built into nbdforge
//!
//! A filter sits between the client and the plugin and changes what passes through. Each one is a
//! small file holding only its policy, written against the `nbdforge-api` SDK:
//!
//! - [`nofilter`]: changes nothing; proves the mechanism and is the smallest filter to copy.
//! - [`error`]: injects errors at random; [`evil`]: corrupts read data; [`delay`]: slows
//!   requests down; [`spinning`]: adds the seek times of a spinning disk.
//! - [`retry`]: reopens the layer below and retries failed requests; [`retry_request`]: retries
//!   them on the same handle.
//! - [`ip`]: lets clients in or not by address, credentials or certificate; [`limit`]: caps
//!   the number of clients at once.
//! - [`exitlast`], [`exitwhen`]: shut the server down after the last client, or after an event;
//!   [`time_limit`]: drops clients connected for too long.
//! - [`pause`]: holds requests on command; [`rate`]: caps bandwidth; [`tls_fallback`]: a
//!   message for plaintext clients.
//! - [`count`]: counts the bytes moved; [`openonce`]: one open of the plugin for all clients.
//! - [`log`]: writes a line for every request to a file or a script (nbdkit-log-filter);
//!   [`stats`]: counts requests, bytes, time and request shapes, and writes a summary at exit.
//! - [`offset`], [`partition`]: serve part of the layer below (both through [`window`]);
//!   [`map`]: move ranges of it.
//! - [`truncate`]: change the size.
//! - [`readonly`], [`protect`]: refuse writes, everywhere or in ranges.
//! - [`nozero`], [`noextents`], [`nocache`], [`noparallel`], [`rotational`], [`fua`]: change
//!   or remove what the export offers (zeroing, block status, cache, parallelism, the rotational
//!   flag, FUA and flush).
//! - [`swab`]: swap the bytes of every word.
//! - [`tar`]: serve one file inside a tar archive, in place.
//! - [`luks`]: read and write a LUKSv1-encrypted disk (its format in `luks_header`).
//! - [`blocksize`]: serve unaligned and oversized requests to a layer that cannot;
//!   [`blocksize_policy`]: set the advertised block sizes, and refuse requests that ignore them.
//! - [`cow`]: make a read-only layer writable, the changes kept in a temporary overlay;
//!   [`cache`]: keep blocks of the layer below in a local file (both in a [`tempfile`], both
//!   switched by a [`switch`]).
//! - [`checkwrite`]: turn writes into checks that the data is already there (shares
//!   [`compare`] with `protect`).
//! - [`ddrescue`], [`extentlist`]: failing reads and block status from a file.
//! - [`multi_conn`]: flushes consistent across connections, or not offered.
//! - [`exportname`]: the export list, default export, allowed names and descriptions.
//! - [`readahead`], [`scan`]: prefetch ahead of sequential reads, or the whole disk, in the
//!   background.
//!
//! Helpers shared by several filters live in modules of their own: `counted` (connections open
//! through a filter), `retrying` (the retry loop), `window`, `compare`, `tempfile`, `switch`,
//! `lines` and `watch` (log and stats output).
//!
//! The binary finds a filter named by `--filter=NAME` in [`registrations`].

#![warn(missing_docs)]

pub mod count;
pub mod delay;
pub mod error;
pub mod evil;
pub mod exitlast;
pub mod exitwhen;
pub mod ip;
pub mod limit;
pub mod luks;
mod luks_header;
pub mod nofilter;
pub mod openonce;
pub mod pause;
pub mod rate;
pub mod retry;
pub mod retry_request;
pub mod spinning;
pub mod time_limit;
pub mod tls_fallback;

pub mod blocksize;
pub mod blocksize_policy;
pub mod cache;
pub mod checkwrite;
pub mod compare;
mod counted;
pub mod cow;
pub mod ddrescue;
pub mod exportname;
pub mod extentlist;
pub mod fua;
pub mod map;
pub mod multi_conn;
pub mod nocache;
pub mod noextents;
pub mod noparallel;
pub mod nozero;
pub mod offset;
pub mod partition;
pub mod protect;
pub mod readahead;
pub mod readonly;
mod retrying;
pub mod rotational;
pub mod scan;
pub mod swab;
pub mod switch;
pub mod tar;
pub mod tempfile;
pub mod truncate;
pub mod window;

mod lines;
pub mod log;
pub mod stats;
#[cfg(test)]
mod test_disk;
mod watch;

use nbdforge_api::Registration;

/// The built-in filters: their entries in the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![
        nofilter::registration(),
        error::registration(),
        delay::registration(),
        retry::registration(),
        retry_request::registration(),
        ip::registration(),
        limit::registration(),
        exitlast::registration(),
        exitwhen::registration(),
        time_limit::registration(),
        pause::registration(),
        tls_fallback::registration(),
        rate::registration(),
        evil::registration(),
        count::registration(),
        openonce::registration(),
        spinning::registration(),
        blocksize::registration(),
        blocksize_policy::registration(),
        cache::registration(),
        checkwrite::registration(),
        cow::registration(),
        ddrescue::registration(),
        exportname::registration(),
        extentlist::registration(),
        fua::registration(),
        map::registration(),
        multi_conn::registration(),
        luks::registration(),
        nocache::registration(),
        noextents::registration(),
        noparallel::registration(),
        nozero::registration(),
        offset::registration(),
        partition::registration(),
        protect::registration(),
        readahead::registration(),
        readonly::registration(),
        rotational::registration(),
        scan::registration(),
        swab::registration(),
        tar::registration(),
        truncate::registration(),
        log::registration(),
        stats::registration(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_a_filter_with_a_unique_name() {
        let table = registrations();
        for r in &table {
            assert!(!r.is_plugin(), "{}", r.info.name);
            assert_eq!(table.iter().filter(|o| o.info.name == r.info.name).count(), 1);
            assert!(r.new_filter().is_some());
        }
    }
}
