//! The `evil` filter: corrupts data as it is read, to test checksums in filesystems and
//! clients. Writes are not changed, so the plugin keeps the right data.
//!
//! Three modes (`evil=`):
//! - `cosmic-rays`: every bit read may be flipped, with `evil-probability` (default 1e-8);
//! - `stuck-bits` (the default): some bits of the disk are stuck high or low, the same bits on
//!   every read; each bit is stuck with `evil-probability` (default 1e-8);
//! - `stuck-wires`: some bit positions of every read are stuck, wherever the read starts on the
//!   disk, as if a wire of the data path were; `evil-probability` defaults to 1e-6.
//!
//! A stuck bit shows its stuck value with `evil-stuck-probability` (default 1), else the true
//! one. Probabilities under 1e-12 mean never, over 1/8 always. Only data is corrupted: runs the
//! layer below reports as holes or zeroes are left alone. `evil-seed=` makes runs repeatable.
//!
//! Which bits are stuck is computed, not stored: the disk (or, for wires, the read) is cut into
//! blocks, and each block's stuck bits are drawn from a generator seeded by the seed and the
//! block's number. The filter changes read data, so it only overrides `pread`.

use std::sync::{Arc, Mutex};

use nbdforge_api::{
    extents, parse_choice, parse_int, parse_probability, Backend, Extents, Filter, Flags, Handle, Layer, LayerInfo,
    OpenArgs, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("evil", "adds random data corruption to reads").help(
        "evil=cosmic-rays|stuck-bits|stuck-wires\n\
         \x20                              Set the mode (default: stuck-bits).\n\
         evil-probability=PROB          Probability of flipped or stuck bit.\n\
         evil-seed=SEED                 Random number seed.\n\
         evil-stuck-probability=PROB    Probability of stuck bit being stuck.",
    );
    Registration::filter(info, EvilFilter::default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    CosmicRays,
    StuckBits,
    StuckWires,
}

/// Bits per block of stuck bits or wires: 64 KiB.
const BLOCK_BITS: u64 = 64 * 1024 * 8;
/// Probabilities are honoured between these; below means never, above always.
const MIN_PROBABILITY: f64 = 1e-12;
const MAX_PROBABILITY: f64 = 1.0 / 8.0;

/// The settings, fixed once configured, and the generator for the random parts.
#[derive(Debug)]
struct Evil {
    mode: Mode,
    probability: f64,
    stuck_probability: f64,
    seed: u64,
    rng: Mutex<fastrand::Rng>,
}

/// The `evil` filter.
#[derive(Debug)]
pub struct EvilFilter {
    mode: Mode,
    probability: Option<f64>,
    stuck_probability: f64,
    seed: Option<u64>,
    evil: Option<Arc<Evil>>,
}

impl Default for EvilFilter {
    fn default() -> Self {
        EvilFilter { mode: Mode::StuckBits, probability: None, stuck_probability: 1.0, seed: None, evil: None }
    }
}

impl Layer for EvilFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "evil" => {
                self.mode = match parse_choice(key, value, &["cosmic-rays", "stuck-bits", "stuck-wires"])? {
                    "cosmic-rays" => Mode::CosmicRays,
                    "stuck-bits" => Mode::StuckBits,
                    _ => Mode::StuckWires,
                }
            }
            "evil-probability" => self.probability = Some(parse_probability(key, value)?),
            "evil-stuck-probability" => self.stuck_probability = parse_probability(key, value)?,
            "evil-seed" => self.seed = Some(parse_int(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let default = if self.mode == Mode::StuckWires { 1e-6 } else { 1e-8 };
        let seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        self.evil = Some(Arc::new(Evil {
            mode: self.mode,
            probability: self.probability.unwrap_or(default),
            stuck_probability: self.stuck_probability,
            seed,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }));
        Ok(())
    }
}

impl Filter for EvilFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let evil = match &self.evil {
            Some(evil) => Arc::clone(evil),
            None => return Err(nbdforge_api::Error::invalid("evil: not configured")),
        };
        Ok(Box::new(EvilHandle { next: below, evil }))
    }
}

/// A probability as the filter honours it: 0 (never), 1 (always), or in between.
fn clamp(p: f64) -> f64 {
    if p < MIN_PROBABILITY {
        0.0
    } else if p > MAX_PROBABILITY {
        1.0
    } else {
        p
    }
}

/// Calls `pick` with each selected bit of `from..to`, each bit being selected with probability
/// `p`, drawing from `rng`: the gaps between selected bits are geometrically distributed.
fn select_bits(p: f64, from: u64, to: u64, rng: &mut fastrand::Rng, mut pick: impl FnMut(u64, &mut fastrand::Rng)) {
    let p = clamp(p);
    if p == 0.0 {
        return;
    }
    let log_miss = (1.0 - p).ln();
    let mut bit = from;
    while bit < to {
        if p < 1.0 {
            let gap = ((1.0 - rng.f64()).ln() / log_miss).floor();
            if gap >= (to - bit) as f64 {
                return;
            }
            bit += gap as u64;
        }
        pick(bit, rng);
        bit += 1;
    }
}

