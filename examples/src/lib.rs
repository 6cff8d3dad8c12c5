//! # An example nbdforge plugin: `ramdisk`
//!
//! A complete, small plugin to copy when writing your own. It serves a RAM disk of `size=` bytes
//! that starts all zeroes, accepts writes, and reports which parts were ever written (block status),
//! so `nbdinfo --map` and `qemu-img convert` can skip the rest.
//!
//! The pieces every plugin has:
//!
//! 1. a [`Plugin`] ([`RamDiskPlugin`]), created once per process: it takes the `key=value`
//!    parameters in [`Plugin::config`], checks them in [`Plugin::config_complete`], prepares shared
//!    state in [`Plugin::get_ready`], and returns a handle from [`Plugin::open`] per connection;
//! 2. a [`Handle`] (`RamDiskHandle`), one per client connection: it declares its capabilities
//!    (`can_write`, `can_extents`, ...) and serves the requests. Whatever it does not implement, the
//!    server either refuses or emulates (see the `nbdforge-api` documentation).
//!
//! ## Registering it
//!
//! The built-in plugins are listed in `nbdforge_plugins::lookup`; adding a line there,
//! `"ramdisk" => Box::new(nbdforge_examples::RamDiskPlugin::new())`, makes `nbdforge ramdisk 1G`
//! work. A program of your own can instead hand it straight to the server core:
//!
//! ```ignore
//! let mut stack = nbdforge_server::Stack::new(Box::new(nbdforge_examples::RamDiskPlugin::new()), vec![]);
//! stack.config("size", "1G")?;
//! let backend = stack.finish()?;
//! ```
//!
//! ## Using it directly
//!
//! ```
//! use nbdforge_api::{ClientInfo, Flags, OpenArgs, Plugin};
//! use nbdforge_examples::RamDiskPlugin;
//!
//! let mut plugin = RamDiskPlugin::new();
//! plugin.config("size", "1M").unwrap();
//! plugin.config_complete().unwrap();
//! plugin.get_ready().unwrap();
//! let client = ClientInfo::default();
//! let disk = plugin.open(&OpenArgs { readonly: false, export_name: "", tls: false, client: &client }).unwrap();
//! disk.pwrite(b"hello", 0, Flags::NONE).unwrap();
//! let mut back = [0u8; 5];
//! disk.pread(&mut back, 0, Flags::NONE).unwrap();
//! assert_eq!(&back, b"hello");
//! ```

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{parse_size, Capabilities, Error, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support};

/// The disk is stored in blocks of this many bytes, allocated on first write.
const BLOCK_SIZE: u64 = 4096;

/// The written blocks, by block number. A block that is absent reads as zeroes.
///
/// Every connection sees the same disk, so the map is shared (`Arc`) and guarded by a mutex: the
/// server calls handles from several threads at once, and a plugin that keeps mutable state must
/// protect it itself. One lock is simple and correct; a faster plugin would split it (see the
/// memory plugin's sparse array).
type Blocks = Arc<Mutex<BTreeMap<u64, Box<[u8]>>>>;

/// The `ramdisk` example plugin. Parameters: `size=SIZE` (required; a bare `SIZE` works too).
#[derive(Default)]
pub struct RamDiskPlugin {
    size: Option<u64>,
    blocks: Blocks,
}

impl RamDiskPlugin {
    /// An unconfigured plugin.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Plugin for RamDiskPlugin {
    fn name(&self) -> &'static str {
        "ramdisk"
    }

    fn description(&self) -> &'static str {
        "example RAM disk (nbdforge SDK example)"
    }

    fn config_help(&self) -> &'static str {
        "[size=]<SIZE>  (required) Size of the RAM disk."
    }

    // `nbdforge ramdisk 1G` means `size=1G`.
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            // parse_size understands 512, 64M, 1G, ... and names key and value in its errors.
            "size" => self.size = Some(parse_size(key, value)?),
            // The server prefixes the plugin name: "ramdisk: unknown parameter 'colour'".
            _ => return Err(Error::invalid(format!("unknown parameter '{key}'"))),
        }
        Ok(())
    }

    // Required parameters are checked here, after all of them are in, not in `config`.
    fn config_complete(&mut self) -> Result<()> {
        match self.size {
            Some(_) => Ok(()),
            // As for `config`, the server puts "ramdisk: " in front of the message.
            None => Err(Error::invalid("size=<SIZE> is required")),
        }
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let size = self.size.ok_or_else(|| Error::invalid("ramdisk: size=<SIZE> is required"))?;
        Ok(Box::new(RamDiskHandle { size, blocks: Arc::clone(&self.blocks) }))
    }
}

/// One client connection. It only refers to the shared disk; there is no per-connection state.
struct RamDiskHandle {
    size: u64,
    blocks: Blocks,
}

