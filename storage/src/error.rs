//! What a storage operation reports when it fails: which step failed and the system's reason, with
//! the errno kept so that a server can pass it on to its client.

use std::fmt;
use std::io;

/// A failed storage operation. Its message names the step but not the file: the caller knows
/// which file it opened and says so (`file: disk.img: write at offset 4096: No space left on
/// device`).
#[derive(Debug)]
pub enum Error {
    /// Opening the file or reading its metadata failed.
    Open(io::Error),
    /// The path is neither a regular file nor a block device (a directory, FIFO, socket, ...).
    NotFileOrBlockDevice,
    /// A read ran past the end of the file: it shrank after it was opened.
    ShortRead {
        /// Bytes asked for.
        length: u64,
        /// Where the read started.
        offset: u64,
    },
    /// A system call failed.
    Io {
        /// The step that failed, as the message shows it: `write at offset 4096`, `SEEK_DATA`.
        what: String,
        /// The system's error.
        source: io::Error,
    },
}

/// The result of a storage operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Io { what: what.into(), source: source.into() }
    }

    /// The errno to report: the system call's own, `ENOENT` for a file of the wrong type (as
    /// nbdkit reports it), `EIO` for a short read or an error without an errno.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Open(e) | Error::Io { source: e, .. } => e.raw_os_error().unwrap_or(libc::EIO),
            Error::NotFileOrBlockDevice => libc::ENOENT,
            Error::ShortRead { .. } => libc::EIO,
        }
    }
}

/// The C library's wording for an errno (`No such file or directory`), without Rust's
/// "(os error 2)": messages read the same as those of the C servers users know.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(e) => f.write_str(&describe(e)),
            Error::NotFileOrBlockDevice => f.write_str("not a regular file or block device"),
            Error::ShortRead { length, offset } => {
                write!(f, "read of {length} bytes at offset {offset} ran past the end of the file (did it shrink?)")
            }
            Error::Io { what, source } => write!(f, "{what}: {}", describe(source)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open(e) | Error::Io { source: e, .. } => Some(e),
            Error::NotFileOrBlockDevice | Error::ShortRead { .. } => None,
        }
    }
}
