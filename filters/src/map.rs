//! The `map` filter: moves ranges of the disk, so that bytes `START` to `END` of the export are
//! bytes `DEST` onwards of the layer below (nbdkit-map-filter); for example swapping two sectors.
//!
//! `map=START-END:DEST` may be repeated; where mappings overlap the first given wins, and bytes no
//! mapping covers map to themselves. The mappings are kept as a sorted list of non-overlapping
//! ranges, so a request is cut into pieces of one mapping each by a binary search. `map-size=`
//! sets the export's size (by default that of the layer below); a piece that lands past the end
//! of the layer below fails with `EIO`. A read of a single piece passes the sink down, keeping the
//! layer below's zero-copy path.

use std::sync::Arc;

use nbdforge_api::{
    parse_int, parse_size, Backend, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink,
    Registration, Result, BASE_ALLOCATION,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("map", "remap disk blocks").help(
        "map=<START>-<END>:<DEST>  Map bytes START to END (inclusive) to DEST in the plugin.\n\
         map-size=<SIZE>           The size of the export (default: the plugin's).",
    );
    Registration::filter(info, MapFilter::default)
}

/// A mapped range: export bytes `[start, end)` are the layer below's from `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    dest: u64,
}

/// The `map` filter.
#[derive(Debug, Default)]
pub struct MapFilter {
    /// Sorted and non-overlapping.
    mappings: Arc<Vec<Mapping>>,
    size: Option<u64>,
}

/// A number as nbdkit reads them here: a size (`512`, `1M`) or a C integer (`0x1bd`).
fn number(key: &str, value: &str, text: &str) -> Result<u64> {
    parse_size(key, text)
        .or_else(|_| parse_int::<u64>(key, text))
        .map_err(|_| Error::invalid(format!("{key}={value}: '{text}' is not a number or a size")))
}

/// Parses `START-END:DEST` (END inclusive).
fn parse_mapping(key: &str, value: &str) -> Result<Mapping> {
    let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let (range, dest) = value.rsplit_once(':').ok_or_else(|| fail("expected START-END:DEST"))?;
    let (start, end) = range.split_once('-').ok_or_else(|| fail("expected START-END:DEST"))?;
    let (start, last, dest) = (number(key, value, start)?, number(key, value, end)?, number(key, value, dest)?);
    if last < start {
        return Err(fail("the end of the range is before its start"));
    }
    let end = last.checked_add(1).ok_or_else(|| fail("the range is too large"))?;
    dest.checked_add(end - start).ok_or_else(|| fail("the destination is too large"))?;
    Ok(Mapping { start, end, dest })
}

/// Adds `new` to the sorted, non-overlapping `list` where no earlier mapping covers it.
fn add_mapping(list: &mut Vec<Mapping>, new: Mapping) {
    let mut at = new.start;
    let mut pieces = Vec::new();
    for m in list.iter().filter(|m| m.end > new.start && m.start < new.end) {
        if m.start > at {
            pieces.push(Mapping { start: at, end: m.start, dest: new.dest + (at - new.start) });
        }
        at = at.max(m.end);
    }
    if at < new.end {
        pieces.push(Mapping { start: at, end: new.end, dest: new.dest + (at - new.start) });
    }
    list.extend(pieces);
    list.sort_unstable_by_key(|m| m.start);
}

impl Layer for MapFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "map" => {
                let m = parse_mapping(key, value)?;
                add_mapping(Arc::make_mut(&mut self.mappings), m);
            }
            "map-size" => self.size = Some(parse_size(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for MapFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let real_size = below.get_size()?;
        let size = self.size.unwrap_or(real_size);
        Ok(Box::new(MapHandle { next: below, mappings: Arc::clone(&self.mappings), size, real_size }))
    }
}

struct MapHandle {
    next: Box<dyn Handle>,
    mappings: Arc<Vec<Mapping>>,
    size: u64,
    real_size: u64,
}

impl MapHandle {
    /// The longest piece from `at` (before `end`) with one mapping: its length and where it is
    /// below. Fails when it lies past the end of the layer below.
    fn piece(&self, at: u64, end: u64) -> Result<(u64, u64)> {
        let i = self.mappings.partition_point(|m| m.end <= at);
        let (len, dest) = match self.mappings.get(i) {
            Some(m) if m.start <= at => (m.end.min(end) - at, m.dest + (at - m.start)),
            Some(m) => (m.start.min(end) - at, at),
            None => (end - at, at),
        };
        if dest.checked_add(len).is_none_or(|e| e > self.real_size) {
            return Err(Error::io(format!(
                "bytes {at}-{} map to {dest}-{}, past the end of the layer below ({} bytes)",
                at + len - 1,
                dest + len - 1,
                self.real_size
            )));
        }
        Ok((len, dest))
    }

