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
//! The bits are chosen by nbdkit's method, with nbdkit's generator (the SDK's `prng`), so that
//! `evil-seed=N` corrupts the same bits of the same reads as nbdkit does. A *walk* goes through
//! a stretch of bytes in random steps: each step draws two numbers, moves on by the first modulo
//! `floor(2/P)` bits (rounded down to whole bytes; the low three bits name the bit hit in the
//! byte landed on), and hits that bit with the second. On average that is one bit in `1/P`. A hit
//! flips the bit (cosmic rays), or, for a stuck bit, when the second number's low 32 bits are
//! under `evil-stuck-probability × 2^32`, sets the bit to that number's lowest bit (else the
//! true value shows). What is walked:
//! - cosmic rays: each read, from its first byte, with one generator for the whole server seeded
//!   with the seed (reads take turns on it, so one client's reads repeat from run to run);
//! - stuck bits: blocks of the disk, a power of two bytes each, big enough for about 100 hits
//!   (`100/P/8` rounded up to a power of two); each block's walk starts at the block's first byte
//!   with a generator seeded with the seed plus the block's offset, so whatever read covers a
//!   bit, the walk reaching it is the same;
//! - stuck wires: each read, from its first byte, with a generator seeded with the seed alone.
//!
//! Probabilities under 1e-12 mean never; over 1/8 every bit is hit, each with a number of its own
//! drawn in order from the read's (or the block piece's) first byte. The seed is a 32-bit number;
//! by default the time the server started, as in nbdkit. Holes are corrupted like data: nbdkit's
//! filter does not ask the layer below where they are.

use std::sync::{Arc, Mutex};

use nbdforge_api::prng::Xoshiro256;
use nbdforge_api::{
    parse_choice, parse_int, parse_probability, Backend, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    Registration, Result,
};
use tracing::debug;

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

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::CosmicRays => "cosmic-rays",
            Mode::StuckBits => "stuck-bits",
            Mode::StuckWires => "stuck-wires",
        }
    }
}

/// Probabilities are honoured between these; below means never, above every bit.
const MIN_PROBABILITY: f64 = 1e-12;
const MAX_PROBABILITY: f64 = 1.0 / 8.0;

/// What a hit does to a bit.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Flip,
    Stuck,
}

/// The settings, fixed once configured, and the server-wide generator of cosmic rays.
#[derive(Debug)]
struct Evil {
    mode: Mode,
    probability: f64,
    stuck_probability: f64,
    seed: u32,
    /// Bytes per block of stuck bits (a power of two).
    block_size: u64,
    cosmic: Mutex<Xoshiro256>,
}

/// The `evil` filter.
#[derive(Debug)]
pub struct EvilFilter {
    mode: Mode,
    probability: Option<f64>,
    stuck_probability: f64,
    seed: Option<u32>,
    evil: Option<Arc<Evil>>,
}

impl Default for EvilFilter {
    fn default() -> Self {
        EvilFilter { mode: Mode::StuckBits, probability: None, stuck_probability: 1.0, seed: None, evil: None }
    }
}

/// A probability parameter: also over 1 is refused, as nbdkit does.
fn probability(key: &str, value: &str) -> Result<f64> {
    let p = parse_probability(key, value)?;
    if p > 1.0 {
        return Err(Error::invalid(format!("{key}={value}: probability out of range, should be [0..1]")));
    }
    Ok(p)
}

impl Layer for EvilFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "evil" | "evil-mode" => {
                let modes = ["cosmic-rays", "cosmic", "stuck-bits", "stuck-bit", "stuck", "stuck-wires", "stuck-wire"];
                self.mode = match parse_choice(key, value, &modes)? {
                    "cosmic-rays" | "cosmic" => Mode::CosmicRays,
                    "stuck-wires" | "stuck-wire" => Mode::StuckWires,
                    _ => Mode::StuckBits,
                }
            }
            "evil-probability" => self.probability = Some(probability(key, value)?),
            "evil-stuck-probability" => self.stuck_probability = probability(key, value)?,
            "evil-seed" => self.seed = Some(parse_int(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let default = if self.mode == Mode::StuckWires { 1e-6 } else { 1e-8 };
        let p = self.probability.unwrap_or(default);
        // nbdkit seeds with the time it was loaded; the seed is 32 bits there.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let seed = self.seed.unwrap_or(now as u32);
        let block_size = if (MIN_PROBABILITY..=MAX_PROBABILITY).contains(&p) {
            (((100.0 / p) as u64) / 8).next_power_of_two()
        } else {
            1 << 20 // nothing is walked in blocks then
        };
        debug!("evil: mode: {}, P: {p}, seed: {seed}", self.mode.name());
        debug!("evil: block_size: {block_size} (2**{})", block_size.trailing_zeros());
        debug!("evil: expected bits per block: {}", 8.0 * block_size as f64 * p);
        self.evil = Some(Arc::new(Evil {
            mode: self.mode,
            probability: p,
            stuck_probability: self.stuck_probability,
            seed,
            block_size,
            cosmic: Mutex::new(Xoshiro256::seeded(u64::from(seed))),
        }));
        Ok(())
    }
}

impl Filter for EvilFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let evil = match &self.evil {
            Some(evil) => Arc::clone(evil),
            None => return Err(Error::invalid("evil: not configured")),
        };
        Ok(Box::new(EvilHandle { next: below, evil }))
    }
}

