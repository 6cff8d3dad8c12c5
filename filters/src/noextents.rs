//! The `noextents` filter: hides the layer below's block status, so the export looks fully
//! allocated (nbdkit-noextents-filter).
//!
//! It only says "no extents" in the capabilities; the server then answers `base:allocation` with
//! one run of data, as it does for any layer without extents. Other meta contexts of the layer
//! below pass through untouched.

use std::sync::Arc;

use nbdforge_api::{Backend, Capabilities, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(LayerInfo::new("noextents", "disable extents (block status)"), || NoextentsFilter)
}

/// The `noextents` filter. It takes no parameters.
#[derive(Debug, Default)]
pub struct NoextentsFilter;

impl Layer for NoextentsFilter {}

impl Filter for NoextentsFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(NoextentsHandle { next: next.open(args)? }))
    }
}

struct NoextentsHandle {
    next: Box<dyn Handle>,
}

impl Handle for NoextentsHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { extents: false, ..self.next.capabilities()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn extents_are_not_offered() {
        let h = open_over(NoextentsFilter, &[], &MemDisk::new(512)).unwrap();
        let caps = h.capabilities().unwrap();
        assert!(!caps.extents && caps.write);
    }
}
