//! The `rate` filter: caps the bandwidth of reads and of writes, for the server as a whole
//! (`rate=`) and for each connection (`connection-rate=`), in bits per second.
//!
//! Each cap is a token bucket per direction: it holds up to `burstiness` seconds' worth of
//! bits, fills at the rate, and a request takes its size in bits; when the bucket runs dry the
//! request sleeps until the debt is paid. Zero and trim requests carry no data on the wire and
//! are free. A rate can follow a file (`rate-file=`, `connection-rate-file=`), re-read at most
//! once a second; while the file is missing the last rate stands. Sleeps end at once when the
//! server shuts down. Reads are passed down with the same sink after their wait.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nbdforge_api::{
    absolute_path, debug, parse_size, Backend, BufferSink, Connection, Error, Filter, Flags, Handle, Layer, LayerInfo,
    OpenArgs, ReadSink, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("rate", "limits the bandwidth of the server and of each connection").help(
        "rate=BITSPERSEC                Limit total bandwidth.\n\
         connection-rate=BITSPERSEC     Limit per-connection bandwidth.\n\
         rate-file=FILENAME             Dynamically adjust total bandwidth.\n\
         connection-rate-file=FILENAME  Dynamically adjust per-connection bandwidth.\n\
         burstiness=SECS                Bucket capacity in seconds (default: 2.0).",
    );
    Registration::filter(info, RateFilter::default)
}

/// How often a rate file is read again.
const FILE_CHECK: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a rate comes from: a fixed value, and possibly a file overriding it.
#[derive(Debug, Clone, Default)]
struct RateSetting {
    /// Bits per second; 0 for no limit.
    bits_per_sec: u64,
    file: Option<PathBuf>,
}

/// One direction's bucket, with its rate.
#[derive(Debug)]
struct Limiter {
    setting: Mutex<(RateSetting, Option<Instant>)>,
    bucket: Mutex<Bucket>,
    burstiness: f64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Bits available; negative when requests have borrowed ahead. `None` before the first use
    /// (the bucket starts full).
    level: Option<f64>,
    last: Option<Instant>,
}

impl Limiter {
    fn new(setting: &RateSetting, burstiness: f64) -> Self {
        Limiter { setting: Mutex::new((setting.clone(), None)), bucket: Mutex::default(), burstiness }
    }

    /// The rate now, reading the rate file if it is due.
    fn rate(&self) -> u64 {
        let mut guard = lock(&self.setting);
        let (setting, checked) = &mut *guard;
        if let Some(file) = &setting.file {
            if checked.is_none_or(|t| t.elapsed() >= FILE_CHECK) {
                *checked = Some(Instant::now());
                if let Ok(text) = std::fs::read_to_string(file) {
                    match parse_size(&file.display().to_string(), text.trim()) {
                        Ok(rate) => setting.bits_per_sec = rate,
                        Err(e) => debug!("ignoring the rate file: {e}"),
                    }
                }
            }
        }
        setting.bits_per_sec
    }

    /// Takes `bits` from the bucket; how long to wait before the request may go.
    fn take(&self, bits: u64) -> Duration {
        let rate = self.rate() as f64;
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        let capacity = rate * self.burstiness;
        let now = Instant::now();
        let mut bucket = lock(&self.bucket);
        let refill = bucket.last.map_or(0.0, |t| now.duration_since(t).as_secs_f64() * rate);
        let level = (bucket.level.unwrap_or(capacity) + refill).min(capacity) - bits as f64;
        bucket.level = Some(level);
        bucket.last = Some(now);
        if level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-level / rate).unwrap_or(Duration::MAX)
        }
    }
}

/// Read and write limiters of one scope (the server, or a connection).
#[derive(Debug)]
struct Limits {
    read: Limiter,
    write: Limiter,
}

impl Limits {
    fn new(setting: &RateSetting, burstiness: f64) -> Arc<Self> {
        Arc::new(Limits { read: Limiter::new(setting, burstiness), write: Limiter::new(setting, burstiness) })
    }
}

