//! Tests of the file plugin's policy: parameters, export names, read-only service, and how
//! requests map onto the storage (whose own tests are in `nbdforge-storage`).

use super::*;
use nbdforge_api::Extent;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nbdforge-file-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn file(&self, name: &str, size: u64) -> PathBuf {
        let path = self.0.join(name);
        File::create(&path).unwrap().set_len(size).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plugin(params: &[(&str, &str)]) -> Result<FilePlugin> {
    let mut plugin = FilePlugin::new();
    for (key, value) in params {
        plugin.config(key, value)?;
    }
    plugin.config_complete()?;
    plugin.get_ready()?;
    Ok(plugin)
}

fn open(plugin: &FilePlugin, export_name: &str, readonly: bool) -> Result<Box<dyn Handle>> {
    plugin.open(&OpenArgs::local(export_name, readonly))
}

fn map(h: &dyn Handle, count: u64, offset: u64, flags: Flags) -> Vec<Extent> {
    let mut e = Extents::new(offset, offset + count);
    h.extents(count, offset, flags, &mut e).unwrap();
    e.into_vec()
}

/// A read sink that says whether it was offered the file or asked for a buffer.
struct Recorder {
    data: Vec<u8>,
    offered_file: bool,
}

impl ReadSink for Recorder {
    fn buffer(&mut self) -> Result<&mut [u8]> {
        Ok(&mut self.data)
    }
    fn borrowed(&mut self, _parts: &[&[u8]]) -> Result<()> {
        unreachable!("the file plugin has no memory to lend")
    }
    fn file(&mut self, file: BorrowedFd<'_>, offset: u64, holes: &[(u64, u64)]) -> Result<()> {
        self.offered_file = true;
        nbdforge_api::BufferSink(&mut self.data).file(file, offset, holes)
    }
}

fn read(h: &dyn Handle, count: usize, offset: u64) -> Recorder {
    let mut sink = Recorder { data: vec![0; count], offered_file: false };
    h.read(count as u64, offset, Flags::NONE, &mut sink).unwrap();
    sink
}

#[test]
fn requests_map_onto_the_file() {
    let dir = TempDir::new();
    let path = dir.file("disk.img", 1 << 20);
    let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
    let h = open(&p, "ignored", false).unwrap();
    assert_eq!(h.get_size().unwrap(), 1 << 20);
    let caps = h.capabilities().unwrap();
    assert!(caps.write && caps.flush && caps.multi_conn && caps.extents);
    assert_eq!(caps.fua, nbdforge_api::Support::Native);
    h.pwrite(b"hello world", 1000, Flags::FUA).unwrap();
    h.flush(Flags::NONE).unwrap();
    h.cache(4096, 0, Flags::NONE).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[1000..1011], b"hello world");
    let sent = read(&*h, 11, 1000);
    assert!(!sent.offered_file, "small reads are copied");
    assert_eq!(sent.data, b"hello world");
    let sent = read(&*h, 256 << 10, 0);
    assert!(sent.offered_file, "large reads go out with sendfile");
    assert_eq!(&sent.data[1000..1011], b"hello world");
}

#[test]
fn short_read_is_an_error_naming_the_file() {
    let dir = TempDir::new();
    let path = dir.file("short.img", 4096);
    let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
    let h = open(&p, "", false).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
    let mut sink = Recorder { data: vec![0; 512], offered_file: false };
    let err = h.read(512, 0, Flags::NONE, &mut sink).unwrap_err();
    assert!(!sink.offered_file, "sendfile would fail the connection, not the read");
    assert_eq!(err.errno, libc::EIO);
    assert_eq!(
        err.message,
        format!(
            "file: {}: read of 512 bytes at offset 0 ran past the end of the file (did it shrink?)",
            path.display()
        )
    );
}

#[test]
fn extents_trim_and_zero() {
    let dir = TempDir::new();
    let path = dir.file("sparse.img", 4 << 20);
    let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
    let h = open(&p, "", false).unwrap();
    h.pwrite(&vec![0xab; 1 << 20], 1 << 20, Flags::NONE).unwrap();
    let (hole, data) = (HOLE | ZERO, DATA);
    assert_eq!(
        map(&*h, 4 << 20, 0, Flags::NONE),
        [
            Extent { offset: 0, length: 1 << 20, flags: hole },
            Extent { offset: 1 << 20, length: 1 << 20, flags: data },
            Extent { offset: 2 << 20, length: 2 << 20, flags: hole },
        ]
    );
    assert_eq!(map(&*h, 4 << 20, 0, Flags::REQ_ONE), [Extent { offset: 0, length: 1 << 20, flags: hole }]);

    h.trim(512 << 10, 1 << 20, Flags::FUA).unwrap();
    let first = map(&*h, 1 << 20, 1 << 20, Flags::REQ_ONE);
    assert_eq!(first, [Extent { offset: 1 << 20, length: 512 << 10, flags: hole }]);
    h.zero(4096, (3 << 19) + 4096, Flags::NONE).unwrap();
    h.zero(8192, 2 << 20, Flags::MAY_TRIM | Flags::FAST_ZERO | Flags::FUA).unwrap();
    let mut back = vec![1u8; 8192];
    h.pread(&mut back, 3 << 19, Flags::NONE).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0xab) && back[4096..].iter().all(|&b| b == 0));
}

