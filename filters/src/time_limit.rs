//! The `time-limit` filter: bounds how long a client may stay connected (`time-limit=`, default
//! 60 seconds). Past the limit, every request fails with `ESHUTDOWN` and the client is dropped.
//!
//! As in nbdkit, the limit is enforced when the client sends a request: the SDK's
//! `Connection::disconnect` is only acted on between requests, so a client that sends nothing
//! can stay connected longer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nbdforge_api::{
    debug, parse_delay, Backend, BufferSink, Connection, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo,
    OpenArgs, ReadSink, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("time-limit", "sets an overall time limit for each connection")
        .help("time-limit=<SECS>              Limit each connection to SECS seconds (default: 60).");
    Registration::filter(info, TimeLimitFilter::default)
}

/// The `time-limit` filter.
#[derive(Debug)]
pub struct TimeLimitFilter {
    limit: Duration,
}

impl Default for TimeLimitFilter {
    fn default() -> Self {
        TimeLimitFilter { limit: Duration::from_secs(60) }
    }
}

impl Layer for TimeLimitFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "time-limit" {
            return Ok(false);
        }
        let limit = parse_delay(key, value)?;
        if limit.is_zero() {
            return Err(Error::invalid(format!("{key}={value}: the time limit must be greater than 0")));
        }
        self.limit = limit;
        Ok(true)
    }
}

impl Filter for TimeLimitFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        // The clock starts with the connection's open, after the handshake.
        let deadline = Instant::now() + self.limit;
        Ok(Box::new(TimeLimitHandle { next: below, conn: Arc::clone(&args.conn), deadline }))
    }
}

/// One connection through the filter.
struct TimeLimitHandle {
    next: Box<dyn Handle>,
    conn: Arc<Connection>,
    deadline: Instant,
}

impl TimeLimitHandle {
    fn check(&self) -> Result<()> {
        if Instant::now() < self.deadline {
            return Ok(());
        }
        debug!("client exceeded the time limit: disconnecting");
        self.conn.disconnect(true);
        Err(Error::new(libc::ESHUTDOWN, "client exceeded the time limit"))
    }
}

impl Handle for TimeLimitHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.check()?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.pwrite(buf, offset, flags)
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.flush(flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.zero(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.check()?;
        self.next.extents(count, offset, flags, extents)
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.check()?;
        self.next.block_status(context, count, offset, flags, extents)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check()?;
        self.next.cache(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;

    #[test]
    fn requests_fail_past_the_limit_and_the_client_is_dropped() {
        let mut f = TimeLimitFilter::default();
        assert!(f.config("time-limit", "200ms").unwrap());
        let args = OpenArgs::local("", false);
        let h = f.open(&MemBackend::disk(512), &args).unwrap();
        h.pwrite(b"in time", 0, Flags::NONE).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(h.flush(Flags::NONE).unwrap_err().errno, libc::ESHUTDOWN);
        assert_eq!(args.conn.disconnect_requested(), Some(true));
        assert!(f.config("time-limit", "0").is_err());
        assert!(f.config("time-limit", "forever").unwrap_err().message.starts_with("time-limit=forever:"));
    }
}
