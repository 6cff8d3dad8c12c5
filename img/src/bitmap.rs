//! `-B`: a qcow2 image's persistent dirty bitmaps as `qemu:dirty-bitmap:NAME` meta contexts,
//! as qemu-nbd offers them (flag 1: dirty).
//!
//! `imago` does not read bitmaps, so this module does, through the own driver's reader
//! ([`crate::qcow2::bitmaps`]): the bitmaps header extension (valid only while autoclear bit 0 is
//! set), the bitmap directory, and each bitmap's table, whose entries say "all clean" (0), "all
//! dirty" (1) or where a cluster of bits is. The table is kept in memory (it is bounded by the
//! file's size); clusters of bits are read when a client asks about them.
//!
//! Bitmaps must be loaded before imago opens the image for writing: imago clears every autoclear
//! bit of an image it opens writable, so that qemu afterwards considers the bitmaps inconsistent
//! and drops them, rather than trusting bitmaps that missed our writes. While the server runs, an
//! enabled bitmap (`auto` flag) of a writable image also counts the writes, zeroes and trims it
//! serves, in memory, so that clients see what qemu-nbd would show them; nothing is written back.
//! When no client wrote anything, the image is exactly as it was, and the server puts the
//! autoclear bits back as it exits ([`Bitmaps::close`]), so that serving an image writable but
//! only reading it does not cost its bitmaps (with or without `-B`). The own driver (zstd,
//! extended L2 entries) keeps the bitmaps of the images it writes up to date on disk and their
//! autoclear bit set: for those there is nothing to warn about and nothing to put back.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::file::ImageFile;
use crate::image::Format;
use crate::qcow2::bitmaps::{directory, Entry, AUTOCLEAR_BITMAPS};
use crate::qcow2::header::Header;
use crate::qcow2::l2::OFFSET_MASK;
use crate::qcow2::Source;

/// The prefix of the meta contexts.
pub const CONTEXT_PREFIX: &str = "qemu:dirty-bitmap:";

/// One bitmap.
pub struct Bitmap {
    name: String,
    granularity: u64,
    /// The disk size the bitmap covers.
    size: u64,
    cluster_size: u64,
    table: Vec<u64>,
    file: ImageFile,
    /// The bitmap records writes (its `auto` flag).
    enabled: bool,
    /// Granule-aligned ranges written since the server started: start -> end.
    written: Mutex<BTreeMap<u64, u64>>,
}

/// The bitmaps `-B` named.
#[derive(Default)]
pub struct Bitmaps {
    list: Vec<Bitmap>,
    /// Writes are recorded (a writable image, without `-s`).
    track: bool,
    /// A writable image with consistent bitmaps: what to put back if nothing is written.
    keep: Option<Keep>,
}

/// The autoclear bits of a writable image with bitmaps, as they were before imago cleared them.
struct Keep {
    path: PathBuf,
    autoclear: u64,
    wrote: AtomicBool,
}

