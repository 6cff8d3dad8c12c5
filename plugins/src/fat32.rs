//! A FAT32 file system laid out over a host directory without copying it, for the `floppy`
//! plugin: the boot sector, FSInfo sector and directory tables are made in memory, the file
//! allocation table is computed on demand from the list of cluster chains, and the files' data
//! stays in the host files, each file one contiguous chain of clusters. The result is a
//! [`Regions`] whose [`Content::Source`] 0 is the FAT and `1 + i` is host file `i`.
//!
//! Layout in the partition: 32 reserved sectors (boot sector, FSInfo, their backups at 6 and 7),
//! two copies of the FAT, then the data clusters: the directories (the root in cluster 2), the
//! files, and free clusters. A FAT32 volume must have at least 65,525 clusters or readers take it
//! for FAT16 (mtools does), so a small volume is given free clusters up to 65,536.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nbdforge_api::{Error, Result};

use crate::virtual_disk::{boot_signature, Content, Regions, SECTOR_SIZE};

const RESERVED_SECTORS: u64 = 32;
const FSINFO_SECTOR: usize = 1;
const BACKUP_BOOT_SECTOR: usize = 6;
const MIN_CLUSTERS: u64 = 65_536;
/// The largest cluster count FAT32's 28-bit entries allow (0x0FFFFFF7 and up are reserved).
const MAX_CLUSTERS: u64 = 0x0fff_fff5 - 2;
const END_OF_CHAIN: u32 = 0x0fff_ffff;
const ENTRY_SIZE: usize = 32;
/// A directory may hold at most 65,536 entries (2 MiB).
const MAX_DIR_ENTRIES: usize = 65_536;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_LONG_NAME: u8 = 0x0f;
/// The volume ID nbdkit's floppy plugin writes.
const VOLUME_ID: u32 = 0x0102_0304;

/// A regular file to serve: where it is on the host, its size and time when scanned.
#[derive(Debug, Clone)]
pub(crate) struct HostFile {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    mtime: i64,
}

/// One name in a directory.
#[derive(Debug, Clone)]
enum Child {
    Dir(usize),
    File(usize),
}

/// A directory of the tree; `dirs[0]` is the root.
#[derive(Debug, Default)]
struct Dir {
    mtime: i64,
    parent: usize,
    children: Vec<(String, Child)>,
}

/// The directory tree as scanned from the host.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    dirs: Vec<Dir>,
    pub(crate) files: Vec<HostFile>,
}

impl Tree {
    /// Reads `root` and everything under it: directories and regular files, in name order;
    /// symbolic links, devices, sockets and FIFOs are left out, as in nbdkit.
    pub(crate) fn scan(root: &Path) -> Result<Tree> {
        let mut tree = Tree::default();
        let meta = std::fs::metadata(root).map_err(|e| Error::from_io(root.display(), &e))?;
        tree.dirs.push(Dir { mtime: meta.mtime(), parent: 0, children: Vec::new() });
        tree.visit(root, 0)?;
        Ok(tree)
    }

    fn visit(&mut self, path: &Path, index: usize) -> Result<()> {
        let read = std::fs::read_dir(path).map_err(|e| Error::from_io(path.display(), &e))?;
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| Error::from_io(path.display(), &e))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let host = path.join(&name);
            let meta = std::fs::symlink_metadata(&host).map_err(|e| Error::from_io(host.display(), &e))?;
            let name = name.to_string_lossy().into_owned();
            if meta.is_dir() {
                let sub = self.dirs.len();
                self.dirs.push(Dir { mtime: meta.mtime(), parent: index, children: Vec::new() });
                self.dirs[index].children.push((name, Child::Dir(sub)));
                self.visit(&host, sub)?;
            } else if meta.is_file() {
                if meta.len() >= u32::MAX as u64 {
                    return Err(Error::invalid(format!(
                        "{}: file is larger than FAT32 allows ({} bytes, the most is 4 GiB - 2)",
                        host.display(),
                        meta.len()
                    )));
                }
                self.dirs[index].children.push((name, Child::File(self.files.len())));
                self.files.push(HostFile { path: host, size: meta.len(), mtime: meta.mtime() });
            }
        }
        Ok(())
    }
}

