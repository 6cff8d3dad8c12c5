//! The transmission phase of one connection: workers that read requests, run them against the
//! backend and send the replies.
//!
//! Workers run leader/follower style: a worker takes the read lock, reads one request (header and
//! payload), lets go, runs it, then sends the reply in one vectored write under the write lock.
//! The worker that read a request serves it, so there is no hand-off between threads, and replies
//! go out in whatever order the backend finishes.
//!
//! A connection starts with one worker (its own thread) and adds one, up to `-t`, whenever a
//! worker takes a request and no other is left waiting to read, as long as requests take long
//! (see [`FAST_SERVICE`]): a busy client gets the concurrency it uses. When the backend answers
//! fast, one worker serves the connection alone: threads handing the reader to each other would
//! cost more than the requests, and the lone worker sends the replies to requests that were
//! already waiting behind each other together, in one system call ([`Output`]). A client idle
//! for a second, with nothing in flight, costs no thread at all: its connection is parked in the
//! server's poller (see `parking`) until it sends again.
//!
//! A worker that reads a request with another queued behind it tells the backend where that
//! one will read or write ([`Handle::prefetch`]), so a plugin serving from memory can start
//! loading it into the CPU cache while this one is served.
//!
//! The connection's state is shared by its workers (an `Arc`), so it outlives any one thread;
//! when the last reference goes, the handle is finalized and the connection counted out.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nbdforge_api::{Connection, Error, Flags, Handle, ThreadModel};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::transmission::{block_status_payload, command_name, EXTENDED_REQUEST_LEN};
use nbdforge_protocol::{Command, Negotiated, Refusal, Replies, Request, Session};
use tracing::{debug, error, warn};

use super::budget::{Budget, Reservation, PER_CONNECTION};
use super::pacing::Pacing;
use super::parking::{Parked, IDLE_BEFORE_PARK};
use super::wire_errno;
use crate::server::{LiveGuard, Shared};
use crate::transport::{without_waiting, write_all_vectored, Stream};

/// Buffers bigger than this are given back after the request that needed them.
const KEEP_BUFFER: usize = 2 << 20;
/// Idle buffers a connection keeps for its next requests.
const POOL: usize = 8;
/// Read-side buffer, so a burst of small requests costs one system call: 64 KiB holds fifteen
/// 4 KiB writes (16 KiB held four, and fio's 4 KiB random writes to memory went 9% slower).
const READ_BUFFER: usize = 64 << 10;
/// The read buffer after a large WRITE: the part of a payload that lands in the buffer is copied
/// once more, and 64 KiB of each 256 KiB write cost those writes 15%.
const READ_BUFFER_LARGE_WRITES: usize = 16 << 10;
/// An oversized payload up to this size is read and thrown away, so the connection stays in step;
/// a larger one is refused and the connection closed, without reading it.
const DRAIN_LIMIT: u64 = 2 * super::MAX_REQUEST as u64;
/// Payload bytes are taken (and memory reserved for them) this many at a time, as they arrive.
const PAYLOAD_STEP: usize = 1 << 20;
/// Requests that take less than this on average (memory, files in the page cache) are served by
/// one worker alone; slower ones (disks, the network, scripts) get more workers, which wait in
/// parallel. Set between a 4 KiB read of memory or of a cached file (1-3 µs) and a read from
/// an NVMe disk (over 10 µs), whose queue depth is what the workers are for. Time a read spends
/// copying its data at memory speed ([`COPY_NS_PER_KIB`]) does not count: more workers on the
/// same data would not copy it faster. A write's copy does count: while one worker copies a
/// large payload, another reads the next from the socket, which the client could not fill
/// meanwhile (256 KiB writes over a disk already written: 5.7-6.1 GB/s instead of 4.2-4.9).
const FAST_SERVICE: Duration = Duration::from_micros(10);
/// Nanoseconds per KiB a read may spend copying data and still count as fast (4 GB/s, a slow
/// memcpy; a 256 KiB read of the memory plugin copies for 20-30 µs).
const COPY_NS_PER_KIB: u64 = 256;
/// Replies held back for one system call, at most (see [`Output`]).
const HOLD_LIMIT: usize = 64 << 10;

