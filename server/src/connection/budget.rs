//! The memory clients can make the server hold for request data: WRITE payloads as they arrive,
//! and READ buffers until their reply is sent.
//!
//! Two bounds: each connection may hold at most [`PER_CONNECTION`] bytes, and all connections
//! together at most [`TOTAL`]. Memory is taken as the bytes arrive, so a client that stalls in the
//! middle of a payload holds only what it has sent; one that stops reading replies holds at most
//! its connection's share. A request that needs more waits; if nothing is given back for
//! [`GIVE_UP`] while it waits (every holder is itself waiting or stalled), the request is refused
//! with ENOMEM instead, which frees what it held, so the others go on and nothing deadlocks.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a request waits for memory while none is given back before it is refused.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(2);

/// What one connection may hold at once: four maximum-size requests.
pub(crate) const PER_CONNECTION: usize = 256 << 20;
/// What all connections together may hold at once.
pub(crate) const TOTAL: usize = 1 << 30;

/// A pool of bytes that reservations draw from, waiting while it is spent.
pub(crate) struct Budget {
    limit: usize,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    used: usize,
    /// Counts every give-back, so a waiter can tell whether anything moved.
    gives: u64,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget { limit, state: Mutex::new(State { used: 0, gives: 0 }), freed: Condvar::new() }
    }

    /// Takes `n` bytes, waiting until they are free; false if nothing was given back for
    /// `give_up` while waiting. A request for more than the whole budget waits until nothing
    /// else is held, so it is served alone instead of never.
    fn take(&self, n: usize, give_up: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = state.gives;
        let mut since = Instant::now();
        while state.used > 0 && state.used + n > self.limit {
            if state.gives != seen {
                (seen, since) = (state.gives, Instant::now());
            }
            let left = give_up.saturating_sub(since.elapsed());
            if left.is_zero() {
                return false;
            }
            state = self.freed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.used += n;
        true
    }

    fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.used -= n;
        state.gives += 1;
        self.freed.notify_all();
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.state.lock().unwrap().used
    }
}

/// Bytes held from a connection's budget and the server's, given back when dropped.
pub(crate) struct Reservation<'a> {
    connection: &'a Budget,
    total: &'a Budget,
    held: usize,
}

impl<'a> Reservation<'a> {
    pub(crate) fn new(connection: &'a Budget, total: &'a Budget) -> Self {
        Reservation { connection, total, held: 0 }
    }

    /// Holds `n` more bytes, waiting for the connection's share first, then the server's; false
    /// when the wait was given up (see the module comment): the caller refuses the request.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        if !self.connection.take(n, GIVE_UP) {
            return false;
        }
        if !self.total.take(n, GIVE_UP) {
            self.connection.give(n);
            return false;
        }
        self.held += n;
        true
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.total.give(self.held);
        self.connection.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn reservations_wait_for_room_and_give_it_back() {
        let conn = Arc::new(Budget::new(100));
        let total = Arc::new(Budget::new(150));
        let mut a = Reservation::new(&conn, &total);
        assert!(a.grow(80));
        assert_eq!((conn.used(), total.used()), (80, 80));
        let (c2, t2) = (Arc::clone(&conn), Arc::clone(&total));
        let waiter = std::thread::spawn(move || {
            let mut b = Reservation::new(&c2, &t2);
            assert!(b.grow(50));
            c2.used()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "80 + 50 is over the connection's 100");
        drop(a);
        assert_eq!(waiter.join().unwrap(), 50);
        assert_eq!((conn.used(), total.used()), (0, 0));
    }

    #[test]
    fn an_oversized_request_is_served_alone() {
        let conn = Budget::new(10);
        let total = Budget::new(10);
        let mut r = Reservation::new(&conn, &total);
        assert!(r.grow(25));
        assert_eq!(total.used(), 25);
    }

    #[test]
    fn a_wait_with_nothing_given_back_is_given_up() {
        let budget = Budget::new(10);
        assert!(budget.take(8, GIVE_UP));
        let start = Instant::now();
        assert!(!budget.take(5, Duration::from_millis(100)));
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(budget.used(), 8, "a refused take holds nothing");
    }
}
