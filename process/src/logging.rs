//! Log messages on top of `tracing`: where they go ([`LogDest`], nbdkit's
//! `--log=stderr|syslog|null`) and how much is shown (the number of `-v`).
//!
//! Errors, warnings and notices go to the chosen destination; debug messages (`-v`) always go to
//! stderr and never to syslog, as nbdkit does. The destination can change once while running: a
//! server going into the background reports start-up errors on stderr, where the user sees them,
//! and switches to syslog once it is ready. Nothing is ever written to stdout, which `-s` uses
//! for the NBD connection.
//!
//! Lines read `nbdforge: error: memory: size=12Q: ...` (the program name as invoked), and in the
//! system log `nbdforge[PID]: error: ...` with the daemon facility.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Where log messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDest {
    /// Standard error.
    Stderr,
    /// The system log (`/dev/log`), with the daemon facility.
    Syslog,
    /// Nowhere.
    Null,
}

const STDERR: u8 = 0;
const SYSLOG: u8 = 1;
const NULL: u8 = 2;

static DEST: AtomicU8 = AtomicU8::new(STDERR);
static PROG: OnceLock<String> = OnceLock::new();

fn prog() -> &'static str {
    PROG.get().map(String::as_str).unwrap_or("nbdforge")
}

/// Sends messages (other than debug ones) to `dest` from now on.
pub fn set_destination(dest: LogDest) {
    let d = match dest {
        LogDest::Stderr => STDERR,
        LogDest::Syslog => SYSLOG,
        LogDest::Null => NULL,
    };
    DEST.store(d, Ordering::SeqCst);
}

/// Reports the error that ends the process, already prefixed with the program name, to the
/// current destination (stderr until a background server is ready).
pub fn fatal(line: &str) {
    match DEST.load(Ordering::SeqCst) {
        SYSLOG => drop(SyslogLine { buf: line.as_bytes().to_vec(), severity: 3 }),
        NULL => {}
        _ => {
            let mut e = io::stderr().lock();
            let _ = writeln!(e, "{line}");
        }
    }
}

/// Installs the global subscriber. `verbose` is the number of `-v`: none shows errors and
/// warnings, one adds debug messages, two adds trace messages. `NBDFORGE_LOG` (an `EnvFilter`
/// directive list such as `nbdforge_server=trace`) overrides the level for developers.
pub fn init(prog: &str, dest: LogDest, verbose: u8) {
    let _ = PROG.set(prog.to_string());
    set_destination(dest);
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("NBDFORGE_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let layer = tracing_subscriber::fmt::layer().event_format(LineFormat).with_writer(Route);
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
}

/// `prog: level: span: message`.
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "{}: ", prog())?;
        match *event.metadata().level() {
            Level::ERROR => write!(w, "error: ")?,
            Level::WARN => write!(w, "warning: ")?,
            Level::INFO => {}
            Level::DEBUG | Level::TRACE => write!(w, "debug: ")?,
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "[{fields}]")?;
                    }
                }
                write!(w, ": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Picks the writer for each message from its level and the current destination.
struct Route;

enum Sink {
    Stderr(io::Stderr),
    Syslog(SyslogLine),
    Null,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stderr(e) => e.write(buf),
            Sink::Syslog(s) => s.write(buf),
            Sink::Null => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stderr(e) => e.flush(),
            _ => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for Route {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        Sink::Stderr(io::stderr())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Sink {
        let level = *meta.level();
        if level == Level::DEBUG || level == Level::TRACE {
            return Sink::Stderr(io::stderr());
        }
        match DEST.load(Ordering::SeqCst) {
            SYSLOG => Sink::Syslog(SyslogLine { buf: Vec::new(), severity: severity(level) }),
            NULL => Sink::Null,
            _ => Sink::Stderr(io::stderr()),
        }
    }
}

fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One message for the system log, sent as one datagram to /dev/log when complete.
struct SyslogLine {
    buf: Vec<u8>,
    severity: u8,
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        let text = text.strip_prefix(prog()).and_then(|t| t.strip_prefix(": ")).unwrap_or(text);
        if text.is_empty() {
            return;
        }
        const LOG_DAEMON: u8 = 3 << 3;
        let line = format!("<{}>{}[{}]: {}", LOG_DAEMON | self.severity, prog(), std::process::id(), text);
        // No syslog daemon (as in many containers) means the message is dropped, like syslog(3).
        if let Ok(sock) = UnixDatagram::unbound() {
            let _ = sock.send_to(line.as_bytes(), "/dev/log");
        }
    }
}
