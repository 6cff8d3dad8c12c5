//! The `exitwhen` filter: shuts the server down gracefully when something happens outside it: a
//! file appears or disappears, a pipe is closed, a process exits, or a script says so (exit
//! status 88).
//!
//! Once an event has happened, new clients are refused and the server exits (status 0) as soon
//! as no client is connected. Events are checked when a client connects or leaves, and, while
//! no client is connected, every `exit-when-poll` seconds (default 60) from a thread started
//! after the fork; the first check is at start-up, so an event that already happened stops the
//! server at once.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbdforge_api::{
    absolute_path, debug, parse_delay, parse_int, server, Backend, ClientInfo, Error, Filter, Handle, Layer, LayerInfo,
    OpenArgs, Registration, Result,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::counted::{when_connection_ends, Counted, OpenCount};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("exitwhen", "exits gracefully when an event occurs").help(
        "exit-when-file-created=FILENAME  Exit when the file is created.\n\
         exit-when-file-deleted=FILENAME  Exit when the file is deleted.\n\
         exit-when-pipe-closed=FD         Exit when the pipe is closed.\n\
         exit-when-process-exits=PID      Exit when the process exits.\n\
         exit-when-script=\"SCRIPT\"        Exit when the script exits with 88.\n\
         exit-when-poll=SECS              Poll interval when idle (default: 60).",
    );
    Registration::filter(info, ExitWhenFilter::default)
}

/// Something to wait for.
#[derive(Debug)]
enum Event {
    FileCreated(PathBuf),
    FileDeleted(PathBuf),
    /// The read end of a pipe; the event is its last writer closing it.
    PipeClosed(OwnedFd),
    ProcessExits(i32),
    /// A shell command; exit status 88 means the event happened.
    Script(String),
}

/// The script exit status that means "the event happened".
const SCRIPT_TRIGGERED: i32 = 88;

impl Event {
    fn happened(&self) -> bool {
        match self {
            Event::FileCreated(path) => path.exists(),
            Event::FileDeleted(path) => !path.exists(),
            Event::PipeClosed(fd) => {
                // The filter never reads: data waiting (POLLIN) is no event, a hang-up is.
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(_) => fds[0]
                        .revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)),
                    Err(e) => {
                        debug!("poll on the pipe: {e}");
                        false
                    }
                }
            }
            Event::ProcessExits(pid) => {
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None);
                matches!(alive, Err(nix::errno::Errno::ESRCH))
            }
            Event::Script(script) => match Command::new("/bin/sh").arg("-c").arg(script).status() {
                Ok(status) => match status.code() {
                    Some(0) => false,
                    Some(SCRIPT_TRIGGERED) => true,
                    other => {
                        tracing::error!("exitwhen: exit-when-script: {script}: unexpected exit status {other:?}");
                        false
                    }
                },
                Err(e) => {
                    tracing::error!("exitwhen: exit-when-script: {script}: {e}");
                    false
                }
            },
        }
    }
}

/// What the filter, its handles and its polling thread share.
#[derive(Debug, Default)]
struct Watch {
    events: Vec<Event>,
    triggered: AtomicBool,
    open: Arc<OpenCount>,
}

