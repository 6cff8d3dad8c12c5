//! What the `retry` and `retry-request` filters share: the loop that tries a request again after
//! a delay (doubling it each time if asked), and the guards that keep a request from being tried
//! again once part of its answer is out: a read sink that remembers whether data went to the
//! client, and a block status call that added runs before failing.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use nbdforge_api::{debug, Connection, Error, Extents, ReadSink, Result};

/// How many times to try again, and how long to wait before each try.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub retries: u32,
    pub delay: Duration,
    /// Double the delay after each try.
    pub exponential: bool,
}

/// A failed attempt: its error, and whether trying again could help.
pub struct Failure {
    pub error: Error,
    pub retry: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { error, retry: true }
    }
}

impl Failure {
    /// An error that ends the request at once.
    pub fn fatal(error: Error) -> Self {
        Failure { error, retry: false }
    }
}

/// Calls `attempt(0)`, and on a failure that may be retried, waits and calls `attempt(1)`,
/// `attempt(2)`... up to `backoff.retries`. The waits end early with `ESHUTDOWN` when the server
/// shuts down or drops the client. `what` names the request in the debug log.
pub fn with_retries<T>(
    conn: &Connection,
    what: &str,
    backoff: &Backoff,
    mut attempt: impl FnMut(u32) -> std::result::Result<T, Failure>,
) -> Result<T> {
    let mut delay = backoff.delay;
    let mut retry = 0;
    loop {
        let failure = match attempt(retry) {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        debug!("{what} failed: original errno = {} ({})", failure.error.errno, failure.error.message);
        if !failure.retry {
            return Err(failure.error);
        }
        if retry >= backoff.retries {
            debug!("could not recover after {} retries", backoff.retries);
            return Err(failure.error);
        }
        retry += 1;
        debug!("retry {retry}: waiting {} seconds before retrying", delay.as_secs_f64());
        if !delay.is_zero() {
            conn.sleep(delay)?;
        }
        if backoff.exponential {
            delay = delay.saturating_mul(2);
        }
    }
}

/// A sink passed down in place of the server's, recording whether the data was handed over as
/// borrowed memory or a file (and so may be on its way to the client already).
pub struct WatchedSink<'a> {
    sink: &'a mut dyn ReadSink,
    delivered: bool,
}

impl<'a> WatchedSink<'a> {
    pub fn new(sink: &'a mut dyn ReadSink) -> Self {
        WatchedSink { sink, delivered: false }
    }

    /// Whether data went past the buffer: a read that then failed must not be repeated.
    pub fn delivered(&self) -> bool {
        self.delivered
    }
}

impl ReadSink for WatchedSink<'_> {
    fn buffer(&mut self) -> Result<&mut [u8]> {
        self.sink.buffer()
    }

    fn borrowed(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.delivered = true;
        self.sink.borrowed(parts)
    }

    fn borrowed_pages(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.delivered = true;
        self.sink.borrowed_pages(parts)
    }

    fn file(&mut self, file: BorrowedFd<'_>, offset: u64, holes: &[(u64, u64)]) -> Result<()> {
        self.delivered = true;
        self.sink.file(file, offset, holes)
    }
}

/// Runs a block status call; if it fails after adding runs, those cannot be taken back, so the
/// failure is final.
pub fn unless_partly_done(
    extents: &mut Extents,
    call: impl FnOnce(&mut Extents) -> Result<()>,
) -> std::result::Result<(), Failure> {
    let before = extents.as_slice().len();
    match call(extents) {
        Err(e) if extents.as_slice().len() != before => Err(Failure::fatal(e)),
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn tries_again_up_to_the_limit_with_growing_delays() {
        let conn = Connection::detached();
        let backoff = Backoff { retries: 3, delay: Duration::from_millis(10), exponential: true };
        let start = Instant::now();
        let mut seen = Vec::new();
        let r: Result<()> = with_retries(&conn, "pread", &backoff, |n| {
            seen.push(n);
            Err(Error::io("down").into())
        });
        assert_eq!(r.unwrap_err().message, "down");
        assert_eq!(seen, [0, 1, 2, 3]);
        assert!(start.elapsed() >= Duration::from_millis(70), "10 + 20 + 40 ms");
        let r = with_retries(&conn, "pwrite", &backoff, |n| if n < 2 { Err(Error::io("x").into()) } else { Ok(n) });
        assert_eq!(r.unwrap(), 2);
        let mut calls = 0;
        let r: Result<()> = with_retries(&conn, "pwrite", &backoff, |_| {
            calls += 1;
            Err(Failure::fatal(Error::new(libc::EROFS, "read-only")))
        });
        assert_eq!((r.unwrap_err().errno, calls), (libc::EROFS, 1));
    }
}
