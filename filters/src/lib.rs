//! # nbdforge-filters: the filters built into nbdforge
//!
//! A filter sits between the client and the plugin and changes what passes through. Each one is a
//! small file holding only its policy, written against the `nbdforge-api` SDK:
//!
//! - [`nofilter`]: changes nothing; proves the mechanism and is the smallest filter to copy.
//!
//! The binary finds a filter named by `--filter=NAME` in [`registrations`].

#![warn(missing_docs)]

pub mod nofilter;

use nbdforge_api::Registration;

/// The built-in filters: their entries in the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![nofilter::registration()]
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
