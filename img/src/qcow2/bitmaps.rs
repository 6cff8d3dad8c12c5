//! Persistent dirty bitmaps: the bitmaps extension, the bitmap directory and each bitmap's table,
//! read with every field checked and every allocation bounded by the file's size (the one reader
//! of the crate: `-B` ([`crate::bitmap`]) serves bitmaps from it), and, for writing, the enabled
//! bitmaps kept up to date: every write, zero and discard sets the bits of the enabled ("auto")
//! bitmaps it touches, as qemu does, so that incremental backups stay right. Bits are written
//! through: a bitmap data cluster is allocated the first time one of its bits is set (an all-ones
//! cluster needs nothing). Bitmaps marked in use (inconsistent already) and disabled ones are
//! left alone.

use std::io;

use super::header::{be16, be32, be64, be64_words, Header};
use super::l2::OFFSET_MASK;
use super::refcount::Refcounts;
use super::{check_in_file, corrupt, read_bounded, Source};

/// Directory entry flags.
pub const IN_USE: u32 = 1 << 0;
pub const AUTO: u32 = 1 << 1;
pub const EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// The autoclear bit that says the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1;
/// A bitmap table entry with no cluster that reads as all ones.
const ALL_ONES: u64 = 1;
/// The only bitmap type: dirty tracking.
const DIRTY_TRACKING: u8 = 1;
/// Bounds for hostile directories, QEMU's own limits.
const MAX_BITMAPS: u32 = 65535;
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;
const MAX_NAME: u64 = 1023;

/// A bitmap directory entry.
pub struct Entry {
    pub name: String,
    pub table_offset: u64,
    pub table_size: u32,
    pub flags: u32,
    pub kind: u8,
    pub granularity_bits: u8,
    pub extra_data_size: u32,
}

/// The bitmap directory of the image (empty without the bitmaps extension). Whether the
/// extension is consistent (autoclear bit [`AUTOCLEAR_BITMAPS`]) is for the caller to judge.
pub fn directory(source: &dyn Source, header: &Header) -> io::Result<Vec<Entry>> {
    let Some(ext) = &header.bitmaps_extension else { return Ok(Vec::new()) };
    if ext.len() != 24 {
        return Err(corrupt(format!("the bitmaps extension is {} bytes long (24 expected)", ext.len())));
    }
    let (count, size, offset) = (be32(ext, 0), be64(ext, 8), be64(ext, 16));
    if count == 0 || count > MAX_BITMAPS {
        return Err(corrupt(format!("the bitmaps extension claims {count} bitmaps (1 to {MAX_BITMAPS} allowed)")));
    }
    if size > MAX_DIRECTORY_BYTES || !offset.is_multiple_of(header.cluster_size()) {
        return Err(corrupt(format!("invalid bitmap directory: {size} bytes at offset {offset}")));
    }
    let dir = read_bounded(source, "the bitmap directory", offset, size)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    for i in 0..count {
        let bad = || corrupt(format!("bitmap directory entry {i} runs past the directory ({size} bytes)"));
        let fixed = dir.get(at..at + 24).ok_or_else(bad)?;
        let name_size = u64::from(be16(fixed, 18));
        let extra_data_size = be32(fixed, 20);
        if name_size == 0 || name_size > MAX_NAME {
            return Err(corrupt(format!("bitmap directory entry {i}: invalid name length {name_size}")));
        }
        let name_at = at + 24 + extra_data_size as usize;
        let name = dir.get(name_at..name_at + name_size as usize).ok_or_else(bad)?;
        entries.push(Entry {
            name: String::from_utf8_lossy(name).into_owned(),
            table_offset: be64(fixed, 0),
            table_size: be32(fixed, 8),
            flags: be32(fixed, 12),
            kind: fixed[16],
            granularity_bits: fixed[17],
            extra_data_size,
        });
        at = (name_at + name_size as usize).next_multiple_of(8);
    }
    Ok(entries)
}

