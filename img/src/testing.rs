//! Scratch files and qcow2 images for the crate's unit tests, and a way to check that spoilt
//! (hostile) images are refused with an error naming the file.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::FormatCreateBuilder;

use crate::file::ImageFile;

/// The cluster size of the images made here.
pub const CLUSTER: u64 = 65536;

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("nbdforge-img-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A new empty qcow2 image (v3, 64 KiB clusters) of `size` bytes in the directory.
    pub fn qcow2(&self, name: &str, size: u64) -> PathBuf {
        let path = self.0.join(name);
        OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let storage = ImageFile::open(&path, true, false).unwrap();
        Qcow2::<ImageFile>::create_builder(storage).size(size).create().unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `bytes` at `offset` of the file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

/// Appends `bytes` in new clusters at the end of the file; returns their offset.
pub fn append(path: &Path, bytes: &[u8]) -> u64 {
    let offset = std::fs::metadata(path).unwrap().len().next_multiple_of(CLUSTER);
    let mut padded = bytes.to_vec();
    padded.resize((bytes.len() as u64).next_multiple_of(CLUSTER).max(CLUSTER) as usize, 0);
    write_at(path, offset, &padded);
    offset
}

/// A way to spoil an image, and what the error must then say.
pub type Spoil<'a> = (Box<dyn Fn() + 'a>, &'static str);

/// For each case, spoils a fresh copy of the image at `path` and checks that `open` fails
/// with an error naming the file and saying what the case expects.
pub fn refused<T>(path: &Path, cases: Vec<Spoil<'_>>, open: impl Fn() -> Result<T, String>) {
    let good = std::fs::read(path).unwrap();
    for (spoil, expected) in cases {
        std::fs::write(path, &good).unwrap();
        spoil();
        let Err(e) = open() else { panic!("opened, want an error saying '{expected}'") };
        assert!(e.contains(expected) && e.contains(&path.display().to_string()), "want '{expected}': {e}");
    }
    std::fs::write(path, &good).unwrap();
}
