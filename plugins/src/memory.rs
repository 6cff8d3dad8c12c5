//! The `memory` plugin: a RAM disk shared by every client, initially all zeroes and gone when the
//! server exits.
//!
//! This file holds only the policy: parameters, capabilities and how each request maps onto the
//! storage. The storage itself is a [`SparseArray`] (default: pages allocated on first write, so
//! the disk may be as large as 2^63-1 bytes) or a flat buffer (`allocator=malloc`: one
//! allocation of the whole size, simpler and without per-page lookups).
//!
//! The data plugin serves its disk from the same storage, through `ram_disk` and
//! `ram_disk_handle`, with the same `allocator=` parameter.

use std::sync::Arc;

use nbdforge_api::extents::DATA;
use nbdforge_api::{
    parse_bool, parse_size, Capabilities, Error, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, ReadSink,
    Registration, Result,
};

use crate::flat_buffer::FlatBuffer;
use crate::sparse_array::SparseArray;

/// How the disk's bytes are held, as chosen by `allocator=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allocator {
    Sparse,
    Malloc { mlock: bool },
}

/// The storage, shared by all connections.
pub(crate) enum Storage {
    Sparse(SparseArray),
    Flat(FlatBuffer),
}

/// The `memory` plugin. Configure with `size=` (required) and `allocator=`.
pub struct MemoryPlugin {
    size: Option<u64>,
    allocator: Allocator,
    storage: Option<Arc<Storage>>,
}

impl Default for MemoryPlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryPlugin {
    /// An unconfigured plugin.
    pub fn new() -> Self {
        MemoryPlugin { size: None, allocator: Allocator::Sparse, storage: None }
    }

    /// Pages the sparse allocator holds now (`None` with `allocator=malloc` or before `get_ready`).
    /// Lets tests check that trimming gives memory back.
    pub fn allocated_pages(&self) -> Option<usize> {
        match self.storage.as_deref() {
            Some(Storage::Sparse(array)) => Some(array.allocated_pages()),
            _ => None,
        }
    }
}

/// Parses `sparse`, `malloc` or `malloc,mlock=BOOL`.
pub(crate) fn parse_allocator(value: &str) -> Result<Allocator> {
    let mut parts = value.split(',');
    let name = parts.next().unwrap_or_default();
    let options: Vec<&str> = parts.collect();
    let refuse = |why: String| Error::invalid(format!("allocator={value}: {why}"));
    match name {
        "sparse" => match options.as_slice() {
            [] => Ok(Allocator::Sparse),
            _ => Err(refuse("the sparse allocator takes no options".into())),
        },
        "malloc" => {
            let mut mlock = false;
            for option in options {
                match option.split_once('=') {
                    Some(("mlock", flag)) => mlock = parse_bool("mlock", flag)?,
                    _ => return Err(refuse(format!("unknown malloc option '{option}' (only mlock=true|false)"))),
                }
            }
            Ok(Allocator::Malloc { mlock })
        }
        "zstd" => Err(refuse("the zstd allocator is not available in nbdforge; use sparse or malloc".into())),
        _ => Err(refuse("unknown allocator (use sparse or malloc)".into())),
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("memory", "RAM disk, all zeroes at start, discarded at exit")
        .help(
            "[size=]<SIZE>                      (required) Virtual size of the disk, up to 2^63-1 bytes.\n\
             allocator=sparse|malloc[,mlock=true] How data is stored (default: sparse).",
        )
        .magic("size");
    Registration::plugin(info, MemoryPlugin::new)
}

impl Layer for MemoryPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "size" => self.size = Some(parse_size(key, value)?),
            "allocator" => self.allocator = parse_allocator(value)?,
            _ => return Err(Error::invalid(format!("unknown parameter '{key}' (memory takes size= and allocator=)"))),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.size.is_none() {
            return Err(Error::invalid("you must give the size, as size=<SIZE> or a bare SIZE (for example 1G)"));
        }
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("mlock".into(), "yes".into())]
    }
}

/// An all-zero RAM disk of `size` bytes, held as `allocator` says.
pub(crate) fn ram_disk(allocator: Allocator, size: u64) -> Result<Arc<Storage>> {
    let storage = match allocator {
        Allocator::Sparse => Storage::Sparse(SparseArray::new()),
        Allocator::Malloc { mlock } => Storage::Flat(
            FlatBuffer::new(size, mlock)
                .map_err(|why| Error::new(libc::ENOMEM, format!("allocator=malloc, size={size}: {why}")))?,
        ),
    };
    Ok(Arc::new(storage))
}

