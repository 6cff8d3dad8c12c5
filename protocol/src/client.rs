//! The client side of the protocol without I/O, for proxying to a server below: the handshake as a
//! state machine, request encoding, and reply decoding with every bound checked.
//!
//! The server below is not trusted: a wrong magic, a chunk outside its request, a length past a
//! limit or a cookie nobody sent is a [`ClientError`], never a panic or an allocation sized by the
//! peer. Only read data is sized by the peer, and then only within the request the client made.
//!
//! Driving the handshake ([`Handshake`]): loop { send [`Handshake::output`]; read exactly
//! [`Handshake::wants`] bytes and pass them to [`Handshake::feed`]; on [`HandshakeEvent::StartTls`]
//! run the TLS handshake and call [`Handshake::tls_started`]; stop at [`HandshakeEvent::Done`] }.
//!
//! Driving replies ([`ReplyDecoder`]): loop { read exactly [`ReplyDecoder::wants`] bytes and pass
//! them to [`ReplyDecoder::feed`] with a lookup of the requests in flight; on a
//! [`ReplyBody::Data`] read that many bytes of read data from the stream into the request's buffer
//! before going on }.

use std::fmt;

use crate::consts::*;
use crate::wire::Cursor;

/// Most exports taken from a server's NBD_OPT_LIST reply; the rest are ignored.
pub const MAX_LISTED_EXPORTS: usize = 10_000;
/// Longest option reply accepted from the server during the handshake.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Most block status runs accepted in one chunk (as many as nbdforge sends at most).
pub const MAX_REPLY_EXTENTS: u64 = 1 << 20;

/// Whether the client asks for TLS (`tls=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// Never.
    Off,
    /// Try STARTTLS; go on in plain text if the server refuses it.
    On,
    /// STARTTLS or fail.
    Require,
}

/// What to ask the server for.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The export to open.
    pub export: String,
    /// TLS policy.
    pub tls: ClientTls,
    /// Try extended headers (falling back to structured replies when refused).
    pub extended_headers: bool,
    /// Ask for structured replies.
    pub structured_replies: bool,
    /// Ask for `base:allocation`.
    pub base_allocation: bool,
    /// List the server's exports (NBD_OPT_LIST) instead of opening one: the handshake ends with
    /// [`HandshakeEvent::Listed`].
    pub list: bool,
}

impl ClientConfig {
    /// Everything on, TLS off.
    pub fn new(export: &str) -> Self {
        ClientConfig {
            export: export.to_string(),
            tls: ClientTls::Off,
            extended_headers: true,
            structured_replies: true,
            base_allocation: true,
            list: false,
        }
    }
}

/// What the handshake ended with: the export as the server described it and what was negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerExport {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Structured replies are on.
    pub structured: bool,
    /// Extended headers are on.
    pub extended: bool,
    /// The id of `base:allocation`, when the server selected it.
    pub base_allocation: Option<u32>,
    /// Minimum, preferred and maximum block size, when the server sent them.
    pub block_size: Option<(u32, u32, u32)>,
    /// The export's description, when the server sent one.
    pub description: Option<String>,
    /// TLS was started.
    pub tls: bool,
    /// The server spoke the oldstyle protocol (no options, no export names).
    pub oldstyle: bool,
}

impl ServerExport {
    /// Whether the transmission flag `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// The server broke the protocol or refused what we need. The message says what it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError(pub String);

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

fn fail<T>(message: impl Into<String>) -> Result<T, ClientError> {
    Err(ClientError(message.into()))
}

/// What the caller does after [`Handshake::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// Send [`Handshake::output`], then read [`Handshake::wants`] bytes.
    Continue,
    /// Send the output (nothing), run the TLS handshake as the client, call
    /// [`Handshake::tls_started`], then go on.
    StartTls,
    /// The transmission phase begins.
    Done(ServerExport),
    /// The exports the server listed (name, description), after [`ClientConfig::list`]. Send the
    /// output (NBD_OPT_ABORT) and close the connection.
    Listed(Vec<(String, Option<String>)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first 16 bytes: NBDMAGIC and the newstyle or oldstyle magic.
    Magic,
    /// Newstyle handshake flags (2 bytes).
    HandshakeFlags,
    /// The rest of an oldstyle greeting: size, flags, 124 zeroes.
    Oldstyle,
    /// An option reply header (20 bytes) for `option`.
    ReplyHeader,
    /// An option reply's data.
    ReplyData {
        reply: u32,
    },
    /// The reply to NBD_OPT_EXPORT_NAME: size and flags, then zeroes unless NO_ZEROES.
    ExportName,
    Finished,
}

/// The client side of one handshake. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Handshake {
    config: ClientConfig,
    state: State,
    output: Vec<u8>,
    /// The option whose replies are being read.
    option: u32,
    option_reply_len: u32,
    no_zeroes: bool,
    tls: bool,
    structured: bool,
    extended: bool,
    base_allocation: Option<u32>,
    size_flags: Option<(u64, u16)>,
    block_size: Option<(u32, u32, u32)>,
    description: Option<String>,
    listed: Vec<(String, Option<String>)>,
}

