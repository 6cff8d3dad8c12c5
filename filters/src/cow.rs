//! The `cow` filter: makes a read-only layer writable by keeping every change in a temporary
//! overlay, thrown away when the server exits (nbdkit-cow-filter).
//!
//! The disk is cut into blocks of `cow-block-size=` bytes. Each block is in the layer below
//! (never written), in the overlay (written, or copied there by `cow-on-read=` or
//! `cow-on-cache=`), or trimmed (zeroed or trimmed whole: it reads as zeroes and needs no space).
//! The overlay is one temporary file for the whole server, so every connection sees the same
//! disk; it is deleted as soon as it is created, so nothing is left behind whatever way the server
//! ends. The layer below is opened read-only.
//!
//! Every change to the overlay (a write, a read-modify-write of a partial block, a copy on read)
//! happens under one lock, and a copy on read checks again under it that the block is still
//! untouched, so that a copy of old data never lands over a newer write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, RwLock};

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    parse_bool, parse_size, Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    ReadSink, Registration, Result, Support,
};

use crate::switch::Switch;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("cow", "copy-on-write overlay for read-only plugins").help(
        "cow-block-size=<N>              Block size of the overlay (power of 2, >= 4k; default 64k).\n\
         cow-on-cache=true|false         Copy cache (prefetch) requests into the overlay (default false).\n\
         cow-on-read=true|false|/PATH    Copy reads into the overlay (default false).",
    );
    Registration::filter(info, CowFilter::default)
}

/// The `cow` filter.
#[derive(Debug)]
pub struct CowFilter {
    block: u64,
    on_cache: bool,
    on_read: Switch,
    overlay: Option<Arc<Overlay>>,
}

impl Default for CowFilter {
    fn default() -> Self {
        CowFilter { block: 64 << 10, on_cache: false, on_read: Switch::Off, overlay: None }
    }
}

impl Layer for CowFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "cow-block-size" => {
                let n = parse_size(key, value)?;
                if !n.is_power_of_two() || !(4096..=1 << 30).contains(&n) {
                    return Err(Error::invalid(format!("{key}={value}: must be a power of 2 from 4k to 1G")));
                }
                self.block = n;
            }
            "cow-on-cache" => self.on_cache = parse_bool(key, value)?,
            "cow-on-read" => self.on_read = Switch::parse(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for CowFilter {
    fn get_ready(&mut self, _next: &Arc<dyn Backend>) -> Result<()> {
        self.overlay = Some(Arc::new(Overlay::create(self.block)?));
        Ok(())
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let overlay = self.overlay.clone().ok_or_else(|| Error::io("the overlay was not created"))?;
        let below = next.open(&args.read_only())?;
        let size = below.get_size()?;
        overlay.cover(size);
        Ok(Box::new(CowHandle { next: below, overlay, size, on_read: self.on_read.clone(), on_cache: self.on_cache }))
    }
}

/// Where a block's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Below,
    Overlay,
    Trimmed,
}

/// The overlay file and the state of each block, shared by every connection.
#[derive(Debug)]
struct Overlay {
    file: File,
    block: u64,
    states: RwLock<Vec<State>>,
    /// Held while the overlay or the states change.
    changing: Mutex<()>,
}

impl Overlay {
    /// A new, empty overlay (see [`crate::tempfile`]).
    fn create(block: u64) -> Result<Overlay> {
        let file = crate::tempfile::unlinked("cow")?;
        Ok(Overlay { file, block, states: RwLock::new(Vec::new()), changing: Mutex::new(()) })
    }

    /// Makes room for the states of a disk of `size` bytes (sizes may differ per connection).
    fn cover(&self, size: u64) {
        let blocks = size.div_ceil(self.block) as usize;
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        if states.len() < blocks {
            states.resize(blocks, State::Below);
        }
    }

    fn state(&self, b: u64) -> State {
        self.states.read().unwrap_or_else(|e| e.into_inner()).get(b as usize).copied().unwrap_or(State::Below)
    }

    fn set(&self, b: u64, state: State) {
        if let Some(s) = self.states.write().unwrap_or_else(|e| e.into_inner()).get_mut(b as usize) {
            *s = state;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.file.read_exact_at(buf, at).map_err(|e| Error::from_io("reading the overlay", &e))
    }

    fn write(&self, buf: &[u8], at: u64) -> Result<()> {
        self.file.write_all_at(buf, at).map_err(|e| Error::from_io("writing the overlay", &e))
    }
}

/// One connection: the read-only layer below and the shared overlay.
struct CowHandle {
    next: Box<dyn Handle>,
    overlay: Arc<Overlay>,
    size: u64,
    on_read: Switch,
    on_cache: bool,
}

impl CowHandle {
    fn block(&self) -> u64 {
        self.overlay.block
    }

