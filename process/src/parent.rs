//! Exiting with the parent (nbdkit's `--exit-with-parent`): the kernel sends SIGTERM, a clean
//! shutdown, when the process that started us exits. Changing credentials clears the signal, so
//! it is armed again after `privileges` drops them.

use nix::unistd::Pid;

use crate::{Error, Setting};

/// Arms the signal; `parent` is our parent as seen at start-up, before anything could change it.
pub fn exit_with_parent(parent: Pid) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| Error::new(Setting::ExitWithParent, format!("prctl: {e}")))?;
    // The parent may have gone before the signal was armed.
    if nix::unistd::getppid() != parent {
        return Err(Error::new(Setting::ExitWithParent, "the parent process has already exited"));
    }
    Ok(())
}
