//! The `scan` filter: once a client connects, prefetches (caches) the whole disk from start to
//! end in the background, for clients that will read it all (nbdkit-scan-filter).
//!
//! One scan runs at a time, on the connection to the default export that started it, in a
//! thread of its own sending cache requests of `scan-size=` bytes to the layer below; it stops
//! when that connection ends. Where it has got to is kept for the next scan (`scan-clock=true`,
//! the default) or forgotten. With `scan-ahead=true` (the default) a read past the scan moves the
//! scan to the end of the read. With `scan-forever=true` the scan starts over at the end of the
//! disk. As with `readahead`, the layer below must be able to cache and must run requests in
//! parallel for this to help.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use nbdforge_api::{
    debug, parse_bool, parse_size, Backend, BufferSink, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    ReadSink, Registration, Result, ThreadModel,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("scan", "scan disk prefetching data ahead of sequential reads").help(
        "scan-ahead=false        Skip ahead when client reads faster (default true).\n\
         scan-clock=false        Stop clock when client disconnects (default true).\n\
         scan-forever=true       Scan in a loop while clients connected (default false).\n\
         scan-size=NN            Set scan block size (default 2M).",
    );
    Registration::filter(info, ScanFilter::default)
}

/// The `scan` filter.
#[derive(Debug)]
pub struct ScanFilter {
    ahead: bool,
    clock: bool,
    forever: bool,
    step: u64,
    /// Where the scan is; shared by the scanning thread and every connection's reads.
    position: Arc<AtomicU64>,
    /// A scan is running.
    running: Arc<AtomicBool>,
}

impl Default for ScanFilter {
    fn default() -> Self {
        ScanFilter {
            ahead: true,
            clock: true,
            forever: false,
            step: 2 << 20,
            position: Arc::default(),
            running: Arc::default(),
        }
    }
}

impl Layer for ScanFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "scan-ahead" => self.ahead = parse_bool(key, value)?,
            "scan-clock" => self.clock = parse_bool(key, value)?,
            "scan-forever" => self.forever = parse_bool(key, value)?,
            "scan-size" => {
                let n = parse_size(key, value)?;
                if !n.is_power_of_two() || n > 1 << 30 {
                    return Err(Error::invalid(format!("{key}={value}: must be a power of 2, at most 1G")));
                }
                self.step = n;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for ScanFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below: Arc<dyn Handle> = Arc::from(next.open(args)?);
        let size = below.get_size()?;
        let stop = Arc::new(AtomicBool::new(false));
        let default_export = args.export_name == next.default_export(args.readonly, args.tls)?;
        if next.thread_model() != ThreadModel::Parallel {
            debug!("the layers below serialize requests: no scanning");
        } else if default_export && !self.running.swap(true, Ordering::SeqCst) {
            if !self.clock {
                self.position.store(0, Ordering::Relaxed);
            }
            let scan = Scan {
                below: Arc::clone(&below),
                size,
                step: self.step,
                forever: self.forever,
                position: Arc::clone(&self.position),
                stop: Arc::clone(&stop),
                running: Arc::clone(&self.running),
            };
            if let Err(e) = std::thread::Builder::new().name("scan".into()).spawn(move || scan.run()) {
                self.running.store(false, Ordering::SeqCst);
                return Err(Error::from_io("starting the scan thread", &e));
            }
        }
        let position = if self.ahead { Some(Arc::clone(&self.position)) } else { None };
        Ok(Box::new(ScanHandle { below, position, stop }))
    }
}

/// A scan in progress.
struct Scan {
    below: Arc<dyn Handle>,
    size: u64,
    step: u64,
    forever: bool,
    position: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
}

impl Scan {
    fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let at = self.position.load(Ordering::Relaxed);
            if at >= self.size {
                if !self.forever {
                    break;
                }
                self.position.store(0, Ordering::Relaxed);
                continue;
            }
            let n = self.step.min(self.size - at);
            // Advisory: a failed prefetch only means a slower read later.
            if let Err(e) = self.below.cache(n, at, Flags::NONE) {
                debug!("prefetch of {n} bytes at {at}: {e}");
            }
            // A read may have moved the scan further meanwhile.
            self.position.fetch_max(at + n, Ordering::Relaxed);
        }
        self.running.store(false, Ordering::SeqCst);
    }
}

struct ScanHandle {
    below: Arc<dyn Handle>,
    /// The scan position, when reads move it (`scan-ahead`).
    position: Option<Arc<AtomicU64>>,
    /// Tells this connection's scan, if it runs one, to stop.
    stop: Arc<AtomicBool>,
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Handle for ScanHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if let Some(position) = &self.position {
            position.fetch_max(offset + count, Ordering::Relaxed);
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
    fn scans_the_whole_disk_once() {
        let disk = MemDisk::new(5 << 20);
        let h = open_over(ScanFilter::default(), &[], &disk).unwrap();
        for _ in 0..200 {
            if disk.log.lock().unwrap().iter().filter(|c| c.starts_with("cache")).count() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let caches: Vec<String> = disk.take_log().into_iter().filter(|c| c.starts_with("cache")).collect();
        assert_eq!(caches, ["cache 0+2097152 0", "cache 2097152+2097152 0", "cache 4194304+1048576 0"]);
        drop(h);
        let e = ScanFilter::default().config("scan-size", "3M").unwrap_err();
        assert!(e.message.starts_with("scan-size=3M: "));
    }
}
