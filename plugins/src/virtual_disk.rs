//! A virtual disk laid out as consecutive regions, for the plugins that synthesize a disk around
//! host files (`partitioning`, `floppy`): each region is bytes held in memory (a partition table,
//! a boot sector, a directory), zeroes (padding), or a range the plugin serves itself (a host
//! file, a table it computes on demand). This module finds the regions a request touches and
//! answers the in-memory and zero ones; the plugin answers its own. Also here: the MBR partition
//! entry both plugins write, and the 512-byte sector they both assume.

use nbdforge_api::{Error, Result};

/// The sector size of every disk built here.
pub(crate) const SECTOR_SIZE: u64 = 512;

/// What a region holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// These bytes, exactly the region's length.
    Bytes(Vec<u8>),
    /// Zeroes.
    Zero,
    /// The plugin's source number N (a file, a computed table), from its start.
    Source(usize),
}

/// One region: where it starts on the disk, how long it is, and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) content: Content,
}

impl Region {
    pub(crate) fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The whole disk: regions in order, without gaps, none empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct Regions {
    list: Vec<Region>,
}

impl Regions {
    /// The disk's size: the end of the last region.
    pub(crate) fn size(&self) -> u64 {
        self.list.last().map_or(0, Region::end)
    }

    pub(crate) fn list(&self) -> &[Region] {
        &self.list
    }

    /// Appends a region of `len` bytes and returns its index; a length of 0 adds nothing (and the
    /// index returned is then the previous region's).
    pub(crate) fn push(&mut self, len: u64, content: Content) -> usize {
        if let Content::Bytes(b) = &content {
            debug_assert_eq!(b.len() as u64, len);
        }
        if len > 0 {
            self.list.push(Region { start: self.size(), len, content });
        }
        self.list.len().saturating_sub(1)
    }

    /// Appends the regions of `other`, moved to start at the end of these.
    pub(crate) fn append(&mut self, other: Regions) {
        for region in other.list {
            self.push(region.len, region.content);
        }
    }

    /// Appends zeroes up to the next multiple of `alignment` (a power of two or any positive
    /// number).
    pub(crate) fn pad_to(&mut self, alignment: u64) {
        let rest = self.size() % alignment;
        if rest != 0 {
            self.push(alignment - rest, Content::Zero);
        }
    }

    /// The region holding byte `offset`, if any.
    pub(crate) fn region_at(&self, offset: u64) -> Option<&Region> {
        self.list.get(self.list.partition_point(|r| r.end() <= offset))
    }

    /// The bytes of in-memory region `index`, to fill in once the layout is known.
    pub(crate) fn bytes_mut(&mut self, index: usize) -> &mut [u8] {
        match &mut self.list[index].content {
            Content::Bytes(b) => b,
            other => panic!("region {index} holds {other:?}, not bytes"),
        }
    }

