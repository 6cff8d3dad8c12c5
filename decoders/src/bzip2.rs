//! The `bzip2` filter: serves the decompressed contents of a bzip2 file (nbdkit-bzip2-filter).
//!
//! bzip2 has no index to seek by, so the whole stream is decompressed on the first open into a
//! hidden temporary file (see [`crate::whole`]). Concatenated streams (`pbzip2`'s output)
//! decompress to their concatenation, as `bzip2 -d` does.

use std::io::{BufReader, Read};

use nbdforge_api::Registration;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    crate::whole::registration("bzip2", "decompress a bzip2-compressed plugin (read-only)", decoder)
}

fn decoder(compressed: Box<dyn Read + '_>) -> Box<dyn Read + '_> {
    Box::new(bzip2::bufread::MultiBzDecoder::new(BufReader::with_capacity(1 << 20, compressed)))
}
