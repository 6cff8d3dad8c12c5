//! # nbdforge-filters: the filters built into nbdforge
//!
//! A filter sits between the client and the plugin and changes what passes through. Each one is a
//! small file holding only its policy, written against the `nbdforge-api` SDK:
//!
//! - [`nofilter`]: changes nothing; proves the mechanism and is the smallest filter to copy.
//!
//! The binary finds a filter named by `--filter=NAME` with [`lookup`].

#![warn(missing_docs)]

pub mod nofilter;

use nbdforge_api::Filter;

/// The names of the built-in filters, as given to `--filter=`.
pub const NAMES: &[&str] = &["nofilter"];

/// A fresh, unconfigured instance of the built-in filter called `name`, or `None` if there is no
/// such filter.
pub fn lookup(name: &str) -> Option<Box<dyn Filter>> {
    Some(match name {
        "nofilter" => Box::new(nofilter::NoFilter::new()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_to_its_filter() {
        for name in NAMES {
            assert_eq!(lookup(name).expect(name).name(), *name);
        }
        assert!(lookup("nosuch").is_none());
    }
}
