//! The `blocksize` filter: lets any client use a layer that only takes aligned or bounded
//! requests (nbdkit-blocksize-filter).
//!
//! Below the filter, every request is aligned to `minblock=` and no longer than `maxdata=`
//! (reads and writes) or `maxlen=` (trim, zero, cache, extents). Above it, anything goes:
//! unaligned reads are widened to whole blocks; the unaligned head and tail of a write or zero
//! are read, changed and written back (read-modify-write); the unaligned ends of a trim are
//! dropped, since trim is advisory; long requests are cut into pieces. The export's size is
//! rounded down to a block, as the tail cannot be written safely.
//!
//! A read-modify-write racing another change of the same block would write the block's old
//! bytes back over that change: two of them at once would lose one, and one racing a write of the
//! whole block would bring back data older than both. So a read-modify-write holds one lock for
//! the whole server (connections share the layer below) alone, and the aligned parts of writes
//! and zeroes hold it shared: they run in parallel with each other, never during a
//! read-modify-write. Reads take no lock; a read racing a write may see either, as NBD allows.

use std::sync::{Arc, RwLock};

use nbdforge_api::{
    parse_size, Backend, BlockSize, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink,
    Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("blocksize", "adjust block size of requests").help(
        "minblock=<SIZE>  Minimum block size and alignment passed to the plugin (power of 2, <= 64k).\n\
         maxdata=<SIZE>   Maximum size of a read or write passed to the plugin (default 64M).\n\
         maxlen=<SIZE>    Maximum length of a trim, zero, cache or extents passed to the plugin.",
    );
    Registration::filter(info, BlocksizeFilter::default)
}

/// nbdforge's own largest read or write.
const MAX_DATA: u64 = 64 << 20;

/// The `blocksize` filter, with the parameters as given.
#[derive(Debug, Default)]
pub struct BlocksizeFilter {
    minblock: Option<u64>,
    maxdata: Option<u64>,
    maxlen: Option<u64>,
    /// Held alone by read-modify-writes, shared by aligned writes, on every connection.
    rmw: Arc<RwLock<()>>,
}

impl Layer for BlocksizeFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let n = match key {
            "minblock" | "maxdata" | "maxlen" => parse_size(key, value)?,
            _ => return Ok(false),
        };
        let fail = |why: &str| Err(Error::invalid(format!("{key}={value}: {why}")));
        match key {
            "minblock" if !n.is_power_of_two() || n > 65536 => return fail("must be a power of 2, at most 64k"),
            "minblock" => self.minblock = Some(n),
            "maxdata" if !(1..=MAX_DATA).contains(&n) => return fail("must be between 1 and 64M"),
            "maxdata" => self.maxdata = Some(n),
            _ if !(1..=u64::from(u32::MAX)).contains(&n) => return fail("must be between 1 and 4G - 1"),
            _ => self.maxlen = Some(n),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if let Some(min) = self.minblock {
            for (key, value) in [("maxdata", self.maxdata), ("maxlen", self.maxlen)] {
                if let Some(n) = value.filter(|n| !n.is_multiple_of(min)) {
                    return Err(Error::invalid(format!("{key}={n}: must be a multiple of minblock ({min})")));
                }
            }
        }
        Ok(())
    }
}

impl Filter for BlocksizeFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let limits = below.block_size()?;
        let block = self.minblock.or(limits.map(|b| u64::from(b.minimum))).unwrap_or(1);
        let below_max = limits.map_or(MAX_DATA, |b| u64::from(b.maximum));
        let round = |n: u64| (n - n % block).max(block);
        let maxdata = round(self.maxdata.unwrap_or(MAX_DATA.min(below_max)));
        let maxlen = round(self.maxlen.unwrap_or(u64::from(u32::MAX)));
        let size = below.get_size()?;
        Ok(Box::new(BlocksizeHandle {
            next: below,
            block,
            maxdata,
            maxlen,
            size: size - size % block,
            rmw: Arc::clone(&self.rmw),
        }))
    }
}

