//! The descriptors under a TLS session: one socket, or two descriptors for `-s` (stdin and
//! stdout). [`Transport`] is what OpenSSL reads ciphertext from and writes it to; it never blocks
//! (`MSG_DONTWAIT` on sockets, `O_NONBLOCK` on anything else), so that `stream` can hold the
//! session's lock only while OpenSSL runs and wait for the socket with [`wait`] after releasing it.
//! `handshake` waits the same way.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, MsgFlags};
use nix::sys::stat::SFlag;

/// The session's socket: one descriptor, or two for `-s`. Reads and writes never block; `Session`
/// waits with `poll` when OpenSSL asks to.
///
/// It also saves system calls, which cost about as much as the cipher on a local socket: OpenSSL
/// reads one record (16 KiB) at a time, so ciphertext is read in larger gulps and handed out from
/// `input`; and while a reply is being sealed (`gather`), its records collect in `output` and go
/// out in a few large writes instead of one write and one reader wake-up per record.
pub(super) struct Transport {
    pub(super) read: Arc<OwnedFd>,
    pub(super) write: Arc<OwnedFd>,
    read_is_socket: bool,
    write_is_socket: bool,
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    output: Vec<u8>,
    output_start: usize,
    pub(super) gather: bool,
}

/// How much ciphertext one read may take from the socket.
const INPUT_BUFFER: usize = 64 << 10;
/// How many sealed bytes may wait in `output` before they must be written.
const OUTPUT_LIMIT: usize = 128 << 10;

impl Transport {
    pub(super) fn new(read: Arc<OwnedFd>, write: Arc<OwnedFd>) -> io::Result<Transport> {
        let read_is_socket = prepare_fd(&read)?;
        let write_is_socket = if Arc::ptr_eq(&read, &write) { read_is_socket } else { prepare_fd(&write)? };
        Ok(Transport {
            read,
            write,
            read_is_socket,
            write_is_socket,
            input: Vec::new(),
            input_start: 0,
            input_end: 0,
            output: Vec::new(),
            output_start: 0,
            gather: false,
        })
    }

    fn read_fd(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = if self.read_is_socket {
                socket::recv(self.read.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)
            } else {
                nix::unistd::read(self.read.as_raw_fd(), buf)
            };
            match result {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn write_fd(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let result = if self.write_is_socket {
                // MSG_NOSIGNAL: a client that went away is an EPIPE error, not a SIGPIPE.
                socket::send(self.write.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            } else {
                nix::unistd::write(self.write.as_fd(), buf)
            };
            match result {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn output_pending(&self) -> usize {
        self.output.len() - self.output_start
    }

    /// Writes what `output` holds, without blocking (`WouldBlock` if the socket is full first).
    pub(super) fn flush_output(&mut self) -> io::Result<()> {
        while self.output_start < self.output.len() {
            let n = self.write_fd(&self.output[self.output_start..])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.output_start += n;
        }
        self.output.clear();
        self.output_start = 0;
        Ok(())
    }
}

/// Whether `fd` is a socket; any other descriptor is switched to non-blocking mode, since only
/// sockets take `MSG_DONTWAIT`.
fn prepare_fd(fd: &OwnedFd) -> io::Result<bool> {
    let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK {
        return Ok(true);
    }
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(false)
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input_start == self.input_end {
            if buf.len() >= INPUT_BUFFER {
                return self.read_fd(buf);
            }
            if self.input.is_empty() {
                self.input = vec![0; INPUT_BUFFER];
            }
            let mut input = std::mem::take(&mut self.input);
            let result = self.read_fd(&mut input);
            self.input = input;
            let n = result?;
            self.input_start = 0;
            self.input_end = n;
        }
        let n = buf.len().min(self.input_end - self.input_start);
        buf[..n].copy_from_slice(&self.input[self.input_start..self.input_start + n]);
        self.input_start += n;
        Ok(n)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.gather && self.output_pending() == 0 {
            return self.write_fd(buf);
        }
        // Behind bytes already waiting (an alert from a reader while a reply is being sent) or
        // gathering: queue, within the limit.
        if self.output_pending() >= OUTPUT_LIMIT {
            self.flush_output()?;
        }
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What OpenSSL is waiting for before the operation can go on.
pub(super) enum Need {
    Read,
    Write,
}
/// Waits until `fd` is ready for `events` (or has an error or hangup, which the next OpenSSL call
/// reports), or the deadline passes.
pub(super) fn wait(fd: BorrowedFd<'_>, events: PollFlags, deadline: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the client"));
                }
                // Round up so a wait of less than a millisecond does not spin.
                PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
