//! Small value types shared by plugins, filters and the server: capability levels, request flags,
//! thread models, block size constraints and exports.

/// How well a backend supports an operation that the core can emulate (zero, FUA, cache).
///
/// The ordering matters: `None < Emulate < Native`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Support {
    /// Not supported: the server does not advertise it and refuses requests for it.
    None,
    /// The core emulates it (zero by writing zeroes, FUA by flushing, cache by reading).
    Emulate,
    /// The backend implements it itself.
    Native,
}

/// What a handle can do, as [`Handle::capabilities`](crate::Handle::capabilities) reports it.
///
/// The server advertises to clients exactly what this says (a read-only export never advertises
/// trim or zero), refuses requests for the rest, and emulates what is marked
/// [`Support::Emulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Writes are possible. The server also refuses writes when the export is read-only (`-r`).
    pub write: bool,
    /// `flush` does something (advertised as `NBD_FLAG_SEND_FLUSH`).
    pub flush: bool,
    /// Advertised as `NBD_FLAG_ROTATIONAL`.
    pub rotational: bool,
    /// `trim` is implemented.
    pub trim: bool,
    /// `zero` is implemented (`Native`) or the core writes zeroes instead (`Emulate`).
    pub zero: Support,
    /// `zero` with [`Flags::FAST_ZERO`] can be honoured; when false the core answers fast-zero
    /// requests with `ENOTSUP` without calling `zero`.
    pub fast_zero: bool,
    /// FUA is passed to writes (`Native`) or the core flushes after them (`Emulate`).
    pub fua: Support,
    /// Several connections see each other's flushed writes (`NBD_FLAG_CAN_MULTI_CONN`).
    pub multi_conn: bool,
    /// `extents` is implemented; otherwise the server reports everything as data.
    pub extents: bool,
    /// `cache` is implemented (`Native`) or the core reads and discards the range (`Emulate`).
    pub cache: Support,
}

impl Capabilities {
    /// Read-only with nothing optional: what a handle that says nothing gets.
    pub const READ_ONLY: Capabilities = Capabilities {
        write: false,
        flush: false,
        rotational: false,
        trim: false,
        zero: Support::None,
        fast_zero: false,
        fua: Support::None,
        multi_conn: false,
        extents: false,
        cache: Support::None,
    };

    /// Everything, natively: what a RAM disk offers.
    pub const ALL: Capabilities = Capabilities {
        write: true,
        flush: true,
        rotational: false,
        trim: true,
        zero: Support::Native,
        fast_zero: true,
        fua: Support::Native,
        multi_conn: true,
        extents: true,
        cache: Support::Native,
    };
}

/// Flags passed with a data request. These are the NBD command flags that a backend acts on;
/// the server strips the ones that only matter on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u32);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Force unit access: the data is on stable storage before the call returns.
    pub const FUA: Flags = Flags(1);
    /// For `zero`: the backend may punch a hole instead of writing zeroes (the client did not send
    /// `NBD_CMD_FLAG_NO_HOLE`).
    pub const MAY_TRIM: Flags = Flags(2);
    /// For `extents`: the client only wants the first extent.
    pub const REQ_ONE: Flags = Flags(4);
    /// For `zero`: fail with `ENOTSUP` at once rather than do anything slower than a write.
    pub const FAST_ZERO: Flags = Flags(8);

    /// True when every flag in `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` without the flags in `other`.
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

/// How much concurrency a backend tolerates, from most to least restrictive. The server takes the
/// most restrictive model of the plugin and every filter in the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadModel {
    /// One connection at a time.
    SerializeConnections,
    /// Many connections, but one request at a time across all of them.
    SerializeAllRequests,
    /// One request at a time on each connection; connections run in parallel.
    SerializeRequests,
    /// Requests run in parallel on and across connections.
    Parallel,
}

impl ThreadModel {
    /// nbdkit's spelling, as printed by `--dump-plugin` (`thread_model=parallel`).
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadModel::SerializeConnections => "serialize_connections",
            ThreadModel::SerializeAllRequests => "serialize_all_requests",
            ThreadModel::SerializeRequests => "serialize_requests",
            ThreadModel::Parallel => "parallel",
        }
    }
}

/// Block size constraints advertised in `NBD_INFO_BLOCK_SIZE`.
///
/// Advertising is advice to the client: the server does not refuse requests that ignore it (as
/// nbdkit does not), so a layer still sees them. A layer that must not see them refuses them
/// itself with [`BlockSize::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest I/O the backend can do; a power of two from 1 to 65536.
    pub minimum: u32,
    /// Size (and alignment) the backend works best with; a power of two, at least `minimum`.
    pub preferred: u32,
    /// Largest request the backend accepts; a multiple of `minimum`.
    pub maximum: u32,
}

impl BlockSize {
    /// Enforces the constraints on one request: `EINVAL` (what the NBD spec asks for) when
    /// `count` or `offset` is not a multiple of the minimum, or when a request carrying data
    /// (`data`: a read or write) is longer than the maximum. `what` names the request.
    pub fn check(&self, what: &str, count: u64, offset: u64, data: bool) -> crate::Result<()> {
        let min = u64::from(self.minimum.max(1));
        let why = if data && count > u64::from(self.maximum) {
            format!("is larger than the maximum block size {}", self.maximum)
        } else if !count.is_multiple_of(min) {
            format!("is not a multiple of the minimum block size {min}")
        } else if !offset.is_multiple_of(min) {
            format!("is not aligned to the minimum block size {min}")
        } else {
            return Ok(());
        };
        Err(crate::Error::invalid(format!("{what} of {count} bytes at offset {offset} {why}")))
    }
}

/// One export as listed to `NBD_OPT_LIST` and `nbdinfo --list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Export {
    /// The export name a client asks for.
    pub name: String,
    /// Optional free-form description.
    pub description: Option<String>,
}

impl Export {
    /// An export with a name and no description.
    pub fn named(name: impl Into<String>) -> Self {
        Export { name: name.into(), description: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_check_refuses_what_breaks_the_constraints() {
        let b = BlockSize { minimum: 512, preferred: 4096, maximum: 1 << 20 };
        assert!(b.check("read", 4096, 512, true).is_ok());
        assert!(b.check("zero", 2 << 20, 0, false).is_ok(), "the maximum bounds only data");
        for (count, offset, data) in [(1, 0, true), (512, 3, false), (2 << 20, 0, true)] {
            let e = b.check("write", count, offset, data).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL);
            assert!(e.message.starts_with(&format!("write of {count} bytes at offset {offset} ")), "{}", e.message);
        }
    }
}
