//! A pool of libcurl easy handles shared by every NBD connection: at most `connections=` exist,
//! each keeping its own HTTP connection alive between requests. A request borrows one (waiting
//! when all are busy) and gives it back when done, so `connections=N` is the number of ranged
//! requests in flight at once, whatever the number of NBD clients.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};

use curl::easy::Easy;

/// The handles and how to make a new one.
pub struct Pool {
    max: usize,
    make: Box<dyn Fn() -> Result<Easy, curl::Error> + Send + Sync>,
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Easy>,
    /// Handles that exist, idle or lent.
    made: usize,
}

/// A handle lent by the pool; it goes back when dropped.
pub struct Lent<'a> {
    pool: &'a Pool,
    easy: Option<Easy>,
}

impl Pool {
    pub fn new(max: usize, make: impl Fn() -> Result<Easy, curl::Error> + Send + Sync + 'static) -> Self {
        Pool {
            max,
            make: Box::new(make),
            state: Mutex::new(State { idle: Vec::new(), made: 0 }),
            returned: Condvar::new(),
        }
    }

    /// An idle handle, a new one while fewer than `max` exist, or the next one given back.
    pub fn get(&self) -> Result<Lent<'_>, curl::Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(easy) = state.idle.pop() {
                return Ok(Lent { pool: self, easy: Some(easy) });
            }
            if state.made < self.max {
                state.made += 1;
                drop(state);
                return match (self.make)() {
                    Ok(easy) => Ok(Lent { pool: self, easy: Some(easy) }),
                    Err(e) => {
                        self.state.lock().unwrap_or_else(|e| e.into_inner()).made -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            state = self.returned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Pool {
    /// Frees the idle handles (libcurl then writes a `cookiejar=`), when the server exits.
    pub fn clear(&self) {
        let idle = std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).idle);
        drop(idle);
    }
}

impl Deref for Lent<'_> {
    type Target = Easy;
    fn deref(&self) -> &Easy {
        self.easy.as_ref().expect("a lent handle is present until dropped")
    }
}

impl DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Easy {
        self.easy.as_mut().expect("a lent handle is present until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(easy) = self.easy.take() {
            self.pool.state.lock().unwrap_or_else(|e| e.into_inner()).idle.push(easy);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_more_than_max_handles() {
        let made = Arc::new(Mutex::new(0));
        let counter = made.clone();
        let pool = Arc::new(Pool::new(2, move || {
            *counter.lock().unwrap() += 1;
            Ok(Easy::new())
        }));
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || drop(pool.get().unwrap()))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        drop(a);
        waiter.join().unwrap();
        drop(b);
        assert_eq!(*made.lock().unwrap(), 2);
    }
}
