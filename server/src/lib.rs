//! # nbdforge-server
//!
//! The server core: it builds the backend [`stack`] from filters and a plugin, accepts clients on
//! [`listen`]ers, negotiates with each (through the sans-io state machines of `nbdforge-protocol`),
//! and runs their requests on worker threads, emulating what the backend lacks.
//!
//! The binaries only parse their command lines and call into this crate:
//!
//! ```no_run
//! # fn plugin() -> nbdforge_api::Registration { unimplemented!() }
//! use nbdforge_server::{listen, Server, ServerConfig, Stack};
//! let mut stack = Stack::from_registrations(&plugin(), &[]).unwrap();
//! stack.config("size", "1G").unwrap();
//! let backend = stack.finish().unwrap();
//! let server = Server::new(backend, ServerConfig::default());
//! let listeners = listen::bind_tcp(None, 10809).unwrap();
//! server.serve(listeners).unwrap();
//! ```

#![warn(missing_docs)]

mod connection;
mod emulate;
pub mod listen;
pub mod metrics;
mod server;
pub mod stack;
pub mod tls;
mod transport;

pub use listen::Listener;
pub use server::{Server, ServerConfig, ShutdownHandle};
pub use stack::Stack;
pub use tls::{TlsMode, TlsOptions};
