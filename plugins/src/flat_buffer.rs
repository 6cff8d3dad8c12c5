//! One flat, zero-initialised allocation holding a whole disk: the memory plugin's
//! `allocator=malloc`.
//!
//! The buffer is an anonymous private mapping, so the kernel supplies zero pages lazily (a fresh
//! 64 GiB disk costs nothing until written) and refuses a size it cannot back, which we report
//! instead of aborting. Large zero and trim requests hand whole pages back with
//! `MADV_DONTNEED`, after which they read as zeroes again.
//!
//! Requests reach the buffer from many threads. Every byte belongs to one region of
//! [`REGION_SIZE`] bytes, and every access to a region holds that region's stripe lock (shared to
//! read, exclusive to write), one region at a time; that is what makes the raw copies below free of
//! data races. This module is the only place the crate dereferences raw pointers.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::RwLock;

use nix::sys::mman::{madvise, mlock, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};

/// Bytes per locking region.
const REGION_SIZE: u64 = 64 * 1024;
/// Number of lock stripes; region `r` is guarded by stripe `r % STRIPES`.
const STRIPES: usize = 64;
/// Zero requests at least this large drop whole pages with `madvise` rather than `memset` them.
const MADVISE_MIN: u64 = 1 << 20;
/// The kernel page size we align `madvise` ranges to (4 KiB on every Linux target we build for;
/// a larger real page size only makes `madvise` refuse, and we then fall back to `memset`).
const OS_PAGE: u64 = 4096;

#[repr(align(64))]
#[derive(Default)]
struct Stripe(RwLock<()>);

/// A zero-filled byte buffer of a fixed size, shared by all connections.
pub struct FlatBuffer {
    /// Start of the mapping; `None` for a zero-sized buffer, which maps nothing.
    base: Option<NonNull<u8>>,
    len: u64,
    locked: bool,
    stripes: Box<[Stripe]>,
}

// SAFETY: the buffer is plain bytes owned by this struct for its whole life. All reads and writes
// through `base` happen inside `read`, `write` and `zero`, each under the stripe lock of the region
// touched, so concurrent use from several threads never races.
unsafe impl Send for FlatBuffer {}
// SAFETY: see `Send`; shared references only reach the bytes through the locking methods.
unsafe impl Sync for FlatBuffer {}

impl FlatBuffer {
    /// Maps `len` zeroed bytes, and with `lock_in_ram` pins them with `mlock(2)`. Errors are
    /// ready for the user: they say what failed and why.
    pub fn new(len: u64, lock_in_ram: bool) -> Result<Self, String> {
        let stripes = (0..STRIPES).map(|_| Stripe::default()).collect();
        let Some(map_len) = usize::try_from(len).ok().and_then(NonZeroUsize::new) else {
            if len == 0 {
                return Ok(FlatBuffer { base: None, len, locked: false, stripes });
            }
            return Err(format!("{len} bytes do not fit in this machine's address space"));
        };
        // SAFETY: a new anonymous private mapping at an address the kernel chooses overlaps
        // nothing we own; we keep the pointer and unmap it exactly once, in Drop.
        let mapped = unsafe {
            mmap_anonymous(None, map_len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_PRIVATE)
        }
        .map_err(|e| format!("cannot allocate {len} bytes: {}", e.desc()))?;
        let mut buffer = FlatBuffer { base: Some(mapped.cast()), len, locked: false, stripes };
        if lock_in_ram {
            // SAFETY: the range is exactly the mapping created above.
            unsafe { mlock(mapped, map_len.get()) }.map_err(|e| {
                format!("mlock of {len} bytes failed: {} (raise the locked-memory limit, ulimit -l)", e.desc())
            })?;
            buffer.locked = true;
        }
        Ok(buffer)
    }

    /// Copies bytes from `offset` into `buf`.
    ///
    /// # Panics
    /// If the range is outside the buffer; callers check bounds first (the server does).
    pub fn read(&self, buf: &mut [u8], offset: u64) {
        let mut done = 0;
        for (region_offset, len) in self.regions(offset, buf.len() as u64) {
            let _shared = self.lock(region_offset).read().unwrap_or_else(|e| e.into_inner());
            // SAFETY: `regions` checked the range lies inside the mapping; the region's shared lock
            // excludes writers; `buf` is a distinct Rust slice, so the ranges cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(self.at(region_offset), buf[done..].as_mut_ptr(), len) };
            done += len;
        }
    }

