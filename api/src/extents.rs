//! Collecting block status: a backend's `extents` call appends runs of data, holes and zeroes to an
//! [`Extents`] list covering the requested range.

use std::time::Instant;

use crate::{Error, Result};

/// The most runs one reply carries, as in nbdkit: a client asks again from where it ends.
pub const MAX_EXTENTS: usize = 1 << 20;

/// The range reads as zeroes (`NBD_STATE_ZERO`).
pub const ZERO: u32 = 2;
/// The range is not allocated (`NBD_STATE_HOLE`).
pub const HOLE: u32 = 1;
/// Allocated data (neither flag).
pub const DATA: u32 = 0;

/// One run of the same allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset of the run.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// [`HOLE`] and/or [`ZERO`], or [`DATA`].
    pub flags: u32,
}

/// The extents a backend reports for a request.
///
/// The server creates it for the range `[start, end)` the client asked about. A backend calls
/// [`Extents::add`] with consecutive runs beginning at `start`; it may describe more or less than the
/// requested range (at least one byte). Parts before `start` are dropped, parts past `end` clipped,
/// and neighbours with the same flags are merged.
///
/// A list is bounded: past [`MAX_EXTENTS`] runs, or past its deadline, it is full and takes no
/// more, and the client gets a reply shorter than it asked for (which the protocol allows).
#[derive(Debug, Clone)]
pub struct Extents {
    end: u64,
    next: u64,
    list: Vec<Extent>,
    max: usize,
    deadline: Option<Instant>,
}

impl Extents {
    /// An empty list for the range `[start, end)`, holding up to [`MAX_EXTENTS`] runs.
    pub fn new(start: u64, end: u64) -> Self {
        Extents { end, next: start, list: Vec::new(), max: MAX_EXTENTS, deadline: None }
    }

    /// The same, full after `max` runs (at least one) or once `deadline` has passed.
    pub fn bounded(start: u64, end: u64, max: usize, deadline: Option<Instant>) -> Self {
        Extents { max: max.max(1), deadline, ..Self::new(start, end) }
    }

    /// Where the next extent must begin: `start`, then the end of the last one added.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// The end of the range asked about.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// True once the whole range is described, or the list is at its limit of runs or time (a
    /// backend stops adding then).
    pub fn is_full(&self) -> bool {
        self.next >= self.end
            || self.list.len() >= self.max
            || (!self.list.is_empty() && self.deadline.is_some_and(|d| Instant::now() >= d))
    }

    /// Appends a run `[offset, offset + length)` with `flags`. Runs must be contiguous: `offset`
    /// may not leave a gap after the previous run. Overlaps with what was already described are
    /// ignored, as is anything past the end of the range.
    pub fn add(&mut self, offset: u64, length: u64, flags: u32) -> Result<()> {
        let run_end = offset.saturating_add(length);
        if self.next >= self.end {
            return Ok(());
        }
        if offset > self.next {
            return Err(Error::invalid(format!(
                "extents: run at offset {offset} leaves a gap after offset {}",
                self.next
            )));
        }
        if run_end <= self.next || self.next >= self.end {
            return Ok(());
        }
        let from = self.next;
        let to = run_end.min(self.end);
        let full = self.list.len() >= self.max;
        match self.list.last_mut() {
            Some(last) if last.flags == flags => last.length += to - from,
            _ if full => {
                // The reply ends here, at a run boundary.
                self.end = self.next;
                return Ok(());
            }
            _ => self.list.push(Extent { offset: from, length: to - from, flags }),
        }
        self.next = to;
        Ok(())
    }

    /// The collected runs, in order.
    pub fn as_slice(&self) -> &[Extent] {
        &self.list
    }

    /// Takes the collected runs.
    pub fn into_vec(self) -> Vec<Extent> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_clips_and_drops_overlap() {
        let mut e = Extents::new(100, 1000);
        e.add(0, 200, DATA).unwrap();
        e.add(200, 100, DATA).unwrap();
        e.add(300, 10_000, HOLE | ZERO).unwrap();
        assert!(e.is_full());
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 100, length: 200, flags: DATA },
                Extent { offset: 300, length: 700, flags: HOLE | ZERO }
            ]
        );
    }

    #[test]
    fn stops_at_its_limit_of_runs() {
        let mut e = Extents::bounded(0, 1000, 3, None);
        for i in 0..10 {
            e.add(i * 10, 10, (i % 2) as u32).unwrap();
        }
        assert!(e.is_full());
        assert_eq!(e.as_slice().len(), 3);
        assert_eq!(e.next_offset(), 30, "the list ends where its last run ends");
    }

    #[test]
    fn stops_at_its_deadline_after_one_run() {
        let past = Instant::now() - std::time::Duration::from_secs(1);
        let mut e = Extents::bounded(0, 1000, MAX_EXTENTS, Some(past));
        assert!(!e.is_full(), "a list always gets its first run");
        e.add(0, 10, DATA).unwrap();
        assert!(e.is_full());
    }

    #[test]
    fn refuses_a_gap() {
        let mut e = Extents::new(0, 100);
        e.add(0, 10, DATA).unwrap();
        assert_eq!(e.add(20, 10, DATA).unwrap_err().errno, libc::EINVAL);
    }
}
