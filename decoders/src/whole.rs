//! Formats without an index (gzip, bzip2): the whole stream is decompressed once, on the first
//! open, into a hidden temporary file in `$TMPDIR` (`/var/tmp` by default), as nbdkit's filters
//! do; every connection then reads that file, with the file sink so that the server can
//! `sendfile` from it. All-zero runs are skipped rather than written, so the file is sparse and
//! its holes are reported as block status.
//!
//! Memory stays bounded whatever the stream holds; the disk space is bounded by
//! `NAME-max-size=` (an nbdforge extension; unlimited by default, as with nbdkit).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use nix::unistd::Whence;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    parse_size, Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer, OpenArgs, ReadSink, Result,
};

use crate::source::{decode_error, Range};

/// Wraps the compressed bytes in the format's decompressor.
pub type Decoder = fn(Box<dyn Read + '_>) -> Box<dyn Read + '_>;

/// The entry in the server's table of the filter `name`, decoding with `decoder`.
pub fn registration(name: &'static str, description: &str, decoder: Decoder) -> nbdforge_api::Registration {
    let info = nbdforge_api::LayerInfo::new(name, description)
        .help(format!("{name}-max-size=<SIZE>  Refuse data larger than this when decompressed (default: no limit)."));
    nbdforge_api::Registration::filter(info, move || WholeFilter::new(name, decoder))
}

/// A filter that decompresses the whole stream of the layer below.
pub struct WholeFilter {
    name: &'static str,
    decoder: Decoder,
    /// `NAME-max-size=`: the bound, and the value as the user wrote it.
    max_size: Option<(u64, String)>,
    /// The decompressed data, made by the first open that succeeds.
    decoded: Mutex<Option<Arc<Decoded>>>,
}

/// The decompressed stream.
struct Decoded {
    file: File,
    size: u64,
}

impl WholeFilter {
    /// The filter `name` decoding with `decoder`.
    pub fn new(name: &'static str, decoder: Decoder) -> Self {
        WholeFilter { name, decoder, max_size: None, decoded: Mutex::new(None) }
    }

    fn decode(&self, below: &dyn Handle) -> Result<Decoded> {
        let name = self.name;
        let compressed = below.get_size()?;
        let mut reader = (self.decoder)(Box::new(Range::new(below, 0, compressed)));
        let file = nbdforge_filters::tempfile::unlinked(name)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = fill(&mut *reader, &mut buf).map_err(|e| decode_error(name, &e))?;
            if n == 0 {
                break;
            }
            if let Some((max, text)) = self.max_size.as_ref().filter(|(max, _)| size + n as u64 > *max) {
                return Err(Error::new(
                    libc::EFBIG,
                    format!("{name}: the data is larger than {name}-max-size={text} ({max} bytes)"),
                ));
            }
            if buf[..n].iter().any(|&b| b != 0) {
                file.write_all_at(&buf[..n], size)
                    .map_err(|e| Error::from_io(format!("{name}: writing the temporary file"), &e))?;
            }
            size += n as u64;
        }
        file.set_len(size).map_err(|e| Error::from_io(format!("{name}: sizing the temporary file"), &e))?;
        Ok(Decoded { file, size })
    }
}

/// Reads until `buf` is full or the stream ends.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Layer for WholeFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key.strip_suffix("-max-size") == Some(self.name) {
            self.max_size = Some((parse_size(key, value)?, value.to_string()));
            return Ok(true);
        }
        Ok(false)
    }
}

impl Filter for WholeFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(&args.read_only())?;
        // Held while decoding, so that clients arriving together decode once.
        let mut decoded = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        let data = match &*decoded {
            Some(d) => d.clone(),
            None => {
                let d = Arc::new(self.decode(&*below)?);
                *decoded = Some(d.clone());
                d
            }
        };
        Ok(Box::new(WholeHandle { below, data }))
    }
}

/// One connection: reads come from the decompressed file.
struct WholeHandle {
    below: Box<dyn Handle>,
    data: Arc<Decoded>,
}

impl Handle for WholeHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.data.size)
    }

    fn block_size(&self) -> Result<Option<nbdforge_api::BlockSize>> {
        Ok(None)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { extents: true, multi_conn: true, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.data.file.read_exact_at(buf, offset).map_err(|e| Error::from_io("reading the temporary file", &e))
    }

    fn read(&self, count: u64, offset: u64, _flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let _ = count;
        sink.file(self.data.file.as_fd(), offset, &[])
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        let end = (offset + count).min(self.data.size);
        let mut pos = extents.next_offset().max(offset);
        while pos < end && !extents.is_full() {
            let data = seek(&self.data.file, pos, Whence::SeekData).unwrap_or(end).min(end);
            if data > pos {
                extents.add(pos, data - pos, HOLE | ZERO)?;
                pos = data;
                continue;
            }
            let hole = seek(&self.data.file, pos, Whence::SeekHole).unwrap_or(end).min(end);
            extents.add(pos, hole.max(pos + 1) - pos, DATA)?;
            pos = hole.max(pos + 1);
        }
        Ok(())
    }
}

/// `lseek` with `SEEK_DATA` or `SEEK_HOLE`; `None` past the last data.
fn seek(file: &File, pos: u64, whence: Whence) -> Option<u64> {
    nix::unistd::lseek(file.as_raw_fd(), pos as i64, whence).ok().map(|r| r as u64)
}
