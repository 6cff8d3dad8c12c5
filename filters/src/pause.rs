//! The `pause` filter: holds requests back on command, for example while the storage below is
//! snapshotted, and lets them go again.
//!
//! Commands arrive on a Unix socket (`pause-control=`), one byte each: `p` pauses, `r` resumes;
//! the filter answers `P` or `R` once it has taken effect (for `p`, once every request that was
//! already running has finished), and `X` to anything else. Requests arriving while paused wait,
//! until a resume or until the server shuts down (then they fail with `ESHUTDOWN`).
//!
//! The socket is bound in `get_ready`, so a bad path stops the server before it listens; the
//! thread answering it starts after the fork.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nbdforge_api::{
    absolute_path, debug, server, Backend, BufferSink, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo,
    OpenArgs, ReadSink, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("pause", "pauses and resumes requests on command")
        .help("pause-control=SOCKET           Unix socket for pause/resume commands (required).");
    Registration::filter(info, PauseFilter::default)
}

/// Whether requests may run, and how many are running.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    running: usize,
}

/// How often a waiting request looks whether the server is shutting down.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(200);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while paused, then counts a request in until the guard is dropped.
    fn enter(&self) -> Result<Running<'_>> {
        let mut state = self.lock();
        while state.paused {
            if server::is_shutting_down() {
                return Err(Error::new(libc::ESHUTDOWN, "paused while the server shuts down"));
            }
            state = self.changed.wait_timeout(state, SHUTDOWN_CHECK).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.running += 1;
        Ok(Running(self))
    }

    /// Stops new requests and waits for the running ones to finish.
    fn pause(&self) {
        let mut state = self.lock();
        state.paused = true;
        while state.running > 0 {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Answers one command byte.
    fn command(&self, byte: u8) -> u8 {
        match byte {
            b'p' => {
                self.pause();
                b'P'
            }
            b'r' => {
                self.resume();
                b'R'
            }
            _ => b'X',
        }
    }
}

/// A request counted as running.
struct Running<'a>(&'a Gate);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.changed.notify_all();
    }
}

/// The `pause` filter.
#[derive(Debug, Default)]
pub struct PauseFilter {
    control: Option<PathBuf>,
    listener: Option<UnixListener>,
    gate: Arc<Gate>,
}

impl Layer for PauseFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "pause-control" {
            return Ok(false);
        }
        self.control = Some(absolute_path(key, value)?);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.control.is_none() {
            return Err(Error::invalid("pause-control=SOCKET is required"));
        }
        Ok(())
    }

    fn cleanup(&self) {
        if let (Some(path), Some(_)) = (&self.control, &self.listener) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves one controlling client until it hangs up.
fn serve_control(gate: &Gate, mut stream: UnixStream) {
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        let answer = gate.command(byte[0]);
        debug!("control command '{}': answered '{}'", byte[0].escape_ascii(), answer as char);
        if stream.write_all(&[answer]).is_err() {
            return;
        }
    }
}

impl Filter for PauseFilter {
    fn get_ready(&mut self, _next: &Arc<dyn Backend>) -> Result<()> {
        let path = self.control.as_ref().ok_or_else(|| Error::invalid("pause-control=SOCKET is required"))?;
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::from_io(format!("pause-control={}: binding the socket", path.display()), &e))?;
        self.listener = Some(listener);
        Ok(())
    }

    fn after_fork(&self, _next: &Arc<dyn Backend>) -> Result<()> {
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        let listener = listener.try_clone().map_err(|e| Error::from_io("pause-control socket", &e))?;
        let gate = Arc::clone(&self.gate);
        std::thread::Builder::new()
            .name("pause-control".into())
            .spawn(move || {
                let _layer = nbdforge_api::context::enter_layer("pause");
                // One controlling client at a time, as commands are about one shared state.
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => serve_control(&gate, stream),
                        Err(e) => debug!("pause-control: accept: {e}"),
                    }
                }
            })
            .map_err(|e| Error::from_io("starting the control thread", &e))?;
        Ok(())
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(PauseHandle { next: next.open(args)?, gate: Arc::clone(&self.gate) }))
    }
}

/// One connection through the filter.
struct PauseHandle {
    next: Box<dyn Handle>,
    gate: Arc<Gate>,
}

impl Handle for PauseHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.pwrite(buf, offset, flags)
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.flush(flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.zero(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.extents(count, offset, flags, extents)
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.block_status(context, count, offset, flags, extents)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let _running = self.gate.enter()?;
        self.next.cache(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn pause_waits_for_running_requests_and_holds_new_ones() {
        let gate = Arc::new(Gate::default());
        let running = gate.enter().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let (g, p) = (Arc::clone(&gate), Arc::clone(&paused));
        let pauser = std::thread::spawn(move || {
            let answer = g.command(b'p');
            p.store(true, Ordering::SeqCst);
            answer
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!paused.load(Ordering::SeqCst), "P before the running request finished");
        drop(running);
        assert_eq!(pauser.join().unwrap(), b'P');
        let (g, p) = (Arc::clone(&gate), Arc::clone(&paused));
        let request = std::thread::spawn(move || {
            let _r = g.enter().unwrap();
            p.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!request.is_finished(), "a request ran while paused");
        paused.store(false, Ordering::SeqCst);
        assert_eq!(gate.command(b'r'), b'R');
        assert!(!request.join().unwrap(), "the request ran only after the resume");
        assert_eq!(gate.command(b'?'), b'X');
    }

    #[test]
    fn the_control_socket_is_required() {
        let mut f = PauseFilter::default();
        assert!(f.config_complete().is_err());
        assert!(f.config("pause-control", "ctl.sock").unwrap());
        f.config_complete().unwrap();
        assert!(!f.config("size", "1").unwrap());
    }
}