    /// Calls `each(region, offset in the region, range of the request)` for each region that
    /// `count` bytes at `offset` touch, in order. The server checks requests against the size.
    fn for_regions(
        &self,
        count: u64,
        offset: u64,
        mut each: impl FnMut(&Region, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let end = offset + count;
        let mut at = offset;
        let mut index = self.list.partition_point(|r| r.end() <= offset);
        while at < end {
            let region =
                self.list.get(index).ok_or_else(|| Error::io(format!("offset {at} is past the end of the disk")))?;
            let n = region.end().min(end) - at;
            let done = (at - offset) as usize;
            each(region, at - region.start, done..done + n as usize)?;
            at += n;
            index += 1;
        }
        Ok(())
    }

    /// Fills `buf` from `offset`; `source(n, buf, offset in source n)` reads the plugin's own.
    pub(crate) fn read(
        &self,
        buf: &mut [u8],
        offset: u64,
        mut source: impl FnMut(usize, &mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        self.for_regions(buf.len() as u64, offset, |region, within, range| {
            let out = &mut buf[range];
            match &region.content {
                Content::Bytes(b) => out.copy_from_slice(&b[within as usize..within as usize + out.len()]),
                Content::Zero => out.fill(0),
                Content::Source(n) => source(*n, out, within)?,
            }
            Ok(())
        })
    }

    /// Writes `buf` at `offset`: `source(n, data, offset in source n)` takes the plugin's own
    /// parts; the synthesized parts take only what they already hold (a client copying the disk
    /// onto itself), anything else fails with `EIO` as in nbdkit, before any byte is written.
    pub(crate) fn write(
        &self,
        buf: &[u8],
        offset: u64,
        mut source: impl FnMut(usize, &[u8], u64) -> Result<()>,
    ) -> Result<()> {
        self.for_regions(buf.len() as u64, offset, |region, within, range| {
            let data = &buf[range];
            match &region.content {
                Content::Bytes(b) if b[within as usize..within as usize + data.len()] != *data => Err(Error::io(
                    format!("write at offset {}: attempt to change the partition table", region.start + within),
                )),
                Content::Zero if data.iter().any(|&b| b != 0) => Err(Error::io(format!(
                    "write at offset {}: non-zero data written to a padding region",
                    region.start + within
                ))),
                _ => Ok(()),
            }
        })?;
        self.for_regions(buf.len() as u64, offset, |region, within, range| match region.content {
            Content::Source(n) => source(n, &buf[range], within),
            _ => Ok(()),
        })
    }
}

/// Writes one 16-byte MBR partition entry: the CHS fields say "beyond CHS" (1023/254/63), as
/// every modern tool writes them, and the sector numbers are little-endian LBAs.
pub(crate) fn mbr_entry(out: &mut [u8], bootable: bool, id: u8, first_sector: u32, sectors: u32) {
    const CHS_TOO_LARGE: [u8; 3] = [254, 0xff, 0xff];
    out[0] = if bootable { 0x80 } else { 0 };
    out[1..4].copy_from_slice(&CHS_TOO_LARGE);
    out[4] = id;
    out[5..8].copy_from_slice(&CHS_TOO_LARGE);
    out[8..12].copy_from_slice(&first_sector.to_le_bytes());
    out[12..16].copy_from_slice(&sectors.to_le_bytes());
}

/// Marks a boot sector (MBR, EBR, FAT boot sector) with its 0x55 0xAA signature.
pub(crate) fn boot_signature(sector: &mut [u8]) {
    sector[510] = 0x55;
    sector[511] = 0xaa;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Regions {
        let mut r = Regions::default();
        r.push(4, Content::Bytes(b"HEAD".to_vec()));
        r.pad_to(8);
        r.push(5, Content::Source(0));
        r.push(0, Content::Zero);
        r.push(3, Content::Source(1));
        r
    }

    #[test]
    fn reads_span_regions() {
        let r = disk();
        assert_eq!(r.size(), 16);
        assert_eq!(r.list().len(), 4);
        let mut buf = [0xffu8; 16];
        r.read(&mut buf, 0, |n, out, at| {
            for (i, b) in out.iter_mut().enumerate() {
                *b = b'a' + n as u8 * 10 + at as u8 + i as u8;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(&buf, b"HEAD\0\0\0\0abcdeklm");
        let mut mid = [0u8; 4];
        r.read(&mut mid, 11, |_, out, at| {
            out.fill(at as u8);
            Ok(())
        })
        .unwrap();
        assert_eq!(mid, [3, 3, 0, 0]);
    }

    #[test]
    fn writes_to_synthesized_parts_must_not_change_them() {
        let r = disk();
        let mut written = Vec::new();
        r.write(b"EAD\0\0\0\0\0xy", 1, |n, d, at| {
            written.push((n, d.to_vec(), at));
            Ok(())
        })
        .unwrap();
        assert_eq!(written, vec![(0, b"\0xy".to_vec(), 0)]);
        written.clear();
        assert!(r.write(b"X", 0, |_, _, _| Ok(())).unwrap_err().message.contains("partition table"));
        let err = r.write(b"\0\x01abc", 6, |n, _, _| panic!("source {n} written")).unwrap_err();
        assert!(err.message.contains("padding"), "{}", err.message);
    }

    #[test]
    fn mbr_entries() {
        let mut e = [0u8; 16];
        mbr_entry(&mut e, true, 0x83, 2048, 1954);
        assert_eq!(e, [0x80, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff, 0, 8, 0, 0, 0xa2, 7, 0, 0]);
    }
}
