//! The `truncate` filter: changes the size of the layer below (nbdkit-truncate-filter).
//!
//! The new size is `truncate=`, then rounded up and down to multiples of `round-up=` and
//! `round-down=`, each applied in that order when given. Bytes past the end of the layer below
//! read as zeroes and are a hole; writing zeroes there succeeds and anything else fails with
//! `ENOSPC`, since there is nowhere to keep it. Each connection fixes both sizes when it opens.

use std::sync::Arc;

use nbdforge_api::extents::{HOLE, ZERO};
use nbdforge_api::{
    parse_size, Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink,
    Registration, Result, Support, BASE_ALLOCATION, MAX_SIZE,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("truncate", "change the size of the plugin").help(
        "truncate=<SIZE>  The new size.\n\
         round-up=<N>     Round the size up to a multiple of N (a power of 2).\n\
         round-down=<N>   Round the size down to a multiple of N (a power of 2).",
    );
    Registration::filter(info, TruncateFilter::default)
}

/// The `truncate` filter.
#[derive(Debug, Default)]
pub struct TruncateFilter {
    size: Option<u64>,
    round_up: Option<u64>,
    round_down: Option<u64>,
}

/// A rounding parameter: a size, not zero, at most 2^32-1, a power of two.
fn parse_round(key: &str, value: &str) -> Result<u64> {
    let n = parse_size(key, value)?;
    let fail = |why: &str| Err(Error::invalid(format!("{key}={value}: {why}")));
    if n == 0 {
        return fail("must be greater than 0");
    }
    if n > u64::from(u32::MAX) {
        return fail("is too large (at most 2^32-1)");
    }
    if !n.is_power_of_two() {
        return fail("must be a power of 2");
    }
    Ok(n)
}

impl TruncateFilter {
    /// The size the filter shows over a layer of `real_size` bytes.
    fn apparent_size(&self, real_size: u64) -> Result<u64> {
        let mut size = self.size.unwrap_or(real_size);
        if let Some(n) = self.round_up {
            size = size
                .checked_next_multiple_of(n)
                .filter(|&s| s <= MAX_SIZE)
                .ok_or_else(|| Error::invalid(format!("cannot round size {size} up to a multiple of {n}")))?;
        }
        if let Some(n) = self.round_down {
            size -= size % n;
        }
        Ok(size)
    }
}

impl Layer for TruncateFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "truncate" => self.size = Some(parse_size(key, value)?),
            "round-up" => self.round_up = Some(parse_round(key, value)?),
            "round-down" => self.round_down = Some(parse_round(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for TruncateFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let real_size = below.get_size()?;
        let size = self.apparent_size(real_size)?;
        Ok(Box::new(TruncateHandle { next: below, real_size, size }))
    }
}

/// One connection: the sizes of the layer below and of the export, fixed at open.
struct TruncateHandle {
    next: Box<dyn Handle>,
    real_size: u64,
    size: u64,
}

impl TruncateHandle {
    /// How many of `count` bytes at `offset` lie inside the layer below.
    fn inside(&self, count: u64, offset: u64) -> u64 {
        self.real_size.saturating_sub(offset).min(count)
    }
}

