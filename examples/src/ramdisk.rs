//! The `ramdisk` example plugin: a RAM disk of `size=` bytes that starts all zeroes, takes writes,
//! and reports block status in two meta contexts:
//!
//! - `base:allocation`, which every export has: written blocks are data, the rest holes that read
//!   as zeroes (so `nbdinfo --map` and `qemu-img convert` can skip them);
//! - `ramdisk:dirty`, a context of its own, like a dirty bitmap: flag 1 marks the blocks written
//!   since the last flush. A flush clears it.
//!
//! The pieces every plugin has:
//!
//! 1. its entry in the server's table ([`registration`]): who it is and how to make one;
//! 2. a [`Plugin`] ([`RamDiskPlugin`]), made once per process: it takes the `key=value`
//!    parameters in [`Layer::config`], checks them in [`Layer::config_complete`], and returns a
//!    handle from [`Plugin::open`] per connection;
//! 3. a [`Handle`] (`RamDiskHandle`), one per client connection: it declares its capabilities
//!    and serves the requests. Whatever it does not implement, the server either refuses or
//!    emulates (see the `nbdforge-api` documentation).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    parse_size, Capabilities, Error, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result,
    Support, BASE_ALLOCATION,
};

/// The disk is stored in blocks of this many bytes, allocated on first write.
const BLOCK_SIZE: u64 = 4096;

/// The name of the plugin's own block status context.
pub const DIRTY: &str = "ramdisk:dirty";

/// A written block: its bytes, and whether it was written since the last flush.
struct Block {
    data: Box<[u8]>,
    dirty: bool,
}

/// The written blocks, by block number. A block that is absent reads as zeroes.
///
/// Every connection sees the same disk, so the map is shared (`Arc`) and guarded by a mutex: the
/// server calls handles from several threads at once, and a plugin that keeps mutable state must
/// protect it itself. One lock is simple and correct; a faster plugin would split it (see the
/// memory plugin's sparse array).
type Blocks = Arc<Mutex<BTreeMap<u64, Block>>>;

/// The plugin's entry in the server's table: `nbdforge ramdisk 1G`.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ramdisk", "example RAM disk with a dirty-block context (nbdforge SDK example)")
        .help("[size=]<SIZE>  (required) Size of the RAM disk.")
        // `nbdforge ramdisk 1G` means `size=1G`.
        .magic("size");
    Registration::plugin(info, RamDiskPlugin::new)
}

/// The `ramdisk` example plugin. Parameters: `size=SIZE` (required; a bare `SIZE` works too).
#[derive(Default)]
pub struct RamDiskPlugin {
    size: Option<u64>,
    blocks: Blocks,
}

impl RamDiskPlugin {
    /// An unconfigured plugin.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for RamDiskPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            // parse_size understands 512, 64M, 1G, ... and names key and value in its errors.
            "size" => self.size = Some(parse_size(key, value)?),
            // Not ours: the server says "ramdisk: unknown parameter 'colour'".
            _ => return Ok(false),
        }
        Ok(true)
    }

    // Required parameters are checked here, after all of them are in, not in `config`.
    fn config_complete(&mut self) -> Result<()> {
        match self.size {
            Some(_) => Ok(()),
            // As for `config`, the server puts "ramdisk: " in front of the message.
            None => Err(Error::invalid("size=<SIZE> is required")),
        }
    }
}

impl Plugin for RamDiskPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let size = self.size.ok_or_else(|| Error::invalid("size=<SIZE> is required"))?;
        Ok(Box::new(RamDiskHandle { size, blocks: Arc::clone(&self.blocks) }))
    }
}

/// One client connection. It only refers to the shared disk; there is no per-connection state.
struct RamDiskHandle {
    size: u64,
    blocks: Blocks,
}

/// Splits the byte range `[offset, offset + len)` into `(block, offset in block, length)` pieces.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = offset + len as u64;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let in_block = pos % BLOCK_SIZE;
            let n = (BLOCK_SIZE - in_block).min(end - pos);
            let piece = (pos / BLOCK_SIZE, in_block as usize, n as usize);
            pos += n;
            piece
        })
    })
}

