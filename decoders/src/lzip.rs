//! The `lzip` filter: serves the decompressed contents of an lzip file, seeking by member
//! (nbdkit-lzip-filter).
//!
//! An lzip file is one or more members, each a header, an LZMA stream and a trailer that gives
//! the member's decompressed and compressed sizes. The members are found from the end of the
//! file backwards through their trailers; each is a block that decompresses alone (through
//! liblzma's lzip decoder, which checks the trailer's CRC and sizes). `plzip` writes files of
//! many members; a file of one member is one block, and must fit in `lzip-max-block=`. See
//! [`crate::blocks`] for the cache and the parameters.

use liblzma::stream::Stream;
use nbdforge_api::{Handle, Registration, Result};

use crate::blocks::{le, run_liblzma, Block, Format};
use crate::source::{corrupt, read_at, Range};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    crate::blocks::registration::<Lzip>("decompress an lzip-compressed plugin (read-only)")
}

/// The lzip format.
pub struct Lzip;

const MAGIC: &[u8] = b"LZIP";
const HEADER: u64 = 6;
const TRAILER: u64 = 20;

impl Format for Lzip {
    const NAME: &'static str = "lzip";
    const UNIT: &'static str = "member";

    fn index(below: &dyn Handle, size: u64) -> Result<Vec<Block>> {
        let mut members = Vec::new();
        let mut end = size;
        while end > 0 {
            let bad = |why: &str| corrupt("lzip", format!("{why} (member ending at byte {end})"));
            if end < HEADER + TRAILER {
                return Err(bad("too short for an lzip member"));
            }
            let trailer = read_at(below, end - TRAILER, TRAILER as usize)?;
            let data_size = le(&trailer[4..12]);
            let member_size = le(&trailer[12..20]);
            if member_size < HEADER + TRAILER || member_size > end {
                return Err(bad("no lzip trailer"));
            }
            let start = end - member_size;
            let header = read_at(below, start, HEADER as usize)?;
            if &header[..4] != MAGIC || header[4] != 1 {
                return Err(bad("no lzip header where the trailer says"));
            }
            members.push(Block { offset: 0, size: data_size, start, len: member_size, tag: 0 });
            end = start;
        }
        members.reverse();
        let mut offset = 0u64;
        for m in &mut members {
            m.offset = offset;
            offset = offset.saturating_add(m.size);
        }
        Ok(members)
    }

    fn decode(below: &dyn Handle, block: &Block, memlimit: u64) -> Result<Vec<u8>> {
        let source = Range::new(below, block.start, block.start + block.len);
        run_liblzma::<Lzip>(Stream::new_lzip_decoder(memlimit, 0), source, block.size)
    }
}
