//! Helpers shared by the fuzz targets: a reader over the fuzz input, the one fake backend
//! (`FuzzExports`) the handshake target talks to, and checks of what the server sends.
//!
//! If the `Exports` trait or `Negotiated` of the protocol crate change, `FuzzExports` and
//! `negotiated` below are the places to adapt (and the meta context checks of the negotiation
//! target).

use nbdforge_protocol::consts::*;
use nbdforge_protocol::{ExportInfo, Exports, MetaContext, Negotiated, OptionError};

/// Takes fields off the front of the fuzz input; `None` once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    /// Drops up to `n` bytes, as a server drains data it refuses to store.
    pub fn skip(&mut self, n: u64) {
        let n = n.min(self.0.len() as u64) as usize;
        self.0 = &self.0[n..];
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).map(|b| b.try_into().unwrap())
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

/// Big-endian integer from a slice of 2, 4 or 8 bytes.
pub fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x))
}

/// One call the negotiation made to the backend.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub keep: bool,
    pub result: Option<ExportInfo>,
}

/// A fixed little set of exports: "" is the default and resolves to "disk".
pub struct FuzzExports {
    /// `list()` fails with `ERR_POLICY`.
    pub list_fails: bool,
    /// Every `open`, in order.
    pub calls: Vec<Call>,
    /// Number of `list` calls.
    pub lists: usize,
}

const ALL: [(&str, Option<&str>); 3] = [("disk", Some("a test disk")), ("ro", None), ("huge", Some("2^64-1 bytes"))];

impl FuzzExports {
    pub fn new(list_fails: bool) -> Self {
        FuzzExports { list_fails, calls: Vec::new(), lists: 0 }
    }

    /// What the backend says about `name`.
    pub fn lookup(name: &str) -> Result<ExportInfo, OptionError> {
        let rw = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
        let (name, size, flags, block_size) = match name {
            "" | "disk" => ("disk", 1 << 20, rw | FLAG_SEND_CACHE | FLAG_SEND_FAST_ZERO, (1, 4096, 32 << 20)),
            "ro" => ("ro", 0, FLAG_HAS_FLAGS | FLAG_READ_ONLY, (512, 4096, 1 << 20)),
            "huge" => ("huge", u64::MAX, rw | FLAG_CAN_MULTI_CONN, (4096, 4096, 4096)),
            "secret" => return Err(OptionError::new(REP_ERR_POLICY, "not for you")),
            _ => return Err(OptionError::new(REP_ERR_UNKNOWN, format!("no export '{name}'"))),
        };
        let description = ALL.iter().find(|e| e.0 == name).and_then(|e| e.1).map(String::from);
        Ok(ExportInfo { name: name.into(), size, flags, block_size, description })
    }
}

impl Exports for FuzzExports {
    fn list(&mut self) -> Result<Vec<(String, Option<String>)>, OptionError> {
        self.lists += 1;
        if self.list_fails {
            return Err(OptionError::new(REP_ERR_POLICY, "listing is off"));
        }
        Ok(ALL.iter().map(|(n, d)| (n.to_string(), d.map(String::from))).collect())
    }

    fn open(&mut self, name: &str, keep: bool) -> Result<ExportInfo, OptionError> {
        let result = Self::lookup(name);
        self.calls.push(Call { name: name.into(), keep, result: result.clone().ok() });
        result
    }

    fn meta_contexts(&mut self, name: &str) -> Result<Vec<String>, OptionError> {
        self.open(name, false)?;
        Ok(CONTEXTS.iter().map(|c| c.to_string()).collect())
    }
}

/// The meta contexts every export offers, in id order (id = position + 1).
pub const CONTEXTS: [&str; 3] = [BASE_ALLOCATION, "qemu:dirty-bitmap:a", "qemu:allocation-depth"];

/// A transmission state as a negotiation could end in; `block_status` says a meta context
/// (`base:allocation`) was selected.
pub fn negotiated(
    size: u64,
    flags: u16,
    block_size: (u32, u32, u32),
    structured: bool,
    extended: bool,
    block_status: bool,
) -> Negotiated {
    let export = ExportInfo { name: "fuzz".into(), size, flags, block_size, description: None };
    let contexts = if block_status {
        vec![MetaContext { id: BASE_ALLOCATION_ID, name: BASE_ALLOCATION.into() }]
    } else {
        Vec::new()
    };
    Negotiated { export, structured, extended, contexts }
}

/// One option reply as sent.
#[derive(Debug)]
pub struct OptReply<'a> {
    pub reply: u32,
    pub data: &'a [u8],
}

/// Whether a reply ends the answer to an option (an ACK or an error).
pub fn is_final(reply: u32) -> bool {
    reply == REP_ACK || reply & 0x8000_0000 != 0
}

/// Splits `bytes` into option replies to `option`, asserting that each starts with the option
/// reply magic, names the option, and has a length field that matches its data; that exactly the
/// last one is final; and that error messages are UTF-8 of at most 4096 bytes.
pub fn option_replies(mut bytes: &[u8], option: u32) -> Vec<OptReply<'_>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 20, "option reply header cut short: {bytes:02x?}");
        assert_eq!(be(&bytes[..8]), OPTION_REPLY_MAGIC, "option reply magic");
        assert_eq!(be(&bytes[8..12]) as u32, option, "option reply names another option");
        let reply = be(&bytes[12..16]) as u32;
        let len = be(&bytes[16..20]) as usize;
        assert!(bytes.len() - 20 >= len, "option reply length field {len} past the end");
        let data = &bytes[20..20 + len];
        if reply & 0x8000_0000 != 0 {
            assert!(len <= 4096, "error message of {len} bytes");
            assert!(std::str::from_utf8(data).is_ok(), "error message not UTF-8");
        }
        out.push(OptReply { reply, data });
        bytes = &bytes[20 + len..];
    }
    assert!(!out.is_empty(), "no reply to option {option}");
    let last = out.len() - 1;
    for (i, r) in out.iter().enumerate() {
        assert_eq!(is_final(r.reply), i == last, "final reply not last: {out:?}");
    }
    out
}
