//! The `extentlist` filter: answers block status from a list of extents in a file, for layers
//! that cannot find holes themselves (ssh, curl) when the list can be had some other way
//! (nbdkit-extentlist-filter).
//!
//! Each line of the file is `OFFSET LENGTH [TYPE]`: sizes as nbdkit parses them, and a type that
//! is a number (the NBD flags), empty (data), or `hole`, `zero` or `hole,zero`. Lines may come in
//! any order but must not overlap; what no line covers is a hole of zeroes. Blank lines and lines
//! starting with `#` are ignored. The list is read once, at start-up, and writes do not update it:
//! serve read-only (`-r`) unless you know the writes keep it true.

use std::sync::Arc;

use nbdforge_api::extents::{DATA, HOLE, ZERO};
use nbdforge_api::{
    parse_int, parse_size, realpath, Backend, Capabilities, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo,
    OpenArgs, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("extentlist", "place extent list over a plugin")
        .help("extentlist=<FILENAME>  (required) The file of extents: OFFSET LENGTH [TYPE] per line.");
    Registration::filter(info, ExtentlistFilter::default)
}

/// One line of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: u64,
    end: u64,
    flags: u32,
}

/// The `extentlist` filter: the list, sorted by offset.
#[derive(Debug, Default)]
pub struct ExtentlistFilter {
    file: Option<String>,
    list: Arc<Vec<Entry>>,
}

fn parse_list(text: &str, name: &str) -> Result<Vec<Entry>> {
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |why: &str| Error::invalid(format!("{name}: line {}: {why}: {line}", i + 1));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (offset, length, kind) = match fields[..] {
            [o, l] => (o, l, ""),
            [o, l, t] => (o, l, t),
            _ => return Err(fail("expected OFFSET LENGTH [TYPE]")),
        };
        let offset = parse_size("offset", offset).map_err(|e| fail(&e.message))?;
        let length = parse_size("length", length).map_err(|e| fail(&e.message))?;
        let flags = if kind.is_empty() {
            DATA
        } else if kind.starts_with(|c: char| c.is_ascii_digit()) {
            parse_int::<u32>("type", kind).map_err(|e| fail(&e.message))?
        } else {
            kind.split(',').try_fold(DATA, |f, word| match word {
                "hole" => Ok(f | HOLE),
                "zero" => Ok(f | ZERO),
                _ => Err(fail(&format!("unknown type '{word}' (use hole, zero or a number)"))),
            })?
        };
        if length > 0 {
            list.push(Entry { offset, end: offset.saturating_add(length), flags });
        }
    }
    list.sort_unstable_by_key(|e| e.offset);
    if let Some(w) = list.windows(2).find(|w| w[1].offset < w[0].end) {
        return Err(Error::invalid(format!("{name}: the extents at {} and {} overlap", w[0].offset, w[1].offset)));
    }
    Ok(list)
}

impl Layer for ExtentlistFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "extentlist" => {
                let path = realpath(key, value)?;
                let text = std::fs::read_to_string(&path).map_err(|e| Error::from_io(format!("{key}={value}"), &e))?;
                self.list = Arc::new(parse_list(&text, value)?);
                self.file = Some(value.to_string());
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::invalid("the extentlist parameter is required"));
        }
        Ok(())
    }
}

impl Filter for ExtentlistFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ExtentlistHandle { next: next.open(args)?, list: Arc::clone(&self.list) }))
    }
}

struct ExtentlistHandle {
    next: Box<dyn Handle>,
    list: Arc<Vec<Entry>>,
}

impl Handle for ExtentlistHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { extents: true, ..self.next.capabilities()? })
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        let end = offset + count;
        let mut at = extents.next_offset().max(offset);
        // The first entry ending after `at`, then on in order, filling gaps with holes.
        let mut i = self.list.partition_point(|e| e.end <= at);
        while at < end && !extents.is_full() {
            match self.list.get(i) {
                Some(e) if e.offset <= at => {
                    extents.add(at, e.end - at, e.flags)?;
                    i += 1;
                }
                Some(e) => extents.add(at, e.offset - at, HOLE | ZERO)?,
                None => extents.add(at, end - at, HOLE | ZERO)?,
            }
            at = extents.next_offset();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Extent;

    #[test]
    fn list_and_extents() {
        let text = "# a 10M disk\n1M 1M hole,zero\n0 1M\n\n3M 1M 2\n";
        let list = parse_list(text, "list").unwrap();
        assert_eq!(list.len(), 3);
        let h = ExtentlistHandle { next: Box::new(crate::test_disk::MemDisk::new(16)), list: Arc::new(list) };
        let mut e = Extents::new(512, 5 << 20);
        h.extents((5 << 20) - 512, 512, Flags::NONE, &mut e).unwrap();
        assert_eq!(
            e.as_slice(),
            &[
                Extent { offset: 512, length: (1 << 20) - 512, flags: DATA },
                Extent { offset: 1 << 20, length: 2 << 20, flags: HOLE | ZERO },
                Extent { offset: 3 << 20, length: 1 << 20, flags: ZERO },
                Extent { offset: 4 << 20, length: 1 << 20, flags: HOLE | ZERO },
            ]
        );
        assert!(parse_list("0 1M\n512K 1M\n", "list").unwrap_err().message.contains("overlap"));
        assert!(parse_list("0 1M sparse\n", "list").unwrap_err().message.starts_with("list: line 1: unknown type"));
    }
}
