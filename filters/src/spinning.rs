//! The `spinning` filter: adds seek delays, as if the disk were a spinning one with heads on
//! arms, and advertises the export as rotational.
//!
//! The disk is cut into `heads` equal sections, one per head. An access at the spot where the
//! head's last access ended costs nothing; any other costs a seek whose time grows with the
//! distance as a fraction `d` of a section: `min + b·d + c·d²`, the curve through
//! `min-seek-time` (adjacent), `half-seek-time` (d = ½) and `max-seek-time` (d = 1). The head
//! then rests at the end of the access. With one arm (`separate-heads=false`, the default) all
//! heads move together and every access waits for the arm; with separate arms, accesses under
//! different heads run in parallel. The position is the server's, shared by all connections.
//! Seeks sleep through `Connection::sleep`, so a shutdown cuts them short.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbdforge_api::{
    parse_bool, parse_int, Backend, Capabilities, Connection, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("spinning", "adds seek delays to simulate a spinning hard disk").help(
        "heads=<N>                      Number of heads (default: 1).\n\
         separate-heads=true|false      Heads move independently (default: false).\n\
         min-seek-time=<SECS>           Seek time to an adjacent track (default: 0.01).\n\
         half-seek-time=<SECS>          Seek time across half the disk (default: 0.2).\n\
         max-seek-time=<SECS>           Seek time across the whole disk (default: 0.5).",
    );
    Registration::filter(info, SpinningFilter::default)
}

/// Seek times, in seconds.
#[derive(Debug, Clone, Copy)]
struct SeekCurve {
    min: f64,
    half: f64,
    max: f64,
}

impl SeekCurve {
    /// The seek time across a fraction `d` (0 to 1) of a section; nothing for no move.
    fn time(&self, d: f64) -> Duration {
        if d <= 0.0 {
            return Duration::ZERO;
        }
        let c = 2.0 * (self.max - 2.0 * self.half + self.min);
        let b = (self.max - self.min) - c;
        Duration::from_secs_f64((self.min + b * d + c * d * d).max(0.0))
    }
}

/// Where the heads rest: one position per arm, as an offset within a section.
#[derive(Debug)]
struct Arms {
    positions: Vec<Mutex<u64>>,
}

/// The `spinning` filter.
#[derive(Debug)]
pub struct SpinningFilter {
    heads: u64,
    separate: bool,
    curve: SeekCurve,
    arms: Option<Arc<Arms>>,
}

impl Default for SpinningFilter {
    fn default() -> Self {
        SpinningFilter { heads: 1, separate: false, curve: SeekCurve { min: 0.01, half: 0.2, max: 0.5 }, arms: None }
    }
}

fn seconds(key: &str, value: &str) -> Result<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| Error::invalid(format!("{key}={value}: not a number of seconds")))
}

impl Layer for SpinningFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "heads" => {
                self.heads = parse_int(key, value)?;
                if self.heads == 0 {
                    return Err(Error::invalid(format!("{key}={value}: there must be at least one head")));
                }
            }
            "separate-heads" => self.separate = parse_bool(key, value)?,
            "min-seek-time" => self.curve.min = seconds(key, value)?,
            "half-seek-time" => self.curve.half = seconds(key, value)?,
            "max-seek-time" => self.curve.max = seconds(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let arms = if self.separate { self.heads } else { 1 };
        self.arms = Some(Arc::new(Arms { positions: (0..arms).map(|_| Mutex::new(0)).collect() }));
        Ok(())
    }
}

impl Filter for SpinningFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let size = below.get_size()?;
        let arms = match &self.arms {
            Some(arms) => Arc::clone(arms),
            None => return Err(Error::invalid("spinning: not configured")),
        };
        Ok(Box::new(SpinningHandle {
            next: below,
            conn: Arc::clone(&args.conn),
            section: size.div_ceil(self.heads).max(1),
            heads: self.heads,
            curve: self.curve,
            arms,
        }))
    }
}

/// One connection through the filter.
struct SpinningHandle {
    next: Box<dyn Handle>,
    conn: Arc<Connection>,
    /// Bytes under each head.
    section: u64,
    heads: u64,
    curve: SeekCurve,
    arms: Arc<Arms>,
}

impl SpinningHandle {
    /// Moves the head over `offset` (sleeping for the seek), runs `access` with the arm held,
    /// and leaves the head at the end of the access.
    fn seek<T>(&self, count: u64, offset: u64, access: impl FnOnce() -> Result<T>) -> Result<T> {
        let head = (offset / self.section).min(self.heads - 1);
        let arm = if self.arms.positions.len() == 1 { 0 } else { head as usize };
        let mut position: MutexGuard<'_, u64> = self.arms.positions[arm].lock().unwrap_or_else(|p| p.into_inner());
        let target = offset - head * self.section;
        let distance = target.abs_diff(*position) as f64 / self.section as f64;
        let delay = self.curve.time(distance.min(1.0));
        if !delay.is_zero() {
            self.conn.sleep(delay)?;
        }
        let result = access();
        *position = (target + count).min(self.section);
        result
    }
}

impl Handle for SpinningHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { rotational: true, ..self.next.capabilities()? })
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn nbdforge_api::ReadSink) -> Result<()> {
        self.seek(count, offset, || self.next.read(count, offset, flags, sink))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut nbdforge_api::BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.seek(buf.len() as u64, offset, || self.next.pwrite(buf, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.seek(count, offset, || self.next.zero(count, offset, flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.seek(count, offset, || self.next.trim(count, offset, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;
    use std::time::Instant;

    #[test]
    fn the_default_curve_goes_through_its_three_points() {
        let curve = SpinningFilter::default().curve;
        let close = |d: f64, want: f64| (curve.time(d).as_secs_f64() - want).abs() < 1e-9;
        assert!(close(0.5, 0.2) && close(1.0, 0.5));
        assert!(curve.time(1e-9) >= Duration::from_millis(9), "an adjacent track costs min-seek-time");
        assert_eq!(curve.time(0.0), Duration::ZERO);
    }

    #[test]
    fn sequential_access_is_free_far_seeks_are_not() {
        let mut f = SpinningFilter::default();
        assert!(f.config("max-seek-time", "0.3").unwrap());
        f.config_complete().unwrap();
        let h = f.open(&MemBackend::disk(1 << 20), &OpenArgs::local("", false)).unwrap();
        assert!(h.capabilities().unwrap().rotational);
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        for i in 0..10 {
            h.pread(&mut buf, i * 4096, Flags::NONE).unwrap();
        }
        assert!(start.elapsed() < Duration::from_millis(100), "sequential reads waited");
        let start = Instant::now();
        h.pread(&mut buf, (1 << 20) - 4096, Flags::NONE).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(250), "a seek across the disk did not wait");
        assert!(f.config("heads", "0").is_err());
        assert!(f.config("min-seek-time", "soon").unwrap_err().message.starts_with("min-seek-time=soon:"));
    }
}
