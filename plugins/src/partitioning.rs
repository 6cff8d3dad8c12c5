//! The `partitioning` plugin: a partitioned disk made from files, each file one partition in the
//! order given, behind an MBR or GPT partition table synthesized in memory (nbdkit's
//! nbdkit-partitioning-plugin(1)). Each partition starts at its `alignment=` and is padded to
//! whole sectors; `mbr-id=`, `type-guid=` and `alignment=` apply to the files after them. Reads
//! and writes inside a partition go to its file; the table and padding read as what they are and
//! take only writes of the same bytes. MBR with more than four files makes the fourth an extended
//! partition holding the rest as logical partitions, each behind its own EBR, as nbdkit does.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use nbdforge_api::{
    debug, parse_int, parse_size, realpath, unknown_parameter, Capabilities, Error, Flags, Handle, Layer, LayerInfo,
    OpenArgs, Plugin, ReadSink, Registration, Result, Support,
};
use nbdforge_storage::FileStorage;

use crate::virtual_disk::{boot_signature, mbr_entry, Content, Region, Regions, SECTOR_SIZE};

/// The largest and default partition alignment: 1 MiB (2048 sectors).
const MAX_ALIGNMENT: u64 = 2048 * SECTOR_SIZE;
/// nbdkit's estimate of the largest total file size an MBR disk holds: 2^32 sectors less room
/// for the padding between partitions.
const MAX_MBR_DISK_SIZE: u64 = u32::MAX as u64 * SECTOR_SIZE - 5 * MAX_ALIGNMENT;
const DEFAULT_MBR_ID: u8 = 0x83;
/// Linux filesystem data.
const DEFAULT_TYPE_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// A GPT partition table has room for at least this many entries, and grows by as many.
const GPT_MIN_ENTRIES: u64 = 128;
const GPT_ENTRY_SIZE: u64 = 128;
const GPT_HEADER_SIZE: usize = 96;
const MBR_EXTENDED_ID: u8 = 0x0f;
const MBR_PROTECTIVE_ID: u8 = 0xee;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableType {
    Mbr,
    Gpt,
}

/// One `file=`: the file and the settings in force when it was given.
#[derive(Debug)]
struct Partition {
    given: String,
    storage: Arc<FileStorage>,
    alignment: u64,
    mbr_id: u8,
    type_guid: [u8; 16],
    /// The GPT unique partition GUID: random bytes, as nbdkit makes them.
    unique_guid: [u8; 16],
}

/// The `partitioning` plugin.
#[derive(Debug)]
pub struct PartitioningPlugin {
    partitions: Vec<Partition>,
    table_type: Option<TableType>,
    alignment: u64,
    mbr_id: u8,
    type_guid: [u8; 16],
    debug_regions: bool,
    disk: Arc<Regions>,
}

impl Default for PartitioningPlugin {
    fn default() -> Self {
        PartitioningPlugin {
            partitions: Vec::new(),
            table_type: None,
            alignment: MAX_ALIGNMENT,
            mbr_id: DEFAULT_MBR_ID,
            type_guid: parse_guid(DEFAULT_TYPE_GUID).expect("the default GUID parses"),
            debug_regions: false,
            disk: Arc::default(),
        }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("partitioning", "a partitioned disk made from files, one partition each")
        .help(
            "[file=]<FILENAME>  (required) File(s) containing partitions; repeat file= for each.\n\
             partition-type=mbr|gpt      Partition table type.\n\
             alignment=<N>               Alignment of the following partitions (default 1M).\n\
             mbr-id=0xN|default          MBR type byte of the following partitions.\n\
             type-guid=GUID|default      GPT type GUID of the following partitions.",
        )
        .magic("file");
    Registration::plugin(info, PartitioningPlugin::default)
}

impl Layer for PartitioningPlugin {
    /// `-D partitioning.regions=1` logs the layout of the disk, as in nbdkit.
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        match flag {
            "regions" => self.debug_regions = value != 0,
            _ => return false,
        }
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "file" => self.add_file(value)?,
            "partition-type" => {
                self.table_type = Some(match value.to_ascii_lowercase().as_str() {
                    "mbr" | "dos" => TableType::Mbr,
                    "gpt" => TableType::Gpt,
                    _ => return Err(Error::invalid(format!("{key}={value}: unknown partition type (mbr or gpt)"))),
                })
            }
            "alignment" => {
                let n = parse_size(key, value)?;
                if !(SECTOR_SIZE..=MAX_ALIGNMENT).contains(&n) || !n.is_power_of_two() {
                    return Err(Error::invalid(format!(
                        "{key}={value}: the alignment must be a power of two from {SECTOR_SIZE} to {MAX_ALIGNMENT}"
                    )));
                }
                self.alignment = n;
            }
            "mbr-id" if value.eq_ignore_ascii_case("default") => self.mbr_id = DEFAULT_MBR_ID,
            "mbr-id" => self.mbr_id = parse_int::<u8>(key, value)?,
            "type-guid" => {
                let guid = if value.eq_ignore_ascii_case("default") { DEFAULT_TYPE_GUID } else { value };
                self.type_guid = parse_guid(guid).ok_or_else(|| {
                    Error::invalid(format!("{key}={value}: not a GUID (XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)"))
                })?;
            }
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.partitions.is_empty() {
            return Err(Error::invalid("at least one file=<FILENAME> parameter is required"));
        }
        let total: u64 = self.partitions.iter().map(|p| p.storage.size()).sum();
        let needs_gpt = total > MAX_MBR_DISK_SIZE;
        match self.table_type {
            None => {
                let gpt = needs_gpt || self.partitions.len() > 4;
                self.table_type = Some(if gpt { TableType::Gpt } else { TableType::Mbr });
            }
            Some(TableType::Mbr) if needs_gpt => {
                return Err(Error::invalid(format!(
                    "partition-type=mbr: an MBR disk holds about 2 TB, but the {} file(s) add up to {total} bytes \
                     (more than {MAX_MBR_DISK_SIZE}); try partition-type=gpt",
                    self.partitions.len()
                )))
            }
            Some(_) => {}
        }
        Ok(())
    }
}

