//! Where a file holds data and where it has holes, found with `SEEK_DATA` and `SEEK_HOLE`: what a
//! server reports as block status, and what a format driver can ask about its own clusters.
//!
//! The answer comes as an iterator of [`Run`]s so that the caller decides when to stop (its reply
//! is full, or one run is enough) and no system call is made past that point.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};
use nix::unistd::{lseek, Whence};

use crate::sys::to_off;
use crate::{Error, Result};

/// What a run of the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Allocated, or not known to be a hole: may hold anything, zeroes included.
    Data,
    /// Not allocated: reads as zeroes.
    Hole,
}

/// A range of the file in one allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Byte offset where the run starts.
    pub offset: u64,
    /// Its length in bytes, at least one.
    pub length: u64,
    /// What it holds.
    pub allocation: Allocation,
}

/// How holes are found in a file, chosen once when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoleSearch {
    /// Block devices, and file systems without `SEEK_DATA`: everything is reported as data.
    Unsupported,
    /// `SEEK_DATA` and `SEEK_HOLE`, exact and cheap on extent-based file systems.
    Exact,
    /// tmpfs, where `SEEK_HOLE` walks every page up to the next hole (often the end of the file)
    /// while `SEEK_DATA` skips holes quickly: sample with `SEEK_DATA` only, every
    /// [`SAMPLE_STEP`] bytes. Holes are reported exactly; a data sample stands for the rest of its
    /// step, so a hole starting inside that step is reported from the next sample on. A run
    /// reported as data may thus end in a hole, which is allowed: "data" promises nothing.
    Sampled,
}

/// Distance between `SEEK_DATA` samples on tmpfs.
pub(crate) const SAMPLE_STEP: u64 = 64 * 1024;
/// At most this many samples per iterator, so one request stays cheap; the caller asks again from
/// where the answer stopped.
pub(crate) const MAX_SAMPLES: usize = 256;

impl HoleSearch {
    pub(crate) fn for_file(file: &File, is_block_device: bool) -> Self {
        if is_block_device || matches!(lseek(file.as_raw_fd(), 0, Whence::SeekData), Err(e) if e != Errno::ENXIO) {
            return HoleSearch::Unsupported;
        }
        match fstatfs(file) {
            Ok(fs) if fs.filesystem_type() == TMPFS_MAGIC => HoleSearch::Sampled,
            _ => HoleSearch::Exact,
        }
    }
}

/// The runs of `[offset, offset + length)`, in order and contiguous, from
/// [`FileStorage::allocation`](crate::FileStorage::allocation). Each `next` makes at most two
/// `lseek` calls. On tmpfs it ends after 256 samples, possibly before the end of the
/// range; after an error it ends.
#[derive(Debug)]
pub struct Runs<'a> {
    fd: BorrowedFd<'a>,
    search: HoleSearch,
    pos: u64,
    end: u64,
    samples_left: usize,
}

impl<'a> Runs<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>, search: HoleSearch, offset: u64, length: u64) -> Self {
        Runs { fd, search, pos: offset, end: offset.saturating_add(length), samples_left: MAX_SAMPLES }
    }

    /// The run at `self.pos`, which is before `self.end`.
    fn run_at_pos(&mut self) -> Result<Run> {
        let (pos, end) = (self.pos, self.end);
        let run = |next: u64, allocation| Run { offset: pos, length: next.min(end) - pos, allocation };
        if self.search == HoleSearch::Unsupported {
            return Ok(run(end, Allocation::Data));
        }
        let fd = self.fd.as_raw_fd();
        let at = to_off(pos).map_err(|e| Error::io("extents", e))?;
        match lseek(fd, at, Whence::SeekData) {
            Ok(data) if data as u64 > pos => Ok(run(data as u64, Allocation::Hole)),
            Ok(_) if self.search == HoleSearch::Sampled => {
                let step_end = (pos / SAMPLE_STEP + 1) * SAMPLE_STEP;
                Ok(run(step_end, Allocation::Data))
            }
            Ok(_) => {
                let hole = lseek(fd, at, Whence::SeekHole).map_err(|e| Error::io("SEEK_HOLE", e))?;
                // SEEK_HOLE is never before pos; an answer of pos would mean a race with a write,
                // so report at least the byte at pos as data.
                Ok(run((hole as u64).max(pos + 1), Allocation::Data))
            }
            // No data after pos: the rest of the range is a hole.
            Err(Errno::ENXIO) => Ok(run(end, Allocation::Hole)),
            Err(e) => Err(Error::io("SEEK_DATA", e)),
        }
    }
}

