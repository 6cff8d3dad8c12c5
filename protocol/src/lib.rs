//! # nbdforge-protocol
//!
//! The NBD protocol (the `doc/proto.md` specification with the extended-headers extension) as data
//! and state machines, with no sockets in it: the server reads bytes and feeds them in, and sends
//! what comes out. That keeps every rule of the spec unit-testable and fuzzable.
//!
//! - [`consts`]: the numbers of the spec.
//! - [`negotiation`]: the handshake phase: greeting, options, STARTTLS rules, meta contexts.
//! - [`transmission`]: request headers, their checks, and reply headers.
//! - [`client`]: the client side, for proxying: the handshake, requests, and checked reply decoding.
//! - [`wire`]: reading big-endian fields out of received bytes without panicking.

#![warn(missing_docs)]

pub mod client;
pub mod consts;
pub mod negotiation;
pub mod transmission;
pub mod wire;

pub use negotiation::{
    oldstyle_greeting, ExportInfo, Exports, MetaContext, Negotiated, Negotiation, NegotiationConfig, OptionError,
    OptionHeader, Step, TlsPolicy,
};
pub use transmission::{Command, Refusal, Replies, ReplyHeader, Request, Session};

use std::fmt;

/// A violation by the peer after which the connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A magic number was wrong: the stream is out of sync.
    BadMagic {
        /// Which message.
        what: &'static str,
        /// The magic the spec requires.
        expected: u64,
        /// What the peer sent.
        got: u64,
    },
    /// The client set flags the server did not offer.
    UnknownClientFlags(u32),
    /// More options than the limit.
    TooManyOptions(u32),
    /// A header shorter than its fixed size.
    ShortHeader(usize),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadMagic { what, expected, got } => {
                write!(f, "bad {what} magic: expected 0x{expected:x}, client sent 0x{got:x}")
            }
            ProtocolError::UnknownClientFlags(flags) => {
                write!(f, "client sent flags 0x{flags:x}, which include flags the server did not offer")
            }
            ProtocolError::TooManyOptions(n) => write!(f, "client sent more than {n} options"),
            ProtocolError::ShortHeader(n) => write!(f, "header of {n} bytes is too short"),
        }
    }
}

impl std::error::Error for ProtocolError {}
