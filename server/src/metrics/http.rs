//! The metrics endpoint: a small HTTP/1.x responder on its own thread, answering `GET /metrics`
//! (and `HEAD`) with the page and anything else with 404 or 405, one request per connection.
//!
//! A scraper cannot hurt the server: the thread never blocks on one (non-blocking sockets and one
//! poll over all of them), each scraper has a fixed request buffer and a fixed time to be served,
//! and when too many are connected the oldest is dropped to make room. The request path of NBD
//! clients never waits for this thread: a page is rendered from counters the connections update
//! without locks.
//!
//! Written by hand because it is this small: one request line to read and one reply to write,
//! where an HTTP framework would bring an async runtime and a dependency tree into the server.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, warn};

/// The longest request (request line and headers) read; a longer one gets 431.
const REQUEST_MAX: usize = 8 << 10;
/// Time a scraper has from connecting to having read its reply.
const SCRAPE_TIME: Duration = Duration::from_secs(10);
/// Scrapers connected at once; one more pushes out the oldest.
const MAX_SCRAPERS: usize = 16;
/// Connections accepted per wake-up, so a flood cannot keep the thread from serving.
const ACCEPT_BATCH: usize = 64;

/// One scraper's connection.
struct Scraper {
    stream: TcpStream,
    deadline: Instant,
    state: State,
}

enum State {
    /// Reading the request, up to [`REQUEST_MAX`] bytes.
    Reading(Vec<u8>),
    /// Writing the reply; so much of it went out.
    Writing(Vec<u8>, usize),
    /// The reply went out: waiting for the scraper to close, reading and discarding what it still
    /// sends (closing with unread bytes would reset the connection and could lose the reply's end).
    Draining,
}

/// What to do with a scraper after it had its turn.
enum Keep {
    Yes,
    Close,
}

/// Serves `listener` on a new thread until a byte arrives on `stop`; `page` renders the metrics.
pub(crate) fn spawn(
    listener: TcpListener,
    stop: UnixStream,
    page: impl Fn() -> Vec<u8> + Send + 'static,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("nbd-metrics".into()).spawn(move || run(&listener, &stop, &page))?;
    Ok(())
}

fn run(listener: &TcpListener, stop: &UnixStream, page: &dyn Fn() -> Vec<u8>) {
    let mut scrapers: Vec<Scraper> = Vec::new();
    loop {
        let now = Instant::now();
        scrapers.retain(|s| s.deadline > now);
        let wait = scrapers.iter().map(|s| s.deadline - now).min();
        // Rounded up, so the deadline has passed when poll returns for it.
        let ms = wait.map_or(-1, |w| i32::try_from(w.as_millis() + 1).unwrap_or(i32::MAX));
        let mut fds =
            vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN), PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for s in &scrapers {
            let events = if matches!(s.state, State::Writing(..)) { PollFlags::POLLOUT } else { PollFlags::POLLIN };
            fds.push(PollFd::new(s.stream.as_fd(), events));
        }
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return warn!("metrics endpoint: poll: {e}"),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        if ready[0] {
            return debug!("metrics endpoint stopped");
        }
        let mut i = 0;
        scrapers.retain_mut(|s| {
            i += 1;
            !ready[i + 1] || matches!(s.turn(page), Keep::Yes)
        });
        if ready[1] {
            accept(listener, &mut scrapers);
        }
    }
}

fn accept(listener: &TcpListener, scrapers: &mut Vec<Scraper>) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if scrapers.len() >= MAX_SCRAPERS {
                    // The oldest has had the most time; it goes.
                    let oldest = scrapers.iter().enumerate().min_by_key(|(_, s)| s.deadline).map(|(i, _)| i);
                    if let Some(i) = oldest {
                        debug!("metrics endpoint: too many scrapers, dropping {:?}", scrapers[i].stream.peer_addr());
                        scrapers.swap_remove(i);
                    }
                }
                debug!("metrics endpoint: scraper {peer}");
                let deadline = Instant::now() + SCRAPE_TIME;
                scrapers.push(Scraper { stream, deadline, state: State::Reading(Vec::new()) });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                // Out of descriptors, most likely: the listener stays ready, so wait a little
                // rather than spin.
                warn!("metrics endpoint: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        }
    }
}

