//! The `sparse-random` plugin: a disk that looks like a sparse virtual machine image, with runs of
//! random data between holes, the same for the same `seed=` here as under nbdkit. It exercises
//! the code of copying tools that skips holes and detects zeroes: `percent=` sets how much is data
//! and `runlength=` the average length of a run of data.
//!
//! Data and holes are decided per 4 KiB block when the server starts, one bit per block (32 MiB
//! per TiB of disk), walking the blocks with a two-state Markov chain driven by nbdkit's generator
//! (`nbdforge_api::prng`). A data block is one random byte repeated, or random bytes throughout
//! (`random-content=true`), computed from the seed and the block's offset when read. Writes,
//! trims and zeroes succeed only when they leave the disk as it is.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    debug, parse_bool, parse_int, parse_size, unknown_parameter, Capabilities, Error, Extents, Flags, Handle, Layer,
    LayerInfo, OpenArgs, Plugin, Registration, Result, Support,
};

use nbdforge_api::prng::Xoshiro256;

/// The unit of data and holes.
const BLOCK_SIZE: u64 = 4096;

/// The `sparse-random` plugin. Configure with `size=` and optionally `seed=`, `percent=`,
/// `runlength=` and `random-content=`.
#[derive(Debug)]
pub struct SparseRandomPlugin {
    size: u64,
    seed: u32,
    percent: f64,
    runlength: u64,
    random_content: bool,
    /// Made by `get_ready`, shared by every connection.
    disk: Option<Arc<Disk>>,
}

impl Default for SparseRandomPlugin {
    /// Without `seed=` the seed is the time the plugin was loaded, in seconds, as in nbdkit.
    fn default() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        SparseRandomPlugin {
            size: 0,
            seed: now as u32,
            percent: 10.0,
            runlength: 16 << 20,
            random_content: false,
            disk: None,
        }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("sparse-random", "a sparse disk of random data and holes, repeatable with seed=")
        .help(
            "[size=]<SIZE>  (required) Size of the backing disk.\n\
             seed=<SEED>             Random number generator seed.\n\
             percent=<PERCENT>       Percentage of data (default: 10).\n\
             runlength=<BYTES>       Expected average run length of data (default: 16777216).\n\
             random-content=true     Fully random content in each block.",
        )
        .magic("size");
    Registration::plugin(info, SparseRandomPlugin::default)
}

/// Reads a number as C's `sscanf("%lf")` does: the longest prefix that is a number, leading
/// spaces skipped, anything after it ignored (nbdkit accepts `percent=10%` as 10).
fn leading_float(text: &str) -> Option<f64> {
    let text = text.trim_start();
    (1..=text.len()).rev().filter(|&n| text.is_char_boundary(n)).find_map(|n| text[..n].parse::<f64>().ok())
}

impl Layer for SparseRandomPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = parse_size(key, value)?,
            "seed" => self.seed = parse_int::<u32>(key, value)?,
            "percent" => {
                self.percent = leading_float(value)
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| Error::invalid(format!("{key}={value}: must be a number from 0 to 100")))?;
            }
            "runlength" => {
                self.runlength = parse_int::<u64>(key, value)?;
                if self.runlength == 0 {
                    return Err(Error::invalid(format!("{key}={value}: must be greater than 0")));
                }
            }
            "random-content" => self.random_content = parse_bool(key, value)?,
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }
}

impl Plugin for SparseRandomPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let blocks = Bitmap::for_disk(self.size, self.percent, self.runlength, self.seed)?;
        debug!("{} of {} blocks are data", blocks.count_set(), blocks.len);
        self.disk = Some(Arc::new(Disk { blocks, seed: self.seed, random_content: self.random_content }));
        Ok(())
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let disk = self.disk.clone().ok_or_else(|| Error::invalid("opened before get_ready"))?;
        Ok(Box::new(SparseRandomHandle { disk, size: self.size }))
    }
}

/// One bit per block: set for data, clear for a hole.
#[derive(Debug)]
struct Bitmap {
    words: Vec<u64>,
    /// Number of blocks.
    len: u64,
}