impl Bitmaps {
    /// Loads the bitmaps `names` of the image at `path` (with `format` from `-f`, `None` when
    /// probed). `track` records served writes in the enabled ones. Errors are qemu-nbd's
    /// (`Bitmap 'x' is not found`, `... is inconsistent and cannot be used`), naming the file.
    pub fn load(path: &Path, format: Option<Format>, names: &[String], track: bool) -> Result<Bitmaps, String> {
        if format == Some(Format::Raw) && names.is_empty() || !track && names.is_empty() {
            return Ok(Bitmaps::default());
        }
        // Without -B, whether the file opens and what its header holds is for the image to judge.
        let file = match ImageFile::open(path, false, false) {
            Err(_) if names.is_empty() => return Ok(Bitmaps::default()),
            opened => opened.map_err(|e| error(path, e))?,
        };
        let header = match Header::probe(&file) {
            _ if format == Some(Format::Raw) => None,
            Ok(header) => header,
            Err(e) if !names.is_empty() => return Err(error(path, e)),
            Err(_) => None,
        };
        let keep = header
            .as_ref()
            .filter(|h| track && h.bitmaps_extension.is_some() && h.autoclear & AUTOCLEAR_BITMAPS != 0)
            .filter(|h| !h.needs_own_driver())
            .map(|h| Keep { path: path.to_path_buf(), autoclear: h.autoclear, wrote: AtomicBool::new(false) });
        if names.is_empty() {
            return Ok(Bitmaps { keep, ..Bitmaps::default() }.warned(path));
        }
        let not_found = |name: &str, why: &str| error(path, format!("Bitmap '{name}' is not found{why}"));
        let Some(header) = header else {
            return Err(not_found(&names[0], " (the image is raw)"));
        };
        let entries =
            match header.bitmaps_extension {
                None => Vec::new(),
                Some(_) if header.autoclear & AUTOCLEAR_BITMAPS == 0 => return Err(not_found(
                    &names[0],
                    " (the image's bitmaps are inconsistent: it was written by a program that does not update them)",
                )),
                Some(_) => directory(&file, &header).map_err(|e| error(path, e))?,
            };
        let mut list = Vec::new();
        for name in names {
            let entry = entries.iter().find(|e| e.name == *name).ok_or_else(|| not_found(name, ""))?;
            let file = ImageFile::open(path, false, false).map_err(|e| error(path, e))?;
            list.push(Bitmap::load(file, path, &header, entry)?);
        }
        Ok(Bitmaps { list, track, keep }.warned(path))
    }

    /// Says, for a writable image with bitmaps, what becomes of them.
    fn warned(self, path: &Path) -> Bitmaps {
        if self.keep.is_some() {
            tracing::warn!(
                "{}: nbdforge-img does not update the image's persistent dirty bitmaps: once a client writes, they \
                 are marked inconsistent (qemu then drops them); serve it with -r to keep them",
                path.display()
            );
        }
        self
    }

    /// The meta contexts, one per bitmap.
    pub fn contexts(&self) -> Vec<String> {
        self.list.iter().map(|b| format!("{CONTEXT_PREFIX}{}", b.name)).collect()
    }

    /// The bitmap of a meta context.
    pub fn get(&self, context: &str) -> Option<&Bitmap> {
        let name = context.strip_prefix(CONTEXT_PREFIX)?;
        self.list.iter().find(|b| b.name == name)
    }

    /// Records that `length` bytes at image offset `offset` were written.
    pub fn written(&self, offset: u64, length: u64) {
        if let Some(keep) = &self.keep {
            keep.wrote.store(true, Ordering::Relaxed);
        }
        if self.track {
            for b in self.list.iter().filter(|b| b.enabled) {
                b.mark(offset, length);
            }
        }
    }
}

impl Bitmaps {
    /// When the server exits, after the last flush: if nothing was written, puts back the
    /// autoclear bits imago cleared on opening, so that the bitmaps stay valid.
    pub fn close(&self) {
        let Some(keep) = self.keep.as_ref().filter(|k| !k.wrote.load(Ordering::Relaxed)) else { return };
        if let Err(e) = keep.restore() {
            tracing::warn!("{}: the persistent dirty bitmaps stay marked inconsistent: {e}", keep.path.display());
        }
    }
}

impl Keep {
    fn restore(&self) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        // Only over the header imago wrote: bitmaps still there, autoclear bits cleared.
        let file = ImageFile::open(&self.path, false, false).map_err(|e| e.to_string())?;
        let header = Header::probe(&file).map_err(|e| e.to_string())?.ok_or("the image is no longer qcow2")?;
        // Written by the own driver (a backing file needed it), which kept them consistent.
        if header.bitmaps_extension.is_some() && header.autoclear & AUTOCLEAR_BITMAPS != 0 {
            return Ok(());
        }
        if header.bitmaps_extension.is_none() || header.autoclear != 0 {
            return Err("the header changed".into());
        }
        let file = std::fs::OpenOptions::new().write(true).open(&self.path).map_err(|e| e.to_string())?;
        file.write_all_at(&self.autoclear.to_be_bytes(), 88).and_then(|()| file.sync_data()).map_err(|e| e.to_string())
    }
}

