//! Refcounts, for writing: how many references each host cluster has (refcount table, then
//! refcount blocks of `1 << refcount_order`-bit entries), and allocation. New clusters are taken
//! at the end of the file, never from freed space, so a reader still holding an old mapping
//! never sees a cluster reused under it. A refcount block is allocated when a cluster it would
//! count is; the refcount table grows (moves to the end of the file) when it is full.

use std::io;

use super::header::Header;
use super::{corrupt, Source};

/// Bits 9..=63 of a refcount table entry: the block's offset.
const BLOCK_MASK: u64 = !0x1ff;
/// The header field holding the refcount table's offset (then its size in clusters).
const HEADER_REFTABLE: u64 = 48;

/// The refcount table and where the file ends.
pub struct Refcounts {
    table: Vec<u64>,
    table_offset: u64,
    /// The next cluster to allocate: the end of the file, rounded up to a cluster.
    end: u64,
    cluster_bits: u32,
    order: u32,
}

impl Refcounts {
    /// Loads the refcount table (its size was bounded by [`Header::read`]).
    pub fn load(source: &dyn Source, header: &Header) -> io::Result<Refcounts> {
        let bytes = (header.refcount_table_clusters as usize) << header.cluster_bits;
        let mut raw = vec![0u8; bytes];
        source.read_at(&mut raw, header.refcount_table_offset)?;
        let table = super::header::be64_words(&raw);
        let end = source.size()?.next_multiple_of(header.cluster_size());
        Ok(Refcounts {
            table,
            table_offset: header.refcount_table_offset,
            end,
            cluster_bits: header.cluster_bits,
            order: header.refcount_order,
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount entries per block.
    fn per_block(&self) -> u64 {
        (self.cluster_size() * 8) >> self.order
    }

    fn max(&self) -> u64 {
        if self.order == 6 {
            u64::MAX
        } else {
            (1 << (1 << self.order)) - 1
        }
    }

    /// The block holding the refcount of the cluster at `host` (0: none yet), and the index in it.
    fn locate(&self, host: u64) -> io::Result<(usize, u64, u64)> {
        let cluster = host >> self.cluster_bits;
        let slot = (cluster / self.per_block()) as usize;
        let block = self.table.get(slot).map_or(0, |e| e & BLOCK_MASK);
        if block & (self.cluster_size() - 1) != 0 {
            return Err(corrupt(format!("refcount block at {block:#x} is not aligned to a cluster")));
        }
        Ok((slot, block, cluster % self.per_block()))
    }

    /// Where entry `index` of a block lives: the byte offset and, for entries under a byte, the
    /// shift in that byte.
    fn entry_at(&self, block: u64, index: u64) -> (u64, u32, usize) {
        let bits = 1u64 << self.order;
        if bits >= 8 {
            (block + index * bits / 8, 0, (bits / 8) as usize)
        } else {
            (block + index * bits / 8, (index * bits % 8) as u32, 1)
        }
    }

    fn read_entry(&self, source: &dyn Source, block: u64, index: u64) -> io::Result<u64> {
        let (at, shift, len) = self.entry_at(block, index);
        let mut b = [0u8; 8];
        source.read_at(&mut b[8 - len..], at)?;
        let raw = u64::from_be_bytes(b);
        Ok(if self.order < 3 { (raw >> shift) & self.max() } else { raw })
    }

    fn write_entry(&self, source: &dyn Source, block: u64, index: u64, value: u64) -> io::Result<()> {
        let (at, shift, len) = self.entry_at(block, index);
        let value = if self.order < 3 {
            let mut byte = [0u8];
            source.read_at(&mut byte, at)?;
            let mask = (self.max() as u8) << shift;
            (u64::from(byte[0]) & !u64::from(mask)) | (value << shift)
        } else {
            value
        };
        source.write_at(&value.to_be_bytes()[8 - len..], at)
    }

    /// The refcount of the cluster at `host`.
    pub fn get(&self, source: &dyn Source, host: u64) -> io::Result<u64> {
        match self.locate(host)? {
            (_, 0, _) => Ok(0),
            (_, block, index) => self.read_entry(source, block, index),
        }
    }

    /// Adds `delta` to the refcount of the cluster at `host`; returns the new count.
    pub fn adjust(&mut self, source: &dyn Source, host: u64, delta: i64) -> io::Result<u64> {
        let (slot, mut block, index) = self.locate(host)?;
        if block == 0 {
            if slot >= self.table.len() {
                // Growing may have allocated the block this count is in.
                self.grow(source, slot)?;
                return self.adjust(source, host, delta);
            }
            block = self.end;
            self.end += self.cluster_size();
            source.write_at(&vec![0u8; self.cluster_size() as usize], block)?;
            self.set_table_entry(source, slot, block)?;
            // The new block counts itself, or is counted by another (maybe new) block.
            self.adjust(source, block, 1)?;
        }
        let old = self.read_entry(source, block, index)?;
        let new = old
            .checked_add_signed(delta)
            .filter(|n| *n <= self.max())
            .ok_or_else(|| corrupt(format!("refcount of cluster {host:#x} is {old}, cannot add {delta}")))?;
        self.write_entry(source, block, index, new)?;
        Ok(new)
    }

    fn set_table_entry(&mut self, source: &dyn Source, slot: usize, block: u64) -> io::Result<()> {
        self.table[slot] = block;
        source.write_at(&block.to_be_bytes(), self.table_offset + slot as u64 * 8)
    }

    /// `n` new clusters at the end of the file, each with refcount 1; the file covers them.
    pub fn allocate(&mut self, source: &dyn Source, n: u64) -> io::Result<u64> {
        let at = self.end;
        self.end += n << self.cluster_bits;
        if source.size()? < self.end {
            source.write_at(&[0], self.end - 1)?;
        }
        for i in 0..n {
            self.adjust(source, at + (i << self.cluster_bits), 1)?;
        }
        Ok(at)
    }

    /// Drops one reference to each cluster that `[start, start + len)` touches; a cluster left
    /// with none is trimmed.
    pub fn release(&mut self, source: &dyn Source, start: u64, len: u64) -> io::Result<()> {
        let first = start >> self.cluster_bits;
        let last = (start + len.max(1) - 1) >> self.cluster_bits;
        for cluster in first..=last {
            let host = cluster << self.cluster_bits;
            if self.adjust(source, host, -1)? == 0 {
                source.trim(host, self.cluster_size())?;
            }
        }
        Ok(())
    }

    /// Moves the refcount table to the end of the file, large enough for block `slot` and for
    /// the blocks counting its own clusters.
    fn grow(&mut self, source: &dyn Source, slot: usize) -> io::Result<()> {
        let per_cluster = (self.cluster_size() / 8) as usize;
        let mut entries = (self.table.len() * 2).max(slot + 1).next_multiple_of(per_cluster);
        // The table and a few new blocks after it must be counted by blocks it can name.
        loop {
            let clusters = (entries / per_cluster) as u64;
            let reach = self.end + ((clusters + 8) << self.cluster_bits);
            if ((reach >> self.cluster_bits) / self.per_block()) < entries as u64 {
                break;
            }
            entries += per_cluster;
        }
        if entries * 8 > 64 << 20 {
            return Err(corrupt("the refcount table would exceed 64 MiB"));
        }
        let clusters = (entries / per_cluster) as u64;
        let old_offset = self.table_offset;
        let old_clusters = (self.table.len() / per_cluster) as u64;
        let offset = self.end;
        self.end += clusters << self.cluster_bits;
        self.table.resize(entries, 0);
        let raw: Vec<u8> = self.table.iter().flat_map(|e| e.to_be_bytes()).collect();
        source.write_at(&raw, offset)?;
        let mut field = offset.to_be_bytes().to_vec();
        field.extend_from_slice(&(clusters as u32).to_be_bytes());
        source.write_at(&field, HEADER_REFTABLE)?;
        self.table_offset = offset;
        for i in 0..clusters {
            self.adjust(source, offset + (i << self.cluster_bits), 1)?;
        }
        self.release(source, old_offset, old_clusters << self.cluster_bits)
    }
}
