//! `-s` over an image imago cannot take as a backing file (one read by [`crate::own`]): the
//! writes land in a sparse temporary file (deleted as soon as it is open), tracked by the set
//! of 64 KiB grains written; a grain not yet written reads from the image. A write covering only part
//! of a grain first copies the rest of it from the image, as a qcow2 overlay copies on write.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use nbdforge_storage::{Allocation, FileStorage};

use crate::file::storage_error;
use crate::image::{Image, Status};

/// The unit of copy-on-write, qemu's default cluster size for the overlay.
const GRAIN: u64 = 64 << 10;

/// The image under `-s`, and what was written over it.
pub struct Overlay {
    base: Box<Image>,
    top: FileStorage,
    /// The grains written in `top` (a set, not a bitmap: its memory follows the writes, not the
    /// size a header claims). Writers hold the lock across copy-on-write.
    written: Mutex<BTreeSet<u64>>,
}

impl Overlay {
    /// An overlay over `base`, in `$TMPDIR` (or /var/tmp, as qemu uses).
    pub fn new(base: Image) -> io::Result<Overlay> {
        let dir = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let path = dir.join(format!("nbdforge-img-snapshot-{}.raw", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let opened = file.set_len(base.size()).and_then(|()| FileStorage::open(&path).map_err(storage_error));
        let _ = std::fs::remove_file(&path);
        Ok(Overlay { top: opened?, written: Mutex::new(BTreeSet::new()), base: Box::new(base) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the grain at `offset` was written, and how far (at most `length`) that goes on.
    fn run(&self, offset: u64, length: u64) -> (bool, u64) {
        let written = self.lock();
        let first = offset / GRAIN;
        let state = written.contains(&first);
        let end = if state {
            let mut next = first + 1;
            while next * GRAIN < offset + length && written.contains(&next) {
                next += 1;
            }
            next * GRAIN
        } else {
            written.range(first..).next().map_or(u64::MAX, |g| g * GRAIN)
        };
        (state, end.min(offset + length) - offset)
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (written, len) = self.run(at, (buf.len() - done) as u64);
            let chunk = &mut buf[done..done + len as usize];
            if written {
                self.top.read_at(chunk, at).map_err(storage_error)?;
            } else {
                self.base.read(chunk, at)?;
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Writes `buf` at `offset`, or zeroes (`None`) over `length` bytes.
    fn put(&self, buf: Option<&[u8]>, offset: u64, length: u64) -> io::Result<()> {
        let mut written = self.lock();
        let size = self.base.size();
        let mut at = offset;
        while at < offset + length {
            let grain = at / GRAIN;
            let start = grain * GRAIN;
            let end = (start + GRAIN).min(size);
            let upto = end.min(offset + length);
            let whole = at == start && upto == end;
            if !written.contains(&grain) && !whole {
                // Copy on write: the grain as the image has it, then the new bytes over it.
                let mut old = vec![0u8; (end - start) as usize];
                self.base.read(&mut old, start)?;
                self.top.write_at(&old, start).map_err(storage_error)?;
            }
            match buf {
                Some(data) => {
                    let from = (at - offset) as usize;
                    self.top.write_at(&data[from..from + (upto - at) as usize], at).map_err(storage_error)?;
                }
                // As in a qcow2 overlay, only whole grains become holes; zeroes in part of a
                // grain are data.
                None => {
                    if !whole || self.top.zero(at, upto - at, true, false).map_err(storage_error)?.is_none() {
                        self.top.write_at(&vec![0u8; (upto - at) as usize], at).map_err(storage_error)?;
                    }
                }
            }
            written.insert(grain);
            at = upto;
        }
        Ok(())
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.put(Some(buf), offset, buf.len() as u64)
    }

    pub fn zero(&self, offset: u64, length: u64) -> io::Result<()> {
        self.put(None, offset, length)
    }

    /// Written grains as the temporary file has them (zeroed ones are holes), the rest as the
    /// image has it.
    pub fn status(&self, offset: u64, length: u64) -> io::Result<(Status, u64)> {
        let (written, len) = self.run(offset, length);
        if !written {
            return self.base.status(offset, len);
        }
        match self.top.allocation(offset, len).next() {
            Some(run) => {
                let run = run.map_err(storage_error)?;
                let status = if run.allocation == Allocation::Data { Status::Data } else { Status::Hole };
                Ok((status, run.length.clamp(1, len)))
            }
            None => Ok((Status::Data, len)),
        }
    }

    /// 1 for what was written, one more than the image's depth for the rest.
    pub fn depth(&self, offset: u64, length: u64) -> io::Result<(u32, u64)> {
        let (written, len) = self.run(offset, length);
        if written {
            return Ok((1, len));
        }
        let (d, l) = self.base.depth(offset, len)?;
        Ok((if d == 0 { 0 } else { d + 1 }, l))
    }
}
