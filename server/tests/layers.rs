//! What the SDK lets a layer do, proved with nbdsh against a real server: reopen the layer below
//! and swap it while requests are in flight, the order of prepare and finalize, reads passing a
//! filter that leaves data unchanged without a copy, dropping a client, and the connection
//! context (ids, export names).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nbdforge_api::{Backend, Connection, Error, Filter, Flags, Handle, Layer, OpenArgs, Plugin, ReadSink, Result};

type Events = Arc<Mutex<Vec<String>>>;

fn push(events: &Events, e: impl Into<String>) {
    events.lock().unwrap().push(e.into());
}

/// A 1 MiB disk of 0x5a that records its opens, prepares, finalizes and closes; a handle may be
/// made to fail its first read, or to drop its client on a read at offset 666.
#[derive(Default)]
struct Recorder {
    events: Events,
    opens: Arc<AtomicUsize>,
    fail_first_open: bool,
}

struct RecorderHandle {
    events: Events,
    generation: usize,
    fail: bool,
    conn: Arc<Connection>,
    export: String,
}

impl Layer for Recorder {}

impl Plugin for Recorder {
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let generation = self.opens.fetch_add(1, Ordering::SeqCst) + 1;
        push(&self.events, format!("plugin open {generation} conn {} export '{}'", args.conn.id(), args.export_name));
        Ok(Box::new(RecorderHandle {
            events: Arc::clone(&self.events),
            generation,
            fail: self.fail_first_open && generation == 1,
            conn: Arc::clone(&args.conn),
            export: args.export_name.clone(),
        }))
    }
}

impl Handle for RecorderHandle {
    fn prepare(&self, _readonly: bool) -> Result<()> {
        push(&self.events, format!("plugin prepare {}", self.generation));
        Ok(())
    }
    fn finalize(&self) -> Result<()> {
        push(&self.events, format!("plugin finalize {}", self.generation));
        Ok(())
    }
    fn get_size(&self) -> Result<u64> {
        Ok(1 << 20)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        if self.fail {
            return Err(Error::io(format!("generation {} is broken", self.generation)));
        }
        if offset == 666 {
            push(&self.events, format!("drop conn {} export '{}'", self.conn.id(), self.export));
            self.conn.disconnect(true);
        }
        buf.fill(0x5a);
        Ok(())
    }
}

impl Drop for RecorderHandle {
    fn drop(&mut self) {
        push(&self.events, format!("plugin close {}", self.generation));
    }
}

/// A filter that reopens the layer below when a read fails and tries again once, swapping the
/// handle it uses while other requests may be in flight.
struct Reopen {
    events: Events,
}

struct ReopenHandle {
    next: Arc<dyn Backend>,
    args: OpenArgs,
    current: RwLock<Box<dyn Handle>>,
    events: Events,
}

impl Layer for Reopen {}

impl Filter for Reopen {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        push(&self.events, "filter open");
        let current = RwLock::new(next.open(args)?);
        Ok(Box::new(ReopenHandle {
            next: Arc::clone(next),
            args: args.clone(),
            current,
            events: Arc::clone(&self.events),
        }))
    }
}

impl Handle for ReopenHandle {
    fn prepare(&self, _readonly: bool) -> Result<()> {
        push(&self.events, "filter prepare");
        Ok(())
    }
    fn finalize(&self) -> Result<()> {
        push(&self.events, "filter finalize");
        // Not reachable through next(): finalized here, as the SDK asks of such a filter.
        self.current.read().unwrap().finalize()
    }
    fn get_size(&self) -> Result<u64> {
        self.current.read().unwrap().get_size()
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let first = self.current.read().unwrap().pread(buf, offset, flags);
        if first.is_ok() {
            return first;
        }
        let fresh = self.next.open(&self.args.read_only())?;
        let old = std::mem::replace(&mut *self.current.write().unwrap(), fresh);
        old.finalize()?;
        push(&self.events, "filter reopened");
        self.current.read().unwrap().pread(buf, offset, flags)
    }
}

