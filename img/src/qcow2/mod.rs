//! nbdforge's own qcow2 driver, for the images imago refuses: zstd compression (incompatible bit
//! 3) and extended L2 entries with subclusters (bit 4). [`crate::image`] opens every other qcow2
//! image through imago and this driver only when the header asks for one of these features.
//!
//! The driver reads its bytes through [`Source`] (a file here; the layer below, for a filter)
//! and what the image does not hold from a [`Backing`] (an [`crate::image::Image`] here, so a
//! backing chain of any format and any depth). Its pieces: [`header`] (header and extensions,
//! every size checked), [`l2`] (entries, standard and extended, and the bounded L2 cache),
//! [`compressed`] (zlib and zstd clusters), [`refcount`] (refcounts and allocation), `write`
//! (writes, zeroes, discards, copy-on-write) and [`bitmaps`] (dirty bitmaps: read, for `-B` too,
//! and kept up to date).

pub mod bitmaps;
pub mod compressed;
pub mod header;
pub mod l2;
pub mod refcount;
mod write;

use std::io;
use std::sync::{Arc, Mutex, RwLock};

use header::Header;
use l2::{Geometry, Kind, OFFSET_MASK};

/// The bytes a qcow2 image is stored in.
pub trait Source: Send + Sync {
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Writes `buf` at `offset`, growing the source past its end.
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }
    /// Frees the space of a range no longer used (advisory).
    fn trim(&self, _offset: u64, _length: u64) -> io::Result<()> {
        Ok(())
    }
    /// Makes the writes so far durable.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What is under the image: its backing file, read where a cluster is not allocated.
pub trait Backing: Send + Sync {
    /// Its size; the image reads zeroes past it.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`, within the size.
    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// At most this many bytes of L2 tables are cached (and at least two tables).
const L2_CACHE_BYTES: u64 = 32 << 20;

/// A corrupt or hostile image: an error for the request (EIO), naming what was wrong.
pub fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("qcow2: {what}"))
}

/// Checks that `length` bytes at `offset` (`what` they are, for the error) lie inside `source`.
pub fn check_in_file(source: &dyn Source, what: &str, offset: u64, length: u64) -> io::Result<()> {
    let size = source.size()?;
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(corrupt(format!(
            "{what} at offset {offset} ({length} bytes) is past the end of the file ({size} bytes)"
        )));
    }
    Ok(())
}