impl Handshake {
    /// A handshake about to read the server's greeting.
    pub fn new(config: ClientConfig) -> Self {
        Handshake {
            config,
            state: State::Magic,
            output: Vec::new(),
            option: 0,
            option_reply_len: 0,
            no_zeroes: false,
            tls: false,
            structured: false,
            extended: false,
            base_allocation: None,
            size_flags: None,
            block_size: None,
            description: None,
            listed: Vec::new(),
        }
    }

    /// Bytes to send now (empty when there are none).
    pub fn output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// How many bytes to read next and pass to [`feed`](Self::feed) (0 once done).
    pub fn wants(&self) -> usize {
        match self.state {
            State::Magic => 16,
            State::HandshakeFlags => 2,
            State::Oldstyle => 8 + 4 + 124,
            State::ReplyHeader => 20,
            State::ReplyData { .. } => self.option_reply_len as usize,
            State::ExportName => 10 + if self.no_zeroes { 0 } else { 124 },
            State::Finished => 0,
        }
    }

    /// The TLS handshake after [`HandshakeEvent::StartTls`] succeeded: negotiation goes on inside.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.after_tls();
    }

    /// Takes exactly [`wants`](Self::wants) bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<HandshakeEvent, ClientError> {
        if bytes.len() != self.wants() {
            return fail(format!("handshake: {} bytes given where {} were wanted", bytes.len(), self.wants()));
        }
        let mut c = Cursor::new(bytes);
        match self.state {
            State::Magic => {
                let magic = c.u64().unwrap_or_default();
                if magic != NBDMAGIC {
                    return fail(format!(
                        "the server sent 0x{magic:016x} where the NBD magic belongs: not an NBD server"
                    ));
                }
                match c.u64().unwrap_or_default() {
                    IHAVEOPT => self.state = State::HandshakeFlags,
                    OLDSTYLE_MAGIC => self.state = State::Oldstyle,
                    other => return fail(format!("the server sent an unknown protocol magic 0x{other:016x}")),
                }
                Ok(HandshakeEvent::Continue)
            }
            State::Oldstyle => {
                let size = c.u64().unwrap_or_default();
                let flags = c.u32().unwrap_or_default() as u16;
                if self.config.tls == ClientTls::Require {
                    return fail("the server speaks the oldstyle protocol, which has no TLS, and tls=require");
                }
                if !self.config.export.is_empty() {
                    return fail(format!(
                        "the server speaks the oldstyle protocol, which has no export names, and export '{}' was asked for",
                        self.config.export
                    ));
                }
                self.state = State::Finished;
                Ok(HandshakeEvent::Done(self.finish(size, flags, true)))
            }
            State::HandshakeFlags => {
                let flags = c.u16().unwrap_or_default();
                let fixed = flags & FLAG_FIXED_NEWSTYLE != 0;
                self.no_zeroes = flags & FLAG_NO_ZEROES != 0;
                let mut client = 0;
                if fixed {
                    client |= FLAG_C_FIXED_NEWSTYLE;
                }
                if self.no_zeroes {
                    client |= FLAG_C_NO_ZEROES;
                }
                self.output.extend_from_slice(&client.to_be_bytes());
                if !fixed {
                    // Without fixed newstyle only NBD_OPT_EXPORT_NAME is safe.
                    if self.config.list {
                        return fail("the server does not speak fixed newstyle, so it cannot list exports");
                    }
                    if self.config.tls == ClientTls::Require {
                        return fail("the server does not speak fixed newstyle, so it cannot do TLS, and tls=require");
                    }
                    self.export_name();
                } else if self.config.tls != ClientTls::Off {
                    self.send_option(OPT_STARTTLS, &[]);
                } else {
                    self.after_tls();
                }
                Ok(HandshakeEvent::Continue)
            }
            State::ReplyHeader => {
                let magic = c.u64().unwrap_or_default();
                if magic != OPTION_REPLY_MAGIC {
                    return fail(format!("bad option reply magic 0x{magic:016x}"));
                }
                let option = c.u32().unwrap_or_default();
                let reply = c.u32().unwrap_or_default();
                let len = c.u32().unwrap_or_default();
                if option != self.option {
                    return fail(format!(
                        "the server replied to option {option} while option {} was asked",
                        self.option
                    ));
                }
                if len > MAX_OPTION_REPLY {
                    return fail(format!(
                        "option reply of {len} bytes to option {option} is over the limit of {MAX_OPTION_REPLY}"
                    ));
                }
                self.option_reply_len = len;
                self.state = State::ReplyData { reply };
                if len == 0 {
                    return self.option_reply(reply, &[]);
                }
                Ok(HandshakeEvent::Continue)
            }
            State::ReplyData { reply } => self.option_reply(reply, bytes),
            State::ExportName => {
                let size = c.u64().unwrap_or_default();
                let flags = c.u16().unwrap_or_default();
                self.state = State::Finished;
                Ok(HandshakeEvent::Done(self.finish(size, flags, false)))
            }
            State::Finished => fail("handshake: fed after it finished"),
        }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) {
        self.output.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.output.extend_from_slice(&option.to_be_bytes());
        self.output.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.output.extend_from_slice(data);
        self.option = option;
        self.state = State::ReplyHeader;
    }

    fn export_name(&mut self) {
        let name = self.config.export.clone();
        self.output.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.output.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        self.output.extend_from_slice(&(name.len() as u32).to_be_bytes());
        self.output.extend_from_slice(name.as_bytes());
        self.option = OPT_EXPORT_NAME;
        self.state = State::ExportName;
    }

    /// The options after STARTTLS (or without it): extended headers or structured replies.
    fn after_tls(&mut self) {
        if self.config.list {
            self.send_option(OPT_LIST, &[]);
        } else if self.config.extended_headers && self.config.structured_replies {
            self.send_option(OPT_EXTENDED_HEADERS, &[]);
        } else {
            self.structured_replies();
        }
    }

    fn structured_replies(&mut self) {
        if self.config.structured_replies {
            self.send_option(OPT_STRUCTURED_REPLY, &[]);
        } else {
            self.go();
        }
    }

    fn meta_context(&mut self) {
        if !(self.structured && self.config.base_allocation) {
            return self.go();
        }
        let name = self.config.export.as_bytes();
        let mut d = Vec::with_capacity(name.len() + 8 + BASE_ALLOCATION.len() + 4);
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
        self.send_option(OPT_SET_META_CONTEXT, &d);
    }

    fn go(&mut self) {
        let name = self.config.export.as_bytes();
        let mut d = Vec::with_capacity(name.len() + 10);
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
        self.send_option(OPT_GO, &d);
    }

    fn option_reply(&mut self, reply: u32, data: &[u8]) -> Result<HandshakeEvent, ClientError> {
        let option = self.option;
        let message = || String::from_utf8_lossy(data).into_owned();
        let is_error = reply & 0x8000_0000 != 0;
        match option {
            OPT_STARTTLS => {
                if reply == REP_ACK {
                    // The TLS handshake runs next; the options start again inside it.
                    self.state = State::Finished;
                    return Ok(HandshakeEvent::StartTls);
                }
                if !is_error {
                    return fail(format!("unexpected reply {reply} to NBD_OPT_STARTTLS"));
                }
                if self.config.tls == ClientTls::Require {
                    return fail(format!("the server refused TLS, and tls=require: {}", message()));
                }
                self.after_tls();
            }
            OPT_EXTENDED_HEADERS | OPT_STRUCTURED_REPLY => {
                if reply == REP_ACK {
                    self.structured = true;
                    self.extended |= option == OPT_EXTENDED_HEADERS;
                    self.meta_context();
                } else if !is_error {
                    return fail(format!("unexpected reply {reply} to option {option}"));
                } else {
                    self.check_tls_required(reply, &message())?;
                    if option == OPT_EXTENDED_HEADERS {
                        self.structured_replies();
                    } else {
                        self.go();
                    }
                }
            }
            OPT_SET_META_CONTEXT => match reply {
                REP_META_CONTEXT => {
                    let mut c = Cursor::new(data);
                    let id = c.u32();
                    let name = c.string(c.remaining());
                    if let (Some(id), Some(BASE_ALLOCATION)) = (id, name) {
                        self.base_allocation = Some(id);
                    }
                    self.state = State::ReplyHeader;
                }
                REP_ACK => self.go(),
                _ if is_error => {
                    self.check_tls_required(reply, &message())?;
                    self.base_allocation = None;
                    self.go();
                }
                _ => return fail(format!("unexpected reply {reply} to NBD_OPT_SET_META_CONTEXT")),
            },
            OPT_LIST => match reply {
                REP_SERVER => {
                    let mut c = Cursor::new(data);
                    let name = c.string32().ok_or_else(|| ClientError("malformed NBD_REP_SERVER reply".into()))?;
                    let description = c.string(c.remaining()).filter(|d| !d.is_empty()).map(str::to_string);
                    if self.listed.len() < MAX_LISTED_EXPORTS {
                        self.listed.push((name.to_string(), description));
                    }
                    self.state = State::ReplyHeader;
                }
                REP_ACK => {
                    self.output.extend_from_slice(&IHAVEOPT.to_be_bytes());
                    self.output.extend_from_slice(&OPT_ABORT.to_be_bytes());
                    self.output.extend_from_slice(&0u32.to_be_bytes());
                    self.state = State::Finished;
                    return Ok(HandshakeEvent::Listed(std::mem::take(&mut self.listed)));
                }
                _ if is_error => {
                    self.check_tls_required(reply, &message())?;
                    return fail(format!(
                        "the server refused to list its exports: {}: {}",
                        reply_name(reply),
                        message()
                    ));
                }
                _ => return fail(format!("unexpected reply {reply} to NBD_OPT_LIST")),
            },
            OPT_GO => match reply {
                REP_INFO => {
                    self.info(data)?;
                    self.state = State::ReplyHeader;
                }
                REP_ACK => {
                    let Some((size, flags)) = self.size_flags else {
                        return fail("the server acknowledged NBD_OPT_GO without sending the export's size");
                    };
                    self.state = State::Finished;
                    return Ok(HandshakeEvent::Done(self.finish(size, flags, false)));
                }
                REP_ERR_UNSUP => self.export_name(),
                _ if is_error => {
                    self.check_tls_required(reply, &message())?;
                    return fail(format!(
                        "the server refused export '{}': {}{}",
                        self.config.export,
                        reply_name(reply),
                        if data.is_empty() { String::new() } else { format!(": {}", message()) }
                    ));
                }
                _ => return fail(format!("unexpected reply {reply} to NBD_OPT_GO")),
            },
            _ => return fail(format!("reply to option {option}, which was not sent")),
        }
        Ok(HandshakeEvent::Continue)
    }

    fn check_tls_required(&self, reply: u32, message: &str) -> Result<(), ClientError> {
        if reply == REP_ERR_TLS_REQD {
            return fail(format!("the server requires TLS (use tls=on or tls=require): {message}"));
        }
        Ok(())
    }

    fn info(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let mut c = Cursor::new(data);
        let bad = |what: &str| fail(format!("malformed NBD_INFO {what} of {} bytes", data.len()));
        match c.u16() {
            Some(INFO_EXPORT) => match (c.u64(), c.u16(), c.remaining()) {
                (Some(size), Some(flags), 0) => self.size_flags = Some((size, flags)),
                _ => return bad("EXPORT"),
            },
            Some(INFO_BLOCK_SIZE) => match (c.u32(), c.u32(), c.u32(), c.remaining()) {
                (Some(min), Some(pref), Some(max), 0) => {
                    let valid = min.is_power_of_two()
                        && min <= 65536
                        && pref.is_power_of_two()
                        && pref >= min
                        && max >= min
                        && max % min == 0;
                    if !valid {
                        return fail(format!("the server sent invalid block sizes {min}/{pref}/{max}"));
                    }
                    self.block_size = Some((min, pref, max));
                }
                _ => return bad("BLOCK_SIZE"),
            },
            Some(INFO_DESCRIPTION) => {
                self.description = Some(String::from_utf8_lossy(&data[2..]).into_owned());
            }
            // Other information (the name, types from the future) is not needed.
            Some(_) => {}
            None => return bad("reply"),
        }
        Ok(())
    }

    fn finish(&self, size: u64, flags: u16, oldstyle: bool) -> ServerExport {
        // Without HAS_FLAGS the other bits mean nothing.
        let flags = if flags & FLAG_HAS_FLAGS != 0 { flags } else { 0 };
        ServerExport {
            size,
            flags,
            structured: self.structured,
            extended: self.extended,
            base_allocation: self.base_allocation,
            block_size: self.block_size,
            description: self.description.clone(),
            tls: self.tls,
            oldstyle,
        }
    }
}

