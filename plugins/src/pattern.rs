//! The `pattern` plugin: a read-only disk whose every 8-byte word holds its own offset as a
//! big-endian integer. Clients and filters can check any byte they read against where it came from,
//! which makes the plugin a test fixture for offset bugs.

use nbdforge_api::extents::DATA;
use nbdforge_api::{
    parse_size, Capabilities, Error, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result,
    Support,
};

/// The `pattern` plugin. Configure with `size=` (required).
#[derive(Debug, Default)]
pub struct PatternPlugin {
    size: Option<u64>,
}

impl PatternPlugin {
    /// An unconfigured plugin.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("pattern", "read-only disk where each 8-byte word holds its offset, big-endian")
        .help("[size=]<SIZE>  (required) Virtual size of the disk.")
        .magic("size");
    Registration::plugin(info, PatternPlugin::new)
}

impl Layer for PatternPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = Some(parse_size(key, value)?),
            _ => return Err(Error::invalid(format!("unknown parameter '{key}' (pattern takes only size=)"))),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.size.is_none() {
            return Err(Error::invalid("you must give the size, as size=<SIZE> or a bare SIZE (for example 1G)"));
        }
        Ok(())
    }
}

impl Plugin for PatternPlugin {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let size = self.size.ok_or_else(|| Error::invalid("pattern: size was not set"))?;
        Ok(Box::new(PatternHandle { size }))
    }
}

/// A connection to the pattern disk. Stateless: every byte is computed from its offset.
struct PatternHandle {
    size: u64,
}

/// Fills `buf` with the pattern as it appears from `offset` on.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    // A leading partial word: the bytes of the word containing `offset`, from the right position.
    let skip = (offset % 8) as usize;
    let head = if skip == 0 { 0 } else { (8 - skip).min(buf.len()) };
    let (head_buf, rest) = buf.split_at_mut(head);
    head_buf.copy_from_slice(&(offset - skip as u64).to_be_bytes()[skip..skip + head]);

    let mut word = offset + head as u64;
    let mut words = rest.chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&word.to_be_bytes());
        word += 8;
    }
    let tail = words.into_remainder();
    let tail_len = tail.len();
    tail.copy_from_slice(&word.to_be_bytes()[..tail_len]);
}

impl Handle for PatternHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { multi_conn: true, extents: true, cache: Support::Native, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        fill_pattern(buf, offset);
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        extents.add(offset, count, DATA)
    }

    // Nothing to prefetch: the data is computed.
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::MAX_SIZE;

    /// The pattern byte at `offset`, computed the slow, obvious way.
    fn byte_at(offset: u64) -> u8 {
        (offset & !7).to_be_bytes()[(offset % 8) as usize]
    }

    fn open(size: &str) -> Box<dyn Handle> {
        let mut plugin = PatternPlugin::new();
        plugin.config("size", size).unwrap();
        plugin.config_complete().unwrap();
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn layout_matches_the_documented_dump() {
        let h = open("1M");
        let mut buf = [0u8; 16];
        h.pread(&mut buf, 0x20, Flags::NONE).unwrap();
        assert_eq!(buf, [0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0x28]);
    }

    #[test]
    fn odd_offsets_and_lengths() {
        let h = open("1M");
        for offset in [0u64, 1, 3, 7, 8, 9, 0x12345, 1000 * 8 - 1] {
            for len in [0usize, 1, 2, 5, 7, 8, 9, 15, 16, 17, 100] {
                let mut buf = vec![0xaa; len];
                h.pread(&mut buf, offset, Flags::NONE).unwrap();
                let expected: Vec<u8> = (0..len as u64).map(|i| byte_at(offset + i)).collect();
                assert_eq!(buf, expected, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn end_of_the_largest_disk() {
        let h = open(&MAX_SIZE.to_string());
        let mut buf = [0u8; 13];
        h.pread(&mut buf, MAX_SIZE - 13, Flags::NONE).unwrap();
        let expected: Vec<u8> = (MAX_SIZE - 13..MAX_SIZE).map(byte_at).collect();
        assert_eq!(&buf[..], &expected[..]);
        // Offset ..fff7 is the low byte of word ..fff0; the disk ends one byte short of word ..fff8.
        assert_eq!(buf[5], 0xf0);
        assert_eq!(&buf[6..], &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn read_only_with_data_extents() {
        let h = open("64K");
        let caps = h.capabilities().unwrap();
        assert!(!caps.write && caps.multi_conn && caps.extents);
        assert_eq!(caps.cache, Support::Native);
        let mut e = Extents::new(10, 65536);
        h.extents(65526, 10, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice().len(), 1);
        assert_eq!(e.as_slice()[0].flags, DATA);
    }

    #[test]
    fn size_is_required() {
        let err = PatternPlugin::new().config_complete().unwrap_err();
        assert!(err.message.contains("size"), "{}", err.message);
        assert!(PatternPlugin::new().config("size", "12Q").unwrap_err().message.starts_with("size=12Q"));
    }
}
