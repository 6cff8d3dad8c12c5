//! The `ddrescue` filter: serves a disk image rescued by GNU ddrescue with its bad areas failing
//! again, as the original disk did, so that a tool reading the image finds out what was lost
//! (nbdkit-ddrescue-filter).
//!
//! The mapfile (`ddrescue-mapfile=`) lists the image in ranges with a status; only ranges marked
//! `+` (finished) were read from the disk. A read touching any other range fails with `EIO`. The
//! export is read-only. The mapfile is read once, at start-up.

use std::path::Path;
use std::sync::Arc;

use nbdforge_api::{
    parse_int, realpath, Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, ReadSink,
    Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ddrescue", "filter for serving from ddrescue dump")
        .help("ddrescue-mapfile=<FILENAME>  (required) The GNU ddrescue mapfile of the image.");
    Registration::filter(info, DdrescueFilter::default)
}

/// The `ddrescue` filter: the bad ranges, as (offset, end), sorted.
#[derive(Debug, Default)]
pub struct DdrescueFilter {
    mapfile: Option<String>,
    bad: Arc<Vec<(u64, u64)>>,
}

/// The ranges of a mapfile not marked `+`. Comment lines start with `#`; the first other line
/// is ddrescue's current position and status, the rest `POS SIZE STATUS`.
fn bad_ranges(text: &str, name: &str) -> Result<Vec<(u64, u64)>> {
    let mut bad = Vec::new();
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    for (i, line) in lines.skip(1) {
        let fail = |why: &str| Error::invalid(format!("{name}: line {}: {why}: {line}", i + 1));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [pos, size, status, ..] = fields[..] else {
            return Err(fail("expected POSITION SIZE STATUS"));
        };
        let pos: u64 = parse_int("position", pos).map_err(|e| fail(&e.message))?;
        let size: u64 = parse_int("size", size).map_err(|e| fail(&e.message))?;
        if status != "+" && size > 0 {
            bad.push((pos, pos.checked_add(size).ok_or_else(|| fail("range out of bounds"))?));
        }
    }
    bad.sort_unstable();
    Ok(bad)
}

impl Layer for DdrescueFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "ddrescue-mapfile" => {
                let path = realpath(key, value)?;
                let text = std::fs::read_to_string(&path).map_err(|e| Error::from_io(format!("{key}={value}"), &e))?;
                self.bad = Arc::new(bad_ranges(&text, &Path::new(value).display().to_string())?);
                self.mapfile = Some(value.to_string());
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.mapfile.is_none() {
            return Err(Error::invalid("the ddrescue-mapfile parameter is required"));
        }
        Ok(())
    }
}

impl Filter for DdrescueFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(DdrescueHandle { next: next.open(&args.read_only())?, bad: Arc::clone(&self.bad) }))
    }
}

struct DdrescueHandle {
    next: Box<dyn Handle>,
    bad: Arc<Vec<(u64, u64)>>,
}

impl DdrescueHandle {
    fn check(&self, count: u64, offset: u64) -> Result<()> {
        let end = offset + count;
        match self.bad.iter().find(|&&(s, e)| s < end && e > offset) {
            Some(&(s, e)) => {
                Err(Error::io(format!("read of {count} bytes at {offset} touches the unrescued range {s}-{e}")))
            }
            None => Ok(()),
        }
    }
}

impl Handle for DdrescueHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { write: false, ..self.next.capabilities()? })
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.check(count, offset)?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.check(buf.len() as u64, offset)?;
        self.next.pread(buf, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapfile() {
        let text = "# Mapfile. Created by GNU ddrescue\n# current_pos  current_status\n0x00000000     +\n\
                    #      pos        size  status\n0x00000000  0x00010000  +\n0x00010000  0x00000200  -\n\
                    0x00010200  0x00000400  *\n0x00010600  0x000F0000  +\n";
        assert_eq!(bad_ranges(text, "map").unwrap(), [(0x10000, 0x10200), (0x10200, 0x10600)]);
        let e = bad_ranges("0 +\n0x0 zz +\n", "map").unwrap_err();
        assert!(e.message.starts_with("map: line 2: "), "{}", e.message);
        assert!(bad_ranges("0 +\n0x0 +\n", "map").is_err());
    }
}
