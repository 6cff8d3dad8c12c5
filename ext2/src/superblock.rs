//! The few facts of an ext2/3/4 superblock the filter needs before libext2fs opens it, and the
//! sanity checks that keep a hostile filesystem from costing more than its disk.
//!
//! libext2fs sizes its group descriptor table from the superblock's counts; a superblock that
//! claims far more blocks than the disk holds would make it allocate and read accordingly.
//! Real filesystems fit their disk, have at least 256 blocks per group (mke2fs's minimum) and
//! a block size from 1 KiB to 64 KiB, so anything else is refused here, with a message, before
//! the library sees it.

use nbdforge_api::{Error, Result};

/// Where the primary superblock is.
pub const OFFSET: u64 = 1024;
/// The superblock's length.
pub const LENGTH: usize = 1024;

const MAGIC: u16 = 0xEF53;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_64BIT: u32 = 0x80;
/// Bytes of group descriptor table libext2fs may be asked to hold.
const MAX_DESCRIPTORS: u64 = 256 << 20;

/// What the filter needs to know of a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Bytes per block.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// The journal has transactions not yet replayed (the filesystem was not cleanly unmounted).
    pub needs_recovery: bool,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Superblock {
    /// Parses and checks the superblock `raw` of a filesystem on a disk of `disk_size` bytes.
    pub fn parse(raw: &[u8], disk_size: u64) -> Result<Superblock> {
        let bad = |why: String| Error::io(format!("ext2: not a usable ext2/3/4 filesystem: {why}"));
        if raw.len() < LENGTH {
            return Err(bad(format!("the disk is too small ({disk_size} bytes)")));
        }
        if u16_at(raw, 56) != MAGIC {
            return Err(bad("no ext2/3/4 superblock (bad magic number)".into()));
        }
        let log = u32_at(raw, 24);
        if log > 6 {
            return Err(bad(format!("block size 2^(10+{log}) out of range")));
        }
        let block_size = 1024u64 << log;
        let incompat = u32_at(raw, 96);
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(bad("this is an external journal device, not a filesystem".into()));
        }
        let mut blocks = u64::from(u32_at(raw, 4));
        if incompat & INCOMPAT_64BIT != 0 {
            blocks |= u64::from(u32_at(raw, 0x150)) << 32;
        }
        let bytes = blocks.checked_mul(block_size).filter(|&b| b <= disk_size).ok_or_else(|| {
            bad(format!(
                "it claims {blocks} blocks of {block_size} bytes, more than the disk's {disk_size} bytes \
                 (truncated or corrupt)"
            ))
        })?;
        let first = u64::from(u32_at(raw, 20));
        let per_group = u64::from(u32_at(raw, 32));
        if per_group < 256 || per_group > 8 * block_size {
            return Err(bad(format!("{per_group} blocks per group (out of range)")));
        }
        let inodes_per_group = u64::from(u32_at(raw, 40));
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            return Err(bad(format!("{inodes_per_group} inodes per group (out of range)")));
        }
        if first >= blocks.max(1) {
            return Err(bad(format!("first data block {first} past the end ({blocks} blocks)")));
        }
        let groups = (blocks - first).div_ceil(per_group);
        if groups * 64 > MAX_DESCRIPTORS {
            return Err(bad(format!("{groups} block groups in {bytes} bytes (too many)")));
        }
        Ok(Superblock { block_size, blocks, needs_recovery: incompat & INCOMPAT_RECOVER != 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut raw = vec![0u8; LENGTH];
        raw[4..8].copy_from_slice(&4096u32.to_le_bytes()); // blocks
        raw[24..28].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
        raw[32..36].copy_from_slice(&32768u32.to_le_bytes());
        raw[40..44].copy_from_slice(&1024u32.to_le_bytes());
        raw[56..58].copy_from_slice(&MAGIC.to_le_bytes());
        raw
    }

    #[test]
    fn a_plain_superblock() {
        let sb = Superblock::parse(&sample(), 16 << 20).unwrap();
        assert_eq!(sb, Superblock { block_size: 4096, blocks: 4096, needs_recovery: false });
    }

    #[test]
    fn claims_beyond_the_disk_are_refused() {
        let e = Superblock::parse(&sample(), 8 << 20).unwrap_err();
        assert!(e.message.contains("more than the disk's 8388608 bytes"), "{}", e.message);
        let mut raw = sample();
        raw[96] = INCOMPAT_64BIT as u8;
        raw[0x150..0x154].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Superblock::parse(&raw, u64::MAX).is_err());
        let mut raw = sample();
        raw[24] = 200;
        assert!(Superblock::parse(&raw, 16 << 20).unwrap_err().message.contains("block size"));
        let mut raw = sample();
        raw[32..36].copy_from_slice(&8u32.to_le_bytes());
        assert!(Superblock::parse(&raw, 16 << 20).unwrap_err().message.contains("blocks per group"));
        let mut raw = sample();
        raw[56] = 0;
        assert!(Superblock::parse(&raw, 16 << 20).unwrap_err().message.contains("magic"));
    }

    #[test]
    fn the_recovery_flag() {
        let mut raw = sample();
        raw[96] = INCOMPAT_RECOVER as u8;
        assert!(Superblock::parse(&raw, 16 << 20).unwrap().needs_recovery);
    }
}
