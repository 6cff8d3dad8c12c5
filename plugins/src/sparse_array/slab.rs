//! Page memory for the sparse array: 32 KiB pages carved from 2 MiB slabs that are faulted in
//! whole when they are mapped.
//!
//! Why: with each page its own heap allocation, every new page cost eight separate 4 KiB page
//! faults, and on write workloads (fio writing a fresh disk) fault handling dominated the server's
//! CPU. A slab is one private anonymous mapping made with `MAP_POPULATE`, so the kernel faults in
//! all of its 512 small pages in one system call. Huge pages are deliberately not asked for: on
//! hosts that hand freed memory back to the hypervisor (free page reporting), first touch of a huge
//! page costs several times more than the small pages it replaces.
//!
//! How: pages are handed out in allocation order, from the lowest-addressed slab with a free page,
//! so scattered writes to a sparse disk still pack densely: resident memory is the pages written,
//! rounded up to the slab being filled, and no slab is mapped before the first page is needed. A
//! freed page goes back to the kernel with `MADV_DONTNEED` and becomes free in its slab's bitmap;
//! on private anonymous memory the next touch sees zeroes, so every free page reads as zero. A slab
//! whose pages are all free is unmapped, except one kept as a spare so that writing and trimming the
//! same page over and over does not map and unmap a slab each time (the spare's pages were all given
//! back, so it costs address space, not memory).
//!
//! Every `unsafe` block of the sparse array lives here. A [`Page`] is a raw pointer into a slab;
//! the slab stays mapped while the pool or any of its pages holds it (an [`Arc`]), and the pool
//! hands each page to one owner at a time, which is what makes the `Deref` impls sound.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};

use super::PAGE_SIZE;

/// Bytes per slab: large enough that one populating system call replaces many faults, small
/// enough that a sparse disk's last, partly used slab costs little.
const SLAB_SIZE: usize = 2 << 20;

/// Pages per slab; the free pages of a slab are the set bits of one `u64`.
const PAGES_PER_SLAB: usize = SLAB_SIZE / PAGE_SIZE;
const _: () = assert!(PAGES_PER_SLAB == u64::BITS as usize);

/// A bitmap with every page of a slab free.
const ALL_FREE: u64 = u64::MAX;

/// One slab's mapping, unmapped when the last holder (the pool or a page cut from it) drops it.
struct Mapping(NonNull<u8>);

// SAFETY: a `Mapping` is only an address range; it never reads or writes the bytes, and unmaps
// them once, in Drop, when nothing can reach them any more.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; a shared `Mapping` offers nothing but its address.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps a fresh slab of zeroes, already resident; `None` when the system has no memory for it.
    fn new() -> Option<Mapping> {
        let len = NonZeroUsize::new(SLAB_SIZE).expect("a slab is not empty");
        // SAFETY: a new private anonymous mapping at an address the kernel picks overlaps nothing
        // we own.
        let mapped = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
            )
        }
        .ok()?;
        Some(Mapping(mapped.cast()))
    }

    fn base(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the slab was mapped by `Mapping::new`, and this is its last holder: the pool let
        // go of it and no page cut from it is left.
        let _ = unsafe { munmap(self.0.cast(), SLAB_SIZE) };
    }
}

/// A page of [`PAGE_SIZE`] bytes from a [`SlabPool`]. It derefs to its bytes; give it back with
/// [`SlabPool::free`] (a page merely dropped stays taken in its slab until the pool is dropped).
pub struct Page {
    bytes: NonNull<[u8; PAGE_SIZE]>,
    /// Keeps the slab mapped while the page exists.
    _slab: Arc<Mapping>,
}

// SAFETY: a `Page` is the only handle to its bytes: the pool hands a page out once and takes it
// back only by value in `free`, and `Page` is not `Clone`. In the sparse array a page is owned by
// exactly one map entry, reached under that entry's stripe lock, so moving it between threads or
// sharing `&Page` (reads only) is as safe as for a `Box<[u8; PAGE_SIZE]>`.
unsafe impl Send for Page {}
// SAFETY: see `Send`; `&Page` only allows reading the bytes.
unsafe impl Sync for Page {}

impl Deref for Page {
    type Target = [u8; PAGE_SIZE];