/// Splits the byte range `[offset, offset + len)` into `(block, offset in block, length)` pieces.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = offset + len as u64;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let in_block = pos % BLOCK_SIZE;
            let n = (BLOCK_SIZE - in_block).min(end - pos);
            let piece = (pos / BLOCK_SIZE, in_block as usize, n as usize);
            pos += n;
            piece
        })
    })
}

impl Handle for RamDiskHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    // Capabilities are off unless a handle says otherwise. This disk takes writes, reports its
    // holes, and lets the server emulate zeroing by writing zeroes. All connections share one
    // disk, so a write on one is seen by reads on the others (multi-conn).
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: true,
            multi_conn: true,
            extents: true,
            zero: Support::Emulate,
            ..Capabilities::READ_ONLY
        })
    }

    // The server has already checked that the range lies inside the disk.
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let blocks = self.blocks.lock().unwrap();
        let mut done = 0;
        for (block, in_block, n) in pieces(offset, buf.len()) {
            let out = &mut buf[done..done + n];
            match blocks.get(&block) {
                Some(data) => out.copy_from_slice(&data[in_block..in_block + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut blocks = self.blocks.lock().unwrap();
        let mut done = 0;
        for (block, in_block, n) in pieces(offset, buf.len()) {
            let data = blocks.entry(block).or_insert_with(|| vec![0; BLOCK_SIZE as usize].into_boxed_slice());
            data[in_block..in_block + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    // Reports runs from `offset` on: written blocks as data, the rest as holes that read as zeroes.
    // Extents merges neighbouring runs with the same flags and clips what lies past the request.
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        let blocks = self.blocks.lock().unwrap();
        let end = offset + count;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let block_end = ((block + 1) * BLOCK_SIZE).min(end);
            let flags = if blocks.contains_key(&block) { DATA } else { HOLE | ZERO };
            extents.add(pos, block_end - pos, flags)?;
            pos = block_end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::{ClientInfo, Extent};

    fn open(size: &str) -> (RamDiskPlugin, Box<dyn Handle>) {
        let mut plugin = RamDiskPlugin::new();
        plugin.config("size", size).unwrap();
        plugin.config_complete().unwrap();
        plugin.get_ready().unwrap();
        let client = ClientInfo::default();
        let handle =
            plugin.open(&OpenArgs { readonly: false, export_name: "", tls: false, client: &client }).unwrap();
        (plugin, handle)
    }

    #[test]
    fn capabilities() {
        let (_plugin, disk) = open("64K");
        assert_eq!(disk.get_size().unwrap(), 65536);
        let caps = disk.capabilities().unwrap();
        assert!(caps.write && caps.extents && caps.multi_conn);
        // Not implemented here, so left to the server: zero is emulated by writing, no trim.
        assert_eq!(caps.zero, Support::Emulate);
        assert!(!caps.trim);
    }

    #[test]
    fn write_then_read_across_blocks() {
        let (_plugin, disk) = open("64K");
        let data: Vec<u8> = (0..5000).map(|i| (i % 200) as u8 + 1).collect();
        disk.pwrite(&data, 4000, Flags::NONE).unwrap();
        let mut back = vec![0u8; 5100];
        disk.pread(&mut back, 3950, Flags::NONE).unwrap();
        assert!(back[..50].iter().all(|&b| b == 0));
        assert!(back[50..5050] == data[..], "written data reads back");
        assert!(back[5050..].iter().all(|&b| b == 0));
    }

    #[test]
    fn connections_share_the_disk() {
        let (plugin, first) = open("64K");
        first.pwrite(b"shared", 10, Flags::NONE).unwrap();
        let client = ClientInfo::default();
        let second =
            plugin.open(&OpenArgs { readonly: false, export_name: "", tls: false, client: &client }).unwrap();
        let mut back = [0u8; 6];
        second.pread(&mut back, 10, Flags::NONE).unwrap();
        assert_eq!(&back, b"shared");
    }

    #[test]
    fn extents_show_written_blocks() {
        let (_plugin, disk) = open("64K");
        disk.pwrite(b"x", 8192 + 5, Flags::NONE).unwrap();
        let mut extents = Extents::new(0, 65536);
        disk.extents(65536, 0, Flags::NONE, &mut extents).unwrap();
        assert_eq!(
            extents.as_slice(),
            &[
                Extent { offset: 0, length: 8192, flags: HOLE | ZERO },
                Extent { offset: 8192, length: 4096, flags: DATA },
                Extent { offset: 12288, length: 53248, flags: HOLE | ZERO },
            ]
        );
    }

    #[test]
    fn size_is_required_and_checked() {
        assert!(RamDiskPlugin::new().config_complete().unwrap_err().message.contains("size"));
        let err = RamDiskPlugin::new().config("size", "12Q").unwrap_err();
        assert!(err.message.starts_with("size=12Q: unknown suffix"), "{}", err.message);
    }
}