/// The `rate` filter.
#[derive(Debug)]
pub struct RateFilter {
    total: RateSetting,
    per_connection: RateSetting,
    burstiness: f64,
    /// Made in `config_complete`, once the settings are known.
    server: Option<Arc<Limits>>,
}

impl Default for RateFilter {
    fn default() -> Self {
        RateFilter {
            total: RateSetting::default(),
            per_connection: RateSetting::default(),
            burstiness: 2.0,
            server: None,
        }
    }
}

impl Layer for RateFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "rate" => self.total.bits_per_sec = parse_size(key, value)?,
            "connection-rate" => self.per_connection.bits_per_sec = parse_size(key, value)?,
            "rate-file" => self.total.file = Some(absolute_path(key, value)?),
            "connection-rate-file" => self.per_connection.file = Some(absolute_path(key, value)?),
            "burstiness" => {
                self.burstiness = value
                    .parse::<f64>()
                    .ok()
                    .filter(|b| b.is_finite() && *b > 0.0)
                    .ok_or_else(|| Error::invalid(format!("{key}={value}: not a positive number of seconds")))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.server = Some(Limits::new(&self.total, self.burstiness));
        Ok(())
    }
}

impl Filter for RateFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let server = self.server.clone().unwrap_or_else(|| Limits::new(&self.total, self.burstiness));
        Ok(Box::new(RateHandle {
            next: next.open(args)?,
            conn: Arc::clone(&args.conn),
            connection: Limits::new(&self.per_connection, self.burstiness),
            server,
        }))
    }
}

/// One connection through the filter.
struct RateHandle {
    next: Box<dyn Handle>,
    conn: Arc<Connection>,
    connection: Arc<Limits>,
    server: Arc<Limits>,
}

impl RateHandle {
    /// Waits until both the connection's and the server's buckets allow `bytes` more.
    fn wait(&self, pick: fn(&Limits) -> &Limiter, bytes: u64) -> Result<()> {
        let bits = bytes.saturating_mul(8);
        for limits in [&self.connection, &self.server] {
            let delay = pick(limits).take(bits);
            if !delay.is_zero() {
                self.conn.sleep(delay)?;
            }
        }
        Ok(())
    }
}

impl Handle for RateHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.wait(|l| &l.read, count)?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.wait(|l| &l.write, buf.len() as u64)?;
        self.next.pwrite(buf, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_paces() {
        let limiter = Limiter::new(&RateSetting { bits_per_sec: 8000, file: None }, 2.0);
        assert_eq!(limiter.take(16000), Duration::ZERO, "two seconds' worth fit in the full bucket");
        let wait = limiter.take(8000);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        let unlimited = Limiter::new(&RateSetting::default(), 2.0);
        assert_eq!(unlimited.take(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn the_rate_follows_its_file() {
        let path = std::env::temp_dir().join(format!("nbdforge-rate-{}", std::process::id()));
        std::fs::write(&path, "1M\n").unwrap();
        let limiter = Limiter::new(&RateSetting { bits_per_sec: 10, file: Some(path.clone()) }, 2.0);
        assert_eq!(limiter.rate(), 1 << 20);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(limiter.rate(), 1 << 20, "a missing file keeps the last rate");
    }

    #[test]
    fn parameters() {
        let mut f = RateFilter::default();
        assert!(f.config("rate", "1M").unwrap());
        assert!(f.config("connection-rate", "50K").unwrap());
        assert!(f.config("rate", "fast").unwrap_err().message.starts_with("rate=fast:"));
        assert!(f.config("burstiness", "-1").unwrap_err().message.starts_with("burstiness=-1:"));
        assert!(!f.config("size", "1").unwrap());
        f.config_complete().unwrap();
        assert_eq!(f.server.unwrap().read.rate(), 1 << 20);
    }
}
