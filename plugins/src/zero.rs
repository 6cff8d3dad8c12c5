//! The `zero` plugin: an empty, read-only disk of size 0 that takes no parameters. nbdkit keeps it
//! for old scripts that used it before `null` took a size; it is useful only to test that a client
//! copes with an empty export.

use nbdforge_api::{
    unknown_parameter, Capabilities, Error, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result,
    Support,
};

/// The `zero` plugin. It has no parameters.
#[derive(Debug, Default)]
pub struct ZeroPlugin;

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    Registration::plugin(LayerInfo::new("zero", "an empty disk of size 0"), || ZeroPlugin)
}

impl Layer for ZeroPlugin {
    fn config(&mut self, key: &str, _value: &str) -> Result<bool> {
        Err(unknown_parameter(key))
    }
}

impl Plugin for ZeroPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ZeroHandle))
    }
}

/// A connection to the empty disk.
struct ZeroHandle;

impl Handle for ZeroHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(0)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { multi_conn: true, cache: Support::Native, ..Capabilities::READ_ONLY })
    }

    // The server checks every request against the size, so no read ever arrives.
    fn pread(&self, _buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::io(format!("zero: read at offset {offset} of an empty disk")))
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_read_only_and_takes_no_parameters() {
        let mut plugin = ZeroPlugin;
        assert_eq!(plugin.config("size", "1M").unwrap_err().message, "unknown parameter 'size'");
        plugin.config_complete().unwrap();
        let h = plugin.open(&OpenArgs::local("", false)).unwrap();
        assert_eq!(h.get_size().unwrap(), 0);
        assert!(!h.capabilities().unwrap().write);
        assert!(registration().info.magic_config_key.is_none());
    }
}