    /// Copies `buf` into the buffer at `offset`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn write(&self, buf: &[u8], offset: u64) {
        let mut done = 0;
        for (region_offset, len) in self.regions(offset, buf.len() as u64) {
            let _exclusive = self.lock(region_offset).write().unwrap_or_else(|e| e.into_inner());
            // SAFETY: in bounds (checked by `regions`); the exclusive lock keeps every other access
            // to this region out; `buf` is a distinct Rust slice.
            unsafe { std::ptr::copy_nonoverlapping(buf[done..].as_ptr(), self.at(region_offset), len) };
            done += len;
        }
    }

    /// Makes `count` bytes at `offset` read as zeroes. Large ranges give their whole pages back to
    /// the kernel (unless the buffer is locked in RAM).
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn zero(&self, count: u64, offset: u64) {
        for (region_offset, len) in self.regions(offset, count) {
            let _exclusive = self.lock(region_offset).write().unwrap_or_else(|e| e.into_inner());
            if count < MADVISE_MIN || self.locked || !self.drop_pages(region_offset, len as u64) {
                // SAFETY: in bounds, under the region's exclusive lock.
                unsafe { std::ptr::write_bytes(self.at(region_offset), 0, len) };
            }
        }
    }

    /// Zeroes `[offset, offset + len)` (inside one region, whose lock the caller holds) by dropping
    /// its whole pages and clearing the unaligned edges. False if the kernel refused.
    fn drop_pages(&self, offset: u64, len: u64) -> bool {
        let first = offset.next_multiple_of(OS_PAGE);
        let end = (offset + len) / OS_PAGE * OS_PAGE;
        if first >= end {
            return false;
        }
        // SAFETY: `[first, end)` is page aligned and inside the caller's region of our private
        // anonymous mapping; MADV_DONTNEED on such memory only makes it read as zeroes afterwards.
        let dropped = unsafe {
            let addr = NonNull::new_unchecked(self.at(first) as *mut c_void);
            madvise(addr, (end - first) as usize, MmapAdvise::MADV_DONTNEED).is_ok()
        };
        if dropped {
            // SAFETY: the edges are inside the caller's locked region.
            unsafe {
                std::ptr::write_bytes(self.at(offset), 0, (first - offset) as usize);
                std::ptr::write_bytes(self.at(end), 0, (offset + len - end) as usize);
            }
        }
        dropped
    }

    fn lock(&self, offset: u64) -> &RwLock<()> {
        &self.stripes[((offset / REGION_SIZE) % STRIPES as u64) as usize].0
    }

    /// Pointer to byte `offset`. Only called with offsets `regions` has bounds-checked.
    fn at(&self, offset: u64) -> *mut u8 {
        let base = self.base.expect("a non-empty range implies a mapping").as_ptr();
        // SAFETY: offset <= len, and the mapping is len bytes long.
        unsafe { base.add(offset as usize) }
    }

    /// Splits a range into `(offset, length)` pieces that stay within one region each.
    fn regions(&self, offset: u64, count: u64) -> impl Iterator<Item = (u64, usize)> {
        let end = offset.checked_add(count).filter(|&end| end <= self.len);
        let end = end
            .unwrap_or_else(|| panic!("flat buffer: range {offset}+{count} is outside the {}-byte buffer", self.len));
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let len = (REGION_SIZE - pos % REGION_SIZE).min(end - pos);
            let piece = (pos, len as usize);
            pos += len;
            Some(piece)
        })
    }
}

impl Drop for FlatBuffer {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            // SAFETY: `base` and `len` describe the mapping created in `new`, unmapped only here;
            // `&mut self` proves no request is using it.
            let _ = unsafe { munmap(base.cast(), self.len as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_zero() {
        let b = FlatBuffer::new(8 << 20, false).unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8 + 1).collect();
        b.write(&data, 12345);
        let mut back = vec![0u8; data.len()];
        b.read(&mut back, 12345);
        assert!(back == data);
        // A big zero (dropping pages) with unaligned edges, and a small one (memset).
        b.zero(2 << 20, 12346);
        b.zero(10, 12345 + (5 << 19));
        let mut expected = data.clone();
        expected[1..1 + (2 << 20)].fill(0);
        expected[5 << 19..(5 << 19) + 10].fill(0);
        b.read(&mut back, 12345);
        let first_difference = back.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first_difference, None);
    }

    #[test]
    fn empty_and_impossible_sizes() {
        let empty = FlatBuffer::new(0, false).unwrap();
        empty.read(&mut [], 0);
        assert!(empty.base.is_none());
        let err = FlatBuffer::new(1 << 62, false).err().expect("4 EiB cannot be mapped");
        assert!(err.contains("cannot allocate"), "{err}");
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_range_panics_instead_of_corrupting() {
        FlatBuffer::new(4096, false).unwrap().write(&[1], 4096);
    }
}
