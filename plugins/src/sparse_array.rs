//! A sparse byte array as large as 2^63-1 bytes in which only written pages cost memory.
//!
//! It backs the memory plugin's default allocator (and is usable by any plugin that keeps a disk in
//! RAM). The array is cut into fixed pages of [`PAGE_SIZE`] bytes; a page that was never written, or
//! that was trimmed or zeroed, is absent and reads as zeroes.
//!
//! The server runs requests on many threads at once, so the page table is split into lock stripes:
//! page `i` lives in stripe `i % STRIPES`, each stripe an `RwLock` over its page table (`page_map`). A
//! request takes one stripe lock per page it touches and holds it only while copying that page, so
//! requests on different pages proceed in parallel and reads of the same page share a read lock. The
//! tables are ordered, which lets extents and large trims skip over holes without visiting every
//! absent page of an exabyte-sized disk.
//!
//! Page memory comes from `slab`: 2 MiB slabs faulted in whole when mapped, so that filling a
//! fresh disk does not pay eight page faults per page; pages freed by trim and zero go back to the
//! kernel.

mod page_map;
mod slab;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{Error, Extents, Result, ZEROES};

use page_map::PageMap;
use slab::SlabPool;

/// Bytes per page. 32 KiB keeps a fresh 4 KiB write cheap to allocate while a 256 KiB request
/// touches only eight pages.
pub const PAGE_SIZE: usize = 32 * 1024;

/// Number of lock stripes: a power of two, comfortably more than the threads that run requests.
const STRIPES: usize = 64;

/// Once this much page memory has been freed, ask the C allocator to hand free heap memory back to
/// the kernel: page memory itself goes back at once (see [`slab`]), but the page table's nodes
/// live in the heap, and for a large disk they add up. Doing it for every trim would cost a heap
/// walk per request.
const RELEASE_AFTER_FREED_BYTES: u64 = 64 << 20;

/// One stripe of the page table, padded to a cache line so neighbouring locks do not share one.
#[repr(align(64))]
struct Stripe(RwLock<PageMap>);

/// A sparse, thread-safe byte array. See the module documentation.
pub struct SparseArray {
    stripes: Box<[Stripe]>,
    pages: SlabPool,
    allocated_pages: AtomicUsize,
    freed_since_release: AtomicU64,
}

impl Default for SparseArray {
    fn default() -> Self {
        Self::new()
    }
}

impl SparseArray {
    /// An empty array: every byte reads as zero and no page is allocated.
    pub fn new() -> Self {
        SparseArray {
            stripes: (0..STRIPES as u64).map(|s| Stripe(RwLock::new(PageMap::new(s, STRIPES as u64)))).collect(),
            pages: SlabPool::new(),
            allocated_pages: AtomicUsize::new(0),
            freed_since_release: AtomicU64::new(0),
        }
    }

