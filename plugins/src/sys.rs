//! The few system calls the plugins need that `nix` does not wrap safely. Every `unsafe` block of
//! the crate outside the flat buffer lives here, each small and justified.

use std::io;

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
