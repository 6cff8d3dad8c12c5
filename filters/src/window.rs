//! A window onto part of the layer below: the bytes `[base, base + size)` served as a disk of
//! `size` bytes starting at 0.
//!
//! The `offset` and `partition` filters differ only in how they find `base` and `size` (from
//! parameters, from a partition table); both hand the layer below's handle to a [`Window`], which
//! shifts every request by `base`. Reads are shifted too but not copied: the sink goes down with
//! the request, so the layer below's zero-copy paths still reach the client.

use nbdforge_api::{Extents, Flags, Handle, ReadSink, Result};

/// The handle of a filter serving `[base, base + size)` of the layer below.
pub struct Window {
    next: Box<dyn Handle>,
    base: u64,
    size: u64,
}

impl Window {
    /// A window of `size` bytes from `base`; the caller has checked that it fits the layer below.
    pub fn new(next: Box<dyn Handle>, base: u64, size: u64) -> Self {
        Window { next, base, size }
    }
}

impl Handle for Window {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.next.read(count, offset + self.base, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.next.pread(buf, offset + self.base, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.next.pwrite(buf, offset + self.base, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.next.trim(count, offset + self.base, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.next.zero(count, offset + self.base, flags)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.next.cache(count, offset + self.base, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.block_status(nbdforge_api::BASE_ALLOCATION, count, offset, flags, extents)
    }

    // Every context, not only base:allocation, is about offsets of the layer below.
    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let start = extents.next_offset().max(offset);
        let end = (offset + count).min(self.size);
        if start >= end {
            return Ok(());
        }
        let mut below = Extents::new(start + self.base, end + self.base);
        self.next.block_status(context, end - start, start + self.base, flags, &mut below)?;
        for e in below.as_slice() {
            extents.add(e.offset - self.base, e.length, e.flags)?;
            if extents.is_full() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemDisk;
    use nbdforge_api::extents::{DATA, HOLE, ZERO};
    use nbdforge_api::{BufferSink, Extent};

    #[test]
    fn requests_are_shifted_by_the_base() {
        let disk = MemDisk::new(4096);
        disk.pwrite(b"abcdefgh", 1000, Flags::NONE).unwrap();
        let w = Window::new(Box::new(disk), 1002, 100);
        assert_eq!(w.get_size().unwrap(), 100);
        let mut buf = [0u8; 3];
        w.read(3, 0, Flags::NONE, &mut BufferSink(&mut buf)).unwrap();
        assert_eq!(&buf, b"cde");
        w.pwrite(b"XY", 1, Flags::NONE).unwrap();
        w.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"cXY");
    }

    #[test]
    fn extents_come_back_in_the_window_s_offsets() {
        let disk = MemDisk::new(8192);
        disk.pwrite(&[1; 512], 4096, Flags::NONE).unwrap();
        let w = Window::new(Box::new(disk), 4096 - 512, 2048);
        let mut e = Extents::new(0, 2048);
        w.extents(2048, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 0, length: 512, flags: HOLE | ZERO },
                Extent { offset: 512, length: 512, flags: DATA },
                Extent { offset: 1024, length: 1024, flags: HOLE | ZERO },
            ]
        );
    }
}