impl Watch {
    /// Whether an event has happened, now or before (it stays happened).
    fn check(&self) -> bool {
        if self.triggered.load(Ordering::SeqCst) {
            return true;
        }
        if let Some(event) = self.events.iter().find(|e| e.happened()) {
            debug!("exit event triggered: {event:?}");
            self.triggered.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Shuts the server down if an event happened and nobody is connected; true if so.
    fn exit_if_idle(&self) -> bool {
        if self.open.get() == 0 && self.check() {
            debug!("exit event triggered and no clients: shutting down");
            server::shutdown();
            return true;
        }
        false
    }
}

/// The `exitwhen` filter.
#[derive(Debug)]
pub struct ExitWhenFilter {
    watch: Arc<Watch>,
    poll: Duration,
}

impl Default for ExitWhenFilter {
    fn default() -> Self {
        ExitWhenFilter { watch: Arc::default(), poll: Duration::from_secs(60) }
    }
}

impl ExitWhenFilter {
    fn add(&mut self, event: Event) -> Result<bool> {
        let watch = Arc::get_mut(&mut self.watch).ok_or_else(|| Error::invalid("configured after start"))?;
        watch.events.push(event);
        Ok(true)
    }
}

impl Layer for ExitWhenFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "exit-when-file-created" => self.add(Event::FileCreated(absolute_path(key, value)?)),
            "exit-when-file-deleted" => self.add(Event::FileDeleted(absolute_path(key, value)?)),
            "exit-when-pipe-closed" => {
                let fd: RawFd = parse_int(key, value)?;
                if fd <= 2 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
                    return Err(Error::invalid(format!("{key}={value}: not an open file descriptor above 2")));
                }
                // SAFETY: the descriptor is open (checked just above) and was handed to this
                // filter by whoever started the server: nothing else in the process owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                self.add(Event::PipeClosed(fd))
            }
            "exit-when-process-exits" => {
                let pid: i32 = parse_int(key, value)?;
                if pid <= 0 {
                    return Err(Error::invalid(format!("{key}={value}: not a process id")));
                }
                self.add(Event::ProcessExits(pid))
            }
            "exit-when-script" => self.add(Event::Script(value.to_string())),
            "exit-when-poll" => {
                let poll = parse_delay(key, value)?;
                if poll.is_zero() {
                    return Err(Error::invalid(format!("{key}={value}: the interval must be greater than 0")));
                }
                self.poll = poll;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Filter for ExitWhenFilter {
    fn after_fork(&self, _next: &Arc<dyn Backend>) -> Result<()> {
        if self.watch.events.is_empty() {
            return Ok(());
        }
        let (watch, every) = (Arc::clone(&self.watch), self.poll);
        std::thread::Builder::new()
            .name("exitwhen".into())
            .spawn(move || {
                let _layer = nbdforge_api::context::enter_layer("exitwhen");
                // server::sleep ends with an error once the server shuts down, for any reason.
                while !watch.exit_if_idle() && server::sleep(every).is_ok() {}
                // This thread starts before the server listens, and a shutdown asked for before
                // it exists goes unseen: ask again for a while (asking twice is harmless).
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(100));
                    server::shutdown();
                }
            })
            .map_err(|e| Error::from_io("starting the polling thread", &e))?;
        Ok(())
    }

    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        if self.watch.check() {
            let _ = self.watch.exit_if_idle();
            return Err(Error::new(libc::ESHUTDOWN, "exit event triggered: refusing new clients"));
        }
        next.preconnect(client, readonly)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        self.watch.open.try_enter(None);
        let (watch, conn) = (Arc::clone(&self.watch), Arc::downgrade(&args.conn));
        Ok(Counted::boxed(
            below,
            &self.watch.open,
            Some(Box::new(move |left: usize| {
                if left == 0 {
                    // Not on a handle closed during the handshake: once the connection is over.
                    let watch = Arc::clone(&watch);
                    when_connection_ends(conn.clone(), move || {
                        let _ = watch.exit_if_idle();
                    });
                }
            })),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_happen_and_stay_happened() {
        let dir = std::env::temp_dir().join(format!("nbdforge-exitwhen-{}", std::process::id()));
        let path = dir.to_str().unwrap();
        let mut f = ExitWhenFilter::default();
        assert!(f.config("exit-when-file-created", path).unwrap());
        assert!(f.config("exit-when-script", "exit 3").unwrap());
        assert!(!f.watch.check());
        std::fs::write(&dir, "").unwrap();
        assert!(f.watch.check());
        std::fs::remove_file(&dir).unwrap();
        assert!(f.watch.check(), "once triggered, always triggered");
        assert!(Event::Script("exit 88".into()).happened());
        assert!(!Event::ProcessExits(std::process::id() as i32).happened());
        assert!(Event::FileDeleted(dir).happened());
    }

    #[test]
    fn a_closed_pipe_is_an_event() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let event = Event::PipeClosed(read);
        assert!(!event.happened());
        drop(write);
        assert!(event.happened());
    }

    #[test]
    fn bad_parameters() {
        let mut f = ExitWhenFilter::default();
        assert!(f.config("exit-when-pipe-closed", "1").unwrap_err().message.starts_with("exit-when-pipe-closed=1:"));
        assert!(f
            .config("exit-when-process-exits", "x")
            .unwrap_err()
            .message
            .starts_with("exit-when-process-exits=x:"));
        assert!(f.config("exit-when-poll", "0").is_err());
        assert!(!f.config("size", "1").unwrap());
    }
}