/// A 64-bit mix of the seed and a block number (splitmix64's finalizer).
fn block_seed(seed: u64, block: u64) -> u64 {
    let mut z = seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn set_bit(buf: &mut [u8], bit: u64, value: bool) {
    let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
    if value {
        buf[byte] |= mask;
    } else {
        buf[byte] &= !mask;
    }
}

impl Evil {
    /// Corrupts the bits `from..to` of `buf` (bit numbers relative to `buf`), which was read
    /// at byte `offset` of the disk.
    fn corrupt(&self, buf: &mut [u8], offset: u64, from: u64, to: u64) {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        match self.mode {
            Mode::CosmicRays => select_bits(self.probability, from, to, &mut rng, |bit, _| {
                buf[(bit / 8) as usize] ^= 1 << (bit % 8);
            }),
            // Stuck bits are numbered on the disk, stuck wires within the read.
            Mode::StuckBits => self.stuck(buf, offset * 8, from, to, &mut rng),
            Mode::StuckWires => self.stuck(buf, 0, from, to, &mut rng),
        }
    }

    /// Applies the stuck bits of the blocks covering `from..to`; `base` is the number of bit 0
    /// of `buf` in the numbering the blocks follow.
    fn stuck(&self, buf: &mut [u8], base: u64, from: u64, to: u64, rng: &mut fastrand::Rng) {
        let (first, last) = ((base + from) / BLOCK_BITS, (base + to - 1) / BLOCK_BITS);
        for block in first..=last {
            let start = block * BLOCK_BITS;
            let mut layout = fastrand::Rng::with_seed(block_seed(self.seed, block));
            // Every stuck bit of the block is drawn, in order, so that the layout does not
            // depend on which part of the block is read.
            select_bits(self.probability, start, start + BLOCK_BITS, &mut layout, |bit, layout| {
                let high = layout.bool();
                let in_range = bit >= base + from && bit < base + to;
                if in_range && (self.stuck_probability >= 1.0 || rng.f64() < self.stuck_probability) {
                    set_bit(buf, bit - base, high);
                }
            });
        }
    }
}

/// One connection through the filter.
struct EvilHandle {
    next: Box<dyn Handle>,
    evil: Arc<Evil>,
}

impl Handle for EvilHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.next.pread(buf, offset, flags)?;
        if buf.is_empty() || self.evil.probability < MIN_PROBABILITY {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        // Holes and zeroes are left alone; without block status, everything is data.
        let mut runs = Extents::new(offset, end);
        let data: Vec<(u64, u64)> = match self.next.extents(end - offset, offset, Flags::NONE, &mut runs) {
            Ok(()) => runs
                .as_slice()
                .iter()
                .filter(|e| e.flags & (extents::HOLE | extents::ZERO) == 0)
                .map(|e| (e.offset.max(offset), (e.offset + e.length).min(end)))
                .filter(|(a, b)| a < b)
                .collect(),
            Err(_) => vec![(offset, end)],
        };
        let covered = runs.as_slice().last().map_or(offset, |e| e.offset + e.length);
        let mut ranges = data;
        if covered < end {
            // The layer below described less than asked: the rest counts as data.
            ranges.push((covered.max(offset), end));
        }
        for (a, b) in ranges {
            self.evil.corrupt(buf, offset, (a - offset) * 8, (b - offset) * 8);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryBackend;

    fn evil(params: &[(&str, &str)]) -> (EvilFilter, Arc<dyn Backend>) {
        let mut f = EvilFilter::default();
        for (k, v) in params {
            assert!(f.config(k, v).unwrap(), "{k}");
        }
        f.config_complete().unwrap();
        (f, MemoryBackend::disk(1 << 20))
    }

    fn ones(buf: &[u8]) -> u32 {
        buf.iter().map(|b| b.count_ones()).sum()
    }

    #[test]
    fn cosmic_rays_flip_about_the_expected_number_of_bits() {
        let (f, next) = evil(&[("evil", "cosmic-rays"), ("evil-probability", "1%"), ("evil-seed", "7")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        let flipped = ones(&buf);
        assert!((80_000..90_000).contains(&flipped), "{flipped} of 8388608 bits at 1%");
    }

    #[test]
    fn stuck_bits_stay_put_and_wires_follow_the_read() {
        let (f, next) = evil(&[("evil-probability", "1:1000"), ("evil-seed", "42")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        let (mut a, mut b) = (vec![0u8; 8192], vec![0u8; 4096]);
        h.pread(&mut a, 0, Flags::NONE).unwrap();
        h.pread(&mut b, 4096, Flags::NONE).unwrap();
        assert!(ones(&a) > 0);
        assert_eq!(a[4096..], b[..], "the same bits are stuck whatever the read");
        let (f, next) = evil(&[("evil", "stuck-wires"), ("evil-probability", "1:1000"), ("evil-seed", "42")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        h.pread(&mut a, 0, Flags::NONE).unwrap();
        h.pread(&mut b, 65536, Flags::NONE).unwrap();
        assert!(ones(&a) > 0);
        assert_eq!(a, b, "stuck wires hit the same place of every read");
    }

    #[test]
    fn writes_are_untouched_and_tiny_probabilities_do_nothing() {
        let (f, next) = evil(&[("evil", "cosmic-rays"), ("evil-probability", "1e-13")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        h.pwrite(&[0xff; 4096], 0, Flags::NONE).unwrap();
        let mut buf = [0u8; 4096];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(buf, [0xff; 4096]);
        let mut f = EvilFilter::default();
        assert!(f.config("evil", "gamma-rays").unwrap_err().message.starts_with("evil=gamma-rays:"));
        assert!(f.config("evil-seed", "x").unwrap_err().message.starts_with("evil-seed=x:"));
    }
}