impl PartitioningPlugin {
    /// Opens a `file=` now, as nbdkit does: a missing or empty file is a configuration error.
    fn add_file(&mut self, value: &str) -> Result<()> {
        let path: PathBuf = realpath("file", value)?;
        let storage = FileStorage::open(&path).map_err(|e| Error::new(e.errno(), format!("file={value}: {e}")))?;
        if storage.size() == 0 {
            return Err(Error::invalid(format!("file={value}: zero length partitions are not allowed")));
        }
        self.partitions.push(Partition {
            given: value.to_string(),
            storage: Arc::new(storage),
            alignment: self.alignment,
            mbr_id: self.mbr_id,
            type_guid: self.type_guid,
            unique_guid: random_guid()?,
        });
        Ok(())
    }
}

impl Plugin for PartitioningPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let disk = match self.table_type {
            Some(TableType::Gpt) => gpt_disk(&self.partitions)?,
            _ => mbr_disk(&self.partitions)?,
        };
        if self.debug_regions {
            for (i, r) in disk.list().iter().enumerate() {
                let what = match &r.content {
                    Content::Source(n) => self.partitions[*n].given.as_str(),
                    Content::Bytes(_) => "data",
                    Content::Zero => "zero",
                };
                debug!("region[{i}]: {:x}-{:x} type={what}", r.start, r.end() - 1);
            }
        }
        self.disk = Arc::new(disk);
        Ok(())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(PartitioningHandle {
            disk: self.disk.clone(),
            files: self.partitions.iter().map(|p| (p.given.clone(), p.storage.clone())).collect(),
            writable: !args.readonly && self.partitions.iter().all(|p| p.storage.is_writable()),
        }))
    }
}

/// A connection: the shared layout and the files behind it.
struct PartitioningHandle {
    disk: Arc<Regions>,
    files: Vec<(String, Arc<FileStorage>)>,
    writable: bool,
}

impl PartitioningHandle {
    fn error(&self, n: usize, e: nbdforge_storage::Error) -> Error {
        Error::new(e.errno(), format!("partitioning: {}: {e}", self.files[n].0))
    }
}

impl Handle for PartitioningHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.disk.size())
    }

    /// nbdkit's set: writes and flush, zeroing and FUA emulated, one view for all connections.
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: self.writable,
            flush: true,
            zero: Support::Emulate,
            fua: Support::Emulate,
            multi_conn: true,
            cache: Support::Emulate,
            ..Capabilities::READ_ONLY
        })
    }

    /// A read inside one partition is offered to the server as that file, to be sent with
    /// `sendfile`.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if let Some(Region { start, len, content: Content::Source(n) }) = self.disk.region_at(offset) {
            let (within, storage) = (offset - start, &self.files[*n].1);
            if within + count <= *len && storage.can_sendfile(within, count) {
                return sink.file(storage.as_fd(), within, &storage.holes(within, count));
            }
        }
        self.pread(sink.buffer()?, offset, flags)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.disk.read(buf, offset, |n, out, at| self.files[n].1.read_at(out, at).map_err(|e| self.error(n, e)))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.disk.write(buf, offset, |n, data, at| self.files[n].1.write_at(data, at).map_err(|e| self.error(n, e)))
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        for n in 0..self.files.len() {
            self.files[n].1.sync_data().map_err(|e| self.error(n, e))?;
        }
        Ok(())
    }
}

