//! Live metrics for `--metrics`: what every connection asked, moved and waited for, by operation
//! and export, served in Prometheus' text format while the server runs.
//!
//! Counting lives in the server core rather than in a filter because only the core sees every
//! connection (refused and failed handshakes included), every request whatever the filter stack
//! answers itself, and the export each connection chose.
//!
//! The request path takes no lock: each connection counts into its own `Counters` with relaxed
//! atomic additions (only the connection's own workers share them), and a scrape sums the live
//! connections' counters with the totals of those that closed. A connection joins and leaves the
//! registry under its lock, once each, and leaving folds its counts into its export's totals under
//! that same lock, so a scrape never sees a count go down.
//!
//! `text` renders a snapshot; `http` is the endpoint that serves it.

mod http;
mod text;

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbdforge_protocol::consts::*;

pub(crate) use http::spawn;

/// Operations, as the `op` label names them; anything else a client sends counts as `other`.
const OPS: [&str; 8] = ["read", "write", "flush", "trim", "cache", "zero", "block_status", "other"];

fn op_index(kind: u16) -> usize {
    match kind {
        CMD_READ => 0,
        CMD_WRITE => 1,
        CMD_FLUSH => 2,
        CMD_TRIM => 3,
        CMD_CACHE => 4,
        CMD_WRITE_ZEROES => 5,
        CMD_BLOCK_STATUS => 6,
        _ => 7,
    }
}

/// For each of [`OPS`], whether its length is a range of the disk, counted in
/// `nbdforge_bytes_total` (flush and block status ask about a range but move nothing).
const HAS_BYTES: [bool; OPS.len()] = [true, true, false, true, true, true, false, false];

/// The errors a reply can carry (the protocol's errno values), as the `errno` label names them.
const ERRNOS: [(u32, &str); 8] = [
    (EPERM, "EPERM"),
    (EIO, "EIO"),
    (ENOMEM, "ENOMEM"),
    (EINVAL, "EINVAL"),
    (ENOSPC, "ENOSPC"),
    (EOVERFLOW, "EOVERFLOW"),
    (ENOTSUP, "ENOTSUP"),
    (ESHUTDOWN, "ESHUTDOWN"),
];

/// Upper bounds of the latency histogram's buckets, in nanoseconds (10 µs to 10 s); a last bucket
/// (`+Inf`) takes the rest. Fixed, so recording is one search of a short array.
const BUCKETS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Exports counted under their own name; later ones share [`OTHER_EXPORTS`], so clients asking
/// for names a plugin makes up cannot grow the registry without bound.
const MAX_EXPORTS: usize = 64;
const OTHER_EXPORTS: &str = "(other)";

/// The counts of one operation.
#[derive(Default)]
struct OpCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// By [`ERRNOS`] index.
    errors: [AtomicU64; ERRNOS.len()],
    /// Not cumulative: one count per bucket of [`BUCKETS_NS`], then the `+Inf` one.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    duration_ns: AtomicU64,
}

/// The counts of one connection, or the totals of an export.
#[derive(Default)]
struct Counters {
    ops: [OpCounters; OPS.len()],
}

fn add(to: &AtomicU64, from: &AtomicU64) {
    to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
}

impl Counters {
    /// Adds `other`'s counts to these.
    fn add(&self, other: &Counters) {
        for (to, from) in self.ops.iter().zip(&other.ops) {
            add(&to.requests, &from.requests);
            add(&to.bytes, &from.bytes);
            to.errors.iter().zip(&from.errors).for_each(|(t, f)| add(t, f));
            to.buckets.iter().zip(&from.buckets).for_each(|(t, f)| add(t, f));
            add(&to.duration_ns, &from.duration_ns);
        }
    }
}

/// One export's counts: the totals of its closed connections, and its live ones.
struct Export {
    name: String,
    closed: Counters,
    live: Vec<Arc<Counters>>,
}

/// Every export's counts, for the life of the server.
#[derive(Default)]
pub(crate) struct Registry {
    exports: Mutex<Vec<Export>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Counts a connection that chose `export`, until the returned value is dropped.
    pub fn connect(self: &Arc<Self>, export: &str) -> ConnMetrics {
        let counters = Arc::new(Counters::default());
        let mut exports = lock(&self.exports);
        let index = match exports.iter().position(|e| e.name == export) {
            Some(i) => i,
            None if exports.len() < MAX_EXPORTS => {
                exports.push(Export { name: export.to_string(), closed: Counters::default(), live: Vec::new() });
                exports.len() - 1
            }
            None => match exports.iter().position(|e| e.name == OTHER_EXPORTS) {
                Some(i) => i,
                None => {
                    let name = OTHER_EXPORTS.to_string();
                    exports.push(Export { name, closed: Counters::default(), live: Vec::new() });
                    exports.len() - 1
                }
            },
        };
        exports[index].live.push(Arc::clone(&counters));
        ConnMetrics { registry: Arc::clone(self), export: index, counters }
    }

    /// Every export's counts as of now: closed and live connections summed.
    fn snapshot(&self) -> Vec<(String, Counters)> {
        let exports = lock(&self.exports);
        exports
            .iter()
            .map(|e| {
                let sum = Counters::default();
                sum.add(&e.closed);
                e.live.iter().for_each(|c| sum.add(c));
                (e.name.clone(), sum)
            })
            .collect()
    }
}