impl Scraper {
    /// Reads what the scraper sent, or writes what it is owed.
    fn turn(&mut self, page: &dyn Fn() -> Vec<u8>) -> Keep {
        let retry = |e: &io::Error| matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted);
        if let State::Reading(request) = &mut self.state {
            let start = request.len();
            request.resize(REQUEST_MAX, 0);
            let n = match self.stream.read(&mut request[start..]) {
                Ok(0) => return Keep::Close,
                Ok(n) => n,
                Err(e) if retry(&e) => 0,
                Err(_) => return Keep::Close,
            };
            request.truncate(start + n);
            let Some(reply) = respond(request, page) else { return Keep::Yes };
            self.state = State::Writing(reply, 0);
        }
        match &mut self.state {
            State::Reading(_) => Keep::Yes,
            State::Writing(reply, sent) => {
                while *sent < reply.len() {
                    match self.stream.write(&reply[*sent..]) {
                        Ok(0) => return Keep::Close,
                        Ok(n) => *sent += n,
                        Err(e) if retry(&e) => return Keep::Yes,
                        Err(_) => return Keep::Close,
                    }
                }
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                self.state = State::Draining;
                Keep::Yes
            }
            State::Draining => {
                let mut scratch = [0u8; 4096];
                match self.stream.read(&mut scratch) {
                    Ok(0) => Keep::Close,
                    Err(e) if !retry(&e) => Keep::Close,
                    _ => Keep::Yes,
                }
            }
        }
    }
}

/// The reply to the request read so far; `None` while its headers are incomplete.
fn respond(request: &[u8], page: &dyn Fn() -> Vec<u8>) -> Option<Vec<u8>> {
    let complete = request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n");
    if !complete {
        if request.len() >= REQUEST_MAX {
            return Some(reply("431 Request Header Fields Too Large", "text/plain", b"request too large\n", true));
        }
        return None;
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next()) else {
        return Some(reply("400 Bad Request", "text/plain", b"bad request line\n", true));
    };
    if !version.starts_with("HTTP/1.") || words.next().is_some() {
        return Some(reply("400 Bad Request", "text/plain", b"bad request line\n", true));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Some(reply("404 Not Found", "text/plain", b"not found: the metrics are at /metrics\n", true));
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            return Some(reply("405 Method Not Allowed\r\nAllow: GET, HEAD", "text/plain", b"use GET or HEAD\n", true))
        }
    };
    Some(reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", &page(), body))
}

fn reply(status: &str, content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(request: &str) -> Option<String> {
        respond(request.as_bytes(), &|| b"page\n".to_vec()).map(|r| String::from_utf8(r).unwrap())
    }

    #[test]
    fn requests_and_replies() {
        assert_eq!(answer("GET /metrics HTTP/1.1\r\nHost: x"), None, "headers not complete yet");
        let ok = answer("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\npage\n"), "{ok}");
        assert!(ok.contains("Content-Length: 5\r\n"));
        let head = answer("HEAD /metrics HTTP/1.0\n\n").unwrap();
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(answer("GET / HTTP/1.1\r\n\r\n").unwrap().starts_with("HTTP/1.1 404 "));
        assert!(answer("POST /metrics HTTP/1.1\r\n\r\n").unwrap().starts_with("HTTP/1.1 405 "));
        assert!(answer("GET /metrics\r\n\r\n").unwrap().starts_with("HTTP/1.1 400 "));
        assert!(answer("GET /metrics SMTP/1\r\n\r\n").unwrap().starts_with("HTTP/1.1 400 "));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(REQUEST_MAX));
        assert!(answer(&huge).unwrap().starts_with("HTTP/1.1 431 "));
    }
}
