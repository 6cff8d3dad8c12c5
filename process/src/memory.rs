//! Keeping every page in RAM (nbdkit's `--swap`), so that serving a swap device never waits on
//! swap.

use crate::{Error, Setting};

/// Locks the process's memory, now and from now on.
pub fn lock_memory() -> Result<(), Error> {
    // SAFETY: mlockall only changes how the kernel pages this process; it has no memory-safety
    // preconditions.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if r != 0 {
        return Err(Error::new(
            Setting::LockMemory,
            format!("mlockall: {} (raise ulimit -l or run as root)", std::io::Error::last_os_error()),
        ));
    }
    Ok(())
}
