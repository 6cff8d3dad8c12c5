//! A layer can shut the server down (nbdkit_shutdown), and sleeps end early when it does
//! (nbdkit_nanosleep). In a test binary of its own: a shutdown is process-wide.

mod common;

use std::time::{Duration, Instant};

use nbdforge_api::{server, Flags, Handle, Layer, OpenArgs, Plugin, Result};

struct Quitter;
struct QuitterHandle(OpenArgs);

impl Layer for Quitter {}

impl Plugin for Quitter {
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(QuitterHandle(args.clone())))
    }
}

impl Handle for QuitterHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(1 << 20)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        if offset == 4096 {
            // Another thread sleeps long; the shutdown must wake it.
            let conn = std::sync::Arc::clone(&self.0.conn);
            let sleeper = std::thread::spawn(move || {
                let start = Instant::now();
                (conn.sleep(Duration::from_secs(60)), start.elapsed())
            });
            std::thread::sleep(Duration::from_millis(100));
            server::shutdown();
            let (slept, took) = sleeper.join().unwrap();
            assert_eq!(slept.unwrap_err().errno, libc::ESHUTDOWN);
            assert!(took < Duration::from_secs(10), "the sleep was not cut short");
        }
        buf.fill(1);
        Ok(())
    }
}

#[test]
fn a_layer_shuts_the_server_down() {
    let running = common::serve(common::stack(Quitter, vec![]), "shutdown");
    assert!(running.nbdsh("h.pread(512, 0)\ntry:\n    h.pread(512, 4096)\nexcept nbd.Error:\n    pass"));
    let start = Instant::now();
    running.join();
    assert!(start.elapsed() < Duration::from_secs(10), "serve did not return after the layer's shutdown");
    assert!(server::is_shutting_down());
    assert!(server::sleep(Duration::from_secs(60)).is_err(), "sleeps end at once once shutting down");
}
