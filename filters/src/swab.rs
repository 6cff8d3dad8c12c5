//! The `swab` filter: reverses the bytes of every 2-, 4- or 8-byte word, for disks written by
//! machines wired the other way round (the Atari Falcon's IDE) or to turn big-endian data
//! little-endian (nbdkit-swab-filter).
//!
//! Swapping works on whole words only, so the export's size is rounded down to a word, its
//! minimum block size is at least a word, and a request not aligned to words fails with `EINVAL`
//! (the `blocksize` filter above this one can turn byte access into aligned requests).
//! `swab-bits=8` swaps nothing.

use std::sync::Arc;

use nbdforge_api::{
    parse_choice, Backend, BlockSize, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("swab", "swap the bytes of words")
        .help("swab-bits=8|16|32|64  Size of the words to swap, in bits (default 16).");
    Registration::filter(info, SwabFilter::default)
}

/// The `swab` filter.
#[derive(Debug)]
pub struct SwabFilter {
    word: usize,
}

impl Default for SwabFilter {
    fn default() -> Self {
        SwabFilter { word: 2 }
    }
}

impl Layer for SwabFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "swab-bits" => {
                let bits: usize = parse_choice(key, value, &["8", "16", "32", "64"])?.parse().unwrap_or(16);
                self.word = bits / 8;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for SwabFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(SwabHandle { next: next.open(args)?, word: self.word }))
    }
}

struct SwabHandle {
    next: Box<dyn Handle>,
    word: usize,
}

/// Reverses each `word`-byte word of `buf` in place.
fn swap_words(buf: &mut [u8], word: usize) {
    buf.chunks_exact_mut(word).for_each(<[u8]>::reverse);
}

impl SwabHandle {
    fn check_aligned(&self, count: u64, offset: u64) -> Result<()> {
        let w = self.word as u64;
        if !count.is_multiple_of(w) || !offset.is_multiple_of(w) {
            return Err(Error::invalid(format!(
                "request of {count} bytes at offset {offset} is not aligned to {}-bit words",
                w * 8
            )));
        }
        Ok(())
    }
}

impl Handle for SwabHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        self.word == 1
    }

    fn get_size(&self) -> Result<u64> {
        let size = self.next.get_size()?;
        Ok(size - size % self.word as u64)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let w = self.word as u32;
        Ok(Some(match self.next.block_size()? {
            Some(b) => BlockSize {
                minimum: b.minimum.max(w),
                preferred: b.preferred.max(w),
                maximum: b.maximum - b.maximum % b.minimum.max(w),
            },
            None => BlockSize { minimum: w, preferred: 4096, maximum: 64 << 20 },
        }))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.check_aligned(buf.len() as u64, offset)?;
        self.next.pread(buf, offset, flags)?;
        swap_words(buf, self.word);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check_aligned(buf.len() as u64, offset)?;
        let mut swapped = buf.to_vec();
        swap_words(&mut swapped, self.word);
        self.next.pwrite(&swapped, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check_aligned(count, offset)?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check_aligned(count, offset)?;
        self.next.zero(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn words_are_reversed_both_ways() {
        let disk = MemDisk::new(1001);
        disk.pwrite(b"01234567", 0, Flags::NONE).unwrap();
        let mut buf = [0u8; 8];
        for (bits, want) in [("8", b"01234567"), ("16", b"10325476"), ("32", b"32107654"), ("64", b"76543210")] {
            let h = open_over(SwabFilter::default(), &[("swab-bits", bits)], &disk).unwrap();
            h.pread(&mut buf, 0, Flags::NONE).unwrap();
            assert_eq!(&buf, want, "swab-bits={bits}");
        }
        let h = open_over(SwabFilter::default(), &[("swab-bits", "32")], &disk).unwrap();
        assert_eq!(h.get_size().unwrap(), 1000);
        assert_eq!(h.block_size().unwrap().unwrap().minimum, 4);
        h.pwrite(b"abcd", 4, Flags::NONE).unwrap();
        assert_eq!(&disk.data.lock().unwrap()[4..8], b"dcba");
        assert_eq!(h.pread(&mut buf[..4], 2, Flags::NONE).unwrap_err().errno, libc::EINVAL);
        assert_eq!(h.zero(3, 0, Flags::NONE).unwrap_err().errno, libc::EINVAL);
        assert!(SwabFilter::default().config("swab-bits", "24").unwrap_err().message.starts_with("swab-bits=24: "));
    }
}
