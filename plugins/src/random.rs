//! The `random` plugin: a disk of pseudo-random bytes, the same for the same `seed=` here as under
//! nbdkit. Each byte is computed from its offset alone, so any part can be read in any order.
//! Writes succeed only when they write back exactly what is there (a copy onto the disk itself
//! checks out); trimming or zeroing would change it and fails with `EIO`.

use std::time::{SystemTime, UNIX_EPOCH};

use nbdforge_api::{
    parse_bool, parse_int, parse_size, unknown_parameter, Capabilities, Error, Flags, Handle, Layer, LayerInfo,
    OpenArgs, Plugin, Registration, Result, Support,
};

use nbdforge_api::prng::Xoshiro256;

/// The `random` plugin. Configure with `size=` and an optional `seed=`.
#[derive(Debug)]
pub struct RandomPlugin {
    size: u64,
    seed: u32,
}

impl Default for RandomPlugin {
    /// Without `seed=` the seed is the time the plugin was loaded, in seconds, as in nbdkit.
    fn default() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        RandomPlugin { size: 0, seed: now as u32 }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("random", "a disk of pseudo-random data, repeatable with seed=")
        .help(
            "[size=]<SIZE>  (required) Size of the backing disk.\n\
             seed=<SEED>             Random number generator seed.",
        )
        .magic("size");
    Registration::plugin(info, RandomPlugin::default)
}

impl Layer for RandomPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = parse_size(key, value)?,
            "seed" => self.seed = parse_int::<u32>(key, value)?,
            // nbdkit 1.46's fast mode repeats one sector with variations of its own making; until
            // those are known byte for byte, refusing it beats serving different data.
            "fast" if parse_bool(key, value)? => {
                return Err(Error::new(libc::ENOTSUP, format!("{key}={value}: fast mode is not implemented")))
            }
            "fast" => {}
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }
}

impl Plugin for RandomPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(RandomHandle { size: self.size, seed: self.seed }))
    }
}

/// The byte at `offset` of the disk made from `seed`: the low byte of the third output of a
/// generator seeded with `seed + offset`. Three rounds, not one, so that neighbouring offsets
/// (whose seeds differ by one) give unrelated bytes; the choice is nbdkit's and fixes the data.
fn byte_at(seed: u32, offset: u64) -> u8 {
    let mut g = Xoshiro256::seeded(u64::from(seed).wrapping_add(offset));
    g.next_u64();
    g.next_u64();
    g.next_u64() as u8
}

/// Fills `buf` with the disk's bytes from `offset` on.
fn fill(seed: u32, buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(seed, offset.wrapping_add(i as u64));
    }
}

/// A connection to the random disk. Stateless.
struct RandomHandle {
    size: u64,
    seed: u32,
}

impl Handle for RandomHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    /// Writable so that writing the same data back can be checked; trim and zero are offered only
    /// to fail at once rather than be emulated by a slow write that would fail anyway.
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: true,
            trim: true,
            zero: Support::Native,
            multi_conn: true,
            cache: Support::Native,
            ..Capabilities::READ_ONLY
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        fill(self.seed, buf, offset);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let differs = buf.iter().enumerate().position(|(i, &b)| b != byte_at(self.seed, offset + i as u64));
        match differs {
            None => Ok(()),
            Some(i) => Err(Error::io(format!(
                "data written does not match expected: byte at offset {} is {:#04x}, the disk holds {:#04x}",
                offset + i as u64,
                buf[i],
                byte_at(self.seed, offset + i as u64)
            ))),
        }
    }

    fn trim(&self, _count: u64, offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::io(format!("attempt to trim or zero non-sparse random disk (at offset {offset})")))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.trim(count, offset, flags)
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(params: &[(&str, &str)]) -> Box<dyn Handle> {
        let mut plugin = RandomPlugin::default();
        for (k, v) in params {
            plugin.config(k, v).unwrap();
        }
        plugin.config_complete().unwrap();
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn any_offset_reads_the_same_bytes() {
        let h = open(&[("size", "1M"), ("seed", "1234")]);
        let mut whole = vec![0u8; 4096];
        h.pread(&mut whole, 0, Flags::NONE).unwrap();
        let mut part = vec![0u8; 100];
        h.pread(&mut part, 1000, Flags::NONE).unwrap();
        assert_eq!(part, whole[1000..1100]);
        // Not constant, and about as many distinct values as random bytes would have.
        let distinct: std::collections::BTreeSet<u8> = whole.iter().copied().collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
    }

    #[test]
    fn the_bytes_nbdkit_serves() {
        // nbdkit random size=4096 seed=1234, copied out with nbdcopy.
        let h = open(&[("size", "4096"), ("seed", "1234")]);
        let mut start = [0u8; 16];
        h.pread(&mut start, 0, Flags::NONE).unwrap();
        assert_eq!(start, [145, 251, 44, 53, 222, 105, 18, 30, 80, 31, 213, 129, 24, 18, 46, 31]);
        let mut middle = [0u8; 8];
        h.pread(&mut middle, 1000, Flags::NONE).unwrap();
        assert_eq!(middle, [131, 149, 12, 142, 11, 28, 243, 124]);
    }

    #[test]
    fn seed_decides_the_data() {
        let (a, b, c) = (open(&[("seed", "1")]), open(&[("seed", "1")]), open(&[("seed", "2")]));
        let mut bufs = [[0u8; 64]; 3];
        for (h, buf) in [a, b, c].iter().zip(bufs.iter_mut()) {
            h.pread(buf, 0, Flags::NONE).unwrap();
        }
        assert_eq!(bufs[0], bufs[1]);
        assert_ne!(bufs[0], bufs[2]);
        // Seeds and offsets add up: the disk for seed 2 is the disk for seed 1 from offset 1.
        let mut shifted = [0u8; 63];
        open(&[("seed", "1")]).pread(&mut shifted, 1, Flags::NONE).unwrap();
        assert_eq!(shifted, bufs[2][..63]);
    }

    #[test]
    fn writes_must_match_and_trim_fails() {
        let h = open(&[("size", "1M"), ("seed", "7")]);
        let mut buf = vec![0u8; 512];
        h.pread(&mut buf, 512, Flags::NONE).unwrap();
        h.pwrite(&buf, 512, Flags::NONE).unwrap();
        buf[10] ^= 1;
        let err = h.pwrite(&buf, 512, Flags::NONE).unwrap_err();
        assert_eq!(err.errno, libc::EIO);
        assert!(err.message.contains("offset 522"), "{}", err.message);
        assert_eq!(h.trim(512, 0, Flags::NONE).unwrap_err().errno, libc::EIO);
        assert_eq!(h.zero(512, 0, Flags::NONE).unwrap_err().errno, libc::EIO);
    }

    #[test]
    fn bad_seed_names_parameter_and_value() {
        let mut p = RandomPlugin::default();
        assert_eq!(p.config("seed", "4294967296").unwrap_err().message, "seed=4294967296: number is out of range");
        assert!(p.config("seed", "x").unwrap_err().message.starts_with("seed=x:"));
        assert!(p.config("fast", "false").is_ok());
        assert_eq!(p.config("fast", "true").unwrap_err().message, "fast=true: fast mode is not implemented");
    }
}