#[test]
fn a_filter_reopens_the_layer_below_and_prepare_and_finalize_run_in_order() {
    let events = Events::default();
    let plugin = Recorder { events: Arc::clone(&events), fail_first_open: true, ..Default::default() };
    let opens = Arc::clone(&plugin.opens);
    let server = common::serve(common::stack(plugin, vec![Box::new(Reopen { events: Arc::clone(&events) })]), "reopen");
    assert!(server.nbdsh("assert h.pread(512, 0) == b'\\x5a' * 512"), "the read failed despite the reopen");
    drop(server);
    assert_eq!(opens.load(Ordering::SeqCst), 2, "the plugin was opened again");
    let events = events.lock().unwrap().clone();
    let order: Vec<&str> = events.iter().map(String::as_str).collect();
    assert_eq!(
        order,
        [
            "filter open",
            "plugin open 1 conn 1 export ''",
            "plugin prepare 1",
            "filter prepare",
            "plugin open 2 conn 1 export ''",
            "plugin prepare 2",
            "plugin finalize 1",
            "filter reopened",
            "plugin close 1",
            "filter finalize",
            "plugin finalize 2",
            "plugin close 2",
        ],
        "prepare from the plugin up, finalize from the filter down, the reopened handle swapped in"
    );
}

/// A plugin whose handle serves reads only through `read`, lending its memory to the sink.
struct Lending;

struct LendingHandle(Vec<u8>);

impl Layer for Lending {}

impl Plugin for Lending {
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(LendingHandle((0..1u32 << 16).map(|i| (i % 251) as u8).collect())))
    }
}

impl Handle for LendingHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read(&self, count: u64, offset: u64, _flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let (o, n) = (offset as usize, count as usize);
        sink.borrowed(&[&self.0[o..o + n / 2], &self.0[o + n / 2..o + n]])
    }
}

/// A filter that counts the reads reaching its `pread`, and says (or not) that it leaves data
/// unchanged.
struct Counting {
    unchanged: bool,
    preads: Arc<AtomicUsize>,
}

struct CountingHandle {
    next: Box<dyn Handle>,
    unchanged: bool,
    preads: Arc<AtomicUsize>,
}

impl Layer for Counting {}

impl Filter for Counting {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let next = next.open(args)?;
        Ok(Box::new(CountingHandle { next, unchanged: self.unchanged, preads: Arc::clone(&self.preads) }))
    }
}

impl Handle for CountingHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }
    fn reads_unchanged(&self) -> bool {
        self.unchanged
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.preads.fetch_add(1, Ordering::SeqCst);
        self.next.pread(buf, offset, flags)
    }
}

#[test]
fn reads_bypass_a_filter_that_leaves_data_unchanged() {
    let check = "expected = bytes(i % 251 for i in range(65536))\n\
                 assert h.pread(65536, 0) == expected\n\
                 assert h.pread(1000, 333) == expected[333:1333]";
    for unchanged in [true, false] {
        let preads = Arc::new(AtomicUsize::new(0));
        let filter = Counting { unchanged, preads: Arc::clone(&preads) };
        let server = common::serve(common::stack(Lending, vec![Box::new(filter)]), &format!("lend-{unchanged}"));
        assert!(server.nbdsh(check), "wrong data through the filter (unchanged: {unchanged})");
        drop(server);
        if unchanged {
            assert_eq!(preads.load(Ordering::SeqCst), 0, "reads went through the filter's pread");
        } else {
            assert_eq!(preads.load(Ordering::SeqCst), 2, "a filter that may change data must see every read");
        }
    }
}

#[test]
fn a_layer_drops_its_client_and_connections_have_their_own_ids() {
    let events = Events::default();
    let plugin = Recorder { events: Arc::clone(&events), ..Default::default() };
    let server = common::serve(common::stack(plugin, vec![]), "drop");
    let dropped =
        "try:\n    h.pread(512, 666)\n    h.pread(512, 0)\n    raise SystemExit(1)\nexcept nbd.Error:\n    pass";
    assert!(server.nbdsh(dropped), "the client was not dropped");
    assert!(server.nbdsh("assert h.pread(512, 0) == b'\\x5a' * 512"), "the server stopped serving");
    drop(server);
    let events = events.lock().unwrap().clone();
    assert!(events.contains(&"drop conn 1 export ''".to_string()), "{events:?}");
    assert!(events.contains(&"plugin open 2 conn 2 export ''".to_string()), "{events:?}");
}
