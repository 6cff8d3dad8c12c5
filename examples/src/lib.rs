//! # Examples for the nbdforge SDK: a plugin and a filter to copy
//!
//! - [`ramdisk`]: a complete, small plugin: parameters, capabilities, reads and writes, block
//!   status in `base:allocation` and in a meta context of its own;
//! - [`tally`]: a complete, small filter: parameters of its own, a connection hook, a handle over
//!   the layer below that counts requests without changing data, and end-of-connection logging.
//!
//! Both are built into the `nbdforge` binary (`nbdforge --filter=tally ramdisk 1G`), registered
//! the way any layer is: [`registrations`] returns their entries for the server's table. A program
//! of your own can instead hand them straight to the server core:
//!
//! ```
//! let plugin = nbdforge_examples::ramdisk::registration();
//! let filter = nbdforge_examples::tally::registration();
//! let mut stack = nbdforge_server::Stack::from_registrations(&plugin, &[&filter]).unwrap();
//! stack.config("size", "1M").unwrap();
//! let backend = stack.finish().unwrap();
//! assert_eq!(backend.name(), "tally");
//! ```
//!
//! ## Using a plugin directly
//!
//! ```
//! use nbdforge_api::{Flags, Layer, OpenArgs, Plugin};
//! use nbdforge_examples::ramdisk::RamDiskPlugin;
//!
//! let mut plugin = RamDiskPlugin::new();
//! plugin.config("size", "1M").unwrap();
//! plugin.config_complete().unwrap();
//! let disk = plugin.open(&OpenArgs::local("", false)).unwrap();
//! disk.pwrite(b"hello", 0, Flags::NONE).unwrap();
//! let mut back = [0u8; 5];
//! disk.pread(&mut back, 0, Flags::NONE).unwrap();
//! assert_eq!(&back, b"hello");
//! ```

#![warn(missing_docs)]

pub mod ramdisk;
pub mod tally;

/// The example layers' entries for the server's table.
pub fn registrations() -> Vec<nbdforge_api::Registration> {
    vec![ramdisk::registration(), tally::registration()]
}
