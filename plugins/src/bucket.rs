//! A disk that reads as one byte repeated and forgets what is written to it: the handle of
//! `null` (zeroes, reported as a hole) and `ones` (any other byte, reported as data). Every
//! operation succeeds at once, so both offer everything natively.

use nbdforge_api::{Capabilities, Extents, Flags, Handle, Result};

/// One connection to the bucket.
pub(crate) struct Bucket {
    pub(crate) size: u64,
    /// The byte every read returns.
    pub(crate) byte: u8,
    /// What block status says of every range (`HOLE | ZERO`, or `DATA`).
    pub(crate) kind: u32,
}

impl Handle for Bucket {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities::ALL)
    }

    fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
        buf.fill(self.byte);
        Ok(())
    }

    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }

    fn trim(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }

    fn zero(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        extents.add(offset, count, self.kind)
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}
