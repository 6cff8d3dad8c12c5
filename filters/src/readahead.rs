//! The `readahead` filter: while a client reads sequentially, asks the layer below to prefetch
//! (cache) what comes next, in the background (nbdkit-readahead-filter).
//!
//! Each connection has a worker thread that sends the layer below the cache requests the reads
//! suggest, so that reads never wait for a prefetch. The window grows while reads are sequential
//! (doubling up to 32 MiB) and falls back to the size of the read when they jump. Only what is
//! not already being prefetched is asked for. Layers below that cannot cache make this filter do
//! nothing useful (put `cache` or `cow` with `cow-on-cache=true` below it), and so does a layer
//! below that serializes requests, since a prefetch would then wait for the reads.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use nbdforge_api::{
    debug, Backend, BufferSink, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result,
    ThreadModel,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(LayerInfo::new("readahead", "prefetch data ahead of sequential reads"), || ReadaheadFilter)
}

/// The largest prefetch window.
const MAX_WINDOW: u64 = 32 << 20;

/// The `readahead` filter. It takes no parameters.
#[derive(Debug, Default)]
pub struct ReadaheadFilter;

impl Layer for ReadaheadFilter {}

impl Filter for ReadaheadFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below: Arc<dyn Handle> = Arc::from(next.open(args)?);
        let size = below.get_size()?;
        let prefetch = if next.thread_model() != ThreadModel::Parallel {
            debug!("the layers below serialize requests: no prefetching");
            None
        } else {
            Some(spawn_worker(Arc::clone(&below))?)
        };
        Ok(Box::new(ReadaheadHandle { below, size, prefetch, window: Mutex::new(Window::default()) }))
    }
}

/// Starts the thread that sends cache requests `(offset, length)` to `below` until the sender is
/// dropped with the connection.
fn spawn_worker(below: Arc<dyn Handle>) -> Result<Sender<(u64, u64)>> {
    let (send, receive) = channel::<(u64, u64)>();
    std::thread::Builder::new()
        .name("readahead".into())
        .spawn(move || {
            for (offset, length) in receive {
                // Advisory: a failed prefetch only means a slower read later.
                if let Err(e) = below.cache(length, offset, Flags::NONE) {
                    debug!("prefetch of {length} bytes at {offset}: {e}");
                }
            }
        })
        .map_err(|e| nbdforge_api::Error::from_io("starting the readahead thread", &e))?;
    Ok(send)
}

/// Where the reads are going.
#[derive(Debug, Default)]
struct Window {
    /// Where the last read ended.
    last_end: u64,
    /// How far ahead to prefetch.
    size: u64,
    /// Everything before this is already asked for.
    prefetched_to: u64,
}

struct ReadaheadHandle {
    below: Arc<dyn Handle>,
    size: u64,
    prefetch: Option<Sender<(u64, u64)>>,
    window: Mutex<Window>,
}

impl ReadaheadHandle {
    /// The prefetch a read of `count` bytes at `offset` calls for, if any.
    fn plan(&self, count: u64, offset: u64) -> Option<(u64, u64)> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset + count;
        w.size = if offset == w.last_end && w.size > 0 { (w.size * 2).min(MAX_WINDOW) } else { count };
        if offset != w.last_end || w.prefetched_to < end {
            w.prefetched_to = end;
        }
        w.last_end = end;
        let from = w.prefetched_to;
        let to = (end + w.size).min(self.size);
        if to <= from {
            return None;
        }
        w.prefetched_to = to;
        Some((from, to - from))
    }
}

impl Handle for ReadaheadHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if let (Some(send), Some(range)) = (&self.prefetch, self.plan(count, offset)) {
            // The worker only ends with the connection; a failed send changes nothing.
            let _ = send.send(range);
        }
        self.below.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn sequential_reads_prefetch_a_growing_window() {
        let disk = MemDisk::new(1 << 20);
        let h = ReadaheadHandle {
            below: Arc::new(disk.clone()),
            size: 1 << 20,
            prefetch: None,
            window: Mutex::new(Window::default()),
        };
        assert_eq!(h.plan(4096, 0), Some((4096, 4096)));
        assert_eq!(h.plan(4096, 4096), Some((8192, 8192)));
        assert_eq!(h.plan(4096, 8192), Some((16384, 12288)), "up to 8192 + 4096 + 16384");
        assert_eq!(h.plan(4096, 500_000), Some((504_096, 4096)), "a jump starts again");
        assert_eq!(h.plan(4096, (1 << 20) - 4096), None, "nothing past the end");
    }

    #[test]
    fn reads_pass_and_prefetches_reach_the_layer_below() {
        let disk = MemDisk::new(1 << 20);
        disk.pwrite(b"ahead", 0, Flags::NONE).unwrap();
        let h = open_over(ReadaheadFilter, &[], &disk).unwrap();
        let mut buf = [0u8; 5];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"ahead");
        drop(h);
        for _ in 0..100 {
            if disk.log.lock().unwrap().iter().any(|c| c.starts_with("cache 5+5")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no prefetch reached the layer below: {:?}", disk.take_log());
    }
}