/// Serves the transmission phase on this thread (and the workers it starts) until the client
/// leaves or its connection is parked; what remains of it then belongs to its workers or to the
/// poller.
pub(super) fn run(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    handle: Box<dyn Handle>,
    stream: Stream,
    negotiated: &Negotiated,
    live: LiveGuard,
) {
    let peer = conn.client().peer_name();
    let (read, write, socket) = match stream.split() {
        Ok(halves) => halves,
        Err(e) => return warn!("{peer}: {e}"),
    };
    let max_workers = match shared.thread_model {
        ThreadModel::Parallel => shared.config.threads.max(1),
        _ => 1,
    };
    let t = Arc::new(Transmission {
        shared: Arc::clone(shared),
        conn: Arc::clone(conn),
        handle,
        session: Session::new(negotiated),
        replies: Replies { structured: negotiated.structured, extended: negotiated.extended },
        reader: Mutex::new(Reader {
            input: BufReader::with_capacity(READ_BUFFER, read),
            done: false,
            parked: false,
            pacing: Pacing::default(),
            last_payload: 0,
        }),
        last_reply: AtomicU64::new(0),
        writer: Mutex::new(Output { w: write, held: Vec::new() }),
        corked: AtomicBool::new(false),
        service_ns: AtomicU64::new(0),
        last_service_ns: AtomicU64::new(u64::MAX),
        failed: AtomicBool::new(false),
        buffers: Mutex::new(Vec::new()),
        // Only plain sockets park: a TLS session may hold decrypted bytes the socket does not show.
        parkable: socket.is_some(),
        socket,
        budget: Budget::new(PER_CONNECTION),
        workers: AtomicUsize::new(1),
        max_workers: AtomicUsize::new(max_workers),
        reading: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        metrics: shared.metrics.get().map(|m| m.registry.connect(&negotiated.export.name)),
        peer,
        _live: live,
    });
    if let Some(socket) = &t.socket {
        // A layer's nbdkit_disconnect drops even an idle (or parked) client: shutting the socket
        // down wakes whoever waits on it. Weak, so the hook never touches a closed descriptor.
        let weak = Arc::downgrade(socket);
        conn.set_disconnect_hook(move |force| {
            if let Some(socket) = weak.upgrade() {
                let how = if force { nix::sys::socket::Shutdown::Both } else { nix::sys::socket::Shutdown::Read };
                let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), how);
            }
        });
    }
    if let Some(socket) = t.socket.as_deref().filter(|_| t.parkable) {
        // A read that waits this long without a byte is how a worker learns the client is idle.
        if let Err(e) = socket2::SockRef::from(socket).set_read_timeout(Some(IDLE_BEFORE_PARK)) {
            debug!("{}: no read timeout, so the connection will not be parked: {e}", t.peer);
        }
    }
    t.worker();
}

struct Reader {
    input: BufReader<Box<dyn Read + Send>>,
    /// No more requests will be read: the client disconnected, or the stream broke.
    done: bool,
    /// The connection is in the poller: workers that find this leave.
    parked: bool,
    pacing: Pacing,
    /// The payload length of the last request, which sizes the read buffer.
    last_payload: u64,
}

pub(super) struct Transmission {
    pub shared: Arc<Shared>,
    conn: Arc<Connection>,
    pub handle: Box<dyn Handle>,
    pub session: Session,
    pub replies: Replies,
    reader: Mutex<Reader>,
    pub writer: Mutex<Output>,
    /// The lone worker's current request has another one waiting behind it: its reply may be
    /// held back in [`Output::held`].
    pub corked: AtomicBool,
    /// The backend's recent time per request (a moving average), in nanoseconds.
    service_ns: AtomicU64,
    /// The last backend call's time, in nanoseconds (see `timed`).
    last_service_ns: AtomicU64,
    /// The length of the last reply sent, for [`Pacing`].
    pub last_reply: AtomicU64,
    pub failed: AtomicBool,
    /// The socket, for replies sent on it directly (borrowed reads, `sendfile`) and for waiting
    /// on it; `None` for TLS and pipes.
    pub socket: Option<Arc<std::fs::File>>,
    /// Request buffers, last freed first: a buffer is still in the CPU cache when the next request
    /// reuses it, where one buffer per worker would cycle through all of them.
    buffers: Mutex<Vec<Vec<u8>>>,
    /// This connection's share of request memory.
    pub budget: Budget,
    workers: AtomicUsize,
    max_workers: AtomicUsize,
    /// Workers waiting to read a request (for the lock or for bytes).
    reading: AtomicUsize,
    /// Requests read and not yet answered.
    in_flight: AtomicUsize,
    /// Whether the connection may be parked while idle.
    parkable: bool,
    /// This connection's counts for `--metrics`, if it is on.
    metrics: Option<crate::metrics::ConnMetrics>,
    peer: String,
    /// Counts the connection as live for the server until the last reference goes.
    _live: LiveGuard,
}

