//! # nbdforge-filters: the filters built into nbdforge
//!
//! A filter sits between the client and the plugin and changes what passes through. Each one is a
//! small file holding only its policy, written against the `nbdforge-api` SDK:
//!
//! - [`log`]: writes a line for every request to a file or a script (nbdkit-log-filter);
//! - [`nofilter`]: changes nothing; proves the mechanism and is the smallest filter to copy;
//! - [`stats`]: counts requests, bytes, time and request shapes, and writes a summary at exit
//!   (nbdkit-stats-filter).
//!
//! The binary finds a filter named by `--filter=NAME` in [`registrations`].

#![warn(missing_docs)]

mod lines;
pub mod log;
pub mod nofilter;
pub mod stats;
mod watch;

use nbdforge_api::Registration;

/// The built-in filters: their entries in the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![log::registration(), nofilter::registration(), stats::registration()]
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