    /// The length of block `b`: the last one may be short.
    fn block_len(&self, b: u64) -> u64 {
        self.block().min(self.size - b * self.block())
    }

    /// Reads all of block `b` into `buf`, copying it into the overlay when `copy` says so.
    fn read_block(&self, b: u64, buf: &mut [u8], copy: bool) -> Result<()> {
        let at = b * self.block();
        match self.overlay.state(b) {
            State::Overlay => self.overlay.read(buf, at),
            State::Trimmed => {
                buf.fill(0);
                Ok(())
            }
            State::Below => {
                self.next.pread(buf, at, Flags::NONE)?;
                if copy {
                    let _changing = self.overlay.lock();
                    // A write may have come in since the read: it wins.
                    if self.overlay.state(b) == State::Below {
                        self.overlay.write(buf, at)?;
                        self.overlay.set(b, State::Overlay);
                    }
                }
                Ok(())
            }
        }
    }

    /// Calls `each(block, offset inside the block, length, offset inside the request)` for every
    /// block `[offset, offset + count)` touches.
    fn for_blocks(
        &self,
        count: u64,
        offset: u64,
        mut each: impl FnMut(u64, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let mut at = offset;
        let end = offset + count;
        while at < end {
            let b = at / self.block();
            let inside = at - b * self.block();
            let n = (self.block_len(b) - inside).min(end - at);
            each(b, inside, n, at - offset)?;
            at += n;
        }
        Ok(())
    }

    /// Puts `data` (zeroes when `None`) into block `b` at `inside`; the caller holds the lock.
    fn change_block(&self, b: u64, inside: u64, n: u64, data: Option<&[u8]>) -> Result<()> {
        let len = self.block_len(b);
        if inside == 0 && n == len {
            match data {
                Some(d) => self.overlay.write(d, b * self.block())?,
                None => {
                    self.overlay.set(b, State::Trimmed);
                    return Ok(());
                }
            }
        } else {
            let mut whole = vec![0u8; len as usize];
            self.read_block(b, &mut whole, false)?;
            let range = inside as usize..(inside + n) as usize;
            match data {
                Some(d) => whole[range].copy_from_slice(d),
                None => whole[range].fill(0),
            }
            self.overlay.write(&whole, b * self.block())?;
        }
        self.overlay.set(b, State::Overlay);
        Ok(())
    }
}

impl Handle for CowHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let below = self.next.capabilities()?;
        Ok(Capabilities {
            write: true,
            flush: true,
            rotational: below.rotational,
            trim: true,
            zero: Support::Native,
            fast_zero: true,
            fua: Support::Emulate,
            multi_conn: true,
            extents: true,
            cache: Support::Native,
        })
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        // Untouched data read without copying it anywhere keeps the layer below's zero-copy path.
        let (first, last) = (offset / self.block(), (offset + count - 1) / self.block());
        if !self.on_read.is_on() && (first..=last).all(|b| self.overlay.state(b) == State::Below) {
            return self.next.read(count, offset, flags, sink);
        }
        self.pread(sink.buffer()?, offset, flags)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let copy = self.on_read.is_on();
        let mut whole = Vec::new();
        self.for_blocks(buf.len() as u64, offset, |b, inside, n, from| {
            let dst = &mut buf[from as usize..(from + n) as usize];
            if inside == 0 && n == self.block_len(b) {
                return self.read_block(b, dst, copy);
            }
            whole.resize(self.block_len(b) as usize, 0);
            self.read_block(b, &mut whole, copy)?;
            dst.copy_from_slice(&whole[inside as usize..(inside + n) as usize]);
            Ok(())
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let _changing = self.overlay.lock();
        self.for_blocks(buf.len() as u64, offset, |b, inside, n, from| {
            self.change_block(b, inside, n, Some(&buf[from as usize..(from + n) as usize]))
        })
    }

    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let _changing = self.overlay.lock();
        self.for_blocks(count, offset, |b, inside, n, _| self.change_block(b, inside, n, None))
    }

    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        // Only whole blocks are dropped; trim is advisory, so partial ones are left alone.
        let _changing = self.overlay.lock();
        self.for_blocks(count, offset, |b, inside, n, _| {
            if inside == 0 && n == self.block_len(b) {
                self.overlay.set(b, State::Trimmed);
            }
            Ok(())
        })
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.overlay.file.sync_data().map_err(|e| Error::from_io("flushing the overlay", &e))
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if !self.on_cache {
            return self.next.cache(count, offset, flags);
        }
        let mut whole = Vec::new();
        self.for_blocks(count, offset, |b, _, _, _| {
            if self.overlay.state(b) == State::Below {
                whole.resize(self.block_len(b) as usize, 0);
                self.read_block(b, &mut whole, true)?;
            }
            Ok(())
        })
    }

