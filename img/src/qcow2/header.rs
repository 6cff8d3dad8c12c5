//! The qcow2 header and its extensions, parsed and checked before anything else is read: every
//! field that later sizes an allocation or a loop (cluster bits, the L1 table, the refcount
//! table, name lengths) is bounded here, so that a hostile header gives an error, not a panic or
//! a huge allocation. The one header parser of the crate: the own driver ([`super::Qcow2`]),
//! internal snapshots (`-l`, [`crate::snapshot`]) and dirty bitmaps (`-B`, [`crate::bitmap`])
//! all start from [`Header`]. What only the own driver cannot serve (encryption, an external
//! data file, unknown feature bits) is refused by [`Header::check_supported`], not here, as
//! imago serves some of it.

use std::io;

use super::{corrupt, Source};

/// The magic at the start of a qcow2 image.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Incompatible feature bits.
pub const DIRTY: u64 = 1 << 0;
pub const CORRUPT: u64 = 1 << 1;
pub const EXTERNAL_DATA: u64 = 1 << 2;
pub const COMPRESSION_TYPE: u64 = 1 << 3;
pub const EXTENDED_L2: u64 = 1 << 4;
const KNOWN_INCOMPATIBLE: u64 = DIRTY | CORRUPT | EXTERNAL_DATA | COMPRESSION_TYPE | EXTENDED_L2;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;

/// QEMU's own limits, which images in the wild respect: 2 MiB clusters, a 32 MiB L1 table,
/// an 8 MiB refcount table, 1023-byte backing file names.
pub const MAX_CLUSTER_BITS: u32 = 21;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_BACKING_NAME: u32 = 1023;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), 4 KiB window.
    Zlib,
    /// One zstd frame.
    Zstd,
}

/// What the driver needs from the header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub refcount_order: u32,
    pub incompatible: u64,
    /// Autoclear feature bits (v3): a writer that does not keep what they stand for clears them.
    pub autoclear: u64,
    /// Internal snapshots: clusters may be shared with them.
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub crypt_method: u32,
    pub compression: Compression,
    /// Bytes of the header proper (72 for v2), where the extensions start.
    pub header_length: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// The data of the bitmaps extension, as stored ([`super::bitmaps`] reads it).
    pub bitmaps_extension: Option<Vec<u8>>,
    /// The header's first 72 bytes (version 2's whole header), as read: imago is shown a
    /// snapshot as this with the snapshot's L1 table and size.
    pub v2: [u8; 72],
}

/// A qcow2 header: the magic, then version 2 or 3.
pub fn looks_like_qcow2(head: &[u8; 8]) -> bool {
    &head[..4] == MAGIC && matches!(be32(head, 4), 2 | 3)
}

/// Big-endian fields of a byte slice whose length the caller has checked.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A table of big-endian 64-bit entries (L1, L2, refcount and bitmap tables), as read.
pub fn be64_words(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8).map(|c| be64(c, 0)).collect()
}

impl Header {
    /// The header of `source` if it is a qcow2 image ([`looks_like_qcow2`]), checked; `None`
    /// when it is not one.
    pub fn probe(source: &dyn Source) -> io::Result<Option<Header>> {
        let mut head = [0u8; 8];
        if source.size()? < 8 {
            return Ok(None);
        }
        source.read_at(&mut head, 0)?;
        if !looks_like_qcow2(&head) {
            return Ok(None);
        }
        Header::read(source).map(Some)
    }