impl Handle for TruncateHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let mut caps = self.next.capabilities()?;
        // The tail is always known to be a hole, and zeroing it costs nothing.
        caps.extents = true;
        if caps.write {
            caps.zero = Support::Native;
            caps.fast_zero = true;
        }
        Ok(caps)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if self.inside(count, offset) == count {
            return self.next.read(count, offset, flags, sink);
        }
        self.pread(sink.buffer()?, offset, flags)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let (head, tail) = buf.split_at_mut(self.inside(buf.len() as u64, offset) as usize);
        if !head.is_empty() {
            self.next.pread(head, offset, flags)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let (head, tail) = buf.split_at(self.inside(buf.len() as u64, offset) as usize);
        // Checked first, so that a refused write changes nothing.
        if tail.iter().any(|&b| b != 0) {
            return Err(Error::new(
                libc::ENOSPC,
                format!("write of non-zero data past the end of the layer below ({} bytes)", self.real_size),
            ));
        }
        if head.is_empty() {
            return Ok(());
        }
        self.next.pwrite(head, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match self.inside(count, offset) {
            0 => Ok(()),
            n => self.next.trim(n, offset, flags),
        }
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match self.inside(count, offset) {
            0 => Ok(()),
            n => self.next.zero(n, offset, flags),
        }
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match self.inside(count, offset) {
            0 => Ok(()),
            n => self.next.cache(n, offset, flags),
        }
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.block_status(BASE_ALLOCATION, count, offset, flags, extents)
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let start = extents.next_offset().max(offset);
        let end = offset + count;
        let inside = self.inside(end.saturating_sub(start), start);
        if inside > 0 {
            let mut below = Extents::new(start, start + inside);
            self.next.block_status(context, inside, start, flags, &mut below)?;
            for e in below.as_slice() {
                extents.add(e.offset, e.length, e.flags)?;
            }
        }
        // Past the layer below: a hole of zeroes, or in other contexts their "nothing" (0).
        let tail_flags = if context == BASE_ALLOCATION { HOLE | ZERO } else { 0 };
        let from = extents.next_offset();
        if from >= self.real_size && from < end && !extents.is_full() {
            extents.add(from, end - from, tail_flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};
    use nbdforge_api::extents::DATA;
    use nbdforge_api::Extent;

    fn filter(params: &[(&str, &str)], disk: &MemDisk) -> Box<dyn Handle> {
        open_over(TruncateFilter::default(), params, disk).unwrap()
    }

    #[test]
    fn sizes() {
        let disk = MemDisk::new(1000);
        assert_eq!(filter(&[("truncate", "600")], &disk).get_size().unwrap(), 600);
        assert_eq!(filter(&[("round-up", "512")], &disk).get_size().unwrap(), 1024);
        assert_eq!(filter(&[("round-down", "512")], &disk).get_size().unwrap(), 512);
        assert_eq!(filter(&[("truncate", "2000"), ("round-up", "1K")], &disk).get_size().unwrap(), 2048);
        let mut f = TruncateFilter::default();
        assert_eq!(f.config("round-up", "3").unwrap_err().message, "round-up=3: must be a power of 2");
        assert!(f.config("round-down", "0").unwrap_err().message.starts_with("round-down=0: "));
        assert!(f.config("round-up", "8G").is_err());
        assert!(f.config("truncate", "1Q").unwrap_err().message.starts_with("truncate=1Q: "));
    }

    #[test]
    fn the_tail_reads_as_zeroes_and_takes_only_zeroes() {
        let disk = MemDisk::new(1000);
        disk.pwrite(&[7; 1000], 0, Flags::NONE).unwrap();
        let h = filter(&[("truncate", "3000")], &disk);
        let mut buf = [1u8; 20];
        h.pread(&mut buf, 990, Flags::NONE).unwrap();
        assert_eq!(buf[..10], [7; 10]);
        assert_eq!(buf[10..], [0; 10]);
        h.pwrite(&[9; 10], 2000, Flags::NONE).err().unwrap();
        let e = h.pwrite(&[5; 20], 990, Flags::NONE).unwrap_err();
        assert_eq!(e.errno, libc::ENOSPC);
        assert_eq!(disk.data.lock().unwrap()[995], 7, "a refused write changes nothing");
        h.pwrite(&[5, 5, 0, 0], 998, Flags::NONE).unwrap();
        h.zero(2000, 500, Flags::NONE).unwrap();
        assert!(disk.take_log().contains(&"zero 500+500 0".to_string()));
    }

    #[test]
    fn extents_end_in_a_hole() {
        let disk = MemDisk::new(1024);
        disk.pwrite(&[7; 1024], 0, Flags::NONE).unwrap();
        let h = filter(&[("truncate", "4096")], &disk);
        let mut e = Extents::new(512, 4096);
        h.extents(3584, 512, Flags::NONE, &mut e).unwrap();
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 512, length: 512, flags: DATA },
                Extent { offset: 1024, length: 3072, flags: HOLE | ZERO }
            ]
        );
    }
}
