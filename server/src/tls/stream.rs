//! [`TlsStream`], an established session, and the read and write halves it splits into for the
//! transmission phase. The halves share one [`Session`]: the OpenSSL stream behind a mutex, held
//! only while OpenSSL runs; when OpenSSL needs the socket, the lock is released and the thread waits
//! on the `transport` with `poll`. `handshake` creates the stream with [`TlsStream::new`].

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use openssl::ssl::{self, ErrorCode, SslStream};

use super::errors::reasons;
use super::handshake::TlsPeer;
use super::transport::{wait, Need, Transport};

/// The session shared by a stream's halves.
struct Session {
    ssl: Mutex<SslStream<Transport>>,
    read_fd: Arc<OwnedFd>,
    write_fd: Arc<OwnedFd>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, SslStream<Transport>> {
        // A panic elsewhere while holding the lock leaves OpenSSL in a consistent state (our code
        // does not panic inside OpenSSL calls), so a poisoned lock is still usable.
        self.ssl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_for(&self, need: Need, timeout: Option<Duration>, deadline: &mut Option<Instant>) -> io::Result<()> {
        if deadline.is_none() {
            *deadline = timeout.map(|t| Instant::now() + t);
        }
        match need {
            Need::Read => wait(self.read_fd.as_fd(), PollFlags::POLLIN, *deadline),
            Need::Write => wait(self.write_fd.as_fd(), PollFlags::POLLOUT, *deadline),
        }
    }

    /// Reads at most one record's worth; 0 at the end of the stream.
    fn read(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut deadline = None;
        loop {
            let need = match self.lock().ssl_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) => match e.code() {
                    ErrorCode::WANT_READ => Need::Read,
                    ErrorCode::WANT_WRITE => Need::Write,
                    ErrorCode::ZERO_RETURN => return Ok(0),
                    ErrorCode::SYSCALL if e.io_error().is_none() => return Ok(0),
                    _ => return Err(io_error(e, "reading")),
                },
            };
            self.wait_for(need, timeout, &mut deadline)?;
        }
    }

    /// Writes all of `buf`: OpenSSL seals it into records, gathered in the transport and written
    /// in large pieces. Returns once everything is written to the socket.
    fn write_all(&self, buf: &[u8], timeout: Option<Duration>) -> io::Result<()> {
        let mut done = 0;
        let mut deadline = None;
        loop {
            let need = {
                let mut ssl = self.lock();
                let mut need = None;
                while done < buf.len() {
                    // On WANT_WRITE OpenSSL keeps the record it could not hand over, and the
                    // retry must pass the same bytes again, which this does.
                    ssl.get_mut().gather = true;
                    let result = ssl.ssl_write(&buf[done..]);
                    ssl.get_mut().gather = false;
                    match result {
                        Ok(n) => done += n,
                        Err(e) => match e.code() {
                            ErrorCode::WANT_WRITE => {
                                need = Some(Need::Write);
                                break;
                            }
                            ErrorCode::WANT_READ => {
                                need = Some(Need::Read);
                                break;
                            }
                            ErrorCode::ZERO_RETURN => {
                                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS: the session was closed"))
                            }
                            _ => return Err(io_error(e, "writing")),
                        },
                    }
                }
                match ssl.get_mut().flush_output() {
                    Ok(()) => match need {
                        None => return Ok(()),
                        Some(need) => need,
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Need::Write,
                    Err(e) => return Err(e),
                }
            };
            self.wait_for(need, timeout, &mut deadline)?;
        }
    }

    /// Sends close_notify, waiting a little for room in the socket, and never for the client.
    fn close_notify(&self) {
        let deadline = Some(Instant::now() + Duration::from_secs(2));
        loop {
            match self.lock().shutdown() {
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {}
                _ => return,
            }
            if wait(self.write_fd.as_fd(), PollFlags::POLLOUT, deadline).is_err() {
                return;
            }
        }
    }
}

fn io_error(e: ssl::Error, doing: &str) -> io::Error {
    if let Some(stack) = e.ssl_error() {
        return io::Error::new(io::ErrorKind::InvalidData, format!("TLS error {doing}: {}", reasons(stack)));
    }
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => io::Error::other(format!("TLS error {doing}: {e}")),
    }
}

