//! `-l`: serving one of a qcow2 image's internal snapshots, read-only, as qemu-nbd does.
//!
//! `imago` knows nothing of snapshots, so this module reads the snapshot table itself (header
//! fields `nb_snapshots` and `snapshots_offset`; per entry the L1 table's offset and length, the id,
//! the name and, in the extra data, the snapshot's disk size), picks the snapshot the user named,
//! and opens the image through imago over the same file whose header shows the snapshot's L1
//! table and size in place of the active layer's ([`ImageFile::with_header`]). imago then does the
//! L2 lookups, compressed clusters and the backing chain as for the active layer. An image only
//! the own driver reads (zstd, extended L2 entries) is opened by it, read-only, with the header
//! it parsed given the snapshot's L1 table and size ([`Header::with_l1`]).
//!
//! The snapshot is served at its own size, which `qemu-img snapshot -a` would restore; qemu-nbd
//! serves it at the active layer's size instead (cutting a larger snapshot short).
//!
//! Every offset and count in the table is checked against the file before it is used: a hostile
//! image gets an error naming the file, never a panic or an allocation it asked for.

use std::io;
use std::path::Path;

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, StorageOpenOptions};

use crate::file::ImageFile;
use crate::image::{Image, ImageOptions};
use crate::qcow2::header::{be16, be32, be64, Header};
use crate::qcow2::{check_in_file, corrupt, read_bounded, Source};

/// At most this many snapshots in a table (qemu's limit).
const MAX_SNAPSHOTS: u32 = 65536;
/// At most this many bytes of extra data in an entry (qemu's limit).
const MAX_EXTRA_DATA: u64 = 1024;
/// At most this many bytes in the whole table.
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// At most this many L1 entries (32 MiB of table, as imago and qemu allow).
const MAX_L1_ENTRIES: u32 = 4 << 20;

/// Which snapshot `-l` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `-l ID_OR_NAME`: the snapshot with that id, else the one with that name.
    IdOrName(String),
    /// `-l snapshot.id=ID,snapshot.name=NAME`, either or both: the snapshot matching all given.
    Fields { id: Option<String>, name: Option<String> },
}

impl Selector {
    /// Parses `-l`'s value as qemu-nbd does: options when it starts with `snapshot.` (`,,` is a
    /// literal comma, a later key overrides an earlier one), otherwise an id or name.
    pub fn parse(value: &str) -> Result<Selector, String> {
        if !value.starts_with("snapshot.") {
            return Ok(Selector::IdOrName(value.to_string()));
        }
        let (mut id, mut name) = (None, None);
        for part in split_options(value) {
            let (key, v) = part.split_once('=').unwrap_or((&part, "on"));
            match key {
                "snapshot.id" => id = Some(v.to_string()),
                "snapshot.name" => name = Some(v.to_string()),
                _ => return Err(format!("-l {value}: Invalid parameter '{key}' (Failed in parsing snapshot param)")),
            }
        }
        Ok(Selector::Fields { id, name })
    }

    fn matches(&self, s: &Snapshot) -> bool {
        match self {
            Selector::IdOrName(_) => false,
            Selector::Fields { id: None, name: None } => false,
            Selector::Fields { id, name } => {
                id.as_ref().is_none_or(|id| *id == s.id) && name.as_ref().is_none_or(|n| *n == s.name)
            }
        }
    }
}

/// Comma-separated options, with `,,` standing for a comma; empty ones dropped.
fn split_options(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                parts.last_mut().expect("one part").push(',');
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// A snapshot table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    /// The disk's size when the snapshot was taken, if the entry says (entries written before
    /// qemu 1.7 do not; the active layer's size is then used, as qemu does).
    pub disk_size: Option<u64>,
}