impl Iterator for Runs<'_> {
    type Item = Result<Run>;

    fn next(&mut self) -> Option<Result<Run>> {
        if self.pos >= self.end {
            return None;
        }
        if self.search == HoleSearch::Sampled {
            if self.samples_left == 0 {
                return None;
            }
            self.samples_left -= 1;
        }
        match self.run_at_pos() {
            Ok(run) => {
                self.pos = run.offset + run.length;
                Some(Ok(run))
            }
            Err(e) => {
                self.pos = self.end;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TempDir;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    /// The runs of a range, neighbours of the same kind merged (as a block status reply merges
    /// them).
    fn merged(runs: Runs<'_>) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        for run in runs {
            let run = run.unwrap();
            match out.last_mut() {
                Some(last) if last.allocation == run.allocation => last.length += run.length,
                _ => out.push(run),
            }
        }
        out
    }

    fn run(offset: u64, length: u64, allocation: Allocation) -> Run {
        Run { offset, length, allocation }
    }

    #[test]
    fn exact_runs_follow_the_data() {
        let dir = TempDir::new();
        let file = File::options().read(true).write(true).open(dir.file("exact.img", 4 << 20)).unwrap();
        assert_eq!(HoleSearch::for_file(&file, false), HoleSearch::Exact, "the test needs SEEK_HOLE");
        file.write_all_at(&vec![0xab; 1 << 20], 1 << 20).unwrap();
        let runs: Vec<Run> = Runs::new(file.as_fd(), HoleSearch::Exact, 0, 4 << 20).collect::<Result<_>>().unwrap();
        assert_eq!(
            runs,
            [
                run(0, 1 << 20, Allocation::Hole),
                run(1 << 20, 1 << 20, Allocation::Data),
                run(2 << 20, 2 << 20, Allocation::Hole)
            ]
        );
        // Runs are clipped to the range asked about.
        let runs: Vec<Run> =
            Runs::new(file.as_fd(), HoleSearch::Exact, 512 << 10, 1 << 20).collect::<Result<_>>().unwrap();
        assert_eq!(runs, [run(512 << 10, 512 << 10, Allocation::Hole), run(1 << 20, 512 << 10, Allocation::Data)]);
        // Without hole search everything is data.
        let runs: Vec<Run> =
            Runs::new(file.as_fd(), HoleSearch::Unsupported, 100, 1000).collect::<Result<_>>().unwrap();
        assert_eq!(runs, [run(100, 1000, Allocation::Data)]);
    }

    #[test]
    fn sampled_runs_report_holes_exactly_and_data_by_step() {
        let dir = TempDir::new();
        let path = dir.file("sampled.img", 1 << 20);
        let file = File::options().read(true).write(true).open(&path).unwrap();
        file.write_all_at(&[1; 4096], 256 << 10).unwrap();
        assert_eq!(
            merged(Runs::new(file.as_fd(), HoleSearch::Sampled, 0, 1 << 20)),
            [
                run(0, 256 << 10, Allocation::Hole),
                run(256 << 10, SAMPLE_STEP, Allocation::Data),
                run((256 << 10) + SAMPLE_STEP, (768 << 10) - SAMPLE_STEP, Allocation::Hole),
            ]
        );
        // One iterator does a bounded amount of work and says how far it got.
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&vec![1; 32 << 20], 0).unwrap();
        assert_eq!(
            merged(Runs::new(file.as_fd(), HoleSearch::Sampled, 0, 64 << 20)),
            [run(0, MAX_SAMPLES as u64 * SAMPLE_STEP, Allocation::Data)]
        );
    }

    #[test]
    fn tmpfs_files_use_sampling() {
        let path = std::path::Path::new("/dev/shm").join(format!("nbdforge-storage-test-{}.img", std::process::id()));
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let file = File::open(&path).unwrap();
        let on_tmpfs = fstatfs(&file).unwrap().filesystem_type() == TMPFS_MAGIC;
        let search = HoleSearch::for_file(&file, false);
        std::fs::remove_file(&path).unwrap();
        assert!(on_tmpfs, "/dev/shm is expected to be tmpfs on Linux");
        assert_eq!(search, HoleSearch::Sampled);
    }
}
