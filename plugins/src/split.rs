//! The `split` plugin: several files (`file=` repeated) served as one disk, concatenated in the
//! order given: the pieces of an image cut up by `split(1)`, or a boot sector kept apart from the
//! rest. Each connection opens every file and learns their sizes then; the files must not change
//! size while served. Block status comes from each file's own holes.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    realpath, unknown_parameter, Capabilities, Error, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin,
    ReadSink, Registration, Result, Support,
};
use nbdforge_storage::{Allocation, FileStorage};

/// One `file=` parameter: as given (for messages) and resolved (to open).
#[derive(Debug, Clone)]
struct Piece {
    given: String,
    path: PathBuf,
}

/// The `split` plugin. Configure with one or more `file=`.
#[derive(Debug, Default)]
pub struct SplitPlugin {
    pieces: Vec<Piece>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("split", "concatenates several files into one disk")
        .help("[file=]<FILENAME>  (required) File(s) to serve, in order; repeat file= for each.")
        .magic("file");
    Registration::plugin(info, SplitPlugin::default)
}

impl Layer for SplitPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            // Resolved now: the server may change directory when it goes into the background.
            "file" => self.pieces.push(Piece { given: value.to_string(), path: realpath(key, value)? }),
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.pieces.is_empty() {
            return Err(Error::invalid("at least one file=<FILENAME> parameter is required"));
        }
        Ok(())
    }
}

impl Plugin for SplitPlugin {
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let mut files = Vec::with_capacity(self.pieces.len());
        let mut start = 0u64;
        for piece in &self.pieces {
            let opened =
                if args.readonly { FileStorage::open_read_only(&piece.path) } else { FileStorage::open(&piece.path) };
            let storage = opened.map_err(|e| Error::new(e.errno(), format!("split: {}: {e}", piece.given)))?;
            let size = storage.size();
            files.push(File { storage, name: piece.given.clone(), start });
            start = start.checked_add(size).filter(|&s| s <= nbdforge_api::MAX_SIZE).ok_or_else(|| {
                Error::invalid(format!("split: {}: the files add up to more than 2^63-1 bytes", piece.given))
            })?;
        }
        // Empty files hold no offset: dropping them keeps the lookup simple.
        files.retain(|f| f.storage.size() > 0);
        Ok(Box::new(SplitHandle { files, size: start }))
    }
}

/// One open file and where it begins in the disk.
struct File {
    storage: FileStorage,
    name: String,
    start: u64,
}

impl File {
    fn end(&self) -> u64 {
        self.start + self.storage.size()
    }

    fn error(&self, e: nbdforge_storage::Error) -> Error {
        Error::new(e.errno(), format!("split: {}: {e}", self.name))
    }
}

/// One connection's files, in disk order, none empty.
struct SplitHandle {
    files: Vec<File>,
    size: u64,
}

impl SplitHandle {
    /// Calls `each(file, offset in the file, range of the request)` for every file that `count`
    /// bytes at `offset` touch, in order, until it fails or answers `false` (enough done).
    fn for_pieces(
        &self,
        count: u64,
        offset: u64,
        mut each: impl FnMut(&File, u64, std::ops::Range<usize>) -> Result<bool>,
    ) -> Result<()> {
        let end = offset + count;
        let mut at = offset;
        let mut index = self.files.partition_point(|f| f.end() <= offset);
        while at < end {
            let file =
                self.files.get(index).ok_or_else(|| Error::io(format!("split: offset {at} is past the last file")))?;
            let n = file.end().min(end) - at;
            let done = (at - offset) as usize;
            if !each(file, at - file.start, done..done + n as usize)? {
                break;
            }
            at += n;
            index += 1;
        }
        Ok(())
    }
}

