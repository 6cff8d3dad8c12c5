//! The `offset` filter: serves `range` bytes of the layer below starting at `offset`
//! (nbdkit-offset-filter).
//!
//! Its policy is only where the window lies and the check that it fits the layer below, done
//! once per connection when the size of the layer below is known; [`Window`] does the shifting.

use std::sync::Arc;

use nbdforge_api::{parse_size, Backend, Error, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result};

use crate::window::Window;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("offset", "serve a byte range of the plugin").help(
        "offset=<OFFSET>  The start offset to serve (default 0).\n\
         range=<LENGTH>   The length of data to serve (default: to the end).",
    );
    Registration::filter(info, OffsetFilter::default)
}

/// The `offset` filter.
#[derive(Debug, Default)]
pub struct OffsetFilter {
    offset: u64,
    range: Option<u64>,
}

impl Layer for OffsetFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "offset" => self.offset = parse_size(key, value)?,
            "range" => self.range = Some(parse_size(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for OffsetFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let real_size = below.get_size()?;
        let size = match self.range {
            Some(range) if self.offset.checked_add(range).is_none_or(|end| end > real_size) => {
                return Err(Error::invalid(format!(
                    "offset+range ({} + {range}) is larger than the size of the layer below ({real_size})",
                    self.offset
                )));
            }
            Some(range) => range,
            None if self.offset > real_size => {
                return Err(Error::invalid(format!(
                    "offset ({}) is larger than the size of the layer below ({real_size})",
                    self.offset
                )));
            }
            None => real_size - self.offset,
        };
        Ok(Box::new(Window::new(below, self.offset, size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};
    use nbdforge_api::Flags;

    #[test]
    fn serves_the_range() {
        let disk = MemDisk::new(4096);
        disk.pwrite(b"0123456789", 1000, Flags::NONE).unwrap();
        let h = open_over(OffsetFilter::default(), &[("offset", "1002"), ("range", "5")], &disk).unwrap();
        assert_eq!(h.get_size().unwrap(), 5);
        let mut buf = [0u8; 5];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"23456");
        let h = open_over(OffsetFilter::default(), &[("offset", "1K")], &disk).unwrap();
        assert_eq!(h.get_size().unwrap(), 3072);
    }

    #[test]
    fn a_window_past_the_end_is_refused() {
        let disk = MemDisk::new(4096);
        let e = open_over(OffsetFilter::default(), &[("offset", "4097")], &disk).err().unwrap();
        assert!(e.message.contains("4097"), "{}", e.message);
        assert!(open_over(OffsetFilter::default(), &[("offset", "4000"), ("range", "97")], &disk).is_err());
        assert!(open_over(OffsetFilter::default(), &[("offset", "4096")], &disk).is_ok());
        let e = OffsetFilter::default().config("offset", "12Q").unwrap_err();
        assert!(e.message.starts_with("offset=12Q: "), "{}", e.message);
    }
}
