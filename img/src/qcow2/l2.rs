//! L2 entries, standard (64 bits) and extended (128 bits: the entry, then a bitmap of 32
//! subclusters), decoded into what one guest subcluster is; and the bounded cache of L2 tables.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use super::corrupt;

/// The COPIED bit of L1 and L2 entries: the cluster's refcount is exactly one.
pub const COPIED: u64 = 1 << 63;
/// The COMPRESSED bit of an L2 entry.
pub const COMPRESSED: u64 = 1 << 62;
/// The "reads as zeroes" bit of a standard entry (v3, without extended L2).
pub const ZERO_FLAG: u64 = 1;
/// Bits 9..=55: a host offset (of an L2 table, of a data cluster).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What one guest cluster (or subcluster) reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Stored here, at this host offset (of the guest offset's start of (sub)cluster).
    Data(u64),
    /// Compressed: the host offset of the compressed bytes and an upper bound of their length.
    Compressed { host: u64, len: u64 },
    /// Reads as zeroes, allocated in this image.
    Zero,
    /// Not in this image: read from the backing file (zeroes without one).
    Unallocated,
}

/// The geometry the decoding needs.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub cluster_bits: u32,
    pub extended: bool,
    /// qcow2 v3 (zero flags exist).
    pub v3: bool,
}

impl Geometry {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The allocation unit: the subcluster with extended L2 entries, else the cluster.
    pub fn unit(&self) -> u64 {
        if self.extended {
            self.cluster_size() / u64::from(SUBCLUSTERS)
        } else {
            self.cluster_size()
        }
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / if self.extended { 16 } else { 8 }
    }

    /// How much (with which step) an L2 table's u64 words hold per entry.
    pub fn words_per_entry(&self) -> usize {
        if self.extended {
            2
        } else {
            1
        }
    }

    /// What the unit `sub` (0 without extended entries) of a cluster with `entry` (and `bitmap`)
    /// reads as.
    pub fn decode(&self, entry: u64, bitmap: u64, sub: u32) -> io::Result<Kind> {
        if entry & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let descriptor = entry & !(COPIED | COMPRESSED);
            let host = descriptor & ((1 << x) - 1);
            let sectors = (descriptor >> x) + 1;
            let len = (sectors * 512).saturating_sub(host & 511);
            return Ok(Kind::Compressed { host, len });
        }
        let host = entry & OFFSET_MASK;
        if host & (self.cluster_size() - 1) != 0 {
            return Err(corrupt(format!("data cluster at {host:#x} is not aligned to a cluster")));
        }
        if !self.extended {
            return Ok(if self.v3 && entry & ZERO_FLAG != 0 {
                Kind::Zero
            } else if host == 0 {
                Kind::Unallocated
            } else {
                Kind::Data(host)
            });
        }
        let allocated = bitmap >> sub & 1 != 0;
        let zero = bitmap >> (32 + sub) & 1 != 0;
        match (allocated, zero) {
            (true, true) => Err(corrupt(format!("subcluster {sub} is both allocated and zero (bitmap {bitmap:#x})"))),
            (true, false) if host == 0 => {
                Err(corrupt(format!("subcluster {sub} is allocated in a cluster with no host offset")))
            }
            (true, false) => Ok(Kind::Data(host + u64::from(sub) * self.unit())),
            (false, true) => Ok(Kind::Zero),
            (false, false) => Ok(Kind::Unallocated),
        }
    }
}

/// An L2 table as read: its words (entries, and bitmaps with extended entries).
pub type Table = Arc<Vec<u64>>;

/// The L2 tables last used, at most `capacity` of them (by host offset), evicting the least
/// recently used. Tables are written through to the file, so eviction never writes.
pub struct Cache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    tick: u64,
    tables: HashMap<u64, (u64, Table)>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache { capacity: capacity.max(2), inner: Mutex::new(CacheInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table at `host`, loaded with `load` when it is not cached.
    pub fn get(&self, host: u64, load: impl FnOnce() -> io::Result<Vec<u64>>) -> io::Result<Table> {
        {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((used, table)) = inner.tables.get_mut(&host) {
                *used = tick;
                return Ok(Arc::clone(table));
            }
        }
        let table = Arc::new(load()?);
        self.put(host, Arc::clone(&table));
        Ok(table)
    }

    /// Puts (or replaces) the table at `host`.
    pub fn put(&self, host: u64, table: Table) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if inner.tables.len() >= self.capacity && !inner.tables.contains_key(&host) {
            if let Some(oldest) = inner.tables.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| *k) {
                inner.tables.remove(&oldest);
            }
        }
        inner.tables.insert(host, (tick, table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Geometry = Geometry { cluster_bits: 16, extended: false, v3: true };
    const EXT: Geometry = Geometry { cluster_bits: 16, extended: true, v3: true };

    #[test]
    fn standard_entries() {
        assert_eq!(STD.decode(0, 0, 0).unwrap(), Kind::Unallocated);
        assert_eq!(STD.decode(COPIED | 0x50000, 0, 0).unwrap(), Kind::Data(0x50000));
        assert_eq!(STD.decode(0x50000 | ZERO_FLAG, 0, 0).unwrap(), Kind::Zero);
        assert_eq!(STD.decode(ZERO_FLAG, 0, 0).unwrap(), Kind::Zero);
        // v2 has no zero flag.
        let v2 = Geometry { v3: false, ..STD };
        assert_eq!(v2.decode(0x50000 | ZERO_FLAG, 0, 0).unwrap(), Kind::Data(0x50000));
        assert!(STD.decode(0x50200, 0, 0).is_err(), "misaligned data cluster");
        // Compressed, 64 KiB clusters: 54 bits of offset, then the additional sectors.
        let entry = COMPRESSED | (3 << 54) | 0x12345;
        assert_eq!(STD.decode(entry, 0, 0).unwrap(), Kind::Compressed { host: 0x12345, len: 4 * 512 - 0x145 });
    }

    #[test]
    fn extended_entries() {
        let bitmap = 1 | (1 << (32 + 1));
        assert_eq!(EXT.decode(0x30000, bitmap, 0).unwrap(), Kind::Data(0x30000));
        assert_eq!(EXT.decode(0x30000, bitmap, 1).unwrap(), Kind::Zero);
        assert_eq!(EXT.decode(0x30000, bitmap, 2).unwrap(), Kind::Unallocated);
        assert_eq!(EXT.decode(0x30000, 1 << 5, 5).unwrap(), Kind::Data(0x30000 + 5 * 2048));
        assert!(EXT.decode(0x30000, 1 | (1 << 32), 0).is_err(), "allocated and zero");
        assert!(EXT.decode(0, 1 << 3, 3).is_err(), "allocated without a host cluster");
        // The standard zero flag means nothing with extended entries.
        assert_eq!(EXT.decode(ZERO_FLAG, 0, 0).unwrap(), Kind::Unallocated);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = Cache::new(2);
        for host in 0..10u64 {
            cache.get(host, || Ok(vec![host])).unwrap();
        }
        assert_eq!(cache.lock().tables.len(), 2);
        // Cached: the loader is not called.
        cache.get(9, || panic!("reloaded")).unwrap();
    }
}
