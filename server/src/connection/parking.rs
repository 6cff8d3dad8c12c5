//! Where idle connections wait without a thread of their own.
//!
//! A connection whose client has sent nothing for [`IDLE_BEFORE_PARK`], with no request in flight,
//! is parked: its socket is registered with one readiness poller (epoll, through `mio`) shared by
//! the server, and its worker threads exit. When the client sends again (or hangs up, or the
//! server shuts down and half-closes every socket), the poller takes the connection out and starts
//! one worker for it, which goes on as before. So ten thousand idle clients cost one thread, and a
//! busy client never waits for the poller: it is only parked after a pause.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tracing::warn;

/// How long a connection may sit with nothing to read before its threads are let go.
pub(crate) const IDLE_BEFORE_PARK: Duration = Duration::from_secs(1);

/// Something that can be parked: its socket, and what to do when it is readable again.
pub(crate) trait Parked: Send + Sync {
    /// The socket to watch.
    fn fd(&self) -> RawFd;
    /// Called on the poller's thread once the socket is readable (or closed).
    fn wake(self: Arc<Self>);
}

/// The poller and the connections parked in it.
pub(crate) struct Parking {
    registry: Registry,
    parked: Mutex<HashMap<Token, Arc<dyn Parked>>>,
    next: Mutex<usize>,
}

impl Parking {
    /// Starts the poller thread.
    pub(crate) fn start() -> io::Result<Arc<Parking>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let parking = Arc::new(Parking { registry, parked: Mutex::new(HashMap::new()), next: Mutex::new(0) });
        let p = Arc::clone(&parking);
        std::thread::Builder::new().name("nbd-parking".into()).spawn(move || p.run(poll))?;
        Ok(parking)
    }

    /// Parks `conn` until its socket is readable. On failure the caller keeps the connection.
    pub(crate) fn park(&self, conn: Arc<dyn Parked>) -> io::Result<()> {
        let token = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *next = next.wrapping_add(1);
            Token(*next)
        };
        let fd = conn.fd();
        // In the map before the poller can see the event, so the wake-up always finds it.
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).insert(token, conn);
        if let Err(e) = self.registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
            self.parked.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
            return Err(e);
        }
        Ok(())
    }

    /// How many connections are parked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.parked.lock().unwrap().len()
    }

    fn run(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("connection poller: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for event in &events {
                let Some(conn) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).remove(&event.token()) else {
                    continue;
                };
                // Deregistered before anything else may close the socket: epoll keeps a closed
                // descriptor's registration alive while other copies of it are open.
                let _ = self.registry.deregister(&mut SourceFd(&conn.fd()));
                conn.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    struct Waiter(UnixStream, Mutex<mpsc::Sender<()>>);

    impl Parked for Waiter {
        fn fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
        fn wake(self: Arc<Self>) {
            let _ = self.1.lock().unwrap().send(());
        }
    }

    #[test]
    fn a_parked_socket_wakes_when_readable_and_only_then() {
        let parking = Parking::start().unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        parking.park(Arc::new(Waiter(ours, Mutex::new(tx)))).unwrap();
        assert_eq!(parking.len(), 1);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "woken with nothing to read");
        theirs.write_all(b"x").unwrap();
        rx.recv_timeout(Duration::from_secs(5)).expect("not woken when readable");
        assert_eq!(parking.len(), 0, "a woken connection leaves the poller");
    }
}