impl Bitmap {
    /// All holes.
    fn new(len: u64) -> Result<Self> {
        let n = usize::try_from(len.div_ceil(64)).map_err(|_| Error::new(libc::ENOMEM, "disk too large"))?;
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| {
            Error::new(libc::ENOMEM, format!("cannot allocate {} bytes for the map of data blocks", n * 8))
        })?;
        words.resize(n, 0);
        Ok(Bitmap { words, len })
    }

    /// The map nbdkit draws for these parameters: walking the blocks in order, in a state (hole
    /// first, then data or hole) that each block leaves with a fixed probability. Leaving data
    /// with probability 1/run (in blocks) makes runs of data that long on average; leaving holes
    /// with p·P(data→hole)/(1-p) makes a fraction p of the blocks data.
    fn for_disk(size: u64, percent: f64, runlength: u64, seed: u32) -> Result<Self> {
        let mut map = Bitmap::new(size.div_ceil(BLOCK_SIZE))?;
        if percent == 0.0 {
            return Ok(map);
        }
        if percent == 100.0 {
            (0..map.len).for_each(|block| map.set(block));
            return Ok(map);
        }
        let data_to_hole = 1.0 / (runlength as f64 / BLOCK_SIZE as f64);
        let hole_to_data = (percent / 100.0) * data_to_hole / (1.0 - percent / 100.0);
        let mut rng = Xoshiro256::seeded(u64::from(seed));
        let mut data = false;
        for block in 0..map.len {
            if data {
                map.set(block);
            }
            let leave = if data { data_to_hole } else { hole_to_data };
            // Compared in floating point, as nbdkit does, so that the rounding is the same.
            if rng.next_u64() as f64 <= leave * u64::MAX as f64 {
                data = !data;
            }
        }
        Ok(map)
    }

    fn set(&mut self, block: u64) {
        self.words[(block / 64) as usize] |= 1 << (block % 64);
    }

    fn get(&self, block: u64) -> bool {
        self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn count_set(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The first block at or after `block` (which is in the map) in a different state from it, or
    /// the end; whole words of one state are skipped at once.
    fn run_end(&self, block: u64) -> u64 {
        let state = self.get(block);
        let same_word = if state { !0 } else { 0 };
        let mut b = block + 1;
        while b < self.len {
            if b.is_multiple_of(64) && self.words[(b / 64) as usize] == same_word {
                b += 64;
            } else if self.get(b) == state {
                b += 1;
            } else {
                return b;
            }
        }
        self.len
    }
}

/// What every connection reads: the map and how data blocks are filled.
#[derive(Debug)]
struct Disk {
    blocks: Bitmap,
    seed: u32,
    random_content: bool,
}

impl Disk {
    /// Writes block `block` into `out` (4 KiB). A data block's bytes come from a generator seeded
    /// with the seed plus the block's offset; a repeated byte is never 0, so data never reads as
    /// a hole.
    fn block(&self, block: u64, out: &mut [u8]) {
        if !self.blocks.get(block) {
            out.fill(0);
            return;
        }
        let mut rng = Xoshiro256::seeded(u64::from(self.seed).wrapping_add(block * BLOCK_SIZE));
        if self.random_content {
            out.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        } else {
            out.fill((rng.next_u64() as u8).max(1));
        }
    }

    /// Calls `each(block, range within the block, range within the request)` for the blocks that
    /// `count` bytes at `offset` touch.
    fn for_blocks(count: u64, offset: u64, mut each: impl FnMut(u64, std::ops::Range<usize>, std::ops::Range<usize>)) {
        let end = offset + count;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK_SIZE;
            let within = (at % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE - within as u64).min(end - at) as usize;
            let done = (at - offset) as usize;
            each(block, within..within + n, done..done + n);
            at += n as u64;
        }
    }
}

/// A connection: a view of the shared disk.
struct SparseRandomHandle {
    disk: Arc<Disk>,
    size: u64,
}

impl SparseRandomHandle {
    /// The first block in `count` bytes at `offset` that is data, if any.
    fn first_data_block(&self, count: u64, offset: u64) -> Option<u64> {
        let last = (offset + count).div_ceil(BLOCK_SIZE);
        let mut block = offset / BLOCK_SIZE;
        while block < last {
            if self.disk.blocks.get(block) {
                return Some(block);
            }
            block = self.disk.blocks.run_end(block);
        }
        None
    }
}

