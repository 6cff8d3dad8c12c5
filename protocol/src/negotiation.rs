//! The handshake phase as a state machine with no I/O.
//!
//! The server reads bytes from its socket and hands them here; this module decides what they mean
//! and returns the bytes to send back. Questions only the backend can answer (which exports exist,
//! how big one is) go through the [`Exports`] trait, so the rules of the spec, including the
//! STARTTLS rules, are testable without a socket.
//!
//! Driving it (newstyle):
//! 1. send [`Negotiation::greeting`]; read 4 bytes and pass them to [`Negotiation::client_flags`];
//! 2. loop: read a 16-byte option header, pass it to [`Negotiation::option_header`]; read (or, if
//!    it says so, discard) the option data and pass it to [`Negotiation::option`]; act on the
//!    [`Step`] it returns, until [`Step::Transmission`] or a close.

use crate::consts::*;
use crate::wire::Cursor;
use crate::ProtocolError;

/// Whether and how TLS is offered (`--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS is refused with `ERR_POLICY`.
    Off,
    /// STARTTLS is accepted; plain clients are served too.
    On,
    /// Every option but STARTTLS and ABORT is refused with `ERR_TLS_REQD` until TLS is up.
    Require,
}

/// Limits and policy for one connection's handshake.
#[derive(Debug, Clone, Copy)]
pub struct NegotiationConfig {
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Options a client may send before it is cut off.
    pub max_options: u32,
    /// Largest option data accepted; longer data is discarded unread and refused with `ERR_TOO_BIG`.
    pub max_option_len: u32,
    /// Offer `NBD_OPT_STRUCTURED_REPLY` (`--no-sr` turns it off).
    pub structured_replies: bool,
    /// Offer meta contexts (`--no-meta-contexts` turns them off).
    pub meta_contexts: bool,
    /// Offer extended headers.
    pub extended_headers: bool,
    /// Mask over the handshake flags offered (`FIXED_NEWSTYLE`, `NO_ZEROES`), to test old clients.
    pub handshake_flags: u16,
}

impl Default for NegotiationConfig {
    fn default() -> Self {
        NegotiationConfig {
            tls: TlsPolicy::Off,
            max_options: 1024,
            max_option_len: 64 * 1024,
            structured_replies: true,
            meta_contexts: true,
            extended_headers: true,
            handshake_flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
        }
    }
}

/// What the server tells a client about an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name (what `""` resolved to).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags the backend supports. The negotiation adds the flags that depend on what
    /// the client negotiated (`SEND_DF`, `BLOCK_STAT_PAYLOAD`).
    pub flags: u16,
    /// Block size constraints: minimum, preferred, maximum.
    pub block_size: (u32, u32, u32),
    /// Optional description.
    pub description: Option<String>,
}

/// An option refused by the backend: an `NBD_REP_ERR_*` code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// `REP_ERR_*`.
    pub reply: u32,
    /// Explanation sent as the error reply's data.
    pub message: String,
}

impl OptionError {
    /// An error reply with a message.
    pub fn new(reply: u32, message: impl Into<String>) -> Self {
        OptionError { reply, message: message.into() }
    }
}

/// The backend side of negotiation, implemented by the server.
pub trait Exports {
    /// Exports for `NBD_OPT_LIST`: names and descriptions.
    fn list(&mut self) -> Result<Vec<(String, Option<String>)>, OptionError>;
    /// Looks up (and for `keep`, opens for the transmission phase) the export `name`.
    fn open(&mut self, name: &str, keep: bool) -> Result<ExportInfo, OptionError>;
    /// The block status contexts the export `name` offers, by full name, in a fixed order: a
    /// context's id is its position in this list plus one.
    fn meta_contexts(&mut self, name: &str) -> Result<Vec<String>, OptionError>;
}

/// A meta context selected by the client: the id used on the wire and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    /// The id in block status replies.
    pub id: u32,
    /// The full name (`base:allocation`).
    pub name: String,
}

/// The state the transmission phase starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The export chosen, with the final transmission flags.
    pub export: ExportInfo,
    /// Structured replies are on.
    pub structured: bool,
    /// Extended headers are on (64-bit requests and replies).
    pub extended: bool,
    /// The meta contexts selected for this export; block status is allowed when there is one.
    pub contexts: Vec<MetaContext>,
}

/// What the server must do after an option.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the bytes and read the next option.
    Reply(Vec<u8>),
    /// Send the bytes (an ACK), run the TLS handshake, call [`Negotiation::tls_started`], continue.
    StartTls(Vec<u8>),
    /// Send the bytes (possibly none) and close the connection.
    Close(Vec<u8>, String),
    /// Send the bytes and enter the transmission phase.
    Transmission(Vec<u8>, Negotiated),
}

