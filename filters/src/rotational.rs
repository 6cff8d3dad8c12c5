//! The `rotational` filter: sets or clears the export's rotational flag
//! (`NBD_FLAG_ROTATIONAL`), the hint that the disk seeks like a spinning one and that clients
//! should sort their requests (nbdkit-rotational-filter). Without a parameter it sets the flag.

use std::sync::Arc;

use nbdforge_api::{
    parse_bool, Backend, Capabilities, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("rotational", "set if the plugin is rotational or not")
        .help("rotational=true|false  Whether the export says it is rotational (default true).");
    Registration::filter(info, RotationalFilter::default)
}

/// The `rotational` filter.
#[derive(Debug)]
pub struct RotationalFilter {
    rotational: bool,
}

impl Default for RotationalFilter {
    fn default() -> Self {
        RotationalFilter { rotational: true }
    }
}

impl Layer for RotationalFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "rotational" => self.rotational = parse_bool(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for RotationalFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(RotationalHandle { next: next.open(args)?, rotational: self.rotational }))
    }
}

struct RotationalHandle {
    next: Box<dyn Handle>,
    rotational: bool,
}

impl Handle for RotationalHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { rotational: self.rotational, ..self.next.capabilities()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn sets_and_clears() {
        let mut disk = MemDisk::new(512);
        assert!(open_over(RotationalFilter::default(), &[], &disk).unwrap().capabilities().unwrap().rotational);
        disk.caps.rotational = true;
        let h = open_over(RotationalFilter::default(), &[("rotational", "off")], &disk).unwrap();
        assert!(!h.capabilities().unwrap().rotational);
        let e = RotationalFilter::default().config("rotational", "spinning").unwrap_err();
        assert!(e.message.starts_with("rotational=spinning: "));
    }
}