/// The connection's write half, and the replies held back to go out with the next ones.
///
/// Only a worker serving alone holds replies back, and only while the next request is already
/// in the read buffer: it flushes them before it could wait for the client (see
/// `next_request`), so a client never waits for a reply that sits here.
pub(super) struct Output {
    pub w: Box<dyn Write + Send>,
    /// Whole replies, at most [`HOLD_LIMIT`] bytes.
    pub held: Vec<u8>,
}

impl Output {
    /// Sends the held replies and then `parts`, in one vectored write.
    pub fn send(&mut self, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        if self.held.is_empty() {
            return write_all_vectored(self.w.as_mut(), parts);
        }
        let held = std::mem::take(&mut self.held);
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(IoSlice::new(&held));
        iov.extend(parts.iter().map(|p| IoSlice::new(p)));
        let sent = write_all_vectored(self.w.as_mut(), &mut iov);
        drop(iov);
        self.held = held;
        self.held.clear();
        sent
    }

    /// Sends the held replies.
    pub fn flush_held(&mut self) -> io::Result<()> {
        self.send(&mut [])
    }
}

/// The error a request was answered with (a protocol errno), or `None` for success.
pub(super) type Replied = Option<u32>;

/// What a worker gets when it asks for the next request.
enum Next<'r> {
    /// A request, its buffer, and whether another request is already read behind it.
    Request(Incoming<'r>, Vec<u8>, bool),
    /// The connection is over.
    End,
    /// The connection was parked: this worker leaves, the connection goes on.
    Parked,
}