/// An error naming the file.
fn error(path: &Path, what: impl std::fmt::Display) -> String {
    format!("{}: {what}", path.display())
}

impl Bitmap {
    /// Checks the entry as qemu does before using a bitmap, and reads its table.
    fn load(file: ImageFile, path: &Path, header: &Header, e: &Entry) -> Result<Bitmap, String> {
        let name = &e.name;
        if e.in_use() {
            return Err(error(path, format!("Bitmap '{name}' is inconsistent and cannot be used")));
        }
        if let Some(why) = e.unusable(header) {
            return Err(error(path, format!("Bitmap '{name}' cannot be used: {why}")));
        }
        let table = e.table(&file, header).map_err(|err| error(path, err))?;
        Ok(Bitmap {
            name: name.clone(),
            granularity: 1 << e.granularity_bits,
            size: header.size,
            cluster_size: header.cluster_size(),
            table,
            file,
            enabled: e.enabled(),
            written: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether the disk at `offset` is dirty, and how far (at most `length` bytes) that goes on.
    pub fn status(&self, offset: u64, length: u64) -> io::Result<(bool, u64)> {
        let length = length.max(1);
        if offset >= self.size {
            return Ok((false, length));
        }
        let end = offset.saturating_add(length).min(self.size);
        // Ranges written while serving come first.
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, &w_end)) = written.range(..=offset).next_back().filter(|(_, &e)| e > offset) {
            return Ok((true, w_end.min(end) - offset));
        }
        let next_written = written.range(offset..).next().map_or(end, |(&s, _)| s.min(end));
        drop(written);
        let (dirty, run) = self.stored(offset, end)?;
        Ok(if dirty { (true, run) } else { (false, run.min(next_written - offset)) })
    }

    /// The bitmap as stored, at `offset`: dirty or not, and for how many bytes (up to `end`).
    fn stored(&self, offset: u64, end: u64) -> io::Result<(bool, u64)> {
        let bits_per_cluster = self.cluster_size * 8;
        let last_granule = (end - 1) / self.granularity;
        let mut granule = offset / self.granularity;
        let mut value = None;
        let mut cluster = Vec::new();
        while granule <= last_granule {
            let index = granule / bits_per_cluster;
            let entry = self.table.get(index as usize).copied().unwrap_or(0);
            let cluster_end = ((index + 1) * bits_per_cluster).min(last_granule + 1);
            if entry & OFFSET_MASK == 0 {
                let v = entry & 1 != 0;
                if *value.get_or_insert(v) != v {
                    break;
                }
                granule = cluster_end;
                continue;
            }
            cluster.resize(self.cluster_size as usize, 0);
            Source::read_at(&self.file, &mut cluster, entry & OFFSET_MASK)?;
            while granule < cluster_end {
                let bit = granule % bits_per_cluster;
                let byte = cluster[(bit / 8) as usize];
                // Whole bytes of the run's value at once.
                if bit.is_multiple_of(8)
                    && granule + 8 <= cluster_end
                    && value.is_some_and(|v| byte == if v { 0xff } else { 0 })
                {
                    granule += 8;
                    continue;
                }
                let v = byte & (1 << (bit % 8)) != 0;
                if *value.get_or_insert(v) != v {
                    break;
                }
                granule += 1;
            }
            if granule < cluster_end {
                break;
            }
        }
        let run_end = (granule * self.granularity).min(end);
        Ok((value.unwrap_or(false), run_end - offset))
    }

    /// Marks the granules `length` bytes at `offset` touch as written.
    fn mark(&self, offset: u64, length: u64) {
        if length == 0 || offset >= self.size {
            return;
        }
        let mut start = offset / self.granularity * self.granularity;
        let mut end = offset.saturating_add(length).min(self.size).div_ceil(self.granularity) * self.granularity;
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        // Merge with the ranges it touches.
        if let Some((&s, &e)) = written.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let touched: Vec<u64> = written.range(start..=end).map(|(&s, _)| s).collect();
        for s in touched {
            if let Some(e) = written.remove(&s) {
                end = end.max(e);
            }
        }
        written.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::bitmaps::{AUTO, IN_USE};
    use crate::qcow2::header::{be32, EXT_BITMAPS};
    use crate::testing::{append, refused, write_at, Scratch, Spoil, CLUSTER};

    const SIZE: u64 = 4 << 20;

    /// Gives the image at `path` one bitmap "b" (64 KiB granularity) whose one table entry is
    /// `entry`; returns the offsets of the directory and of the table.
    fn add_bitmap(path: &Path, entry: u64, flags: u32) -> (u64, u64) {
        let table = append(path, &entry.to_be_bytes());
        let mut dir = Vec::new();
        dir.extend_from_slice(&table.to_be_bytes());
        dir.extend_from_slice(&1u32.to_be_bytes());
        dir.extend_from_slice(&flags.to_be_bytes());
        dir.extend_from_slice(&[1, 16]);
        dir.extend_from_slice(&1u16.to_be_bytes());
        dir.extend_from_slice(&0u32.to_be_bytes());
        dir.extend_from_slice(b"b\0\0\0\0\0\0\0");
        let dir_offset = append(path, &dir);
        // The header extensions, from the header's end: the bitmaps one, then the end.
        let header_length = u64::from(be32(&std::fs::read(path).unwrap(), 100));
        let mut ext = Vec::new();
        ext.extend_from_slice(&EXT_BITMAPS.to_be_bytes());
        ext.extend_from_slice(&24u32.to_be_bytes());
        ext.extend_from_slice(&1u32.to_be_bytes());
        ext.extend_from_slice(&0u32.to_be_bytes());
        ext.extend_from_slice(&(dir.len() as u64).to_be_bytes());
        ext.extend_from_slice(&dir_offset.to_be_bytes());
        ext.extend_from_slice(&[0; 8]);
        write_at(path, header_length, &ext);
        write_at(path, 88, &AUTOCLEAR_BITMAPS.to_be_bytes());
        (dir_offset, table)
    }

    fn load(path: &Path) -> Result<Bitmaps, String> {
        Bitmaps::load(path, None, &["b".to_string()], true)
    }

    /// The runs of the bitmap over the disk.
    fn runs(b: &Bitmap) -> Vec<(bool, u64)> {
        let mut at = 0;
        let mut v = Vec::new();
        while at < SIZE {
            let (dirty, len) = b.status(at, SIZE - at).unwrap();
            v.push((dirty, len));
            at += len;
        }
        v
    }

    #[test]
    fn bits_all_ones_and_writes() {
        let dir = Scratch::new("bitmap");
        let path = dir.0.join("disk.qcow2");
        let _ = dir.qcow2("disk.qcow2", SIZE);
        let bits = append(&path, &[0b0000_0101, 0, 0, 0, 0, 0, 0, 0x80]);
        add_bitmap(&path, bits, AUTO);
        let bitmaps = load(&path).unwrap();
        assert_eq!(bitmaps.contexts(), ["qemu:dirty-bitmap:b"]);
        let b = bitmaps.get("qemu:dirty-bitmap:b").unwrap();
        let g = 65536;
        assert_eq!(runs(b), [(true, g), (false, g), (true, g), (false, SIZE - 4 * g), (true, g)]);
        // Writes served are counted, by granule, merged.
        bitmaps.written(5 * g + 10, 1);
        bitmaps.written(6 * g, g + 1);
        bitmaps.written(SIZE - 1, 100);
        assert_eq!(b.status(4 * g, SIZE).unwrap(), (false, g));
        assert_eq!(b.status(5 * g + 7, SIZE).unwrap(), (true, 3 * g - 7));
        assert_eq!(b.status(8 * g, SIZE).unwrap(), (false, SIZE - 9 * g));
        assert!(bitmaps.get("qemu:dirty-bitmap:c").is_none());

        let _ = std::fs::remove_file(&path);
        let _ = dir.qcow2("disk.qcow2", SIZE);
        add_bitmap(&path, 1, AUTO);
        assert_eq!(runs(load(&path).unwrap().get("qemu:dirty-bitmap:b").unwrap()), [(true, SIZE)]);
    }

    #[test]
    fn hostile_and_unusable_bitmaps_are_refused() {
        let dir = Scratch::new("bitmap-hostile");
        let path = dir.0.join("disk.qcow2");
        let _ = dir.qcow2("disk.qcow2", SIZE);
        let bits = append(&path, &[1]);
        let (dir_offset, table) = add_bitmap(&path, bits, AUTO);
        let good = std::fs::read(&path).unwrap();
        let len = good.len() as u64;
        let header_length = u64::from(be32(&good, 100));
        let ext = header_length + 8;
        let cases: Vec<Spoil<'_>> = vec![
            (Box::new(|| write_at(&path, 88, &0u64.to_be_bytes())), "Bitmap 'b' is not found (the image's bitmaps"),
            (Box::new(|| write_at(&path, dir_offset + 12, &(IN_USE | AUTO).to_be_bytes())), "is inconsistent"),
            (Box::new(|| write_at(&path, dir_offset + 12, &0x80u32.to_be_bytes())), "unknown flags"),
            (Box::new(|| write_at(&path, dir_offset + 16, &[2])), "unknown type"),
            (Box::new(|| write_at(&path, dir_offset + 17, &[63])), "granularity"),
            (Box::new(|| write_at(&path, dir_offset + 8, &u32::MAX.to_be_bytes())), "entries"),
            (Box::new(|| write_at(&path, dir_offset, &(len + CLUSTER).to_be_bytes())), "past the end of the file"),
            (Box::new(|| write_at(&path, table, &(len + CLUSTER).to_be_bytes())), "past the end of the file"),
            (Box::new(|| write_at(&path, table, &(bits + 512).to_be_bytes())), "invalid table entry"),
            (Box::new(|| write_at(&path, table, &(bits | 1).to_be_bytes())), "invalid table entry"),
            (Box::new(|| write_at(&path, ext, &0u32.to_be_bytes())), "claims 0 bitmaps"),
            (Box::new(|| write_at(&path, ext, &u32::MAX.to_be_bytes())), "claims 4294967295 bitmaps"),
            (Box::new(|| write_at(&path, ext, &2u32.to_be_bytes())), "runs past the directory"),
            (Box::new(|| write_at(&path, ext + 8, &u64::MAX.to_be_bytes())), "invalid bitmap directory"),
            (Box::new(|| write_at(&path, ext + 8, &(32u64 << 20).to_be_bytes())), "past the end of the file"),
            (Box::new(|| write_at(&path, ext + 16, &(len + CLUSTER).to_be_bytes())), "past the end of the file"),
            (Box::new(|| write_at(&path, dir_offset + 18, &0u16.to_be_bytes())), "invalid name length"),
            (Box::new(|| write_at(&path, dir_offset + 20, &u32::MAX.to_be_bytes())), "runs past the directory"),
            (Box::new(|| write_at(&path, header_length + 4, &u32::MAX.to_be_bytes())), "past the first cluster"),
            (
                Box::new(|| std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(table).unwrap()),
                "past the end of the file",
            ),
        ];
        refused(&path, cases, || load(&path));
        assert!(load(&path).is_ok());
        let e = Bitmaps::load(&path, None, &["c".to_string()], false).err().unwrap();
        assert!(e.ends_with("Bitmap 'c' is not found"), "{e}");
    }
}