/// Header of an option sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option number.
    pub option: u32,
    /// Bytes of data that follow.
    pub length: u32,
    /// The data is over the limit: discard it without storing it and pass an empty slice.
    pub discard: bool,
}

/// The handshake state of one connection.
#[derive(Debug)]
pub struct Negotiation {
    config: NegotiationConfig,
    no_zeroes: bool,
    fixed: bool,
    tls_active: bool,
    options_seen: u32,
    structured: bool,
    extended: bool,
    /// Export name and the contexts selected for it.
    meta: Option<(String, Vec<MetaContext>)>,
}

impl Negotiation {
    /// A handshake about to start.
    pub fn new(config: NegotiationConfig) -> Self {
        Negotiation {
            config,
            no_zeroes: false,
            fixed: false,
            tls_active: false,
            options_seen: 0,
            structured: false,
            extended: false,
            meta: None,
        }
    }

    fn offered(&self) -> u16 {
        self.config.handshake_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
    }

    /// The 18 bytes the server sends first.
    pub fn greeting(&self) -> [u8; 18] {
        let mut g = [0u8; 18];
        g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        g[16..].copy_from_slice(&self.offered().to_be_bytes());
        g
    }

    /// Takes the client's 4-byte flags. A flag the server did not offer ends the connection.
    pub fn client_flags(&mut self, bytes: [u8; 4]) -> Result<(), ProtocolError> {
        let flags = u32::from_be_bytes(bytes);
        let known = u32::from(self.offered());
        if flags & !known != 0 {
            return Err(ProtocolError::UnknownClientFlags(flags));
        }
        self.fixed = flags & FLAG_C_FIXED_NEWSTYLE != 0;
        self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    /// Whether TLS is running on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Takes a 16-byte option header.
    pub fn option_header(&mut self, bytes: &[u8; 16]) -> Result<OptionHeader, ProtocolError> {
        let mut c = Cursor::new(bytes);
        let magic = c.u64().unwrap_or_default();
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadMagic { what: "option", expected: IHAVEOPT, got: magic });
        }
        self.options_seen += 1;
        if self.options_seen > self.config.max_options {
            return Err(ProtocolError::TooManyOptions(self.config.max_options));
        }
        let option = c.u32().unwrap_or_default();
        let length = c.u32().unwrap_or_default();
        Ok(OptionHeader { option, length, discard: length > self.config.max_option_len })
    }

    /// The TLS handshake after a [`Step::StartTls`] succeeded: everything negotiated before is
    /// forgotten, as the spec requires.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.structured = false;
        self.extended = false;
        self.meta = None;
    }

    /// Handles one option. `data` is the option's data, or empty when the header said to discard it.
    pub fn option(&mut self, header: OptionHeader, data: &[u8], exports: &mut dyn Exports) -> Step {
        let opt = header.option;
        let mut out = Vec::new();
        if self.config.tls == TlsPolicy::Require && !self.tls_active && !matches!(opt, OPT_STARTTLS | OPT_ABORT) {
            if opt == OPT_EXPORT_NAME {
                return Step::Close(out, "client asked for an export before STARTTLS, which is required".into());
            }
            error_reply(&mut out, opt, REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first");
            return Step::Reply(out);
        }
        // Checked for every option, STARTTLS included: discarded data must not pass for none.
        if header.discard {
            if opt == OPT_EXPORT_NAME {
                return Step::Close(out, format!("export name of {} bytes is too long", header.length));
            }
            let msg =
                format!("option data of {} bytes is over the limit of {}", header.length, self.config.max_option_len);
            error_reply(&mut out, opt, REP_ERR_TOO_BIG, &msg);
            return Step::Reply(out);
        }
        self.dispatch(header, data, exports)
    }

    fn dispatch(&mut self, header: OptionHeader, data: &[u8], exports: &mut dyn Exports) -> Step {
        let mut out = Vec::new();
        let opt = header.option;
        match opt {
            OPT_EXPORT_NAME => {
                let Ok(name) = std::str::from_utf8(data) else {
                    return Step::Close(out, "export name is not UTF-8".into());
                };
                match exports.open(name, true) {
                    Ok(export) => {
                        let negotiated = self.negotiated(name, export);
                        out.extend_from_slice(&negotiated.export.size.to_be_bytes());
                        out.extend_from_slice(&negotiated.export.flags.to_be_bytes());
                        if !self.no_zeroes {
                            out.extend_from_slice(&[0u8; 124]);
                        }
                        Step::Transmission(out, negotiated)
                    }
                    Err(e) => Step::Close(out, format!("export '{name}': {}", e.message)),
                }
            }
            OPT_ABORT => {
                option_reply(&mut out, opt, REP_ACK, &[]);
                Step::Close(out, "client sent NBD_OPT_ABORT".into())
            }
            OPT_LIST => {
                if !data.is_empty() {
                    error_reply(&mut out, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                    return Step::Reply(out);
                }
                match exports.list() {
                    Ok(list) => {
                        for (name, description) in list {
                            let mut d = Vec::with_capacity(4 + name.len());
                            d.extend_from_slice(&wire_len(name.len()).to_be_bytes());
                            d.extend_from_slice(name.as_bytes());
                            if let Some(desc) = description {
                                d.extend_from_slice(desc.as_bytes());
                            }
                            option_reply(&mut out, opt, REP_SERVER, &d);
                        }
                        option_reply(&mut out, opt, REP_ACK, &[]);
                    }
                    Err(e) => error_reply(&mut out, opt, e.reply, &e.message),
                }
                Step::Reply(out)
            }
            OPT_STARTTLS => {
                if self.config.tls == TlsPolicy::Off {
                    error_reply(&mut out, opt, REP_ERR_POLICY, "TLS is not enabled on this server (--tls=off)");
                } else if !data.is_empty() {
                    error_reply(&mut out, opt, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
                } else if self.tls_active {
                    error_reply(&mut out, opt, REP_ERR_INVALID, "TLS is already active");
                } else {
                    option_reply(&mut out, opt, REP_ACK, &[]);
                    return Step::StartTls(out);
                }
                Step::Reply(out)
            }
            OPT_INFO | OPT_GO => self.info_or_go(opt, data, exports, out),
            OPT_STRUCTURED_REPLY => {
                if !self.config.structured_replies {
                    error_reply(&mut out, opt, REP_ERR_UNSUP, "structured replies are disabled (--no-sr)");
                } else if !data.is_empty() {
                    error_reply(&mut out, opt, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
                } else if self.extended {
                    error_reply(&mut out, opt, REP_ERR_EXT_HEADER_REQD, "extended headers are already negotiated");
                } else {
                    self.structured = true;
                    option_reply(&mut out, opt, REP_ACK, &[]);
                }
                Step::Reply(out)
            }
            OPT_EXTENDED_HEADERS => {
                if !self.config.extended_headers || !self.config.structured_replies {
                    error_reply(&mut out, opt, REP_ERR_UNSUP, "extended headers are disabled");
                } else if !data.is_empty() {
                    error_reply(&mut out, opt, REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS takes no data");
                } else {
                    self.extended = true;
                    self.structured = true;
                    option_reply(&mut out, opt, REP_ACK, &[]);
                }
                Step::Reply(out)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(opt, data, exports, &mut out);
                Step::Reply(out)
            }
            _ => {
                error_reply(&mut out, opt, REP_ERR_UNSUP, &format!("option {opt} is not supported"));
                Step::Reply(out)
            }
        }
    }

    fn info_or_go(&mut self, opt: u32, data: &[u8], exports: &mut dyn Exports, mut out: Vec<u8>) -> Step {
        let mut c = Cursor::new(data);
        let parsed = (|| {
            let name = c.string32()?;
            let n = c.u16()? as usize;
            let mut requests = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                requests.push(c.u16()?);
            }
            (c.remaining() == 0).then_some((name, requests))
        })();
        let Some((name, requests)) = parsed else {
            error_reply(&mut out, opt, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO data (name length, request count)");
            return Step::Reply(out);
        };
        let export = match exports.open(name, opt == OPT_GO) {
            Ok(e) => e,
            Err(e) => {
                error_reply(&mut out, opt, e.reply, &e.message);
                return Step::Reply(out);
            }
        };
        let negotiated = self.negotiated(name, export);
        let export = &negotiated.export;
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&export.size.to_be_bytes());
        info.extend_from_slice(&export.flags.to_be_bytes());
        option_reply(&mut out, opt, REP_INFO, &info);
        if requests.contains(&INFO_NAME) {
            let mut info = INFO_NAME.to_be_bytes().to_vec();
            info.extend_from_slice(export.name.as_bytes());
            option_reply(&mut out, opt, REP_INFO, &info);
        }
        if let (true, Some(desc)) = (requests.contains(&INFO_DESCRIPTION), &export.description) {
            let mut info = INFO_DESCRIPTION.to_be_bytes().to_vec();
            info.extend_from_slice(desc.as_bytes());
            option_reply(&mut out, opt, REP_INFO, &info);
        }
        // Sent whether asked or not: clients that did not ask may still use it, and the spec lets
        // the server send it unrequested.
        let (min, pref, max) = export.block_size;
        let mut info = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [min, pref, max] {
            info.extend_from_slice(&v.to_be_bytes());
        }
        option_reply(&mut out, opt, REP_INFO, &info);
        option_reply(&mut out, opt, REP_ACK, &[]);
        if opt == OPT_INFO {
            return Step::Reply(out);
        }
        Step::Transmission(out, negotiated)
    }

    /// The transmission state for `export`, reached through the name the client asked for.
    fn negotiated(&self, requested: &str, mut export: ExportInfo) -> Negotiated {
        if self.structured {
            export.flags |= FLAG_SEND_DF;
        }
        if self.extended {
            export.flags |= FLAG_BLOCK_STAT_PAYLOAD;
        }
        // Contexts are selected for a name; they hold only if the client goes to that export.
        let contexts = match &self.meta {
            Some((n, contexts)) if n == requested || *n == export.name => contexts.clone(),
            _ => Vec::new(),
        };
        Negotiated { export, structured: self.structured, extended: self.extended, contexts }
    }

    fn meta_context(&mut self, opt: u32, data: &[u8], exports: &mut dyn Exports, out: &mut Vec<u8>) {
        if !self.config.meta_contexts {
            error_reply(out, opt, REP_ERR_UNSUP, "meta contexts are disabled");
            return;
        }
        if !self.structured {
            error_reply(out, opt, REP_ERR_INVALID, "structured replies must be negotiated before meta contexts");
            return;
        }
        let mut c = Cursor::new(data);
        let parsed = (|| {
            let name = c.string32()?;
            let n = c.u32()? as usize;
            let mut queries = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                queries.push(c.string32()?);
            }
            (c.remaining() == 0).then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            error_reply(
                out,
                opt,
                REP_ERR_INVALID,
                "malformed meta context data (name length, query count or a query length)",
            );
            return;
        };
        let offered = match exports.meta_contexts(name) {
            Ok(offered) => offered,
            Err(e) => {
                error_reply(out, opt, e.reply, &e.message);
                return;
            }
        };
        let set = opt == OPT_SET_META_CONTEXT;
        let mut chosen = Vec::new();
        for (i, context) in offered.iter().enumerate() {
            // An empty query list means "all" for LIST and "none" for SET; a query ending in ':'
            // ("base:", "qemu:dirty-bitmap:") matches every context it is the start of.
            let wanted = if queries.is_empty() {
                !set
            } else {
                queries.iter().any(|q| q == context || (q.ends_with(':') && context.starts_with(q)))
            };
            let Ok(id) = u32::try_from(i + 1) else { break };
            if wanted {
                let mut d = id.to_be_bytes().to_vec();
                d.extend_from_slice(context.as_bytes());
                option_reply(out, opt, REP_META_CONTEXT, &d);
                chosen.push(MetaContext { id, name: context.clone() });
            }
        }
        if set {
            self.meta = Some((name.to_string(), chosen));
        }
        option_reply(out, opt, REP_ACK, &[]);
    }
}

/// A length as the 32-bit field of the wire. Everything the server sends during negotiation is
/// built from bounded parts (names and messages truncated to 4096 bytes, option data under the
/// option limit), so this only fails on a bug; it saturates rather than wrap.
fn wire_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends an option reply.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&wire_len(data.len()).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an error reply with a message for the user.
pub fn error_reply(out: &mut Vec<u8>, option: u32, reply: u32, message: &str) {
    option_reply(out, option, reply, truncate(message).as_bytes());
}

/// Strings on the wire must not exceed 4096 bytes.
pub(crate) fn truncate(s: &str) -> &str {
    if s.len() <= 4096 {
        return s;
    }
    let mut end = 4096;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The oldstyle greeting: magic, size, flags and 124 zero bytes, after which the client is in the
/// transmission phase at once.
pub fn oldstyle_greeting(size: u64, flags: u16) -> Vec<u8> {
    let mut g = Vec::with_capacity(152);
    g.extend_from_slice(&NBDMAGIC.to_be_bytes());
    g.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
    g.extend_from_slice(&size.to_be_bytes());
    g.extend_from_slice(&u32::from(flags).to_be_bytes());
    g.extend_from_slice(&[0u8; 124]);
    g
}
