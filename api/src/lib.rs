//! # nbdforge-api: write NBD plugins and filters in plain Rust
//!
//! A **plugin** serves data: a RAM disk, a file, a remote object. A **filter** sits between the
//! client and the plugin and changes what passes: it can add delays, inject errors, cache, or
//! present part of a disk. The nbdforge server owns everything else: the NBD protocol, sockets,
//! TLS, threads and locking, and it emulates what a plugin does not implement (zeroing by writing,
//! FUA by flushing, cache by reading, block status as "all data").
//!
//! A plugin implements [`Plugin`] (configuration, once per process) and returns a [`Handle`] from
//! [`Plugin::open`] (once per client connection). The smallest useful plugin:
//!
//! ```
//! use nbdforge_api::{Flags, Handle, Layer, OpenArgs, Plugin, Result};
//!
//! /// A 1 MiB disk of 0xAA bytes.
//! struct Stripes;
//! struct StripesHandle;
//!
//! impl Layer for Stripes {}
//!
//! impl Plugin for Stripes {
//!     fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> { Ok(Box::new(StripesHandle)) }
//! }
//!
//! impl Handle for StripesHandle {
//!     fn get_size(&self) -> Result<u64> { Ok(1 << 20) }
//!     fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
//!         buf.fill(0xAA);
//!         Ok(())
//!     }
//! }
//!
//! // What the server's table holds: who the plugin is, and how to make one.
//! let entry = nbdforge_api::Registration::plugin(
//!     nbdforge_api::LayerInfo::new("stripes", "a disk of stripes"),
//!     || Stripes,
//! );
//! assert!(entry.is_plugin());
//! ```
//!
//! Errors are [`Error`] values: an errno for the client and a message for the log and the
//! structured error reply. See `docs/sdk.md` and `examples/` in the repository for a complete
//! plugin and filter.

#![warn(missing_docs)]

mod config;
pub mod context;
mod error;
pub mod extents;
mod handle;
mod layer;
mod plugin;
pub mod prng;
mod sys;
mod types;

pub use config::{
    absolute_path, parse_bool, parse_choice, parse_delay, parse_int, parse_probability, parse_size, read_password,
    realpath, MAX_SIZE,
};
pub use context::{server, ClientInfo, Connection, Peer, TlsPeer};
pub use error::{Error, Result};
pub use extents::{Extent, Extents};
pub use handle::{is_zeroes, BufferSink, Handle, ReadSink, BASE_ALLOCATION, ZEROES};
pub use layer::{find, Constructor, Layer, LayerInfo, Registration};
pub use plugin::{unknown_parameter, Backend, Filter, OpenArgs, Plugin};
pub use types::{BlockSize, Capabilities, Export, Flags, Support, ThreadModel};

#[doc(hidden)]
pub use context::log_debug;
