//! The `stats` filter: counts the requests that pass through it (how many, how many bytes, how
//! long the layers below took, and the spread of request sizes and offset alignments) and writes
//! a summary to `statsfile=` when the server exits, in nbdkit-stats-filter(1)'s format:
//!
//! ```text
//! total: 3 ops, 1.040668 s, 8.00 KiB, 7.69 KiB/s
//! read: 1 ops, 0.000002 s, 4.00 KiB, 1.91 GiB/s op, 3.84 KiB/s total
//!   Request size and alignment breakdown:
//!     12 bits: 100.0% (1 reqs, 4.00 KiB total)
//!          12 bit aligned: 100.0% (1)
//! ```
//!
//! Counting is lock-free (atomic counters in fixed tables), so the filter costs little on the
//! request path; reads are handed on with the caller's sink and keep the zero-copy paths below.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::watch::{server_asks_during_read, WhenReady};
use nbdforge_api::{
    absolute_path, parse_bool, parse_int, Backend, BufferSink, Capabilities, Error, Extents, Filter, Flags, Handle,
    Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result,
};

/// The filter's entry in the server's table: `nbdforge --filter=stats memory 1G statsfile=FILE`.
pub fn registration() -> Registration {
    let info = LayerInfo::new("stats", "writes statistics about requests when the server exits").help(
        "statsfile=<FILE>    (required) The file to place the log in.\n\
         statsappend=<BOOL>  True to append to the log (default false).\n\
         statsthreshold=<PERCENTAGE>  Share of requests the size histograms show (default 95, 0: none).",
    );
    Registration::filter(info, StatsFilter::new)
}

/// The kinds of request counted, in the order the summary lists them.
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Trim,
    Zero,
    Extents,
    Cache,
    Flush,
}

const NAMES: [&str; 7] = ["read", "write", "trim", "zero", "extents", "cache", "flush"];

/// Alignments are 0 to 63 trailing zero bits of the offset; offset 0 is aligned to anything.
const ANY_ALIGNMENT: usize = 64;
const ALIGNMENTS: usize = 65;

/// The `stats` filter.
pub struct StatsFilter {
    path: Option<PathBuf>,
    append: bool,
    /// Percentage of requests the histograms cover; 0 turns them off.
    threshold: u32,
    file: Option<File>,
    started: Instant,
    stats: Arc<Stats>,
}

impl StatsFilter {
    /// The filter with nbdkit's defaults.
    pub fn new() -> Self {
        StatsFilter {
            path: None,
            append: false,
            threshold: 95,
            file: None,
            started: Instant::now(),
            stats: Arc::new(Stats::new(false)),
        }
    }
}

impl Default for StatsFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for StatsFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "statsfile" => self.path = Some(absolute_path(key, value)?),
            "statsappend" => self.append = parse_bool(key, value)?,
            "statsthreshold" => {
                let n: i64 = parse_int(key, value)?;
                self.threshold = u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= 100)
                    .ok_or_else(|| Error::invalid(format!("{key}={value}: must be between 0 and 100 (percent)")))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.path.is_none() {
            return Err(Error::invalid("the statsfile parameter is required (statsfile=FILE)"));
        }
        self.stats = Arc::new(Stats::new(self.threshold > 0));
        Ok(())
    }

    fn cleanup(&self) {
        let Some(file) = &self.file else { return };
        let elapsed = self.started.elapsed();
        if elapsed.is_zero() {
            return;
        }
        let text = report(&self.stats, elapsed, self.threshold);
        if let Err(e) = (&*file).write_all(text.as_bytes()) {
            tracing::error!("stats: writing {}: {e}", self.path.as_deref().unwrap_or("?".as_ref()).display());
        }
    }
}

impl Filter for StatsFilter {
    fn get_ready(&mut self, _next: &Arc<dyn Backend>) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut options = File::options();
        options.write(true).create(true).mode(0o666);
        if self.append {
            options.append(true);
        } else {
            options.truncate(true);
        }
        let file = options.open(path).map_err(|e| Error::from_io(format!("statsfile={}", path.display()), &e))?;
        self.file = Some(file);
        self.started = Instant::now();
        Ok(())
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(StatsHandle { next: next.open(args)?, stats: Arc::clone(&self.stats) }))
    }
}

/// One connection through the filter: the layer below and the process-wide counters.
struct StatsHandle {
    next: Box<dyn Handle>,
    stats: Arc<Stats>,
}