/// The state both halves (and the unsplit stream) carry: the session and the timeouts.
struct HalfIo {
    session: Arc<Session>,
    read_timeout: Timeout,
    write_timeout: Timeout,
}

impl HalfIo {
    fn copy(&self) -> HalfIo {
        HalfIo {
            session: self.session.clone(),
            read_timeout: self.read_timeout.copy(),
            write_timeout: self.write_timeout.copy(),
        }
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read(buf, self.read_timeout.get())
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.session.write_all(buf, self.write_timeout.get())
    }
}

/// An optional timeout settable through `&self`, as on std's sockets.
struct Timeout(AtomicU64);

impl Timeout {
    const NONE: u64 = u64::MAX;

    fn new(timeout: Option<Duration>) -> Timeout {
        let t = Timeout(AtomicU64::new(Self::NONE));
        t.set(timeout);
        t
    }
    fn set(&self, timeout: Option<Duration>) {
        let nanos = timeout.map_or(Self::NONE, |t| u64::try_from(t.as_nanos()).unwrap_or(Self::NONE - 1));
        self.0.store(nanos, Ordering::Relaxed);
    }
    fn get(&self) -> Option<Duration> {
        let nanos = self.0.load(Ordering::Relaxed);
        (nanos != Self::NONE).then(|| Duration::from_nanos(nanos))
    }
    fn copy(&self) -> Timeout {
        Timeout::new(self.get())
    }
}

/// Sends close_notify when the last writer goes.
struct CloseNotify(Arc<Session>);

impl Drop for CloseNotify {
    fn drop(&mut self) {
        self.0.close_notify();
    }
}

/// Largest TLS record payload: replies are gathered into records of this size.
const RECORD_SIZE: usize = 16384;

/// Writes `bufs` completely as full records: small pieces (a reply header) are gathered with the
/// data after them into one record instead of a record and a syscall of their own, and long
/// stretches go to OpenSSL without being copied.
fn write_gathered(io: &HalfIo, staging: &mut Vec<u8>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let result = (|| {
        let mut total = 0;
        for buf in bufs {
            let mut buf: &[u8] = buf;
            total += buf.len();
            if !staging.is_empty() {
                let take = (RECORD_SIZE - staging.len()).min(buf.len());
                staging.extend_from_slice(&buf[..take]);
                buf = &buf[take..];
                if staging.len() < RECORD_SIZE {
                    continue;
                }
                io.write_all(staging)?;
                staging.clear();
            }
            let whole = buf.len() - buf.len() % RECORD_SIZE;
            if whole > 0 {
                io.write_all(&buf[..whole])?;
            }
            if staging.capacity() == 0 {
                staging.reserve_exact(RECORD_SIZE);
            }
            staging.extend_from_slice(&buf[whole..]);
        }
        if !staging.is_empty() {
            io.write_all(staging)?;
        }
        Ok(total)
    })();
    staging.clear();
    result
}

/// An established TLS session. Blocking `Read + Write` for the rest of the negotiation; `split`
/// gives halves that one reader thread and many writer threads (serialised by the caller) can use at
/// the same time.
///
/// Every `write`/`write_vectored` call writes everything it is given (or fails), so one reply is
/// one call. `flush` has nothing to do. Dropping the stream (or the write half after `split`)
/// sends close_notify; the descriptors close when both halves are gone. A reader blocked waiting
/// for data holds no lock: `shutdown(2)` on the socket (see [`AsFd`]) wakes it with end-of-file.
pub struct TlsStream {
    /// The halves `split` hands out; until then the stream reads and writes through them.
    reader: TlsReader,
    writer: TlsWriter,
    peer: TlsPeer,
}

impl TlsStream {
    /// Wraps a session whose handshake is done. The socket's timeouts were for the handshake; the
    /// stream's are set by its user.
    pub(super) fn new(
        stream: SslStream<Transport>,
        read_fd: Arc<OwnedFd>,
        write_fd: Arc<OwnedFd>,
        peer: TlsPeer,
    ) -> TlsStream {
        let session = Arc::new(Session { ssl: Mutex::new(stream), read_fd, write_fd });
        let io =
            HalfIo { session: session.clone(), read_timeout: Timeout::new(None), write_timeout: Timeout::new(None) };
        TlsStream {
            reader: TlsReader { io: io.copy() },
            writer: TlsWriter { io, staging: Vec::new(), _closer: CloseNotify(session) },
            peer,
        }
    }