impl Entry {
    /// Marked in use: a qemu that had it open did not close it, so it may have missed writes.
    pub fn in_use(&self) -> bool {
        self.flags & IN_USE != 0
    }

    /// Enabled: it records writes.
    pub fn enabled(&self) -> bool {
        self.flags & AUTO != 0
    }

    /// Why the bitmap cannot be used, as qemu checks it before use (not counting [`Entry::in_use`]);
    /// `None` when it can.
    pub fn unusable(&self, header: &Header) -> Option<String> {
        if self.flags & !(IN_USE | AUTO | EXTRA_DATA_COMPATIBLE) != 0 {
            return Some(format!("unknown flags {:#x}", self.flags));
        }
        if self.kind != DIRTY_TRACKING {
            return Some(format!("unknown type {} (1, dirty tracking, is known)", self.kind));
        }
        if self.extra_data_size != 0 && self.flags & EXTRA_DATA_COMPATIBLE == 0 {
            return Some("it has extra data of an unknown kind".into());
        }
        if !(9..=31).contains(&self.granularity_bits) {
            return Some(format!("granularity 2^{} (2^9 to 2^31 allowed)", self.granularity_bits));
        }
        let expected = self.expected_table_size(header);
        if u64::from(self.table_size) != expected {
            return Some(format!(
                "its table has {} entries, and {expected} cover the disk at this granularity",
                self.table_size
            ));
        }
        if !self.table_offset.is_multiple_of(header.cluster_size()) {
            return Some(format!("table offset {} is not cluster aligned", self.table_offset));
        }
        None
    }

    /// The entries a table needs to cover the disk: one cluster of bits each.
    fn expected_table_size(&self, header: &Header) -> u64 {
        let granularity = 1u64 << self.granularity_bits.min(63);
        header.size.div_ceil(granularity).div_ceil(8).div_ceil(header.cluster_size())
    }

    /// The bitmap's table, of a bitmap that is not [`Entry::unusable`]: each entry 0 (all
    /// clean), 1 (all dirty) or the offset of a cluster of bits inside the file.
    pub fn table(&self, source: &dyn Source, header: &Header) -> io::Result<Vec<u64>> {
        let name = &self.name;
        let what = format!("the table of bitmap '{name}'");
        let raw = read_bounded(source, &what, self.table_offset, u64::from(self.table_size) * 8)?;
        let table = be64_words(&raw);
        let cluster_size = header.cluster_size();
        for (i, &t) in table.iter().enumerate() {
            let offset = t & OFFSET_MASK;
            let reserved = t & !OFFSET_MASK & !ALL_ONES;
            if reserved != 0 || (offset != 0 && t & ALL_ONES != 0) || !offset.is_multiple_of(cluster_size) {
                return Err(corrupt(format!("bitmap '{name}': invalid table entry {i}: {t:#x}")));
            }
            if offset != 0 {
                check_in_file(source, &format!("bitmap '{name}' cluster {i}"), offset, cluster_size)?;
            }
        }
        Ok(table)
    }
}

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
        if header.autoclear & AUTOCLEAR_BITMAPS == 0 {
            return Ok(bitmaps);
        }
        for e in directory(source, header)? {
            if e.in_use() || !e.enabled() {
                continue;
            }
            if let Some(why) = e.unusable(header) {
                return Err(corrupt(format!("bitmap '{}' cannot be used: {why}", e.name)));
            }
            let table = e.table(source, header)?;
            bitmaps.list.push(Bitmap {
                table_offset: e.table_offset,
                table,
                granularity_bits: u32::from(e.granularity_bits),
            });
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
                let mut changed = false;
                for bit in lo..=hi {
                    let byte = &mut bytes[(bit / 8 - lo / 8) as usize];
                    changed |= *byte & (1 << (bit % 8)) == 0;
                    *byte |= 1 << (bit % 8);
                }
                // Rewriting a range already dirty, the common case, would change nothing.
                if changed {
                    source.write_at(&bytes, host + lo / 8)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::tests::image;
    use super::super::header::EXT_BITMAPS as EXT;
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
