//! The `count` filter: counts the bytes read, written, zeroed and trimmed by every connection
//! together, and logs the totals (with `-v`) when the server exits:
//! `count: count bytes: read N, written N, zeroed N, trimmed N`. Only requests that succeed count.
//!
//! Reads are counted and passed down with the same sink, keeping the zero-copy paths below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nbdforge_api::{
    debug, Backend, BufferSink, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(
        LayerInfo::new("count", "counts bytes read, written, zeroed and trimmed"),
        CountFilter::default,
    )
}

/// Bytes moved by successful requests, by kind.
#[derive(Debug, Default)]
struct Totals {
    read: AtomicU64,
    written: AtomicU64,
    zeroed: AtomicU64,
    trimmed: AtomicU64,
}

/// Adds `bytes` to `counter` if `result` is a success, and hands the result on.
fn tally<T>(counter: &AtomicU64, bytes: u64, result: Result<T>) -> Result<T> {
    if result.is_ok() {
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
    result
}

/// The `count` filter. It takes no parameters.
#[derive(Debug, Default)]
pub struct CountFilter {
    totals: Arc<Totals>,
}

impl Layer for CountFilter {
    fn cleanup(&self) {
        let t = &self.totals;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        debug!(
            "count bytes: read {}, written {}, zeroed {}, trimmed {}",
            get(&t.read),
            get(&t.written),
            get(&t.zeroed),
            get(&t.trimmed)
        );
    }
}

impl Filter for CountFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(CountHandle { next: next.open(args)?, totals: Arc::clone(&self.totals) }))
    }
}

/// One connection through the filter.
struct CountHandle {
    next: Box<dyn Handle>,
    totals: Arc<Totals>,
}

impl Handle for CountHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        tally(&self.totals.read, count, self.next.read(count, offset, flags, sink))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        tally(&self.totals.written, buf.len() as u64, self.next.pwrite(buf, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        tally(&self.totals.zeroed, count, self.next.zero(count, offset, flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        tally(&self.totals.trimmed, count, self.next.trim(count, offset, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;

    #[test]
    fn counts_successful_requests() {
        let f = CountFilter::default();
        let h = f.open(&MemBackend::disk(4096), &OpenArgs::local("", false)).unwrap();
        h.pwrite(&[1; 100], 0, Flags::NONE).unwrap();
        let mut buf = [0u8; 50];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        h.zero(10, 0, Flags::NONE).unwrap();
        h.trim(20, 0, Flags::NONE).unwrap();
        let t = &f.totals;
        let got = [&t.read, &t.written, &t.zeroed, &t.trimmed].map(|a| a.load(Ordering::Relaxed));
        assert_eq!(got, [50, 100, 10, 20]);
        f.cleanup();
    }
}
