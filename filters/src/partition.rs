//! The `partition` filter: serves one partition of a partitioned disk, as `qemu-nbd -P` does
//! (nbdkit-partition-filter).
//!
//! Each connection reads the partition table of the layer below when it opens: GPT when the MBR
//! holds a protective entry (type 0xEE), otherwise MBR, where partitions 1 to 4 are the primary
//! ones and 5 onwards the logical ones, found by following the chain of extended boot records.
//! Sector numbers in the tables count `partition-sectorsize=` bytes (by default the minimum
//! block size of the layer below when it is 4096, else 512). The parsing works on sectors read
//! through a closure, so the tests can feed it tables directly; the serving is [`Window`]'s.

use std::sync::Arc;

use nbdforge_api::{
    parse_int, parse_size, Backend, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

use crate::window::Window;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("partition", "serve a single partition").help(
        "partition=<PART>              (required) The partition number (counting from 1).\n\
         partition-sectorsize=512|4k   Sector size of the partition table (default: from the plugin).",
    );
    Registration::filter(info, PartitionFilter::default)
}

/// The `partition` filter.
#[derive(Debug, Default)]
pub struct PartitionFilter {
    number: Option<u32>,
    sector_size: Option<u64>,
}

impl Layer for PartitionFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "partition" => {
                let n: u32 = parse_int(key, value)?;
                if n == 0 {
                    return Err(Error::invalid(format!("{key}={value}: partitions are counted from 1")));
                }
                self.number = Some(n);
            }
            "partition-sectorsize" => {
                let n = parse_size(key, value)?;
                if n != 512 && n != 4096 {
                    return Err(Error::invalid(format!("{key}={value}: the sector size must be 512 or 4096")));
                }
                self.sector_size = Some(n);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.number.is_none() {
            return Err(Error::invalid("the partition parameter is required (partition=N, counting from 1)"));
        }
        Ok(())
    }
}

impl Filter for PartitionFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let disk_size = below.get_size()?;
        let sector_size = match self.sector_size {
            Some(n) => n,
            None => match below.block_size()? {
                Some(b) if b.minimum == 4096 => 4096,
                _ => 512,
            },
        };
        let read_sector = |lba: u64| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; sector_size as usize];
            let at = lba
                .checked_mul(sector_size)
                .filter(|&at| at.checked_add(sector_size).is_some_and(|end| end <= disk_size));
            let at = at
                .ok_or_else(|| Error::invalid(format!("the partition table points outside the disk (sector {lba})")))?;
            below.pread(&mut buf, at, Flags::NONE)?;
            Ok(buf)
        };
        let number = self.number.unwrap_or(1);
        let table = Table { sector_size, disk_size };
        let (base, size) = table.find(number, read_sector)?;
        nbdforge_api::debug!("partition {number}: {size} bytes at offset {base}");
        Ok(Box::new(Window::new(below, base, size)))
    }
}

/// The shape of the disk the partition table describes.
struct Table {
    sector_size: u64,
    disk_size: u64,
}

/// One 16-byte MBR entry.
struct MbrEntry {
    kind: u8,
    start: u64,
    sectors: u64,
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn mbr_entry(sector: &[u8], i: usize) -> MbrEntry {
    let at = 0x1BE + 16 * i;
    MbrEntry { kind: sector[at + 4], start: le32(sector, at + 8), sectors: le32(sector, at + 12) }
}

/// Extended partitions hold the chain of logical ones (the types Linux treats so).
fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn not_found(number: u32, what: &str) -> Error {
    Error::invalid(format!("partition {number} not found: {what}"))
}

impl Table {
    /// The byte offset and length of partition `number`.
    fn find(&self, number: u32, read_sector: impl Fn(u64) -> Result<Vec<u8>>) -> Result<(u64, u64)> {
        let mbr = read_sector(0)?;
        if mbr[510] != 0x55 || mbr[511] != 0xAA {
            return Err(Error::invalid("the disk has no partition table (no MBR boot signature)"));
        }
        let (base, size) = if (0..4).any(|i| mbr_entry(&mbr, i).kind == 0xEE) {
            self.find_gpt(number, &read_sector)?
        } else if number <= 4 {
            let e = mbr_entry(&mbr, number as usize - 1);
            if e.kind == 0 || e.sectors == 0 || is_extended(e.kind) {
                return Err(not_found(number, "no such MBR primary partition"));
            }
            (e.start * self.sector_size, e.sectors * self.sector_size)
        } else {
            self.find_logical(number, &mbr, &read_sector)?
        };
        if base.checked_add(size).is_none_or(|end| end > self.disk_size) {
            return Err(Error::invalid(format!(
                "partition {number} ({size} bytes at offset {base}) goes beyond the end of the disk ({} bytes)",
                self.disk_size
            )));
        }
        Ok((base, size))
    }

