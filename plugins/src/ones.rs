//! The `ones` plugin: every byte reads as 0xff, or as the byte `byte=` names, and writes vanish.
//! Where `null` is a disk of zeroes, this is a fully allocated disk of something else: clients
//! that skip zeroes (sparse copies, zero detection) cannot skip any of it.

use nbdforge_api::extents::DATA;
use nbdforge_api::{
    parse_int, parse_size, unknown_parameter, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result,
};

use crate::bucket::Bucket;

/// The `ones` plugin. Configure with optional `size=` (default 0) and `byte=` (default 0xff).
#[derive(Debug)]
pub struct OnesPlugin {
    size: u64,
    byte: u8,
}

impl Default for OnesPlugin {
    fn default() -> Self {
        OnesPlugin { size: 0, byte: 0xff }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ones", "a disk of 0xff bytes, or any other repeated byte; writes are discarded")
        .help(
            "byte=<BYTE>             Repeating byte to use (default: 0xff).\n\
             [size=]<SIZE>           Size of the disk (default: 0).",
        )
        .magic("size");
    Registration::plugin(info, OnesPlugin::default)
}

impl Layer for OnesPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = parse_size(key, value)?,
            "byte" => self.byte = parse_int::<u8>(key, value)?,
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }
}

impl Plugin for OnesPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(Bucket { size: self.size, byte: self.byte, kind: DATA }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Flags;

    fn open(params: &[(&str, &str)]) -> Box<dyn Handle> {
        let mut plugin = OnesPlugin::default();
        for (k, v) in params {
            plugin.config(k, v).unwrap();
        }
        plugin.config_complete().unwrap();
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn defaults_to_an_empty_disk_of_ones() {
        assert_eq!(open(&[]).get_size().unwrap(), 0);
        let h = open(&[("size", "1M")]);
        let mut buf = [0u8; 100];
        h.pread(&mut buf, 17, Flags::NONE).unwrap();
        assert_eq!(buf, [0xff; 100]);
    }

    #[test]
    fn byte_in_any_base_and_writes_vanish() {
        for (text, byte) in [("0x55", 0x55), ("0125", 0o125), ("7", 7), ("0", 0)] {
            let h = open(&[("size", "4K"), ("byte", text)]);
            h.pwrite(&[1; 512], 0, Flags::FUA).unwrap();
            h.zero(4096, 0, Flags::NONE).unwrap();
            let mut buf = [1u8; 4096];
            h.pread(&mut buf, 0, Flags::NONE).unwrap();
            assert!(buf.iter().all(|&b| b == byte), "byte={text}");
        }
    }

    #[test]
    fn bad_byte_names_parameter_and_value() {
        let mut p = OnesPlugin::default();
        assert_eq!(p.config("byte", "256").unwrap_err().message, "byte=256: number is out of range");
        assert!(p.config("byte", "-1").unwrap_err().message.starts_with("byte=-1:"));
        assert!(p.config("byte", "ff").unwrap_err().message.starts_with("byte=ff:"));
    }
}