/// One connection: the limits of the layer below and the server's read-modify-write lock.
struct BlocksizeHandle {
    next: Box<dyn Handle>,
    block: u64,
    maxdata: u64,
    maxlen: u64,
    size: u64,
    rmw: Arc<RwLock<()>>,
}

/// `[start, end)` cut into consecutive pieces of at most `max` bytes, as (offset, length).
fn pieces(start: u64, end: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end).step_by(max as usize).map(move |at| (at, max.min(end - at)))
}

impl BlocksizeHandle {
    fn down(&self, n: u64) -> u64 {
        n - n % self.block
    }

    fn up(&self, n: u64) -> u64 {
        self.down(n + self.block - 1)
    }

    /// Reads the aligned range `[start, end)` into `buf`, in pieces of at most `maxdata`.
    fn read_aligned(&self, buf: &mut [u8], start: u64, flags: Flags) -> Result<()> {
        for (at, len) in pieces(start, start + buf.len() as u64, self.maxdata) {
            let from = (at - start) as usize;
            self.next.pread(&mut buf[from..from + len as usize], at, flags)?;
        }
        Ok(())
    }

    /// Changes `data` (or zeroes, when `None`) into the one block at `block_start`, from
    /// `offset` inside it, by reading the block, changing it and writing it back.
    fn modify_block(&self, block_start: u64, offset: u64, len: usize, data: Option<&[u8]>, flags: Flags) -> Result<()> {
        let _alone = self.rmw.write().unwrap_or_else(|e| e.into_inner());
        let mut bounce = vec![0u8; self.block as usize];
        self.next.pread(&mut bounce, block_start, Flags::NONE)?;
        let at = (offset - block_start) as usize;
        match data {
            Some(d) => bounce[at..at + len].copy_from_slice(d),
            None => bounce[at..at + len].fill(0),
        }
        self.next.pwrite(&bounce, block_start, flags)
    }

    /// Writes `data` or zeroes to `[offset, offset + count)`: the unaligned ends block by block,
    /// the aligned middle with `middle(offset, length)`.
    fn write_like(
        &self,
        count: u64,
        offset: u64,
        data: Option<&[u8]>,
        flags: Flags,
        middle: impl Fn(u64, u64) -> Result<()>,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let end = offset + count;
        let slice = |from: u64, to: u64| data.map(|d| &d[(from - offset) as usize..(to - offset) as usize]);
        let mut at = offset;
        if !at.is_multiple_of(self.block) {
            let block_start = self.down(at);
            let to = end.min(block_start + self.block);
            self.modify_block(block_start, at, (to - at) as usize, slice(at, to), flags)?;
            at = to;
        }
        let aligned_end = self.down(end).max(at);
        if aligned_end > at {
            let _shared = self.rmw.read().unwrap_or_else(|e| e.into_inner());
            middle(at, aligned_end - at)?;
            at = aligned_end;
        }
        if at < end {
            self.modify_block(at, at, (end - at) as usize, slice(at, end), flags)?;
        }
        Ok(())
    }
}

