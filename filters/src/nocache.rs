//! The `nocache` filter: changes how the export answers cache (prefetch) requests, to measure
//! what they are worth (nbdkit-nocache-filter).
//!
//! `cachemode=none` (the default) does not offer `NBD_CMD_CACHE`; `emulate` offers it and has the
//! server read the range and throw the data away, whatever the layer below could do; `nop`
//! offers it and does nothing.

use std::sync::Arc;

use nbdforge_api::{
    parse_choice, Backend, Capabilities, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
    Support,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("nocache", "disable cache requests")
        .help("cachemode=<MODE>  One of 'none' (default), 'emulate', 'nop'.");
    Registration::filter(info, NocacheFilter::default)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum CacheMode {
    #[default]
    None,
    Emulate,
    Nop,
}

/// The `nocache` filter.
#[derive(Debug, Default)]
pub struct NocacheFilter {
    mode: CacheMode,
}

impl Layer for NocacheFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "cachemode" => {
                self.mode = match parse_choice(key, value, &["none", "emulate", "nop"])? {
                    "none" => CacheMode::None,
                    "emulate" => CacheMode::Emulate,
                    _ => CacheMode::Nop,
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for NocacheFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(NocacheHandle { next: next.open(args)?, mode: self.mode }))
    }
}

struct NocacheHandle {
    next: Box<dyn Handle>,
    mode: CacheMode,
}

impl Handle for NocacheHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let cache = match self.mode {
            CacheMode::None => Support::None,
            // The server's emulation reads through this filter, never calling `cache` below.
            CacheMode::Emulate => Support::Emulate,
            CacheMode::Nop => Support::Native,
        };
        Ok(Capabilities { cache, ..self.next.capabilities()? })
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        // Only reached in nop mode: the other modes do not offer cache natively.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn modes() {
        let disk = MemDisk::new(4096);
        let cache = |mode: &str| {
            open_over(NocacheFilter::default(), &[("cachemode", mode)], &disk).unwrap().capabilities().unwrap().cache
        };
        assert_eq!(cache("none"), Support::None);
        assert_eq!(cache("emulate"), Support::Emulate);
        let h = open_over(NocacheFilter::default(), &[("cachemode", "nop")], &disk).unwrap();
        h.cache(4096, 0, Flags::NONE).unwrap();
        assert!(disk.take_log().is_empty(), "nop mode sends nothing below");
        let e = NocacheFilter::default().config("cachemode", "all").unwrap_err();
        assert!(e.message.starts_with("cachemode=all: "));
    }
}