    /// Calls `each(offset below, length, offset inside the request)` for each piece.
    fn for_pieces(&self, count: u64, offset: u64, mut each: impl FnMut(u64, u64, u64) -> Result<()>) -> Result<()> {
        let end = offset + count;
        let mut at = offset;
        while at < end {
            let (len, dest) = self.piece(at, end)?;
            each(dest, len, at - offset)?;
            at += len;
        }
        Ok(())
    }
}

impl Handle for MapHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let (len, dest) = self.piece(offset, offset + count)?;
        if len == count {
            return self.next.read(count, dest, flags, sink);
        }
        self.pread(sink.buffer()?, offset, flags)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.for_pieces(buf.len() as u64, offset, |dest, len, from| {
            self.next.pread(&mut buf[from as usize..(from + len) as usize], dest, flags)
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.for_pieces(buf.len() as u64, offset, |dest, len, from| {
            self.next.pwrite(&buf[from as usize..(from + len) as usize], dest, flags)
        })
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.for_pieces(count, offset, |dest, len, _| self.next.trim(len, dest, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.for_pieces(count, offset, |dest, len, _| self.next.zero(len, dest, flags))
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.for_pieces(count, offset, |dest, len, _| self.next.cache(len, dest, flags))
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.block_status(BASE_ALLOCATION, count, offset, flags, extents)
    }

    // Each piece is asked about below, and the answer moved back to the export's offsets.
    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let start = extents.next_offset().max(offset);
        let end = offset + count;
        let mut at = start;
        while at < end && !extents.is_full() {
            let (len, dest) = self.piece(at, end)?;
            let mut below = Extents::new(dest, dest + len);
            self.next.block_status(context, len, dest, flags, &mut below)?;
            for e in below.as_slice() {
                extents.add(e.offset - dest + at, e.length, e.flags)?;
            }
            if below.next_offset() < dest + len || flags.contains(Flags::REQ_ONE) {
                break;
            }
            at = extents.next_offset();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn first_mapping_wins_and_the_rest_is_identity() {
        let mut list = Vec::new();
        add_mapping(&mut list, parse_mapping("map", "100-199:1000").unwrap());
        add_mapping(&mut list, parse_mapping("map", "0-299:5000").unwrap());
        assert_eq!(
            list,
            [
                Mapping { start: 0, end: 100, dest: 5000 },
                Mapping { start: 100, end: 200, dest: 1000 },
                Mapping { start: 200, end: 300, dest: 5200 }
            ]
        );
        assert_eq!(parse_mapping("map", "0x10-0x1f:1k").unwrap(), Mapping { start: 16, end: 32, dest: 1024 });
        assert!(parse_mapping("map", "5-4:0").unwrap_err().message.starts_with("map=5-4:0: "));
        assert!(parse_mapping("map", "0-1").is_err());
    }

    #[test]
    fn swapping_two_sectors() {
        let disk = MemDisk::new(2048);
        disk.pwrite(&[1; 512], 0, Flags::NONE).unwrap();
        disk.pwrite(&[2; 512], 512, Flags::NONE).unwrap();
        disk.pwrite(&[3; 512], 1024, Flags::NONE).unwrap();
        let h = open_over(MapFilter::default(), &[("map", "0-511:512"), ("map", "512-1023:0")], &disk).unwrap();
        let mut buf = vec![0u8; 1536];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!((buf[0], buf[511], buf[512], buf[1023], buf[1024]), (2, 2, 1, 1, 3));
        h.pwrite(&[9; 2], 511, Flags::NONE).unwrap();
        let data = disk.data.lock().unwrap().clone();
        assert_eq!((data[1023], data[0]), (9, 9));
        let h = open_over(MapFilter::default(), &[("map", "0-511:1800"), ("map-size", "4096")], &disk).unwrap();
        assert_eq!(h.get_size().unwrap(), 4096);
        assert_eq!(h.pread(&mut buf[..300], 0, Flags::NONE).unwrap_err().errno, libc::EIO);
        assert_eq!(h.pread(&mut buf[..10], 3000, Flags::NONE).unwrap_err().errno, libc::EIO);
    }
}
