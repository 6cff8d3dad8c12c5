//! The `xz` filter: serves the decompressed contents of an xz file, seeking through its index
//! (nbdkit-xz-filter).
//!
//! An xz file is one or more streams, each a header, blocks, an index of the blocks' sizes and
//! a footer, with zero padding between streams. The streams are found from the end of the file
//! backwards through their footers, and their indexes give every block's place. A block is
//! decompressed alone by handing liblzma a stream of one block: the block's own header and its
//! stream's flags, and an index and footer written for it here, so that liblzma checks the
//! block's size and checksum as it does for any file. See [`crate::blocks`] for the cache and
//! `xz-max-block=`, `xz-max-depth=`.

use std::io::Read;

use liblzma::stream::Stream;
use nbdforge_api::{Handle, Registration, Result};

use crate::blocks::{le, run_liblzma, Block, Format};
use crate::source::{corrupt, read_at, Range};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    crate::blocks::registration::<Xz>("decompress an xz-compressed plugin (read-only)")
}

/// The xz format.
pub struct Xz;

const HEADER_MAGIC: &[u8] = b"\xfd7zXZ\0";
const FOOTER_MAGIC: &[u8] = b"YZ";
/// Stream headers and footers are both this long.
const FRAME: u64 = 12;
/// The largest index read into memory: 1 GiB of blocks at a few bytes each is far less.
const MAX_INDEX: u64 = 64 << 20;

/// Reads a variable-length integer at `*pos` of `buf`.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The blocks of one stream whose footer ends at `end`; returns them (offsets relative to the
/// stream's data) and where the stream starts.
fn stream(below: &dyn Handle, end: u64) -> Result<(Vec<Block>, u64)> {
    let bad = |why: &str| corrupt("xz", format!("{why} (stream ending at byte {end})"));
    if end < 2 * FRAME {
        return Err(bad("file too short for an xz stream"));
    }
    let footer = read_at(below, end - FRAME, FRAME as usize)?;
    if &footer[10..] != FOOTER_MAGIC || crc32fast::hash(&footer[4..10]) as u64 != le(&footer[..4]) {
        return Err(bad("no xz stream footer"));
    }
    let flags = le(&footer[8..10]) as u16;
    let index_len = (le(&footer[4..8]) + 1) * 4;
    if index_len > MAX_INDEX || index_len + 2 * FRAME > end {
        return Err(bad("index size out of range"));
    }
    let index_at = end - FRAME - index_len;
    let index = read_at(below, index_at, index_len as usize)?;
    let body = index.len() - 4;
    if index[0] != 0 || crc32fast::hash(&index[..body]) as u64 != le(&index[body..]) {
        return Err(bad("corrupt index"));
    }
    let mut pos = 1;
    let count = varint(&index[..body], &mut pos).ok_or_else(|| bad("corrupt index"))?;
    let mut blocks = Vec::new();
    let (mut offset, mut start) = (0u64, 0u64);
    for _ in 0..count {
        let unpadded = varint(&index[..body], &mut pos).ok_or_else(|| bad("corrupt index"))?;
        let size = varint(&index[..body], &mut pos).ok_or_else(|| bad("corrupt index"))?;
        let len = unpadded.checked_next_multiple_of(4).ok_or_else(|| bad("corrupt index"))?;
        blocks.push(Block { offset, size, start, len: unpadded, tag: flags });
        offset = offset.checked_add(size).ok_or_else(|| bad("corrupt index"))?;
        start = start.checked_add(len).filter(|&s| s <= index_at).ok_or_else(|| bad("corrupt index"))?;
    }
    if index[pos..body].iter().any(|&b| b != 0) || body - pos >= 4 {
        return Err(bad("corrupt index"));
    }
    let stream_start = index_at.checked_sub(start + FRAME).ok_or_else(|| bad("blocks larger than the file"))?;
    let header = read_at(below, stream_start, FRAME as usize)?;
    if &header[..6] != HEADER_MAGIC || le(&header[6..8]) as u16 != flags {
        return Err(bad("no xz stream header where the index says"));
    }
    for b in &mut blocks {
        b.start += stream_start + FRAME;
    }
    Ok((blocks, stream_start))
}

impl Format for Xz {
    const NAME: &'static str = "xz";
    const UNIT: &'static str = "block";

    fn index(below: &dyn Handle, size: u64) -> Result<Vec<Block>> {
        let mut streams = Vec::new();
        let mut end = size;
        while end > 0 {
            // Stream padding: zero words between and after streams.
            let word = read_at(below, end.saturating_sub(4), 4.min(end) as usize)?;
            if word == [0; 4] {
                end -= 4;
                continue;
            }
            let (blocks, start) = stream(below, end)?;
            streams.push(blocks);
            end = start;
        }
        let mut all = Vec::new();
        let mut offset = 0u64;
        for blocks in streams.into_iter().rev() {
            for mut b in blocks {
                b.offset += offset;
                all.push(b);
            }
            offset = all.last().map_or(offset, |b| b.offset + b.size);
        }
        if all.is_empty() && size > 0 && read_at(below, 0, 1)? == [0] {
            return Err(corrupt("xz", "the file holds only zeroes"));
        }
        Ok(all)
    }

    fn decode(below: &dyn Handle, block: &Block, memlimit: u64) -> Result<Vec<u8>> {
        // A stream of this block alone: header, block, an index of one record, footer.
        let flags = block.tag.to_le_bytes();
        let mut header = HEADER_MAGIC.to_vec();
        header.extend_from_slice(&flags);
        header.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());
        let mut index = vec![0u8, 1];
        put_varint(&mut index, block.len);
        put_varint(&mut index, block.size);
        index.resize(index.len().next_multiple_of(4), 0);
        index.extend_from_slice(&crc32fast::hash(&index).to_le_bytes());
        let mut footer = Vec::with_capacity(FRAME as usize);
        footer.extend_from_slice(&(index.len() as u32 / 4 - 1).to_le_bytes());
        footer.extend_from_slice(&flags);
        let crc = crc32fast::hash(&footer);
        footer.splice(0..0, crc.to_le_bytes());
        footer.extend_from_slice(FOOTER_MAGIC);
        let source = header
            .as_slice()
            // The block's padding sits inside it, before its check: its bytes run to the
            // multiple of 4 past its unpadded size.
            .chain(Range::new(below, block.start, block.start + block.len.next_multiple_of(4)))
            .chain(index.as_slice())
            .chain(footer.as_slice());
        run_liblzma::<Xz>(Stream::new_stream_decoder(memlimit, 0), source, block.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX >> 1] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut pos = 0;
            assert_eq!(varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        assert_eq!(varint(&[0x80; 10], &mut 0), None);
    }
}
