//! The nbd plugin's connection to the server below: connecting (TCP, Unix, vsock), driving the
//! protocol crate's client handshake (with TLS through the server crate's client side), and the
//! transmission phase: many requests in flight on one connection, a reader thread matching replies
//! to waiting requests by cookie.
//!
//! A remote that closes, resets or breaks the protocol fails every request in flight and every
//! later one with EIO and a message naming it; the connection is not reopened here (the plugin
//! makes a new one when a handle is opened again, e.g. by the retry filter).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nbdforge_api::{Error, Result};
use nbdforge_protocol::client::{
    encode_request, ClientConfig, Handshake, HandshakeEvent, InFlight, Reply, ReplyBody, ReplyDecoder, ServerExport,
};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::transmission::command_name;
use nbdforge_server::tls::TlsClient;
use socket2::{Domain, SockAddr, Socket, Type};

/// How long the server below may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server below listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Tcp { host: String, port: u16 },
    Unix(std::path::PathBuf),
    Vsock { cid: u32, port: u32 },
}

impl Address {
    fn connect(&self) -> io::Result<Socket> {
        match self {
            Address::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect(addr) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            let s = Socket::from(s);
                            // A host that vanishes (no reset, no close) is noticed within about
                            // a minute and the requests waiting on it fail, instead of hanging
                            // for the hours TCP waits by default.
                            let probes = socket2::TcpKeepalive::new()
                                .with_time(Duration::from_secs(30))
                                .with_interval(Duration::from_secs(10))
                                .with_retries(3);
                            let _ = s.set_tcp_keepalive(&probes);
                            let _ = s.set_tcp_user_timeout(Some(Duration::from_secs(60)));
                            return Ok(s);
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Address::Unix(path) => UnixStream::connect(path).map(Socket::from),
            Address::Vsock { cid, port } => {
                let s = Socket::new(Domain::VSOCK, Type::STREAM, None)?;
                s.connect(&SockAddr::vsock(*cid, *port))?;
                Ok(s)
            }
        }
    }

    /// The host name for TLS, for TCP.
    fn tls_host(&self) -> Option<&str> {
        match self {
            Address::Tcp { host, .. } => Some(host),
            _ => None,
        }
    }
}

/// A request waiting for its reply.
struct Slot {
    request: InFlight,
    state: Mutex<SlotState>,
    done: Condvar,
}

#[derive(Default)]
struct SlotState {
    data: Vec<u8>,
    covered: u64,
    runs: Vec<(u64, u32)>,
    error: Option<Error>,
    finished: bool,
}

struct Table {
    slots: HashMap<u64, Arc<Slot>>,
    next_cookie: u64,
    /// Why the connection is gone, once it is.
    dead: Option<String>,
}

/// What a request got back.
pub(crate) struct Answer {
    /// Read data.
    pub data: Vec<u8>,
    /// Block status runs of `base:allocation`.
    pub runs: Vec<(u64, u32)>,
}

/// One connection to the server below, in the transmission phase.
pub(crate) struct Remote {
    /// How messages name it: `nbd: <name>: ...`.
    name: String,
    export: ServerExport,
    writer: Mutex<Box<dyn Write + Send>>,
    table: Mutex<Table>,
    socket: Socket,
    /// How long a request may wait for its reply (`timeout=`) before the connection is given up.
    timeout: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Remote {
    /// Connects, negotiates, and starts the reader thread.
    pub(crate) fn connect(
        name: &str,
        address: &Address,
        config: ClientConfig,
        tls: Option<&TlsClient>,
        timeout: Option<Duration>,
    ) -> Result<Arc<Remote>> {
        let fail = |what: String| Error::io(format!("{name}: {what}"));
        let socket = address.connect().map_err(|e| fail(format!("connecting: {e}")))?;
        socket.set_read_timeout(Some(timeout.unwrap_or(HANDSHAKE_TIMEOUT))).map_err(|e| fail(e.to_string()))?;
        let control = socket.try_clone().map_err(|e| fail(e.to_string()))?;
        let (export, reader, writer) = match negotiate(socket, config, tls, address.tls_host()).map_err(fail)? {
            Negotiated::Export(halves) => halves,
            Negotiated::Listed(_) => return Err(fail("the server listed exports instead of opening one".into())),
        };
        let _ = control.set_read_timeout(None);
        tracing::debug!(
            "nbd: {name}: connected: size {}, flags 0x{:x}, {}{}{}, block sizes {:?}",
            export.size,
            export.flags,
            if export.extended {
                "extended headers"
            } else if export.structured {
                "structured replies"
            } else {
                "simple replies"
            },
            if export.base_allocation.is_some() { ", base:allocation" } else { "" },
            if export.tls { ", TLS" } else { "" },
            export.block_size,
        );
        let remote = Arc::new(Remote {
            name: name.to_string(),
            export,
            writer: Mutex::new(writer),
            table: Mutex::new(Table { slots: HashMap::new(), next_cookie: 1, dead: None }),
            socket: control,
            timeout,
        });
        let for_reader = remote.clone();
        std::thread::Builder::new()
            .name("nbd-reader".into())
            .spawn(move || for_reader.read_replies(reader))
            .map_err(|e| fail(format!("starting the reader thread: {e}")))?;
        Ok(remote)
    }

    /// The exports the server lists (NBD_OPT_LIST): names and descriptions.
    pub(crate) fn list(
        name: &str,
        address: &Address,
        config: ClientConfig,
        tls: Option<&TlsClient>,
    ) -> Result<Vec<(String, Option<String>)>> {
        let fail = |what: String| Error::io(format!("{name}: {what}"));
        let socket = address.connect().map_err(|e| fail(format!("connecting: {e}")))?;
        socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| fail(e.to_string()))?;
        let config = ClientConfig { list: true, ..config };
        match negotiate(socket, config, tls, address.tls_host()).map_err(fail)? {
            Negotiated::Listed(list) => Ok(list),
            Negotiated::Export(_) => Err(fail("the server opened an export instead of listing them".into())),
        }
    }

