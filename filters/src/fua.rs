//! The `fua` filter: changes how Forced Unit Access and flushes are handled, to make writes
//! faster (unsafely) or to test fallbacks and compare costs (nbdkit-fua-filter).
//!
//! `fuamode=` is one of:
//! - `none` (the default): FUA is not offered; flushes pass;
//! - `emulate`: FUA is offered and done by a flush after the write (the server's emulation);
//! - `native`: FUA is offered as native and passed down (the layer below emulates it if needed);
//! - `force`: every write is FUA, and flush does nothing (write-through);
//! - `pass`: nothing changes;
//! - `discard`: FUA is dropped and flush does nothing: fast, and data is lost on a crash.
//!
//! A mode needing what the layer below lacks (a flush for `emulate`, FUA for `native` and
//! `force`) refuses the connection, unless it is read-only and writes cannot happen.

use std::sync::Arc;

use nbdforge_api::{
    parse_choice, Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration,
    Result, Support,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("fua", "modify the handling of FUA and flush")
        .help("fuamode=<MODE>  One of 'none' (default), 'emulate', 'native', 'force', 'pass', 'discard'.");
    Registration::filter(info, FuaFilter::default)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum FuaMode {
    #[default]
    None,
    Emulate,
    Native,
    Force,
    Pass,
    Discard,
}

/// The `fua` filter.
#[derive(Debug, Default)]
pub struct FuaFilter {
    mode: FuaMode,
}

const MODES: [(&str, FuaMode); 6] = [
    ("none", FuaMode::None),
    ("emulate", FuaMode::Emulate),
    ("native", FuaMode::Native),
    ("force", FuaMode::Force),
    ("pass", FuaMode::Pass),
    ("discard", FuaMode::Discard),
];

impl Layer for FuaFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "fuamode" {
            return Ok(false);
        }
        let names: Vec<&str> = MODES.iter().map(|(n, _)| *n).collect();
        let name = parse_choice(key, value, &names)?;
        self.mode = MODES.iter().find(|(n, _)| *n == name).map(|(_, m)| *m).unwrap_or_default();
        Ok(true)
    }
}

impl Filter for FuaFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let caps = below.capabilities()?;
        if !args.readonly && caps.write {
            let lacking = match self.mode {
                FuaMode::Emulate if !caps.flush => Some("emulate' needs flush"),
                FuaMode::Native if caps.fua == Support::None => Some("native' needs FUA"),
                FuaMode::Force if caps.fua == Support::None => Some("force' needs FUA"),
                _ => None,
            };
            if let Some(what) = lacking {
                return Err(Error::invalid(format!("fuamode '{what} support from the layer below")));
            }
        }
        Ok(Box::new(FuaHandle { next: below, mode: self.mode }))
    }
}

struct FuaHandle {
    next: Box<dyn Handle>,
    mode: FuaMode,
}

impl FuaHandle {
    /// The flags a write-like request goes down with.
    fn flags(&self, flags: Flags) -> Flags {
        match self.mode {
            FuaMode::Force => flags | Flags::FUA,
            FuaMode::Discard => flags.without(Flags::FUA),
            // In emulate mode the server has already turned FUA into a flush after the request.
            _ => flags,
        }
    }
}

impl Handle for FuaHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let below = self.next.capabilities()?;
        let (fua, flush) = match self.mode {
            FuaMode::None => (Support::None, below.flush),
            FuaMode::Emulate => (Support::Emulate, below.flush),
            FuaMode::Native => (Support::Native, below.flush),
            // Flush is a no-op here, so it can be offered whatever the layer below does.
            FuaMode::Force | FuaMode::Discard => (Support::Native, true),
            FuaMode::Pass => (below.fua, below.flush),
        };
        Ok(Capabilities { fua, flush, ..below })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.next.pwrite(buf, offset, self.flags(flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.next.trim(count, offset, self.flags(flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.next.zero(count, offset, self.flags(flags))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        match self.mode {
            // Every write was already durable (force), or durability is given up (discard).
            FuaMode::Force | FuaMode::Discard => Ok(()),
            _ => self.next.flush(flags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    fn filter(mode: &str, disk: &MemDisk) -> Result<Box<dyn Handle>> {
        open_over(FuaFilter::default(), &[("fuamode", mode)], disk)
    }

    #[test]
    fn modes() {
        let disk = MemDisk::new(4096);
        assert_eq!(filter("none", &disk).unwrap().capabilities().unwrap().fua, Support::None);
        assert_eq!(filter("emulate", &disk).unwrap().capabilities().unwrap().fua, Support::Emulate);

        let h = filter("force", &disk).unwrap();
        h.pwrite(b"x", 0, Flags::NONE).unwrap();
        h.zero(512, 0, Flags::MAY_TRIM).unwrap();
        h.flush(Flags::NONE).unwrap();
        assert_eq!(disk.take_log(), ["pwrite 0+1 1", "zero 0+512 3"]);

        let h = filter("discard", &disk).unwrap();
        h.pwrite(b"x", 0, Flags::FUA).unwrap();
        h.trim(512, 0, Flags::FUA).unwrap();
        h.flush(Flags::NONE).unwrap();
        assert_eq!(disk.take_log(), ["pwrite 0+1 0", "trim 0+512 0"]);

        let h = filter("pass", &disk).unwrap();
        h.pwrite(b"x", 0, Flags::FUA).unwrap();
        h.flush(Flags::NONE).unwrap();
        assert_eq!(disk.take_log(), ["pwrite 0+1 1", "flush 0+0 0"]);
    }

    #[test]
    fn modes_the_layer_below_cannot_back_are_refused() {
        let disk = MemDisk {
            caps: Capabilities { flush: false, fua: Support::None, ..Capabilities::ALL },
            ..MemDisk::new(512)
        };
        assert!(filter("emulate", &disk).is_err());
        assert!(filter("native", &disk).is_err());
        assert!(filter("force", &disk).is_err());
        assert!(filter("discard", &disk).unwrap().capabilities().unwrap().flush);
        assert!(FuaFilter::default().config("fuamode", "often").unwrap_err().message.starts_with("fuamode=often: "));
    }
}
