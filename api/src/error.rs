//! Errors as a backend reports them: an errno the client sees in the reply, and a message that goes
//! into the structured error chunk and the server's log.

use std::fmt;
use std::io;

/// A failed backend call.
///
/// `errno` is a Linux errno (`libc::EIO`, `libc::ENOSPC`, ...). The server maps it to the nearest NBD
/// error code; anything it has no NBD code for becomes `NBD_EINVAL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Linux errno value.
    pub errno: i32,
    /// Human-readable explanation: what was wrong and with which value.
    pub message: String,
}

/// Result of a backend call.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with an errno and a message.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Error { errno, message: message.into() }
    }

    /// `EINVAL` with a message: the request (or a configuration value) is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message)
    }

    /// `EIO` with a message.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(libc::EIO, message)
    }

    /// `EOPNOTSUPP`: the backend does not implement the operation.
    pub fn unsupported(what: &str) -> Self {
        Self::new(libc::EOPNOTSUPP, format!("{what} is not supported by this backend"))
    }

    /// Wraps an `io::Error`, keeping its errno, and prefixes the message with context
    /// (`"file: /srv/disk.img: pread"`).
    pub fn from_io(context: impl fmt::Display, err: &io::Error) -> Self {
        Self::new(err.raw_os_error().unwrap_or(libc::EIO), format!("{context}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Self::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string())
    }
}
