//! The `protect` filter: write-protects byte ranges of the layer below while the rest stays
//! writable, for example a boot sector or everything outside one partition
//! (nbdkit-protect-filter).
//!
//! `protect=START-END` protects the bytes START to END inclusive (either end may be left out:
//! the start or the end of the disk); `protect=~START-END` protects everything else; the
//! parameter may be repeated. A write into a protected range succeeds only if it leaves the data
//! as it is (the filter reads and compares, with [`crate::compare`]); zeroing succeeds only where the data already reads
//! as zeroes; a trim touching a protected range fails. Refusals are `EPERM`.

use std::sync::Arc;

use nbdforge_api::{
    parse_int, Backend, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

use crate::compare::{first_difference, Expected};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("protect", "write-protect parts of the plugin")
        .help("protect=<START>-<END>  Protect bytes START to END (inclusive); ~ protects all but them.");
    Registration::filter(info, ProtectFilter::default)
}

/// The `protect` filter: the protected ranges, inclusive, sorted and merged.
#[derive(Debug, Default)]
pub struct ProtectFilter {
    ranges: Vec<(u64, u64)>,
}

/// Parses `START-END` or `~START-END` into the inclusive ranges it protects.
fn parse_ranges(key: &str, value: &str) -> Result<Vec<(u64, u64)>> {
    let (complement, text) = match value.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let (start, end) = text.split_once('-').ok_or_else(|| fail("expected START-END"))?;
    let number = |s: &str, default: u64| -> Result<u64> {
        if s.is_empty() {
            return Ok(default);
        }
        parse_int::<u64>(key, s).map_err(|_| fail(&format!("'{s}' is not a number")))
    };
    let (start, end) = (number(start, 0)?, number(end, u64::MAX)?);
    if end < start {
        return Err(fail("the end of the range is before its start"));
    }
    if !complement {
        return Ok(vec![(start, end)]);
    }
    let mut out = Vec::new();
    if start > 0 {
        out.push((0, start - 1));
    }
    if end < u64::MAX {
        out.push((end + 1, u64::MAX));
    }
    Ok(out)
}

impl Layer for ProtectFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "protect" {
            return Ok(false);
        }
        self.ranges.extend(parse_ranges(key, value)?);
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
        Ok(true)
    }
}

impl Filter for ProtectFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ProtectHandle { next: next.open(args)?, ranges: self.ranges.clone() }))
    }
}

struct ProtectHandle {
    next: Box<dyn Handle>,
    ranges: Vec<(u64, u64)>,
}

impl ProtectHandle {
    /// The protected parts of `[offset, offset + count)`, as (offset, length).
    fn protected(&self, count: u64, offset: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let last = offset + count - 1;
        self.ranges.iter().filter(move |&&(s, e)| s <= last && e >= offset).map(move |&(s, e)| {
            let from = s.max(offset);
            (from, e.min(last) - from + 1)
        })
    }

    fn refuse(what: &str, at: u64) -> Error {
        Error::new(libc::EPERM, format!("{what} would change the protected range at offset {at}"))
    }

    /// Fails unless every protected part of the range already holds what `expected` says.
    fn check(&self, what: &str, count: u64, offset: u64, expected: Expected) -> Result<()> {
        for (at, len) in self.protected(count, offset) {
            let part = match expected {
                Expected::Bytes(data) => Expected::Bytes(&data[(at - offset) as usize..(at - offset + len) as usize]),
                Expected::Zeroes => Expected::Zeroes,
            };
            if let Some(differs) = first_difference(&*self.next, len, at, part)? {
                return Err(Self::refuse(what, differs));
            }
        }
        Ok(())
    }
}

impl Handle for ProtectHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        if !buf.is_empty() {
            self.check("write", buf.len() as u64, offset, Expected::Bytes(buf))?;
        }
        self.next.pwrite(buf, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if count > 0 {
            self.check("zero", count, offset, Expected::Zeroes)?;
        }
        self.next.zero(count, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if count > 0 {
            if let Some((at, _)) = self.protected(count, offset).next() {
                return Err(Self::refuse("trim", at));
            }
        }
        self.next.trim(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn ranges() {
        assert_eq!(parse_ranges("protect", "0-0x1bd").unwrap(), [(0, 0x1bd)]);
        assert_eq!(parse_ranges("protect", "010-").unwrap(), [(8, u64::MAX)]);
        assert_eq!(parse_ranges("protect", "~512-1023").unwrap(), [(0, 511), (1024, u64::MAX)]);
        assert_eq!(parse_ranges("protect", "~-").unwrap(), []);
        assert!(parse_ranges("protect", "5-4").unwrap_err().message.starts_with("protect=5-4: "));
        assert!(parse_ranges("protect", "1k-2k").unwrap_err().message.contains("'1k'"));
        let mut f = ProtectFilter::default();
        f.config("protect", "0-99").unwrap();
        f.config("protect", "100-199").unwrap();
        f.config("protect", "50-60").unwrap();
        assert_eq!(f.ranges, [(0, 199)]);
    }

    #[test]
    fn only_changes_to_protected_bytes_are_refused() {
        let disk = MemDisk::new(4096);
        disk.pwrite(&[1; 100], 1000, Flags::NONE).unwrap();
        let h = open_over(ProtectFilter::default(), &[("protect", "1000-1099")], &disk).unwrap();
        h.pwrite(&[2; 100], 0, Flags::NONE).unwrap();
        h.pwrite(&[1; 100], 1000, Flags::NONE).unwrap();
        let mut same_then_new = vec![0u8; 20];
        same_then_new[10..].fill(1);
        h.pwrite(&same_then_new, 990, Flags::NONE).unwrap();
        assert_eq!(h.pwrite(&[3; 10], 1095, Flags::NONE).unwrap_err().errno, libc::EPERM);
        assert_eq!(disk.data.lock().unwrap()[1096], 1, "a refused write changes nothing");
        assert_eq!(h.zero(10, 1090, Flags::NONE).unwrap_err().errno, libc::EPERM);
        assert_eq!(h.trim(4096, 0, Flags::NONE).unwrap_err().errno, libc::EPERM);
        h.zero(1000, 0, Flags::NONE).unwrap();
        h.trim(100, 1100, Flags::NONE).unwrap();
    }
}
