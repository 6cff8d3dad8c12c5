//! The `cache` filter: keeps blocks of the layer below in a local file, so that they are read
//! from there next time and writes can be gathered until a flush (nbdkit-cache-filter).
//!
//! The disk is cut into blocks of `cache-min-block-size=` bytes, each missing, clean (the same as
//! below) or dirty (newer than below). Writes and zeroes go into the cache; `cache=writeback` (the
//! default) writes dirty blocks back on flush, `writethrough` writes every change below at once,
//! `unsafe` ignores flushes. A FUA write is always written through. Reads fill the cache only with
//! `cache-on-read=`; cache (prefetch) requests always do. With `cache-max-size=`, once the cache
//! grows past its high threshold the least recently used blocks are written back if dirty and
//! dropped (their space given back with a hole) until it is under the low threshold.
//!
//! There is one cache for the whole server, in an unlinked temporary file (see
//! [`crate::tempfile`]); every connection sees the same disk. Every change to the cache happens
//! under one lock, so a block filled from below never lands over a newer write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use nbdforge_api::extents::DATA;
use nbdforge_api::{
    parse_choice, parse_int, parse_size, Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer,
    LayerInfo, OpenArgs, Registration, Result, Support,
};

use crate::switch::Switch;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("cache", "cache reads and writes in a local file").help(
        "cache=MODE                   'writeback' (default), 'writethrough', 'unsafe'.\n\
         cache-min-block-size=SIZE    Block size of the cache (power of 2, >= 4k; default 64k).\n\
         cache-max-size=SIZE          Largest size of the cache (default: no limit).\n\
         cache-high-threshold=PCT     Start reclaiming at PCT% of the maximum (default 95).\n\
         cache-low-threshold=PCT      Stop reclaiming at PCT% of the maximum (default 80).\n\
         cache-on-read=BOOL|/PATH     Cache what is read too (default false).",
    );
    Registration::filter(info, CacheFilter::default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    WriteBack,
    WriteThrough,
    Unsafe,
}

/// The `cache` filter.
#[derive(Debug)]
pub struct CacheFilter {
    mode: Mode,
    block: u64,
    max_size: Option<u64>,
    high: u64,
    low: u64,
    on_read: Switch,
    cache: Option<Arc<Cache>>,
}

impl Default for CacheFilter {
    fn default() -> Self {
        CacheFilter {
            mode: Mode::WriteBack,
            block: 64 << 10,
            max_size: None,
            high: 95,
            low: 80,
            on_read: Switch::Off,
            cache: None,
        }
    }
}

impl Layer for CacheFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let fail = |why: &str| Err(Error::invalid(format!("{key}={value}: {why}")));
        match key {
            "cache" => {
                self.mode = match parse_choice(key, value, &["writeback", "writethrough", "unsafe"])? {
                    "writeback" => Mode::WriteBack,
                    "writethrough" => Mode::WriteThrough,
                    _ => Mode::Unsafe,
                }
            }
            "cache-min-block-size" => {
                let n = parse_size(key, value)?;
                if !n.is_power_of_two() || !(4096..=1 << 30).contains(&n) {
                    return fail("must be a power of 2 from 4k to 1G");
                }
                self.block = n;
            }
            "cache-max-size" => self.max_size = Some(parse_size(key, value)?),
            "cache-high-threshold" | "cache-low-threshold" => {
                let n: u64 = parse_int(key, value)?;
                if n == 0 {
                    return fail("must be greater than 0");
                }
                if key == "cache-high-threshold" {
                    self.high = n;
                } else {
                    self.low = n;
                }
            }
            "cache-on-read" => self.on_read = Switch::parse(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.low >= self.high {
            return Err(Error::invalid(format!(
                "cache-low-threshold ({}) must be below cache-high-threshold ({})",
                self.low, self.high
            )));
        }
        if let Some(max) = self.max_size {
            if max < self.block * 16 {
                return Err(Error::invalid(format!(
                    "cache-max-size={max}: too small for blocks of {} bytes (at least 16 blocks)",
                    self.block
                )));
            }
        }
        Ok(())
    }
}

