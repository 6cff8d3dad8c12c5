//! # nbdforge-process
//!
//! The life of an NBD server process, apart from serving: going into the background, the pid
//! file, systemd socket activation, changing user and group, exiting with the parent, a captive
//! command, locking memory, binding the listeners, NBD URIs, and where log messages go. Each front
//! end (`nbdforge`, with nbdkit's command line; `nbdforge-img`, with qemu-nbd's) parses its own
//! command line, decides what it means, and calls these in the order its manual documents.
//!
//! The functions take plain values, not a front end's options, and never spell an option: an
//! [`Error`] says which [`Setting`] it is about, and [`Error::describe`] lets the front end name
//! it (`-P FILE` for nbdkit, `--pid-file=FILE` for qemu-nbd).
//!
//! ```no_run
//! # fn backend() -> std::sync::Arc<dyn nbdforge_api::Backend> { unimplemented!() }
//! use nbdforge_process::{daemon, logging, pidfile, sockets, uri, LogDest};
//! use nbdforge_server::{Server, ServerConfig, TlsOptions};
//!
//! # fn main() -> Result<(), nbdforge_process::Error> {
//! logging::init("my-nbd", LogDest::Stderr, 0);
//! // Fork before any thread exists; the parent exits when the child is ready.
//! let ready = daemon::fork_into_background("my-nbd")?;
//! let on = sockets::ListenOn::Tcp { host: None, port: Some("10809".into()), family: sockets::Family::Any };
//! let bound = sockets::bind(&on, None)?;
//! pidfile::write_pidfile("/run/my-nbd.pid".as_ref())?;
//! println!("{}", uri::uri(&bound.endpoint, "", &TlsOptions::default()).unwrap());
//! let server = Server::new(backend(), ServerConfig::default());
//! ready.notify(false)?;
//! logging::set_destination(LogDest::Syslog);
//! server.serve(bound.listeners).map_err(|e| e.to_string())?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::os::fd::OwnedFd;

pub mod activation;
pub mod captive;
pub mod daemon;
mod error;
pub mod logging;
pub mod memory;
pub mod parent;
pub mod pidfile;
pub mod privileges;
pub mod sockets;
pub mod stdio;
pub mod uri;

pub use error::{Error, Setting};
pub use logging::LogDest;

/// Where clients come from: listening sockets, or one connection (stdin and stdout, or a
/// connection systemd accepted) given as the descriptors to read and write.
pub enum Target {
    /// Listening sockets: serve clients until stopped.
    Listen(sockets::Bound),
    /// One connection: serve it, then exit.
    One(OwnedFd, OwnedFd),
}
