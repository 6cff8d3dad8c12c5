//! The `delay` filter: makes requests, connecting and disconnecting slower by fixed delays, to
//! simulate a slow or distant server or to widen race windows in clients.
//!
//! Every delay sleeps through [`Connection::sleep`], so a server that shuts down (or drops the
//! client) does not wait for it: the request fails with `ESHUTDOWN` instead. Reads are delayed
//! and then passed down with the same sink, keeping the zero-copy paths of the layer below.

use std::sync::Arc;
use std::time::Duration;

use nbdforge_api::{
    parse_bool, parse_delay, Backend, BufferSink, Capabilities, Connection, Error, Extents, Filter, Flags, Handle,
    Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result, Support,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("delay", "delays requests, to simulate a slow server").help(
        "rdelay=<NN>[ms]                Read delay in seconds/milliseconds.\n\
         delay-read=<NN>[ms]            Read delay in seconds/milliseconds.\n\
         delay-write=<NN>[ms]           Write delay in seconds/milliseconds.\n\
         delay-zero=<NN>[ms]            Zero delay in seconds/milliseconds.\n\
         delay-trim=<NN>[ms]            Trim delay in seconds/milliseconds.\n\
         delay-extents=<NN>[ms]         Extents delay in seconds/milliseconds.\n\
         delay-cache=<NN>[ms]           Cache delay in seconds/milliseconds.\n\
         wdelay=<NN>[ms]                Write, zero and trim delay in secs/msecs.\n\
         delay-fast-zero=<BOOL>         Delay fast zero requests (default true).\n\
         delay-open=<NN>[ms]            Open delay in seconds/milliseconds.\n\
         delay-close=<NN>[ms]           Close delay in seconds/milliseconds.",
    );
    Registration::filter(info, DelayFilter::default)
}

/// The delays, zero for none.
#[derive(Debug, Clone)]
struct Delays {
    read: Duration,
    write: Duration,
    zero: Duration,
    trim: Duration,
    extents: Duration,
    cache: Duration,
    open: Duration,
    close: Duration,
    /// False: a fast zero request fails at once (`ENOTSUP`) instead of waiting for `zero`.
    fast_zero: bool,
}

impl Default for Delays {
    fn default() -> Self {
        let none = Duration::ZERO;
        Delays {
            read: none,
            write: none,
            zero: none,
            trim: none,
            extents: none,
            cache: none,
            open: none,
            close: none,
            fast_zero: true,
        }
    }
}

/// The `delay` filter.
#[derive(Debug, Default)]
pub struct DelayFilter {
    delays: Arc<Delays>,
}

impl Layer for DelayFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let d = Arc::make_mut(&mut self.delays);
        match key {
            "rdelay" | "delay-read" => d.read = parse_delay(key, value)?,
            "delay-write" => d.write = parse_delay(key, value)?,
            "delay-zero" => d.zero = parse_delay(key, value)?,
            "delay-trim" => d.trim = parse_delay(key, value)?,
            "delay-extents" => d.extents = parse_delay(key, value)?,
            "delay-cache" => d.cache = parse_delay(key, value)?,
            "wdelay" => {
                let delay = parse_delay(key, value)?;
                (d.write, d.zero, d.trim) = (delay, delay, delay);
            }
            "delay-fast-zero" => d.fast_zero = parse_bool(key, value)?,
            "delay-open" => d.open = parse_delay(key, value)?,
            "delay-close" => d.close = parse_delay(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for DelayFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        pause(&args.conn, self.delays.open)?;
        Ok(Box::new(DelayHandle {
            next: next.open(args)?,
            conn: Arc::clone(&args.conn),
            delays: Arc::clone(&self.delays),
        }))
    }
}

/// Sleeps unless `delay` is zero; fails with `ESHUTDOWN` if the sleep is cut short.
fn pause(conn: &Connection, delay: Duration) -> Result<()> {
    if delay.is_zero() {
        return Ok(());
    }
    conn.sleep(delay)
}

/// One connection through the filter.
struct DelayHandle {
    next: Box<dyn Handle>,
    conn: Arc<Connection>,
    delays: Arc<Delays>,
}

impl DelayHandle {
    /// Whether fast zero requests are answered here, at once, rather than after the delay.
    fn fails_fast_zero(&self) -> bool {
        !self.delays.fast_zero && !self.delays.zero.is_zero()
    }
}

impl Handle for DelayHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let mut caps = self.next.capabilities()?;
        // Failing a fast zero at once is always possible, whatever the layer below can do.
        if self.fails_fast_zero() && caps.zero != Support::None {
            caps.fast_zero = true;
        }
        Ok(caps)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        pause(&self.conn, self.delays.read)?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        pause(&self.conn, self.delays.write)?;
        self.next.pwrite(buf, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FAST_ZERO) && self.fails_fast_zero() {
            return Err(Error::new(libc::ENOTSUP, "delay: fast zero refused rather than delayed"));
        }
        pause(&self.conn, self.delays.zero)?;
        self.next.zero(count, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pause(&self.conn, self.delays.trim)?;
        self.next.trim(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        pause(&self.conn, self.delays.extents)?;
        self.next.extents(count, offset, flags, extents)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        pause(&self.conn, self.delays.cache)?;
        self.next.cache(count, offset, flags)
    }

    fn finalize(&self) -> Result<()> {
        // The client is leaving; a shutdown cutting the delay short is no error.
        let _ = pause(&self.conn, self.delays.close);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;
    use std::time::Instant;

    #[test]
    fn parameters() {
        let mut f = DelayFilter::default();
        assert!(f.config("wdelay", "20ms").unwrap());
        assert!(f.config("rdelay", "1").unwrap());
        assert!(f.config("delay-fast-zero", "false").unwrap());
        assert!(!f.config("size", "1M").unwrap());
        assert_eq!((f.delays.write, f.delays.trim), (Duration::from_millis(20), Duration::from_millis(20)));
        assert_eq!(f.delays.read, Duration::from_secs(1));
        assert!(f.config("delay-zero", "soon").unwrap_err().message.starts_with("delay-zero=soon:"));
        assert!(f.config("delay-fast-zero", "perhaps").unwrap_err().message.starts_with("delay-fast-zero=perhaps:"));
    }

    #[test]
    fn requests_wait_and_fast_zero_fails_at_once() {
        let mut f = DelayFilter::default();
        f.config("delay-write", "50ms").unwrap();
        f.config("delay-zero", "10s").unwrap();
        f.config("delay-fast-zero", "0").unwrap();
        let h = f.open(&MemBackend::disk(4096), &OpenArgs::local("", false)).unwrap();
        let start = Instant::now();
        h.pwrite(b"slow", 0, Flags::NONE).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50));
        let mut buf = [0u8; 4];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"slow");
        assert!(h.capabilities().unwrap().fast_zero);
        let start = Instant::now();
        assert_eq!(h.zero(4, 0, Flags::FAST_ZERO).unwrap_err().errno, libc::ENOTSUP);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
