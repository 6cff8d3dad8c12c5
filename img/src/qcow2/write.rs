//! Writing: data in place where the cluster is this image's alone (the COPIED flag, refcount
//! 1), otherwise into a new cluster at the end of the file, merged with what the cluster read
//! before (a compressed cluster, the backing file, zeroes); with extended L2 entries only the
//! subclusters written are allocated, a partial one merged with its old contents. Zeroing and
//! discarding set zero flags and zero bits as qemu does. One writer at a time (a mutex); L2
//! tables and refcounts are written through, so a flush only syncs the file. Readers run beside
//! a writer: a cluster they may still be reading is never reused.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::bitmaps::{Bitmaps, AUTOCLEAR_BITMAPS};
use super::header::{unsupported, CORRUPT, DIRTY};
use super::l2::{Kind, COMPRESSED, COPIED, OFFSET_MASK, SUBCLUSTERS, ZERO_FLAG};
use super::refcount::Refcounts;
use super::{Backing, Qcow2, Source};

/// The header field of the autoclear feature bits.
const HEADER_AUTOCLEAR: u64 = 88;
/// All 32 allocation bits, all 32 zero bits of an extended L2 bitmap.
const ALL_ALLOCATED: u64 = 0xffff_ffff;
const ALL_ZERO: u64 = 0xffff_ffff << 32;

/// What a writer holds.
pub struct Writer {
    refs: Refcounts,
    bitmaps: Bitmaps,
}

impl Writer {
    /// Records a change of `[offset, offset + length)` in the enabled dirty bitmaps.
    fn dirty(&mut self, source: &dyn Source, offset: u64, length: u64) -> io::Result<()> {
        self.bitmaps.mark(source, &mut self.refs, offset, length)
    }
}

/// One L2 entry being changed.
struct Slot {
    l2: u64,
    index: usize,
    entry: u64,
    bitmap: u64,
}

impl<S: Source, B: Backing> Qcow2<S, B> {
    /// Makes the image writable (its source must be), or says why it cannot be.
    pub fn enable_writes(&mut self) -> io::Result<()> {
        let h = &self.header;
        if h.incompatible & CORRUPT != 0 {
            return Err(unsupported("writing an image marked corrupt (qemu-img check -r all repairs it)"));
        }
        if h.incompatible & DIRTY != 0 {
            return Err(unsupported("writing an image with dirty refcounts (qemu-img check -r all repairs it)"));
        }
        if h.nb_snapshots != 0 {
            return Err(unsupported("writing an image with internal snapshots"));
        }
        if h.version != 3 {
            return Err(unsupported("writing a version 2 image with this driver"));
        }
        let bitmaps = Bitmaps::load(&self.source, &self.header)?;
        // Other autoclear features are not kept up to date: say so to their readers.
        let autoclear = self.header.autoclear & AUTOCLEAR_BITMAPS;
        if self.header.autoclear != autoclear {
            self.source.write_at(&autoclear.to_be_bytes(), HEADER_AUTOCLEAR)?;
            self.header.autoclear = autoclear;
        }
        let refs = Refcounts::load(&self.source, &self.header)?;
        self.writer = Some(Mutex::new(Writer { refs, bitmaps }));
        Ok(())
    }

    fn writer(&self) -> io::Result<MutexGuard<'_, Writer>> {
        match &self.writer {
            Some(w) => Ok(w.lock().unwrap_or_else(|p| p.into_inner())),
            None => Err(io::Error::from_raw_os_error(libc::EROFS)),
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> io::Result<()> {
        if offset.checked_add(length).is_none_or(|end| end > self.header.size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a request past the end of the disk"));
        }
        Ok(())
    }

    /// Writes `buf` at `offset`.
    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut w = self.writer()?;
        self.each_cluster(offset, buf.len() as u64, |cstart, within, n| {
            let from = (cstart + within - offset) as usize;
            self.write_in_cluster(&mut w, cstart, within, &buf[from..from + n as usize])
        })?;
        w.dirty(&self.source, offset, buf.len() as u64)
    }