/// The file system: its regions (starting at the partition's first byte) and what computing
/// the FAT needs.
#[derive(Debug)]
pub(crate) struct Fat32 {
    pub(crate) regions: Regions,
    /// The last cluster of every chain, in order; chains are contiguous and fill the clusters
    /// from 2 up to `first_free`.
    chain_ends: Vec<u32>,
    first_free: u32,
    fat_bytes: u64,
}

impl Fat32 {
    /// A file system with nothing in it, before the real one is built.
    pub(crate) fn empty() -> Fat32 {
        Fat32 { regions: Regions::default(), chain_ends: Vec::new(), first_free: 2, fat_bytes: 0 }
    }

    /// Lays out `tree` under `label`. With `sectors`, the file system fills exactly that many
    /// sectors (more clusters are free space); without, it is as small as a valid FAT32 allows.
    pub(crate) fn build(tree: &Tree, label: &str, sectors: Option<u64>) -> Result<Fat32> {
        let names = tree.dirs.iter().map(short_names).collect::<Result<Vec<_>>>()?;
        let entries: Vec<usize> = tree
            .dirs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                // The root holds the label; the others "." and "..".
                let own = if i == 0 { usize::from(!label.is_empty()) } else { 2 };
                own + names[i].iter().map(|n| n.lfn.len() + 1).sum::<usize>()
            })
            .collect();
        if let Some(i) = entries.iter().position(|&n| n > MAX_DIR_ENTRIES) {
            return Err(Error::invalid(format!(
                "directory {} has more names than a FAT directory holds ({MAX_DIR_ENTRIES} entries)",
                tree.path_of(i)
            )));
        }

        let clusters_for = |cluster: u64| -> u64 {
            entries.iter().map(|&n| (n as u64 * ENTRY_SIZE as u64).div_ceil(cluster).max(1)).sum::<u64>()
                + tree.files.iter().map(|f| f.size.div_ceil(cluster)).sum::<u64>()
        };
        let data_bytes = clusters_for(SECTOR_SIZE) * SECTOR_SIZE;
        let (sectors_per_cluster, clusters) = match sectors {
            None => {
                let spc = cluster_sectors(data_bytes);
                let needed = clusters_for(spc * SECTOR_SIZE);
                (spc, needed.max(MIN_CLUSTERS))
            }
            Some(total) => fit(total, &clusters_for)?,
        };
        if clusters > MAX_CLUSTERS {
            return Err(Error::invalid(format!("{data_bytes} bytes of files are too many for FAT32")));
        }
        let cluster_bytes = sectors_per_cluster * SECTOR_SIZE;
        let fat_sectors = fat_sectors(clusters);
        let fs_sectors = sectors.unwrap_or(RESERVED_SECTORS + 2 * fat_sectors + clusters * sectors_per_cluster);
        let fs_sectors = u32::try_from(fs_sectors)
            .map_err(|_| Error::invalid(format!("a file system of {fs_sectors} sectors is too large for FAT32")))?;

        // Clusters: the directories in order (the root gets 2), then the files.
        let mut next = 2u64;
        let mut chain_ends = Vec::new();
        let mut take = |bytes: u64| -> u32 {
            let n = bytes.div_ceil(cluster_bytes);
            if n == 0 {
                return 0;
            }
            let first = next;
            next += n;
            chain_ends.push((next - 1) as u32);
            first as u32
        };
        let dir_clusters: Vec<u32> = entries.iter().map(|&n| take((n as u64 * ENTRY_SIZE as u64).max(1))).collect();
        let file_clusters: Vec<u32> = tree.files.iter().map(|f| take(f.size)).collect();
        let first_free = next as u32;
        let free = clusters + 2 - next;

        let mut regions = Regions::default();
        let reserved = regions.push(RESERVED_SECTORS * SECTOR_SIZE, Content::Bytes(vec![0; 32 * 512]));
        regions.push(fat_sectors * SECTOR_SIZE, Content::Source(0));
        regions.push(fat_sectors * SECTOR_SIZE, Content::Source(0));
        for (i, dir) in tree.dirs.iter().enumerate() {
            let mut table = Vec::with_capacity(entries[i] * ENTRY_SIZE);
            if i == 0 {
                if !label.is_empty() {
                    table.extend(entry(&pad_label(label), ATTR_VOLUME_ID, 0, 0, dir.mtime));
                }
            } else {
                let parent = if dir.parent == 0 { 0 } else { dir_clusters[dir.parent] };
                table.extend(entry(b".          ", ATTR_DIRECTORY, dir_clusters[i], 0, dir.mtime));
                table.extend(entry(b"..         ", ATTR_DIRECTORY, parent, 0, dir.mtime));
            }
            for ((_, child), name) in dir.children.iter().zip(&names[i]) {
                for part in &name.lfn {
                    table.extend_from_slice(part);
                }
                table.extend(match *child {
                    Child::Dir(d) => entry(&name.short, ATTR_DIRECTORY, dir_clusters[d], 0, tree.dirs[d].mtime),
                    Child::File(f) => {
                        let file = &tree.files[f];
                        entry(&name.short, ATTR_ARCHIVE, file_clusters[f], file.size as u32, file.mtime)
                    }
                });
            }
            let len = (table.len() as u64).max(1).div_ceil(cluster_bytes) * cluster_bytes;
            table.resize(len as usize, 0);
            regions.push(len, Content::Bytes(table));
        }
        for (i, file) in tree.files.iter().enumerate() {
            regions.push(file.size, Content::Source(1 + i));
            regions.push(file.size.div_ceil(cluster_bytes) * cluster_bytes - file.size, Content::Zero);
        }
        regions.push(free * cluster_bytes, Content::Zero);
        regions.push(fs_sectors as u64 * SECTOR_SIZE - regions.size(), Content::Zero);

        let boot = boot_sector(label, sectors_per_cluster as u8, fs_sectors, fat_sectors as u32);
        let mut fsinfo = vec![0u8; 512];
        fsinfo[0..4].copy_from_slice(b"RRaA");
        fsinfo[484..488].copy_from_slice(b"rrAa");
        fsinfo[488..492].copy_from_slice(&(free as u32).to_le_bytes());
        let hint = if free > 0 { first_free } else { u32::MAX };
        fsinfo[492..496].copy_from_slice(&hint.to_le_bytes());
        boot_signature(&mut fsinfo);
        let bytes = regions.bytes_mut(reserved);
        for at in [0, BACKUP_BOOT_SECTOR] {
            bytes[at * 512..at * 512 + 512].copy_from_slice(&boot);
            bytes[(at + FSINFO_SECTOR) * 512..(at + FSINFO_SECTOR) * 512 + 512].copy_from_slice(&fsinfo);
        }
        Ok(Fat32 { regions, chain_ends, first_free, fat_bytes: fat_sectors * SECTOR_SIZE })
    }

    /// Fills `buf` with the FAT's bytes from `offset`: each 32-bit entry says the next cluster
    /// of its chain, end of chain, or free.
    pub(crate) fn read_fat(&self, buf: &mut [u8], offset: u64) {
        debug_assert!(offset + buf.len() as u64 <= self.fat_bytes);
        let first = offset / 4;
        let last = (offset + buf.len() as u64).div_ceil(4);
        for index in first..last {
            let value = self.fat_entry(index).to_le_bytes();
            for (k, byte) in value.iter().enumerate() {
                let at = index * 4 + k as u64;
                if at >= offset && at < offset + buf.len() as u64 {
                    buf[(at - offset) as usize] = *byte;
                }
            }
        }
    }

    fn fat_entry(&self, cluster: u64) -> u32 {
        match cluster {
            0 => 0x0fff_fff8, // the media byte, 0xF8 (a fixed disk)
            1 => END_OF_CHAIN,
            c if c >= self.first_free as u64 => 0,
            c if self.chain_ends.binary_search(&(c as u32)).is_ok() => END_OF_CHAIN,
            c => c as u32 + 1,
        }
    }
}

