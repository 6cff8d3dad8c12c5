//! # nbdforge-plugins: the plugins built into nbdforge
//!
//! Each plugin is one small file holding only its policy (parameters, capabilities, how a request
//! maps onto its storage), written against the `nbdforge-api` SDK like any outside plugin:
//!
//! - [`memory`]: a RAM disk, sparse by default, up to 2^63-1 bytes;
//! - [`file`](mod@file): a file or block device, or each file of a directory as its own export;
//! - [`null`]: discards writes and reads back zeroes;
//! - [`pattern`]: read-only, each 8-byte word holds its own offset.
//!
//! Shared machinery lives beside them: [`sparse_array`] (pages allocated on first write, behind
//! lock stripes) and `flat_buffer` (one mapping for `memory allocator=malloc`). The binary finds a
//! plugin by name with [`lookup`].

#![warn(missing_docs)]

pub mod file;
mod flat_buffer;
pub mod memory;
pub mod null;
pub mod pattern;
pub mod sparse_array;
mod sys;

use nbdforge_api::Plugin;

/// The names of the built-in plugins, as typed on the command line.
pub const NAMES: &[&str] = &["memory", "file", "null", "pattern"];

/// A fresh, unconfigured instance of the built-in plugin called `name`, or `None` if there is no
/// such plugin.
pub fn lookup(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "memory" => Box::new(memory::MemoryPlugin::new()),
        "file" => Box::new(file::FilePlugin::new()),
        "null" => Box::new(null::NullPlugin::new()),
        "pattern" => Box::new(pattern::PatternPlugin::new()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_to_its_plugin() {
        for name in NAMES {
            assert_eq!(lookup(name).expect(name).name(), *name);
        }
        assert!(lookup("nosuch").is_none());
    }
}