    /// MBR logical partitions: the first entry of each EBR is a partition (relative to that EBR),
    /// the second links to the next EBR (relative to the extended partition).
    fn find_logical(
        &self,
        number: u32,
        mbr: &[u8],
        read_sector: &impl Fn(u64) -> Result<Vec<u8>>,
    ) -> Result<(u64, u64)> {
        let extended = (0..4)
            .map(|i| mbr_entry(mbr, i))
            .find(|e| e.sectors > 0 && is_extended(e.kind))
            .ok_or_else(|| not_found(number, "logical partition asked for, but the MBR has no extended partition"))?;
        let mut ebr = extended.start;
        let mut current = 5;
        loop {
            if ebr == 0 {
                return Err(Error::invalid("invalid EBR chain: an EBR points to the MBR"));
            }
            let sector = read_sector(ebr)?;
            if current == number {
                let e = mbr_entry(&sector, 0);
                let start = ebr + e.start;
                if e.start == 0 || e.sectors == 0 || start + e.sectors > extended.start + extended.sectors {
                    return Err(Error::invalid(format!(
                        "logical partition {number} lies outside its extended partition"
                    )));
                }
                return Ok((start * self.sector_size, e.sectors * self.sector_size));
            }
            let link = mbr_entry(&sector, 1);
            if link.start == 0 && link.sectors == 0 {
                return Err(not_found(number, &format!("the MBR has {} logical partitions", current - 4)));
            }
            let next = extended.start + link.start;
            // Accepting only forward links guarantees the walk ends.
            if next <= ebr {
                return Err(Error::invalid(format!("invalid EBR chain: EBR at sector {ebr} links back to {next}")));
            }
            ebr = next;
            current += 1;
        }
    }

