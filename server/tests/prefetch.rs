//! Prefetch hints: while the server serves one request it tells the backend where the request
//! queued behind it reads or writes. A plugin notes the hints and the requests it gets; an nbdsh
//! client sends reads and writes many at a time, so that some arrive queued.

mod common;

use std::sync::{Arc, Mutex};

use nbdforge_api::{Capabilities, Flags, Handle, Layer, OpenArgs, Plugin, Result, ThreadModel};

/// `(count, offset)` pairs.
type Ranges = Vec<(u64, u64)>;

#[derive(Default)]
struct Seen {
    /// Each hint.
    hints: Mutex<Ranges>,
    /// Each read and write, in the order served.
    requests: Mutex<Ranges>,
}

struct Noting(Arc<Seen>, ThreadModel);
struct NotingHandle(Arc<Seen>);

impl Layer for Noting {}

impl Plugin for Noting {
    fn thread_model(&self) -> ThreadModel {
        self.1
    }
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(NotingHandle(Arc::clone(&self.0))))
    }
}

impl Handle for NotingHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(64 << 20)
    }
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { write: true, ..Capabilities::READ_ONLY })
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.0.requests.lock().unwrap().push((buf.len() as u64, offset));
        buf.fill(0);
        Ok(())
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.0.requests.lock().unwrap().push((buf.len() as u64, offset));
        Ok(())
    }
    fn prefetch(&self, count: u64, offset: u64) {
        self.0.hints.lock().unwrap().push((count, offset));
    }
}

/// Serves the plugin under `model` and sends ten rounds of 64 requests at distinct offsets
/// (even: 1 KiB reads, odd: 512-byte writes), then reads outside the export among good ones.
/// Returns the hints and the requests served.
fn run(model: ThreadModel) -> (Ranges, Ranges) {
    let seen = Arc::new(Seen::default());
    let server =
        common::serve(common::stack(Noting(Arc::clone(&seen), model), Vec::new()), &format!("prefetch-{model:?}"));
    let script = r#"
for r in range(10):
    for i in range(64):
        at = (r * 64 + i) * 8192
        if i % 2 == 0:
            h.aio_pread(nbd.Buffer(1024), at)
        else:
            h.aio_pwrite(b"x" * 512, at)
    while h.aio_in_flight() > 0:
        h.poll(-1)
# A hostile client: reads past the end, and at the end of the address space, queued among good ones.
h.set_strict_mode(0)
bad = []
for i in range(64):
    if i % 4 == 1:
        bad.append(h.aio_pread(nbd.Buffer(1024), 2**64 - 512))
    elif i % 4 == 3:
        bad.append(h.aio_pread(nbd.Buffer(1024), 64 << 20))
    else:
        h.aio_pread(nbd.Buffer(1024), (640 + i) * 8192)
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in bad:
    try:
        h.aio_command_completed(c)
        raise AssertionError("a read outside the export succeeded")
    except nbd.Error:
        pass
"#;
    assert!(server.nbdsh(script), "nbdsh failed");
    drop(server);
    let hints = seen.hints.lock().unwrap().clone();
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 672, "640 requests, then 32 good ones among 32 refused");
    for &(count, offset) in &hints {
        assert!(
            offset.checked_add(count).is_some_and(|end| end <= 64 << 20),
            "hint ({count}, {offset}) reaches outside the export"
        );
    }
    (hints, requests)
}

#[test]
fn the_request_queued_behind_is_hinted_before_it_is_served() {
    let (hints, requests) = run(ThreadModel::Parallel);
    assert!(!hints.is_empty(), "no request was hinted: each arrived alone?");
    for hint in &hints {
        // Offsets are distinct, so a hint names one request; it was queued, so not the first.
        let at = requests.iter().position(|r| r == hint);
        assert!(at.is_some_and(|at| at > 0), "hint {hint:?} names no request queued behind another");
    }
    assert!(hints.iter().any(|h| h.0 == 1024), "no read was hinted");
    assert!(hints.iter().any(|h| h.0 == 512), "no write was hinted");
}

#[test]
fn no_hints_when_all_requests_are_serialized() {
    let (hints, _) = run(ThreadModel::SerializeAllRequests);
    assert!(hints.is_empty(), "{} hints ran outside the serializing lock", hints.len());
}