/// One connection's counters. Dropping it moves its counts into its export's totals.
pub(crate) struct ConnMetrics {
    registry: Arc<Registry>,
    export: usize,
    counters: Arc<Counters>,
}

impl ConnMetrics {
    /// Counts one answered request of type `kind` covering `length` bytes, which failed with the
    /// protocol errno `error` (or succeeded with `None`) after `took`.
    pub fn record(&self, kind: u16, length: u64, error: Option<u32>, took: Duration) {
        let op = op_index(kind);
        let c = &self.counters.ops[op];
        c.requests.fetch_add(1, Ordering::Relaxed);
        match error {
            None if HAS_BYTES[op] => {
                c.bytes.fetch_add(length, Ordering::Relaxed);
            }
            None => {}
            Some(errno) => {
                // The server only sends the errnos of the table; EINVAL stands for anything else.
                let i = ERRNOS.iter().position(|&(e, _)| e == errno).unwrap_or(3);
                c.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.buckets[BUCKETS_NS.partition_point(|&b| b < ns)].fetch_add(1, Ordering::Relaxed);
        c.duration_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        let mut exports = lock(&self.registry.exports);
        let export = &mut exports[self.export];
        export.closed.add(&self.counters);
        export.live.retain(|c| !Arc::ptr_eq(c, &self.counters));
    }
}

/// The metrics of a running server: the registry, and the way to stop its endpoint.
pub(crate) struct Metrics {
    pub registry: Arc<Registry>,
    /// Writing to it ends the endpoint's thread.
    stop: UnixStream,
}

impl Metrics {
    pub fn new(registry: Arc<Registry>, stop: UnixStream) -> Self {
        Metrics { registry, stop }
    }

    pub fn stop(&self) {
        let _ = io::Write::write_all(&mut &self.stop, &[1]);
    }
}

/// The connection counts the page shows next to the request counts.
pub(crate) struct ConnectionCounts {
    pub open: usize,
    pub total: u64,
}

/// The page for one scrape.
pub(crate) fn render(registry: &Registry, connections: ConnectionCounts) -> Vec<u8> {
    text::render(&registry.snapshot(), &connections)
}

/// Binds the endpoint's socket for `--metrics=ADDR:PORT`: `127.0.0.1:9100`, `[::1]:9100`,
/// `localhost:9100`, or `:9100` and `9100` for every address. Port 0 takes any free port.
pub fn bind(spec: &str) -> io::Result<TcpListener> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
    let (host, port) = spec.rsplit_once(':').unwrap_or(("", spec));
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("expected ADDR:PORT (such as 127.0.0.1:9100), :PORT or PORT"));
    }
    let port: u16 = port.parse().map_err(|_| invalid("the port must be from 0 to 65535"))?;
    if host.is_empty() {
        // Every address: IPv6 and IPv4 on one socket where the system allows it.
        let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        return TcpListener::bind(any6).or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(invalid("the address resolves to nothing"));
    }
    TcpListener::bind(&addrs[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_connections_keep_their_counts() {
        let registry = Arc::new(Registry::default());
        let a = registry.connect("");
        let b = registry.connect("");
        a.record(CMD_READ, 4096, None, Duration::from_micros(20));
        b.record(CMD_READ, 512, Some(EIO), Duration::from_millis(20));
        b.record(CMD_FLUSH, 0, None, Duration::from_secs(20));
        drop(b);
        let snap = registry.snapshot();
        assert_eq!(snap.len(), 1);
        let read = &snap[0].1.ops[0];
        assert_eq!(read.requests.load(Ordering::Relaxed), 2);
        assert_eq!(read.bytes.load(Ordering::Relaxed), 4096);
        assert_eq!(read.errors[1].load(Ordering::Relaxed), 1);
        assert_eq!(read.buckets[1].load(Ordering::Relaxed), 1, "20 µs is in the 25 µs bucket");
        assert_eq!(read.buckets[10].load(Ordering::Relaxed), 1, "20 ms is in the 25 ms bucket");
        assert_eq!(snap[0].1.ops[2].buckets[BUCKETS_NS.len()].load(Ordering::Relaxed), 1, "20 s is over 10 s");
        assert!(lock(&registry.exports)[0].live.len() == 1);
    }

    #[test]
    fn exports_beyond_the_limit_share_one_name() {
        let registry = Arc::new(Registry::default());
        let conns: Vec<_> = (0..MAX_EXPORTS + 5).map(|i| registry.connect(&format!("e{i}"))).collect();
        let snap = registry.snapshot();
        assert_eq!(snap.len(), MAX_EXPORTS + 1);
        assert_eq!(snap.last().unwrap().0, OTHER_EXPORTS);
        drop(conns);
    }

    #[test]
    fn bind_specs() {
        assert!(bind("127.0.0.1:0").is_ok());
        assert!(bind("localhost:0").is_ok());
        assert!(bind("0").is_ok());
        assert!(bind(":0").is_ok());
        assert!(bind("127.0.0.1").is_err());
        assert!(bind("70000").is_err());
        assert!(bind("[::1]:0").is_ok());
        assert!(bind("no-such-host.invalid:0").is_err());
        assert!(bind("127.0.0.1:").is_err());
    }
}
