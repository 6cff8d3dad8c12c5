//! Persistent dirty bitmaps, for writing: every write, zero and discard sets the bits of the
//! enabled ("auto") bitmaps it touches, as qemu does, so that incremental backups stay right.
//! Bits are written through: a bitmap data cluster is allocated the first time one of its bits
//! is set (an all-ones cluster needs nothing). Bitmaps marked in use (inconsistent already)
//! and disabled ones are left alone. Reading bitmaps for export is not done here.

use std::io;

use super::header::{be32, be64, unsupported, Header};
use super::l2::OFFSET_MASK;
use super::refcount::Refcounts;
use super::{corrupt, Source};

const IN_USE: u32 = 1 << 0;
const AUTO: u32 = 1 << 1;
const EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// A bitmap table entry with no cluster that reads as all ones.
const ALL_ONES: u64 = 1;
/// The only bitmap type: dirty tracking.
const DIRTY_TRACKING: u8 = 1;
/// Bounds for hostile directories and tables, QEMU's own limits.
const MAX_DIRECTORY: u64 = 64 << 20;
const MAX_TABLE_ENTRIES: u64 = 0x800_0000;

/// One enabled bitmap.
struct Bitmap {
    table_offset: u64,
    table: Vec<u64>,
    granularity_bits: u32,
}

/// The enabled bitmaps of an image.
pub struct Bitmaps {
    list: Vec<Bitmap>,
    cluster_bits: u32,
}

impl Bitmaps {
    /// The enabled bitmaps of a consistent bitmaps extension (none when the autoclear bit says
    /// the extension is stale).
    pub fn load(source: &dyn Source, header: &Header) -> io::Result<Bitmaps> {
        let mut bitmaps = Bitmaps { list: Vec::new(), cluster_bits: header.cluster_bits };
        let Some((count, dir_size, dir_offset)) = header.bitmaps.filter(|_| header.autoclear & 1 != 0) else {
            return Ok(bitmaps);
        };
        if dir_size > MAX_DIRECTORY {
            return Err(corrupt(format!("bitmap directory of {dir_size} bytes")));
        }
        let mut dir = vec![0u8; dir_size as usize];
        source.read_at(&mut dir, dir_offset)?;
        let mut at = 0usize;
        for _ in 0..count {
            if at + 24 > dir.len() {
                return Err(corrupt("the bitmap directory is shorter than its bitmaps"));
            }
            let e = &dir[at..];
            let (table_offset, table_size, flags) = (be64(e, 0), u64::from(be32(e, 8)), be32(e, 12));
            let (kind, granularity_bits) = (e[16], u32::from(e[17]));
            let name_size = usize::from(u16::from_be_bytes([e[18], e[19]]));
            let extra = be32(e, 20) as usize;
            at += (24 + extra + name_size).next_multiple_of(8);
            if flags & IN_USE != 0 || flags & AUTO == 0 {
                continue;
            }
            if kind != DIRTY_TRACKING || (extra != 0 && flags & EXTRA_DATA_COMPATIBLE == 0) {
                return Err(unsupported(format!("writing an image with a bitmap of type {kind} (or extra data)")));
            }
            if !(9..=31).contains(&granularity_bits) {
                return Err(corrupt(format!("bitmap granularity_bits {granularity_bits}")));
            }
            let bits = header.size.div_ceil(1 << granularity_bits);
            let expected = bits.div_ceil(8 << header.cluster_bits);
            if table_size != expected || table_size > MAX_TABLE_ENTRIES {
                return Err(corrupt(format!("bitmap table of {table_size} entries, {expected} expected")));
            }
            if table_offset & ((1 << header.cluster_bits) - 1) != 0 {
                return Err(corrupt(format!("bitmap table at {table_offset:#x} is not aligned to a cluster")));
            }
            let mut raw = vec![0u8; table_size as usize * 8];
            source.read_at(&mut raw, table_offset)?;
            let table = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
            bitmaps.list.push(Bitmap { table_offset, table, granularity_bits });
        }
        Ok(bitmaps)
    }