    /// How messages name the server below.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the connection is gone (every request on it fails).
    pub(crate) fn is_dead(&self) -> bool {
        lock(&self.table).dead.is_some()
    }

    /// What the server below said about the export.
    pub(crate) fn export(&self) -> &ServerExport {
        &self.export
    }

    /// Sends a request and waits for its whole reply. `payload` is a write's data.
    pub(crate) fn call(&self, kind: u16, flags: u16, offset: u64, length: u64, payload: &[u8]) -> Result<Answer> {
        let what = command_name(kind);
        let request = InFlight { kind, offset, length };
        let slot = Arc::new(Slot { request, state: Mutex::new(SlotState::default()), done: Condvar::new() });
        if kind == CMD_READ {
            lock(&slot.state).data = vec![0; length as usize];
        }
        let cookie = {
            let mut table = lock(&self.table);
            if let Some(why) = &table.dead {
                return Err(Error::io(format!("nbd: {}: {why}", self.name)));
            }
            let cookie = table.next_cookie;
            table.next_cookie += 1;
            table.slots.insert(cookie, slot.clone());
            cookie
        };
        let mut header = Vec::with_capacity(32);
        encode_request(&mut header, self.export.extended, flags, kind, cookie, offset, length);
        let sent = {
            let mut w = lock(&self.writer);
            w.write_all(&header).and_then(|()| w.write_all(payload)).and_then(|()| w.flush())
        };
        if let Err(e) = sent {
            self.die(format!("sending a request: {e}"));
        }
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        let mut state = lock(&slot.state);
        while !state.finished {
            let Some((deadline, timeout)) = deadline else {
                state = slot.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                // A reply that came later could not be told from one to a newer request: the
                // connection is given up, and every request on it fails.
                drop(state);
                self.die(format!("no reply within {} s (timeout=)", timeout.as_secs_f64()));
                state = lock(&slot.state);
                continue;
            }
            state = slot.done.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        if let Some(e) = state.error.take() {
            return Err(Error::new(e.errno, format!("nbd: {}: {}", self.name, e.message)));
        }
        if kind == CMD_READ && state.covered != length {
            return Err(Error::io(format!(
                "nbd: {}: {what}: the server sent {} of the {length} bytes asked for",
                self.name, state.covered
            )));
        }
        Ok(Answer { data: std::mem::take(&mut state.data), runs: std::mem::take(&mut state.runs) })
    }

    /// Ends the session politely (NBD_CMD_DISC) and closes the socket, which stops the reader.
    pub(crate) fn disconnect(&self) {
        let mut header = Vec::with_capacity(32);
        encode_request(&mut header, self.export.extended, 0, CMD_DISC, 0, 0, 0);
        let _ = lock(&self.writer).write_all(&header);
        self.die("the connection was closed".into());
    }

    /// Marks the connection dead and fails every request in flight with EIO.
    fn die(&self, why: String) {
        let slots: Vec<Arc<Slot>> = {
            let mut table = lock(&self.table);
            if table.dead.is_none() {
                tracing::debug!("nbd: {}: {why}", self.name);
                table.dead = Some(why.clone());
            }
            table.slots.drain().map(|(_, s)| s).collect()
        };
        let _ = self.socket.shutdown(Shutdown::Both);
        for slot in slots {
            let mut state = lock(&slot.state);
            if state.error.is_none() {
                state.error = Some(Error::io(why.clone()));
            }
            state.finished = true;
            slot.done.notify_all();
        }
    }

    /// The reader thread: decodes replies until the connection ends.
    fn read_replies(self: Arc<Self>, mut reader: Box<dyn Read + Send>) {
        let why = match self.reply_loop(&mut *reader) {
            Ok(()) => "the server closed the connection".to_string(),
            Err(e) => e,
        };
        self.die(why);
    }

    fn reply_loop(&self, reader: &mut dyn Read) -> std::result::Result<(), String> {
        let mut decoder = ReplyDecoder::new(self.export.structured, self.export.extended);
        let mut buf = Vec::new();
        let lookup = |cookie| lock(&self.table).slots.get(&cookie).map(|s| s.request);
        loop {
            buf.resize(decoder.wants(), 0);
            match read_full(reader, &mut buf) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(format!("reading a reply: {e}")),
            }
            let Some(Reply { cookie, done, body }) = decoder.feed(&buf, &lookup).map_err(|e| e.0)? else {
                continue;
            };
            let Some(slot) = lock(&self.table).slots.get(&cookie).cloned() else {
                return Err(format!("reply to cookie {cookie}, which is not in flight"));
            };
            let mut state = lock(&slot.state);
            match body {
                ReplyBody::Ok => {}
                ReplyBody::Data { at, len } => {
                    let range = at as usize..(at + len) as usize;
                    let Some(dst) = state.data.get_mut(range) else {
                        return Err(format!("read data at {at} length {len} past the buffer"));
                    };
                    read_full(reader, dst)
                        .map_err(|e| format!("reading a reply: {e}"))?
                        .then_some(())
                        .ok_or("the server closed the connection in the middle of a reply")?;
                    state.covered += len;
                }
                ReplyBody::Hole { at, len } => {
                    if let Some(dst) = state.data.get_mut(at as usize..(at + len) as usize) {
                        dst.fill(0);
                    }
                    state.covered += len;
                }
                ReplyBody::Extents { context, runs } => {
                    if Some(context) == self.export.base_allocation && state.runs.is_empty() {
                        state.runs = runs;
                    }
                }
                ReplyBody::Error { errno, message } => {
                    if state.error.is_none() {
                        let message = if message.is_empty() { "the server sent an error".to_string() } else { message };
                        state.error = Some(Error::new(errno as i32, message));
                    }
                }
            }
            if done {
                lock(&self.table).slots.remove(&cookie);
                state.finished = true;
                slot.done.notify_all();
            }
        }
    }
}