impl Handle for BlocksizeHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        // The filter takes any request; it prefers whole blocks of the layer below.
        let preferred = self.next.block_size()?.map_or(4096, |b| b.preferred).max(self.block as u32);
        Ok(Some(BlockSize { minimum: 1, preferred, maximum: u32::MAX }))
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        // An aligned read the layer below takes as it is keeps its zero-copy path.
        if offset.is_multiple_of(self.block) && count.is_multiple_of(self.block) && count <= self.maxdata {
            return self.next.read(count, offset, flags, sink);
        }
        self.pread(sink.buffer()?, offset, flags)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let end = offset + buf.len() as u64;
        let (start, stop) = (self.down(offset), self.up(end));
        if start == offset && stop == end {
            return self.read_aligned(buf, offset, flags);
        }
        // Widened to whole blocks: read the aligned middle in place, the ends through a bounce
        // buffer of one block each.
        let mut at = offset;
        let mut bounce = vec![0u8; self.block as usize];
        while at < end {
            let block_start = self.down(at);
            let aligned_run = if at == block_start { self.down(end) - at } else { 0 };
            let filled = (at - offset) as usize;
            if aligned_run > 0 {
                self.read_aligned(&mut buf[filled..filled + aligned_run as usize], at, flags)?;
                at += aligned_run;
            } else {
                let to = end.min(block_start + self.block);
                self.next.pread(&mut bounce, block_start, flags)?;
                let from = (at - block_start) as usize;
                buf[filled..filled + (to - at) as usize].copy_from_slice(&bounce[from..from + (to - at) as usize]);
                at = to;
            }
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.write_like(buf.len() as u64, offset, Some(buf), flags, |at, len| {
            for (piece, n) in pieces(at, at + len, self.maxdata) {
                let from = (piece - offset) as usize;
                self.next.pwrite(&buf[from..from + n as usize], piece, flags)?;
            }
            Ok(())
        })
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let unaligned = !offset.is_multiple_of(self.block) || !(offset + count).is_multiple_of(self.block);
        if unaligned && flags.contains(Flags::FAST_ZERO) {
            return Err(Error::new(libc::ENOTSUP, "fast zero of unaligned range needs a read-modify-write"));
        }
        let write_flags = flags.without(Flags::MAY_TRIM).without(Flags::FAST_ZERO);
        self.write_like(count, offset, None, write_flags, |at, len| {
            pieces(at, at + len, self.maxlen).try_for_each(|(piece, n)| self.next.zero(n, piece, flags))
        })
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        // Trim is advisory: the unaligned ends are simply not trimmed.
        let (start, end) = (self.up(offset), self.down(offset + count));
        pieces(start, end.max(start), self.maxlen).try_for_each(|(at, n)| self.next.trim(n, at, flags))
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let (start, end) = (self.down(offset), self.up(offset + count).min(self.size));
        pieces(start, end, self.maxlen).try_for_each(|(at, n)| self.next.cache(n, at, flags))
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let start = self.down(extents.next_offset().max(offset));
        let end = self.up(offset + count).min(self.size).min(start + self.maxlen);
        let mut below = Extents::new(start, end);
        self.next.extents(end - start, start, flags, &mut below)?;
        for e in below.as_slice() {
            extents.add(e.offset, e.length, e.flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};
    use nbdforge_api::BufferSink;

    fn filter(params: &[(&str, &str)], disk: &MemDisk) -> Box<dyn Handle> {
        open_over(BlocksizeFilter::default(), params, disk).unwrap()
    }

    /// Every request the disk saw was aligned to `block` and no longer than `max`.
    fn all_aligned(disk: &MemDisk, block: u64, max: u64) {
        for call in disk.take_log() {
            let range = call.split(' ').nth(1).unwrap();
            let (at, len) = range.split_once('+').unwrap();
            let (at, len): (u64, u64) = (at.parse().unwrap(), len.parse().unwrap());
            assert!(at.is_multiple_of(block) && len.is_multiple_of(block) && len <= max, "{call}");
        }
    }

    #[test]
    fn unaligned_reads_and_writes_become_aligned_ones() {
        let disk = MemDisk::new(8192 + 100);
        let h = filter(&[("minblock", "512"), ("maxdata", "1k")], &disk);
        assert_eq!(h.get_size().unwrap(), 8192);
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        h.pwrite(&data, 700, Flags::NONE).unwrap();
        all_aligned(&disk, 512, 1024);
        assert_eq!(&disk.data.lock().unwrap()[700..3700], &data[..]);
        assert_eq!(disk.data.lock().unwrap()[699], 0, "bytes next to the write are kept");
        let mut back = vec![0u8; 2999];
        h.read(2999, 701, Flags::NONE, &mut BufferSink(&mut back)).unwrap();
        assert_eq!(back, data[1..]);
        all_aligned(&disk, 512, 1024);
        let mut small = [0u8; 3];
        h.pread(&mut small, 1000, Flags::NONE).unwrap();
        assert_eq!(small[..], data[300..303]);
    }

    #[test]
    fn zero_trim_and_extents_are_aligned_and_split() {
        let disk = MemDisk::new(1 << 16);
        disk.pwrite(&[9; 1 << 16], 0, Flags::NONE).unwrap();
        disk.take_log();
        let h = filter(&[("minblock", "4k"), ("maxlen", "8k")], &disk);
        h.zero(30_000, 100, Flags::MAY_TRIM).unwrap();
        all_aligned(&disk, 4096, 8192);
        let data = disk.data.lock().unwrap().clone();
        assert_eq!(data[99], 9);
        assert!(data[100..30_100].iter().all(|&b| b == 0));
        assert_eq!(data[30_100], 9);
        assert_eq!(h.zero(10, 1, Flags::FAST_ZERO).unwrap_err().errno, libc::ENOTSUP);
        h.trim(20_000, 100, Flags::NONE).unwrap();
        let log = disk.take_log();
        assert_eq!(log, ["trim 4096+8192 0", "trim 12288+4096 0"]);
        let mut e = Extents::new(100, 1 << 16);
        h.extents((1 << 16) - 100, 100, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice()[0].offset, 100);
        all_aligned(&disk, 4096, 8192);
    }

    #[test]
    fn parallel_read_modify_writes_of_one_block_keep_every_change() {
        let disk = MemDisk::new(4096);
        let h: Arc<dyn Handle> = filter(&[("minblock", "4k")], &disk).into();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        h.pwrite(&[t + 1], u64::from(t) * 64 + i, Flags::NONE).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let data = disk.data.lock().unwrap();
        for t in 0..8usize {
            assert!(data[t * 64..t * 64 + 50].iter().all(|&b| b == t as u8 + 1), "thread {t}'s bytes");
        }
    }

    #[test]
    fn a_read_modify_write_never_undoes_a_write_of_the_same_block() {
        // Two connections: one changes 10 bytes of block 0 (read, change, write back), the other
        // writes all of block 0 while that read is still going. Either order may win, but the
        // block must not come back to its old bytes next to the 10.
        let disk = MemDisk::new(8192);
        disk.read_pause_ms.store(100, std::sync::atomic::Ordering::Relaxed);
        let mut f = BlocksizeFilter::default();
        assert!(f.config("minblock", "4k").unwrap());
        f.config_complete().unwrap();
        let next: Arc<dyn Backend> = Arc::new(crate::test_disk::MemBackend(disk.clone()));
        let args = OpenArgs::local("", false);
        let (a, b): (Arc<dyn Handle>, Arc<dyn Handle>) =
            (f.open(&next, &args).unwrap().into(), f.open(&next, &args).unwrap().into());
        let rmw = std::thread::spawn(move || a.pwrite(&[1; 10], 100, Flags::NONE).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(30));
        b.pwrite(&[2; 4096], 0, Flags::NONE).unwrap();
        rmw.join().unwrap();
        let data = disk.data.lock().unwrap();
        assert!(data[..100].iter().all(|&x| x == 2), "the whole-block write was undone: {:?}", &data[..8]);
        assert!(data[100..110].iter().all(|&x| x == 1 || x == 2));
    }

    #[test]
    fn parameters() {
        let mut f = BlocksizeFilter::default();
        assert!(f.config("minblock", "3").unwrap_err().message.starts_with("minblock=3: "));
        assert!(f.config("minblock", "128k").is_err());
        assert!(f.config("maxdata", "65M").unwrap_err().message.starts_with("maxdata=65M: "));
        f.config("minblock", "4k").unwrap();
        f.config("maxdata", "6000").unwrap();
        assert!(f.config_complete().unwrap_err().message.contains("multiple of minblock"));
    }
}
