//! Serving one client on stdin and stdout (nbdkit's `-s`), and owned copies of descriptors,
//! which that and `activation` (a connection systemd accepted) both need: the server reads one
//! descriptor and writes the other.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::{Error, Setting};

/// A descriptor of our own for `fd` (close-on-exec, so nothing we start inherits it).
pub(crate) fn dup_owned(fd: i32) -> Result<OwnedFd, Error> {
    use std::os::fd::FromRawFd;
    let copy = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(|e| Error::plain(format!("descriptor {fd}: {e}")))?;
    // SAFETY: `copy` was just returned by fcntl(F_DUPFD_CLOEXEC) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The descriptors to read and write the client on: duplicates of descriptors 0 and 1. Then 0
/// and 1 themselves are pointed at /dev/null and stderr, so that a stray print can never corrupt
/// the protocol.
pub fn stdin_stdout() -> Result<(OwnedFd, OwnedFd), Error> {
    use nix::unistd::dup2;
    let read = dup_owned(0).map_err(|e| Error::new(Setting::Stdio, e.message))?;
    let write = dup_owned(1).map_err(|e| Error::new(Setting::Stdio, e.message))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| Error::plain(format!("/dev/null: {e}")))?;
    dup2(null.as_raw_fd(), 0).map_err(|e| Error::plain(format!("dup2: {e}")))?;
    dup2(2, 1).map_err(|e| Error::plain(format!("dup2: {e}")))?;
    Ok((read, write))
}
