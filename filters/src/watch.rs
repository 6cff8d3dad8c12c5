//! What the filters that watch requests without changing them (log, stats, blocksize-policy)
//! share: seeing every request as the client sent it, and knowing when a read's data is ready.

use std::cell::Cell;
use std::os::fd::BorrowedFd;

use nbdforge_api::{Capabilities, ReadSink, Result, Support};

/// The capabilities of the layer below, with what that layer only emulates declared native. The
/// server wraps the layer below so that it emulates zero, FUA, cache and block status itself;
/// declaring them native here keeps the server from emulating them again above the filter, so the
/// filter sees each request as the client sent it (a zero as a zero, not as writes), as nbdkit's
/// filters do.
pub(crate) fn see_every_request(below: Capabilities) -> Capabilities {
    let native = |s: Support| if s == Support::None { s } else { Support::Native };
    Capabilities {
        zero: native(below.zero),
        fua: native(below.fua),
        cache: native(below.cache),
        extents: true,
        ..below
    }
}

/// A read sink that runs `ready` once, just before the layer below hands over its data in place
/// (its memory or a file), which is when the server may start sending it to the client; everything
/// else passes to the caller's sink unchanged, so reads keep their zero-copy paths. A buffer is
/// only filled once the read returns, so then `ready` does not run and the caller goes on after
/// the read.
pub(crate) struct WhenReady<'a, F: FnOnce()> {
    inner: &'a mut dyn ReadSink,
    ready: Option<F>,
}

impl<'a, F: FnOnce()> WhenReady<'a, F> {
    pub fn new(inner: &'a mut dyn ReadSink, ready: F) -> Self {
        WhenReady { inner, ready: Some(ready) }
    }

    /// Whether `ready` ran.
    pub fn fired(&self) -> bool {
        self.ready.is_none()
    }

    fn fire(&mut self) {
        if let Some(ready) = self.ready.take() {
            ready();
        }
    }
}

impl<F: FnOnce()> ReadSink for WhenReady<'_, F> {
    fn buffer(&mut self) -> Result<&mut [u8]> {
        self.inner.buffer()
    }

    fn borrowed(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.fire();
        self.inner.borrowed(parts)
    }

    fn borrowed_pages(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.fire();
        self.inner.borrowed_pages(parts)
    }

    fn file(&mut self, file: BorrowedFd<'_>, offset: u64, holes: &[(u64, u64)]) -> Result<()> {
        self.fire();
        let before = DELIVERING.with(|d| d.replace(true));
        let r = self.inner.file(file, offset, holes);
        DELIVERING.with(|d| d.set(before));
        r
    }
}

thread_local! {
    /// Set while the server sends a read's data from a file, on the thread that sends it.
    static DELIVERING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this call comes from the server while it sends a read's data from a file: it asks
/// the stack's block status then, to send holes as holes. Such calls are the server's, not the
/// client's, and the watching filters pass them on without logging or counting them.
pub(crate) fn server_asks_during_read() -> bool {
    DELIVERING.with(|d| d.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::BufferSink;

    #[test]
    fn watching_filters_take_what_the_layer_below_emulates() {
        let below =
            Capabilities { write: true, zero: Support::Emulate, fua: Support::Emulate, ..Capabilities::READ_ONLY };
        let seen = see_every_request(below);
        assert_eq!((seen.zero, seen.fua, seen.cache), (Support::Native, Support::Native, Support::None));
        assert!(seen.extents && !seen.fast_zero && !seen.trim);
    }

    #[test]
    fn ready_runs_once_before_data_in_place() {
        let mut buf = [0u8; 4];
        let mut runs = 0;
        {
            let mut sink = BufferSink(&mut buf);
            let mut w = WhenReady::new(&mut sink, || runs += 1);
            w.buffer().unwrap();
            assert!(!w.fired(), "a buffer is not ready until the read returns");
            w.borrowed(&[b"ab", b"cd"]).unwrap();
            assert!(w.fired());
        }
        assert_eq!((runs, &buf), (1, b"abcd"));
    }

    #[test]
    fn calls_during_delivery_from_a_file_are_the_servers() {
        struct Asking(bool);
        impl ReadSink for Asking {
            fn buffer(&mut self) -> Result<&mut [u8]> {
                unreachable!()
            }
            fn borrowed(&mut self, _parts: &[&[u8]]) -> Result<()> {
                unreachable!()
            }
            fn file(&mut self, _file: BorrowedFd<'_>, _offset: u64, _holes: &[(u64, u64)]) -> Result<()> {
                self.0 = server_asks_during_read();
                Ok(())
            }
        }
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut sink = Asking(false);
        WhenReady::new(&mut sink, || ()).file(std::os::fd::AsFd::as_fd(&f), 0, &[]).unwrap();
        assert!(sink.0);
        assert!(!server_asks_during_read());
    }
}