impl Handle for SplitHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    /// Writable when every file is; zeroing is done by writing zeroes, and there is no flush, as
    /// in nbdkit.
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: self.files.iter().all(|f| f.storage.is_writable()),
            zero: Support::Emulate,
            extents: true,
            cache: Support::Native,
            ..Capabilities::READ_ONLY
        })
    }

    /// A read inside one file is offered to the server as that file, to be sent with `sendfile`.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let index = self.files.partition_point(|f| f.end() <= offset);
        if let Some(file) = self.files.get(index) {
            let within = offset - file.start;
            if offset + count <= file.end() && file.storage.can_sendfile(within, count) {
                return sink.file(file.storage.as_fd(), within, &file.storage.holes(within, count));
            }
        }
        self.pread(sink.buffer()?, offset, flags)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.for_pieces(buf.len() as u64, offset, |file, at, range| {
            file.storage.read_at(&mut buf[range], at).map_err(|e| file.error(e))?;
            Ok(true)
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.for_pieces(buf.len() as u64, offset, |file, at, range| {
            file.storage.write_at(&buf[range], at).map_err(|e| file.error(e))?;
            Ok(true)
        })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.for_pieces(count, offset, |file, at, range| {
            let mut runs = file.storage.allocation(at, range.len() as u64);
            while !extents.is_full() {
                let Some(run) = runs.next() else { break };
                let run = run.map_err(|e| file.error(e))?;
                let state = match run.allocation {
                    Allocation::Data => DATA,
                    Allocation::Hole => HOLE | ZERO,
                };
                extents.add(file.start + run.offset, run.length, state)?;
                if flags.contains(Flags::REQ_ONE) {
                    break;
                }
            }
            // When the rest of this file was not described (a full reply, or one run asked
            // for), later files must not be: the runs would leave a gap.
            Ok(extents.next_offset() >= file.end().min(offset + count))
        })
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.for_pieces(count, offset, |file, at, range| {
            file.storage.prefetch(at, range.len() as u64).map_err(|e| file.error(e))?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(name: &str, contents: &[&[u8]]) -> (Dir, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("nbdforge-split-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = dir.join(format!("part{i}"));
                std::fs::File::create(&p).unwrap().write_all(c).unwrap();
                p.display().to_string()
            })
            .collect();
        (Dir(dir), paths)
    }

    fn open(paths: &[String], readonly: bool) -> Box<dyn Handle> {
        let mut plugin = SplitPlugin::default();
        for p in paths {
            plugin.config("file", p).unwrap();
        }
        plugin.config_complete().unwrap();
        plugin.open(&OpenArgs::local("", readonly)).unwrap()
    }

    #[test]
    fn reads_and_writes_cross_file_boundaries() {
        let (_dir, paths) = files("rw", &[b"abc", b"", b"defgh", b"ij"]);
        let h = open(&paths, false);
        assert_eq!(h.get_size().unwrap(), 10);
        let mut buf = [0u8; 10];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"abcdefghij");
        let mut mid = [0u8; 4];
        h.pread(&mut mid, 2, Flags::NONE).unwrap();
        assert_eq!(&mid, b"cdef");
        h.pwrite(b"XYZ", 6, Flags::NONE).unwrap();
        assert_eq!(std::fs::read(&paths[2]).unwrap(), b"defXY");
        assert_eq!(std::fs::read(&paths[3]).unwrap(), b"Zj");
        assert!(h.capabilities().unwrap().write);
        assert!(!open(&paths, true).capabilities().unwrap().write);
    }

    #[test]
    fn extents_cover_every_file() {
        let (_dir, paths) = files("extents", &[&[1; 4096], &[2; 8192]]);
        let h = open(&paths, true);
        let mut e = Extents::new(0, 12288);
        h.extents(12288, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.next_offset(), 12288);
        let mut one = Extents::new(100, 12288);
        h.extents(12188, 100, Flags::REQ_ONE, &mut one).unwrap();
        assert!(one.next_offset() > 100);
    }

    #[test]
    fn missing_files_and_no_files_are_errors() {
        let mut plugin = SplitPlugin::default();
        assert!(plugin.config("file", "/nonexistent/part").unwrap_err().message.starts_with("file=/nonexistent/part"));
        assert!(plugin.config_complete().unwrap_err().message.contains("file="));
    }
}
