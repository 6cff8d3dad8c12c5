//! The `tar` filter: serves one file inside a tar archive, read and written in place
//! (nbdkit-tar-filter).
//!
//! The filter walks the archive's 512-byte headers from the start until it finds the member
//! named `tar-entry=` (exactly as `tar tf` lists it), then serves the member's bytes through a
//! [`Window`]: reads and writes go straight to the archive, which keeps its size and its other
//! members. It understands the ustar, GNU and pax forms of long names and sizes (`prefix`, `L`
//! records, `path=` and `size=` records); sparse members cannot be served in place and are
//! refused. nbdkit runs GNU tar to do this; nbdforge reads the headers itself, and takes `tar=`
//! (the program) for compatibility only. The first member of that name is served.
//!
//! `tar-limit=` bounds how far into the archive the search may read (as nbdkit 1.34 has it), for
//! archives behind a slow or metered plugin. The member's place is found once, on the first
//! open, and kept for the later connections.

use std::sync::{Arc, Mutex};

use nbdforge_api::{
    parse_size, Backend, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

use crate::window::Window;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("tar", "serve one file inside a tar archive").help(
        "tar-entry=<PATH>   The file in the archive to serve (required).\n\
         tar-limit=<SIZE>   Read at most this much of the archive to find it (default: no limit).",
    );
    Registration::filter(info, TarFilter::default)
}

/// The `tar` filter.
#[derive(Default)]
pub struct TarFilter {
    entry: Option<String>,
    limit: Option<u64>,
    /// The member's data: where it starts in the archive, and its size.
    found: Mutex<Option<(u64, u64)>>,
}

const BLOCK: u64 = 512;

/// What one header says.
struct Header {
    name: String,
    size: u64,
    kind: u8,
}

/// Parses the header block at `at`, or `None` at the end of the archive (a zero block).
fn header(block: &[u8], at: u64) -> Result<Option<Header>> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let bad = |why: &str| Error::new(libc::EIO, format!("tar: {why} in the header at byte {at}"));
    let sum: u64 =
        block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
    if octal(&block[148..156]) != Some(sum) {
        return Err(bad("bad checksum (not a tar archive?)"));
    }
    let size = number(&block[124..136]).ok_or_else(|| bad("bad size"))?;
    let mut name = text(&block[..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = text(&block[345..500]);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    Ok(Some(Header { name, size, kind: block[156] }))
}

/// A NUL-terminated field.
fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// An octal field, spaces and NULs around it allowed.
fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?.trim_matches(|c| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A numeric field: octal, or GNU's base-256 for large values (the top bit set).
fn number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return octal(field);
    }
    if field[0] != 0x80 || field[1..field.len() - 8].iter().any(|&b| b != 0) {
        return None;
    }
    Some(field[field.len() - 8..].iter().fold(0u64, |v, &b| v << 8 | u64::from(b)))
}

/// The `path` and `size` records of a pax extended header.
fn pax(data: &[u8]) -> (Option<String>, Option<u64>) {
    let (mut path, mut size) = (None, None);
    let mut rest = data;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space]).ok().and_then(|s| s.parse::<usize>().ok()) else {
            break;
        };
        if len <= space + 1 || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len - 1];
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = record.strip_prefix(b"size=") {
            size = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        }
        rest = &rest[len..];
    }
    (path, size)
}

/// Long names and pax records are read into memory; none is this long.
const MAX_META: u64 = 1 << 20;

impl TarFilter {
    /// Where the member's data starts and how long it is.
    fn find(&self, below: &dyn Handle) -> Result<(u64, u64)> {
        let entry = self.entry.as_deref().unwrap_or_default();
        let end = below.get_size()?;
        let limit = self.limit.unwrap_or(u64::MAX);
        let (mut long_name, mut pax_path, mut pax_size) = (None, None, None);
        let mut at = 0u64;
        let mut block = [0u8; BLOCK as usize];
        loop {
            if at + BLOCK > end {
                return Err(Error::new(libc::ENOENT, format!("tar: tar-entry={entry}: not in the archive")));
            }
            if at + BLOCK > limit {
                return Err(Error::new(
                    libc::ENOENT,
                    format!("tar: tar-entry={entry}: not found in the first {limit} bytes (tar-limit=)"),
                ));
            }
            below.pread(&mut block, at, Flags::NONE)?;
            let Some(h) = header(&block, at)? else {
                return Err(Error::new(libc::ENOENT, format!("tar: tar-entry={entry}: not in the archive")));
            };
            let data = at + BLOCK;
            let size = pax_size.take().unwrap_or(h.size);
            let next = size
                .checked_next_multiple_of(BLOCK)
                .and_then(|n| data.checked_add(n))
                .ok_or_else(|| Error::new(libc::EIO, format!("tar: bad size in the header at byte {at}")))?;
            let meta = || -> Result<Vec<u8>> {
                if size > MAX_META || data + size > end {
                    return Err(Error::new(libc::EIO, format!("tar: bad extended header at byte {at}")));
                }
                let mut buf = vec![0; size as usize];
                below.pread(&mut buf, data, Flags::NONE)?;
                Ok(buf)
            };
            match h.kind {
                b'L' => long_name = Some(text(&meta()?)),
                b'x' => (pax_path, pax_size) = pax(&meta()?),
                b'g' | b'K' => {}
                kind => {
                    let name = pax_path.take().or(long_name.take()).unwrap_or(h.name);
                    if name == entry {
                        if kind == b'S' {
                            return Err(Error::new(
                                libc::ENOTSUP,
                                format!("tar: tar-entry={entry}: a sparse member cannot be served in place"),
                            ));
                        }
                        if !matches!(kind, b'0' | b'\0' | b'7') {
                            return Err(Error::new(
                                libc::EINVAL,
                                format!("tar: tar-entry={entry}: not a regular file (type '{}')", kind as char),
                            ));
                        }
                        if data + size > end {
                            return Err(Error::new(
                                libc::EIO,
                                format!("tar: tar-entry={entry}: the archive is truncated"),
                            ));
                        }
                        return Ok((data, size));
                    }
                    // Links, directories, devices and fifos have no data, whatever their size says.
                    if matches!(kind, b'1'..=b'6') {
                        at = data;
                        continue;
                    }
                }
            }
            at = next;
        }
    }
}

impl Layer for TarFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "tar-entry" => self.entry = Some(value.to_string()),
            "tar-limit" => self.limit = Some(parse_size(key, value)?).filter(|&n| n > 0),
            // nbdkit's GNU tar program: nbdforge reads the archive itself.
            "tar" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        match self.entry.as_deref() {
            None | Some("") => Err(Error::invalid("tar-entry parameter missing")),
            Some(_) => Ok(()),
        }
    }
}

impl Filter for TarFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let (base, size) = match *found {
            Some(place) => place,
            None => *found.insert(self.find(&*below)?),
        };
        Ok(Box::new(Window::new(below, base, size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"  17 \0"), Some(15));
        assert_eq!(octal(b"9\0"), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(number(&big), Some(1 << 40));
        big[1] = 1;
        assert_eq!(number(&big), None);
    }

    #[test]
    fn pax_records() {
        let data = b"29 path=dir/a very long name\n17 size=12345678\n13 mtime=1.5\n";
        assert_eq!(pax(data), (Some("dir/a very long name".into()), Some(12345678)));
        assert_eq!(pax(b"99 path=x\n"), (None, None));
    }
}