impl Filter for CacheFilter {
    fn get_ready(&mut self, _next: &Arc<dyn Backend>) -> Result<()> {
        let file = crate::tempfile::unlinked("cache")?;
        let limits = self.max_size.map(|max| (max / 100 * self.high, max / 100 * self.low));
        self.cache = Some(Arc::new(Cache { file, block: self.block, limits, blocks: Mutex::default() }));
        Ok(())
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let cache = self.cache.clone().ok_or_else(|| Error::io("the cache was not created"))?;
        let below = next.open(args)?;
        let size = below.get_size()?;
        cache.lock().cover(size.div_ceil(self.block));
        Ok(Box::new(CacheHandle { next: below, cache, size, mode: self.mode, on_read: self.on_read.clone() }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Missing,
    Clean,
    Dirty,
}

/// The state of every block, and when each was last used.
#[derive(Debug, Default)]
struct Blocks {
    states: Vec<State>,
    last_use: Vec<u64>,
    clock: u64,
    cached: u64,
}

impl Blocks {
    fn cover(&mut self, blocks: u64) {
        let n = blocks as usize;
        if self.states.len() < n {
            self.states.resize(n, State::Missing);
            self.last_use.resize(n, 0);
        }
    }

    fn get(&mut self, b: u64) -> State {
        self.clock += 1;
        if let Some(t) = self.last_use.get_mut(b as usize) {
            *t = self.clock;
        }
        self.states.get(b as usize).copied().unwrap_or_default()
    }

    fn set(&mut self, b: u64, state: State) {
        if let Some(s) = self.states.get_mut(b as usize) {
            match (*s == State::Missing, state == State::Missing) {
                (true, false) => self.cached += 1,
                (false, true) => self.cached -= 1,
                _ => {}
            }
            *s = state;
        }
    }
}

/// The cache file and its blocks, shared by every connection.
#[derive(Debug)]
struct Cache {
    file: File,
    block: u64,
    /// With `cache-max-size`: the high and low thresholds, in bytes.
    limits: Option<(u64, u64)>,
    /// Held while blocks or the file change (and while their state is read).
    blocks: Mutex<Blocks>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Blocks> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, buf: &mut [u8], b: u64) -> Result<()> {
        self.file.read_exact_at(buf, b * self.block).map_err(|e| Error::from_io("reading the cache", &e))
    }

    fn write(&self, buf: &[u8], b: u64) -> Result<()> {
        self.file.write_all_at(buf, b * self.block).map_err(|e| Error::from_io("writing the cache", &e))
    }

    /// Gives the space of block `b` back to the file system.
    fn punch(&self, b: u64) {
        use nix::fcntl::{fallocate, FallocateFlags};
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        // Best effort: a file system without holes keeps the space until the server exits.
        let _ = fallocate(self.file.as_raw_fd(), flags, (b * self.block) as i64, self.block as i64);
    }
}

/// One connection: the layer below and the shared cache.
struct CacheHandle {
    next: Box<dyn Handle>,
    cache: Arc<Cache>,
    size: u64,
    mode: Mode,
    on_read: Switch,
}

impl CacheHandle {
    fn block(&self) -> u64 {
        self.cache.block
    }

    fn block_len(&self, b: u64) -> u64 {
        self.block().min(self.size - b * self.block())
    }

    /// Reads all of block `b` with the lock held, filling the cache from below when `fill`.
    fn read_block(&self, blocks: &mut Blocks, b: u64, buf: &mut [u8], fill: bool) -> Result<()> {
        if blocks.get(b) != State::Missing {
            return self.cache.read(buf, b);
        }
        self.next.pread(buf, b * self.block(), Flags::NONE)?;
        if fill {
            self.cache.write(buf, b)?;
            blocks.set(b, State::Clean);
        }
        Ok(())
    }

    /// Calls `each(block, offset inside it, length, offset inside the request)` per block.
    fn for_blocks(
        &self,
        count: u64,
        offset: u64,
        mut each: impl FnMut(u64, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let end = offset + count;
        let mut at = offset;
        while at < end {
            let b = at / self.block();
            let inside = at - b * self.block();
            let n = (self.block_len(b) - inside).min(end - at);
            each(b, inside, n, at - offset)?;
            at += n;
        }
        Ok(())
    }

    /// Stores `data` (zeroes when `None`) into block `b` at `inside`, and below too when the
    /// mode or the request's FUA says so.
    fn write_block(
        &self,
        blocks: &mut Blocks,
        b: u64,
        inside: u64,
        n: u64,
        data: Option<&[u8]>,
        flags: Flags,
    ) -> Result<()> {
        let len = self.block_len(b);
        let mut whole = vec![0u8; len as usize];
        if inside != 0 || n != len {
            self.read_block(blocks, b, &mut whole, false)?;
        }
        let range = inside as usize..(inside + n) as usize;
        match data {
            Some(d) => whole[range].copy_from_slice(d),
            None => whole[range].fill(0),
        }
        self.cache.write(&whole, b)?;
        let through = self.mode == Mode::WriteThrough || flags.contains(Flags::FUA);
        if through {
            let fua = if flags.contains(Flags::FUA) { Flags::FUA } else { Flags::NONE };
            self.next.pwrite(&whole, b * self.block(), fua)?;
        }
        blocks.set(b, if through { State::Clean } else { State::Dirty });
        Ok(())
    }

    /// Writes dirty block `b` back below.
    fn write_back(&self, blocks: &mut Blocks, b: u64) -> Result<()> {
        let mut whole = vec![0u8; self.block_len(b) as usize];
        self.cache.read(&mut whole, b)?;
        self.next.pwrite(&whole, b * self.block(), Flags::NONE)?;
        blocks.set(b, State::Clean);
        Ok(())
    }

    /// Drops least recently used blocks while the cache is over its high threshold.
    fn reclaim(&self, blocks: &mut Blocks) -> Result<()> {
        let Some((high, low)) = self.cache.limits else { return Ok(()) };
        if blocks.cached * self.block() <= high {
            return Ok(());
        }
        let mut by_age: Vec<u64> =
            (0..blocks.states.len() as u64).filter(|&b| blocks.states[b as usize] != State::Missing).collect();
        by_age.sort_unstable_by_key(|&b| blocks.last_use[b as usize]);
        for b in by_age {
            if blocks.cached * self.block() <= low {
                break;
            }
            // Only blocks this connection can reach (sizes may differ between connections).
            if b * self.block() >= self.size {
                continue;
            }
            if blocks.states[b as usize] == State::Dirty {
                self.write_back(blocks, b)?;
            }
            blocks.set(b, State::Missing);
            self.cache.punch(b);
        }
        Ok(())
    }
}

impl Handle for CacheHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let below = self.next.capabilities()?;
        Ok(Capabilities {
            // Zeroes are written into the cache like data: the server does it through pwrite.
            zero: if below.write { Support::Emulate } else { Support::None },
            fast_zero: false,
            fua: if below.write { Support::Native } else { Support::None },
            flush: below.write || below.flush,
            multi_conn: true,
            extents: true,
            cache: Support::Native,
            ..below
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let fill = self.on_read.is_on();
        let mut blocks = self.cache.lock();
        let mut whole = Vec::new();
        self.for_blocks(buf.len() as u64, offset, |b, inside, n, from| {
            let dst = &mut buf[from as usize..(from + n) as usize];
            if inside == 0 && n == self.block_len(b) {
                return self.read_block(&mut blocks, b, dst, fill);
            }
            whole.resize(self.block_len(b) as usize, 0);
            self.read_block(&mut blocks, b, &mut whole, fill)?;
            dst.copy_from_slice(&whole[inside as usize..(inside + n) as usize]);
            Ok(())
        })?;
        if fill {
            self.reclaim(&mut blocks)?;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let mut blocks = self.cache.lock();
        self.for_blocks(buf.len() as u64, offset, |b, inside, n, from| {
            self.write_block(&mut blocks, b, inside, n, Some(&buf[from as usize..(from + n) as usize]), flags)
        })?;
        self.reclaim(&mut blocks)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        // Whole blocks are dropped from the cache and trimmed below; trim is advisory, so the
        // partial blocks at the ends are left alone.
        let mut blocks = self.cache.lock();
        self.for_blocks(count, offset, |b, inside, n, _| {
            if inside == 0 && n == self.block_len(b) {
                blocks.set(b, State::Missing);
                self.cache.punch(b);
                self.next.trim(n, b * self.block(), flags)?;
            }
            Ok(())
        })
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        if self.mode == Mode::Unsafe {
            return Ok(());
        }
        let mut blocks = self.cache.lock();
        let dirty: Vec<u64> = (0..blocks.states.len() as u64)
            .filter(|&b| blocks.states[b as usize] == State::Dirty && b * self.block() < self.size)
            .collect();
        for b in dirty {
            self.write_back(&mut blocks, b)?;
        }
        drop(blocks);
        self.next.flush(flags)
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let mut blocks = self.cache.lock();
        let mut whole = Vec::new();
        self.for_blocks(count, offset, |b, _, _, _| {
            whole.resize(self.block_len(b) as usize, 0);
            self.read_block(&mut blocks, b, &mut whole, true)
        })?;
        self.reclaim(&mut blocks)
    }

    // Dirty blocks are data whatever the layer below says about them.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let end = (offset + count).min(self.size);
        let mut at = extents.next_offset().max(offset);
        while at < end && !extents.is_full() {
            let dirty = |b: u64| self.cache.lock().states.get(b as usize) == Some(&State::Dirty);
            let first = dirty(at / self.block());
            let mut run_end = ((at / self.block() + 1) * self.block()).min(end);
            while run_end < end && dirty(run_end / self.block()) == first {
                run_end = (run_end + self.block()).min(end);
            }
            if first {
                extents.add(at, run_end - at, DATA)?;
            } else {
                let mut below = Extents::new(at, run_end);
                self.next.extents(run_end - at, at, flags, &mut below)?;
                for e in below.as_slice() {
                    extents.add(e.offset, e.length, e.flags)?;
                }
                if below.next_offset() < run_end {
                    break;
                }
            }
            at = extents.next_offset();
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    fn filter(params: &[(&str, &str)], disk: &MemDisk) -> Box<dyn Handle> {
        let mut all = vec![("cache-min-block-size", "4k")];
        all.extend_from_slice(params);
        open_over(CacheFilter::default(), &all, disk).unwrap()
    }

    #[test]
    fn writeback_reaches_the_layer_below_on_flush_only() {
        let disk = MemDisk::new(8 * 4096);
        let h = filter(&[], &disk);
        h.pwrite(b"later", 100, Flags::NONE).unwrap();
        let mut back = [0u8; 5];
        h.pread(&mut back, 100, Flags::NONE).unwrap();
        assert_eq!(&back, b"later");
        assert_eq!(disk.data.lock().unwrap()[100], 0, "not written below yet");
        let mut e = Extents::new(0, 8192);
        h.extents(8192, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice()[0].flags, DATA);
        h.flush(Flags::NONE).unwrap();
        assert_eq!(&disk.data.lock().unwrap()[100..105], b"later");
        h.pwrite(b"now", 5000, Flags::FUA).unwrap();
        assert_eq!(&disk.data.lock().unwrap()[5000..5003], b"now", "FUA writes through");
    }

    #[test]
    fn writethrough_and_reclaim() {
        let disk = MemDisk::new(64 * 4096);
        let h = filter(&[("cache", "writethrough")], &disk);
        h.pwrite(b"at once", 0, Flags::NONE).unwrap();
        assert_eq!(&disk.data.lock().unwrap()[..7], b"at once");

        let h = filter(&[("cache-max-size", "64k"), ("cache-on-read", "true")], &disk);
        let mut buf = vec![0u8; 4096];
        for b in 0..40 {
            h.pread(&mut buf, b * 4096, Flags::NONE).unwrap();
        }
        h.pwrite(&[7; 4096], 0, Flags::NONE).unwrap();
        for b in 40..60 {
            h.pread(&mut buf, b * 4096, Flags::NONE).unwrap();
        }
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(buf, vec![7; 4096], "a dirty block dropped from the cache was written back first");
    }

    #[test]
    fn parameters() {
        let mut f = CacheFilter::default();
        assert!(f.config("cache", "sometimes").unwrap_err().message.starts_with("cache=sometimes: "));
        assert!(f.config("cache-min-block-size", "1k").is_err());
        f.config("cache-low-threshold", "90").unwrap();
        f.config("cache-high-threshold", "90").unwrap();
        assert!(f.config_complete().unwrap_err().message.contains("cache-low-threshold"));
    }
}
