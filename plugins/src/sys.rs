//! The few system calls the plugins need that `nix` does not wrap safely. Every `unsafe` block of
//! the crate outside the flat buffer lives here, each small and justified.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Asks the C allocator to return free heap memory to the kernel, so that pages the memory plugin
/// freed after a trim leave the process's resident set instead of waiting in the heap for reuse.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap bookkeeping under its own locks; it takes no
    // pointers from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
pub(crate) fn sync_file_range(fd: BorrowedFd<'_>, offset: u64, count: u64, how: Writeback) -> io::Result<()> {
    let flags = match how {
        Writeback::Start => libc::SYNC_FILE_RANGE_WRITE,
        Writeback::Wait => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    let (offset, count) = (to_off(offset)?, to_off(count)?);
    // SAFETY: the call takes a file descriptor, valid for the borrow's lifetime, and plain integers;
    // it touches no memory of ours.
    let rc = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, count, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Converts a byte offset or count to `off_t`, failing rather than wrapping.
pub(crate) fn to_off(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// An [`Error`](nbdforge_api::Error) from an `io::Error`, keeping its errno, reading
/// `context: No such file or directory` (the C library's wording, without Rust's "(os error 2)").
pub(crate) fn io_error(context: impl std::fmt::Display, err: &io::Error) -> nbdforge_api::Error {
    match err.raw_os_error() {
        Some(code) => {
            nbdforge_api::Error::new(code, format!("{context}: {}", nix::errno::Errno::from_raw(code).desc()))
        }
        None => nbdforge_api::Error::from_io(context, err),
    }
}
