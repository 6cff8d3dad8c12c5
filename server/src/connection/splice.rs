//! Large reads from a backend's own memory, sent without the server copying them.
//!
//! A reply is assembled in a pipe: its chunk headers copied in (`write`), its data by reference
//! to the backend's pages (`vmsplice`); then the whole pipe goes to the socket (`splice`), which
//! on a Unix socket hands the pages on by reference too. The client's read is the only copy.
//! Only for memory a layer lends with `borrowed_pages` (see the SDK): the kernel holds those
//! pages until the client has read them, and they are never recycled for other data meanwhile.
//!
//! Loading the pipe never waits, so it can run while the backend holds its locks; moving it to
//! the socket waits for the client and runs after the backend lets go. Each worker thread has a
//! pipe of its own, made on its first large read and closed with the thread (an idle
//! connection's parked state holds none).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, splice, vmsplice, FcntlArg, OFlag, SpliceFFlags};
use nix::unistd::write;

/// Reads at least this long go through a pipe; below it one copy costs less than the three
/// system calls.
pub(super) const SPLICE_MIN: usize = 64 << 10;
/// The pipe's size asked for: the largest default an unprivileged process may set. A reply that
/// does not fit is sent the ordinary way.
const PIPE_SIZE: usize = 1 << 20;
/// Bytes per pipe slot (a page).
const SLOT: usize = 4096;

/// A pipe holding at most one reply.
pub(super) struct ReplyPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Slots in the pipe: each data piece takes one per page it touches, each header one.
    slots: usize,
}

thread_local! {
    static PIPE: RefCell<Option<ReplyPipe>> = const { RefCell::new(None) };
}

impl ReplyPipe {
    fn new() -> io::Result<ReplyPipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A smaller pipe (the per-user limit reached) still serves smaller replies.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        let size = fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)?;
        Ok(ReplyPipe { read, write, slots: usize::try_from(size).unwrap_or(0) / SLOT })
    }

    /// Slots a reply of these parts takes: `copied` marks the headers, written in whole slots.
    fn slots_for(parts: &[(IoSlice<'_>, bool)]) -> usize {
        parts
            .iter()
            .map(|(p, copied)| {
                if *copied {
                    1
                } else {
                    let start = p.as_ptr() as usize;
                    (start + p.len()).div_ceil(SLOT) - start / SLOT
                }
            })
            .sum()
    }

    /// Puts one reply in the pipe, without waiting: parts marked `true` are copied (headers the
    /// server reuses), the others referenced. Returns the bytes loaded, or `None` when the reply
    /// does not fit or the pipe refused it (the pipe is then dropped: it may hold part of it).
    pub fn load(parts: &[(IoSlice<'_>, bool)]) -> Option<usize> {
        PIPE.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = ReplyPipe::new().ok();
            }
            let pipe = cell.as_ref()?;
            if Self::slots_for(parts) > pipe.slots {
                return None;
            }
            match pipe.fill(parts) {
                Ok(n) => Some(n),
                Err(_) => {
                    *cell = None;
                    None
                }
            }
        })
    }

    fn fill(&self, parts: &[(IoSlice<'_>, bool)]) -> io::Result<usize> {
        let mut total = 0;
        for (part, copied) in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let n = if *copied {
                    write(&self.write, rest)?
                } else {
                    vmsplice(&self.write, &[IoSlice::new(rest)], SpliceFFlags::SPLICE_F_NONBLOCK)?
                };
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                rest = &rest[n..];
                total += n;
            }
        }
        Ok(total)
    }

    /// Moves the `len` bytes loaded to the socket, waiting for the client as needed. On failure
    /// the pipe is dropped with whatever it still holds.
    pub fn send(socket: &File, mut len: usize) -> io::Result<()> {
        PIPE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let Some(pipe) = cell.as_ref() else {
                return Err(io::Error::other("the reply's pipe is gone"));
            };
            while len > 0 {
                match splice(&pipe.read, None, socket, None, len, SpliceFFlags::SPLICE_F_MOVE) {
                    Ok(0) => {
                        *cell = None;
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    Ok(n) => len -= n,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        *cell = None;
                        return Err(e.into());
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_reply_goes_through_the_pipe_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let data = vec![7u8; 200 << 10];
        let parts = [(IoSlice::new(b"head"), true), (IoSlice::new(&data), false), (IoSlice::new(b"tail"), true)];
        let n = ReplyPipe::load(&parts).expect("fits");
        assert_eq!(n, 8 + data.len());
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; n];
            b.read_exact(&mut got).unwrap();
            got
        });
        ReplyPipe::send(&File::from(OwnedFd::from(a)), n).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + data.len()].iter().all(|&b| b == 7));
        assert_eq!(&got[4 + data.len()..], b"tail");
    }

    #[test]
    fn a_reply_larger_than_the_pipe_is_refused() {
        let data = vec![1u8; 8 << 20];
        assert_eq!(ReplyPipe::load(&[(IoSlice::new(&data), false)]), None);
    }
}
