//! The system calls the storage needs that `nix` does not wrap. The crate's only `unsafe` lives
//! here, each block small and justified.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// How `sync_file_range` should treat a range: start writeback only, or start it and wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writeback {
    /// Start writing dirty pages of the range, do not wait.
    Start,
    /// Write the range and wait until it is on the device (not a durability guarantee: metadata
    /// and the device cache are not flushed).
    Wait,
}

/// `sync_file_range(2)`: moves dirty page-cache pages of a range to the device so that a later
/// `POSIX_FADV_DONTNEED` can drop them from the cache.
pub(crate) fn sync_file_range(fd: BorrowedFd<'_>, offset: u64, length: u64, how: Writeback) -> io::Result<()> {
    let flags = match how {
        Writeback::Start => libc::SYNC_FILE_RANGE_WRITE,
        Writeback::Wait => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    let (offset, length) = (to_off(offset)?, to_off(length)?);
    // SAFETY: the call takes a file descriptor, valid for the borrow's lifetime, and plain integers;
    // it touches no memory of ours.
    let rc = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, length, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Converts a byte offset or length to `off_t`, failing rather than wrapping.
pub(crate) fn to_off(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