    /// The PSK identity or client certificate subject.
    ///
    /// The PSK username for `--tls-psk`; with `--tls-verify-peer` the verified client
    /// certificate's subject in RFC 4514 form (`CN=client.example.com,O=Example`); otherwise None.
    pub fn identity(&self) -> Option<String> {
        self.peer.identity.clone()
    }

    /// Who the client proved to be: its identity and, for a verified client certificate, the
    /// certificate's subject and issuer DNs (see [`TlsPeer`]).
    pub fn peer(&self) -> &TlsPeer {
        &self.peer
    }

    /// The protocol and cipher in use, for logs: "TLSv1.3 TLS_AES_128_GCM_SHA256".
    pub fn description(&self) -> String {
        let ssl = self.writer.io.session.lock();
        format!("{} {}", ssl.ssl().version_str(), ssl.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"))
    }

    /// Limits each read to waiting this long for data (then an `io::ErrorKind::TimedOut` error);
    /// None (the starting value) waits forever. Like `UnixStream::set_read_timeout`; the socket's
    /// own `SO_RCVTIMEO` no longer matters after the handshake. The halves from `split` start with
    /// the value it has then.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.io.read_timeout.set(timeout);
        Ok(())
    }

    /// Limits each write to waiting this long for room in the socket; None (the start) waits forever.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.io.write_timeout.set(timeout);
        Ok(())
    }

    /// Read and write halves for the transmission phase.
    ///
    /// Both may be used at once from different threads; several writers must be serialised by the
    /// caller. Dropping the writer sends close_notify; neither drop waits for the other half.
    pub fn split(self) -> (Box<dyn io::Read + Send>, Box<dyn io::Write + Send>) {
        (Box::new(self.reader), Box::new(self.writer))
    }
}

impl AsFd for TlsStream {
    /// The socket the session reads from. Only for `shutdown(2)`, socket options and addresses:
    /// reading or writing it directly would corrupt the session.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.io.session.read_fd.as_fd()
    }
}

impl io::Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl io::Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.writer.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// The read half from [`TlsStream::split`].
struct TlsReader {
    io: HalfIo,
}

impl io::Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read(buf)
    }
}

/// The write half from [`TlsStream::split`].
struct TlsWriter {
    io: HalfIo,
    staging: Vec<u8>,
    _closer: CloseNotify,
}