/// A request read off the wire, with its payload in the worker's buffer.
struct Incoming<'r> {
    req: Request,
    /// Why the request is refused without running it.
    refused: Option<Refusal>,
    /// After replying, close the connection: the stream cannot be trusted any more.
    close: bool,
    /// Memory held for the payload.
    held: Reservation<'r>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Transmission {
    fn worker(self: Arc<Self>) {
        while let Next::Request(incoming, mut buf, more) = self.next_request() {
            self.maybe_add_worker(&incoming.req);
            self.corked.store(more && self.workers.load(Ordering::SeqCst) == 1, Ordering::Relaxed);
            let Incoming { req, refused, close, held } = incoming;
            let started = self.metrics.as_ref().map(|_| Instant::now());
            // A panicking plugin fails its request, not the connection (which would leave the
            // client waiting for a reply that never comes).
            let run = std::panic::AssertUnwindSafe(|| self.dispatch(req, refused, &mut buf));
            let replied = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                error!("{}: the backend panicked", command_name(req.kind));
                self.send_error(&req, EIO, "internal error in the backend")
            });
            if let Some(metrics) = &self.metrics {
                if req.kind != CMD_DISC {
                    metrics.record(req.kind, req.length, replied, started.map(|s| s.elapsed()).unwrap_or_default());
                }
            }
            drop(held);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut pool = lock(&self.buffers);
            if buf.capacity() <= KEEP_BUFFER && pool.len() < POOL {
                pool.push(buf);
            }
            drop(pool);
            if let Some(force) = self.conn.disconnect_requested() {
                self.stop_reading(force);
            }
            if close {
                self.stop_reading(true);
            }
            if req.kind == CMD_DISC {
                break;
            }
            if self.retire() {
                return;
            }
        }
        self.workers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Runs a backend call, folding its time into the moving average (an eighth of it), less the
    /// time copying `copied` bytes would take (see [`FAST_SERVICE`]: reads pass their length,
    /// writes 0). Only the backend's time counts: waiting for the client to take a reply is not
    /// work more workers do faster, since they would wait for the same socket.
    ///
    /// A call counts as the shorter of its time and the previous call's: a fast call whose
    /// thread was preempted (busy connections sharing a core) takes milliseconds of wall time,
    /// and alone it made a fast backend look slow, which started a worker and retired it again
    /// at once; with four connections on a core that was a thousand threads a second. Two slow
    /// calls in a row still count, so a backend slow on every call (or on most) is seen at once.
    pub(super) fn timed<R>(&self, copied: u64, call: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let result = call();
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let took = took.saturating_sub(copied / 1024 * COPY_NS_PER_KIB);
        let took = took.min(self.last_service_ns.swap(took, Ordering::Relaxed));
        let old = self.service_ns.load(Ordering::Relaxed);
        self.service_ns.store(old - old / 8 + took / 8, Ordering::Relaxed);
        result
    }

    /// Whether the backend has been answering fast enough for one worker to serve alone.
    fn fast(&self) -> bool {
        self.service_ns.load(Ordering::Relaxed) < FAST_SERVICE.as_nanos() as u64
    }

    /// A worker leaves, giving up its count, when the backend has become clearly fast (under half
    /// of [`FAST_SERVICE`], so that an average hovering near it does not start and stop threads)
    /// and another worker is waiting to read (one busy with a long request would leave the
    /// requests behind it waiting): true if this worker is to stop.
    fn retire(&self) -> bool {
        let clearly_fast = self.service_ns.load(Ordering::Relaxed) < FAST_SERVICE.as_nanos() as u64 / 2;
        if !clearly_fast || self.reading.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut n = self.workers.load(Ordering::SeqCst);
        while n > 1 {
            match self.workers.compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Starts one more worker for this connection; false if the system refused the thread.
    fn spawn_worker(self: &Arc<Self>) -> bool {
        let t = Arc::clone(self);
        match std::thread::Builder::new().name("nbd-worker".into()).spawn(move || t.worker()) {
            Ok(_) => true,
            Err(e) => {
                warn!("{}: cannot start a worker thread: {e}", self.peer);
                false
            }
        }
    }

    /// Adds a worker when this one took the last waiting reader's place, up to the limit, if
    /// the backend is slow or this request may be: a flush, or a write that must be durable, may
    /// wait on the disk however fast the backend is otherwise, and another worker then serves
    /// the requests behind it.
    fn maybe_add_worker(self: &Arc<Self>, req: &Request) {
        let durable = req.kind == CMD_FLUSH || req.flags & CMD_FLAG_FUA != 0;
        if self.reading.load(Ordering::SeqCst) > 0 || (self.fast() && !durable) {
            return;
        }
        let count = self.workers.load(Ordering::Relaxed);
        if count >= self.max_workers.load(Ordering::Relaxed) {
            return;
        }
        self.workers.fetch_add(1, Ordering::SeqCst);
        if !self.spawn_worker() {
            // The connection goes on with the workers it has.
            self.workers.fetch_sub(1, Ordering::SeqCst);
            self.max_workers.store(count, Ordering::Relaxed);
        }
    }

    /// Waits for the next request's first bytes, up to the socket's read timeout (which only a
    /// parkable connection has): true once bytes (or the end of the stream) are there, false
    /// when the client stayed silent. Costs no system call when bytes are already buffered.
    fn request_arrives(rd: &mut Reader) -> bool {
        loop {
            match rd.input.fill_buf() {
                Ok(_) => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
                // Reported by the read that follows.
                Err(_) => return true,
            }
        }
    }

    /// No more requests are read; with `force` the socket is closed both ways at once.
    fn stop_reading(&self, force: bool) {
        if let Some(s) = &self.socket {
            let how = if force { nix::sys::socket::Shutdown::Both } else { nix::sys::socket::Shutdown::Read };
            let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(s), how);
        }
        if force {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// Reads the next request and its payload into a buffer from the pool; or parks the
    /// connection when its client has been idle for a while with nothing in flight.
    fn next_request(self: &Arc<Self>) -> Next<'_> {
        self.reading.fetch_add(1, Ordering::SeqCst);
        let mut rd = lock(&self.reader);
        let header_len = if self.session.extended { 32 } else { 28 };
        let result = loop {
            if rd.input.buffer().len() < header_len {
                // The next read may wait for the client: what was held back goes out first.
                self.flush_held();
                let size = if rd.last_payload >= 32 << 10 { READ_BUFFER_LARGE_WRITES } else { READ_BUFFER };
                set_read_buffer(&mut rd, size);
                self.pace(&mut rd);
            }
            if rd.done || self.failed.load(Ordering::Relaxed) {
                break Next::End;
            }
            if rd.parked {
                break Next::Parked;
            }
            if self.parkable && !Self::request_arrives(&mut rd) {
                if self.in_flight.load(Ordering::SeqCst) > 0 || !self.park(&mut rd) {
                    // Replies still to send, or nowhere to park: keep waiting here.
                    continue;
                }
                break Next::Parked;
            }
            // Taken only now, so this request gets the buffer the last reply freed, still in cache.
            let mut buf = lock(&self.buffers).pop().unwrap_or_default();
            match self.read_request(&mut rd.input, &mut buf) {
                Ok(mut incoming) => {
                    // Requests read before shutdown began are in flight and finish; later ones are
                    // refused as the spec asks, so the client knows to disconnect.
                    let stopping = self.shared.stopping() || self.conn.disconnect_requested().is_some();
                    if stopping && incoming.refused.is_none() && incoming.req.kind != CMD_DISC {
                        let message = "the server is shutting down".to_string();
                        incoming.refused = Some(Refusal { errno: ESHUTDOWN, message });
                    }
                    rd.done |= incoming.req.kind == CMD_DISC || incoming.close;
                    self.in_flight.fetch_add(1, Ordering::SeqCst);
                    rd.pacing.request();
                    rd.last_payload = incoming.req.payload_len();
                    let more = !rd.done && rd.input.buffer().len() >= header_len;
                    if more {
                        self.prefetch_next(&rd.input.buffer()[..header_len]);
                    }
                    break Next::Request(incoming, buf, more);
                }
                Err(e) => {
                    self.stop_on_read_error(&mut rd, e);
                    break Next::End;
                }
            }
        };
        drop(rd);
        self.reading.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Tells the backend where the request behind this one will read or write, so that its data
    /// can be on its way into the CPU cache while this one is served.
    ///
    /// Not under `serialize_all_requests`: the hint would run beside another connection's call,
    /// and taking the lock for it would cost more than the hint saves.
    fn prefetch_next(&self, header: &[u8]) {
        if self.shared.serialize_all.is_some() {
            return;
        }
        // Checked as the request itself will be: a layer never sees a range outside the export.
        let Ok(next) = Request::parse(header, self.session.extended) else { return };
        if matches!(next.kind, CMD_READ | CMD_WRITE) && self.session.check(&next).is_ok() {
            self.handle.prefetch(next.length, next.offset);
        }
    }

    /// Waits a little before reading when the lone worker's client is behind on its replies (see
    /// [`Pacing`]). Never when the client's next request is arriving: whatever it has sent is
    /// read first, without waiting, which also spares asking the kernel whether bytes are there.
    ///
    /// Not on a parked connection: bytes taken here would wait in our buffer, unseen by the
    /// poller that is to wake the connection for them.
    fn pace(&self, rd: &mut Reader) {
        if rd.done || rd.parked || self.workers.load(Ordering::Relaxed) != 1 || !rd.input.buffer().is_empty() {
            return;
        }
        let Some(socket) = self.socket.as_deref().filter(|_| self.parkable) else { return };
        match without_waiting(|| rd.input.fill_buf().map(|b| b.len())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            // Reported here: the socket's error is cleared by the read that returns it, and the
            // next read would see a clean end of stream.
            Err(e) => return self.stop_on_read_error(rd, e),
        }
        if let Some(pause) = rd.pacing.pause(socket, self.last_reply.load(Ordering::Relaxed)) {
            std::thread::sleep(pause);
        }
    }

    /// No more requests are read after a failed read; any failure but the client's leaving is
    /// logged.
    fn stop_on_read_error(&self, rd: &mut Reader, e: io::Error) {
        rd.done = true;
        if e.kind() != io::ErrorKind::UnexpectedEof {
            warn!("{}: connection dropped: {e}", self.peer);
        }
    }

    /// Hands the connection to the server's poller; its idle buffers go back to the system.
    /// False when it could not be parked.
    fn park(self: &Arc<Self>, rd: &mut Reader) -> bool {
        let Some(parking) = self.shared.parking() else { return false };
        rd.parked = true;
        lock(&self.buffers).clear();
        lock(&self.writer).held = Vec::new();
        set_read_buffer(rd, 0);
        let this: Arc<dyn Parked> = Arc::clone(self) as Arc<dyn Parked>;
        if let Err(e) = parking.park(this) {
            debug!("{}: cannot park the idle connection: {e}", self.peer);
            rd.parked = false;
            return false;
        }
        true
    }

    fn read_request(&self, input: &mut BufReader<Box<dyn Read + Send>>, buf: &mut Vec<u8>) -> io::Result<Incoming<'_>> {
        let mut header = [0u8; EXTENDED_REQUEST_LEN];
        let header = &mut header[..if self.session.extended { 32 } else { 28 }];
        read_exact_patiently(input, header)?;
        let req = Request::parse(header, self.session.extended).map_err(io::Error::other)?;
        let mut held = Reservation::new(&self.budget, &self.shared.budget);
        let len = req.payload_len();
        let limit = if req.kind == CMD_WRITE { self.session.max_payload() } else { 64 << 10 };
        let refuse = |errno, message: String, close| Incoming {
            req,
            refused: Some(Refusal { errno, message }),
            close,
            held: Reservation::new(&self.budget, &self.shared.budget),
        };
        if len > limit {
            let message = format!("{}: payload of {len} bytes is over the limit of {limit}", command_name(req.kind));
            if len > DRAIN_LIMIT {
                return Ok(refuse(EINVAL, format!("{message}; closing the connection"), true));
            }
            drain(input, len)?;
            return Ok(refuse(EINVAL, message, false));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("payload length out of range"))?;
        if input.buffer().len() < len {
            self.flush_held();
        }
        let mut have = 0;
        while have < len {
            let step = (len - have).min(PAYLOAD_STEP);
            if !held.grow(step) {
                drop(held);
                drain(input, (len - have) as u64)?;
                let message = format!("{}: the server is short of memory for the payload", command_name(req.kind));
                return Ok(refuse(ENOMEM, message, false));
            }
            if buf.len() < have + step {
                if buf.try_reserve(have + step - buf.len()).is_err() {
                    drop(held);
                    drain(input, (len - have) as u64)?;
                    return Ok(refuse(ENOMEM, "out of memory for the payload".into(), false));
                }
                buf.resize(have + step, 0);
            }
            read_exact_patiently(input, &mut buf[have..have + step])?;
            have += step;
        }
        Ok(Incoming { req, refused: None, close: false, held })
    }

    /// Sends a whole reply; or holds it back while the connection is corked.
    pub(super) fn send(&self, parts: &mut [IoSlice<'_>]) {
        let mut out = lock(&self.writer);
        if self.hold(&mut out, parts) {
            return;
        }
        if let Err(e) = out.send(parts) {
            self.reply_failed(e);
        }
    }

    /// Notes a reply's size (for [`Pacing`]) and, while the connection is corked, holds it back
    /// in `out` if there is room: true if it was held (see [`Output`]).
    pub(super) fn hold(&self, out: &mut Output, parts: &[IoSlice<'_>]) -> bool {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        self.last_reply.store(size as u64, Ordering::Relaxed);
        if !self.corked.load(Ordering::Relaxed) || out.held.len() + size > HOLD_LIMIT {
            return false;
        }
        parts.iter().for_each(|p| out.held.extend_from_slice(p));
        true
    }

    /// Sends the replies held back.
    pub(super) fn flush_held(&self) {
        let mut out = lock(&self.writer);
        if !out.held.is_empty() {
            if let Err(e) = out.flush_held() {
                self.reply_failed(e);
            }
        }
    }

    /// A reply could not be written: the client is gone, and no more requests are read.
    pub(super) fn reply_failed(&self, e: impl std::fmt::Display) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            debug!("{}: writing a reply failed: {e}", self.peer);
        }
    }

    pub(super) fn send_error(&self, req: &Request, errno: u32, message: &str) -> Replied {
        let mut out = Vec::with_capacity(64 + message.len());
        self.replies.error(&mut out, req.cookie, req.offset, errno, message);
        self.send(&mut [IoSlice::new(&out)]);
        Some(errno)
    }

    pub(super) fn backend_error(&self, req: &Request, e: Error) -> Replied {
        let errno = wire_errno(e.errno);
        // Fast-zero refusals are routine (clients probe with them); everything else is worth a line.
        if errno == ENOTSUP && req.kind == CMD_WRITE_ZEROES {
            debug!("{}: {}", command_name(req.kind), e.message);
        } else {
            error!("{}: {}", command_name(req.kind), e.message);
        }
        self.send_error(req, errno, &e.message)
    }

    fn dispatch(&self, mut req: Request, refused: Option<Refusal>, buf: &mut Vec<u8>) -> Replied {
        if let Some(r) = refused {
            return self.send_error(&req, r.errno, &r.message);
        }
        let mut wanted_ids = None;
        if req.kind == CMD_BLOCK_STATUS && req.extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0 {
            let payload = usize::try_from(req.payload_len()).ok().and_then(|n| buf.get(..n)).unwrap_or_default();
            match block_status_payload(payload) {
                Some((effect, ids)) => {
                    req.length = effect;
                    req.flags &= !CMD_FLAG_PAYLOAD_LEN;
                    wanted_ids = Some(ids);
                }
                None => return self.send_error(&req, EINVAL, "NBD_CMD_BLOCK_STATUS: malformed payload"),
            }
        }
        let cmd = match self.session.check(&req) {
            Ok(cmd) => cmd,
            Err(r) => {
                debug!("refused: {}", r.message);
                if req.kind == CMD_DISC {
                    return None;
                }
                return self.send_error(&req, r.errno, &r.message);
            }
        };
        let _serialized = self.shared.serialize_all.as_ref().map(lock);
        let h = self.handle.as_ref();
        let fua = |fua: bool| if fua { Flags::FUA } else { Flags::NONE };
        let result = match cmd {
            Command::Disconnect => return None,
            Command::Read { offset, length, df } => return self.read(&req, offset, length, df, buf),
            Command::BlockStatus { offset, length, req_one } => {
                return self.block_status(&req, offset, length, req_one, wanted_ids.as_deref())
            }
            // Its copy counts (see FAST_SERVICE).
            Command::Write { offset, length, fua: f } => {
                self.timed(0, || h.pwrite(&buf[..length as usize], offset, fua(f)))
            }
            Command::Flush => self.timed(0, || h.flush(Flags::NONE)),
            Command::Trim { offset, length, fua: f } => self.timed(0, || h.trim(length, offset, fua(f))),
            Command::Cache { offset, length } => self.timed(0, || h.cache(length, offset, Flags::NONE)),
            Command::WriteZeroes { offset, length, fua: f, may_trim, fast } => {
                let mut flags = fua(f);
                if may_trim {
                    flags |= Flags::MAY_TRIM;
                }
                if fast {
                    flags |= Flags::FAST_ZERO;
                }
                self.timed(0, || h.zero(length, offset, flags))
            }
        };
        match result {
            Ok(()) => {
                self.send(&mut [IoSlice::new(self.replies.ok(req.cookie, req.offset).as_bytes())]);
                None
            }
            Err(e) => self.backend_error(&req, e),
        }
    }
}

impl Parked for Transmission {
    fn fd(&self) -> RawFd {
        self.socket.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    fn wake(self: Arc<Self>) {
        lock(&self.reader).parked = false;
        self.workers.fetch_add(1, Ordering::SeqCst);
        if !self.spawn_worker() {
            // No thread to serve it: the connection ends here (dropping it closes it).
            self.workers.fetch_sub(1, Ordering::SeqCst);
            lock(&self.reader).done = true;
        }
    }
}

impl Drop for Transmission {
    fn drop(&mut self) {
        let mut out = lock(&self.writer);
        let _ = out.flush_held();
        let _ = out.w.flush();
        super::handshake::finalize(self.handle.as_ref(), &self.conn);
        debug!("{}: connection closed", self.peer);
    }
}

/// Gives the read buffer's memory back (a parked connection has read all it holds), or takes
/// it again; nothing happens while it holds unread bytes.
fn set_read_buffer(rd: &mut Reader, capacity: usize) {
    if rd.input.capacity() == capacity || !rd.input.buffer().is_empty() {
        return;
    }
    let placeholder: Box<dyn Read + Send> = Box::new(io::empty());
    let input = std::mem::replace(&mut rd.input, BufReader::with_capacity(0, placeholder));
    rd.input = BufReader::with_capacity(capacity, input.into_inner());
}

/// `read_exact` that waits through the read timeout a parkable socket has: a client pausing in
/// the middle of a request is waited for, never cut off with half its bytes consumed.
fn read_exact_patiently(input: &mut dyn Read, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match input.read(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed the connection")),
            Ok(n) => buf = &mut buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and throws away `len` bytes without holding them all in memory.
fn drain(input: &mut dyn Read, mut len: u64) -> io::Result<()> {
    let mut scratch = [0u8; 64 << 10];
    while len > 0 {
        let n = len.min(scratch.len() as u64) as usize;
        read_exact_patiently(input, &mut scratch[..n])?;
        len -= n as u64;
    }
    Ok(())
}