/// Fills `buf`; `Ok(false)` at a clean end of stream before the first byte.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A stream during the handshake: the plain socket, then perhaps TLS.
enum Stream {
    Plain(Socket),
    Tls(nbdforge_server::tls::TlsStream),
}

type Halves = (ServerExport, Box<dyn Read + Send>, Box<dyn Write + Send>);

/// How a handshake ended.
enum Negotiated {
    Export(Halves),
    Listed(Vec<(String, Option<String>)>),
}

fn negotiate(
    socket: Socket,
    config: ClientConfig,
    tls: Option<&TlsClient>,
    host: Option<&str>,
) -> std::result::Result<Negotiated, String> {
    let mut hs = Handshake::new(config);
    let mut stream = Stream::Plain(socket);
    let mut buf = Vec::new();
    loop {
        let out = hs.output();
        let sent = match &mut stream {
            Stream::Plain(s) => s.write_all(&out).and_then(|()| s.flush()),
            Stream::Tls(t) => t.write_all(&out).and_then(|()| t.flush()),
        };
        sent.map_err(|e| format!("handshake: {e}"))?;
        buf.resize(hs.wants(), 0);
        let got = match &mut stream {
            Stream::Plain(s) => read_full(s, &mut buf),
            Stream::Tls(t) => read_full(t, &mut buf),
        };
        match got {
            Ok(true) => {}
            Ok(false) => return Err("handshake: the server closed the connection".into()),
            Err(e) => return Err(format!("handshake: {e}")),
        }
        match hs.feed(&buf).map_err(|e| e.0)? {
            HandshakeEvent::Continue => {}
            HandshakeEvent::StartTls => {
                let Stream::Plain(s) = stream else { return Err("STARTTLS twice".into()) };
                let Some(tls) = tls else { return Err("STARTTLS without TLS credentials".into()) };
                let t = tls.connect(s.into(), host).map_err(|e| e.to_string())?;
                t.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| e.to_string())?;
                stream = Stream::Tls(t);
                hs.tls_started();
            }
            HandshakeEvent::Listed(list) => {
                // The output is NBD_OPT_ABORT; the server's answer to it is not waited for.
                let out = hs.output();
                let _ = match &mut stream {
                    Stream::Plain(s) => s.write_all(&out),
                    Stream::Tls(t) => t.write_all(&out).and_then(|()| t.flush()),
                };
                return Ok(Negotiated::Listed(list));
            }
            HandshakeEvent::Done(export) => {
                return match stream {
                    Stream::Plain(s) => {
                        let r = s.try_clone().map_err(|e| e.to_string())?;
                        r.set_read_timeout(None).map_err(|e| e.to_string())?;
                        Ok(Negotiated::Export((export, Box::new(r), Box::new(s))))
                    }
                    Stream::Tls(t) => {
                        t.set_read_timeout(None).map_err(|e| e.to_string())?;
                        let (r, w) = t.split();
                        Ok(Negotiated::Export((export, r, w)))
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_full_tells_a_clean_end_from_a_cut() {
        let mut empty: &[u8] = &[];
        assert!(!read_full(&mut empty, &mut [0; 4]).unwrap());
        let mut short: &[u8] = &[1, 2];
        assert!(read_full(&mut short, &mut [0; 4]).is_err());
    }
}