/// The snapshot table of the qcow2 image in `file`.
pub fn table(file: &dyn Source, header: &Header) -> io::Result<Vec<Snapshot>> {
    if header.nb_snapshots > MAX_SNAPSHOTS {
        return Err(corrupt(format!(
            "the image claims {} snapshots (at most {MAX_SNAPSHOTS} are allowed)",
            header.nb_snapshots
        )));
    }
    if header.nb_snapshots == 0 {
        return Ok(Vec::new());
    }
    if !header.snapshots_offset.is_multiple_of(header.cluster_size()) {
        return Err(corrupt(format!("snapshot table offset {} is not cluster aligned", header.snapshots_offset)));
    }
    let mut at = header.snapshots_offset;
    let mut snapshots = Vec::new();
    for i in 0..header.nb_snapshots {
        if at - header.snapshots_offset > MAX_TABLE_BYTES {
            return Err(corrupt(format!("the snapshot table is larger than {MAX_TABLE_BYTES} bytes")));
        }
        let what = format!("snapshot table entry {i}");
        let fixed = read_bounded(file, &what, at, 40)?;
        let (id_len, name_len) = (u64::from(be16(&fixed, 12)), u64::from(be16(&fixed, 14)));
        let extra_len = u64::from(be32(&fixed, 36));
        if extra_len > MAX_EXTRA_DATA {
            return Err(corrupt(format!("{what} has {extra_len} bytes of extra data (at most {MAX_EXTRA_DATA})")));
        }
        let rest = read_bounded(file, &what, at + 40, extra_len + id_len + name_len)?;
        let (extra, strings) = rest.split_at(extra_len as usize);
        let (id, name) = strings.split_at(id_len as usize);
        snapshots.push(Snapshot {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
            disk_size: (extra.len() >= 16).then(|| be64(extra, 8)),
        });
        at += (40 + extra_len + id_len + name_len).next_multiple_of(8);
    }
    Ok(snapshots)
}

/// The snapshot `selector` names: by id, then by name for a bare string, as qemu looks it up.
pub fn find<'a>(snapshots: &'a [Snapshot], selector: &Selector) -> Option<&'a Snapshot> {
    match selector {
        Selector::IdOrName(s) => {
            snapshots.iter().find(|x| x.id == *s).or_else(|| snapshots.iter().find(|x| x.name == *s))
        }
        fields => snapshots.iter().find(|x| fields.matches(x)),
    }
}

/// Checks the L1 table of `snapshot` against the image in `file`; returns the snapshot's disk
/// size (the active layer's when the entry does not say).
fn checked_size(file: &dyn Source, header: &Header, snapshot: &Snapshot) -> io::Result<u64> {
    let what = format!("snapshot '{}' (id {})", snapshot.name, snapshot.id);
    if !snapshot.l1_table_offset.is_multiple_of(header.cluster_size()) {
        return Err(corrupt(format!("{what}: L1 table offset {} is not cluster aligned", snapshot.l1_table_offset)));
    }
    if snapshot.l1_size > MAX_L1_ENTRIES {
        return Err(corrupt(format!(
            "{what}: its L1 table has {} entries (at most {MAX_L1_ENTRIES})",
            snapshot.l1_size
        )));
    }
    let l1_bytes = u64::from(snapshot.l1_size) * 8;
    check_in_file(file, &format!("the L1 table of {what}"), snapshot.l1_table_offset, l1_bytes)?;
    // The L1 table of a snapshot covers the disk it recorded (as the active one covers its disk).
    let covered = u128::from(snapshot.l1_size) * u128::from(header.l1_entry_covers());
    match snapshot.disk_size {
        Some(size) if u128::from(size) > covered => Err(corrupt(format!(
            "{what}: its disk size {size} is larger than its L1 table ({} entries) covers",
            snapshot.l1_size
        ))),
        size => Ok(size.unwrap_or(header.size)),
    }
}

