//! A connection's byte stream: a socket, a pair of pipes (`-s`), or a TLS session. Negotiation
//! uses it whole and unbuffered, so nothing reads ahead of a TLS handshake; the transmission phase
//! splits it into a read half (one reader at a time) and a write half (one reply at a time).

use std::cell::Cell;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{TlsContext, TlsPeer, TlsStream};

pub(crate) enum Stream {
    /// A connected socket, read and written through the same descriptor.
    Socket(File),
    /// Separate read and write descriptors (stdin and stdout).
    Pipes { read: File, write: File },
    /// TLS over a socket.
    Tls(TlsStream),
}

impl Stream {
    pub fn socket(fd: OwnedFd) -> Stream {
        Stream::Socket(File::from(fd))
    }

    /// One read: whatever is there, up to `buf.len()` bytes.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Socket(f) => f.read(buf),
            Stream::Pipes { read, .. } => read.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }

    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Socket(f) => f.write_all(buf),
            Stream::Pipes { write, .. } => write.write_all(buf),
            Stream::Tls(t) => t.write_all(buf),
        }
    }

    /// Limits how long the next reads may block (the handshake deadline). Pipes (`-s`) have no
    /// such limit.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Socket(f) => socket2::SockRef::from(&f.as_fd()).set_read_timeout(timeout),
            Stream::Tls(t) => t.set_read_timeout(timeout),
            Stream::Pipes { .. } => Ok(()),
        }
    }

    /// Upgrades a plain socket to TLS after the STARTTLS reply has been sent; returns who the
    /// client proved to be: its identity and, for a verified client certificate
    /// (`--tls-verify-peer`), the subject and issuer DNs (nbdkit's `nbdkit_peer_tls_dn` and
    /// `nbdkit_peer_tls_issuer_dn`).
    pub fn start_tls(self, tls: &TlsContext) -> io::Result<(Stream, TlsPeer)> {
        match self {
            Stream::Socket(f) => tls.accept(OwnedFd::from(f)),
            Stream::Pipes { read, write } => tls.accept_pair(read.into(), write.into()),
            Stream::Tls(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "TLS is already running")),
        }
        .map(|t| {
            let peer = t.peer().clone();
            (Stream::Tls(t), peer)
        })
    }

    /// Splits the stream into a read half and a write half; for a plain socket also returns the
    /// socket itself, for replies sent on it directly (`sendmsg` without blocking, `sendfile`) and
    /// for waiting on it. A socket's three uses share one descriptor: a connection costs one.
    #[allow(clippy::type_complexity)]
    pub fn split(self) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>, Option<Arc<File>>)> {
        Ok(match self {
            Stream::Socket(f) => {
                let f = Arc::new(f);
                (Box::new(Shared(Arc::clone(&f))), Box::new(Shared(Arc::clone(&f))), Some(f))
            }
            Stream::Pipes { read, write } => (Box::new(read), Box::new(write), None),
            Stream::Tls(t) => {
                let (r, w) = t.split();
                (r, w, None)
            }
        })
    }
}

/// One half of a socket shared by reference: `&File` reads and writes.
struct Shared(Arc<File>);

thread_local! {
    /// Set while socket reads on this thread must not wait (see [`without_waiting`]).
    static DONT_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the reads it makes from a plain socket's read half returning `WouldBlock`
/// rather than waiting for the client. A reader that would otherwise ask the kernel first
/// whether bytes are there (`FIONREAD`) reads them instead: one system call, not two.
pub(crate) fn without_waiting<R>(f: impl FnOnce() -> R) -> R {
    /// Clears the flag however `f` ends, so no later read on this thread spins on `WouldBlock`.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DONT_WAIT.set(false);
        }
    }
    DONT_WAIT.set(true);
    let _reset = Reset;
    f()
}

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if DONT_WAIT.get() {
            let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
            return nix::sys::socket::recv(self.0.as_raw_fd(), buf, flags).map_err(io::Error::from);
        }
        (&*self.0).read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every byte of `bufs` with as few system calls as the kernel allows.
pub(crate) fn write_all_vectored(w: &mut dyn Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "connection closed while writing a reply")),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_read_without_waiting_takes_what_is_there_or_would_block() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (mut read, _, _) = Stream::socket(OwnedFd::from(ours)).split().unwrap();
        let mut buf = [0u8; 8];
        let e = without_waiting(|| read.read(&mut buf)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        theirs.write_all(b"abc").unwrap();
        assert_eq!(without_waiting(|| read.read(&mut buf)).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        // Outside, reads wait again: this one for the byte a thread sends later.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            theirs.write_all(b"d").unwrap();
        });
        assert_eq!(read.read(&mut buf).unwrap(), 1);
        sender.join().unwrap();
    }
}
