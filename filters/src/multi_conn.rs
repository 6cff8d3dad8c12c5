//! The `multi-conn` filter: offers multi-conn (flushes consistent across connections) for a layer
//! that does not, by passing each flush on to every connection, or changes whether it is offered
//! (nbdkit-multi-conn-filter).
//!
//! `multi-conn-mode=` is `emulate` (offer it; a flush on one connection, or a FUA write, flushes
//! every connection's handle below), `plugin` (as the layer below says), `disable` (never offer
//! it), `unsafe` (always offer it, doing nothing) or `auto`, the default: `disable` when the layers
//! below serve one connection at a time, `plugin` when they offer multi-conn, `emulate` otherwise.
//! `multi-conn-track-dirty=` skips flushes that cannot matter: `connection` (the default) skips a
//! connection that neither wrote nor read since its last flush, `fast` skips every flush while no
//! connection wrote since the last one, `off` skips nothing. With `multi-conn-exportname=true` a
//! flush only reaches connections to the same export.
//!
//! The filter keeps a list of its open connections: each handle registers the handle below it
//! (shared through an `Arc`) when it opens and leaves the list in `finalize`, before the server
//! finalizes the layer below.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nbdforge_api::{
    parse_bool, parse_choice, Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    ReadSink, Registration, Result, Support, ThreadModel,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("multi-conn", "enhance multi-conn consistency").help(
        "multi-conn-mode=<MODE>         'auto' (default), 'emulate', 'plugin', 'disable', 'unsafe'.\n\
         multi-conn-track-dirty=<LEVEL> 'connection' (default), 'fast', 'off'.\n\
         multi-conn-exportname=<BOOL>   true to limit emulation to connections to the same export.",
    );
    Registration::filter(info, MultiConnFilter::default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Auto,
    Emulate,
    Plugin,
    Disable,
    Unsafe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackDirty {
    Connection,
    Fast,
    Off,
}

/// One open connection, as the others see it.
struct Member {
    id: u64,
    export: String,
    below: Arc<dyn Handle>,
    dirty: Arc<AtomicBool>,
}

/// The `multi-conn` filter.
pub struct MultiConnFilter {
    mode: Mode,
    track: TrackDirty,
    by_export: bool,
    shared: Arc<Shared>,
}

/// What the connections share.
#[derive(Default)]
struct Shared {
    members: Mutex<Vec<Member>>,
    next_id: AtomicU64,
    /// For `fast` tracking: some connection wrote since the last flush.
    any_dirty: AtomicBool,
}

impl Default for MultiConnFilter {
    fn default() -> Self {
        MultiConnFilter { mode: Mode::Auto, track: TrackDirty::Connection, by_export: false, shared: Arc::default() }
    }
}

impl Layer for MultiConnFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "multi-conn-mode" => {
                self.mode = match parse_choice(key, value, &["auto", "emulate", "plugin", "disable", "unsafe"])? {
                    "auto" => Mode::Auto,
                    "emulate" => Mode::Emulate,
                    "plugin" => Mode::Plugin,
                    "disable" => Mode::Disable,
                    _ => Mode::Unsafe,
                }
            }
            "multi-conn-track-dirty" => {
                self.track = match parse_choice(key, value, &["connection", "conn", "fast", "off"])? {
                    "fast" => TrackDirty::Fast,
                    "off" => TrackDirty::Off,
                    _ => TrackDirty::Connection,
                }
            }
            "multi-conn-exportname" | "multi-conn-export-name" => self.by_export = parse_bool(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for MultiConnFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below: Arc<dyn Handle> = Arc::from(next.open(args)?);
        let caps = below.capabilities()?;
        let mode = match self.mode {
            Mode::Auto if next.thread_model() == ThreadModel::SerializeConnections => Mode::Disable,
            Mode::Auto if caps.multi_conn => Mode::Plugin,
            Mode::Auto => Mode::Emulate,
            m => m,
        };
        if mode == Mode::Emulate && caps.write && !caps.flush {
            return Err(Error::invalid("multi-conn-mode=emulate needs flush support from the layer below"));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let dirty = Arc::new(AtomicBool::new(false));
        self.shared.members.lock().unwrap_or_else(|e| e.into_inner()).push(Member {
            id,
            export: args.export_name.clone(),
            below: Arc::clone(&below),
            dirty: Arc::clone(&dirty),
        });
        Ok(Box::new(MultiConnHandle {
            below,
            id,
            export: args.export_name.clone(),
            mode,
            track: self.track,
            by_export: self.by_export,
            dirty,
            shared: Arc::clone(&self.shared),
        }))
    }
}

struct MultiConnHandle {
    below: Arc<dyn Handle>,
    id: u64,
    export: String,
    mode: Mode,
    track: TrackDirty,
    by_export: bool,
    dirty: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl MultiConnHandle {
    fn wrote(&self) {
        self.dirty.store(true, Ordering::Relaxed);
        self.shared.any_dirty.store(true, Ordering::Relaxed);
    }

    /// Flushes `handle` unless the tracking says it has nothing to flush.
    fn flush_one(&self, handle: &dyn Handle, dirty: &AtomicBool, flags: Flags) -> Result<()> {
        if self.track == TrackDirty::Connection && !dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        handle.flush(flags)
    }
}

impl MultiConnHandle {
    fn leave(&self) {
        self.shared.members.lock().unwrap_or_else(|e| e.into_inner()).retain(|m| m.id != self.id);
    }
}

// A connection that ends without `finalize` (a failed open above) leaves the list too.
impl Drop for MultiConnHandle {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Handle for MultiConnHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn finalize(&self) -> Result<()> {
        self.leave();
        Ok(())
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let below = self.below.capabilities()?;
        Ok(match self.mode {
            Mode::Emulate => Capabilities {
                multi_conn: true,
                // A FUA write must flush every connection: the server turns it into a flush.
                fua: if below.fua == Support::None { Support::None } else { Support::Emulate },
                ..below
            },
            Mode::Disable => Capabilities { multi_conn: false, ..below },
            Mode::Unsafe => Capabilities { multi_conn: true, ..below },
            Mode::Plugin | Mode::Auto => below,
        })
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        // A read may fill a cache that a flush elsewhere must clear.
        self.dirty.store(true, Ordering::Relaxed);
        self.below.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.dirty.store(true, Ordering::Relaxed);
        self.below.pread(buf, offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.wrote();
        self.below.pwrite(buf, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.wrote();
        self.below.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.wrote();
        self.below.zero(count, offset, flags)
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        if self.track == TrackDirty::Fast && !self.shared.any_dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        if self.mode != Mode::Emulate {
            return self.flush_one(&*self.below, &self.dirty, flags);
        }
        // Every connection (to this export, if asked), this one included. The list is copied so
        // that no lock is held while flushing.
        let members: Vec<(Arc<dyn Handle>, Arc<AtomicBool>)> = self
            .shared
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|m| !self.by_export || m.export == self.export)
            .map(|m| (Arc::clone(&m.below), Arc::clone(&m.dirty)))
            .collect();
        for (handle, dirty) in members {
            self.flush_one(&*handle, &dirty, flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{MemBackend, MemDisk};

    fn open(filter: &MultiConnFilter, disk: &MemDisk, export: &str) -> Box<dyn Handle> {
        let next: Arc<dyn Backend> = Arc::new(MemBackend::new(disk.clone()));
        filter.open(&next, &OpenArgs::local(export, false)).unwrap()
    }

    #[test]
    fn emulate_flushes_every_dirty_connection() {
        let disk = MemDisk { caps: Capabilities { multi_conn: false, ..Capabilities::ALL }, ..MemDisk::new(4096) };
        let filter = MultiConnFilter::default();
        let (a, b, c) = (open(&filter, &disk, "x"), open(&filter, &disk, "x"), open(&filter, &disk, "y"));
        assert!(a.capabilities().unwrap().multi_conn, "auto emulates over a layer without multi-conn");
        a.pwrite(b"a", 0, Flags::NONE).unwrap();
        b.pwrite(b"b", 1, Flags::NONE).unwrap();
        disk.take_log();
        a.flush(Flags::NONE).unwrap();
        assert_eq!(disk.take_log(), ["flush 0+0 0", "flush 0+0 0"], "a and b were dirty, c was not");
        a.flush(Flags::NONE).unwrap();
        assert!(disk.take_log().is_empty(), "nothing is dirty any more");
        c.finalize().unwrap();
        assert_eq!(filter.shared.members.lock().unwrap().len(), 2);
    }

    #[test]
    fn modes_and_parameters() {
        let disk = MemDisk::new(512);
        let mut filter = MultiConnFilter::default();
        filter.config("multi-conn-mode", "disable").unwrap();
        assert!(!open(&filter, &disk, "").capabilities().unwrap().multi_conn);
        let e = filter.config("multi-conn-mode", "sometimes").unwrap_err();
        assert!(e.message.starts_with("multi-conn-mode=sometimes: "));
        let no_flush = MemDisk { caps: Capabilities { flush: false, multi_conn: false, ..Capabilities::ALL }, ..disk };
        filter.config("multi-conn-mode", "emulate").unwrap();
        let next: Arc<dyn Backend> = Arc::new(MemBackend::new(no_flush));
        assert!(filter.open(&next, &OpenArgs::local("", false)).is_err());
    }
}