    /// Sets the bits of `[offset, offset + length)` in every enabled bitmap.
    pub fn mark(&mut self, source: &dyn Source, refs: &mut Refcounts, offset: u64, length: u64) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let per_cluster = 8u64 << self.cluster_bits;
        let cluster_size = 1u64 << self.cluster_bits;
        for b in &mut self.list {
            let first = offset >> b.granularity_bits;
            let last = (offset + length - 1) >> b.granularity_bits;
            for index in first / per_cluster..=last / per_cluster {
                let slot = b.table.get_mut(index as usize).ok_or_else(|| corrupt("a bitmap table is too short"))?;
                if *slot & OFFSET_MASK == 0 {
                    if *slot & ALL_ONES != 0 {
                        continue;
                    }
                    let cluster = refs.allocate(source, 1)?;
                    source.write_at(&vec![0u8; cluster_size as usize], cluster)?;
                    *slot = cluster;
                    source.write_at(&cluster.to_be_bytes(), b.table_offset + index * 8)?;
                }
                let host = *slot & OFFSET_MASK;
                let base = index * per_cluster;
                let (lo, hi) = (first.max(base) - base, last.min(base + per_cluster - 1) - base);
                // Bit i of the cluster is bit i % 8 of its byte i / 8.
                let mut bytes = vec![0u8; (hi / 8 - lo / 8 + 1) as usize];
                source.read_at(&mut bytes, host + lo / 8)?;
                for bit in lo..=hi {
                    bytes[(bit / 8 - lo / 8) as usize] |= 1 << (bit % 8);
                }
                source.write_at(&bytes, host + lo / 8)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::tests::image;
    use super::*;

    /// An image with one bitmap (directory at 0x20000, table at 0x50000) of the given table size,
    /// granularity and flags.
    fn with_bitmap(table_size: u32, granularity_bits: u8, flags: u32) -> Vec<u8> {
        let mut b = image(64 << 20, false, true);
        b[88..96].copy_from_slice(&1u64.to_be_bytes());
        // The extension: one bitmap, a 32-byte directory at 0x20000.
        b[112..116].copy_from_slice(&EXT.to_be_bytes());
        b[116..120].copy_from_slice(&24u32.to_be_bytes());
        b[120..124].copy_from_slice(&1u32.to_be_bytes());
        b[128..136].copy_from_slice(&32u64.to_be_bytes());
        b[136..144].copy_from_slice(&0x20000u64.to_be_bytes());
        let e = 0x20000;
        b[e..e + 8].copy_from_slice(&0x50000u64.to_be_bytes());
        b[e + 8..e + 12].copy_from_slice(&table_size.to_be_bytes());
        b[e + 12..e + 16].copy_from_slice(&flags.to_be_bytes());
        b[e + 16] = DIRTY_TRACKING;
        b[e + 17] = granularity_bits;
        b[e + 18..e + 20].copy_from_slice(&2u16.to_be_bytes());
        b[e + 24..e + 26].copy_from_slice(b"b0");
        b
    }

    const EXT: u32 = 0x2385_2875;

    #[test]
    fn enabled_bitmaps_load_and_hostile_ones_are_errors() {
        // 64 MiB in 64 KiB bits: 1024 bits, one table entry.
        let good = with_bitmap(1, 16, AUTO);
        let header = Header::read(&good).unwrap();
        assert_eq!(Bitmaps::load(&good, &header).unwrap().list.len(), 1);
        let disabled = with_bitmap(1, 16, 0);
        assert_eq!(Bitmaps::load(&disabled, &Header::read(&disabled).unwrap()).unwrap().list.len(), 0);
        for (b, what) in [
            (with_bitmap(5, 16, AUTO), "table size"),
            (with_bitmap(u32::MAX, 16, AUTO), "huge table"),
            (with_bitmap(1, 40, AUTO), "granularity"),
        ] {
            let header = Header::read(&b).unwrap();
            assert!(Bitmaps::load(&b, &header).is_err(), "{what}");
        }
        // A directory claiming more bitmaps than it holds.
        let mut b = with_bitmap(1, 16, AUTO);
        b[120..124].copy_from_slice(&3u32.to_be_bytes());
        assert!(Bitmaps::load(&b, &Header::read(&b).unwrap()).is_err());
    }
}