/// Reads `length` bytes at `offset` of `source` (`what` they are, for the error), refusing a
/// range past the end of the file before allocating anything for it: a hostile table may claim
/// any size, but never gets more memory than the file has bytes.
pub fn read_bounded(source: &dyn Source, what: &str, offset: u64, length: u64) -> io::Result<Vec<u8>> {
    check_in_file(source, what, offset, length)?;
    let mut buf = vec![0u8; length as usize];
    source.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// An open qcow2 image.
pub struct Qcow2<S, B> {
    source: S,
    header: Header,
    geo: Geometry,
    l1: RwLock<Vec<u64>>,
    l2: l2::Cache,
    backing: Option<B>,
    /// The cluster last decompressed (by host offset): sequential reads decompress it once.
    last: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// Set by [`Qcow2::enable_writes`].
    writer: Option<Mutex<write::Writer>>,
}

impl<S: Source, B: Backing> Qcow2<S, B> {
    /// Opens the image in `source` with its `header`, over `backing`, read-only (see
    /// [`Qcow2::enable_writes`]).
    pub fn open(source: S, header: Header, backing: Option<B>) -> io::Result<Self> {
        let geo =
            Geometry { cluster_bits: header.cluster_bits, extended: header.extended_l2(), v3: header.version == 3 };
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        source.read_at(&mut raw, header.l1_offset)?;
        let l1 = header::be64_words(&raw);
        let l2 = l2::Cache::new((L2_CACHE_BYTES >> header.cluster_bits) as usize);
        Ok(Qcow2 { source, header, geo, l1: RwLock::new(l1), l2, backing, last: Mutex::new(None), writer: None })
    }

    /// The disk's size.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// The backing file, if any.
    pub fn backing(&self) -> Option<&B> {
        self.backing.as_ref()
    }

    /// What is at `offset` and how far (at most `max` bytes, at least one) that goes on; a data
    /// run's host offset is the one of `offset`.
    pub fn mapping(&self, offset: u64, max: u64) -> io::Result<(Kind, u64)> {
        let size = self.header.size;
        if offset >= size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("offset {offset} is past the end")));
        }
        let max = max.clamp(1, size - offset);
        let span = self.geo.l2_entries() << self.geo.cluster_bits;
        let index = (offset / span) as usize;
        let span_end = (offset / span + 1) * span;
        let limit = (offset + max).min(span_end);
        let l1_entry = self.l1.read().unwrap_or_else(|p| p.into_inner())[index];
        let l2_host = l1_entry & OFFSET_MASK;
        if l2_host == 0 {
            return Ok((Kind::Unallocated, limit - offset));
        }
        let table = self.l2_table(l2_host)?;
        let unit = self.geo.unit();
        let start = offset / unit * unit;
        let first = self.unit_kind(&table, start)?;
        let mut end = match first {
            Kind::Compressed { .. } => ((offset >> self.geo.cluster_bits) + 1) << self.geo.cluster_bits,
            _ => start + unit,
        };
        while end < limit && !matches!(first, Kind::Compressed { .. }) {
            let next = self.unit_kind(&table, end)?;
            let same = match (first, next) {
                (Kind::Data(a), Kind::Data(b)) => b == a + (end - start),
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            end += unit;
        }
        let kind = match first {
            Kind::Data(host) => Kind::Data(host + (offset - start)),
            other => other,
        };
        Ok((kind, end.min(limit) - offset))
    }

    /// The kind of the allocation unit starting at guest offset `at`, in its L2 `table`.
    fn unit_kind(&self, table: &[u64], at: u64) -> io::Result<Kind> {
        let cluster = (at >> self.geo.cluster_bits) % self.geo.l2_entries();
        let word = cluster as usize * self.geo.words_per_entry();
        let bitmap = if self.geo.extended { table[word + 1] } else { 0 };
        let sub = ((at & (self.geo.cluster_size() - 1)) / self.geo.unit()) as u32;
        self.geo.decode(table[word], bitmap, sub)
    }

    /// The L2 table at `host`, from the cache or the file.
    fn l2_table(&self, host: u64) -> io::Result<l2::Table> {
        let cluster_size = self.geo.cluster_size();
        if host & (cluster_size - 1) != 0 {
            return Err(corrupt(format!("L2 table at {host:#x} is not aligned to a cluster")));
        }
        self.l2.get(host, || {
            if host + cluster_size > self.source.size()? {
                return Err(corrupt(format!("L2 table at {host:#x} is past the end of the file")));
            }
            let mut raw = vec![0u8; cluster_size as usize];
            self.source.read_at(&mut raw, host)?;
            Ok(header::be64_words(&raw))
        })
    }

    /// Reads `buf.len()` bytes of the disk at `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.header.size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read past the end of the disk"));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (kind, len) = self.mapping(at, (buf.len() - done) as u64)?;
            let chunk = &mut buf[done..done + len as usize];
            match kind {
                Kind::Data(host) => self.source.read_at(chunk, host)?,
                Kind::Compressed { host, len } => {
                    let cluster = match self.decompressed(host, len) {
                        Ok(cluster) => cluster,
                        // A writer may have just copied the cluster elsewhere and freed the old
                        // bytes under this read: look it up again.
                        Err(_) if self.mapping(at, 1)?.0 != kind => continue,
                        Err(e) => return Err(e),
                    };
                    let within = (at & (self.geo.cluster_size() - 1)) as usize;
                    chunk.copy_from_slice(&cluster[within..within + chunk.len()]);
                }
                Kind::Zero => chunk.fill(0),
                Kind::Unallocated => self.read_backing(chunk, at)?,
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// What the backing file holds at `at` (zeroes past its end or without one).
    fn read_backing(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let there = backing.size().saturating_sub(at).min(buf.len() as u64) as usize;
        if there > 0 {
            backing.read(&mut buf[..there], at)?;
        }
        buf[there..].fill(0);
        Ok(())
    }

    /// The compressed cluster stored at `host` (at most `len` bytes), decompressed.
    fn decompressed(&self, host: u64, len: u64) -> io::Result<Arc<Vec<u8>>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, cluster)) = &*last {
            if *at == host {
                return Ok(Arc::clone(cluster));
            }
        }
        let file_size = self.source.size()?;
        if host >= file_size {
            return Err(corrupt(format!("compressed cluster at {host:#x} is past the end of the file")));
        }
        // The length is rounded up to sectors and may run past the end of the file.
        let mut input = vec![0u8; len.min(file_size - host) as usize];
        self.source.read_at(&mut input, host)?;
        let mut cluster = vec![0u8; self.geo.cluster_size() as usize];
        compressed::decompress(self.header.compression, &input, &mut cluster)
            .map_err(|e| corrupt(format!("compressed cluster at {host:#x}: {e}")))?;
        let cluster = Arc::new(cluster);
        *last = Some((host, Arc::clone(&cluster)));
        Ok(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::header::tests::image;
    use super::*;

    impl Backing for Vec<u8> {
        fn size(&self) -> u64 {
            self.len() as u64
        }

        fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            Source::read_at(self, buf, offset)
        }
    }

    fn put64(b: &mut [u8], at: u64, v: u64) {
        b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes());
    }

    fn open(b: Vec<u8>, backing: Option<Vec<u8>>) -> Qcow2<Vec<u8>, Vec<u8>> {
        let header = Header::read(&b).unwrap();
        Qcow2::open(b, header, backing).unwrap()
    }

    /// L1 entry 0 points at an L2 table at 0x40000; data clusters from 0x50000.
    fn with_l2(extended: bool, zstd: bool) -> Vec<u8> {
        let mut b = image(1 << 30, extended, zstd);
        put64(&mut b, 0x30000, 0x40000 | l2::COPIED);
        b
    }

    #[test]
    fn standard_clusters_zero_backing_and_compressed() {
        let mut b = with_l2(false, true);
        b[0x50000..0x60000].fill(0xaa);
        put64(&mut b, 0x40000, 0x50000 | l2::COPIED);
        put64(&mut b, 0x40008, l2::ZERO_FLAG);
        let data = vec![0x5au8; 65536];
        let stored = compressed::compress(header::Compression::Zstd, &data);
        let sectors = stored.len().div_ceil(512) as u64;
        put64(&mut b, 0x40010, l2::COMPRESSED | ((sectors - 1) << 54) | 0x60000);
        b.extend_from_slice(&stored);
        let q = open(b, Some(vec![0x77u8; 1 << 20]));
        let mut buf = vec![0u8; 4 << 16];
        q.read(&mut buf, 0).unwrap();
        assert!(buf[..65536].iter().all(|&x| x == 0xaa));
        assert!(buf[65536..131072].iter().all(|&x| x == 0));
        assert!(buf[131072..196608].iter().all(|&x| x == 0x5a));
        assert!(buf[196608..].iter().all(|&x| x == 0x77), "unallocated reads the backing file");
        // Past the backing file's end: zeroes.
        let mut buf = vec![1u8; 4096];
        q.read(&mut buf, 2 << 20).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        assert_eq!(q.mapping(100, 1 << 30).unwrap(), (Kind::Data(0x50064), 65436));
        assert_eq!(q.mapping(65536, 1 << 30).unwrap(), (Kind::Zero, 65536));
        // A whole L2 table's span without one is one unallocated run.
        assert_eq!(q.mapping(512 << 20, 1 << 30).unwrap(), (Kind::Unallocated, 512 << 20));
    }

    #[test]
    fn subclusters() {
        let mut b = with_l2(true, false);
        b[0x50000..0x60000].fill(0xbb);
        put64(&mut b, 0x40000, 0x50000 | l2::COPIED);
        // Subclusters 0-1 data, 2 zero, the rest from the backing file.
        put64(&mut b, 0x40008, 0b11 | (1 << 34));
        let q = open(b, Some(vec![0x77u8; 1 << 20]));
        assert_eq!(q.mapping(0, 1 << 20).unwrap(), (Kind::Data(0x50000), 4096));
        assert_eq!(q.mapping(4096, 1 << 20).unwrap(), (Kind::Zero, 2048));
        let mut buf = vec![0u8; 8192];
        q.read(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 0xbb));
        assert!(buf[4096..6144].iter().all(|&x| x == 0));
        assert!(buf[6144..].iter().all(|&x| x == 0x77));
    }

    #[test]
    fn hostile_tables_are_errors() {
        let read = |b: Vec<u8>| {
            let q = open(b, None);
            let mut buf = vec![0u8; 65536];
            q.read(&mut buf, 0).unwrap_err()
        };
        let mut b = image(1 << 30, false, false);
        put64(&mut b, 0x30000, 0x70_0000_0000);
        assert!(read(b).to_string().contains("past the end"));
        let mut b = image(1 << 30, false, false);
        put64(&mut b, 0x30000, 0x40200);
        assert!(read(b).to_string().contains("not aligned"));
        let mut b = with_l2(false, false);
        put64(&mut b, 0x40000, l2::COMPRESSED | 0x50000);
        b[0x50000..0x50200].fill(0xff);
        assert!(read(b).to_string().contains("compressed cluster"));
        let mut b = with_l2(false, true);
        put64(&mut b, 0x40000, l2::COMPRESSED | 0x9_0000_0000);
        assert!(read(b).to_string().contains("past the end"));
        let mut b = with_l2(true, false);
        put64(&mut b, 0x40000, 0x50000);
        put64(&mut b, 0x40008, 1 | (1 << 32));
        assert!(read(b).to_string().contains("both allocated and zero"));
        // Reads past the disk are refused, not served.
        let q = open(image(1 << 20, false, false), None);
        assert!(q.read(&mut [0u8; 10], (1 << 20) - 5).is_err());
    }
}
