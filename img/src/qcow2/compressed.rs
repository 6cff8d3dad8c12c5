//! Compressed clusters: raw deflate (compression type zlib) or one zstd frame (zstd). The stored
//! length in the L2 entry is a bound rounded to sectors, so the input may run past the end of the
//! compressed stream: decoding stops once the cluster is full or the stream ends.

use std::io;

use super::header::Compression;

/// Decompresses `input` into the whole of `out` (one cluster).
pub fn decompress(kind: Compression, input: &[u8], out: &mut [u8]) -> io::Result<()> {
    let produced = match kind {
        Compression::Zlib => inflate(input, out)?,
        Compression::Zstd => unzstd(input, out)?,
    };
    if produced != out.len() {
        return Err(invalid(format!("it holds {produced} bytes, not {}", out.len())));
    }
    Ok(())
}

fn inflate(input: &[u8], out: &mut [u8]) -> io::Result<usize> {
    let mut d = flate2::Decompress::new(false);
    match d.decompress(input, out, flate2::FlushDecompress::Finish) {
        Ok(_) => Ok(d.total_out() as usize),
        Err(e) => Err(invalid(format!("zlib: {e}"))),
    }
}

fn unzstd(input: &[u8], out: &mut [u8]) -> io::Result<usize> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let bad = |e: io::Error| invalid(format!("zstd: {e}"));
    let mut decoder = Decoder::new().map_err(bad)?;
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(out);
    loop {
        let before = (src.pos(), dst.pos());
        let hint = decoder.run(&mut src, &mut dst).map_err(bad)?;
        // 0: the frame is complete; the rest of the input is padding.
        if hint == 0 || dst.pos() == dst.capacity() || (src.pos(), dst.pos()) == before {
            return Ok(dst.pos());
        }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Compresses one cluster the way `kind` stores it (for tests and, later, compressed writes).
#[cfg(test)]
pub fn compress(kind: Compression, data: &[u8]) -> Vec<u8> {
    match kind {
        Compression::Zlib => {
            let mut c = flate2::Compress::new(flate2::Compression::default(), false);
            let mut out = Vec::with_capacity(data.len() + 1024);
            c.compress_vec(data, &mut out, flate2::FlushCompress::Finish).unwrap();
            out
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_with_padding_and_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        for kind in [Compression::Zlib, Compression::Zstd] {
            let mut stored = compress(kind, &data);
            stored.extend_from_slice(&[0u8; 700]);
            let mut out = vec![0u8; data.len()];
            decompress(kind, &stored, &mut out).unwrap();
            assert_eq!(out, data);
            // Truncated: too few bytes come out, which is an error, not a short cluster.
            let cut = &stored[..stored.len() / 4];
            assert!(decompress(kind, cut, &mut out).is_err());
            // Garbage is an error.
            assert!(decompress(kind, &[0xffu8; 512], &mut out).is_err());
            // A stream of the wrong length.
            let short = compress(kind, &data[..1000]);
            assert!(decompress(kind, &short, &mut out).is_err());
        }
    }
}