/// Lays out the partitions after `start`: for partition N, `before(regions, N)` runs first (an
/// EBR goes there), then padding to its alignment, the file, and padding to a whole sector.
/// Returns each file's region index.
fn lay_out(regions: &mut Regions, partitions: &[Partition], mut before: impl FnMut(&mut Regions, usize)) -> Vec<usize> {
    let mut indexes = Vec::with_capacity(partitions.len());
    for (n, p) in partitions.iter().enumerate() {
        before(regions, n);
        regions.pad_to(p.alignment);
        indexes.push(regions.push(p.storage.size(), Content::Source(n)));
        regions.pad_to(SECTOR_SIZE);
    }
    indexes
}

/// A region's first sector and its length in sectors (rounded up), as an MBR entry holds them.
fn mbr_sectors(start: u64, len: u64) -> Result<(u32, u32)> {
    let first = u32::try_from(start / SECTOR_SIZE);
    let count = u32::try_from(len.div_ceil(SECTOR_SIZE));
    match (first, count) {
        (Ok(first), Ok(count)) => Ok((first, count)),
        _ => Err(Error::invalid(format!(
            "partition-type=mbr: a partition at byte {start} is beyond what an MBR can address; \
             try partition-type=gpt"
        ))),
    }
}

/// An MBR disk: the MBR, then the partitions; with more than four, the fourth MBR entry is an
/// extended partition from the first EBR to the end of the disk, and each file from the fourth
/// on is a logical partition preceded by its EBR. Only the first partition is marked bootable.
fn mbr_disk(partitions: &[Partition]) -> Result<Regions> {
    let mut disk = Regions::default();
    let mbr = disk.push(SECTOR_SIZE, Content::Bytes(vec![0; SECTOR_SIZE as usize]));
    let logical = partitions.len() > 4;
    let mut ebrs = Vec::new();
    let files = lay_out(&mut disk, partitions, |disk, n| {
        if logical && n >= 3 {
            ebrs.push(disk.push(SECTOR_SIZE, Content::Bytes(vec![0; SECTOR_SIZE as usize])));
        }
    });
    let region = |i: usize| disk.list()[i].clone();
    let mut table = vec![0u8; SECTOR_SIZE as usize];
    let primaries = if logical { 3 } else { partitions.len() };
    for n in 0..primaries {
        let r = region(files[n]);
        let (first, count) = mbr_sectors(r.start, r.len)?;
        mbr_entry(&mut table[0x1be + 16 * n..], n == 0, partitions[n].mbr_id, first, count);
    }
    let mut ebr_tables = Vec::new();
    if logical {
        let extended = region(ebrs[0]).start;
        let (first, count) = mbr_sectors(extended, disk.size() - extended)?;
        mbr_entry(&mut table[0x1ee..], false, MBR_EXTENDED_ID, first, count);
        for (k, &ebr) in ebrs.iter().enumerate() {
            let n = k + 3;
            let mut sector = vec![0u8; SECTOR_SIZE as usize];
            let (here, file) = (region(ebr), region(files[n]));
            // The logical partition, from this EBR.
            let (first, count) = mbr_sectors(file.start - here.start, file.len)?;
            mbr_entry(&mut sector[0x1be..], false, partitions[n].mbr_id, first, count);
            // The next EBR, from the start of the extended partition, and its partition's extent.
            if let Some(&next) = ebrs.get(k + 1) {
                let (next_ebr, next_file) = (region(next), region(files[n + 1]));
                let (first, count) = mbr_sectors(next_ebr.start - extended, next_file.end() - next_ebr.start)?;
                mbr_entry(&mut sector[0x1ce..], false, MBR_EXTENDED_ID, first, count);
            }
            boot_signature(&mut sector);
            ebr_tables.push((ebr, sector));
        }
    }
    boot_signature(&mut table);
    disk.bytes_mut(mbr).copy_from_slice(&table);
    for (ebr, sector) in ebr_tables {
        disk.bytes_mut(ebr).copy_from_slice(&sector);
    }
    Ok(disk)
}

