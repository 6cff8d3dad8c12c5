//! The `full` plugin: a disk that reads as zeroes and has no room for anything. Every write and
//! trim fails with `ENOSPC`, as does zeroing (which the server falls back to doing by writing);
//! a fast zero is refused at once with `ENOTSUP`. It lets a client's disk-full handling be tested
//! without filling a real disk.

use nbdforge_api::extents::{HOLE, ZERO};
use nbdforge_api::{
    parse_size, unknown_parameter, Capabilities, Error, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin,
    Registration, Result, Support,
};

/// The `full` plugin. Configure with `size=` (required).
#[derive(Debug, Default)]
pub struct FullPlugin {
    size: Option<u64>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("full", "a disk that reads as zeroes and fails every write with ENOSPC")
        .help("[size=]<SIZE>  (required) Size of the backing disk.")
        .magic("size");
    Registration::plugin(info, FullPlugin::default)
}

impl Layer for FullPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = Some(parse_size(key, value)?),
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.size.is_none() {
            return Err(Error::invalid("size parameter is required (size=<SIZE>, or a bare SIZE such as 1G)"));
        }
        Ok(())
    }
}

impl Plugin for FullPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(FullHandle { size: self.size.unwrap_or(0) }))
    }
}

/// A connection to the full disk. Stateless.
struct FullHandle {
    size: u64,
}

fn no_space(what: &str, offset: u64) -> Error {
    Error::new(libc::ENOSPC, format!("full: {what} at offset {offset}: no space left on device"))
}

impl Handle for FullHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    /// Writable in name only. Zeroing is "native" only to answer fast zeroes with `ENOTSUP` at
    /// once, as nbdkit does; a plain zero falls back to writing, which fails with `ENOSPC`. No flush
    /// is offered: nothing was ever written that could need one.
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: true,
            trim: true,
            zero: Support::Native,
            fast_zero: true,
            multi_conn: true,
            extents: true,
            cache: Support::Native,
            ..Capabilities::READ_ONLY
        })
    }

    fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn pwrite(&self, _buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        Err(no_space("write", offset))
    }

    fn trim(&self, _count: u64, offset: u64, _flags: Flags) -> Result<()> {
        Err(no_space("trim", offset))
    }

    fn zero(&self, _count: u64, _offset: u64, flags: Flags) -> Result<()> {
        let why = if flags.contains(Flags::FAST_ZERO) { "full: fast zero is not possible" } else { "full: zero" };
        Err(Error::new(libc::ENOTSUP, why))
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        extents.add(offset, count, HOLE | ZERO)
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(size: &str) -> Box<dyn Handle> {
        let mut plugin = FullPlugin::default();
        plugin.config("size", size).unwrap();
        plugin.config_complete().unwrap();
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn reads_zeroes_and_refuses_to_store_anything() {
        let h = open("1M");
        assert_eq!(h.get_size().unwrap(), 1 << 20);
        let mut buf = [0xaa; 512];
        h.pread(&mut buf, 4096, Flags::NONE).unwrap();
        assert_eq!(buf, [0; 512]);
        assert_eq!(h.pwrite(&buf, 0, Flags::NONE).unwrap_err().errno, libc::ENOSPC);
        assert_eq!(h.trim(512, 0, Flags::NONE).unwrap_err().errno, libc::ENOSPC);
        assert_eq!(h.zero(512, 0, Flags::FAST_ZERO).unwrap_err().errno, libc::ENOTSUP);
        let mut e = Extents::new(0, 1 << 20);
        h.extents(1 << 20, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice()[0].flags, HOLE | ZERO);
    }

    #[test]
    fn size_is_required() {
        assert!(FullPlugin::default().config_complete().unwrap_err().message.contains("size"));
        assert!(FullPlugin::default().config("size", "1X").unwrap_err().message.starts_with("size=1X"));
        assert_eq!(FullPlugin::default().config("sise", "1").unwrap_err().message, "unknown parameter 'sise'");
    }
}
