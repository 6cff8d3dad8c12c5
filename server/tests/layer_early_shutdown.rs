//! A shutdown a layer asks for before the server runs (from `after_fork`, as exitwhen may) is
//! honoured when the server starts serving. A test binary of its own: a shutdown is process-wide.

mod common;

use std::time::{Duration, Instant};

use nbdforge_api::{server, Handle, Layer, OpenArgs, Plugin, Result};

struct Early;

impl Layer for Early {}

impl Plugin for Early {
    fn after_fork(&self) -> Result<()> {
        server::shutdown();
        Ok(())
    }
    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        unreachable!("the server stops before any client")
    }
}

#[test]
fn a_shutdown_asked_for_in_after_fork_stops_the_server_at_once() {
    let backend = common::stack(Early, vec![]);
    backend.after_fork().unwrap();
    let start = Instant::now();
    common::serve(backend, "early").join();
    assert!(start.elapsed() < Duration::from_secs(10), "the early shutdown was lost");
}