    /// GPT: the header in sector 1 says where the entries are, how many and how large.
    fn find_gpt(&self, number: u32, read_sector: &impl Fn(u64) -> Result<Vec<u8>>) -> Result<(u64, u64)> {
        let header = read_sector(1)?;
        if &header[0..8] != b"EFI PART" {
            return Err(Error::invalid("protective MBR found, but no GPT header in sector 1"));
        }
        let entries_lba = le64(&header, 72);
        let count = le32(&header, 80);
        let entry_size = le32(&header, 84);
        if !(128..=self.sector_size).contains(&entry_size) || !self.sector_size.is_multiple_of(entry_size) {
            return Err(Error::invalid(format!("GPT header: unsupported partition entry size {entry_size}")));
        }
        if u64::from(number) > count {
            return Err(not_found(number, &format!("the GPT has {count} entries")));
        }
        let index = u64::from(number - 1);
        let per_sector = self.sector_size / entry_size;
        let sector = read_sector(entries_lba + index / per_sector)?;
        let at = ((index % per_sector) * entry_size) as usize;
        let entry = &sector[at..at + entry_size as usize];
        if entry[..16].iter().all(|&b| b == 0) {
            return Err(not_found(number, "the GPT entry is unused"));
        }
        let (first, last) = (le64(entry, 32), le64(entry, 40));
        if last < first {
            return Err(Error::invalid(format!("GPT entry {number}: last sector {last} before first {first}")));
        }
        let size = (last - first + 1).checked_mul(self.sector_size);
        let base = first.checked_mul(self.sector_size);
        match (base, size) {
            (Some(base), Some(size)) => Ok((base, size)),
            _ => Err(Error::invalid(format!("GPT entry {number}: sectors out of range"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTOR: usize = 512;

    /// A disk image of `sectors` sectors being laid out by a test.
    struct Image(Vec<u8>);

    impl Image {
        fn new(sectors: usize) -> Self {
            let mut v = vec![0u8; sectors * SECTOR];
            v[510] = 0x55;
            v[511] = 0xAA;
            Image(v)
        }
        fn mbr_entry(&mut self, sector: usize, i: usize, kind: u8, start: u32, sectors: u32) {
            let at = sector * SECTOR + 0x1BE + 16 * i;
            self.0[at + 4] = kind;
            self.0[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            self.0[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        }
        fn find(&self, number: u32) -> Result<(u64, u64)> {
            let table = Table { sector_size: SECTOR as u64, disk_size: self.0.len() as u64 };
            table.find(number, |lba| {
                let at = lba as usize * SECTOR;
                self.0.get(at..at + SECTOR).map(<[u8]>::to_vec).ok_or_else(|| Error::invalid("outside"))
            })
        }
    }

    #[test]
    fn mbr_primary_partitions() {
        let mut img = Image::new(100);
        img.mbr_entry(0, 0, 0x83, 2, 10);
        img.mbr_entry(0, 2, 0x83, 20, 30);
        assert_eq!(img.find(1).unwrap(), (1024, 5120));
        assert_eq!(img.find(3).unwrap(), (20 * 512, 30 * 512));
        assert!(img.find(2).unwrap_err().message.contains("partition 2 not found"));
        assert!(img.find(5).unwrap_err().message.contains("no extended partition"));
        img.mbr_entry(0, 3, 0x83, 90, 20);
        assert!(img.find(4).unwrap_err().message.contains("beyond the end"));
        img.0[510] = 0;
        assert!(img.find(1).unwrap_err().message.contains("no partition table"));
    }

    #[test]
    fn mbr_logical_partitions_follow_the_ebr_chain() {
        let mut img = Image::new(200);
        img.mbr_entry(0, 0, 0x0F, 50, 100); // extended: sectors 50..150
        img.mbr_entry(50, 0, 0x83, 2, 8); // logical 5 at 52..60
        img.mbr_entry(50, 1, 0x05, 20, 40); // next EBR at 70
        img.mbr_entry(70, 0, 0x83, 1, 9); // logical 6 at 71..80
        assert_eq!(img.find(5).unwrap(), (52 * 512, 8 * 512));
        assert_eq!(img.find(6).unwrap(), (71 * 512, 9 * 512));
        assert!(img.find(7).unwrap_err().message.contains("2 logical partitions"));
        img.mbr_entry(70, 1, 0x05, 10, 10); // links back to sector 60
        assert!(img.find(7).unwrap_err().message.contains("links back"));
        img.mbr_entry(70, 0, 0x83, 1, 200);
        assert!(img.find(6).unwrap_err().message.contains("outside its extended"));
    }

    #[test]
    fn gpt_partitions() {
        let mut img = Image::new(100);
        img.mbr_entry(0, 0, 0xEE, 1, 99);
        let h = SECTOR;
        img.0[h..h + 8].copy_from_slice(b"EFI PART");
        img.0[h + 72..h + 80].copy_from_slice(&2u64.to_le_bytes());
        img.0[h + 80..h + 84].copy_from_slice(&128u32.to_le_bytes());
        img.0[h + 84..h + 88].copy_from_slice(&128u32.to_le_bytes());
        // Entry 6 (index 5): the second sector of entries, second slot.
        let e = 3 * SECTOR + 128;
        img.0[e] = 0xAF;
        img.0[e + 32..e + 40].copy_from_slice(&40u64.to_le_bytes());
        img.0[e + 40..e + 48].copy_from_slice(&49u64.to_le_bytes());
        assert_eq!(img.find(6).unwrap(), (40 * 512, 10 * 512));
        assert!(img.find(1).unwrap_err().message.contains("unused"));
        assert!(img.find(129).unwrap_err().message.contains("128 entries"));
    }

    #[test]
    fn parameters() {
        let mut f = PartitionFilter::default();
        assert!(f.config_complete().unwrap_err().message.contains("partition parameter is required"));
        assert!(f.config("partition", "0").unwrap_err().message.starts_with("partition=0: "));
        assert!(f
            .config("partition-sectorsize", "1024")
            .unwrap_err()
            .message
            .starts_with("partition-sectorsize=1024: "));
        assert!(f.config("partition-sectorsize", "4k").unwrap());
        assert!(f.config("partition", "1").unwrap());
        f.config_complete().unwrap();
    }
}