/// The NBD name of an option error reply.
pub fn reply_name(reply: u32) -> String {
    match reply {
        REP_ERR_UNSUP => "unsupported".into(),
        REP_ERR_POLICY => "forbidden by policy".into(),
        REP_ERR_INVALID => "invalid".into(),
        REP_ERR_PLATFORM => "not supported on this platform".into(),
        REP_ERR_TLS_REQD => "TLS required".into(),
        REP_ERR_UNKNOWN => "unknown export".into(),
        REP_ERR_SHUTDOWN => "server shutting down".into(),
        REP_ERR_BLOCK_SIZE_REQD => "block size required".into(),
        REP_ERR_TOO_BIG => "too big".into(),
        REP_ERR_EXT_HEADER_REQD => "extended headers required".into(),
        other => format!("error 0x{other:08x}"),
    }
}

/// Appends a request header: compact (28 bytes) or extended (32 bytes). A compact header carries
/// 32-bit lengths; the caller splits longer requests.
pub fn encode_request(out: &mut Vec<u8>, extended: bool, flags: u16, kind: u16, cookie: u64, offset: u64, length: u64) {
    let magic = if extended { EXTENDED_REQUEST_MAGIC } else { REQUEST_MAGIC };
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    if extended {
        out.extend_from_slice(&length.to_be_bytes());
    } else {
        debug_assert!(length <= u64::from(u32::MAX));
        out.extend_from_slice(&(length.min(u64::from(u32::MAX)) as u32).to_be_bytes());
    }
}

