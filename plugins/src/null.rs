//! The `null` plugin: a bit bucket. Writes vanish, reads return zeroes, and the disk is as large
//! as `size=` says (0 by default). Useful to measure the server itself and to probe filters.

use nbdforge_api::extents::{HOLE, ZERO};
use nbdforge_api::{parse_size, Error, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result};

use crate::bucket::Bucket;

/// The `null` plugin. Configure with an optional `size=`.
#[derive(Debug, Default)]
pub struct NullPlugin {
    size: u64,
}

impl NullPlugin {
    /// A zero-sized null disk until `size=` says otherwise.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("null", "discards writes and reads back zeroes")
        .help("[size=]<SIZE>  Virtual size of the disk (default: 0).")
        .magic("size");
    Registration::plugin(info, NullPlugin::new)
}

impl Layer for NullPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = parse_size(key, value)?,
            _ => return Err(Error::invalid(format!("unknown parameter '{key}' (null takes only size=)"))),
        }
        Ok(true)
    }
}

impl Plugin for NullPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(Bucket { size: self.size, byte: 0, kind: HOLE | ZERO }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::{Capabilities, Extent, Extents, Flags};

    fn open(plugin: &NullPlugin) -> Box<dyn Handle> {
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn default_size_is_zero() {
        let mut plugin = NullPlugin::new();
        plugin.config_complete().unwrap();
        assert_eq!(open(&plugin).get_size().unwrap(), 0);
    }

    #[test]
    fn writes_vanish_reads_are_zero() {
        let mut plugin = NullPlugin::new();
        plugin.config("size", "1G").unwrap();
        let h = open(&plugin);
        assert_eq!(h.get_size().unwrap(), 1 << 30);
        assert_eq!(h.capabilities().unwrap(), Capabilities::ALL);
        h.pwrite(&[0xff; 4096], 0, Flags::FUA).unwrap();
        let mut buf = [0xee; 4096];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(buf, [0; 4096]);
        h.zero(1 << 30, 0, Flags::FAST_ZERO).unwrap();
        h.trim(1 << 30, 0, Flags::NONE).unwrap();
        h.flush(Flags::NONE).unwrap();
        let mut e = Extents::new(4096, 1 << 30);
        h.extents((1 << 30) - 4096, 4096, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice(), &[Extent { offset: 4096, length: (1 << 30) - 4096, flags: HOLE | ZERO }]);
    }

    #[test]
    fn bad_size_names_key_and_value() {
        let err = NullPlugin::new().config("size", "12Q").unwrap_err();
        assert!(err.message.starts_with("size=12Q: unknown suffix"), "{}", err.message);
    }
}