impl StatsHandle {
    /// Runs a request and counts it if it succeeded.
    fn timed(&self, op: Op, count: u64, offset: u64, call: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        let r = call();
        if r.is_ok() {
            self.stats.record(op, count, offset, start.elapsed());
        }
        r
    }
}

impl Handle for StatsHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(crate::watch::see_every_request(self.next.capabilities()?))
    }

    // Counted, then handed on with the caller's sink, so the data takes the fastest path below.
    // The time is the layers' below until the data is ready, not the client's to receive it.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let start = Instant::now();
        let ready = std::cell::Cell::new(None);
        let mut watched = WhenReady::new(sink, || ready.set(Some(start.elapsed())));
        let r = self.next.read(count, offset, flags, &mut watched);
        if r.is_ok() {
            self.stats.record(Op::Read, count, offset, ready.get().unwrap_or_else(|| start.elapsed()));
        }
        r
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.timed(Op::Write, buf.len() as u64, offset, || self.next.pwrite(buf, offset, flags))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.timed(Op::Flush, 0, 0, || self.next.flush(flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.timed(Op::Trim, count, offset, || self.next.trim(count, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.timed(Op::Zero, count, offset, || self.next.zero(count, offset, flags))
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        if server_asks_during_read() {
            return self.next.extents(count, offset, flags, extents);
        }
        self.timed(Op::Extents, count, offset, || self.next.extents(count, offset, flags, extents))
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.timed(Op::Cache, count, offset, || self.next.cache(count, offset, flags))
    }
}

/// The counters of one kind of request.
struct OpStats {
    ops: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    /// Requests by size class (the size's highest set bit) and offset alignment, flattened: entry
    /// `size_bits * ALIGNMENTS + alignment`. Empty when the histograms are off.
    shapes: Box<[AtomicU64]>,
    /// Bytes by size class.
    size_bytes: Box<[AtomicU64]>,
}

struct Stats {
    ops: [OpStats; 7],
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Stats {
    fn new(shapes: bool) -> Self {
        let n = if shapes { 64 } else { 0 };
        Stats {
            ops: std::array::from_fn(|_| OpStats {
                ops: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                nanos: AtomicU64::new(0),
                shapes: counters(n * ALIGNMENTS),
                size_bytes: counters(n),
            }),
        }
    }

    fn record(&self, op: Op, count: u64, offset: u64, took: Duration) {
        let s = &self.ops[op as usize];
        s.ops.fetch_add(1, Relaxed);
        s.bytes.fetch_add(count, Relaxed);
        s.nanos.fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        if !s.size_bytes.is_empty() && !matches!(op, Op::Flush) {
            let size_bits = count.checked_ilog2().unwrap_or(0) as usize;
            let alignment = if offset == 0 { ANY_ALIGNMENT } else { offset.trailing_zeros() as usize };
            s.shapes[size_bits * ALIGNMENTS + alignment].fetch_add(1, Relaxed);
            s.size_bytes[size_bits].fetch_add(count, Relaxed);
        }
    }
}

/// The summary written at exit.
fn report(stats: &Stats, elapsed: Duration, threshold: u32) -> String {
    let get = |a: &AtomicU64| a.load(Relaxed);
    let mut out = String::new();
    let ops: u64 = stats.ops.iter().map(|s| get(&s.ops)).sum();
    let moved = [Op::Read, Op::Write, Op::Trim, Op::Zero];
    let bytes: u64 = moved.iter().map(|op| get(&stats.ops[*op as usize].bytes)).sum();
    let total_nanos = elapsed.as_nanos().min(u64::MAX as u128) as u64;
    let _ = writeln!(
        out,
        "total: {ops} ops, {:.6} s, {}, {}/s",
        elapsed.as_secs_f64(),
        human_size(bytes),
        human_rate(bytes, total_nanos)
    );
    for (s, name) in stats.ops.iter().zip(NAMES) {
        let (ops, bytes, nanos) = (get(&s.ops), get(&s.bytes), get(&s.nanos));
        if ops == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{name}: {ops} ops, {:.6} s, {}, {}/s op, {}/s total",
            nanos as f64 / 1e9,
            human_size(bytes),
            human_rate(bytes, nanos),
            human_rate(bytes, total_nanos)
        );
        if threshold > 0 && !s.size_bytes.is_empty() && name != "flush" {
            out.push_str("  Request size and alignment breakdown:\n");
            histogram(&mut out, s, f64::from(threshold) / 100.0);
            out.push('\n');
        }
    }
    out
}

/// The size classes, most requests first, until `threshold` of the requests are shown; under each,
/// the share of its requests aligned to at least N bits, until fewer than the rest are.
fn histogram(out: &mut String, s: &OpStats, threshold: f64) {
    let get = |a: &AtomicU64| a.load(Relaxed);
    let aligned =
        |bits: usize| -> Vec<u64> { (0..ALIGNMENTS).map(|a| get(&s.shapes[bits * ALIGNMENTS + a])).collect() };
    // (requests, size bits, bytes), most requests first, then smaller sizes first.
    let mut classes: Vec<(u64, usize, u64)> = (0..64)
        .map(|bits| (aligned(bits).iter().sum(), bits, get(&s.size_bytes[bits])))
        .filter(|(n, _, _)| *n > 0)
        .collect();
    classes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let total: u64 = classes.iter().map(|c| c.0).sum();
    let total_bytes: u64 = classes.iter().map(|c| c.2).sum();
    let to_show = (threshold * total as f64) as u64;
    let (mut shown, mut shown_bytes) = (0, 0);
    for (n, bits, bytes) in classes {
        if shown >= to_show {
            let (rest, rest_bytes) = (total - shown, total_bytes - shown_bytes);
            let pct = rest as f64 / total as f64 * 100.0;
            let _ = writeln!(out, "    other sizes: {pct:4.1}% ({rest} reqs, {} total)", human_size(rest_bytes));
            break;
        }
        let pct = n as f64 / total as f64 * 100.0;
        let _ = writeln!(out, "    {bits:2} bits: {pct:4.1}% ({n} reqs, {} total)", human_size(bytes));
        shown += n;
        shown_bytes += bytes;
        alignments(out, &aligned(bits), n, threshold);
    }
}

/// For one size class: requests aligned to at least N bits, for each N that changes the count.
/// Offset 0 counts as aligned to everything.
fn alignments(out: &mut String, counts: &[u64], total: u64, threshold: f64) {
    let any = counts[ANY_ALIGNMENT];
    let present: Vec<usize> = (0..ANY_ALIGNMENT).filter(|a| counts[*a] > 0).collect();
    let at_least = |a: usize| counts[a..ANY_ALIGNMENT].iter().sum::<u64>() + any;
    let cutoff = ((1.0 - threshold) * total as f64) as u64;
    for (i, &bits) in present.iter().enumerate() {
        let n = at_least(bits);
        if n < cutoff {
            let pct = n as f64 / total as f64 * 100.0;
            let _ = writeln!(out, "         {bits:2}+ bit-aligned: {pct:4.1}% ({n})");
            break;
        }
        if present.get(i + 1).is_none_or(|&next| at_least(next) != n) {
            let pct = (n * 100) as f64 / total as f64;
            let _ = writeln!(out, "         {bits:2} bit aligned: {pct:5.1}% ({n})");
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `512 bytes`, `4.00 KiB`, `1.50 MiB`, `2.00 GiB`.
fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < KIB => format!("{b} bytes"),
        b if b < MIB => format!("{:.2} KiB", b as f64 / KIB as f64),
        b if b < GIB => format!("{:.2} MiB", b as f64 / MIB as f64),
        b => format!("{:.2} GiB", b as f64 / GIB as f64),
    }
}

/// Bytes per second over `nanos`, or `(n/a)` for no time at all.
fn human_rate(bytes: u64, nanos: u64) -> String {
    if nanos == 0 {
        return "(n/a)".into();
    }
    human_size((bytes as f64 / (nanos as f64 / 1e9)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(requests: &[(Op, u64, u64)]) -> Stats {
        let s = Stats::new(true);
        for &(op, count, offset) in requests {
            s.record(op, count, offset, Duration::from_micros(1));
        }
        s
    }

    #[test]
    fn sizes_and_rates_as_nbdkit_prints_them() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(2024), "1.98 KiB");
        assert_eq!(human_size(3 * MIB / 2), "1.50 MiB");
        assert_eq!(human_size(25 * GIB), "25.00 GiB");
        assert_eq!(human_rate(4096, 0), "(n/a)");
        assert_eq!(human_rate(4096, 1_000_000_000), "4.00 KiB");
    }

    #[test]
    fn summary_with_histograms() {
        // Like nbdkit 1.32 for the same requests (nbdsh: 20 writes of 4 KiB at i*4096, 5 at
        // i*8192+512, 512 bytes at 0 and 512, 1000 bytes at 1M).
        let mut requests: Vec<(Op, u64, u64)> = (0..20).map(|i| (Op::Write, 4096, i * 4096)).collect();
        requests.extend((0..5).map(|i| (Op::Write, 4096, i * 8192 + 512)));
        requests.extend([(Op::Write, 512, 0), (Op::Write, 512, 512), (Op::Write, 1000, 1 << 20)]);
        requests.extend([(Op::Flush, 0, 0), (Op::Flush, 0, 0)]);
        let text = report(&stats_of(&requests), Duration::from_secs(1), 95);
        let expected = "\
total: 30 ops, 1.000000 s, 101.98 KiB, 101.98 KiB/s
write: 28 ops, 0.000028 s, 101.98 KiB, 3.47 GiB/s op, 101.98 KiB/s total
  Request size and alignment breakdown:
    12 bits: 89.3% (25 reqs, 100.00 KiB total)
          9 bit aligned: 100.0% (25)
         12 bit aligned:  80.0% (20)
         13 bit aligned:  40.0% (10)
         14 bit aligned:  20.0% (5)
         15 bit aligned:  12.0% (3)
         16 bit aligned:   8.0% (2)
     9 bits: 10.7% (3 reqs, 1.98 KiB total)
          9 bit aligned: 100.0% (3)
         20 bit aligned:  66.7% (2)

flush: 2 ops, 0.000002 s, 0 bytes, 0 bytes/s op, 0 bytes/s total
";
        assert_eq!(text, expected);
    }

    #[test]
    fn thresholds_cut_the_histograms() {
        // 40 writes of 4 KiB at i*4096 (i = 1..40), 10 of 8 KiB, 13 of 512..1023 bytes.
        let mut requests: Vec<(Op, u64, u64)> = (1..=40).map(|i| (Op::Write, 4096, i * 4096)).collect();
        requests.extend((1..=10).map(|i| (Op::Write, 8192, i * 8192)));
        requests.extend((1..=10).map(|i| (Op::Write, 512, i * 512)));
        requests.extend((0..3).map(|i| (Op::Write, 700, i * 1024)));
        let text = report(&stats_of(&requests), Duration::from_secs(1), 50);
        let breakdown: Vec<&str> = text.lines().skip(3).collect();
        assert_eq!(
            breakdown,
            [
                "    12 bits: 63.5% (40 reqs, 160.00 KiB total)",
                "         12 bit aligned: 100.0% (40)",
                "         13 bit aligned:  50.0% (20)",
                "         14+ bit-aligned: 25.0% (10)",
                "    other sizes: 36.5% (23 reqs, 87.05 KiB total)",
                "",
            ]
        );
        // A single request is "other sizes" below 100%, as in nbdkit.
        let one = report(&stats_of(&[(Op::Trim, 4096, 4096)]), Duration::from_secs(1), 95);
        assert!(
            one.contains("  Request size and alignment breakdown:\n    other sizes: 100.0% (1 reqs, 4.00 KiB total)\n")
        );
        let all = report(&stats_of(&[(Op::Trim, 4096, 4096)]), Duration::from_secs(1), 100);
        assert!(all.contains("    12 bits: 100.0% (1 reqs, 4.00 KiB total)\n         12 bit aligned: 100.0% (1)\n"));
        let none = report(&stats_of(&[(Op::Trim, 4096, 4096)]), Duration::from_secs(1), 0);
        assert!(!none.contains("breakdown"), "{none}");
    }

    #[test]
    fn parameters_name_the_value() {
        let mut f = StatsFilter::new();
        assert!(!f.config("size", "1M").unwrap());
        for (key, value, want) in [
            ("statsthreshold", "101", "statsthreshold=101: must be between 0 and 100 (percent)"),
            ("statsthreshold", "-1", "statsthreshold=-1: must be between 0 and 100 (percent)"),
            ("statsthreshold", "50.5", "statsthreshold=50.5: could not parse number"),
            ("statsappend", "foo", "statsappend=foo: not a boolean (use true or false)"),
        ] {
            assert_eq!(f.config(key, value).unwrap_err().message, want);
        }
        assert!(f.config_complete().unwrap_err().message.contains("statsfile"));
        assert!(f.config("statsthreshold", "0").unwrap());
        assert!(f.config("statsfile", "x.txt").unwrap());
        assert!(f.path.as_ref().unwrap().is_absolute());
        f.config_complete().unwrap();
    }
}
