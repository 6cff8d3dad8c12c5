//! The `retry` filter: when a request fails, closes the layer below, waits, opens it again and
//! repeats the request, so that a long copy survives a backend that drops its connection now
//! and then.
//!
//! Each request is tried up to `retries` more times; the wait starts at `retry-delay` and doubles
//! each time unless `retry-exponential=no`. With `retry-readonly=yes` the layer below is reopened
//! read-only, and writes fail with `EROFS` from the first reopen on. A reopen that fails counts as
//! a try; the next try reopens again.
//!
//! The handle of the layer below changes, so this handle cannot expose it through
//! [`Handle::next`]: it forwards every call itself and finalizes the handle it holds. One request
//! at a time per connection (as nbdkit's filter), so a reopen never races a request in flight.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbdforge_api::{
    debug, parse_bool, parse_delay, parse_int, Backend, BlockSize, BufferSink, Capabilities, Error, Extents, Filter,
    Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result, ThreadModel,
};

use crate::retrying::{unless_partly_done, with_retries, Backoff, Failure, WatchedSink};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("retry", "reopens the plugin and retries requests that fail").help(
        "retries=<N>                    Number of retries (default: 5).\n\
         retry-delay=<N>                Seconds to wait before retry (default: 2).\n\
         retry-exponential=yes|no       Exponential back-off (default: yes).\n\
         retry-readonly=yes|no          Force read-only on failure (default: no).",
    );
    Registration::filter(info, RetryFilter::default)
}

/// The `retry` filter.
#[derive(Debug)]
pub struct RetryFilter {
    backoff: Backoff,
    reopen_readonly: bool,
}

impl Default for RetryFilter {
    fn default() -> Self {
        RetryFilter {
            backoff: Backoff { retries: 5, delay: Duration::from_secs(2), exponential: true },
            reopen_readonly: false,
        }
    }
}

