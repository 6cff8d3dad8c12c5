//! The `tally` example filter: counts what each connection does and says so when it ends, and
//! can turn clients away past a number of connections at once.
//!
//! It shows the pieces a filter has, on top of those of a plugin (see [`crate::ramdisk`]):
//!
//! 1. parameters of its own, with a prefix (`tally-max-clients=`), so the rest pass down to
//!    the plugin;
//! 2. [`Filter::preconnect`]: a decision about a client before the handshake;
//! 3. [`Filter::open`], which opens the layer below (`next.open(args)`) and keeps its handle;
//! 4. a handle that returns that handle from [`Handle::next`], so every call it does not
//!    override passes through; it overrides [`Handle::read`] (and the write calls) to count
//!    them, handing reads on unchanged, so reads keep the zero-copy paths of the layer below;
//! 5. [`Handle::finalize`], run when the connection ends, which logs the counts with
//!    [`debug!`](nbdforge_api::debug) (shown with `-v`, prefixed `tally:`); and
//!    [`Layer::cleanup`], run when the server exits, which logs the totals.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use nbdforge_api::{
    debug, parse_int, Backend, ClientInfo, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink,
    Registration, Result,
};

/// The filter's entry in the server's table: `nbdforge --filter=tally memory 1G`.
pub fn registration() -> Registration {
    let info = LayerInfo::new("tally", "counts each connection's requests (nbdforge SDK example filter)")
        .help("tally-max-clients=<N>  Refuse clients past N connections at once (default: no limit).");
    Registration::filter(info, TallyFilter::default)
}

/// The `tally` filter.
#[derive(Default)]
pub struct TallyFilter {
    max_clients: Option<usize>,
    /// Connections open now, shared with every handle (which counts itself out when dropped).
    open: Arc<AtomicUsize>,
    /// What every connection did, added up.
    totals: Arc<Counts>,
}

/// Requests and bytes, counted without a lock.
#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl Counts {
    fn add(&self, other: &Counts) {
        let pairs = [
            (&self.reads, &other.reads),
            (&self.writes, &other.writes),
            (&self.bytes_read, &other.bytes_read),
            (&self.bytes_written, &other.bytes_written),
        ];
        for (total, n) in pairs {
            total.fetch_add(n.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn describe(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} reads ({} bytes), {} writes ({} bytes)",
            get(&self.reads),
            get(&self.bytes_read),
            get(&self.writes),
            get(&self.bytes_written)
        )
    }
}

impl Layer for TallyFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "tally-max-clients" => self.max_clients = Some(parse_int(key, value)?),
            // Everything else belongs to the layers below.
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn cleanup(&self) {
        debug!("all connections: {}", self.totals.describe());
    }
}

impl Filter for TallyFilter {
    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        if let Some(max) = self.max_clients {
            if self.open.load(Ordering::SeqCst) >= max {
                return Err(Error::new(libc::EBUSY, format!("{max} clients already connected")));
            }
        }
        // The layers below may have a say too.
        next.preconnect(client, readonly)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TallyHandle {
            next: below,
            connection: args.conn.id(),
            open: Arc::clone(&self.open),
            totals: Arc::clone(&self.totals),
            counts: Counts::default(),
        }))
    }
}

/// One connection through the filter: the layer below, and the counts.
struct TallyHandle {
    next: Box<dyn Handle>,
    connection: u64,
    open: Arc<AtomicUsize>,
    totals: Arc<Counts>,
    counts: Counts,
}

impl Handle for TallyHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    // Counted, then handed on with the same sink: whatever way the layer below delivers the data
    // (a buffer, its own memory, a file) is the way it reaches the client.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.counts.reads.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes_read.fetch_add(count, Ordering::Relaxed);
        self.next.read(count, offset, flags, sink)
    }

    // A filter above this one may call pread; it is a read like any other.
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut nbdforge_api::BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes_written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.next.pwrite(buf, offset, flags)
    }

    fn finalize(&self) -> Result<()> {
        debug!("connection {}: {}", self.connection, self.counts.describe());
        Ok(())
    }
}

impl Drop for TallyHandle {
    fn drop(&mut self) {
        self.totals.add(&self.counts);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramdisk;

    /// The ramdisk as the layer below, configured as the server would.
    fn ramdisk_backend() -> Arc<dyn Backend> {
        struct Below(Box<dyn nbdforge_api::Plugin>);
        impl Backend for Below {
            fn name(&self) -> &str {
                "ramdisk"
            }
            fn thread_model(&self) -> nbdforge_api::ThreadModel {
                self.0.thread_model()
            }
            fn after_fork(&self) -> Result<()> {
                self.0.after_fork()
            }
            fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
                self.0.preconnect(client, readonly)
            }
            fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<nbdforge_api::Export>> {
                self.0.list_exports(readonly, tls)
            }
            fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
                self.0.default_export(readonly, tls)
            }
            fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
                self.0.open(args)
            }
        }
        let mut plugin = ramdisk::registration().new_plugin().unwrap();
        plugin.config("size", "1M").unwrap();
        plugin.config_complete().unwrap();
        Arc::new(Below(plugin))
    }

    #[test]
    fn counts_and_passes_everything_through() {
        let mut filter = TallyFilter::default();
        assert!(!filter.config("size", "1M").unwrap(), "the plugin's parameter passes down");
        let next = ramdisk_backend();
        let h = filter.open(&next, &OpenArgs::local("", false)).unwrap();
        h.pwrite(b"tally", 100, Flags::NONE).unwrap();
        let mut back = [0u8; 5];
        h.pread(&mut back, 100, Flags::NONE).unwrap();
        assert_eq!(&back, b"tally");
        assert_eq!(h.get_size().unwrap(), 1 << 20, "what the filter does not override passes through");
        assert_eq!(h.meta_contexts().unwrap(), [ramdisk::DIRTY], "so do the layer below's contexts");
        h.finalize().unwrap();
        drop(h);
        assert_eq!(filter.totals.describe(), "1 reads (5 bytes), 1 writes (5 bytes)");
    }

    #[test]
    fn refuses_clients_past_the_limit() {
        let mut filter = TallyFilter::default();
        assert!(filter.config("tally-max-clients", "1").unwrap());
        let next = ramdisk_backend();
        let client = ClientInfo::default();
        filter.preconnect(next.as_ref(), &client, false).unwrap();
        let first = filter.open(&next, &OpenArgs::local("", false)).unwrap();
        assert_eq!(filter.preconnect(next.as_ref(), &client, false).unwrap_err().errno, libc::EBUSY);
        drop(first);
        filter.preconnect(next.as_ref(), &client, false).unwrap();
        assert!(filter.config("tally-max-clients", "-1").is_err());
    }
}