    /// How many pages are allocated now. Multiply by [`PAGE_SIZE`] for the bytes of data held.
    pub fn allocated_pages(&self) -> usize {
        self.allocated_pages.load(Ordering::Relaxed)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`; absent pages read as zeroes.
    pub fn read(&self, buf: &mut [u8], offset: u64) {
        let mut done = 0;
        for (index, in_page, len) in page_runs(offset, buf.len() as u64) {
            let out = &mut buf[done..done + len];
            match self.read_stripe(index).get(index) {
                Some(page) => out.copy_from_slice(&page[in_page..in_page + len]),
                None => out.fill(0),
            }
            done += len;
        }
    }

    /// Calls `send` with slices of the pages that hold the `count` bytes at `offset` (slices of
    /// the SDK's `ZEROES` for absent ones, which a server sends as holes), with those pages'
    /// stripes read-locked so no write changes them meanwhile. Returns false without calling
    /// `send` for a range of more than `STRIPES` pages, which would need one stripe twice.
    ///
    /// Stripes are locked in stripe order. Every other operation holds one stripe at a time, so
    /// readers that hold several and wait behind a writer cannot form a cycle.
    pub fn read_borrowed(&self, offset: u64, count: u64, send: &mut dyn FnMut(&[&[u8]])) -> bool {
        let in_page = (offset % PAGE_SIZE as u64) as usize;
        if in_page as u64 + count <= PAGE_SIZE as u64 {
            // Within one page (every small read): one lock and no lists.
            let index = offset / PAGE_SIZE as u64;
            send(&[lend(&self.read_stripe(index), index, in_page, count as usize)]);
            return true;
        }
        let runs: Vec<(u64, usize, usize)> = page_runs(offset, count).collect();
        if runs.len() > STRIPES {
            return false;
        }
        // Consecutive pages are in distinct stripes, so each stripe is locked once.
        let mut order: Vec<usize> = runs.iter().map(|r| stripe_of(r.0)).collect();
        order.sort_unstable();
        let guards: Vec<(usize, RwLockReadGuard<'_, PageMap>)> =
            order.into_iter().map(|s| (s, self.read_stripe(s as u64))).collect();
        let slices: Vec<&[u8]> = runs
            .iter()
            .map(|&(index, in_page, len)| {
                let stripe = stripe_of(index);
                lend(&guards[guards.partition_point(|g| g.0 < stripe)].1, index, in_page, len)
            })
            .collect();
        send(&slices);
        true
    }

    /// Starts loading into the CPU cache the first bytes of each written page in
    /// `[offset, offset + count)`, at most `PREFETCH_LIMIT` (8 KiB) of them.
    pub fn prefetch(&self, offset: u64, count: u64) {
        for (index, in_page, len) in page_runs(offset, count.min(PREFETCH_LIMIT)) {
            if let Some(page) = self.read_stripe(index).get(index) {
                page.prefetch(in_page..in_page + len);
            }
        }
    }

    /// Copies `buf` into the array at `offset`, allocating pages as needed. Zeroes written to an
    /// absent page leave it absent. Fails with ENOMEM when a page cannot be had; the pages
    /// before it are written, as a short write on a full disk would be.
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut done = 0;
        for (index, in_page, len) in page_runs(offset, buf.len() as u64) {
            let data = &buf[done..done + len];
            done += len;
            let mut map = self.write_stripe(index);
            let page = if let Some(page) = map.get_mut(index) {
                page
            } else if is_zero(data) {
                continue;
            } else {
                let Some(page) = self.pages.alloc() else {
                    return Err(Error::new(libc::ENOMEM, "memory: out of memory for the data written"));
                };
                self.allocated_pages.fetch_add(1, Ordering::Relaxed);
                map.insert(index, page)
            };
            page[in_page..in_page + len].copy_from_slice(data);
        }
        Ok(())
    }

    /// Makes `count` bytes at `offset` read as zeroes, freeing every page that ends up all zero.
    /// Pages only partly covered are zeroed in place and freed if nothing else remains in them.
    pub fn zero(&self, count: u64, offset: u64) {
        if count == 0 {
            return;
        }
        let end = offset.saturating_add(count);
        let page_size = PAGE_SIZE as u64;
        let first_whole = offset.div_ceil(page_size);
        let end_whole = end / page_size;
        if first_whole >= end_whole {
            // The range lies within one page or straddles two without covering either.
            for (index, in_page, len) in page_runs(offset, count) {
                self.zero_in_page(index, in_page, len);
            }
        } else {
            if !offset.is_multiple_of(page_size) {
                let in_page = (offset % page_size) as usize;
                self.zero_in_page(offset / page_size, in_page, PAGE_SIZE - in_page);
            }
            self.free_pages(first_whole, end_whole);
            if !end.is_multiple_of(page_size) {
                self.zero_in_page(end_whole, 0, (end % page_size) as usize);
            }
        }
        self.release_heap_if_due();
    }

    /// Describes `[offset, offset + count)`: allocated pages as data, absent ones as holes that read
    /// as zeroes. With `req_one` only the first run is added.
    pub fn extents(&self, count: u64, offset: u64, req_one: bool, extents: &mut Extents) -> Result<()> {
        let page_size = PAGE_SIZE as u64;
        let end = offset.saturating_add(count);
        let mut pos = offset;
        while pos < end {
            let index = pos / page_size;
            let last_index = (end - 1) / page_size;
            let run_end = if self.read_stripe(index).contains(index) {
                let mut next = index + 1;
                while next <= last_index && self.read_stripe(next).contains(next) {
                    next += 1;
                }
                extents.add(pos, (next * page_size).min(end) - pos, DATA)?;
                next * page_size
            } else {
                let next = self.next_allocated(index, last_index).map_or(end, |i| i * page_size);
                extents.add(pos, next.min(end) - pos, HOLE | ZERO)?;
                next
            };
            if req_one || extents.is_full() {
                break;
            }
            pos = run_end;
        }
        Ok(())
    }

    fn read_stripe(&self, index: u64) -> RwLockReadGuard<'_, PageMap> {
        // A panic while holding a stripe cannot leave a page half-linked, so poison is ignored.
        self.stripes[stripe_of(index)].0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_stripe(&self, index: u64) -> RwLockWriteGuard<'_, PageMap> {
        self.stripes[stripe_of(index)].0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The first allocated page in `[from, to]`. A short range (what a read asks about) is probed
    /// page by page; a long one is searched in every stripe.
    fn next_allocated(&self, from: u64, to: u64) -> Option<u64> {
        if to - from < STRIPES as u64 {
            return (from..=to).find(|index| self.read_stripe(*index).contains(*index));
        }
        self.stripes
            .iter()
            .filter_map(|s| {
                let map = s.0.read().unwrap_or_else(|e| e.into_inner());
                let first = map.indices(from, to).next();
                first
            })
            .min()
    }

    fn zero_in_page(&self, index: u64, in_page: usize, len: usize) {
        let mut map = self.write_stripe(index);
        if let Some(page) = map.get_mut(index) {
            page[in_page..in_page + len].fill(0);
            if is_zero(&page[..]) {
                let page = map.remove(index).expect("the page was just found");
                drop(map);
                self.pages.free(page);
                self.note_freed(1);
            }
        }
    }

    /// Frees every page with an index in `[first, end)`. Pages go back to the pool after their
    /// stripe lock is released: once out of the map, they are ours alone.
    fn free_pages(&self, first: u64, end: u64) {
        let mut freed = 0;
        if end - first <= 4 * STRIPES as u64 {
            for index in first..end {
                let removed = self.write_stripe(index).remove(index);
                if let Some(page) = removed {
                    self.pages.free(page);
                    freed += 1;
                }
            }
        } else {
            // A large range: look up only the pages that exist rather than every index.
            for stripe in self.stripes.iter() {
                let mut map = stripe.0.write().unwrap_or_else(|e| e.into_inner());
                let doomed: Vec<u64> = map.indices(first, end - 1).collect();
                let pages: Vec<_> = doomed.into_iter().filter_map(|index| map.remove(index)).collect();
                drop(map);
                freed += pages.len();
                for page in pages {
                    self.pages.free(page);
                }
            }
        }
        self.note_freed(freed);
    }

    fn note_freed(&self, pages: usize) {
        if pages > 0 {
            self.allocated_pages.fetch_sub(pages, Ordering::Relaxed);
            self.freed_since_release.fetch_add((pages * PAGE_SIZE) as u64, Ordering::Relaxed);
        }
    }

    fn release_heap_if_due(&self) {
        if self.freed_since_release.load(Ordering::Relaxed) >= RELEASE_AFTER_FREED_BYTES
            && self.freed_since_release.swap(0, Ordering::Relaxed) >= RELEASE_AFTER_FREED_BYTES
        {
            crate::sys::release_free_heap();
        }
    }
}

/// The `len` bytes at `in_page` of page `index`, from its stripe's table: the page's own, or
/// zeroes for an absent page.
fn lend(map: &PageMap, index: u64, in_page: usize, len: usize) -> &[u8] {
    map.get(index).map_or(&ZEROES[..len], |page| &page[in_page..in_page + len])
}

/// Bytes of a request [`SparseArray::prefetch`] brings in: a small request's worth. The CPU's own
/// prefetcher follows a longer one once it has started.
const PREFETCH_LIMIT: u64 = 8 << 10;

fn stripe_of(index: u64) -> usize {
    (index % STRIPES as u64) as usize
}

/// Splits `[offset, offset + count)` into `(page index, offset in page, length)` pieces.
fn page_runs(offset: u64, count: u64) -> impl Iterator<Item = (u64, usize, usize)> {
    let page_size = PAGE_SIZE as u64;
    // Callers pass ranges inside the disk; one past the end of the address space is cut short.
    let end = offset.saturating_add(count);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let in_page = pos % page_size;
        let len = (page_size - in_page).min(end - pos);
        let piece = (pos / page_size, in_page as usize, len as usize);
        pos += len;
        Some(piece)
    })
}

/// True when every byte of `buf` is zero. Works in blocks the compiler can vectorize, stopping at
/// the first block with a non-zero byte.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(256).all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Extent;

    const PS: u64 = PAGE_SIZE as u64;

    fn map(array: &SparseArray, count: u64, offset: u64) -> Vec<Extent> {
        let mut e = Extents::new(offset, offset + count);
        array.extents(count, offset, false, &mut e).unwrap();
        e.into_vec()
    }

    #[test]
    fn unwritten_reads_zero_and_costs_nothing() {
        let a = SparseArray::new();
        let mut buf = vec![0xffu8; 100_000];
        a.read(&mut buf, 1 << 62);
        assert!(is_zero(&buf));
        assert_eq!(a.allocated_pages(), 0);
    }

    #[test]
    fn write_read_across_pages() {
        let a = SparseArray::new();
        let data: Vec<u8> = (0..3 * PAGE_SIZE + 123).map(|i| (i % 251) as u8 + 1).collect();
        a.write(&data, PS - 7).unwrap();
        assert_eq!(a.allocated_pages(), 5);
        let mut back = vec![0u8; data.len()];
        a.read(&mut back, PS - 7);
        assert_eq!(back, data);
        let mut around = [0xffu8; 8];
        a.read(&mut around, PS - 15);
        assert_eq!(&around, &[0, 0, 0, 0, 0, 0, 0, 0]);
        // Hints over written pages, holes, a page's last byte and far past the data change nothing.
        for (offset, count) in [(PS - 7, 3 * PS), (0, 100), (2 * PS - 1, 2), (PS - 7, 0), (1 << 40, 1 << 20)] {
            a.prefetch(offset, count);
        }
        a.read(&mut back, PS - 7);
        assert_eq!(back, data);
        assert_eq!(a.allocated_pages(), 5);
    }

    #[test]
    fn writing_zeroes_to_a_hole_allocates_nothing() {
        let a = SparseArray::new();
        a.write(&[0u8; 4096], 8192).unwrap();
        assert_eq!(a.allocated_pages(), 0);
    }

    #[test]
    fn zero_frees_whole_pages_and_zeroes_partial_ones() {
        let a = SparseArray::new();
        a.write(&vec![1u8; 4 * PAGE_SIZE], 0).unwrap();
        assert_eq!(a.allocated_pages(), 4);
        // Half of page 0, all of pages 1 and 2, a little of page 3.
        a.zero(3 * PS - PS / 2 + 10, PS / 2);
        assert_eq!(a.allocated_pages(), 2);
        let mut buf = vec![9u8; 4 * PAGE_SIZE];
        a.read(&mut buf, 0);
        assert!(buf[..PAGE_SIZE / 2].iter().all(|&b| b == 1));
        assert!(is_zero(&buf[PAGE_SIZE / 2..3 * PAGE_SIZE + 10]));
        assert!(buf[3 * PAGE_SIZE + 10..].iter().all(|&b| b == 1));
        // Zeroing the remaining data of a page frees it.
        a.zero(PS / 2, 0);
        assert_eq!(a.allocated_pages(), 1);
    }

    #[test]
    fn large_zero_finds_scattered_pages() {
        let a = SparseArray::new();
        for i in 0..300u64 {
            a.write(b"x", i * (1 << 40) + 5).unwrap();
        }
        assert_eq!(a.allocated_pages(), 300);
        a.zero(150 << 40, 0);
        assert_eq!(a.allocated_pages(), 150);
        a.zero(1 << 62, 0);
        assert_eq!(a.allocated_pages(), 0);
    }

    #[test]
    fn extents_report_pages() {
        let a = SparseArray::new();
        a.write(b"x", 2 * PS).unwrap();
        a.write(b"y", 3 * PS + 1).unwrap();
        assert_eq!(
            map(&a, 10 * PS, 0),
            vec![
                Extent { offset: 0, length: 2 * PS, flags: HOLE | ZERO },
                Extent { offset: 2 * PS, length: 2 * PS, flags: DATA },
                Extent { offset: 4 * PS, length: 6 * PS, flags: HOLE | ZERO },
            ]
        );
        // Unaligned start and end inside data.
        assert_eq!(map(&a, PS, 2 * PS + 100), vec![Extent { offset: 2 * PS + 100, length: PS, flags: DATA }]);
        // A hole spanning an exabyte is one run.
        assert_eq!(map(&a, 1 << 60, 4 * PS), vec![Extent { offset: 4 * PS, length: 1 << 60, flags: HOLE | ZERO }]);
        let mut one = Extents::new(0, 10 * PS);
        a.extents(10 * PS, 0, true, &mut one).unwrap();
        assert_eq!(one.as_slice().len(), 1);
    }

    #[test]
    fn a_page_reused_after_trim_reads_zero_around_new_data() {
        let a = SparseArray::new();
        a.write(&vec![0xeeu8; 2 * PAGE_SIZE], 0).unwrap();
        a.zero(2 * PS, 0);
        assert_eq!(a.allocated_pages(), 0);
        // The freed pages are the first handed out again; only the bytes written may be non-zero.
        a.write(b"abc", 5 * PS + 10).unwrap();
        a.write(b"def", 9 * PS + 20).unwrap();
        let mut buf = vec![0xffu8; PAGE_SIZE];
        a.read(&mut buf, 5 * PS);
        assert_eq!(&buf[10..13], b"abc");
        buf[10..13].fill(0);
        assert!(is_zero(&buf));
        a.read(&mut buf, 9 * PS);
        assert_eq!(&buf[20..23], b"def");
        buf[20..23].fill(0);
        assert!(is_zero(&buf));
    }

    #[test]
    fn parallel_writers_and_readers() {
        let a = SparseArray::new();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let a = &a;
                s.spawn(move || {
                    for i in 0..200u64 {
                        let offset = (i * 8 + t as u64) * 4096;
                        a.write(&[t + 1; 4096], offset).unwrap();
                        let mut back = [0u8; 4096];
                        a.read(&mut back, offset);
                        assert!(back.iter().all(|&b| b == t + 1));
                    }
                });
            }
        });
        assert_eq!(a.allocated_pages(), 8 * 200 * 4096 / PAGE_SIZE);
    }
}

#[cfg(test)]
mod borrowed_tests {
    use super::*;

    #[test]
    fn borrowed_slices_match_a_copying_read() {
        let a = SparseArray::new();
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        // Pages 1..4 written; page 0 and 4.. absent.
        a.write(&data, PAGE_SIZE as u64).unwrap();
        let (offset, count) = (100u64, 5 * PAGE_SIZE as u64);
        let mut copied = vec![0u8; count as usize];
        a.read(&mut copied, offset);
        let mut joined = Vec::new();
        let mut calls = 0;
        assert!(a.read_borrowed(offset, count, &mut |parts| {
            calls += 1;
            for p in parts {
                joined.extend_from_slice(p);
            }
        }));
        assert_eq!(calls, 1);
        assert_eq!(joined, copied);
        assert!(joined[..PAGE_SIZE - 100].iter().all(|&b| b == 0), "absent page reads as zeroes");
    }

    #[test]
    fn borrowed_reads_decline_more_pages_than_stripes() {
        let a = SparseArray::new();
        let count = (STRIPES as u64 + 1) * PAGE_SIZE as u64;
        assert!(!a.read_borrowed(0, count, &mut |_| panic!("must not be called")));
        assert!(a.read_borrowed(0, STRIPES as u64 * PAGE_SIZE as u64, &mut |parts| assert_eq!(parts.len(), STRIPES)));
    }
}