    /// Makes `[offset, offset + length)` read as zeroes; `unmap` lets it free clusters.
    pub fn zero(&self, offset: u64, length: u64, unmap: bool) -> io::Result<()> {
        self.check_range(offset, length)?;
        let mut w = self.writer()?;
        self.each_cluster(offset, length, |cstart, within, n| {
            if self.covers(cstart, within, n) {
                let mut slot = self.slot(&mut w, cstart)?;
                self.zero_cluster(&mut w, &mut slot, unmap)
            } else if self.geo.extended {
                self.zero_subclusters(&mut w, cstart, within, n)
            } else {
                self.zero_bytes(&mut w, cstart + within, n)
            }
        })?;
        w.dirty(&self.source, offset, length)
    }

    /// Discards whole clusters: without a backing file they become unallocated, with one they
    /// read as zeroes (the backing file's data must not come back). Parts of clusters are left
    /// alone (a discard is advisory).
    pub fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        self.check_range(offset, length)?;
        let mut w = self.writer()?;
        self.each_cluster(offset, length, |cstart, within, n| {
            if !self.covers(cstart, within, n) {
                return Ok(());
            }
            let mut slot = self.slot(&mut w, cstart)?;
            if self.backing.is_some() {
                return self.zero_cluster(&mut w, &mut slot, true);
            }
            let old = slot.entry;
            self.set(&mut slot, 0, 0)?;
            self.release(&mut w, old)
        })?;
        w.dirty(&self.source, offset, length)
    }

    /// Syncs the file: metadata was written through.
    pub fn flush(&self) -> io::Result<()> {
        match &self.writer {
            Some(w) => {
                let _w = w.lock().unwrap_or_else(|p| p.into_inner());
                self.source.sync()
            }
            None => Ok(()),
        }
    }

    fn each_cluster(
        &self,
        offset: u64,
        length: u64,
        mut f: impl FnMut(u64, u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let cs = self.geo.cluster_size();
        let mut at = offset;
        while at < offset + length {
            let within = at & (cs - 1);
            let n = (cs - within).min(offset + length - at);
            f(at - within, within, n)?;
            at += n;
        }
        Ok(())
    }

    /// Whether `n` bytes at `within` the cluster at `cstart` are all of it (the last cluster
    /// of the disk may be cut short).
    fn covers(&self, cstart: u64, within: u64, n: u64) -> bool {
        within == 0 && (n == self.geo.cluster_size() || cstart + n == self.header.size)
    }

    /// The L2 entry of the cluster at `cstart`, with its L2 table allocated and this image's own.
    fn slot(&self, w: &mut Writer, cstart: u64) -> io::Result<Slot> {
        let per_l2 = self.geo.l2_entries();
        let l1_index = ((cstart >> self.geo.cluster_bits) / per_l2) as usize;
        let index = ((cstart >> self.geo.cluster_bits) % per_l2) as usize;
        let l1_entry = self.l1.read().unwrap_or_else(|p| p.into_inner())[l1_index];
        let mut l2 = l1_entry & OFFSET_MASK;
        if l2 == 0 {
            l2 = w.refs.allocate(&self.source, 1)?;
            let cs = self.geo.cluster_size();
            self.source.write_at(&vec![0u8; cs as usize], l2)?;
            self.l2.put(l2, Arc::new(vec![0; (cs / 8) as usize]));
            self.set_l1(l1_index, l2 | COPIED)?;
        } else if l1_entry & COPIED == 0 {
            if w.refs.get(&self.source, l2)? != 1 {
                return Err(unsupported("writing through an L2 table shared with a snapshot"));
            }
            self.set_l1(l1_index, l2 | COPIED)?;
        }
        let table = self.l2_table(l2)?;
        let word = index * self.geo.words_per_entry();
        let bitmap = if self.geo.extended { table[word + 1] } else { 0 };
        Ok(Slot { l2, index, entry: table[word], bitmap })
    }

    fn set_l1(&self, index: usize, entry: u64) -> io::Result<()> {
        self.source.write_at(&entry.to_be_bytes(), self.header.l1_offset + index as u64 * 8)?;
        self.l1.write().unwrap_or_else(|p| p.into_inner())[index] = entry;
        Ok(())
    }

    /// Writes a new L2 entry (and bitmap) through to the file and the cache.
    fn set(&self, slot: &mut Slot, entry: u64, bitmap: u64) -> io::Result<()> {
        let words = self.geo.words_per_entry();
        let mut table = self.l2_table(slot.l2)?.as_ref().clone();
        let word = slot.index * words;
        table[word] = entry;
        let mut raw = entry.to_be_bytes().to_vec();
        if self.geo.extended {
            table[word + 1] = bitmap;
            raw.extend_from_slice(&bitmap.to_be_bytes());
        }
        self.source.write_at(&raw, slot.l2 + word as u64 * 8)?;
        self.l2.put(slot.l2, Arc::new(table));
        (slot.entry, slot.bitmap) = (entry, bitmap);
        Ok(())
    }

    /// Whether the data cluster of `entry` is this image's alone, to write in place.
    fn owned(&self, w: &Writer, entry: u64) -> io::Result<bool> {
        let host = entry & OFFSET_MASK;
        Ok(entry & COMPRESSED == 0 && host != 0 && (entry & COPIED != 0 || w.refs.get(&self.source, host)? == 1))
    }

    /// Drops the reference `entry` (no longer in the table) had to its host clusters.
    fn release(&self, w: &mut Writer, entry: u64) -> io::Result<()> {
        match self.geo.decode(entry, 0, 0) {
            Ok(Kind::Compressed { host, len }) => {
                let start = host & !511;
                w.refs.release(&self.source, start, len + (host - start))
            }
            _ if entry & COMPRESSED == 0 && entry & OFFSET_MASK != 0 => {
                w.refs.release(&self.source, entry & OFFSET_MASK, 1)
            }
            _ => Ok(()),
        }
    }

    /// The cluster at `cstart` as it reads now (zeroes past the end of the disk).
    fn current(&self, cstart: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.geo.cluster_size() as usize];
        let n = (self.header.size - cstart).min(buf.len() as u64) as usize;
        self.read(&mut buf[..n], cstart)?;
        Ok(buf)
    }

    /// Writes `data` at `within` the cluster at `cstart`.
    fn write_in_cluster(&self, w: &mut Writer, cstart: u64, within: u64, data: &[u8]) -> io::Result<()> {
        let mut slot = self.slot(w, cstart)?;
        let owned = self.owned(w, slot.entry)?;
        let host = slot.entry & OFFSET_MASK;
        let plain = !self.geo.extended && slot.entry & ZERO_FLAG == 0;
        if owned && plain {
            self.source.write_at(data, host + within)?;
            if slot.entry & COPIED == 0 {
                let entry = slot.entry | COPIED;
                self.set(&mut slot, entry, 0)?;
            }
            return Ok(());
        }
        if self.geo.extended && (owned || host == 0) && slot.entry & COMPRESSED == 0 {
            return self.write_subclusters(w, &mut slot, cstart, within, data);
        }
        // A whole new cluster: the old contents with `data` over them.
        let mut cluster = if self.covers(cstart, within, data.len() as u64) {
            vec![0u8; self.geo.cluster_size() as usize]
        } else {
            self.current(cstart)?
        };
        cluster[within as usize..within as usize + data.len()].copy_from_slice(data);
        let (new, keep) = if owned { (host, true) } else { (w.refs.allocate(&self.source, 1)?, false) };
        self.source.write_at(&cluster, new)?;
        let old = slot.entry;
        self.set(&mut slot, new | COPIED, if self.geo.extended { ALL_ALLOCATED } else { 0 })?;
        if !keep {
            self.release(w, old)?;
        }
        Ok(())
    }

    /// With extended L2 entries: allocates the host cluster if needed and writes the
    /// subclusters `data` touches, merging a partial one with what it read before.
    fn write_subclusters(
        &self,
        w: &mut Writer,
        slot: &mut Slot,
        cstart: u64,
        within: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let unit = self.geo.unit();
        let mut host = slot.entry & OFFSET_MASK;
        if host == 0 {
            host = w.refs.allocate(&self.source, 1)?;
        }
        let mut bitmap = slot.bitmap;
        let end = within + data.len() as u64;
        for sub in (within / unit) as u32..end.div_ceil(unit) as u32 {
            let s_start = u64::from(sub) * unit;
            let (a, b) = (within.max(s_start), end.min(s_start + unit));
            let part = &data[(a - within) as usize..(b - within) as usize];
            let allocated = bitmap >> sub & 1 != 0;
            let whole = a == s_start && (b == s_start + unit || cstart + b == self.header.size);
            if allocated || whole {
                self.source.write_at(part, host + a)?;
            } else {
                let mut old = vec![0u8; unit as usize];
                if bitmap >> (32 + sub) & 1 == 0 {
                    let n = self.header.size.saturating_sub(cstart + s_start).min(unit) as usize;
                    self.read_backing(&mut old[..n], cstart + s_start)?;
                }
                old[(a - s_start) as usize..(b - s_start) as usize].copy_from_slice(part);
                self.source.write_at(&old, host + s_start)?;
            }
            bitmap = (bitmap | 1 << sub) & !(1 << (32 + sub));
        }
        if (slot.entry, slot.bitmap) != (host | COPIED, bitmap) {
            self.set(slot, host | COPIED, bitmap)?;
        }
        Ok(())
    }

    /// Makes a whole cluster read as zeroes: a zero cluster (zero bits with extended entries),
    /// keeping its host cluster allocated when it is this image's and `unmap` is not allowed.
    fn zero_cluster(&self, w: &mut Writer, slot: &mut Slot, unmap: bool) -> io::Result<()> {
        let keep = !unmap && self.owned(w, slot.entry)?;
        let old = slot.entry;
        let kept = if keep { (old & OFFSET_MASK) | COPIED } else { 0 };
        if self.geo.extended {
            self.set(slot, kept, ALL_ZERO)?;
        } else {
            self.set(slot, kept | ZERO_FLAG, 0)?;
        }
        if !keep {
            self.release(w, old)?;
        }
        Ok(())
    }

    /// With extended L2 entries: whole subclusters become zero subclusters, the parts of
    /// subclusters at either end are written as zeroes.
    fn zero_subclusters(&self, w: &mut Writer, cstart: u64, within: u64, n: u64) -> io::Result<()> {
        let unit = self.geo.unit();
        let end = within + n;
        let first = within.next_multiple_of(unit);
        let last = (end / unit * unit).max(first);
        let last = if cstart + end == self.header.size { end.next_multiple_of(unit).max(first) } else { last };
        if within < first.min(end) {
            self.zero_bytes(w, cstart + within, first.min(end) - within)?;
        }
        if first < last {
            let mut slot = self.slot(w, cstart)?;
            if slot.entry & COMPRESSED != 0 {
                // Decompressed into a cluster of its own first.
                self.write_in_cluster(w, cstart, 0, &[])?;
                slot = self.slot(w, cstart)?;
            }
            let mut bitmap = slot.bitmap;
            for sub in (first / unit) as u32..(last / unit).min(u64::from(SUBCLUSTERS)) as u32 {
                bitmap = (bitmap & !(1 << sub)) | 1 << (32 + sub);
            }
            let entry = if slot.entry & OFFSET_MASK == 0 { 0 } else { slot.entry };
            self.set(&mut slot, entry, bitmap)?;
        }
        if last.max(first) < end {
            self.zero_bytes(w, cstart + last.max(first), end - last.max(first))?;
        }
        Ok(())
    }

    /// Writes zeroes over part of a cluster, unless it reads as zeroes already.
    fn zero_bytes(&self, w: &mut Writer, offset: u64, n: u64) -> io::Result<()> {
        let (kind, len) = self.mapping(offset, n)?;
        let backing_there = self.backing.as_ref().is_some_and(|b| offset < b.size());
        let zero = kind == Kind::Zero || (kind == Kind::Unallocated && !backing_there);
        if zero && len >= n {
            return Ok(());
        }
        let cs = self.geo.cluster_size();
        self.write_in_cluster(w, offset & !(cs - 1), offset & (cs - 1), &vec![0u8; n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::tests::image;
    use super::super::header::Header;
    use super::*;

    /// An image in memory that grows when written past its end.
    struct Memory(Mutex<Vec<u8>>);

    impl Source for Memory {
        // As the header tests' `Vec<u8>` source, behind the lock.
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            Source::read_at(&*self.0.lock().unwrap(), buf, offset)
        }

        fn size(&self) -> io::Result<u64> {
            Source::size(&*self.0.lock().unwrap())
        }

        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut v = self.0.lock().unwrap();
            let end = offset as usize + buf.len();
            if end > v.len() {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
    }

    fn writable(b: Vec<u8>, backing: Option<Vec<u8>>) -> Qcow2<Memory, Vec<u8>> {
        let header = Header::read(&b).unwrap();
        let mut q = Qcow2::open(Memory(Mutex::new(b)), header, backing).unwrap();
        q.enable_writes().unwrap();
        q
    }

    /// A zstd image whose first cluster is `data` compressed, stored at 0x60000 (the end).
    fn compressed_at_0(extended: bool, data: &[u8]) -> Vec<u8> {
        let mut b = image(4 << 20, extended, true);
        b[0x30000..0x30008].copy_from_slice(&(0x40000u64 | COPIED).to_be_bytes());
        let stored = super::super::compressed::compress(super::super::header::Compression::Zstd, data);
        let entry = COMPRESSED | ((stored.len().div_ceil(512) as u64 - 1) << 54) | 0x60000;
        b[0x40000..0x40008].copy_from_slice(&entry.to_be_bytes());
        b.extend_from_slice(&stored);
        b
    }

    fn read(q: &Qcow2<Memory, Vec<u8>>, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        q.read(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn writes_merge_with_the_backing_file_and_zero() {
        let q = writable(image(4 << 20, false, true), Some(vec![0x77u8; 4 << 20]));
        q.write(&[1u8; 100], 65536 + 10).unwrap();
        let got = read(&q, 65536, 65536);
        assert!(got[..10].iter().all(|&x| x == 0x77) && got[10..110].iter().all(|&x| x == 1));
        assert!(got[110..].iter().all(|&x| x == 0x77), "the rest of the cluster comes from the backing file");
        // In place the second time: the same host cluster.
        let (before, _) = q.mapping(65536, 1).unwrap();
        q.write(&[2u8; 10], 65536).unwrap();
        assert_eq!(q.mapping(65536, 1).unwrap().0, before);
        q.zero(65536, 65536, false).unwrap();
        assert_eq!(q.mapping(65536, 65536).unwrap(), (Kind::Zero, 65536));
        assert!(read(&q, 65536, 65536).iter().all(|&x| x == 0));
        // Part of a cluster: written as zeroes over the backing data.
        q.zero(3 << 20, 1000, true).unwrap();
        let got = read(&q, 3 << 20, 2000);
        assert!(got[..1000].iter().all(|&x| x == 0) && got[1000..].iter().all(|&x| x == 0x77));
        // Discarded with a backing file: zeroes, not the backing data.
        q.discard(3 << 20, 65536).unwrap();
        assert!(read(&q, 3 << 20, 65536).iter().all(|&x| x == 0));
        let w = q.writer().unwrap();
        let host = match before {
            Kind::Data(h) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!(w.refs.get(&q.source, host).unwrap(), 1, "kept as a preallocated zero cluster");
        drop(w);
        // A partial write into the preallocated zero cluster: in it, zeroes around the data.
        q.write(&[3u8; 10], 65536 + 100).unwrap();
        assert_eq!(q.mapping(65536, 1).unwrap().0, Kind::Data(host));
        let got = read(&q, 65536, 65536);
        assert!(got[..100].iter().all(|&x| x == 0) && got[100..110].iter().all(|&x| x == 3));
        assert!(got[110..].iter().all(|&x| x == 0));
    }

    #[test]
    fn zeroing_part_of_a_compressed_cluster_with_subclusters() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 241) as u8).collect();
        let mut b = compressed_at_0(true, &data);
        // The compressed bytes' cluster has a reference, which the copy drops.
        b[0x10000..0x10008].copy_from_slice(&0x50000u64.to_be_bytes());
        b[0x50000 + 6 * 2..0x50000 + 6 * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
        let q = writable(b, None);
        q.zero(1000, 9000, false).unwrap();
        let mut want = data.clone();
        want[1000..10000].fill(0);
        assert_eq!(read(&q, 0, 65536), want);
        assert_eq!(q.mapping(2048, 65536).unwrap(), (Kind::Zero, 6144));
        let w = q.writer().unwrap();
        assert_eq!(w.refs.get(&q.source, 0x60000).unwrap(), 0, "the compressed cluster was released");
    }

    #[test]
    fn subclusters_are_allocated_one_by_one() {
        let q = writable(image(4 << 20, true, false), Some(vec![0x77u8; 4 << 20]));
        q.write(&[1u8; 100], 2048 + 50).unwrap();
        assert_eq!(q.mapping(0, 65536).unwrap(), (Kind::Unallocated, 2048));
        let (kind, len) = q.mapping(2048, 65536).unwrap();
        assert!(matches!(kind, Kind::Data(_)) && len == 2048, "{kind:?} {len}");
        let got = read(&q, 2048, 2048);
        assert!(got[..50].iter().all(|&x| x == 0x77) && got[50..150].iter().all(|&x| x == 1));
        assert!(got[150..].iter().all(|&x| x == 0x77));
        // Zeroes: whole subclusters become zero subclusters, the ends are written.
        q.zero(1000, 9000, false).unwrap();
        assert_eq!(q.mapping(2048, 65536).unwrap(), (Kind::Zero, 6144));
        let got = read(&q, 0, 12288);
        assert!(got[..1000].iter().all(|&x| x == 0x77) && got[1000..10000].iter().all(|&x| x == 0));
        assert!(got[10000..].iter().all(|&x| x == 0x77));
    }

    #[test]
    fn the_refcount_table_grows() {
        // 512-byte clusters and 64-bit refcounts: a refcount table cluster covers 2 MiB.
        let mut b = image(16 << 20, false, true);
        b[20..24].copy_from_slice(&9u32.to_be_bytes());
        b[36..40].copy_from_slice(&1024u32.to_be_bytes());
        b[96..100].copy_from_slice(&6u32.to_be_bytes());
        // The table's own cluster (128, in block 2) is counted, so that moving it frees it.
        b[0x10010..0x10018].copy_from_slice(&0x20000u64.to_be_bytes());
        b[0x20000..0x20008].copy_from_slice(&1u64.to_be_bytes());
        let q = writable(b, None);
        let data: Vec<u8> = (0..(6 << 20)).map(|i| (i % 253) as u8).collect();
        q.write(&data, 1 << 20).unwrap();
        assert_eq!(read(&q, 1 << 20, data.len()), data);
        let mut field = [0u8; 8];
        q.source.read_at(&mut field, 48).unwrap();
        assert_ne!(u64::from_be_bytes(field), 0x10000, "the table moved");
        let w = q.writer().unwrap();
        assert_eq!(w.refs.get(&q.source, 0x10000).unwrap(), 0, "the old table was freed");
        for at in (1u64 << 20..7 << 20).step_by(512) {
            let Kind::Data(host) = q.mapping(at, 1).unwrap().0 else { panic!("no data at {at}") };
            assert_eq!(w.refs.get(&q.source, host).unwrap(), 1);
        }
    }

    #[test]
    fn hostile_refcounts_are_errors() {
        // A compressed cluster whose host cluster has no reference: releasing it cannot go below 0.
        let b = compressed_at_0(false, &[5u8; 65536]);
        let q = writable(b, None);
        let e = q.write(&[1u8; 10], 0).unwrap_err();
        assert!(e.to_string().contains("refcount"), "{e}");
        // A refcount block that is not aligned.
        let mut b = image(4 << 20, false, false);
        b[0x10000..0x10008].copy_from_slice(&0x20200u64.to_be_bytes());
        let q = writable(b, None);
        assert!(q.write(&[1u8; 10], 0).unwrap_err().to_string().contains("not aligned"));
        // Writes past the disk are refused.
        assert!(q.write(&[1u8; 10], (4 << 20) - 5).is_err());
    }
}
