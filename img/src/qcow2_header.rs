//! The parts of a qcow2 file that `imago` does not read: the header fields and header extensions
//! that internal snapshots (`-l`, [`crate::snapshot`]) and persistent dirty bitmaps (`-B`,
//! [`crate::bitmap`]) start from, read through [`MetaFile`], which refuses any read past the end
//! of the file, so that a hostile table can claim any size without making us allocate it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The magic at the start of a qcow2 image.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// The bitmaps header extension.
pub const EXT_BITMAPS: u32 = 0x2385_2875;

/// An image file opened for reading its metadata.
pub struct MetaFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl MetaFile {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<MetaFile, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
        Ok(MetaFile { file, path: path.to_path_buf(), len })
    }

    /// The file's length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The file as the user named it, for messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// An error about `what` in this file.
    pub fn error(&self, what: impl std::fmt::Display) -> String {
        format!("{}: {what}", self.path.display())
    }

    /// Checks that `length` bytes at `offset` lie inside the file.
    pub fn check(&self, what: &str, offset: u64, length: u64) -> Result<(), String> {
        match offset.checked_add(length) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(self.error(format!(
                "{what} at offset {offset} ({length} bytes) is past the end of the file ({} bytes)",
                self.len
            ))),
        }
    }

    /// Reads `length` bytes at `offset`, which must lie inside the file.
    pub fn read(&self, what: &str, offset: u64, length: u64) -> Result<Vec<u8>, String> {
        self.check(what, offset, length)?;
        let mut buf = vec![0u8; length as usize];
        self.read_into(&mut buf, offset).map_err(|e| self.error(format!("reading {what}: {e}")))?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_into(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// Big-endian fields of a byte slice whose length the caller has checked.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The qcow2 header fields that snapshots and bitmaps need.
pub struct Header {
    /// The header's first 72 bytes (version 2's whole header), as read.
    pub v2: Vec<u8>,
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub autoclear_features: u64,
    /// The header extensions: type and data.
    pub extensions: Vec<(u32, Vec<u8>)>,
}

impl Header {
    /// Reads the header of the qcow2 image in `file`; `None` when the file is not one.
    pub fn read(file: &MetaFile) -> Result<Option<Header>, String> {
        if file.size() < 72 {
            return Ok(None);
        }
        let v2 = file.read("the header", 0, 72)?;
        let version = be32(&v2, 4);
        if &v2[..4] != MAGIC || !(2..=3).contains(&version) {
            return Ok(None);
        }
        let cluster_bits = be32(&v2, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(file.error(format!("invalid cluster size: 2^{cluster_bits}")));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut header = Header {
            version,
            cluster_bits,
            size: be64(&v2, 24),
            l1_size: be32(&v2, 36),
            nb_snapshots: be32(&v2, 60),
            snapshots_offset: be64(&v2, 64),
            autoclear_features: 0,
            extensions: Vec::new(),
            v2,
        };
        if version == 2 {
            return Ok(Some(header));
        }
        let v3 = file.read("the header", 72, 32)?;
        header.autoclear_features = be64(&v3, 16);
        let header_length = u64::from(be32(&v3, 28));
        if !(104..=cluster_size).contains(&header_length) {
            return Err(file.error(format!("invalid header length {header_length}")));
        }
        // The extensions follow, within the first cluster.
        let end = cluster_size.min(file.size());
        let mut at = header_length;
        while at + 8 <= end {
            let head = file.read("a header extension", at, 8)?;
            let (kind, length) = (be32(&head, 0), u64::from(be32(&head, 4)));
            if kind == 0 {
                break;
            }
            if at + 8 + length > end {
                return Err(file.error(format!("header extension {kind:#x} runs past the first cluster")));
            }
            header.extensions.push((kind, file.read("a header extension", at + 8, length)?));
            at += 8 + length.next_multiple_of(8);
        }
        Ok(Some(header))
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The data of the extension of type `kind`.
    pub fn extension(&self, kind: u32) -> Option<&[u8]> {
        self.extensions.iter().find(|(k, _)| *k == kind).map(|(_, d)| d.as_slice())
    }
}

/// Scratch qcow2 images for the unit tests of the modules that read these structures.
#[cfg(test)]
pub(crate) mod testing {
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
}