/// A connection to a RAM disk of `size` bytes.
pub(crate) fn ram_disk_handle(storage: Arc<Storage>, size: u64) -> Box<dyn Handle> {
    Box::new(MemoryHandle { storage, size })
}

impl Plugin for MemoryPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let size = self.size.ok_or_else(|| Error::invalid("size was not set"))?;
        self.storage = Some(ram_disk(self.allocator, size)?);
        Ok(())
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let storage = self.storage.clone().ok_or_else(|| Error::invalid("memory: opened before get_ready"))?;
        Ok(ram_disk_handle(storage, self.size.unwrap_or(0)))
    }
}

/// One connection to the RAM disk. All connections share the storage, which does its own locking.
struct MemoryHandle {
    storage: Arc<Storage>,
    size: u64,
}

impl Handle for MemoryHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities::ALL)
    }

    /// Reads lend the pages themselves, read-locked, so the server sends them without a copy.
    /// Freed pages go back to the kernel, never to the heap, so they may be lent by reference.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if let Storage::Sparse(array) = &*self.storage {
            let mut result = Ok(());
            if array.read_borrowed(offset, count, &mut |parts| result = sink.borrowed_pages(parts)) {
                return result;
            }
        }
        // A flat buffer has no locks to keep a slice stable while it is sent.
        self.pread(sink.buffer()?, offset, flags)
    }

    fn prefetch(&self, count: u64, offset: u64) {
        if let Storage::Sparse(array) = &*self.storage {
            array.prefetch(offset, count);
        }
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        match &*self.storage {
            Storage::Sparse(array) => array.read(buf, offset),
            Storage::Flat(flat) => flat.read(buf, offset),
        }
        Ok(())
    }

    // FUA needs nothing: RAM is as durable as this disk gets.
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        match &*self.storage {
            Storage::Sparse(array) => array.write(buf, offset),
            Storage::Flat(flat) => {
                flat.write(buf, offset);
                Ok(())
            }
        }
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }

    // Trimmed bytes read back as zeroes, which frees the same memory a zero does.
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.zero(count, offset, flags)
    }

    // Zeroing is always at least as fast as writing here, so FAST_ZERO needs no special case.
    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        match &*self.storage {
            Storage::Sparse(array) => array.zero(count, offset),
            Storage::Flat(flat) => flat.zero(count, offset),
        }
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        match &*self.storage {
            Storage::Sparse(array) => array.extents(count, offset, flags.contains(Flags::REQ_ONE), extents),
            Storage::Flat(_) => extents.add(offset, count, DATA),
        }
    }

    // The data is already in RAM.
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::extents::{HOLE, ZERO};
    use nbdforge_api::{Extent, MAX_SIZE};

    fn configured(params: &[(&str, &str)]) -> Result<MemoryPlugin> {
        let mut plugin = MemoryPlugin::new();
        for (key, value) in params {
            plugin.config(key, value)?;
        }
        plugin.config_complete()?;
        plugin.get_ready()?;
        Ok(plugin)
    }

    fn open(plugin: &MemoryPlugin) -> Box<dyn Handle> {
        plugin.open(&OpenArgs::local("", false)).unwrap()
    }

    #[test]
    fn capabilities() {
        let plugin = configured(&[("size", "1M")]).unwrap();
        let h = open(&plugin);
        assert_eq!(h.get_size().unwrap(), 1 << 20);
        assert_eq!(h.capabilities().unwrap(), Capabilities::ALL);
        assert_eq!(plugin.thread_model(), nbdforge_api::ThreadModel::Parallel);
        assert_eq!(registration().info.magic_config_key.as_deref(), Some("size"));
    }

    #[test]
    fn four_exabytes_last_sector() {
        let plugin = configured(&[("size", "4E")]).unwrap();
        let h = open(&plugin);
        let last = (1u64 << 62) - 512;
        h.pwrite(&[0x5a; 512], last, Flags::FUA).unwrap();
        let mut back = [0u8; 512];
        h.pread(&mut back, last, Flags::NONE).unwrap();
        assert_eq!(back, [0x5a; 512]);
        assert_eq!(plugin.allocated_pages(), Some(1));
        let mut e = Extents::new(0, 1 << 62);
        h.extents(1 << 62, 0, Flags::NONE, &mut e).unwrap();
        let page = crate::sparse_array::PAGE_SIZE as u64;
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 0, length: (1 << 62) - page, flags: HOLE | ZERO },
                Extent { offset: (1 << 62) - page, length: page, flags: DATA },
            ]
        );
    }

    #[test]
    fn largest_size() {
        let plugin = configured(&[("size", &MAX_SIZE.to_string())]).unwrap();
        let h = open(&plugin);
        assert_eq!(h.get_size().unwrap(), MAX_SIZE);
        h.pwrite(b"end", MAX_SIZE - 3, Flags::NONE).unwrap();
        let mut back = [0u8; 3];
        h.pread(&mut back, MAX_SIZE - 3, Flags::NONE).unwrap();
        assert_eq!(&back, b"end");
    }

    #[test]
    fn trim_and_zero_free_pages() {
        let plugin = configured(&[("size", "1G")]).unwrap();
        let h = open(&plugin);
        h.pwrite(&vec![7u8; 8 << 20], 0, Flags::NONE).unwrap();
        let pages = 8 << 20 >> 15;
        assert_eq!(plugin.allocated_pages(), Some(pages));
        h.trim(4 << 20, 0, Flags::NONE).unwrap();
        assert_eq!(plugin.allocated_pages(), Some(pages / 2));
        h.zero(4 << 20, 4 << 20, Flags::MAY_TRIM | Flags::FAST_ZERO).unwrap();
        assert_eq!(plugin.allocated_pages(), Some(0));
        let mut back = vec![1u8; 8 << 20];
        h.pread(&mut back, 0, Flags::NONE).unwrap();
        assert!(back.iter().all(|&b| b == 0));
    }

    #[test]
    fn terabyte_with_nothing_written_holds_nothing() {
        let plugin = configured(&[("size", "1T")]).unwrap();
        let h = open(&plugin);
        let mut buf = vec![1u8; 1 << 20];
        h.pread(&mut buf, (1 << 40) - (1 << 20), Flags::NONE).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(plugin.allocated_pages(), Some(0));
    }

    #[test]
    fn malloc_allocator() {
        let plugin = configured(&[("size", "16M"), ("allocator", "malloc")]).unwrap();
        assert_eq!(plugin.allocated_pages(), None);
        let h = open(&plugin);
        h.pwrite(b"hello", (16 << 20) - 5, Flags::NONE).unwrap();
        let mut back = [0u8; 5];
        h.pread(&mut back, (16 << 20) - 5, Flags::NONE).unwrap();
        assert_eq!(&back, b"hello");
        h.zero(16 << 20, 0, Flags::MAY_TRIM).unwrap();
        h.pread(&mut back, (16 << 20) - 5, Flags::NONE).unwrap();
        assert_eq!(back, [0; 5]);
        let mut e = Extents::new(0, 16 << 20);
        h.extents(16 << 20, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.as_slice(), &[Extent { offset: 0, length: 16 << 20, flags: DATA }]);
    }

    #[test]
    fn malloc_refuses_what_it_cannot_allocate() {
        let err = configured(&[("size", "4E"), ("allocator", "malloc")]).err().unwrap();
        assert_eq!(err.errno, libc::ENOMEM);
        assert!(
            err.message.starts_with("allocator=malloc, size=4611686018427387904: cannot allocate"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_parameters_name_key_and_value() {
        let mut p = MemoryPlugin::new();
        assert_eq!(
            p.config("size", "12Q").unwrap_err().message,
            "size=12Q: unknown suffix 'Q' (use b, s, k, m, g, t, p or e)"
        );
        assert_eq!(
            p.config("allocator", "zstd").unwrap_err().message,
            "allocator=zstd: the zstd allocator is not available in nbdforge; use sparse or malloc"
        );
        assert_eq!(
            p.config("allocator", "slab").unwrap_err().message,
            "allocator=slab: unknown allocator (use sparse or malloc)"
        );
        assert_eq!(
            p.config("allocator", "sparse,mlock=true").unwrap_err().message,
            "allocator=sparse,mlock=true: the sparse allocator takes no options"
        );
        assert_eq!(
            p.config("allocator", "malloc,mlock=perhaps").unwrap_err().message,
            "mlock=perhaps: not a boolean (use true or false)"
        );
        assert_eq!(
            p.config("allocator", "malloc,huge=1").unwrap_err().message,
            "allocator=malloc,huge=1: unknown malloc option 'huge=1' (only mlock=true|false)"
        );
        assert!(p.config("colour", "blue").unwrap_err().message.contains("'colour'"));
        assert!(p.config_complete().unwrap_err().message.contains("size"));
        p.config("allocator", "malloc,mlock=false").unwrap();
        assert_eq!(p.allocator, Allocator::Malloc { mlock: false });
    }

    #[test]
    fn connections_share_data() {
        let plugin = configured(&[("size", "1M")]).unwrap();
        let (a, b) = (open(&plugin), open(&plugin));
        a.pwrite(b"shared", 100, Flags::NONE).unwrap();
        let mut back = [0u8; 6];
        b.pread(&mut back, 100, Flags::NONE).unwrap();
        assert_eq!(&back, b"shared");
    }
}
