//! The memory clients can make the server hold for request data: WRITE payloads as they arrive,
//! and READ buffers until their reply is sent.
//!
//! Two bounds: each connection may hold at most [`PER_CONNECTION`] bytes, and all connections
//! together at most [`TOTAL`]. Memory is taken as the bytes arrive, so a client that stalls in the
//! middle of a payload holds only what it has sent; one that stops reading replies holds at most
//! its connection's share. A request that needs more waits; if nothing is given back for
//! [`GIVE_UP`] while it waits (every holder is itself waiting or stalled), the request is refused
//! with ENOMEM instead, which frees what it held, so the others go on and nothing deadlocks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a request waits for memory while none is given back before it is refused.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(2);

/// What one connection may hold at once: four maximum-size requests.
pub(crate) const PER_CONNECTION: usize = 256 << 20;
/// What all connections together may hold at once.
pub(crate) const TOTAL: usize = 1 << 30;

/// A pool of bytes that reservations draw from, waiting while it is spent.
///
/// Every request takes and gives back, so the common case is two atomic operations: the mutex
/// and the condition variable are touched only when a taker has to wait (a condition variable's
/// wake is a system call even with nobody waiting, and cost 4 KiB writes 5% of the server's CPU).
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Takers inside the slow path. A giver that sees none needs not wake anyone: a taker counts
    /// itself before it looks at `used` again, and a giver lowers `used` before it looks here.
    waiters: AtomicUsize,
    /// Counts give-backs while someone waits, so a waiter can tell whether anything moved. A
    /// give-back that saw no waiter lowered `used` before any later waiter's first look.
    gives: AtomicU64,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            gives: AtomicU64::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    /// Takes `n` bytes if they fit now (or nothing is held: a request for more than the whole
    /// budget is served alone instead of never).
    fn try_take(&self, n: usize) -> bool {
        self.used.fetch_update(SeqCst, SeqCst, |used| (used == 0 || used + n <= self.limit).then_some(used + n)).is_ok()
    }

    /// Takes `n` bytes, waiting until they are free; false if nothing was given back for
    /// `give_up` while waiting.
    fn take(&self, n: usize, give_up: Duration) -> bool {
        if self.try_take(n) {
            return true;
        }
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.waiters.fetch_add(1, SeqCst);
        let mut seen = self.gives.load(SeqCst);
        let mut since = Instant::now();
        let taken = loop {
            if self.try_take(n) {
                break true;
            }
            let gives = self.gives.load(SeqCst);
            if gives != seen {
                (seen, since) = (gives, Instant::now());
            }
            let left = give_up.saturating_sub(since.elapsed());
            if left.is_zero() {
                break false;
            }
            guard = self.freed.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0;
        };
        self.waiters.fetch_sub(1, SeqCst);
        taken
    }

    fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.gives.fetch_add(1, SeqCst);
            // Taken so the wake cannot fall between a waiter's last look and its wait.
            drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()));
            self.freed.notify_all();
        }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(SeqCst)
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
    fn waiters_are_woken_by_every_give_back() {
        // A lost wake-up would hold a waiter until GIVE_UP (2 s), so thousands of contended
        // takes finishing in well under that show that none was lost.
        let budget = Arc::new(Budget::new(100));
        let start = Instant::now();
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    for n in 0..2000 {
                        let size = 30 + (i * 7 + n) % 40;
                        assert!(budget.take(size, GIVE_UP), "a take was given up");
                        budget.give(size);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(start.elapsed() < Duration::from_millis(1500), "took {:?}", start.elapsed());
        assert_eq!(budget.used(), 0);
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
