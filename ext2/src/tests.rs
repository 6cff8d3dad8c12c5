//! Unit tests of the filter over filesystems that mke2fs builds, and over corrupted copies of
//! them: reads and writes must match, and a hostile filesystem must give errors, never a
//! crash, a hang or unbounded memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nbdforge_api::extents::{HOLE, ZERO};
use nbdforge_api::prng::Xoshiro256;
use nbdforge_api::{Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer, OpenArgs, Result};

use crate::filter::Ext2Filter;

/// A disk in memory, shared by every handle opened on it.
#[derive(Clone)]
struct Disk {
    data: Arc<Mutex<Vec<u8>>>,
    /// Reads at or past this byte fail (the layer below going bad).
    fail_from: u64,
}

impl Handle for Disk {
    fn get_size(&self) -> Result<u64> {
        Ok(self.data.lock().unwrap().len() as u64)
    }
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities::ALL)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        if offset + buf.len() as u64 > self.fail_from {
            return Err(Error::io(format!("disk: bad sector at {offset}")));
        }
        let o = offset as usize;
        buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
        Ok(())
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

impl Backend for Disk {
    fn name(&self) -> &str {
        "disk"
    }
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(self.clone()))
    }
}

fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or(name.into())
}

/// The contents every test filesystem holds.
struct Files {
    random: Vec<u8>,
    inner: Vec<u8>,
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An image of `size` bytes made by `mke2fs -t kind -d`: /random (with an indirect or extent
/// map), /sparse (a hole, 5 bytes, a hole), /sub/inner, /tiny (32 bytes), /link -> random,
/// /dir -> sub.
fn image(kind: &str, size: &str, extra: &[&str]) -> (Vec<u8>, Files) {
    let dir = Scratch(std::env::temp_dir().join(format!(
        "nbdforge-ext2-{}-{kind}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )));
    let tree = dir.0.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let mut rng = Xoshiro256::seeded(kind.len() as u64);
    let mut bytes = |n: usize| (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
    let files = Files { random: bytes(700_000), inner: bytes(50_000) };
    std::fs::write(tree.join("random"), &files.random).unwrap();
    std::fs::write(tree.join("sub/inner"), &files.inner).unwrap();
    std::fs::write(tree.join("tiny"), b"a file small enough to be inline").unwrap();
    let sparse = std::fs::File::create(tree.join("sparse")).unwrap();
    sparse.set_len(3 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"hello", 1 << 20).unwrap();
    std::os::unix::fs::symlink("random", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("sub", tree.join("dir")).unwrap();
    let img = dir.0.join("fs.img");
    let out = Command::new(tool("mke2fs"))
        .args(["-q", "-F", "-t", kind])
        .args(extra)
        .arg("-d")
        .arg(&tree)
        .arg(&img)
        .arg(size)
        .output()
        .expect("mke2fs (e2fsprogs) runs");
    assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
    (std::fs::read(&img).unwrap(), files)
}

/// The 1 KiB pieces of `img` that hold metadata: what `e2image -r` keeps (it zeroes file data).
fn metadata(img: &[u8]) -> Vec<usize> {
    let dir = Scratch(std::env::temp_dir().join(format!(
        "nbdforge-ext2-meta-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (src, dst) = (dir.0.join("fs.img"), dir.0.join("meta.img"));
    std::fs::write(&src, img).unwrap();
    let out = Command::new(tool("e2image")).arg("-r").arg(&src).arg(&dst).output().expect("e2image runs");
    assert!(out.status.success(), "e2image: {}", String::from_utf8_lossy(&out.stderr));
    let meta = std::fs::read(&dst).unwrap();
    (0..meta.len()).step_by(1024).filter(|&at| meta[at..at + 1024].iter().any(|&b| b != 0)).collect()
}

/// e2fsck -fn finds nothing to fix on the disk.
fn fsck(d: &Disk, what: &str) {
    let dir = Scratch(std::env::temp_dir().join(format!(
        "nbdforge-ext2-fsck-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let img = dir.0.join("fs.img");
    std::fs::write(&img, &*d.data.lock().unwrap()).unwrap();
    let out = Command::new(tool("e2fsck")).arg("-fn").arg(&img).output().unwrap();
    assert!(out.status.success(), "{what}: e2fsck: {}", String::from_utf8_lossy(&out.stdout));
}

fn filter(file: &str) -> Ext2Filter {
    let mut f = Ext2Filter::default();
    assert!(f.config("ext2file", file).unwrap());
    f.config_complete().unwrap();
    f
}

fn open(disk: &Disk, file: &str, readonly: bool) -> Result<Box<dyn Handle>> {
    let next: Arc<dyn Backend> = Arc::new(disk.clone());
    filter(file).open(&next, &OpenArgs::local("", readonly))
}

fn disk(data: Vec<u8>) -> Disk {
    Disk { data: Arc::new(Mutex::new(data)), fail_from: u64::MAX }
}

fn read_all(h: &dyn Handle) -> Result<Vec<u8>> {
    let mut buf = vec![0; h.get_size()? as usize];
    for (i, chunk) in buf.chunks_mut(65536).enumerate() {
        h.pread(chunk, i as u64 * 65536, Flags::NONE)?;
    }
    Ok(buf)
}

#[test]
fn files_read_back_on_each_kind() {
    for (kind, extra) in [("ext2", &[][..]), ("ext3", &[][..]), ("ext4", &["-b", "4096"][..])] {
        let (data, files) = image(kind, "16M", extra);
        let d = disk(data);
        let h = open(&d, "/random", true).unwrap();
        assert_eq!(read_all(&*h).unwrap(), files.random, "{kind}");
        let h = open(&d, "/dir/inner", true).unwrap();
        assert_eq!(read_all(&*h).unwrap(), files.inner, "{kind}: through a symlinked directory");
        let h = open(&d, "/sparse", true).unwrap();
        let sparse = read_all(&*h).unwrap();
        assert_eq!(sparse.len(), 3 << 20);
        assert_eq!(&sparse[1 << 20..(1 << 20) + 5], b"hello");
        assert_eq!(sparse.iter().filter(|&&b| b != 0).count(), 5);
        let mut e = Extents::new(0, 3 << 20);
        h.extents(3 << 20, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice()[0].offset, 0);
        assert_eq!(e.as_slice()[0].flags, HOLE | ZERO, "{kind}: the file starts with a hole");
        assert!(e.as_slice()[0].length >= 512 << 10);
    }
}

#[test]
fn inline_data_is_read_and_served_read_only() {
    let (data, _) = image("ext4", "8M", &["-O", "inline_data"]);
    let h = open(&disk(data), "/tiny", false).unwrap();
    assert!(!h.capabilities().unwrap().write, "libext2fs cannot write inline data safely");
    assert_eq!(read_all(&*h).unwrap(), b"a file small enough to be inline");
}

#[test]
fn what_is_not_a_regular_file_is_refused() {
    let (data, _) = image("ext4", "8M", &[]);
    let d = disk(data);
    let e = open(&d, "/missing", true).err().unwrap();
    assert_eq!(e.errno, libc::ENOENT);
    assert!(e.message.starts_with("ext2: /missing: "), "{}", e.message);
    for (path, what) in [("/sub", "a directory"), ("/", "a directory"), ("/link", "a symbolic link")] {
        let e = open(&d, path, true).err().unwrap();
        assert!(e.message.contains(what), "{path}: {}", e.message);
    }
    let mut f = Ext2Filter::default();
    f.config("ext2file", "random").unwrap();
    assert!(f.config_complete().unwrap_err().message.contains("ext2file=random: must be an absolute path"));
}

#[test]
fn writes_fill_holes_and_survive_a_reopen() {
    for kind in ["ext2", "ext4"] {
        let (data, _) = image(kind, "16M", &[]);
        let d = disk(data);
        let h = open(&d, "/sparse", false).unwrap();
        assert!(h.capabilities().unwrap().write);
        h.pwrite(&[7u8; 10000], 5000, Flags::NONE).unwrap();
        h.pwrite(b"in place", (1 << 20) + 1, Flags::NONE).unwrap();
        h.flush(Flags::NONE).unwrap();
        h.finalize().unwrap();
        let h = open(&d, "/sparse", true).unwrap();
        let back = read_all(&*h).unwrap();
        assert_eq!(&back[5000..15000], &[7u8; 10000][..], "{kind}");
        assert_eq!(&back[1 << 20..(1 << 20) + 9], b"hin place", "{kind}");
        assert_eq!(back.iter().filter(|&&b| b != 0).count(), 10009, "{kind}");
        // Zeroing a range over data and holes writes the data and leaves the holes unallocated.
        let h = open(&d, "/sparse", false).unwrap();
        assert_eq!(h.capabilities().unwrap().zero, nbdforge_api::Support::Native);
        h.zero(2 << 20, 10000, Flags::NONE).unwrap();
        let back = read_all(&*h).unwrap();
        assert_eq!(back.iter().filter(|&&b| b != 0).count(), 5000, "{kind}: zeroed");
        let mut e = Extents::new(0, 3 << 20);
        h.extents(3 << 20, 0, Flags::NONE, &mut e).unwrap();
        let hole_at =
            |at: u64| e.as_slice().iter().any(|x| x.offset <= at && at < x.offset + x.length && x.flags == HOLE | ZERO);
        assert!(hole_at(2 << 20) && !hole_at(5000), "{kind}: {:?}", e.as_slice());
        h.finalize().unwrap();
        fsck(&d, kind);
    }
}

#[test]
fn trim_deallocates_whole_blocks_of_extent_mapped_files() {
    let (data, files) = image("ext4", "16M", &["-b", "4096"]);
    let d = disk(data);
    let h = open(&d, "/random", false).unwrap();
    assert!(h.capabilities().unwrap().trim);
    h.trim(300_000, 100_000, Flags::NONE).unwrap();
    h.flush(Flags::NONE).unwrap();
    let back = read_all(&*h).unwrap();
    // Blocks 25..=96 (bytes 102400..397312) are gone; the partial blocks around them stay.
    assert_eq!(&back[..102400], &files.random[..102400]);
    assert!(back[102400..397312].iter().all(|&b| b == 0));
    assert_eq!(&back[397312..], &files.random[397312..]);
    let mut e = Extents::new(0, back.len() as u64);
    h.extents(back.len() as u64, 0, Flags::NONE, &mut e).unwrap();
    assert!(e.as_slice().iter().any(|x| x.offset == 102400 && x.length == 294912 && x.flags == HOLE | ZERO));
    h.finalize().unwrap();
    fsck(&d, "ext4 after trim");
    // Files mapped by indirect blocks do not offer it (libext2fs 1.47 punches the wrong blocks).
    let (data, _) = image("ext2", "8M", &[]);
    assert!(!open(&disk(data), "/random", false).unwrap().capabilities().unwrap().trim);
}

#[test]
fn a_failing_disk_is_reported_with_its_message() {
    let (data, files) = image("ext4", "8M", &[]);
    let mut d = disk(data);
    let h = open(&d, "/random", true).unwrap();
    assert_eq!(read_all(&*h).unwrap(), files.random);
    d.fail_from = 1 << 20;
    let h = open(&d, "/random", true).unwrap();
    let e = read_all(&*h).unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("disk: bad sector"), "{}", e.message);
}

#[test]
fn a_truncated_or_foreign_disk_is_refused() {
    let (data, _) = image("ext4", "8M", &[]);
    let e = open(&disk(data[..4 << 20].to_vec()), "/random", true).err().unwrap();
    assert!(e.message.contains("more than the disk's"), "{}", e.message);
    let e = open(&disk(vec![0; 1 << 20]), "/random", true).err().unwrap();
    assert!(e.message.contains("bad magic"), "{}", e.message);
    let e = open(&disk(vec![0; 100]), "/random", true).err().unwrap();
    assert!(e.message.contains("too small"), "{}", e.message);
}

/// Changes random bytes in the metadata of valid filesystems (superblock, descriptors, bitmaps,
/// inode tables, directories, mapping blocks) and serves them: every outcome is fine but a
/// crash or a hang.
/// Images per kind: a few seconds' worth (thousands pass, run by hand, as well).
const ROUNDS: usize = 150;

#[test]
fn corrupted_filesystems_fail_cleanly() {
    let kinds = [
        ("ext2", &["-b", "1024"][..]),
        ("ext4", &["-b", "1024", "-O", "^metadata_csum"][..]),
        ("ext4", &["-b", "4096"][..]),
        ("ext4", &["-b", "1024", "-O", "inline_data,^metadata_csum"][..]),
    ];
    for (kind, extra) in kinds {
        let (clean, _) = image(kind, "4M", extra);
        let pieces = metadata(&clean);
        assert!(pieces.len() > 8, "{kind}: {} pieces of metadata", pieces.len());
        let mut rng = Xoshiro256::seeded(0xe2f5);
        let (mut opened, mut read) = (0, 0);
        for round in 0..ROUNDS {
            let mut data = clean.clone();
            let flips = 1 + rng.next_u64() % 16;
            for _ in 0..flips {
                let piece = pieces[(rng.next_u64() % pieces.len() as u64) as usize];
                data[piece + (rng.next_u64() % 1024) as usize] = rng.next_u64() as u8;
            }
            let started = Instant::now();
            let d = disk(data);
            for path in ["/random", "/sparse", "/dir/inner", "/tiny"] {
                let Ok(h) = open(&d, path, round % 2 == 0) else { continue };
                opened += 1;
                let size = h.get_size().unwrap_or(0).min(8 << 20);
                let mut buf = vec![0; 65536];
                let mut at = 0;
                while at < size {
                    let n = (size - at).min(65536);
                    if h.pread(&mut buf[..n as usize], at, Flags::NONE).is_err() {
                        break;
                    }
                    at += n;
                }
                read += usize::from(at == size);
                let mut e = Extents::new(0, size.max(1));
                let _ = h.extents(size.max(1), 0, Flags::NONE, &mut e);
                if h.capabilities().is_ok_and(|c| c.write) && size > 0 {
                    let _ = h.pwrite(&[1; 3000], size / 2, Flags::NONE);
                    let _ = h.trim(size / 2, size / 4, Flags::NONE);
                    let _ = h.flush(Flags::NONE);
                }
                let _ = h.finalize();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{kind} round {round} took {:?}", started.elapsed());
        }
        eprintln!("{kind} {extra:?}: {opened} files opened, {read} read to the end, of {}", 4 * ROUNDS);
        // The corruption must leave enough alone for the reading code to be exercised.
        assert!(opened > 20 && read > 20, "{kind} {extra:?}: only {opened} opened, {read} read");
    }
}