    // Blocks in the overlay are data and trimmed ones holes; for runs of untouched blocks the
    // layer below says.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let end = (offset + count).min(self.size);
        let mut at = extents.next_offset().max(offset);
        while at < end && !extents.is_full() {
            let b = at / self.block();
            let state = self.overlay.state(b);
            let mut run_end = ((b + 1) * self.block()).min(self.size);
            while run_end < end && self.overlay.state(run_end / self.block()) == state {
                run_end = (run_end + self.block()).min(self.size);
            }
            let run_end = run_end.min(end);
            match state {
                State::Overlay => extents.add(at, run_end - at, DATA)?,
                State::Trimmed => extents.add(at, run_end - at, HOLE | ZERO)?,
                State::Below => {
                    let mut below = Extents::new(at, run_end);
                    self.next.extents(run_end - at, at, flags, &mut below)?;
                    for e in below.as_slice() {
                        extents.add(e.offset, e.length, e.flags)?;
                    }
                    if below.next_offset() < run_end {
                        // The layer below answered only part of the run: the client asks again.
                        break;
                    }
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
    use nbdforge_api::Extent;

    fn filter(params: &[(&str, &str)], disk: &MemDisk) -> Box<dyn Handle> {
        let mut all = vec![("cow-block-size", "4k")];
        all.extend_from_slice(params);
        open_over(CowFilter::default(), &all, disk).unwrap()
    }

    #[test]
    fn writes_go_to_the_overlay_and_never_below() {
        let disk = MemDisk::new(3 * 4096 + 100);
        disk.pwrite(&[7; 12388], 0, Flags::NONE).unwrap();
        disk.take_log();
        let h = filter(&[], &disk);
        assert!(h.capabilities().unwrap().write);
        h.pwrite(b"hello", 4090, Flags::NONE).unwrap();
        h.zero(4096, 8192, Flags::NONE).unwrap();
        h.pwrite(b"end", 12385, Flags::NONE).unwrap();
        let mut back = vec![0u8; 12388];
        h.pread(&mut back, 0, Flags::NONE).unwrap();
        let mut want = vec![7u8; 12388];
        want[4090..4095].copy_from_slice(b"hello");
        want[8192..12288].fill(0);
        want[12385..].copy_from_slice(b"end");
        assert_eq!(back, want);
        assert!(disk.data.lock().unwrap().iter().all(|&b| b == 7), "the layer below is untouched");
        assert!(disk.take_log().iter().all(|c| c.starts_with("pread")));

        let mut e = Extents::new(0, 12388);
        h.extents(12388, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 0, length: 8192, flags: DATA },
                Extent { offset: 8192, length: 4096, flags: HOLE | ZERO },
                Extent { offset: 12288, length: 100, flags: DATA }
            ]
        );
    }

    #[test]
    fn copy_on_read_fills_the_overlay_and_extents_merge_the_layer_below() {
        let disk = MemDisk::new(4 * 4096);
        disk.pwrite(&[1; 4096], 4096, Flags::NONE).unwrap();
        let h = filter(&[("cow-on-read", "true")], &disk);
        let mut buf = [0u8; 10];
        h.pread(&mut buf, 4096, Flags::NONE).unwrap();
        disk.pwrite(&[2; 4096], 4096, Flags::NONE).unwrap();
        h.pread(&mut buf, 4096, Flags::NONE).unwrap();
        assert_eq!(buf, [1; 10], "the block was copied on the first read");
        let mut e = Extents::new(0, 4 * 4096);
        h.extents(4 * 4096, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 0, length: 4096, flags: HOLE | ZERO },
                Extent { offset: 4096, length: 4096, flags: DATA },
                Extent { offset: 8192, length: 8192, flags: HOLE | ZERO }
            ]
        );
    }

    #[test]
    fn parameters() {
        let mut f = CowFilter::default();
        assert!(f.config("cow-block-size", "1k").unwrap_err().message.starts_with("cow-block-size=1k: "));
        assert!(f.config("cow-on-read", "sometimes").unwrap_err().message.starts_with("cow-on-read=sometimes: "));
        assert!(f.config("cow-on-read", "/run/cow-on").unwrap());
        assert!(matches!(f.on_read, Switch::WhileExists(_)));
    }
}
