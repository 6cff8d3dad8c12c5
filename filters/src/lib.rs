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
//!
//! Helpers shared by several filters live in private modules: `counted` (connections open
//! through a filter) and `retrying` (the retry loop).
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
pub mod nofilter;
pub mod openonce;
pub mod pause;
pub mod rate;
pub mod retry;
pub mod retry_request;
pub mod spinning;
pub mod time_limit;
pub mod tls_fallback;

mod counted;
mod retrying;
#[cfg(test)]
mod testing;

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
