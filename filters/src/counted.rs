//! What the filters that act on the number of connections share (`limit`, `exitlast`,
//! `exitwhen`): a count of the connections open through the filter, and a handle that counts
//! itself in while it lives and runs a hook when it leaves, passing everything else through.
//!
//! The server also opens handles for a moment during the handshake (to describe an export or
//! list its meta contexts) and closes them before the client's real open: a count of handles
//! can touch zero while a client is still connecting. [`when_connection_ends`] waits for the
//! connection itself to be gone before deciding anything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use nbdforge_api::{Connection, Handle};

/// Connections open through a filter now.
#[derive(Debug, Default)]
pub struct OpenCount(AtomicUsize);

impl OpenCount {
    /// How many are open.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one more unless `limit` are open already; false then.
    pub fn try_enter(&self, limit: Option<usize>) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                if limit.is_some_and(|l| n >= l) {
                    None
                } else {
                    Some(n + 1)
                }
            })
            .is_ok()
    }
}

/// What runs when a counted connection closes, with the number still open.
pub type AfterClose = Box<dyn Fn(usize) + Send + Sync>;

/// A connection's handle, counted in [`OpenCount`] from [`Counted::boxed`] until it is dropped.
pub struct Counted {
    next: Box<dyn Handle>,
    count: Arc<OpenCount>,
    after_close: Option<AfterClose>,
}

impl Counted {
    /// Wraps the handle of the layer below; the caller has already counted it in with
    /// [`OpenCount::try_enter`].
    pub fn boxed(next: Box<dyn Handle>, count: &Arc<OpenCount>, after_close: Option<AfterClose>) -> Box<dyn Handle> {
        Box::new(Counted { next, count: Arc::clone(count), after_close })
    }
}

impl Handle for Counted {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }
}

/// Runs `then` on a thread of its own once the server has let go of `conn` (the connection is
/// over, handshake and all). The SDK has no hook for the end of a connection, hence the polling.
pub fn when_connection_ends(conn: Weak<Connection>, then: impl FnOnce() + Send + 'static) {
    let watch = move || {
        while conn.strong_count() > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        then();
    };
    if let Err(e) = std::thread::Builder::new().name("connection-end".into()).spawn(watch) {
        tracing::error!("cannot start a thread to watch a connection end: {e}");
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let left = self.count.0.fetch_sub(1, Ordering::SeqCst) - 1;
        if let Some(hook) = &self.after_close {
            hook(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;
    use nbdforge_api::OpenArgs;
    use std::sync::Mutex;

    #[test]
    fn counts_in_and_out_and_runs_the_hook() {
        let count = Arc::new(OpenCount::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let backend = MemBackend::disk(512);
        let open = |seen: &Arc<Mutex<Vec<usize>>>| {
            assert!(count.try_enter(Some(2)));
            let seen = Arc::clone(seen);
            Counted::boxed(
                backend.open(&OpenArgs::local("", false)).unwrap(),
                &count,
                Some(Box::new(move |left: usize| seen.lock().unwrap().push(left))),
            )
        };
        let (a, b) = (open(&seen), open(&seen));
        assert!(!count.try_enter(Some(2)), "the limit holds");
        assert_eq!(a.get_size().unwrap(), 512);
        drop(a);
        drop(b);
        assert_eq!(*seen.lock().unwrap(), [1, 0]);
        assert_eq!(count.get(), 0);
    }
}
