//! The `limit` filter: refuses clients past a number connected at once (`limit=`, default 1;
//! 0 for no limit).
//!
//! The count is checked in `preconnect`, so a refused client is dropped before the handshake,
//! and again when the connection opens, since two clients may pass `preconnect` together.

use std::sync::Arc;

use nbdforge_api::{
    parse_int, Backend, ClientInfo, Error, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

use crate::counted::{Counted, OpenCount};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("limit", "limits the number of clients connected at once")
        .help("limit=<N>                      Limit number of clients (default: 1, 0 = unlimited).");
    Registration::filter(info, LimitFilter::default)
}

/// The `limit` filter.
#[derive(Debug)]
pub struct LimitFilter {
    /// `None` for no limit.
    limit: Option<usize>,
    open: Arc<OpenCount>,
}

impl Default for LimitFilter {
    fn default() -> Self {
        LimitFilter { limit: Some(1), open: Arc::default() }
    }
}

impl LimitFilter {
    fn too_many(&self) -> Error {
        Error::new(libc::EBUSY, format!("too many clients connected ({}), connection rejected", self.open.get()))
    }
}

impl Layer for LimitFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "limit" {
            return Ok(false);
        }
        let limit: usize = parse_int(key, value)?;
        self.limit = (limit > 0).then_some(limit);
        Ok(true)
    }
}

impl Filter for LimitFilter {
    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        if self.limit.is_some_and(|limit| self.open.get() >= limit) {
            return Err(self.too_many());
        }
        next.preconnect(client, readonly)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        if !self.open.try_enter(self.limit) {
            return Err(self.too_many());
        }
        Ok(Counted::boxed(below, &self.open, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;

    #[test]
    fn refuses_past_the_limit_and_zero_means_none() {
        let mut f = LimitFilter::default();
        let next = MemBackend::disk(512);
        let client = ClientInfo::default();
        let first = f.open(&next, &OpenArgs::local("", false)).unwrap();
        assert_eq!(f.preconnect(next.as_ref(), &client, false).unwrap_err().errno, libc::EBUSY);
        assert!(f.open(&next, &OpenArgs::local("", false)).is_err());
        drop(first);
        f.preconnect(next.as_ref(), &client, false).unwrap();
        assert!(f.config("limit", "0").unwrap());
        let _many: Vec<_> = (0..5).map(|_| f.open(&next, &OpenArgs::local("", false)).unwrap()).collect();
        assert!(f.config("limit", "many").unwrap_err().message.starts_with("limit=many:"));
    }
}
