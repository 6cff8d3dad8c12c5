//! The `checkwrite` filter: turns writes into checks that the data is already there, to test
//! that copying tools copy correctly (nbdkit-checkwrite-filter): `nbdcopy "$uri" "$uri"` through
//! it must succeed, and a tool that writes anything else gets `EIO`.
//!
//! The layer below is opened read-only and never written. A write succeeds, doing nothing, when
//! the layer below already holds its data; zero and trim requests when it already reads as
//! zeroes there (sparseness is not compared). Flush and FUA have nothing to do.

use std::sync::Arc;

use nbdforge_api::{
    Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result, Support,
};

use crate::compare::{first_difference, Expected};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(LayerInfo::new("checkwrite", "check writes match contents of plugin"), || CheckwriteFilter)
}

/// The `checkwrite` filter. It takes no parameters.
#[derive(Debug, Default)]
pub struct CheckwriteFilter;

impl Layer for CheckwriteFilter {}

impl Filter for CheckwriteFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(CheckwriteHandle { next: next.open(&args.read_only())? }))
    }
}

struct CheckwriteHandle {
    next: Box<dyn Handle>,
}

impl CheckwriteHandle {
    fn check(&self, what: &str, count: u64, offset: u64, expected: Expected) -> Result<()> {
        match first_difference(&*self.next, count, offset, expected)? {
            None => Ok(()),
            Some(at) => Err(Error::io(format!(
                "{what} of {count} bytes at offset {offset} does not match the plugin's data (from offset {at})"
            ))),
        }
    }
}

impl Handle for CheckwriteHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: true,
            flush: true,
            trim: true,
            zero: Support::Native,
            fast_zero: true,
            fua: Support::Native,
            ..self.next.capabilities()?
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.check("write", buf.len() as u64, offset, Expected::Bytes(buf))
    }

    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.check("zero", count, offset, Expected::Zeroes)
    }

    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.check("trim", count, offset, Expected::Zeroes)
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn writes_are_checks() {
        let disk = MemDisk::new(8192);
        disk.pwrite(b"data", 100, Flags::NONE).unwrap();
        disk.take_log();
        let h = open_over(CheckwriteFilter, &[], &disk).unwrap();
        assert!(h.capabilities().unwrap().write);
        h.pwrite(b"data", 100, Flags::FUA).unwrap();
        assert_eq!(h.pwrite(b"date", 100, Flags::NONE).unwrap_err().errno, libc::EIO);
        h.zero(4096, 4096, Flags::NONE).unwrap();
        assert_eq!(h.trim(200, 0, Flags::NONE).unwrap_err().errno, libc::EIO);
        assert!(disk.take_log().iter().all(|c| c.starts_with("pread")), "nothing is written below");
    }
}
