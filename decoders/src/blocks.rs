//! Formats with an index of independently compressed blocks (xz, multi-member lzip): the
//! filter reads the index on open, and a read decompresses only the blocks it touches, keeping
//! the last few in a cache per connection. Two parameters bound the memory, as nbdkit's xz
//! filter has them: `NAME-max-block=` refuses files with a larger block (default 512M), and
//! `NAME-max-depth=` is the number of blocks cached (default 8). A connection uses at most
//! their product.
//!
//! A format says how to find its blocks and how to decompress one ([`Format`]); the rest is
//! here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use std::io::Read;

use liblzma::stream::Stream;
use nbdforge_api::{
    parse_int, parse_size, Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    Registration, Result,
};

use crate::source::{corrupt, decode_error};

/// The entry in the server's table of the filter over format `F`.
pub fn registration<F: Format>(description: &str) -> Registration {
    let (name, unit) = (F::NAME, F::UNIT);
    let info = LayerInfo::new(name, description).help(format!(
        "{name}-max-block=<SIZE>  Refuse files with a larger {unit} (default 512M).\n\
         {name}-max-depth=<N>     {unit}s kept decompressed per connection (default 8)."
    ));
    Registration::filter(info, BlockFilter::<F>::default)
}

/// Runs liblzma's `stream` (made for format `F`) over `source`, which must decompress to
/// exactly `size` bytes: what both xz and lzip blocks need.
pub fn run_liblzma<F: Format>(
    stream: std::result::Result<Stream, liblzma::stream::Error>,
    source: impl Read,
    size: u64,
) -> Result<Vec<u8>> {
    let stream = stream.map_err(|e| corrupt(F::NAME, e))?;
    let mut decoder = liblzma::bufread::XzDecoder::new_stream(std::io::BufReader::new(source), stream);
    let mut data = Vec::with_capacity(size as usize);
    (&mut decoder).take(size + 1).read_to_end(&mut data).map_err(|e| decode_error(F::NAME, &e))?;
    Ok(data)
}

/// One independently compressed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Where its data starts in the decompressed export.
    pub offset: u64,
    /// Its decompressed length.
    pub size: u64,
    /// Where its compressed bytes start in the layer below.
    pub start: u64,
    /// Their length.
    pub len: u64,
    /// What else the format needs to decompress it alone (xz: the stream flags).
    pub tag: u16,
}

/// How one format finds and decompresses its blocks.
pub trait Format: Send + Sync + 'static {
    /// The filter's name, and the prefix of its parameters.
    const NAME: &'static str;
    /// What the format calls a block, in messages.
    const UNIT: &'static str;

    /// The blocks of the compressed data in `below` (`size` bytes), in order.
    fn index(below: &dyn Handle, size: u64) -> Result<Vec<Block>>;

    /// The decompressed bytes of `block`, exactly `block.size` of them; `memlimit` bounds what
    /// the decompressor may allocate.
    fn decode(below: &dyn Handle, block: &Block, memlimit: u64) -> Result<Vec<u8>>;
}

/// The filter over one format.
pub struct BlockFilter<F> {
    max_block: u64,
    /// `max_block` as the user wrote it, for messages.
    max_block_text: String,
    max_depth: usize,
    format: std::marker::PhantomData<F>,
}

impl<F> Default for BlockFilter<F> {
    fn default() -> Self {
        BlockFilter {
            max_block: 512 << 20,
            max_block_text: "512M".into(),
            max_depth: 8,
            format: std::marker::PhantomData,
        }
    }
}

impl<F: Format> Layer for BlockFilter<F> {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key.strip_prefix(F::NAME) {
            Some("-max-block") => {
                self.max_block = parse_size(key, value)?;
                self.max_block_text = value.to_string();
                if self.max_block == 0 {
                    return Err(Error::invalid(format!("{key}={value}: must be greater than 0")));
                }
            }
            Some("-max-depth") => {
                self.max_depth = parse_int(key, value)?;
                if self.max_depth == 0 {
                    return Err(Error::invalid(format!("{key}={value}: must be greater than 0")));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<F: Format> Filter for BlockFilter<F> {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(&args.read_only())?;
        let blocks = F::index(&*below, below.get_size()?)?;
        let mut offset = 0u64;
        for (i, b) in blocks.iter().enumerate() {
            if b.offset != offset {
                return Err(Error::new(libc::EIO, format!("{}: {} {i} is not where the index says", F::NAME, F::UNIT)));
            }
            if b.size > self.max_block {
                return Err(Error::new(
                    libc::EFBIG,
                    format!(
                        "{}: {} {i} holds {} bytes, more than {}-max-block={} ({} bytes)",
                        F::NAME,
                        F::UNIT,
                        b.size,
                        F::NAME,
                        self.max_block_text,
                        self.max_block
                    ),
                ));
            }
            offset = offset
                .checked_add(b.size)
                .filter(|&o| o <= nbdforge_api::MAX_SIZE)
                .ok_or_else(|| Error::new(libc::EIO, format!("{}: the index adds up to too much", F::NAME)))?;
        }
        tracing::debug!("{}: {} blocks, {offset} bytes", F::NAME, blocks.len());
        Ok(Box::new(BlockHandle::<F> {
            below,
            blocks,
            size: offset,
            // The decompressor needs its dictionary; a dictionary larger than the block is of no
            // use to it, so a hostile header asking for more than this fails instead.
            memlimit: self.max_block.saturating_add(64 << 20),
            depth: self.max_depth,
            cache: Mutex::new(VecDeque::new()),
            format: std::marker::PhantomData,
        }))
    }
}

/// One connection: the index and the cache of decompressed blocks.
struct BlockHandle<F> {
    below: Box<dyn Handle>,
    blocks: Vec<Block>,
    size: u64,
    memlimit: u64,
    depth: usize,
    /// Most recently used first.
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    format: std::marker::PhantomData<F>,
}

impl<F: Format> BlockHandle<F> {
    /// Block `i` decompressed, from the cache or decoded now.
    fn block(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = cache.iter().position(|(n, _)| *n == i) {
            let entry = cache.remove(at).expect("position is inside");
            let data = entry.1.clone();
            cache.push_front(entry);
            return Ok(data);
        }
        let b = &self.blocks[i];
        let data = F::decode(&*self.below, b, self.memlimit)?;
        if data.len() as u64 != b.size {
            return Err(Error::new(
                libc::EIO,
                format!("{}: {} {i} decompressed to {} bytes, the index says {}", F::NAME, F::UNIT, data.len(), b.size),
            ));
        }
        let data = Arc::new(data);
        cache.truncate(self.depth - 1);
        cache.push_front((i, data.clone()));
        Ok(data)
    }
}

impl<F: Format> Handle for BlockHandle<F> {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn block_size(&self) -> Result<Option<nbdforge_api::BlockSize>> {
        Ok(None)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { multi_conn: true, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.blocks.partition_point(|b| b.offset + b.size <= pos);
            let b = self.blocks.get(i).ok_or_else(|| Error::invalid(format!("read past the end at {pos}")))?;
            let data = self.block(i)?;
            let from = (pos - b.offset) as usize;
            let n = (data.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

/// A little-endian integer of `bytes` (at most 8).
pub fn le(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |v, &b| v << 8 | u64::from(b))
}
