//! Reading the compressed bytes: a `std::io::Read` over a range of the layer below, so that the
//! decompressors of the crates (which all take a reader) can pull from a plugin, and errors that
//! say what went wrong as the filter's errors (`EIO` for corrupt data, never a panic).

use std::io::{self, Read};

use nbdforge_api::{Error, Flags, Handle, Result};

/// How much one read asks of the layer below.
const CHUNK: u64 = 1 << 20;

/// Bytes `pos..end` of the layer below, read in order.
pub struct Range<'a> {
    below: &'a dyn Handle,
    pos: u64,
    end: u64,
}

impl<'a> Range<'a> {
    /// Reads `start..end` of `below`.
    pub fn new(below: &'a dyn Handle, start: u64, end: u64) -> Self {
        Range { below, pos: start, end }
    }
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64).min(CHUNK) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.below
            .pread(&mut buf[..n], self.pos, Flags::NONE)
            .map_err(|e| io::Error::from_raw_os_error(if e.errno == 0 { libc::EIO } else { e.errno }))?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Exactly `len` bytes at `offset` of `below` (for headers and indexes, which are small).
pub fn read_at(below: &dyn Handle, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; len];
    below.pread(&mut buf, offset, Flags::NONE)?;
    Ok(buf)
}

/// A decompressor's error as the filter's: what the layer below failed with keeps its errno,
/// anything else is corrupt data (`EIO`), with `what` and the decoder's message.
pub fn decode_error(what: &str, e: &io::Error) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::new(errno, format!("{what}: reading the layer below: {e}")),
        None => Error::new(libc::EIO, format!("{what}: corrupt data: {e}")),
    }
}

/// Corrupt or unsupported input found while reading a header or an index.
pub fn corrupt(what: &str, why: impl std::fmt::Display) -> Error {
    Error::new(libc::EIO, format!("{what}: {why}"))
}