/// A request in flight, as the decoder needs it to check a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// `CMD_*`.
    pub kind: u16,
    /// The request's offset.
    pub offset: u64,
    /// The request's length.
    pub length: u64,
}

/// What one reply (or chunk of a structured reply) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// Success with nothing attached (a simple reply, NBD_REPLY_TYPE_NONE).
    Ok,
    /// `len` bytes of read data for the range starting `at` bytes into the request follow on the
    /// stream: the caller reads them itself, before the next call to `wants`.
    Data {
        /// Position relative to the request's offset.
        at: u64,
        /// Bytes that follow.
        len: u64,
    },
    /// `len` bytes starting `at` bytes into the request read as zeroes.
    Hole {
        /// Position relative to the request's offset.
        at: u64,
        /// Length.
        len: u64,
    },
    /// Block status runs `(length, flags)` of the context `context`.
    Extents {
        /// Context id.
        context: u32,
        /// The runs, from the request's offset.
        runs: Vec<(u64, u32)>,
    },
    /// The request failed: the NBD errno and the server's message.
    Error {
        /// NBD error code (never 0).
        errno: u32,
        /// What the server said.
        message: String,
    },
}

/// A decoded reply or chunk: whose it is, whether it is the last, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's cookie.
    pub cookie: u64,
    /// The last chunk of the reply: the request is complete.
    pub done: bool,
    /// Contents.
    pub body: ReplyBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyState {
    Magic,
    Simple,
    ChunkHeader { extended: bool },
    Payload { cookie: u64, flags: u16, kind: u16, len: usize, total: u64, request: InFlight },
}