impl Handle for SparseRandomHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    /// Flush does nothing but is offered, as in nbdkit, for `nbdcopy --flush`; FUA is therefore
    /// emulated by it.
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: true,
            flush: true,
            trim: true,
            zero: Support::Native,
            fua: Support::Emulate,
            multi_conn: true,
            extents: true,
            cache: Support::Native,
            ..Capabilities::READ_ONLY
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut scratch = [0u8; BLOCK_SIZE as usize];
        Disk::for_blocks(buf.len() as u64, offset, |block, within, dst| {
            if within.len() == BLOCK_SIZE as usize {
                self.disk.block(block, &mut buf[dst]);
            } else {
                self.disk.block(block, &mut scratch);
                buf[dst].copy_from_slice(&scratch[within]);
            }
        });
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut expected = [0u8; BLOCK_SIZE as usize];
        let mut mismatch = None;
        Disk::for_blocks(buf.len() as u64, offset, |block, within, src| {
            if mismatch.is_none() {
                self.disk.block(block, &mut expected);
                if expected[within] != buf[src] {
                    mismatch = Some(block * BLOCK_SIZE);
                }
            }
        });
        match mismatch {
            None => Ok(()),
            Some(at) => Err(Error::io(format!("data written does not match expected (in the block at offset {at})"))),
        }
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }

    /// Only holes may be trimmed or zeroed: they already read as zeroes.
    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        match self.first_data_block(count, offset) {
            None => Ok(()),
            Some(b) => Err(Error::io(format!(
                "trying to trim or zero non-hole in disk (the block at offset {} holds data)",
                b * BLOCK_SIZE
            ))),
        }
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.trim(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        let end = offset + count;
        let mut at = offset;
        while at < end && !extents.is_full() {
            let block = at / BLOCK_SIZE;
            let run_end = (self.disk.blocks.run_end(block) * BLOCK_SIZE).min(end);
            let state = if self.disk.blocks.get(block) { DATA } else { HOLE | ZERO };
            extents.add(at, run_end - at, state)?;
            at = run_end;
        }
        Ok(())
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(params: &[(&str, &str)]) -> SparseRandomPlugin {
        let mut plugin = SparseRandomPlugin::default();
        for (k, v) in params {
            plugin.config(k, v).unwrap();
        }
        plugin.config_complete().unwrap();
        plugin.get_ready().unwrap();
        plugin
    }

    fn open(plugin: &SparseRandomPlugin) -> Box<dyn Handle> {
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn fraction_of_data_and_run_length_are_near_the_target() {
        let plugin = configured(&[("size", "4G"), ("seed", "1"), ("percent", "25"), ("runlength", "1048576")]);
        let map = &plugin.disk.as_ref().unwrap().blocks;
        let fraction = map.count_set() as f64 / map.len as f64;
        assert!((0.2..0.3).contains(&fraction), "{fraction}");
        let mut runs = 0;
        let mut b = 0;
        while b < map.len {
            let end = map.run_end(b);
            runs += u64::from(map.get(b));
            b = end;
        }
        let average_run = map.count_set() as f64 / runs as f64 * BLOCK_SIZE as f64;
        assert!((0.8e6..1.3e6).contains(&average_run), "{average_run}");
    }

    #[test]
    fn the_disks_nbdkit_serves() {
        // nbdkit sparse-random size=8M seed=42 percent=50 runlength=65536: 956 of the 2048 blocks
        // are data, the first ones from block 38 on, each one byte repeated.
        let plugin = configured(&[("size", "8M"), ("seed", "42"), ("percent", "50"), ("runlength", "65536")]);
        assert_eq!(plugin.disk.as_ref().unwrap().blocks.count_set(), 956);
        let h = open(&plugin);
        let mut first = Vec::new();
        for block in 0..2048u64 {
            let mut b = [0u8; 1];
            h.pread(&mut b, block * BLOCK_SIZE, Flags::NONE).unwrap();
            if b[0] != 0 && first.len() < 5 {
                first.push((block, b[0]));
            }
        }
        assert_eq!(first, [(38, 198), (39, 157), (40, 22), (41, 41), (42, 27)]);

        // ... size=1M seed=7 percent=30 runlength=8192 random-content=true: 79 data blocks, the
        // first at block 7.
        let plugin = configured(&[
            ("size", "1M"),
            ("seed", "7"),
            ("percent", "30"),
            ("runlength", "8192"),
            ("random-content", "true"),
        ]);
        assert_eq!(plugin.disk.as_ref().unwrap().blocks.count_set(), 79);
        let mut bytes = [0u8; 8];
        open(&plugin).pread(&mut bytes, 7 * BLOCK_SIZE, Flags::NONE).unwrap();
        assert_eq!(bytes, [135, 57, 197, 238, 196, 104, 126, 23]);
    }

    #[test]
    fn reads_agree_with_extents_and_any_split() {
        let plugin = configured(&[("size", "64M"), ("seed", "99"), ("percent", "50"), ("runlength", "65536")]);
        let h = open(&plugin);
        let mut whole = vec![0u8; 1 << 20];
        h.pread(&mut whole, 0, Flags::NONE).unwrap();
        let mut e = Extents::new(0, 1 << 20);
        h.extents(1 << 20, 0, Flags::NONE, &mut e).unwrap();
        assert!(e.as_slice().len() > 2);
        for run in e.as_slice() {
            let bytes = &whole[run.offset as usize..(run.offset + run.length) as usize];
            if run.flags == DATA {
                assert!(bytes.chunks(4096).all(|c| c[0] != 0 && c.iter().all(|&b| b == c[0])));
            } else {
                assert!(bytes.iter().all(|&b| b == 0));
            }
        }
        let mut part = vec![0u8; 10_000];
        h.pread(&mut part, 12_345, Flags::NONE).unwrap();
        assert_eq!(part, whole[12_345..22_345]);
    }

    #[test]
    fn writes_and_trims_must_leave_the_disk_unchanged() {
        let plugin = configured(&[
            ("size", "16M"),
            ("seed", "5"),
            ("percent", "50"),
            ("runlength", "65536"),
            ("random-content", "true"),
        ]);
        let h = open(&plugin);
        let mut buf = vec![0u8; 1 << 20];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        h.pwrite(&buf[100..5000], 100, Flags::NONE).unwrap();
        let map = &plugin.disk.as_ref().unwrap().blocks;
        let data = (0..256).find(|&b| map.get(b)).unwrap();
        let hole = (0..256).find(|&b| !map.get(b)).unwrap();
        let mut changed = buf[(data * 4096) as usize..(data * 4096 + 4096) as usize].to_vec();
        changed[7] ^= 0x80;
        assert_eq!(h.pwrite(&changed, data * 4096, Flags::NONE).unwrap_err().errno, libc::EIO);
        assert_eq!(h.zero(4096, data * 4096, Flags::NONE).unwrap_err().errno, libc::EIO);
        h.trim(4096, hole * 4096, Flags::NONE).unwrap();
        h.pwrite(&[0; 4096], hole * 4096, Flags::NONE).unwrap();
    }

    #[test]
    fn all_or_nothing() {
        let none = configured(&[("size", "1M"), ("percent", "0")]);
        assert_eq!(none.disk.as_ref().unwrap().blocks.count_set(), 0);
        let all = configured(&[("size", "1M"), ("percent", "100")]);
        assert_eq!(all.disk.as_ref().unwrap().blocks.count_set(), 256);
    }

    #[test]
    fn bad_parameters_name_key_and_value() {
        let mut p = SparseRandomPlugin::default();
        assert_eq!(p.config("percent", "101").unwrap_err().message, "percent=101: must be a number from 0 to 100");
        assert!(p.config("percent", "lots").is_err());
        p.config("percent", "12.5%").unwrap();
        assert_eq!(p.percent, 12.5);
        assert_eq!(p.config("runlength", "0").unwrap_err().message, "runlength=0: must be greater than 0");
        assert!(p.config("random-content", "maybe").unwrap_err().message.starts_with("random-content=maybe"));
    }
}
