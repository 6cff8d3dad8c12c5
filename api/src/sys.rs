//! The system calls the SDK's helpers need, kept here so the rest of the crate has no `unsafe`:
//! taking over an inherited file descriptor, and turning terminal echo off for a password.

use std::io::Stdin;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg, Termios};

/// Takes ownership of the inherited descriptor `fd` (closed when the result is dropped), or
/// `None` if it is not open.
pub(crate) fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    fcntl(fd, FcntlArg::F_GETFD).ok()?;
    // SAFETY: the descriptor is open (checked just above) and the user handed it to us by number
    // to read once; nothing else in the process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Terminal echo turned off until dropped.
pub(crate) struct Echo<'a> {
    stdin: &'a Stdin,
    saved: Option<Termios>,
}

impl<'a> Echo<'a> {
    pub(crate) fn off(stdin: &'a Stdin) -> Echo<'a> {
        let saved = tcgetattr(stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = tcsetattr(stdin, SetArg::TCSAFLUSH, &quiet);
        }
        Echo { stdin, saved }
    }
}

impl Drop for Echo<'_> {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(self.stdin, SetArg::TCSAFLUSH, t);
        }
    }
}