impl Evil {
    /// `byte` with its bit `bit` hit by `fault`, `draw` deciding a stuck bit's fate.
    fn hit(&self, byte: u8, bit: u64, draw: u64, fault: Fault) -> u8 {
        let mask = 1u8 << bit;
        match fault {
            Fault::Flip => byte ^ mask,
            Fault::Stuck => {
                let draw = draw & 0xffff_ffff;
                if self.stuck_probability * 4_294_967_296.0 <= draw as f64 {
                    byte
                } else if draw & 1 == 1 {
                    byte | mask
                } else {
                    byte & !mask
                }
            }
        }
    }

    /// Walks a stretch whose bytes from `skip` on are `buf`, with `rng` at the stretch's start,
    /// hitting the bits that fall in `buf` (see the module comment).
    fn walk(&self, buf: &mut [u8], skip: u64, rng: &mut Xoshiro256, fault: Fault) {
        let p = self.probability;
        if p < MIN_PROBABILITY {
            return;
        }
        if p > MAX_PROBABILITY {
            for byte in buf.iter_mut() {
                for bit in 0..8 {
                    *byte = self.hit(*byte, bit, rng.next_u64(), fault);
                }
            }
            return;
        }
        let span = (2.0 / p) as u64;
        let end = skip + buf.len() as u64;
        let mut at = 0;
        while at < end {
            let step = rng.next_u64() % span;
            let draw = rng.next_u64();
            at += step / 8;
            if at >= end {
                break;
            }
            if at >= skip {
                let i = (at - skip) as usize;
                buf[i] = self.hit(buf[i], step & 7, draw, fault);
            }
        }
    }

    /// Corrupts `buf`, read at byte `offset` of the disk.
    fn corrupt(&self, buf: &mut [u8], offset: u64) {
        match self.mode {
            Mode::CosmicRays => {
                let mut rng = self.cosmic.lock().unwrap_or_else(|p| p.into_inner());
                self.walk(buf, 0, &mut rng, Fault::Flip);
            }
            Mode::StuckBits => {
                let mut block = offset & !(self.block_size - 1);
                let mut done = 0;
                while done < buf.len() {
                    let at = offset + done as u64;
                    let len =
                        (buf.len() - done).min(usize::try_from(block + self.block_size - at).unwrap_or(usize::MAX));
                    let mut rng = Xoshiro256::seeded(u64::from(self.seed).wrapping_add(block));
                    self.walk(&mut buf[done..done + len], at - block, &mut rng, Fault::Stuck);
                    block += self.block_size;
                    done += len;
                }
            }
            Mode::StuckWires => self.walk(buf, 0, &mut Xoshiro256::seeded(u64::from(self.seed)), Fault::Stuck),
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
        self.evil.corrupt(buf, offset);
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

    /// The bits set in a read of zeroes, as (byte, bit) pairs.
    fn set_bits(buf: &[u8]) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        for (i, b) in buf.iter().enumerate() {
            (0..8).filter(|bit| b & (1 << bit) != 0).for_each(|bit| out.push((i, bit)));
        }
        out
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
        let (f, next) = evil(&[("evil-probability", "1:1000"), ("evil-seed", "42"), ("evil-stuck-probability", "1")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        // 1:1000 makes blocks of 16 KiB: these reads cross block boundaries at odd places.
        let (mut a, mut b) = (vec![0u8; 40000], vec![0u8; 20000]);
        h.pread(&mut a, 0, Flags::NONE).unwrap();
        h.pread(&mut b, 12345, Flags::NONE).unwrap();
        assert!(ones(&a) > 0);
        assert_eq!(a[12345..32345], b[..], "the same bits are stuck whatever the read");
        let (f, next) = evil(&[("evil", "stuck-wire"), ("evil-probability", "1:1000"), ("evil-seed", "42")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        h.pread(&mut a, 0, Flags::NONE).unwrap();
        h.pread(&mut b, 65536, Flags::NONE).unwrap();
        assert!(ones(&a) > 0);
        assert_eq!(a, b, "stuck wires hit the same place of every read");
    }

    /// The walk redone step by step for stuck wires, seed 0, P = 1/8 (steps modulo 16 bits): the
    /// generator's outputs, each pair a step and a draw. Bits stuck high show in a read of zeroes.
    #[test]
    fn stuck_wires_follow_nbdkits_walk() {
        let (f, next) = evil(&[("evil", "stuck-wires"), ("evil-probability", "0.125"), ("evil-seed", "0")]);
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        let mut buf = vec![0u8; 64];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        let mut g = Xoshiro256::seeded(0);
        let mut want = vec![0u8; 64];
        let mut at = 0;
        loop {
            let (step, draw) = (g.next_u64() % 16, g.next_u64());
            at += step / 8;
            if at >= 64 {
                break;
            }
            // A step under 8 bits stays on the same byte, which a later hit may set back.
            if draw & 1 == 1 {
                want[at as usize] |= 1 << (step & 7);
            } else {
                want[at as usize] &= !(1 << (step & 7));
            }
        }
        assert_eq!(set_bits(&buf), set_bits(&want));
        assert!(!set_bits(&want).is_empty());
    }

    #[test]
    fn block_sizes_follow_the_probability() {
        let size = |p: &str| evil(&[("evil-probability", p)]).0.evil.unwrap().block_size;
        assert_eq!(size("1e-4"), 1 << 17, "100 / 1e-4 / 8 = 125000, rounded up");
        assert_eq!(size("1e-8"), 1 << 31);
        assert_eq!(size("0.125"), 128);
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
        assert!(f.config("evil-seed", "4294967296").is_err(), "seeds are 32 bits");
        let e = f.config("evil-probability", "2").unwrap_err().message;
        assert_eq!(e, "evil-probability=2: probability out of range, should be [0..1]");
    }
}
