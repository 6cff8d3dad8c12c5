//! A file that many threads add lines to, written by a thread of its own: the log filter's
//! file. Requests only copy their line into memory; the writer thread writes what gathered in
//! one system call, about a millisecond after the first line of a batch came in. So a busy
//! server makes one write every millisecond instead of two per request, a quiet one writes each
//! line a millisecond after it happens, and a slow disk does not hold requests up until a few
//! megabytes wait (then they wait for it, as they would without the thread).
//!
//! Until [`LineFile::start`] and after [`LineFile::stop`] lines are written at once, by the
//! thread that logs them: the thread is started after the server forks into the background, and
//! stopped (everything written) when the server exits.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer lets lines gather before writing them.
const GATHER: Duration = Duration::from_millis(1);
/// How much may wait in memory before logging threads wait for the disk.
const MAX_PENDING: usize = 4 << 20;

/// The file and the lines not yet in it.
pub(crate) struct LineFile {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    file: File,
    state: Mutex<State>,
    /// Wakes the writer when lines come in while it waits.
    lines: Condvar,
    /// Wakes logging threads waiting for the pending lines to shrink.
    written: Condvar,
}

struct State {
    pending: Vec<u8>,
    writer: Writer,
    /// A write error was reported already (it is reported once).
    failed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// No writer thread: lines are written by the thread that logs them.
    None,
    /// The writer is gathering or writing lines.
    Busy,
    /// The writer waits for lines.
    Idle,
    /// The writer is to write what is pending and end.
    Stopping,
}

impl LineFile {
    pub fn new(file: File) -> Self {
        let state = State { pending: Vec::new(), writer: Writer::None, failed: false };
        LineFile {
            shared: Arc::new(Shared { file, state: Mutex::new(state), lines: Condvar::new(), written: Condvar::new() }),
            writer: Mutex::new(None),
        }
    }

    /// Adds a line (with its newline). Lines reach the file in the order they were added.
    pub fn push(&self, line: &[u8]) {
        let s = &self.shared;
        let mut state = s.lock();
        match state.writer {
            Writer::None => {
                // No writer thread: written under the lock, so lines keep their order.
                state.pending.extend_from_slice(line);
                let lines = std::mem::take(&mut state.pending);
                let result = (&s.file).write_all(&lines);
                s.report(&mut state, result);
                return;
            }
            Writer::Stopping => {}
            Writer::Idle => {
                state.writer = Writer::Busy;
                s.lines.notify_one();
            }
            Writer::Busy => {}
        }
        while state.pending.len() > MAX_PENDING && state.writer == Writer::Busy {
            state = s.written.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.pending.extend_from_slice(line);
    }

    /// Starts the writer thread.
    pub fn start(&self) -> std::io::Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if writer.is_some() {
            return Ok(());
        }
        self.shared.lock().writer = Writer::Busy;
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new().name("log-writer".into()).spawn(move || shared.run()) {
            Ok(handle) => *writer = Some(handle),
            Err(e) => {
                self.shared.lock().writer = Writer::None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes everything pending and ends the writer thread; later lines are written at once.
    pub fn stop(&self) {
        let Some(handle) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        {
            let mut state = self.shared.lock();
            state.writer = Writer::Stopping;
            self.shared.lines.notify_one();
        }
        let _ = handle.join();
        self.shared.lock().writer = Writer::None;
    }
}

impl Drop for LineFile {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports the first write error: logging is best effort, the requests go on.
    fn report(&self, state: &mut State, result: std::io::Result<()>) {
        if let Err(e) = result {
            if !state.failed {
                state.failed = true;
                tracing::error!("log: writing the log file: {e}");
            }
        }
    }

    /// The writer thread: waits for lines, lets more gather, writes them in one go.
    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let mut state = self.lock();
            while state.pending.is_empty() {
                if state.writer == Writer::Stopping {
                    return;
                }
                state.writer = Writer::Idle;
                state = self.lines.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.writer != Writer::Stopping {
                drop(state);
                std::thread::sleep(GATHER);
                state = self.lock();
            }
            std::mem::swap(&mut state.pending, &mut spare);
            drop(state);
            let result = (&self.file).write_all(&spare);
            self.report(&mut self.lock(), result);
            spare.clear();
            self.written.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("nbdforge-lines-{name}-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        (path, file)
    }

    #[test]
    fn lines_arrive_in_order_from_many_threads() {
        let (path, file) = temp("order");
        let lines = Arc::new(LineFile::new(file));
        lines.push(b"first\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n", "no writer yet: written at once");
        lines.start().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lines = Arc::clone(&lines);
                std::thread::spawn(move || (0..1000).for_each(|i| lines.push(format!("{t} {i}\n").as_bytes())))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        lines.stop();
        lines.push(b"last\n");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!((all.len(), all[0], all[4001]), (4002, "first", "last"));
        for t in 0..4 {
            let mine: Vec<usize> =
                all.iter().filter_map(|l| l.strip_prefix(&format!("{t} "))).map(|i| i.parse().unwrap()).collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>(), "thread {t}'s lines in order");
        }
    }

    #[test]
    fn a_quiet_writer_writes_soon() {
        let (path, file) = temp("soon");
        let lines = LineFile::new(file);
        lines.start().unwrap();
        lines.push(b"one\n");
        let start = std::time::Instant::now();
        while std::fs::read_to_string(&path).unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "the line was never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(lines);
        std::fs::remove_file(&path).unwrap();
    }
}