    fn deref(&self) -> &[u8; PAGE_SIZE] {
        // SAFETY: the bytes are mapped while `_slab` is held, initialised (zero or written), and
        // no one else has a handle to them (see `Send`).
        unsafe { self.bytes.as_ref() }
    }
}

impl DerefMut for Page {
    fn deref_mut(&mut self) -> &mut [u8; PAGE_SIZE] {
        // SAFETY: as for `deref`; `&mut self` makes the access exclusive.
        unsafe { self.bytes.as_mut() }
    }
}

impl Page {
    /// Asks the CPU to start loading the cache lines of `range` (clamped to the page), without
    /// waiting for them.
    pub fn prefetch(&self, range: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        for at in (range.start.min(PAGE_SIZE) & !63..range.end.min(PAGE_SIZE)).step_by(64) {
            // SAFETY: the address is inside the page's mapping, which `_slab` keeps mapped; a
            // prefetch neither reads into the program nor faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.bytes.as_ptr().cast::<i8>().add(at),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = range;
    }

    fn addr(&self) -> usize {
        self.bytes.as_ptr() as usize
    }
}

struct Slab {
    mapping: Arc<Mapping>,
    /// Bit `i` set: the slab's page `i` is free, and reads as zero.
    free: u64,
}

#[derive(Default)]
struct Slabs {
    /// Every mapped slab, by base address (a page finds its slab as the last one at or below it).
    by_base: BTreeMap<usize, Slab>,
    /// Base addresses of the slabs with a free page; pages come from the lowest.
    with_free: BTreeSet<usize>,
    /// How many slabs have every page free (0 or 1: a new slab not yet used, or the spare).
    empty: usize,
}

impl Slabs {
    fn insert(&mut self, mapping: Mapping) {
        let base = mapping.base();
        self.by_base.insert(base, Slab { mapping: Arc::new(mapping), free: ALL_FREE });
        self.with_free.insert(base);
        self.empty += 1;
    }
}

/// Hands out zeroed pages from 2 MiB slabs and takes them back. Safe to share between threads;
/// its lock is held only to find or mark a page, and to map a new slab once per 64 pages.
#[derive(Default)]
pub struct SlabPool {
    slabs: Mutex<Slabs>,
}

impl SlabPool {
    /// An empty pool: maps nothing until the first page is asked for.
    pub fn new() -> Self {
        Self::default()
    }

    /// A page of zeroes, from the lowest-addressed slab with one free, or from a new slab;
    /// `None` when a new slab is needed and the system has no memory for it.
    pub fn alloc(&self) -> Option<Page> {
        let mut guard = self.lock();
        if guard.with_free.is_empty() {
            // Mapped under the lock: threads that want a page meanwhile need this slab anyway, and
            // two threads populating a slab each would fault in one for nothing.
            guard.insert(Mapping::new()?);
        }
        let slabs = &mut *guard;
        let base = *slabs.with_free.first().expect("a slab with a free page was just ensured");
        let slab = slabs.by_base.get_mut(&base).expect("a slab with a free page is mapped");
        if slab.free == ALL_FREE {
            slabs.empty -= 1;
        }
        let index = slab.free.trailing_zeros() as usize;
        slab.free &= !(1 << index);
        if slab.free == 0 {
            slabs.with_free.remove(&base);
        }
        let bytes = slab.mapping.0.map_addr(|a| a.saturating_add(index * PAGE_SIZE)).cast();
        Some(Page { bytes, _slab: Arc::clone(&slab.mapping) })
    }