    /// Reads and checks the header at the start of `source`.
    pub fn read(source: &dyn Source) -> io::Result<Header> {
        let file_size = source.size()?;
        let mut b = [0u8; 112];
        if file_size < 72 {
            return Err(corrupt(format!("{file_size} bytes is too short for a qcow2 header")));
        }
        let head = (file_size.min(b.len() as u64)) as usize;
        source.read_at(&mut b[..head], 0)?;
        if &b[..4] != MAGIC {
            return Err(corrupt("not a qcow2 image (bad magic)"));
        }
        let version = be32(&b, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(&b, 20);
        let (incompatible, refcount_order, header_length) = if version == 3 {
            if head < 104 {
                return Err(corrupt("the file ends inside the version 3 header"));
            }
            (be64(&b, 72), be32(&b, 96), be32(&b, 100))
        } else {
            (0, 4, 72)
        };
        let min_bits = if incompatible & EXTENDED_L2 != 0 { 14 } else { 9 };
        if !(min_bits..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits} is outside {min_bits}..={MAX_CLUSTER_BITS}")));
        }
        let cluster_size = 1u64 << cluster_bits;
        if version == 3
            && (header_length < 104 || u64::from(header_length) > cluster_size || !header_length.is_multiple_of(8))
        {
            return Err(corrupt(format!("header_length {header_length}")));
        }
        if refcount_order > 6 {
            return Err(corrupt(format!("refcount_order {refcount_order} is above 6")));
        }
        let compression = if header_length > 104 {
            match b[104] {
                0 => Compression::Zlib,
                1 => Compression::Zstd,
                other => return Err(unsupported(format!("compression type {other}"))),
            }
        } else {
            Compression::Zlib
        };
        if (compression != Compression::Zlib) != (incompatible & COMPRESSION_TYPE != 0) {
            return Err(corrupt("the compression type and its incompatible feature bit disagree"));
        }

        let size = be64(&b, 24);
        let l1_size = be32(&b, 36);
        let l1_offset = be64(&b, 40);
        let refcount_table_offset = be64(&b, 48);
        let refcount_table_clusters = be32(&b, 56);
        let entry_bytes = if incompatible & EXTENDED_L2 != 0 { 16 } else { 8 };
        check_l1(size, l1_offset, l1_size, cluster_bits, entry_bytes)?;
        let reftable_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if reftable_bytes > MAX_REFTABLE_BYTES || refcount_table_clusters == 0 {
            return Err(corrupt(format!("refcount_table_clusters {refcount_table_clusters}")));
        }
        check_table("refcount table", refcount_table_offset, reftable_bytes, cluster_size)?;

        let mut header = Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            refcount_table_offset,
            refcount_table_clusters,
            refcount_order,
            incompatible,
            autoclear: if version == 3 { be64(&b, 88) } else { 0 },
            nb_snapshots: be32(&b, 60),
            snapshots_offset: be64(&b, 64),
            crypt_method: be32(&b, 32),
            compression,
            header_length,
            backing_file: None,
            backing_format: None,
            bitmaps_extension: None,
            v2: b[..72].try_into().expect("72 bytes"),
        };
        header.read_backing_name(source, be64(&b, 8), be32(&b, 16))?;
        header.read_extensions(source, file_size)?;
        Ok(header)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible & EXTENDED_L2 != 0
    }

    /// Whether this is an image only the own driver reads (imago refuses it).
    pub fn needs_own_driver(&self) -> bool {
        self.incompatible & (COMPRESSION_TYPE | EXTENDED_L2) != 0
    }

    /// Bytes of the disk one L1 entry covers.
    pub fn l1_entry_covers(&self) -> u64 {
        let entry_bytes = if self.extended_l2() { 16 } else { 8 };
        (self.cluster_size() / entry_bytes) << self.cluster_bits
    }

    /// Refuses what the own driver does not serve (imago serves an external data file).
    pub fn check_supported(&self) -> io::Result<()> {
        if self.crypt_method != 0 {
            return Err(unsupported("encryption (crypt_method is not 0)"));
        }
        let unknown = self.incompatible & !KNOWN_INCOMPATIBLE;
        if unknown != 0 {
            return Err(unsupported(format!("incompatible feature bits {unknown:#x}")));
        }
        if self.incompatible & EXTERNAL_DATA != 0 {
            return Err(unsupported("an external data file"));
        }
        Ok(())
    }

    /// This header with another disk size and L1 table (an internal snapshot's), checked as
    /// the active layer's are.
    pub fn with_l1(&self, size: u64, l1_offset: u64, l1_size: u32) -> io::Result<Header> {
        let entry_bytes = if self.extended_l2() { 16 } else { 8 };
        check_l1(size, l1_offset, l1_size, self.cluster_bits, entry_bytes)?;
        Ok(Header { size, l1_offset, l1_size, ..self.clone() })
    }

    fn read_backing_name(&mut self, source: &dyn Source, offset: u64, len: u32) -> io::Result<()> {
        if offset == 0 {
            return Ok(());
        }
        if len > MAX_BACKING_NAME || offset.checked_add(u64::from(len)).is_none_or(|end| end > self.cluster_size()) {
            return Err(corrupt(format!("backing file name at {offset}, {len} bytes, is not in the header cluster")));
        }
        let mut name = vec![0u8; len as usize];
        source.read_at(&mut name, offset)?;
        let name = String::from_utf8(name).map_err(|_| corrupt("the backing file name is not UTF-8"))?;
        self.backing_file = Some(name).filter(|n| !n.is_empty());
        Ok(())
    }

    /// The extensions between the header and the end of the first cluster.
    fn read_extensions(&mut self, source: &dyn Source, file_size: u64) -> io::Result<()> {
        let end = self.cluster_size().min(file_size);
        let mut at = u64::from(self.header_length);
        while at + 8 <= end {
            let mut th = [0u8; 8];
            source.read_at(&mut th, at)?;
            let (kind, len) = (be32(&th, 0), u64::from(be32(&th, 4)));
            at += 8;
            if kind == EXT_END {
                return Ok(());
            }
            if at + len > end {
                return Err(corrupt(format!("header extension {kind:#x} ({len} bytes) runs past the first cluster")));
            }
            match kind {
                EXT_BACKING_FORMAT => {
                    let mut name = vec![0u8; len as usize];
                    source.read_at(&mut name, at)?;
                    let name = String::from_utf8(name).map_err(|_| corrupt("the backing format is not UTF-8"))?;
                    self.backing_format = Some(name.trim_end_matches('\0').to_string());
                }
                EXT_BITMAPS => {
                    let mut e = vec![0u8; len as usize];
                    source.read_at(&mut e, at)?;
                    self.bitmaps_extension = Some(e);
                }
                // Names of features for messages; the bits are what count. Other extensions
                // (encryption, data file name) are refused above.
                EXT_FEATURE_NAMES => {}
                _ => {}
            }
            at += len.next_multiple_of(8);
        }
        Ok(())
    }
}

