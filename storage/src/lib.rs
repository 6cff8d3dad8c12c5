//! # nbdforge-storage: the storage under nbdforge's disk formats
//!
//! A disk image lives in a regular file or on a block device. This crate does the I/O on it:
//! open (read-write, falling back to read-only where writing is not permitted), positional reads
//! and writes, `fdatasync`, trim by punching holes, zeroing the cheapest way the file system allows,
//! finding holes with `SEEK_DATA`/`SEEK_HOLE`, keeping data out of the page cache on request, and
//! offering the descriptor for `sendfile`.
//!
//! It knows nothing of NBD. Errors are its own [`Error`], keeping the errno. Holes come as an
//! iterator of [`Run`]s, not into the SDK's `Extents`: a format driver asks about ranges of the
//! image file that are no client's reply, and a server stops pulling runs when its reply is full,
//! so no system call is made for runs nobody will read.
//!
//! It has two kinds of users:
//!
//! - the `file` plugin maps NBD requests one to one onto a [`FileStorage`] and keeps only its
//!   policy (parameters, export names, messages);
//! - a format driver such as qcow2 will map guest offsets to offsets in the image file through its
//!   own metadata, and use the same calls to read and write clusters and metadata, to zero or
//!   discard clusters, and to ask [`FileStorage::allocation`] whether a cluster's data is a hole.
//!
//! All methods take `&self` and use positional I/O, so one `FileStorage` serves many threads.
//!
//! ```
//! use nbdforge_storage::{Allocation, FileStorage};
//!
//! # fn main() -> Result<(), nbdforge_storage::Error> {
//! # let path = std::env::temp_dir().join(format!("nbdforge-storage-doc-{}.img", std::process::id()));
//! # std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
//! let disk = FileStorage::open(&path)?;
//! disk.write_at(b"hello", 4096)?;
//! disk.sync_data()?;
//!
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"hello");
//!
//! // Zero a range without writing zeroes; `None` would mean "write them yourself".
//! if disk.zero(0, 4096, true, false)?.is_none() {
//!     disk.write_at(&[0; 4096], 0)?;
//! }
//!
//! // Where the data is: stop pulling runs when you have enough.
//! for run in disk.allocation(0, disk.size()) {
//!     let run = run?;
//!     let what = if run.allocation == Allocation::Hole { "hole" } else { "data" };
//!     println!("{what}: {} bytes at {}", run.length, run.offset);
//! }
//! # std::fs::remove_file(&path).unwrap();
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod allocation;
mod error;
mod file;
mod sys;

pub use allocation::{Allocation, Run, Runs};
pub use error::{Error, Result};
pub use file::{is_file_or_block_device, AccessPattern, FileStorage, PageCache, ZeroMethod};

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("nbdforge-storage-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        /// A sparse file of `size` bytes in the directory.
        pub(crate) fn file(&self, name: &str, size: u64) -> PathBuf {
            let path = self.0.join(name);
            std::fs::File::create(&path).unwrap().set_len(size).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