/// A GPT disk: protective MBR, header and entry array at the start, the partitions, and the
/// backup array and header at the end. The disk GUID is left zero and the first partition has
/// the legacy-BIOS-bootable attribute, as in nbdkit.
fn gpt_disk(partitions: &[Partition]) -> Result<Regions> {
    let entries = (partitions.len() as u64).div_ceil(GPT_MIN_ENTRIES) * GPT_MIN_ENTRIES;
    let array_sectors = entries * GPT_ENTRY_SIZE / SECTOR_SIZE;
    let mut disk = Regions::default();
    let primary_len = (2 + array_sectors) * SECTOR_SIZE;
    let primary = disk.push(primary_len, Content::Bytes(vec![0; primary_len as usize]));
    let files = lay_out(&mut disk, partitions, |_, _| {});
    let secondary_len = (array_sectors + 1) * SECTOR_SIZE;
    let secondary = disk.push(secondary_len, Content::Bytes(vec![0; secondary_len as usize]));
    let sectors = disk.size() / SECTOR_SIZE;

    let mut array = vec![0u8; (entries * GPT_ENTRY_SIZE) as usize];
    for (n, (p, &i)) in partitions.iter().zip(&files).enumerate() {
        let r = &disk.list()[i];
        let e = &mut array[n * GPT_ENTRY_SIZE as usize..][..GPT_ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid);
        e[16..32].copy_from_slice(&p.unique_guid);
        e[32..40].copy_from_slice(&(r.start / SECTOR_SIZE).to_le_bytes());
        e[40..48].copy_from_slice(&((r.end() - 1) / SECTOR_SIZE).to_le_bytes());
        e[48..56].copy_from_slice(&(if n == 0 { 4u64 } else { 0 }).to_le_bytes());
        // The name is the file name as given, when it is short ASCII (nbdkit's rule).
        if p.given.len() < 36 && p.given.is_ascii() {
            for (k, c) in p.given.bytes().enumerate() {
                e[56 + 2 * k] = c;
            }
        }
    }
    let array_crc = crc32(&array);
    let header = |current: u64, backup: u64, array_lba: u64| {
        let mut h = vec![0u8; SECTOR_SIZE as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&[0, 0, 1, 0]);
        // 96, not the 92 bytes of fields: nbdkit counts its C struct's padding, and a header
        // covered by its CRC may be any size from 92 up.
        h[12..16].copy_from_slice(&(GPT_HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - array_sectors - 2).to_le_bytes());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(entries as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..GPT_HEADER_SIZE]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    let bytes = disk.bytes_mut(primary);
    let protective_sectors = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    mbr_entry(&mut bytes[0x1be..], false, MBR_PROTECTIVE_ID, 1, protective_sectors);
    boot_signature(bytes);
    bytes[512..1024].copy_from_slice(&header(1, sectors - 1, 2));
    bytes[1024..].copy_from_slice(&array);
    let bytes = disk.bytes_mut(secondary);
    let split = array.len();
    bytes[..split].copy_from_slice(&array);
    bytes[split..].copy_from_slice(&header(sectors - 1, 1, sectors - array_sectors - 1));
    Ok(disk)
}

/// A GUID as GPT stores it: the first three groups little-endian, the last two as written.
/// Accepts `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, optionally in braces.
fn parse_guid(s: &str) -> Option<[u8; 16]> {
    let s = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).unwrap_or(s);
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    bytes[0..4].reverse();
    bytes[4..6].reverse();
    bytes[6..8].reverse();
    Some(bytes)
}

/// 16 random bytes for a unique partition GUID.
fn random_guid() -> Result<[u8; 16]> {
    use std::io::Read;
    let mut guid = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut guid))
        .map_err(|e| Error::from_io("/dev/urandom", &e))?;
    Ok(guid)
}

/// The CRC-32 of GPT headers and entry arrays (IEEE 802.3, reflected, as zlib computes it).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_parse_in_gpt_byte_order() {
        let g = parse_guid(DEFAULT_TYPE_GUID).unwrap();
        assert_eq!(g[..4], [0xaf, 0x3d, 0xc6, 0x0f]);
        assert_eq!(g[8..], [0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4]);
        assert_eq!(parse_guid("{0fc63daf-8483-4772-8e79-3d69d8477de4}"), Some(g));
        assert!(parse_guid("0FC63DAF-8483-4772-8E79-3D69D8477DE").is_none());
        assert!(parse_guid("0FC63DAF+8483-4772-8E79-3D69D8477DE4").is_none());
        assert!(parse_guid("0FC63DAG-8483-4772-8E79-3D69D8477DE4").is_none());
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn bad_parameters_name_the_value() {
        let mut p = PartitioningPlugin::default();
        for (key, value) in [
            ("partition-type", "zip"),
            ("alignment", "256"),
            ("alignment", "1536"),
            ("alignment", "2M"),
            ("mbr-id", "0x100"),
            ("type-guid", "xyz"),
            ("file", "/nonexistent/part"),
        ] {
            let e = p.config(key, value).unwrap_err();
            assert!(e.message.contains(&format!("{key}={value}")), "{key}={value}: {}", e.message);
        }
        assert!(p.config_complete().unwrap_err().message.contains("file="));
    }
}
