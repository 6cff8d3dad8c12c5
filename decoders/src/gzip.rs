//! The `gzip` filter: serves the decompressed contents of a gzip file (nbdkit-gzip-filter).
//!
//! gzip has no index to seek by, so the whole stream is decompressed on the first open into a
//! hidden temporary file (see [`crate::whole`]). Files of several members (`cat a.gz b.gz`)
//! decompress to their concatenation, as `gzip -d` does.

use std::io::{BufReader, Read};

use nbdforge_api::Registration;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    crate::whole::registration("gzip", "decompress a gzip-compressed plugin (read-only)", decoder)
}

fn decoder(compressed: Box<dyn Read + '_>) -> Box<dyn Read + '_> {
    Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, compressed)))
}