/// Decodes the replies of one connection. See the module documentation.
#[derive(Debug)]
pub struct ReplyDecoder {
    structured: bool,
    extended: bool,
    state: ReplyState,
}

impl ReplyDecoder {
    /// A decoder for what was negotiated.
    pub fn new(structured: bool, extended: bool) -> Self {
        ReplyDecoder { structured: structured || extended, extended, state: ReplyState::Magic }
    }

    /// How many bytes to read next (never more than the limits of a chunk's fixed payload).
    pub fn wants(&self) -> usize {
        match self.state {
            ReplyState::Magic => 4,
            ReplyState::Simple => 12,
            ReplyState::ChunkHeader { extended: false } => 16,
            ReplyState::ChunkHeader { extended: true } => 28,
            ReplyState::Payload { len, .. } => len,
        }
    }

    /// Takes exactly [`wants`](Self::wants) bytes; `lookup` finds a request in flight by its
    /// cookie. Returns a reply once one is complete (for [`ReplyBody::Data`], complete but for
    /// the data that follows).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        lookup: &dyn Fn(u64) -> Option<InFlight>,
    ) -> Result<Option<Reply>, ClientError> {
        if bytes.len() != self.wants() {
            return fail(format!("reply: {} bytes given where {} were wanted", bytes.len(), self.wants()));
        }
        let mut c = Cursor::new(bytes);
        match self.state {
            ReplyState::Magic => {
                let magic = c.u32().unwrap_or_default();
                self.state = match magic {
                    SIMPLE_REPLY_MAGIC if !self.extended => ReplyState::Simple,
                    STRUCTURED_REPLY_MAGIC if self.structured && !self.extended => {
                        ReplyState::ChunkHeader { extended: false }
                    }
                    EXTENDED_REPLY_MAGIC if self.extended => ReplyState::ChunkHeader { extended: true },
                    _ => return fail(format!("bad reply magic 0x{magic:08x}")),
                };
                Ok(None)
            }
            ReplyState::Simple => {
                self.state = ReplyState::Magic;
                let error = c.u32().unwrap_or_default();
                let cookie = c.u64().unwrap_or_default();
                let Some(request) = lookup(cookie) else {
                    return fail(format!("reply with cookie {cookie}, which no request in flight has"));
                };
                let body = if error != 0 {
                    ReplyBody::Error { errno: error, message: String::new() }
                } else if request.kind == CMD_READ {
                    if self.structured {
                        return fail("simple reply with data to a read, after structured replies were negotiated");
                    }
                    ReplyBody::Data { at: 0, len: request.length }
                } else {
                    ReplyBody::Ok
                };
                Ok(Some(Reply { cookie, done: true, body }))
            }
            ReplyState::ChunkHeader { extended } => {
                let flags = c.u16().unwrap_or_default();
                let kind = c.u16().unwrap_or_default();
                let cookie = c.u64().unwrap_or_default();
                let len = if extended {
                    let _offset = c.u64();
                    c.u64().unwrap_or_default()
                } else {
                    u64::from(c.u32().unwrap_or_default())
                };
                let Some(request) = lookup(cookie) else {
                    return fail(format!("reply chunk with cookie {cookie}, which no request in flight has"));
                };
                let done = flags & REPLY_FLAG_DONE != 0;
                // How much of the payload is read here: all but a data chunk's data.
                let limit = match kind {
                    REPLY_TYPE_NONE => 0,
                    REPLY_TYPE_OFFSET_DATA => 8,
                    REPLY_TYPE_OFFSET_HOLE => 12,
                    REPLY_TYPE_BLOCK_STATUS => 4 + 8 * MAX_REPLY_EXTENTS,
                    REPLY_TYPE_BLOCK_STATUS_EXT => 8 + 16 * MAX_REPLY_EXTENTS,
                    _ => 6 + 65535 + 8,
                };
                let fixed = if kind == REPLY_TYPE_OFFSET_DATA { len.min(8) } else { len };
                if fixed > limit || (kind == REPLY_TYPE_OFFSET_DATA && len < 9) {
                    return fail(format!("reply chunk of type {kind} with a payload of {len} bytes"));
                }
                if kind == REPLY_TYPE_NONE {
                    self.state = ReplyState::Magic;
                    if !done {
                        return fail("NBD_REPLY_TYPE_NONE chunk without the DONE flag");
                    }
                    return Ok(Some(Reply { cookie, done, body: ReplyBody::Ok }));
                }
                self.state = ReplyState::Payload { cookie, flags, kind, len: fixed as usize, total: len, request };
                if fixed == 0 {
                    return self.payload(&[]);
                }
                Ok(None)
            }
            ReplyState::Payload { .. } => self.payload(bytes),
        }
    }

    /// The fixed part of a chunk's payload has arrived.
    fn payload(&mut self, bytes: &[u8]) -> Result<Option<Reply>, ClientError> {
        let ReplyState::Payload { cookie, flags, kind, total, request, .. } = self.state else {
            return fail("reply: payload out of order");
        };
        self.state = ReplyState::Magic;
        let done = flags & REPLY_FLAG_DONE != 0;
        let mut c = Cursor::new(bytes);
        let within = |start: u64, len: u64, what: &str| -> Result<u64, ClientError> {
            let end = request.offset.saturating_add(request.length);
            if start < request.offset || start.checked_add(len).is_none_or(|e| e > end) || len == 0 {
                return fail(format!(
                    "{what} chunk at offset {start} length {len} is outside the request at offset {} length {}",
                    request.offset, request.length
                ));
            }
            Ok(start - request.offset)
        };
        let body = match kind {
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                if request.kind != CMD_READ {
                    return fail(format!("read data chunk in the reply to command {}", request.kind));
                }
                let start = c.u64().unwrap_or_default();
                if kind == REPLY_TYPE_OFFSET_HOLE {
                    let len = u64::from(c.u32().unwrap_or_default());
                    ReplyBody::Hole { at: within(start, len, "hole")?, len }
                } else {
                    // The data follows: what the header announced beyond the 8-byte offset.
                    let len = total - 8;
                    ReplyBody::Data { at: within(start, len, "data")?, len }
                }
            }
            REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
                if request.kind != CMD_BLOCK_STATUS {
                    return fail(format!("block status chunk in the reply to command {}", request.kind));
                }
                let ext = kind == REPLY_TYPE_BLOCK_STATUS_EXT;
                if ext != self.extended {
                    return fail("block status chunk of the wrong width for the headers negotiated");
                }
                let context = c.u32().unwrap_or_default();
                let count = if ext { u64::from(c.u32().unwrap_or_default()) } else { (c.remaining() / 8) as u64 };
                let each = if ext { 16 } else { 8 };
                if count == 0 || c.remaining() as u64 != count * each {
                    return fail(format!("block status chunk of {} bytes with {count} runs", bytes.len()));
                }
                let mut runs = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let (len, flags) = if ext {
                        (c.u64().unwrap_or_default(), c.u64().unwrap_or_default() as u32)
                    } else {
                        (u64::from(c.u32().unwrap_or_default()), c.u32().unwrap_or_default())
                    };
                    runs.push((len, flags));
                }
                ReplyBody::Extents { context, runs }
            }
            k if k & 0x8000 != 0 => {
                let errno = c.u32().unwrap_or_default();
                let message_len = c.u16().map(usize::from);
                let message = message_len.and_then(|n| c.bytes(n)).map(String::from_utf8_lossy);
                let (Some(message), true) = (message, errno != 0) else {
                    return fail(format!("malformed error chunk of {} bytes (errno {errno})", bytes.len()));
                };
                let message = message.into_owned();
                let message = match (k, c.u64()) {
                    (REPLY_TYPE_ERROR_OFFSET, Some(at)) => format!("{message} (at offset {at})"),
                    _ => message,
                };
                ReplyBody::Error { errno, message }
            }
            other => return fail(format!("unknown reply chunk type {other}")),
        };
        Ok(Some(Reply { cookie, done, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::negotiation::{ExportInfo, Exports, Negotiated, Negotiation, NegotiationConfig, OptionError, Step};
    use crate::transmission::{Replies, ReplyHeader};
    use crate::TlsPolicy;

    struct Disk;
    impl Exports for Disk {
        fn list(&mut self) -> Result<Vec<(String, Option<String>)>, OptionError> {
            Ok(vec![(String::new(), None)])
        }
        fn open(&mut self, name: &str, _keep: bool) -> Result<ExportInfo, OptionError> {
            if name == "missing" {
                return Err(OptionError::new(REP_ERR_UNKNOWN, "no export 'missing'"));
            }
            Ok(ExportInfo {
                name: name.into(),
                size: 1 << 20,
                flags: FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_TRIM | FLAG_CAN_MULTI_CONN,
                block_size: (512, 4096, 1 << 25),
                description: Some("a disk".into()),
            })
        }
        fn meta_contexts(&mut self, _name: &str) -> Result<Vec<String>, OptionError> {
            Ok(vec!["qemu:other".into(), BASE_ALLOCATION.into()])
        }
    }

    /// Runs our client against the server's negotiation machine in memory.
    fn handshake(client: ClientConfig, server: NegotiationConfig) -> Result<(ServerExport, Negotiated), ClientError> {
        let mut neg = Negotiation::new(server);
        let mut hs = Handshake::new(client);
        let mut s2c: Vec<u8> = neg.greeting().to_vec();
        let mut c2s: Vec<u8> = Vec::new();
        let mut flags_read = false;
        let mut negotiated = None;
        for _ in 0..100 {
            while hs.wants() > 0 && s2c.len() >= hs.wants() {
                let chunk: Vec<u8> = s2c.drain(..hs.wants()).collect();
                match hs.feed(&chunk)? {
                    HandshakeEvent::Continue => {}
                    HandshakeEvent::StartTls => hs.tls_started(),
                    HandshakeEvent::Done(export) => return Ok((export, negotiated.expect("server finished"))),
                    HandshakeEvent::Listed(_) => panic!("not listing"),
                }
                c2s.extend(hs.output());
            }
            if !flags_read && c2s.len() >= 4 {
                neg.client_flags(c2s.drain(..4).collect::<Vec<_>>().try_into().unwrap()).unwrap();
                flags_read = true;
            }
            while flags_read && c2s.len() >= 16 {
                let header = neg.option_header(c2s[..16].try_into().unwrap()).unwrap();
                let data: Vec<u8> = c2s.drain(..16 + header.length as usize).skip(16).collect();
                match neg.option(header, &data, &mut Disk) {
                    Step::Reply(out) => s2c.extend(out),
                    Step::StartTls(out) => {
                        s2c.extend(out);
                        neg.tls_started();
                    }
                    Step::Transmission(out, n) => {
                        s2c.extend(out);
                        negotiated = Some(n);
                    }
                    Step::Close(out, why) => {
                        s2c.extend(out);
                        return Err(ClientError(format!("server closed: {why}")));
                    }
                }
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn everything_is_negotiated_with_our_server() {
        let (e, n) = handshake(ClientConfig::new(""), NegotiationConfig::default()).unwrap();
        assert!(e.structured && e.extended && !e.tls && !e.oldstyle);
        assert_eq!(e.size, 1 << 20);
        assert_eq!(e.flags, n.export.flags);
        assert!(e.has(FLAG_CAN_MULTI_CONN) && e.has(FLAG_SEND_TRIM));
        assert_eq!(e.base_allocation, Some(2), "base:allocation is the server's second context");
        assert_eq!(n.contexts.len(), 1);
        assert_eq!(e.block_size, Some((512, 4096, 1 << 25)));
        assert_eq!(e.description.as_deref(), Some("a disk"));
    }

    #[test]
    fn extended_headers_refused_falls_back_to_structured_replies() {
        let server = NegotiationConfig { extended_headers: false, ..Default::default() };
        let (e, _) = handshake(ClientConfig::new(""), server).unwrap();
        assert!(e.structured && !e.extended);
        assert_eq!(e.base_allocation, Some(2));
        let server = NegotiationConfig { structured_replies: false, ..Default::default() };
        let (e, n) = handshake(ClientConfig::new(""), server).unwrap();
        assert!(!e.structured && !e.extended && e.base_allocation.is_none() && !n.structured);
    }

    #[test]
    fn tls_policies() {
        let tls = |c, s| {
            let client = ClientConfig { tls: c, ..ClientConfig::new("") };
            handshake(client, NegotiationConfig { tls: s, ..Default::default() })
        };
        assert!(tls(ClientTls::Require, TlsPolicy::On).unwrap().0.tls);
        assert!(tls(ClientTls::On, TlsPolicy::Require).unwrap().0.extended, "options go on after STARTTLS");
        assert!(!tls(ClientTls::On, TlsPolicy::Off).unwrap().0.tls, "tls=on goes on in plain text");
        let e = tls(ClientTls::Require, TlsPolicy::Off).unwrap_err();
        assert!(e.0.contains("refused TLS"), "{e}");
        let e = tls(ClientTls::Off, TlsPolicy::Require).unwrap_err();
        assert!(e.0.contains("requires TLS"), "{e}");
    }

    #[test]
    fn exports_are_listed() {
        let mut neg = Negotiation::new(NegotiationConfig::default());
        let mut hs = Handshake::new(ClientConfig { list: true, ..ClientConfig::new("") });
        let g = neg.greeting();
        assert_eq!(hs.feed(&g[..16]).unwrap(), HandshakeEvent::Continue);
        assert_eq!(hs.feed(&g[16..]).unwrap(), HandshakeEvent::Continue);
        let out = hs.output();
        neg.client_flags(out[..4].try_into().unwrap()).unwrap();
        let header = neg.option_header(out[4..20].try_into().unwrap()).unwrap();
        assert_eq!(header.option, OPT_LIST);
        let Step::Reply(mut reply) = neg.option(header, &[], &mut Disk) else { panic!() };
        loop {
            let chunk: Vec<u8> = reply.drain(..hs.wants()).collect();
            match hs.feed(&chunk).unwrap() {
                HandshakeEvent::Continue => {}
                HandshakeEvent::Listed(list) => {
                    assert_eq!(list, vec![(String::new(), None)]);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let abort = hs.output();
        assert_eq!(neg.option_header(abort[..16].try_into().unwrap()).unwrap().option, OPT_ABORT);
    }

    #[test]
    fn an_unknown_export_is_named_in_the_error() {
        let e = handshake(ClientConfig::new("missing"), NegotiationConfig::default()).unwrap_err();
        assert!(e.0.contains("'missing'") && e.0.contains("unknown export"), "{e}");
    }

    #[test]
    fn old_servers() {
        // Oldstyle: the greeting holds the export.
        let mut hs = Handshake::new(ClientConfig::new(""));
        let g = crate::oldstyle_greeting(4096, FLAG_HAS_FLAGS | FLAG_READ_ONLY);
        assert_eq!(hs.feed(&g[..16]).unwrap(), HandshakeEvent::Continue);
        let HandshakeEvent::Done(e) = hs.feed(&g[16..]).unwrap() else { panic!() };
        assert!(e.oldstyle && e.has(FLAG_READ_ONLY) && e.size == 4096 && !e.structured);
        // Newstyle without fixed newstyle: straight to NBD_OPT_EXPORT_NAME.
        let (e, _) =
            handshake(ClientConfig::new("x"), NegotiationConfig { handshake_flags: 0, ..Default::default() }).unwrap();
        assert!(!e.structured && e.size == 1 << 20);
        // Garbage.
        let mut hs = Handshake::new(ClientConfig::new(""));
        assert!(hs.feed(b"HTTP/1.1 200 OK\r\n"[..16].as_ref()).is_err());
    }

    fn decode_all(
        dec: &mut ReplyDecoder,
        mut input: &[u8],
        requests: &[(u64, InFlight)],
    ) -> Result<Vec<Reply>, ClientError> {
        let lookup = |cookie| requests.iter().find(|r| r.0 == cookie).map(|r| r.1);
        let mut out = Vec::new();
        while !input.is_empty() {
            let n = dec.wants();
            if input.len() < n {
                return fail("truncated");
            }
            let (head, rest) = input.split_at(n);
            input = rest;
            if let Some(r) = dec.feed(head, &lookup)? {
                if let ReplyBody::Data { len, .. } = r.body {
                    input = &input[len as usize..];
                }
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn replies_from_our_server_decode() {
        for extended in [false, true] {
            let r = Replies { structured: true, extended };
            let read = InFlight { kind: CMD_READ, offset: 4096, length: 8192 };
            let status = InFlight { kind: CMD_BLOCK_STATUS, offset: 0, length: 1 << 20 };
            let mut wire = Vec::new();
            wire.extend_from_slice(r.read_data(7, 4096, 4096, 4096, false).as_bytes());
            wire.extend_from_slice(&[0xaa; 4096]);
            wire.extend_from_slice(r.read_hole(7, 4096, 8192, 4096, true).as_bytes());
            r.block_status(&mut wire, 8, 0, 1, &[(65536, 3), (1 << 19, 0)], true);
            r.error(&mut wire, 9, 0, EIO, "disk on fire");
            let replies =
                decode_all(&mut ReplyDecoder::new(true, extended), &wire, &[(7, read), (8, status), (9, status)])
                    .unwrap();
            assert_eq!(replies[0].body, ReplyBody::Data { at: 0, len: 4096 });
            assert_eq!(replies[1], Reply { cookie: 7, done: true, body: ReplyBody::Hole { at: 4096, len: 4096 } });
            assert_eq!(replies[2].body, ReplyBody::Extents { context: 1, runs: vec![(65536, 3), (1 << 19, 0)] });
            assert_eq!(replies[3].body, ReplyBody::Error { errno: EIO, message: "disk on fire".into() });
        }
        // Simple replies: a read's data follows the header.
        let r = Replies { structured: false, extended: false };
        let mut wire = r.ok(1, 0).as_bytes().to_vec();
        wire.extend_from_slice(&[1; 512]);
        let read = InFlight { kind: CMD_READ, offset: 0, length: 512 };
        let replies = decode_all(&mut ReplyDecoder::new(false, false), &wire, &[(1, read)]).unwrap();
        assert_eq!(replies, vec![Reply { cookie: 1, done: true, body: ReplyBody::Data { at: 0, len: 512 } }]);
    }

    #[test]
    fn hostile_replies_are_errors() {
        let r = Replies { structured: true, extended: false };
        let read = InFlight { kind: CMD_READ, offset: 4096, length: 4096 };
        let reqs = [(7, read)];
        let bad = |wire: &[u8]| decode_all(&mut ReplyDecoder::new(true, false), wire, &reqs).unwrap_err().0;
        // Data past the request, before it, a hole of zero bytes, an unknown cookie.
        let mut w = r.read_data(7, 4096, 6144, 4096, true).as_bytes().to_vec();
        w.extend_from_slice(&[0; 4096]);
        assert!(bad(&w).contains("outside the request"));
        assert!(bad(r.read_hole(7, 0, 0, 4096, true).as_bytes()).contains("outside"));
        assert!(bad(r.read_hole(7, 0, 4096, 0, true).as_bytes()).contains("outside"));
        assert!(bad(r.read_hole(8, 0, 4096, 10, true).as_bytes()).contains("cookie 8"));
        // A block status chunk announcing gigabytes, an error chunk with errno 0, a bad magic.
        let mut huge = ReplyHeader::chunk(false, 1, REPLY_TYPE_BLOCK_STATUS, 7, 0, u32::MAX as u64).as_bytes().to_vec();
        huge.extend_from_slice(&[0; 64]);
        assert!(bad(&huge).contains("payload of"));
        let mut w = Vec::new();
        r.error(&mut w, 7, 0, 0, "no error");
        assert!(bad(&w).contains("malformed error"));
        assert!(bad(&[0xde, 0xad, 0xbe, 0xef]).contains("bad reply magic"));
        // A block status chunk in a read's reply; a simple reply with data after structured replies.
        let mut w = Vec::new();
        r.block_status(&mut w, 7, 0, 1, &[(4096, 0)], true);
        assert!(bad(&w).contains("block status chunk in the reply"));
        assert!(bad(ReplyHeader::simple(7, 0).as_bytes()).contains("simple reply"));
    }

    #[test]
    fn request_headers_round_trip_through_the_server_parser() {
        for extended in [false, true] {
            let mut out = Vec::new();
            encode_request(&mut out, extended, CMD_FLAG_FUA, CMD_WRITE, 42, 1 << 40, 65536);
            let req = crate::Request::parse(&out, extended).unwrap();
            assert_eq!((req.flags, req.kind, req.cookie, req.offset, req.length), (1, CMD_WRITE, 42, 1 << 40, 65536));
        }
    }
}