impl io::Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write_all(buf)?;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        write_gathered(&self.io, &mut self.staging, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::handshake::{handshake, Side};
    use crate::tls::testing::*;
    use crate::tls::TlsContext;
    use openssl::ssl::{Ssl, SslContext};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// A client on our own I/O code, so that both ends can read and write at once.
    fn our_client(context: &SslContext, read: OwnedFd, write: OwnedFd) -> io::Result<TlsStream> {
        let ssl = Ssl::new(context).unwrap();
        handshake(
            ssl,
            Transport::new(Arc::new(read), Arc::new(write))?,
            Side::Client,
            Some(Duration::from_secs(10)),
            false,
        )
    }

    fn pattern(offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let n = offset + i as u64;
            *b = (n ^ (n >> 8) ^ (n >> 17)) as u8;
        }
    }

    /// Sends `total` bytes as "replies": a 16-byte header and a body, one write_vectored each.
    fn send_replies(mut writer: Box<dyn Write + Send>, total: u64) {
        let mut offset = 0;
        let mut body = vec![0u8; 1 << 20];
        let mut round = 0usize;
        while offset < total {
            // Bodies of varied sizes, so records start and end everywhere.
            let left = (total - offset) as usize;
            let len = [1 << 20, 4096, 65536 + 7, 1, 200_000][round % 5].min(left.saturating_sub(16));
            round += 1;
            let mut header = [0u8; 16];
            pattern(offset, &mut header);
            pattern(offset + 16, &mut body[..len]);
            let header = &header[..left.min(16)];
            let n = writer.write_vectored(&[IoSlice::new(header), IoSlice::new(&body[..len])]).unwrap();
            assert_eq!(n, header.len() + len);
            offset += n as u64;
        }
    }

    fn receive_and_check(mut reader: Box<dyn Read + Send>, total: u64) {
        let mut offset = 0;
        let mut buf = vec![0u8; 300_000];
        let mut expect = vec![0u8; 300_000];
        while offset < total {
            let want = buf.len().min((total - offset) as usize);
            reader.read_exact(&mut buf[..want]).unwrap();
            pattern(offset, &mut expect[..want]);
            assert!(buf[..want] == expect[..want], "data differs near offset {offset}");
            offset += want as u64;
        }
    }

    #[test]
    fn split_halves_move_64_mib_each_way_at_once() {
        const TOTAL: u64 = 64 << 20;
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let client = psk_client(Version::Tls13, "alice", ALICE_KEY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        let started = Instant::now();
        thread::scope(|s| {
            let srv = s.spawn(|| server.accept(OwnedFd::from(ours)).unwrap());
            let cli = our_client(&client, theirs.into(), theirs2.into()).unwrap();
            let srv = srv.join().unwrap();
            let (sr, sw) = srv.split();
            let (cr, cw) = cli.split();
            let threads = [
                s.spawn(move || send_replies(sw, TOTAL)),
                s.spawn(move || receive_and_check(sr, TOTAL)),
                s.spawn(move || send_replies(cw, TOTAL)),
                s.spawn(move || receive_and_check(cr, TOTAL)),
            ];
            for t in threads {
                t.join().unwrap();
            }
        });
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn pipes_work_as_the_two_descriptors_of_dash_s() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(false)).unwrap();
        let client = x509_client(&pki, Version::Tls13, None);
        let (c2s_read, c2s_write) = nix::unistd::pipe().unwrap();
        let (s2c_read, s2c_write) = nix::unistd::pipe().unwrap();
        thread::scope(|s| {
            let srv = s.spawn(|| {
                let (mut r, mut w) = server.accept_pair(c2s_read, s2c_write).unwrap().split();
                let mut buf = vec![0u8; 1 << 20];
                r.read_exact(&mut buf).unwrap();
                w.write_all(&buf).unwrap();
            });
            let mut cli = our_client(&client, s2c_read, c2s_write).unwrap();
            let mut data = vec![0u8; 1 << 20];
            pattern(5, &mut data);
            cli.write_all(&data).unwrap();
            let mut back = vec![0u8; 1 << 20];
            cli.read_exact(&mut back).unwrap();
            assert!(back == data);
            srv.join().unwrap();
        });
    }

    #[test]
    fn dropping_the_writer_sends_close_notify_while_the_reader_waits() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let client = psk_client(Version::Tls13, "alice", ALICE_KEY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        thread::scope(|s| {
            let srv = s.spawn(|| server.accept(OwnedFd::from(ours)).unwrap());
            let cli = our_client(&client, theirs.into(), theirs2.into()).unwrap();
            let (mut sr, sw) = srv.join().unwrap().split();
            let reader = s.spawn(move || {
                let mut buf = [0u8; 10];
                let n = sr.read(&mut buf).unwrap();
                (n, sr)
            });
            thread::sleep(Duration::from_millis(100));
            // The reader is blocked in read; dropping the writer must neither wait for it nor hang.
            let t = Instant::now();
            drop(sw);
            assert!(t.elapsed() < Duration::from_secs(1));
            let (mut cr, cw) = cli.split();
            let mut buf = [0u8; 10];
            // close_notify: a clean end of stream for the client.
            assert_eq!(cr.read(&mut buf).unwrap(), 0);
            // The client's close_notify in turn ends the server's read.
            drop(cw);
            let (n, _sr) = reader.join().unwrap();
            assert_eq!(n, 0);
        });
    }

    #[test]
    fn read_timeout_limits_reads() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let client = psk_client(Version::Tls13, "alice", ALICE_KEY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        thread::scope(|s| {
            let srv = s.spawn(|| server.accept(OwnedFd::from(ours)).unwrap());
            let _cli = our_client(&client, theirs.into(), theirs2.into()).unwrap();
            let mut srv = srv.join().unwrap();
            // The socket's timeout was for the handshake only.
            assert_eq!(srv.reader.io.read_timeout.get(), None);
            srv.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let t = Instant::now();
            let e = srv.read(&mut [0u8; 4]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(t.elapsed() >= Duration::from_millis(290) && t.elapsed() < Duration::from_secs(3));
            srv.set_read_timeout(None).unwrap();
            srv.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            assert_eq!(srv.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::TimedOut);
        });
    }
}
