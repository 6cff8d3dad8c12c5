//! The `retry-request` filter: repeats a single request that fails, on the same handle of the
//! layer below, after a fixed delay. Lighter than the `retry` filter, which reopens the layer
//! below each time; suited to backends that fail now and then without losing their connection.
//!
//! Opening the layer below is retried the same way unless `retry-request-open=false`.

use std::sync::Arc;
use std::time::Duration;

use nbdforge_api::{
    parse_bool, parse_delay, parse_int, Backend, BufferSink, Connection, Error, Extents, Filter, Flags, Handle, Layer,
    LayerInfo, OpenArgs, ReadSink, Registration, Result,
};

use crate::retrying::{unless_partly_done, with_retries, Backoff, Failure, WatchedSink};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("retry-request", "retries single requests that fail").help(
        "retry-request-retries=<N>      Number of retries (default: 2).\n\
         retry-request-delay=<N>        Seconds to wait before retry (default: 2).\n\
         retry-request-open=false       Do not retry opening the plugin (default: true).",
    );
    Registration::filter(info, RetryRequestFilter::default)
}

/// The `retry-request` filter.
#[derive(Debug)]
pub struct RetryRequestFilter {
    backoff: Backoff,
    retry_open: bool,
}

impl Default for RetryRequestFilter {
    fn default() -> Self {
        RetryRequestFilter {
            backoff: Backoff { retries: 2, delay: Duration::from_secs(2), exponential: false },
            retry_open: true,
        }
    }
}

impl Layer for RetryRequestFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "retry-request-retries" => self.backoff.retries = parse_int(key, value)?,
            "retry-request-delay" => {
                let delay = parse_delay(key, value)?;
                if delay.is_zero() {
                    return Err(Error::invalid(format!("{key}={value}: the delay must be greater than 0")));
                }
                self.backoff.delay = delay;
            }
            "retry-request-open" => self.retry_open = parse_bool(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for RetryRequestFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = if self.retry_open {
            with_retries(&args.conn, "open", &self.backoff, |_| Ok(next.open(args)?))?
        } else {
            next.open(args)?
        };
        Ok(Box::new(RetryRequestHandle { next: below, conn: Arc::clone(&args.conn), backoff: self.backoff }))
    }
}

/// One connection through the filter.
struct RetryRequestHandle {
    next: Box<dyn Handle>,
    conn: Arc<Connection>,
    backoff: Backoff,
}

impl RetryRequestHandle {
    fn retried<T>(&self, what: &str, mut call: impl FnMut() -> Result<T>) -> Result<T> {
        with_retries(&self.conn, what, &self.backoff, |_| Ok(call()?))
    }
}

impl Handle for RetryRequestHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        with_retries(&self.conn, "pread", &self.backoff, |_| {
            let mut watched = WatchedSink::new(&mut *sink);
            match self.next.read(count, offset, flags, &mut watched) {
                Err(e) if watched.delivered() => Err(Failure::fatal(e)),
                r => Ok(r?),
            }
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.retried("pwrite", || self.next.pwrite(buf, offset, flags))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.retried("flush", || self.next.flush(flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.retried("trim", || self.next.trim(count, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.retried("zero", || self.next.zero(count, offset, flags))
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        with_retries(&self.conn, "extents", &self.backoff, |_| {
            unless_partly_done(extents, |e| self.next.extents(count, offset, flags, e))
        })
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.retried("cache", || self.next.cache(count, offset, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;
    use std::sync::atomic::Ordering;

    #[test]
    fn opens_and_requests_are_retried_on_the_same_handle() {
        let mut f = RetryRequestFilter::default();
        assert!(f.config("retry-request-delay", "1ms").unwrap());
        let memory = MemBackend::failing(4096, 2, 0);
        let next: Arc<dyn Backend> = memory.clone();
        let h = f.open(&next, &OpenArgs::local("", false)).expect("third open works");
        memory.disk.fail_requests.store(2, Ordering::SeqCst);
        h.pwrite(b"hi", 0, Flags::NONE).unwrap();
        assert_eq!(memory.opens.load(Ordering::SeqCst), 3, "no reopen for requests");
        memory.disk.fail_requests.store(3, Ordering::SeqCst);
        assert_eq!(h.flush(Flags::NONE).unwrap_err().errno, libc::EIO);
        f.config("retry-request-open", "false").unwrap();
        memory.fail_opens.store(1, Ordering::SeqCst);
        assert!(f.open(&next, &OpenArgs::local("", false)).is_err());
    }
}