/// The disk must fit in the L1 table, which must fit QEMU's limit and be well placed.
fn check_l1(size: u64, l1_offset: u64, l1_size: u32, cluster_bits: u32, entry_bytes: u64) -> io::Result<()> {
    let per_l1 = ((1u64 << cluster_bits) / entry_bytes) << cluster_bits;
    if u64::from(l1_size) < size.div_ceil(per_l1) {
        return Err(corrupt(format!("l1_size {l1_size} is too small for a {size}-byte disk")));
    }
    if u64::from(l1_size) * 8 > MAX_L1_BYTES {
        return Err(corrupt(format!("l1_size {l1_size} is above QEMU's limit")));
    }
    check_table("L1 table", l1_offset, u64::from(l1_size) * 8, 1 << cluster_bits)
}

/// A table must be cluster-aligned and must not wrap around.
fn check_table(what: &str, offset: u64, bytes: u64, cluster_size: u64) -> io::Result<()> {
    if !offset.is_multiple_of(cluster_size) || offset.checked_add(bytes).is_none_or(|end| end > 1 << 56) {
        return Err(corrupt(format!("the {what} at {offset:#x} ({bytes} bytes) is misplaced")));
    }
    Ok(())
}

pub fn unsupported(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("qcow2: {what} is not supported"))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    impl Source for Vec<u8> {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let end = offset as usize + buf.len();
            if end > self.len() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.copy_from_slice(&self[offset as usize..end]);
            Ok(())
        }

        fn size(&self) -> io::Result<u64> {
            Ok(self.len() as u64)
        }
    }

    /// A v3 image of 64 KiB clusters and `size` bytes: header, refcount table at 0x10000, L1 at
    /// 0x30000, `clusters` clusters long; `extended` sets extended L2 entries, `zstd` zstd.
    pub fn image(size: u64, extended: bool, zstd: bool) -> Vec<u8> {
        let mut b = vec![0u8; 6 << 16];
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        b[..4].copy_from_slice(MAGIC);
        put32(&mut b, 4, 3);
        put32(&mut b, 20, 16);
        put64(&mut b, 24, size);
        put32(&mut b, 36, 16);
        put64(&mut b, 40, 0x30000);
        put64(&mut b, 48, 0x10000);
        put32(&mut b, 56, 1);
        let incompatible = if extended { EXTENDED_L2 } else { 0 } | if zstd { COMPRESSION_TYPE } else { 0 };
        put64(&mut b, 72, incompatible);
        put32(&mut b, 96, 4);
        put32(&mut b, 100, 112);
        b[104] = u8::from(zstd);
        b
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// Refused by the parser, or by the own driver's checks.
    fn refused(b: Vec<u8>, what: &str) {
        match Header::read(&b).and_then(|h| h.check_supported().map(|()| h)) {
            Ok(h) => panic!("{what}: accepted {h:?}"),
            Err(e) => assert!(e.to_string().starts_with("qcow2: "), "{what}: {e}"),
        }
    }

    #[test]
    fn a_good_header() {
        let h = Header::read(&image(1 << 30, true, true)).unwrap();
        assert_eq!((h.cluster_bits, h.size, h.compression), (16, 1 << 30, Compression::Zstd));
        assert!(h.extended_l2());
        assert_eq!(Header::read(&image(1 << 30, false, false)).unwrap().compression, Compression::Zlib);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let good = || image(1 << 30, false, false);
        refused(good()[..50].to_vec(), "short file");
        let mut b = good();
        b[0] = b'X';
        refused(b, "magic");
        for (at, v, what) in [
            (4, 4, "version 4"),
            (20, 8, "cluster_bits 8"),
            (20, 22, "cluster_bits 22"),
            (20, u32::MAX, "cluster_bits huge"),
            (32, 1, "encryption"),
            (36, 1, "l1_size too small for the disk"),
            (36, u32::MAX, "l1_size huge"),
            (56, 0, "no refcount table"),
            (56, u32::MAX, "refcount table huge"),
            (96, 7, "refcount_order 7"),
            (100, 50, "header_length short"),
            (100, 1 << 20, "header_length past the cluster"),
            (16, 5000, "backing name too long"),
        ] {
            let mut b = good();
            put32(&mut b, at, v);
            if at == 16 {
                put64(&mut b, 8, 0x200);
            }
            refused(b, what);
        }
        for (at, v, what) in [
            (40, 0x30001, "misaligned L1 table"),
            (40, u64::MAX - 0xffff, "L1 table wrapping around"),
            (48, 0x10200, "misaligned refcount table"),
            (24, u64::MAX, "a disk larger than any L1 table"),
            (72, 1 << 9, "unknown incompatible feature"),
            (72, EXTERNAL_DATA, "external data file"),
            (72, COMPRESSION_TYPE, "zstd bit with zlib type"),
        ] {
            let mut b = good();
            put64(&mut b, at, v);
            refused(b, what);
        }
        let mut b = image(1 << 30, false, true);
        b[104] = 2;
        refused(b, "compression type 2");
        let mut b = image(1 << 30, true, false);
        put32(&mut b, 20, 12);
        refused(b, "extended L2 entries with 4 KiB clusters");
        // An extension longer than the header cluster.
        let mut b = good();
        put32(&mut b, 112, EXT_BACKING_FORMAT);
        put32(&mut b, 116, 70000);
        refused(b, "extension past the cluster");
    }

    #[test]
    fn probing_and_snapshot_views() {
        assert!(Header::probe(&b"QFI".to_vec()).unwrap().is_none());
        assert!(Header::probe(&vec![0u8; 4096]).unwrap().is_none());
        let mut b = image(1 << 30, true, true);
        assert!(Header::probe(&b).unwrap().is_some());
        put32(&mut b, 20, 40);
        assert!(Header::probe(&b).is_err(), "a qcow2 magic with a hostile header is an error, not 'not qcow2'");
        // An external data file is imago's to serve: parsed, refused by the own driver only.
        let mut b = image(1 << 30, false, false);
        put64(&mut b, 72, EXTERNAL_DATA);
        assert!(Header::read(&b).unwrap().check_supported().is_err());
        // A snapshot's L1 table is checked as the active one is: 16 entries of 2^28 bytes each
        // with extended L2 entries and 64 KiB clusters.
        let h = Header::read(&image(1 << 30, true, false)).unwrap();
        assert_eq!(h.l1_entry_covers(), 1 << 28);
        let view = h.with_l1(4 << 30, 0x40000, 16).unwrap();
        assert_eq!((view.size, view.l1_offset, view.l1_size), (4 << 30, 0x40000, 16));
        assert!(h.with_l1((4 << 30) + 1, 0x40000, 16).is_err(), "too small for the disk");
        assert!(h.with_l1(1 << 20, 0x40200, 1).is_err(), "misaligned");
        assert!(h.with_l1(1 << 20, 0x40000, u32::MAX).is_err(), "huge");
    }

    #[test]
    fn backing_name_and_format() {
        let mut b = image(1 << 20, false, false);
        b[0x200..0x208].copy_from_slice(b"base.raw");
        put64(&mut b, 8, 0x200);
        put32(&mut b, 16, 8);
        put32(&mut b, 112, EXT_BACKING_FORMAT);
        put32(&mut b, 116, 3);
        b[120..123].copy_from_slice(b"raw");
        let h = Header::read(&b).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some("base.raw"));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
    }
}