    /// Takes a page back: its memory returns to the kernel and it reads as zero when reused.
    ///
    /// # Panics
    /// If the page came from another pool.
    pub fn free(&self, mut page: Page) {
        // SAFETY: the range is exactly the page's bytes, which we own (we hold the `Page` by
        // value). On private anonymous memory the next touch after MADV_DONTNEED sees zeroes.
        if unsafe { madvise(page.bytes.cast(), PAGE_SIZE, MmapAdvise::MADV_DONTNEED) }.is_err() {
            page.fill(0);
        }
        let addr = page.addr();
        let mut guard = self.lock();
        let slabs = &mut *guard;
        let (&base, slab) = slabs
            .by_base
            .range_mut(..=addr)
            .next_back()
            .filter(|(&base, _)| addr < base + SLAB_SIZE)
            .expect("a page is freed to the pool it came from");
        let index = (addr - base) / PAGE_SIZE;
        slab.free |= 1 << index;
        slabs.with_free.insert(base);
        let mut unmapped = None;
        if slab.free == ALL_FREE {
            if slabs.empty == 0 {
                slabs.empty = 1;
            } else {
                slabs.with_free.remove(&base);
                unmapped = slabs.by_base.remove(&base);
            }
        }
        drop(guard);
        // The slab, if let go, is unmapped here, outside the lock, as the page drops its hold.
        drop(unmapped);
        drop(page);
    }

    fn lock(&self) -> MutexGuard<'_, Slabs> {
        // Every update leaves the bitmaps consistent before anything can panic, so poison is
        // ignored.
        self.slabs.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn slab_count(&self) -> usize {
        self.lock().by_base.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_mapped_before_first_page() {
        assert_eq!(SlabPool::new().slab_count(), 0);
    }

    #[test]
    fn pages_pack_in_allocation_order() {
        let pool = SlabPool::new();
        let mut pages: Vec<Page> = (0..2 * PAGES_PER_SLAB).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(pool.slab_count(), 2);
        for slab in pages.chunks(PAGES_PER_SLAB) {
            for pair in slab.windows(2) {
                assert_eq!(pair[1].addr(), pair[0].addr() + PAGE_SIZE);
            }
        }
        // Freed pages are reused before another slab is mapped.
        let freed: BTreeSet<usize> = [pages[5].addr(), pages[PAGES_PER_SLAB + 7].addr()].into();
        pool.free(pages.swap_remove(PAGES_PER_SLAB + 7));
        pool.free(pages.swap_remove(5));
        pages.extend([pool.alloc().unwrap(), pool.alloc().unwrap()]);
        assert_eq!(pages[pages.len() - 2..].iter().map(Page::addr).collect::<BTreeSet<_>>(), freed);
        assert_eq!(pool.slab_count(), 2);
        pages.push(pool.alloc().unwrap());
        assert_eq!(pool.slab_count(), 3);
        for page in pages {
            pool.free(page);
        }
    }

    #[test]
    fn reused_pages_read_as_zero() {
        let pool = SlabPool::new();
        let mut pages: Vec<Page> = (0..PAGES_PER_SLAB + 3).map(|_| pool.alloc().unwrap()).collect();
        for page in &mut pages {
            page.fill(0xa5);
        }
        let addrs: BTreeSet<usize> = pages.iter().map(Page::addr).collect();
        for page in pages {
            pool.free(page);
        }
        // Every slab emptied: one is kept as the spare, the other unmapped.
        assert_eq!(pool.slab_count(), 1);
        let again: Vec<Page> = (0..PAGES_PER_SLAB).map(|_| pool.alloc().unwrap()).collect();
        assert!(again.iter().all(|p| addrs.contains(&p.addr())), "the spare slab is reused");
        assert!(again.iter().all(|p| p.iter().all(|&b| b == 0)));
    }

    #[test]
    fn threads_allocate_and_free_concurrently() {
        let pool = SlabPool::new();
        std::thread::scope(|s| {
            for t in 1..=8u8 {
                let pool = &pool;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for round in 0..400usize {
                        let mut page = pool.alloc().unwrap();
                        assert!(page.iter().all(|&b| b == 0), "a new page is zero");
                        page.fill(t);
                        held.push(page);
                        if round % 3 == 2 {
                            // Free two of every three, oldest first, checking no one wrote to them.
                            for page in held.drain(..2) {
                                assert!(page.iter().all(|&b| b == t));
                                pool.free(page);
                            }
                        }
                    }
                    for page in held {
                        assert!(page.iter().all(|&b| b == t));
                        pool.free(page);
                    }
                });
            }
        });
        let slabs = pool.lock();
        assert!(slabs.by_base.values().all(|s| s.free == ALL_FREE), "every page came back");
        assert_eq!(slabs.by_base.len(), 1, "only the spare slab is left");
        assert_eq!(slabs.empty, 1);
    }
}
