//! Thread models, enforced with real clients: a probe plugin records how many of its calls
//! overlap, and `nbdsh` clients send many requests at once on two connections. The most
//! restrictive model of the plugin and its filters must win.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbdforge_api::{Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, Result, ThreadModel};
use nbdforge_server::Stack;

#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// Most requests in flight on one connection at once.
    max_per_connection: AtomicUsize,
}

fn raise(max: &AtomicUsize, value: usize) {
    max.fetch_max(value, Ordering::SeqCst);
}

struct Probe {
    model: ThreadModel,
    stats: Arc<Stats>,
}

struct ProbeHandle {
    stats: Arc<Stats>,
    in_flight: AtomicUsize,
}

impl Layer for Probe {}

impl Plugin for Probe {
    fn thread_model(&self) -> ThreadModel {
        self.model
    }
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        raise(&self.stats.max_open, self.stats.open.fetch_add(1, Ordering::SeqCst) + 1);
        Ok(Box::new(ProbeHandle { stats: Arc::clone(&self.stats), in_flight: AtomicUsize::new(0) }))
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handle for ProbeHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(1 << 20)
    }
    fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
        let s = &self.stats;
        raise(&s.max_in_flight, s.in_flight.fetch_add(1, Ordering::SeqCst) + 1);
        raise(&s.max_per_connection, self.in_flight.fetch_add(1, Ordering::SeqCst) + 1);
        std::thread::sleep(Duration::from_millis(20));
        buf.fill(0xaa);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A filter that only declares a thread model.
struct Serializing(ThreadModel);

impl Layer for Serializing {}

impl Filter for Serializing {
    fn thread_model(&self, _below: ThreadModel) -> ThreadModel {
        self.0
    }
}

fn stack(plugin: Probe, filter: Option<ThreadModel>) -> Stack {
    let filters = filter
        .into_iter()
        .map(|m| (LayerInfo::new("serializing", ""), Box::new(Serializing(m)) as Box<dyn Filter>))
        .collect();
    Stack::new((LayerInfo::new("probe", ""), Box::new(plugin)), filters)
}

/// Serves the probe (under `filter`, if any) and runs two nbdsh clients at once, each with 16 reads
/// in flight. Returns the stats.
fn run(plugin_model: ThreadModel, filter: Option<ThreadModel>) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let plugin = Probe { model: plugin_model, stats: Arc::clone(&stats) };
    let backend = stack(plugin, filter).finish().unwrap();
    let server = common::serve(backend, &format!("thread-model-{plugin_model:?}-{filter:?}"));
    let script = r#"
bufs = [nbd.Buffer(4096) for _ in range(16)]
for i, b in enumerate(bufs):
    h.aio_pread(b, i * 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
assert all(b.to_bytearray() == bytearray(b"\xaa" * 4096) for b in bufs)
"#;
    let clients: Vec<_> = (0..2).map(|_| server.spawn_nbdsh(script)).collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success(), "nbdsh failed");
    }
    drop(server);
    stats
}

fn get(a: &AtomicUsize) -> usize {
    a.load(Ordering::SeqCst)
}

#[test]
fn parallel_runs_requests_of_one_connection_together() {
    let s = run(ThreadModel::Parallel, None);
    assert!(get(&s.max_per_connection) > 1, "requests of one connection never overlapped");
}

#[test]
fn a_filter_can_serialize_requests_over_a_parallel_plugin() {
    let s = run(ThreadModel::Parallel, Some(ThreadModel::SerializeRequests));
    assert_eq!(get(&s.max_per_connection), 1, "requests of one connection overlapped");
    assert_eq!(get(&s.max_open), 2, "both connections should be open together");
}

#[test]
fn serialize_all_requests_runs_one_request_at_a_time() {
    let s = run(ThreadModel::SerializeAllRequests, Some(ThreadModel::Parallel));
    assert_eq!(get(&s.max_in_flight), 1, "requests overlapped across connections");
    assert_eq!(get(&s.max_open), 2);
}

#[test]
fn serialize_connections_serves_one_connection_at_a_time() {
    let s = run(ThreadModel::SerializeConnections, None);
    assert_eq!(get(&s.max_open), 1, "two connections were open at once");
    assert_eq!(get(&s.max_in_flight), 1);
}

#[test]
fn the_most_restrictive_model_wins() {
    let plugin = Probe { model: ThreadModel::SerializeRequests, stats: Arc::default() };
    assert_eq!(stack(plugin, Some(ThreadModel::Parallel)).thread_model(), ThreadModel::SerializeRequests);
}