impl Layer for RetryFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "retries" => self.backoff.retries = parse_int(key, value)?,
            "retry-delay" => {
                let delay = parse_delay(key, value)?;
                if delay.is_zero() {
                    return Err(Error::invalid(format!("{key}={value}: the delay must be greater than 0")));
                }
                self.backoff.delay = delay;
            }
            "retry-exponential" => self.backoff.exponential = parse_bool(key, value)?,
            "retry-readonly" => self.reopen_readonly = parse_bool(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for RetryFilter {
    fn thread_model(&self, below: ThreadModel) -> ThreadModel {
        below.min(ThreadModel::SerializeRequests)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        Ok(Box::new(RetryHandle {
            next: Arc::clone(next),
            args: args.clone(),
            backoff: self.backoff,
            reopen_readonly: self.reopen_readonly,
            state: Mutex::new(Below { handle: Some(below), reopens: 0 }),
        }))
    }
}

/// The layer below as this connection has it now.
struct Below {
    /// `None` after a reopen failed: the next try reopens again.
    handle: Option<Box<dyn Handle>>,
    reopens: u32,
}

/// One connection through the filter.
struct RetryHandle {
    next: Arc<dyn Backend>,
    args: OpenArgs,
    backoff: Backoff,
    reopen_readonly: bool,
    state: Mutex<Below>,
}

impl RetryHandle {
    fn state(&self) -> MutexGuard<'_, Below> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the handle below and opens a fresh one (read-only if so configured).
    fn reopen(&self, below: &mut Below) {
        if let Some(old) = below.handle.take() {
            if let Err(e) = old.finalize() {
                debug!("finalizing the old handle before reopening: {e}");
            }
        }
        below.reopens += 1;
        let args = if self.reopen_readonly { self.args.read_only() } else { self.args.clone() };
        match self.next.open(&args) {
            Ok(handle) => below.handle = Some(handle),
            Err(e) => debug!("reopen failed: {e}"),
        }
    }

    /// Runs `call` on the handle below, reopening it and trying again as the settings say.
    /// `range` (count, offset) is checked against the size after a reopen, which may have
    /// changed it: reads past the end fail with `EIO`, writes with `ENOSPC`.
    fn retried<T>(
        &self,
        what: &str,
        writes: bool,
        range: Option<(u64, u64)>,
        mut call: impl FnMut(&dyn Handle) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut below = self.state();
        with_retries(&self.args.conn, what, &self.backoff, |retry| {
            if retry > 0 {
                self.reopen(&mut below);
            }
            if writes && self.reopen_readonly && below.reopens > 0 {
                return Err(Failure::fatal(Error::new(libc::EROFS, format!("{what}: read-only after a retry"))));
            }
            let Some(handle) = below.handle.as_deref() else {
                return Err(
                    Error::new(libc::ESHUTDOWN, format!("{what}: the layer below could not be reopened")).into()
                );
            };
            if let (Some((count, offset)), true) = (range, below.reopens > 0) {
                if offset.saturating_add(count) > handle.get_size()? {
                    let errno = if writes { libc::ENOSPC } else { libc::EIO };
                    return Err(Error::new(errno, format!("{what}: beyond the end after a reopen")).into());
                }
            }
            call(handle)
        })
    }

    /// Calls that are not requests (size, capabilities) go to the current handle unretried.
    fn current<T>(&self, call: impl FnOnce(&dyn Handle) -> Result<T>) -> Result<T> {
        match self.state().handle.as_deref() {
            Some(handle) => call(handle),
            None => Err(Error::io("the layer below could not be reopened")),
        }
    }
}

impl Handle for RetryHandle {
    fn finalize(&self) -> Result<()> {
        let below = self.state();
        debug!("reopens needed: {}", below.reopens);
        // Not reachable through next(): finalized here.
        match below.handle.as_deref() {
            Some(handle) => handle.finalize(),
            None => Ok(()),
        }
    }

    fn get_size(&self) -> Result<u64> {
        self.current(|h| h.get_size())
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.current(|h| h.block_size())
    }

    fn export_description(&self) -> Result<Option<String>> {
        self.current(|h| h.export_description())
    }

    fn capabilities(&self) -> Result<Capabilities> {
        self.current(|h| h.capabilities())
    }

    fn meta_contexts(&self) -> Result<Vec<String>> {
        self.current(|h| h.meta_contexts())
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.retried("pread", false, Some((count, offset)), |h| {
            let mut watched = WatchedSink::new(&mut *sink);
            match h.read(count, offset, flags, &mut watched) {
                Err(e) if watched.delivered() => Err(Failure::fatal(e)),
                r => Ok(r?),
            }
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.retried("pwrite", true, Some((buf.len() as u64, offset)), |h| Ok(h.pwrite(buf, offset, flags)?))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.retried("flush", false, None, |h| Ok(h.flush(flags)?))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.retried("trim", true, Some((count, offset)), |h| Ok(h.trim(count, offset, flags)?))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.retried("zero", true, Some((count, offset)), |h| Ok(h.zero(count, offset, flags)?))
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.retried("extents", false, Some((count, offset)), |h| {
            unless_partly_done(extents, |e| h.extents(count, offset, flags, e))
        })
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.retried("block_status", false, Some((count, offset)), |h| {
            unless_partly_done(extents, |e| h.block_status(context, count, offset, flags, e))
        })
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.retried("cache", false, Some((count, offset)), |h| Ok(h.cache(count, offset, flags)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;
    use std::sync::atomic::Ordering;

    fn filter(params: &[(&str, &str)]) -> RetryFilter {
        let mut f = RetryFilter::default();
        for (k, v) in params {
            assert!(f.config(k, v).unwrap());
        }
        f
    }

    #[test]
    fn a_failing_request_is_retried_on_a_reopened_handle() {
        let f = filter(&[("retries", "3"), ("retry-delay", "1ms")]);
        let memory = MemBackend::failing(4096, 0, 0);
        let next: Arc<dyn Backend> = memory.clone();
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        memory.disk.fail_requests.store(2, Ordering::SeqCst);
        memory.fail_opens.store(1, Ordering::SeqCst);
        h.pwrite(b"again", 0, Flags::NONE).expect("the third try on a reopened handle works");
        assert_eq!(memory.opens.load(Ordering::SeqCst), 1 + 3, "first open, a failed reopen, two more");
        let mut buf = [0u8; 5];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"again");
        memory.disk.fail_requests.store(10, Ordering::SeqCst);
        assert_eq!(h.flush(Flags::NONE).unwrap_err().errno, libc::EIO, "past 3 retries the error stands");
        h.finalize().unwrap();
    }

    #[test]
    fn readonly_reopen_refuses_writes() {
        let f = filter(&[("retry-readonly", "yes"), ("retry-delay", "1ms"), ("retry-exponential", "no")]);
        let memory = MemBackend::failing(4096, 0, 0);
        let next: Arc<dyn Backend> = memory.clone();
        let h = f.open(&next, &OpenArgs::local("", false)).unwrap();
        memory.disk.fail_requests.store(1, Ordering::SeqCst);
        let mut buf = [0u8; 4];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(h.pwrite(b"x", 0, Flags::NONE).unwrap_err().errno, libc::EROFS);
    }

    #[test]
    fn bad_parameters() {
        let mut f = RetryFilter::default();
        assert!(f.config("retries", "-1").unwrap_err().message.starts_with("retries=-1:"));
        assert!(f.config("retry-delay", "0").unwrap_err().message.starts_with("retry-delay=0:"));
        assert!(f.config("retry-readonly", "sometimes").unwrap_err().message.starts_with("retry-readonly=sometimes:"));
        assert!(!f.config("size", "1").unwrap());
    }
}
