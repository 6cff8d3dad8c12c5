//! The `noparallel` filter: serializes requests more than the plugin needs, to measure what
//! parallelism is worth or to work around a plugin or client that mishandles it
//! (nbdkit-noparallel-filter).
//!
//! Its whole policy is a thread model: `serialize=requests` (the default) is one request at a
//! time per connection, `all-requests` one at a time across all connections, `connections` one
//! client at a time. The server takes the most restrictive model in the stack and does the
//! locking. With one client at a time, several connections cannot share a cache, so
//! `connections` also stops offering multi-conn.

use std::sync::Arc;

use nbdforge_api::{
    Backend, Capabilities, Error, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result, ThreadModel,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("noparallel", "serialize requests")
        .help("serialize=<MODE>  'requests' (default), 'all-requests', or 'connections'.");
    Registration::filter(info, NoparallelFilter::default)
}

/// The `noparallel` filter.
#[derive(Debug)]
pub struct NoparallelFilter {
    model: ThreadModel,
}

impl Default for NoparallelFilter {
    fn default() -> Self {
        NoparallelFilter { model: ThreadModel::SerializeRequests }
    }
}

impl Layer for NoparallelFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        // nbdkit takes both spellings of the key, and of all-requests.
        if key != "serialize" && key != "serialise" {
            return Ok(false);
        }
        self.model = match value {
            "requests" => ThreadModel::SerializeRequests,
            "all-requests" | "all_requests" => ThreadModel::SerializeAllRequests,
            "connections" => ThreadModel::SerializeConnections,
            _ => {
                return Err(Error::invalid(format!(
                    "{key}={value}: unknown mode (use requests, all-requests or connections)"
                )))
            }
        };
        Ok(true)
    }
}

impl Filter for NoparallelFilter {
    fn thread_model(&self, below: ThreadModel) -> ThreadModel {
        self.model.min(below)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let one_client = self.model == ThreadModel::SerializeConnections;
        Ok(Box::new(NoparallelHandle { next: next.open(args)?, one_client }))
    }
}

struct NoparallelHandle {
    next: Box<dyn Handle>,
    one_client: bool,
}

impl Handle for NoparallelHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let caps = self.next.capabilities()?;
        Ok(Capabilities { multi_conn: caps.multi_conn && !self.one_client, ..caps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let model = |v: &str| {
            let mut f = NoparallelFilter::default();
            f.config("serialize", v).map(|_| f.thread_model(ThreadModel::Parallel))
        };
        assert_eq!(NoparallelFilter::default().thread_model(ThreadModel::Parallel), ThreadModel::SerializeRequests);
        assert_eq!(model("all_requests").unwrap(), ThreadModel::SerializeAllRequests);
        assert_eq!(model("connections").unwrap(), ThreadModel::SerializeConnections);
        assert!(model("none").unwrap_err().message.starts_with("serialize=none: "));
        let mut f = NoparallelFilter::default();
        assert!(f.config("serialise", "connections").unwrap());
        assert_eq!(f.thread_model(ThreadModel::SerializeAllRequests), ThreadModel::SerializeConnections);
    }
}
