//! The `readonly` filter: makes the layer below read-only, always or while a file exists
//! (nbdkit-readonly-filter).
//!
//! Without `readonly-file=` it is `-r` for the layers below it: they are opened read-only and
//! the export is not writable. With it, the export stays writable as the layer below is, and
//! every write, trim and zero first checks whether the file exists: if it does, the request
//! fails with `EPERM`. Creating or removing the file switches protection on or off at run time,
//! for every connection at once.

use std::path::PathBuf;
use std::sync::Arc;

use nbdforge_api::{
    absolute_path, Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration,
    Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("readonly", "make the plugin read-only, or switch it at run time")
        .help("readonly-file=<FILENAME>  Read-only while this file exists (default: always read-only).");
    Registration::filter(info, ReadonlyFilter::default)
}

/// The `readonly` filter.
#[derive(Debug, Default)]
pub struct ReadonlyFilter {
    switch_file: Option<PathBuf>,
}

impl Layer for ReadonlyFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            // Made absolute now: the server may change directory when it goes into the background.
            "readonly-file" => self.switch_file = Some(absolute_path(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for ReadonlyFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        match &self.switch_file {
            None => Ok(Box::new(AlwaysReadonly { next: next.open(&args.read_only())? })),
            Some(file) => Ok(Box::new(Switched { next: next.open(args)?, file: file.clone() })),
        }
    }
}

/// A connection that can never write.
struct AlwaysReadonly {
    next: Box<dyn Handle>,
}

impl Handle for AlwaysReadonly {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { write: false, ..self.next.capabilities()? })
    }
}

/// A connection that may write while `file` does not exist.
struct Switched {
    next: Box<dyn Handle>,
    file: PathBuf,
}

impl Switched {
    fn check(&self) -> Result<()> {
        if self.file.exists() {
            return Err(Error::new(
                libc::EPERM,
                format!("the export is read-only while {} exists", self.file.display()),
            ));
        }
        Ok(())
    }
}

impl Handle for Switched {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.pwrite(buf, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.zero(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn always_read_only_without_a_file() {
        let disk = MemDisk::new(4096);
        let h = open_over(ReadonlyFilter::default(), &[], &disk).unwrap();
        assert!(!h.capabilities().unwrap().write);
    }

    #[test]
    fn the_file_switches_writes_off_and_on() {
        let file = std::env::temp_dir().join(format!("nbdforge-readonly-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let disk = MemDisk::new(4096);
        let h = open_over(ReadonlyFilter::default(), &[("readonly-file", file.to_str().unwrap())], &disk).unwrap();
        assert!(h.capabilities().unwrap().write);
        h.pwrite(b"a", 0, Flags::NONE).unwrap();
        std::fs::write(&file, "").unwrap();
        assert_eq!(h.pwrite(b"b", 0, Flags::NONE).unwrap_err().errno, libc::EPERM);
        assert_eq!(h.zero(1, 0, Flags::NONE).unwrap_err().errno, libc::EPERM);
        assert_eq!(h.trim(1, 0, Flags::NONE).unwrap_err().errno, libc::EPERM);
        std::fs::remove_file(&file).unwrap();
        h.pwrite(b"c", 0, Flags::NONE).unwrap();
        assert_eq!(disk.data.lock().unwrap()[0], b'c');
    }
}