impl Tree {
    /// A directory's path from the root, for messages.
    fn path_of(&self, index: usize) -> String {
        let mut parts = Vec::new();
        let mut at = index;
        while at != 0 {
            let parent = &self.dirs[self.dirs[at].parent];
            if let Some((name, _)) = parent.children.iter().find(|(_, c)| matches!(c, Child::Dir(d) if *d == at)) {
                parts.push(name.clone());
            }
            at = self.dirs[at].parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

/// The cluster size for this much data: Microsoft's table for FAT32 (512 bytes up to 260 MB,
/// 4 KiB up to 8 GB, 8 KiB to 16 GB, 16 KiB to 32 GB, 32 KiB beyond), in sectors.
fn cluster_sectors(bytes: u64) -> u64 {
    const MB: u64 = 1_000_000;
    match bytes {
        b if b <= 260 * MB => 1,
        b if b <= 8_000 * MB => 8,
        b if b <= 16_000 * MB => 16,
        b if b <= 32_000 * MB => 32,
        _ => 64,
    }
}

/// Sectors of one FAT for `clusters` data clusters (and the two reserved entries).
fn fat_sectors(clusters: u64) -> u64 {
    ((clusters + 2) * 4).div_ceil(SECTOR_SIZE)
}

/// For a file system of `total` sectors: the cluster size (the table's, smaller when that leaves
/// too few clusters for FAT32) and how many clusters fit; an error when the files do not.
fn fit(total: u64, clusters_for: &dyn Fn(u64) -> u64) -> Result<(u64, u64)> {
    let mut spc = cluster_sectors(total * SECTOR_SIZE);
    loop {
        // The most clusters that fit with their two FATs after the reserved sectors.
        // Two FATs take 1/64 sector per cluster: C * (spc + 1/64) + 2/64 <= room, then the
        // rounding of the FAT to whole sectors checked exactly.
        let room = total.saturating_sub(RESERVED_SECTORS);
        let mut clusters = (64 * room).saturating_sub(2) / (64 * spc + 1);
        while clusters > 0 && RESERVED_SECTORS + 2 * fat_sectors(clusters) + clusters * spc > total {
            clusters -= 1;
        }
        let clusters = clusters.min(MAX_CLUSTERS);
        let needed = clusters_for(spc * SECTOR_SIZE);
        if clusters >= MIN_CLUSTERS && clusters >= needed || spc == 1 {
            if clusters < needed {
                return Err(Error::invalid(format!(
                    "the files need {needed} clusters of {} bytes, but only {clusters} fit",
                    spc * SECTOR_SIZE
                )));
            }
            return Ok((spc, clusters));
        }
        spc /= 2;
    }
}

/// The boot sector (BIOS parameter block) of the volume.
fn boot_sector(label: &str, sectors_per_cluster: u8, sectors: u32, fat_sectors: u32) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = sectors_per_cluster;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = 2; // FATs
    b[21] = 0xf8; // media: fixed disk
    b[24..26].copy_from_slice(&63u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&255u16.to_le_bytes()); // heads
    b[28..32].copy_from_slice(&2048u32.to_le_bytes()); // hidden sectors: the partition's start
    b[32..36].copy_from_slice(&sectors.to_le_bytes());
    b[36..40].copy_from_slice(&fat_sectors.to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&(FSINFO_SECTOR as u16).to_le_bytes());
    b[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
    b[64] = 0x80; // drive number
    b[66] = 0x29; // extended boot signature: the next three fields are valid
    b[67..71].copy_from_slice(&VOLUME_ID.to_le_bytes());
    b[71..82].copy_from_slice(&if label.is_empty() { *b"NO NAME    " } else { pad_label(label) });
    b[82..90].copy_from_slice(b"FAT32   ");
    boot_signature(&mut b);
    b
}

fn pad_label(label: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    out
}

/// A 32-byte short directory entry.
fn entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, mtime: i64) -> [u8; ENTRY_SIZE] {
    let mut e = [0u8; ENTRY_SIZE];
    let (date, time) = fat_time(mtime);
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// A time in seconds since 1970 as FAT's date and time words (UTC, 2-second steps), clamped to
/// FAT's years 1980 to 2107.
fn fat_time(secs: i64) -> (u16, u16) {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    match year {
        y if y < 1980 => (1 << 5 | 1, 0),
        y if y > 2107 => ((127 << 9) | (12 << 5) | 31, (23 << 11) | (59 << 5) | 29),
        y => (
            (((y - 1980) << 9) | (month << 5) | day) as u16,
            (((rest / 3600) << 11) | ((rest / 60 % 60) << 5) | (rest % 60 / 2)) as u16,
        ),
    }
}

/// A child's names on disk: its 8.3 name and the long-name entries in front of it.
#[derive(Debug)]
struct Names {
    short: [u8; 11],
    lfn: Vec<[u8; ENTRY_SIZE]>,
}

/// Characters a short name may hold besides letters and digits.
const SHORT_EXTRA: &[u8] = b"!#$%&'()-@^_`{}~";

fn short_char(c: char) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    (c.is_ascii_uppercase() || c.is_ascii_digit() || (c.is_ascii() && SHORT_EXTRA.contains(&(c as u8))))
        .then_some(c as u8)
}

/// `name` as an exact 8.3 name when it is one (upper case, valid characters, 1-8 + 0-3).
fn exact_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let valid =
        |s: &str, max: usize| s.len() <= max && s.chars().all(|c| !c.is_ascii_lowercase() && short_char(c).is_some());
    if base.is_empty() || !valid(base, 8) || !valid(ext, 3) || (name.ends_with('.')) {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(out)
}

/// The names of every child of `dir`: an exact 8.3 name alone where the name is one, else a
/// long name and a unique generated `BASIS~N.EXT`.
fn short_names(dir: &Dir) -> Result<Vec<Names>> {
    let mut used: std::collections::HashSet<[u8; 11]> =
        dir.children.iter().filter_map(|(name, _)| exact_short(name)).collect();
    // Long names are unique regardless of case, as FAT looks them up.
    let mut long_used: std::collections::HashSet<String> =
        dir.children.iter().filter(|(name, _)| exact_short(name).is_some()).map(|(n, _)| n.to_lowercase()).collect();
    let mut out = Vec::with_capacity(dir.children.len());
    for (name, _) in &dir.children {
        if let Some(short) = exact_short(name) {
            out.push(Names { short, lfn: Vec::new() });
            continue;
        }
        let (stem, ext) = match name.rfind('.') {
            Some(dot) if dot > 0 => (&name[..dot], &name[dot + 1..]),
            _ => (name.as_str(), ""),
        };
        let clean = |s: &str| -> Vec<u8> {
            s.chars().filter(|&c| c != ' ' && c != '.').map(|c| short_char(c).unwrap_or(b'_')).collect()
        };
        let mut basis = clean(stem);
        if basis.is_empty() {
            basis.push(b'_');
        }
        let ext = clean(ext);
        let mut short = None;
        for n in 1..1_000_000u32 {
            let tail = format!("~{n}");
            let mut candidate = [b' '; 11];
            let keep = basis.len().min(8 - tail.len());
            candidate[..keep].copy_from_slice(&basis[..keep]);
            candidate[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
            candidate[8..8 + ext.len().min(3)].copy_from_slice(&ext[..ext.len().min(3)]);
            if used.insert(candidate) {
                short = Some(candidate);
                break;
            }
        }
        let short = short.ok_or_else(|| Error::invalid(format!("{name}: no free short name")))?;
        out.push(Names { short, lfn: long_name_entries(&unique_long_name(name, &mut long_used), &short)? });
    }
    Ok(out)
}

/// `name` as a long name no other name in its directory has (compared without case): the
/// characters a long name may not hold (`"*/:<>?\|` and controls) written as `_`, and when that
/// or case makes it clash, `~N` added before the extension (`readme~1.txt`).
fn unique_long_name(name: &str, used: &mut std::collections::HashSet<String>) -> String {
    let clean: String = name.chars().map(|c| if c < ' ' || "\"*/:<>?\\|".contains(c) { '_' } else { c }).collect();
    if used.insert(clean.to_lowercase()) {
        return clean;
    }
    let (stem, ext) = match clean.rfind('.') {
        Some(dot) if dot > 0 => clean.split_at(dot),
        _ => (clean.as_str(), ""),
    };
    (1..)
        .map(|n| format!("{stem}~{n}{ext}"))
        .find(|candidate| used.insert(candidate.to_lowercase()))
        .expect("some suffix is free")
}

/// The long-name entries for `name`, last part first as they are stored.
fn long_name_entries(name: &str, short: &[u8; 11]) -> Result<Vec<[u8; ENTRY_SIZE]>> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > 255 {
        return Err(Error::invalid(format!("{name}: longer than the 255 characters of a FAT long name")));
    }
    let checksum = short.iter().fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c));
    let parts = units.len().div_ceil(13);
    if !units.len().is_multiple_of(13) {
        units.push(0);
        units.resize(parts * 13, 0xffff);
    }
    let mut entries = Vec::with_capacity(parts);
    for k in (0..parts).rev() {
        let mut e = [0u8; ENTRY_SIZE];
        e[0] = (k + 1) as u8 | if k + 1 == parts { 0x40 } else { 0 };
        e[11] = ATTR_LONG_NAME;
        e[13] = checksum;
        let chars = &units[k * 13..k * 13 + 13];
        let slots = (1..11).step_by(2).chain((14..26).step_by(2)).chain((28..32).step_by(2));
        for (slot, unit) in slots.zip(chars) {
            e[slot..slot + 2].copy_from_slice(&unit.to_le_bytes());
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Reads `buf.len()` bytes at `offset` of a host file, opened for this read only (nothing stays
/// open, and nothing is copied in advance).
pub(crate) fn read_host_file(file: &HostFile, buf: &mut [u8], offset: u64) -> Result<()> {
    let f = std::fs::File::open(&file.path).map_err(|e| Error::from_io(file.path.display(), &e))?;
    f.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::io(format!("{}: the file is shorter than when the server started", file.path.display()))
        } else {
            Error::from_io(file.path.display(), &e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_exact_or_generated_and_unique() {
        let dir = Dir {
            mtime: 0,
            parent: 0,
            children: ["README.TXT", "readme.txt", "A long name.tar.gz", "A long nam.tar.gz", ".bashrc", "x"]
                .iter()
                .map(|n| (n.to_string(), Child::File(0)))
                .collect(),
        };
        let names = short_names(&dir).unwrap();
        let shorts: Vec<String> = names.iter().map(|n| String::from_utf8_lossy(&n.short).into_owned()).collect();
        assert_eq!(shorts, ["README  TXT", "README~1TXT", "ALONGN~1GZ ", "ALONGN~2GZ ", "BASHRC~1   ", "X~1        "]);
        assert!(names[0].lfn.is_empty());
        let mut used = ["readme.txt".to_string()].into_iter().collect();
        assert_eq!(unique_long_name("ReadMe.txt", &mut used), "ReadMe~1.txt");
        assert_eq!(unique_long_name("a:b", &mut used), "a_b");
        assert_eq!(unique_long_name("a?b", &mut used), "a_b~1");
        assert_eq!(unique_long_name("A_B", &mut used), "A_B~2");
        assert_eq!(names[2].lfn.len(), 2);
        assert_eq!(names[2].lfn[0][0], 0x42);
        assert_eq!(names[2].lfn[1][0], 0x01);
    }

    #[test]
    fn fat_dates() {
        assert_eq!(fat_time(0), (1 << 5 | 1, 0));
        // 2024-02-29 13:45:10 UTC
        assert_eq!(fat_time(1_709_214_310), ((44 << 9) | (2 << 5) | 29, (13 << 11) | (45 << 5) | 5));
    }

    #[test]
    fn fat_entries_follow_chains() {
        let fat = Fat32 { regions: Regions::default(), chain_ends: vec![2, 5, 6], first_free: 7, fat_bytes: 512 };
        let mut buf = [0u8; 36];
        fat.read_fat(&mut buf, 0);
        let words: Vec<u32> = buf.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(words, [0x0fff_fff8, END_OF_CHAIN, END_OF_CHAIN, 4, 5, END_OF_CHAIN, END_OF_CHAIN, 0, 0]);
        let mut odd = [0u8; 3];
        fat.read_fat(&mut odd, 13);
        assert_eq!(odd, [0, 0, 0]);
        fat.read_fat(&mut odd, 11);
        assert_eq!(odd, [0x0f, 4, 0]);
    }
}