#[test]
fn read_only_open_when_the_server_says_so() {
    let dir = TempDir::new();
    let path = dir.file("ro.img", 8192);
    let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
    let h = open(&p, "", true).unwrap();
    assert!(!h.capabilities().unwrap().write);
}

#[test]
fn real_read_only_file_is_served_read_only() {
    let dir = TempDir::new();
    let path = dir.file("mode0444.img", 8192);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&path, perms).unwrap();
    let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
    let h = open(&p, "", false).unwrap();
    // root may write any file, so only a non-root run can see the fallback on a real file.
    let root = nix::unistd::geteuid().is_root();
    assert_eq!(h.capabilities().unwrap().write, root);
}

#[test]
fn missing_file_fails_before_serving() {
    let err = plugin(&[("file", "/nonexistent")]).err().unwrap();
    assert_eq!(err.errno, libc::ENOENT);
    assert_eq!(err.message, "/nonexistent: No such file or directory");
}

#[test]
fn parameter_errors() {
    let dir = TempDir::new();
    let d = dir.0.to_str().unwrap();
    let err = plugin(&[("file", d)]).err().unwrap();
    assert!(err.message.contains("is a directory (use dir="), "{}", err.message);
    let err = plugin(&[("file", "/dev/null")]).err().unwrap();
    assert_eq!(err.message, "/dev/null: not a regular file or block device");
    let err = plugin(&[("file", "a.img"), ("dir", d)]).err().unwrap();
    assert_eq!(err.message, format!("give file= or dir=, not both (file=a.img, dir={d})"));
    assert!(plugin(&[]).err().unwrap().message.contains("file=<FILENAME>"));
    let mut p = FilePlugin::new();
    assert_eq!(p.config("cache", "writeback").unwrap_err().message, "cache=writeback: must be one of default, none");
    assert_eq!(
        p.config("fadvise", "often").unwrap_err().message,
        "fadvise=often: must be one of normal, random, sequential"
    );
    assert!(p.config("rdelay", "1").unwrap_err().message.contains("'rdelay'"));
}

#[test]
fn cache_none_and_fadvise_still_serve_data() {
    let dir = TempDir::new();
    let path = dir.file("nocache.img", 1 << 20);
    let p = plugin(&[("file", path.to_str().unwrap()), ("cache", "none"), ("fadvise", "sequential")]).unwrap();
    let h = open(&p, "", false).unwrap();
    // More writes than the storage remembers, so the oldest are evicted on the way.
    for i in 0..100 {
        h.pwrite(&[i as u8 + 1; 4096], i * 4096, Flags::NONE).unwrap();
    }
    h.flush(Flags::NONE).unwrap();
    let sent = read(&*h, 4096, 70 * 4096);
    assert!(!sent.offered_file, "sendfile would keep the data cached");
    assert_eq!(sent.data, [71u8; 4096]);
}

#[test]
fn directory_exports() {
    let dir = TempDir::new();
    dir.file("b.img", 2048);
    dir.file("a.img", 1024);
    std::fs::create_dir(dir.0.join("subdir")).unwrap();
    std::os::unix::fs::symlink("a.img", dir.0.join("link")).unwrap();
    std::os::unix::fs::symlink("missing", dir.0.join("dangling")).unwrap();
    nix::unistd::mkfifo(&dir.0.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let d = dir.0.to_str().unwrap();
    let p = plugin(&[("dir", d)]).unwrap();
    let mut names: Vec<String> = p.list_exports(false, false).unwrap().into_iter().map(|e| e.name).collect();
    let listed: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| ["a.img", "b.img", "link"].contains(&n.as_str()))
        .collect();
    assert_eq!(names, listed, "exports in the order the directory lists them");
    names.sort();
    assert_eq!(names, ["a.img", "b.img", "link"]);
    assert_eq!(p.default_export(false, false).unwrap(), "");

    let h = open(&p, "b.img", false).unwrap();
    assert_eq!(h.get_size().unwrap(), 2048);
    assert_eq!(open(&p, "link", false).unwrap().get_size().unwrap(), 1024);

    let err = open(&p, "", false).err().unwrap();
    assert_eq!(err.errno, libc::ENOENT);
    assert!(err.message.contains("no default export"), "{}", err.message);
    for bad in ["../etc/passwd", "..", ".", "subdir/x", "/etc/passwd"] {
        let err = open(&p, bad, false).err().unwrap();
        assert_eq!(err.errno, libc::EINVAL, "{bad}");
    }
    for not_a_file in ["subdir", "fifo", "dangling", "nosuch"] {
        let err = open(&p, not_a_file, false).err().unwrap();
        assert_eq!(err.errno, libc::ENOENT, "{not_a_file}: {}", err.message);
        assert!(err.message.starts_with(&format!("file: {d}/{not_a_file}: ")), "{}", err.message);
    }
}

#[test]
fn missing_directory_fails_before_serving() {
    let err = plugin(&[("dir", "/nonexistent-dir")]).err().unwrap();
    assert_eq!(err.message, "dir=/nonexistent-dir: No such file or directory");
}