/// Opens the snapshot of the qcow2 image at `path` that `selector` names, read-only, with its
/// backing chain; `direct` bypasses the page cache. Errors name the file and, for a snapshot not
/// found, are worded as qemu-nbd's.
pub fn open(path: &Path, selector: &Selector, direct: bool) -> Result<Image, String> {
    let error = |what: &dyn std::fmt::Display| format!("{}: {what}", path.display());
    let file = ImageFile::open(path, false, direct).map_err(|e| error(&e))?;
    let header = Header::probe(&file)
        .map_err(|e| error(&e))?
        .ok_or_else(|| error(&"-l: the image is not qcow2; it has no snapshots"))?;
    let snapshots = table(&file, &header).map_err(|e| error(&e))?;
    let snapshot = find(&snapshots, selector).ok_or_else(|| {
        let asked = match selector {
            Selector::IdOrName(s) => format!("'{s}'"),
            Selector::Fields { id, name } => {
                let id = id.as_ref().map(|id| format!("id '{id}'"));
                let name = name.as_ref().map(|name| format!("name '{name}'"));
                format!("with {}", [id, name].into_iter().flatten().collect::<Vec<_>>().join(" and "))
            }
        };
        error(&format!("Failed to load snapshot: Can't find snapshot {asked}"))
    })?;
    let size = checked_size(&file, &header, snapshot).map_err(|e| error(&e))?;
    let failed = |e: io::Error| error(&format!("snapshot '{}': {e}", snapshot.name));
    if header.needs_own_driver() {
        let view = header.with_l1(size, snapshot.l1_table_offset, snapshot.l1_size).map_err(failed)?;
        let opts = ImageOptions { direct, ..ImageOptions::default() };
        return Ok(Image::from_own(crate::own::open_with(path, file, view, &opts, 0).map_err(failed)?));
    }
    let mut v2 = header.v2;
    v2[24..32].copy_from_slice(&size.to_be_bytes());
    v2[36..40].copy_from_slice(&snapshot.l1_size.to_be_bytes());
    v2[40..48].copy_from_slice(&snapshot.l1_table_offset.to_be_bytes());
    let q = Qcow2::<ImageFile>::builder(file.with_header(v2.to_vec()))
        .write(false)
        .storage_open_options(StorageOpenOptions::new().direct(direct))
        .open(PermissiveImplicitOpenGate::default())
        .map_err(failed)?;
    Ok(Image::from_imago(FormatAccess::new(q)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_parsed_as_qemu_nbd_does() {
        let fields = |id: Option<&str>, name: Option<&str>| Selector::Fields {
            id: id.map(String::from),
            name: name.map(String::from),
        };
        assert_eq!(Selector::parse("s1").unwrap(), Selector::IdOrName("s1".into()));
        assert_eq!(Selector::parse("id=1").unwrap(), Selector::IdOrName("id=1".into()));
        assert_eq!(Selector::parse("snapshot.id=1").unwrap(), fields(Some("1"), None));
        assert_eq!(Selector::parse("snapshot.name=a,,b,").unwrap(), fields(None, Some("a,b")));
        assert_eq!(Selector::parse("snapshot.id=1,snapshot.name=x=y").unwrap(), fields(Some("1"), Some("x=y")));
        assert_eq!(Selector::parse("snapshot.id=1,snapshot.id=2").unwrap(), fields(Some("2"), None));
        let e = Selector::parse("snapshot.id=1,x=2").unwrap_err();
        assert!(e.contains("Invalid parameter 'x'"), "{e}");
    }

    #[test]
    fn lookups_try_the_id_then_the_name() {
        let s = |id: &str, name: &str| Snapshot {
            id: id.into(),
            name: name.into(),
            l1_table_offset: 0,
            l1_size: 0,
            disk_size: None,
        };
        let table = [s("1", "s1"), s("2", "s2"), s("3", "2")];
        let id = |sel: &str| find(&table, &Selector::parse(sel).unwrap()).map(|s| s.id.clone());
        assert_eq!(id("2").as_deref(), Some("2"));
        assert_eq!(id("s2").as_deref(), Some("2"));
        assert_eq!(id("snapshot.name=2").as_deref(), Some("3"));
        assert_eq!(id("snapshot.id=1,snapshot.name=s1").as_deref(), Some("1"));
        assert_eq!(id("snapshot.id=1,snapshot.name=s2"), None);
        assert_eq!(id("snapshot.id="), None);
        assert_eq!(id("nope"), None);
    }

    use crate::testing::{append, refused, write_at, Scratch, Spoil};

    /// A snapshot table entry with qemu's 16 bytes of extra data (VM state size, disk size).
    fn entry(l1_offset: u64, l1_size: u32, id: &str, name: &str, disk_size: u64) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&l1_offset.to_be_bytes());
        e.extend_from_slice(&l1_size.to_be_bytes());
        e.extend_from_slice(&(id.len() as u16).to_be_bytes());
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(&[0; 20]);
        e.extend_from_slice(&16u32.to_be_bytes());
        e.extend_from_slice(&0u64.to_be_bytes());
        e.extend_from_slice(&disk_size.to_be_bytes());
        e.extend_from_slice(id.as_bytes());
        e.extend_from_slice(name.as_bytes());
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    /// Points the header at `count` snapshots at `offset`.
    fn set_table(path: &Path, count: u32, offset: u64) {
        write_at(path, 60, &count.to_be_bytes());
        write_at(path, 64, &offset.to_be_bytes());
    }

    fn open_err(path: &Path, selector: &str) -> String {
        match open(path, &Selector::parse(selector).unwrap(), false) {
            Ok(_) => panic!("-l {selector} opened"),
            Err(e) => e,
        }
    }

    /// An image with data, and a snapshot "s" (id 1) whose L1 table is the active one's, of
    /// another disk size.
    fn image_with_snapshot(dir: &Scratch, disk_size: u64) -> (std::path::PathBuf, u64) {
        let path = dir.qcow2("disk.qcow2", 4 << 20);
        let image = Image::open(&path, &ImageOptions { writable: true, ..Default::default() }).unwrap();
        image.write(&[0x5a; 65536], 1 << 20).unwrap();
        image.flush().unwrap();
        drop(image);
        let header = Header::read(&ImageFile::open(&path, false, false).unwrap()).unwrap();
        let l1 = header.l1_offset;
        let table = append(&path, &entry(l1, header.l1_size, "1", "s", disk_size));
        set_table(&path, 1, table);
        (path, l1)
    }

    #[test]
    fn a_snapshot_is_served_at_its_own_size() {
        let dir = Scratch::new("snapshot-size");
        for size in [2 << 20, 8 << 20] {
            let (path, _) = image_with_snapshot(&dir, size);
            let access = open(&path, &Selector::parse("s").unwrap(), false).unwrap();
            assert_eq!(access.size(), size);
            let mut buf = vec![0u8; 65536];
            access.read(&mut buf, 1 << 20).unwrap();
            assert_eq!(buf, vec![0x5a; 65536]);
            access.read(&mut buf, 0).unwrap();
            assert_eq!(buf, vec![0; 65536]);
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn hostile_snapshot_tables_are_refused() {
        let dir = Scratch::new("snapshot-hostile");
        let (path, l1) = image_with_snapshot(&dir, 4 << 20);
        let len = std::fs::metadata(&path).unwrap().len();
        let table = len - 65536;
        let cases: Vec<Spoil<'_>> = vec![
            (Box::new(|| set_table(&path, 100_000, table)), "claims 100000 snapshots"),
            (Box::new(|| set_table(&path, 1, len + (1 << 30))), "past the end of the file"),
            (Box::new(|| set_table(&path, 1, table + 512)), "not cluster aligned"),
            // The file ends after the first entry.
            (
                Box::new(|| {
                    set_table(&path, 2, table);
                    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(table + 64).unwrap();
                }),
                "past the end of the file",
            ),
            (Box::new(|| set_table(&path, 65536, table)), "past the end of the file"),
            (Box::new(|| write_at(&path, table + 8, &u32::MAX.to_be_bytes())), "entries (at most"),
            (Box::new(|| write_at(&path, table + 8, &(1u32 << 20).to_be_bytes())), "past the end of the file"),
            (Box::new(|| write_at(&path, table, &(len + 65536).to_be_bytes())), "past the end of the file"),
            (Box::new(|| write_at(&path, table, &(l1 + 8).to_be_bytes())), "not cluster aligned"),
            (Box::new(|| write_at(&path, table + 36, &u32::MAX.to_be_bytes())), "extra data"),
            (Box::new(|| write_at(&path, table + 48, &u64::MAX.to_be_bytes())), "larger than its L1 table"),
            (Box::new(|| write_at(&path, table + 12, &u16::MAX.to_be_bytes())), "past the end of the file"),
        ];
        refused(&path, cases, || open(&path, &Selector::parse("s").unwrap(), false));
        assert!(open_err(&path, "t").contains("Can't find snapshot 't'"));
        assert!(open(&path, &Selector::parse("1").unwrap(), false).is_ok());
    }
}