impl RamDiskHandle {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Block>> {
        // A panic in another request cannot leave a block half-written in a way that matters here.
        self.blocks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds runs from `offset` on: `set` for the written blocks that `marked` picks, `clear`
    /// for the rest. Only written blocks are visited (a range query on the map), and the lock is
    /// let go every 1024 of them so that writers are not held up by a long status request.
    fn status(
        &self,
        count: u64,
        offset: u64,
        extents: &mut Extents,
        marked: fn(&Block) -> bool,
        set: u32,
        clear: u32,
    ) -> Result<()> {
        let end = offset.saturating_add(count);
        let mut pos = offset;
        while pos < end && !extents.is_full() {
            let blocks = self.lock();
            let first = pos / BLOCK_SIZE;
            let last = (end - 1) / BLOCK_SIZE;
            for (&block, _) in blocks.range(first..=last).filter(|(_, b)| marked(b)).take(1024) {
                let start = (block * BLOCK_SIZE).max(pos);
                if start > pos {
                    extents.add(pos, start - pos, clear)?;
                }
                let block_end = ((block + 1) * BLOCK_SIZE).min(end);
                extents.add(start, block_end - start, set)?;
                pos = block_end;
                if extents.is_full() {
                    return Ok(());
                }
            }
            let more = blocks.range(pos / BLOCK_SIZE..=last).any(|(_, b)| marked(b));
            if !more {
                // Nothing marked up to the end: one run covers the rest.
                return extents.add(pos, end - pos, clear);
            }
        }
        Ok(())
    }
}

impl Handle for RamDiskHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    // Capabilities are off unless a handle says otherwise. This disk takes writes, reports its
    // holes, and lets the server emulate zeroing by writing zeroes. All connections share one
    // disk, so a write on one is seen by reads on the others (multi-conn).
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: true,
            flush: true,
            multi_conn: true,
            extents: true,
            zero: Support::Emulate,
            ..Capabilities::READ_ONLY
        })
    }

    // The server has already checked that the range lies inside the disk.
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let blocks = self.lock();
        let mut done = 0;
        for (block, in_block, n) in pieces(offset, buf.len()) {
            let out = &mut buf[done..done + n];
            match blocks.get(&block) {
                Some(b) => out.copy_from_slice(&b.data[in_block..in_block + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut blocks = self.lock();
        let mut done = 0;
        for (block, in_block, n) in pieces(offset, buf.len()) {
            let b = blocks
                .entry(block)
                .or_insert_with(|| Block { data: vec![0; BLOCK_SIZE as usize].into_boxed_slice(), dirty: true });
            b.data[in_block..in_block + n].copy_from_slice(&buf[done..done + n]);
            b.dirty = true;
            done += n;
        }
        Ok(())
    }

    // RAM needs no flushing; a flush here only marks the point the dirty context counts from.
    fn flush(&self, _flags: Flags) -> Result<()> {
        self.lock().values_mut().for_each(|b| b.dirty = false);
        Ok(())
    }

    // base:allocation: written blocks are data, the rest holes that read as zeroes.
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        self.status(count, offset, extents, |_| true, DATA, HOLE | ZERO)
    }

    // The contexts this handle answers for besides base:allocation, which every export has.
    fn meta_contexts(&self) -> Result<Vec<String>> {
        Ok(vec![DIRTY.to_string()])
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        match context {
            BASE_ALLOCATION => self.extents(count, offset, flags, extents),
            DIRTY => self.status(count, offset, extents, |b| b.dirty, 1, 0),
            _ => Err(Error::invalid(format!("unknown meta context '{context}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Extent;

    fn open(size: &str) -> (RamDiskPlugin, Box<dyn Handle>) {
        let mut plugin = RamDiskPlugin::new();
        assert!(plugin.config("size", size).unwrap());
        plugin.config_complete().unwrap();
        plugin.get_ready().unwrap();
        let handle = plugin.open(&OpenArgs::local("", false)).unwrap();
        (plugin, handle)
    }

    fn status(disk: &dyn Handle, context: &str, count: u64, offset: u64) -> Vec<Extent> {
        let mut extents = Extents::new(offset, offset + count);
        disk.block_status(context, count, offset, Flags::NONE, &mut extents).unwrap();
        extents.into_vec()
    }

    #[test]
    fn capabilities() {
        let (_plugin, disk) = open("64K");
        assert_eq!(disk.get_size().unwrap(), 65536);
        let caps = disk.capabilities().unwrap();
        assert!(caps.write && caps.extents && caps.multi_conn);
        // Not implemented here, so left to the server: zero is emulated by writing, no trim.
        assert_eq!(caps.zero, Support::Emulate);
        assert!(!caps.trim);
        assert_eq!(disk.meta_contexts().unwrap(), [DIRTY]);
    }

    #[test]
    fn write_then_read_across_blocks() {
        let (_plugin, disk) = open("64K");
        let data: Vec<u8> = (0..5000).map(|i| (i % 200) as u8 + 1).collect();
        disk.pwrite(&data, 4000, Flags::NONE).unwrap();
        let mut back = vec![0u8; 5100];
        disk.pread(&mut back, 3950, Flags::NONE).unwrap();
        assert!(back[..50].iter().all(|&b| b == 0));
        assert!(back[50..5050] == data[..], "written data reads back");
        assert!(back[5050..].iter().all(|&b| b == 0));
    }

    #[test]
    fn connections_share_the_disk() {
        let (plugin, first) = open("64K");
        first.pwrite(b"shared", 10, Flags::NONE).unwrap();
        let second = plugin.open(&OpenArgs::local("", false)).unwrap();
        let mut back = [0u8; 6];
        second.pread(&mut back, 10, Flags::NONE).unwrap();
        assert_eq!(&back, b"shared");
    }

    #[test]
    fn two_contexts_allocation_and_dirty() {
        let (_plugin, disk) = open("64K");
        disk.pwrite(b"x", 8192 + 5, Flags::NONE).unwrap();
        let written = [
            Extent { offset: 0, length: 8192, flags: HOLE | ZERO },
            Extent { offset: 8192, length: 4096, flags: DATA },
            Extent { offset: 12288, length: 53248, flags: HOLE | ZERO },
        ];
        assert_eq!(status(disk.as_ref(), BASE_ALLOCATION, 65536, 0), written);
        assert_eq!(status(disk.as_ref(), DIRTY, 65536, 0)[1], Extent { offset: 8192, length: 4096, flags: 1 });
        disk.flush(Flags::NONE).unwrap();
        assert_eq!(status(disk.as_ref(), DIRTY, 65536, 0), [Extent { offset: 0, length: 65536, flags: 0 }]);
        assert_eq!(status(disk.as_ref(), BASE_ALLOCATION, 65536, 0), written, "a flush keeps the data");
        disk.pwrite(b"y", 0, Flags::NONE).unwrap();
        assert_eq!(status(disk.as_ref(), DIRTY, 100, 50), [Extent { offset: 50, length: 100, flags: 1 }]);
        assert_eq!(status(disk.as_ref(), DIRTY, 4096, 8192), [Extent { offset: 8192, length: 4096, flags: 0 }]);
    }

    #[test]
    fn status_of_a_huge_sparse_disk_is_quick_and_bounded() {
        let (_plugin, disk) = open("1P");
        for i in 0..3000u64 {
            disk.pwrite(b"z", i * 2 * BLOCK_SIZE, Flags::NONE).unwrap();
        }
        let mut extents = Extents::bounded(0, 1 << 50, 100, None);
        disk.extents(1 << 50, 0, Flags::NONE, &mut extents).unwrap();
        assert_eq!(extents.as_slice().len(), 100, "stops at the list's limit");
        let all = status(disk.as_ref(), BASE_ALLOCATION, 1 << 50, 0);
        assert_eq!(all.len(), 6000, "3000 data runs and the holes after them, walked without visiting empty blocks");
        assert_eq!(all.last().unwrap().offset + all.last().unwrap().length, 1 << 50);
    }

    #[test]
    fn size_is_required_and_checked() {
        assert!(RamDiskPlugin::new().config_complete().unwrap_err().message.contains("size"));
        let err = RamDiskPlugin::new().config("size", "12Q").unwrap_err();
        assert!(err.message.starts_with("size=12Q: unknown suffix"), "{}", err.message);
        assert!(!RamDiskPlugin::new().config("colour", "red").unwrap());
    }
}
