//! The `log` filter: writes a line for every request that passes through it, and for the
//! server's and each connection's milestones, to a file (`logfile=`), to a shell script run once
//! per entry (`logscript=`), or both, in nbdkit-log-filter(1)'s format:
//!
//! ```text
//! 2020-08-06 02:07:23.080907 connection=1 Read id=1 offset=0x0 count=0x200 ...
//! 2020-08-06 02:07:23.080927 connection=1 ...Read id=1 return=0
//! ```
//!
//! Requests are logged on the way in (`...` at the end) and on the way out (`...` before the
//! action, with `return=` and `error=`), matched by an `id` counted per connection. The filter
//! changes nothing: reads are handed on with the caller's sink, so they keep the zero-copy paths
//! of the layer below.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::lines::LineFile;
use crate::watch::{server_asks_during_read, WhenReady};
use nbdforge_api::{
    extents, parse_bool, Backend, BufferSink, Capabilities, ClientInfo, Error, Export, Extents, Filter, Flags, Handle,
    Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result, Support, ThreadModel,
};
use Value::{Hex, Num, Text};

/// The filter's entry in the server's table: `nbdforge --filter=log memory 1G logfile=FILE`.
pub fn registration() -> Registration {
    let info = LayerInfo::new("log", "logs every request to a file or a script").help(
        "logfile=<FILE>               The file to place the log in.\n\
         logappend=<BOOL>             True to append to the log (default false).\n\
         logscript=<SCRIPT>           Script to run for logging.",
    );
    Registration::filter(info, LogFilter::new)
}

/// The `log` filter.
#[derive(Default)]
pub struct LogFilter {
    logfile: Option<String>,
    logscript: Option<String>,
    append: bool,
    /// Where entries go; inactive until `get_ready` opens the file.
    sink: Arc<Sink>,
    /// The process that made the filter, to tell whether the server forked into the background
    /// since (nbdforge makes the stack's layers first, then forks, then configures them).
    first_pid: u32,
    preconnects: AtomicU64,
    list_exports: AtomicU64,
}

impl LogFilter {
    /// The filter, inactive until given a `logfile` or a `logscript`.
    pub fn new() -> Self {
        LogFilter { first_pid: std::process::id(), ..Default::default() }
    }
}

impl Layer for LogFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "logfile" => self.logfile = Some(value.to_string()),
            "logscript" => self.logscript = Some(value.to_string()),
            "logappend" => self.append = parse_bool(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn cleanup(&self) {
        if let Some(file) = &self.sink.file {
            file.stop();
        }
    }
}

impl Filter for LogFilter {
    fn get_ready(&mut self, next: &Arc<dyn Backend>) -> Result<()> {
        let file = match &self.logfile {
            Some(name) => {
                let mut options = File::options();
                options.write(true).create(true).mode(0o666);
                if self.append {
                    options.append(true);
                } else {
                    options.truncate(true);
                }
                let file = options.open(name).map_err(|e| Error::from_io(format!("logfile={name}"), &e))?;
                Some(LineFile::new(file))
            }
            None => None,
        };
        self.sink = Arc::new(Sink { file, script: self.logscript.clone() });
        let model = match next.thread_model() {
            ThreadModel::SerializeConnections => 0,
            ThreadModel::SerializeAllRequests => 1,
            ThreadModel::SerializeRequests => 2,
            ThreadModel::Parallel => 3,
        };
        self.sink.entry(None, 0, "Ready", Kind::Print, &[("thread_model", Num(model))]);
        Ok(())
    }

    fn after_fork(&self, _next: &Arc<dyn Backend>) -> Result<()> {
        if std::process::id() != self.first_pid {
            self.sink.entry(None, 0, "Fork", Kind::Print, &[]);
        }
        if let Some(file) = &self.sink.file {
            file.start().map_err(|e| Error::from_io("starting the log writer thread", &e))?;
        }
        Ok(())
    }

    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        let id = self.preconnects.fetch_add(1, Ordering::Relaxed) + 1;
        self.sink.entry(None, id, "Preconnect", Kind::Enter, &[("readonly", flag(readonly))]);
        let r = next.preconnect(client, readonly);
        self.sink.leave(None, id, "Preconnect", &r, None);
        r
    }

    fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let id = self.list_exports.fetch_add(1, Ordering::Relaxed) + 1;
        let act = "ListExports";
        self.sink.entry(None, id, act, Kind::Enter, &[("readonly", flag(readonly)), ("tls", flag(tls))]);
        let r = next.list_exports(readonly, tls);
        let names = r.as_ref().map(|list| list.iter().map(|e| shell_quote(&e.name)).collect::<Vec<_>>().join(" "));
        let names = names.map(|n| format!("({n})")).unwrap_or_default();
        self.sink.leave(None, id, act, &r, Some(("exports", Text(&names))));
        r
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(LogHandle {
            next: next.open(args)?,
            sink: Arc::clone(&self.sink),
            connection: args.conn.id(),
            export: args.export_name.clone(),
            tls: args.tls,
            ids: AtomicU64::new(0),
        }))
    }
}

/// One connection through the filter.
struct LogHandle {
    next: Box<dyn Handle>,
    sink: Arc<Sink>,
    connection: u64,
    export: String,
    tls: bool,
    /// The last request id given out on this connection.
    ids: AtomicU64,
}

impl LogHandle {
    /// Logs a request going in, runs it, and logs how it ended.
    fn logged(&self, act: &str, fields: Fields<'_>, call: impl FnOnce() -> Result<()>) -> Result<()> {
        if !self.sink.active() {
            return call();
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        self.sink.entry(Some(self.connection), id, act, Kind::Enter, fields);
        let r = call();
        self.sink.leave(Some(self.connection), id, act, &r, None);
        r
    }
}

impl Handle for LogHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(crate::watch::see_every_request(self.next.capabilities()?))
    }

    fn prepare(&self, readonly: bool) -> Result<()> {
        if !self.sink.active() {
            return Ok(());
        }
        let size = self.next.get_size()?;
        let (min, pref, max) = self.next.block_size()?.map_or((0, 0, 0), |b| (b.minimum, b.preferred, b.maximum));
        let c = self.next.capabilities()?;
        // A read-only connection can do none of the writing operations, whatever the layer could.
        let w = |on: bool| flag(on && !readonly);
        let level = |s: Support| Num(s as u64);
        let writes = |s: Support| if readonly { Num(0) } else { level(s) };
        let fields = [
            ("export", Text(&shell_quote(&self.export))),
            ("tls", flag(self.tls)),
            ("size", Hex(size)),
            ("minsize", Hex(min.into())),
            ("prefsize", Hex(pref.into())),
            ("maxsize", Hex(max.into())),
            ("write", w(c.write)),
            ("flush", flag(c.flush)),
            ("rotational", flag(c.rotational)),
            ("trim", w(c.trim)),
            ("zero", writes(c.zero)),
            ("fua", writes(c.fua)),
            ("extents", flag(c.extents)),
            ("cache", level(c.cache)),
            ("fast_zero", w(c.fast_zero)),
        ];
        self.sink.entry(Some(self.connection), 0, "Connect", Kind::Print, &fields);
        Ok(())
    }

    fn finalize(&self) -> Result<()> {
        let n = self.ids.load(Ordering::Relaxed);
        self.sink.entry(Some(self.connection), 0, "Disconnect", Kind::Print, &[("transactions", Num(n))]);
        Ok(())
    }

    // Logged, then handed on with the caller's sink, so the data takes the fastest path below. The
    // reply line is written when the data is ready, before the server may send it: once the
    // client has it, it may send the next request, which must be logged after this one.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        if !self.sink.active() {
            return self.next.read(count, offset, flags, sink);
        }
        let (conn, id) = (Some(self.connection), self.ids.fetch_add(1, Ordering::Relaxed) + 1);
        self.sink.entry(conn, id, "Read", Kind::Enter, &[("offset", Hex(offset)), ("count", Hex(count))]);
        let done = |r: &Result<()>| self.sink.leave(conn, id, "Read", r, None);
        let mut watched = WhenReady::new(sink, || done(&Ok(())));
        let r = self.next.read(count, offset, flags, &mut watched);
        if !watched.fired() {
            done(&r);
        }
        r
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let fields =
            [("offset", Hex(offset)), ("count", Hex(buf.len() as u64)), ("fua", flag(flags.contains(Flags::FUA)))];
        self.logged("Write", &fields, || self.next.pwrite(buf, offset, flags))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.logged("Flush", &[], || self.next.flush(flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let fields = [("offset", Hex(offset)), ("count", Hex(count)), ("fua", flag(flags.contains(Flags::FUA)))];
        self.logged("Trim", &fields, || self.next.trim(count, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let has = |f: Flags| flag(flags.contains(f));
        let fields = [
            ("offset", Hex(offset)),
            ("count", Hex(count)),
            ("trim", has(Flags::MAY_TRIM)),
            ("fua", has(Flags::FUA)),
            ("fast", has(Flags::FAST_ZERO)),
        ];
        self.logged("Zero", &fields, || self.next.zero(count, offset, flags))
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.logged("Cache", &[("offset", Hex(offset)), ("count", Hex(count))], || {
            self.next.cache(count, offset, flags)
        })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, list: &mut Extents) -> Result<()> {
        if !self.sink.active() || server_asks_during_read() {
            return self.next.extents(count, offset, flags, list);
        }
        let (conn, act) = (Some(self.connection), "Extents");
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let req_one = flag(flags.contains(Flags::REQ_ONE));
        self.sink.entry(
            conn,
            id,
            act,
            Kind::Enter,
            &[("offset", Hex(offset)), ("count", Hex(count)), ("req_one", req_one)],
        );
        let from = list.next_offset();
        let r = self.next.extents(count, offset, flags, list);
        let mut runs = String::new();
        if r.is_ok() {
            runs.push('(');
            {
                for e in list.as_slice().iter().filter(|e| e.offset + e.length > from) {
                    let start = e.offset.max(from);
                    let kind = match (e.flags & extents::HOLE != 0, e.flags & extents::ZERO != 0) {
                        (true, true) => "hole,zero",
                        (true, false) => "hole",
                        (false, true) => "zero",
                        (false, false) => "",
                    };
                    let sep = if runs.len() == 1 { "" } else { " " };
                    let _ = write!(runs, "{sep}{start:#x} {:#x} \"{kind}\"", e.offset + e.length - start);
                }
            }
            runs.push(')');
        }
        self.sink.leave(conn, id, act, &r, Some(("extents", Text(&runs))));
        r
    }
}

/// The three kinds of entry: a request going in, coming out, and a one-line event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Enter,
    Leave,
    Print,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Enter => "ENTER",
            Kind::Leave => "LEAVE",
            Kind::Print => "PRINT",
        }
    }
}

/// Where entries go.
#[derive(Default)]
struct Sink {
    file: Option<LineFile>,
    script: Option<String>,
}

impl Sink {
    fn active(&self) -> bool {
        self.file.is_some() || self.script.is_some()
    }

    /// One entry: `conn` for a connection's entries, `id` (0: none) to pair a request's two lines.
    fn entry(&self, conn: Option<u64>, id: u64, act: &str, kind: Kind, fields: Fields<'_>) {
        thread_local! {
            /// The line being made, kept to save an allocation per line.
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        if let Some(file) = &self.file {
            LINE.with_borrow_mut(|line| {
                line.clear();
                push_timestamp(line, SystemTime::now());
                if let Some(c) = conn {
                    line.push_str(" connection=");
                    push_decimal(line, c, 1);
                }
                line.push(' ');
                if kind == Kind::Leave {
                    line.push_str("...");
                }
                line.push_str(act);
                if id != 0 {
                    line.push_str(" id=");
                    push_decimal(line, id, 1);
                }
                for (name, value) in fields {
                    line.push(' ');
                    push_field(line, name, *value);
                }
                if kind == Kind::Enter {
                    line.push_str(" ...");
                }
                line.push('\n');
                file.push(line.as_bytes());
            });
        }
        if let Some(script) = &self.script {
            self.run_script(script, conn, id, act, kind, fields);
        }
    }

    /// A request's way out: `return=0` after `ok_field` when it succeeded, otherwise
    /// `return=-1 error=NAME`.
    fn leave<T>(&self, conn: Option<u64>, id: u64, act: &str, r: &Result<T>, ok_field: Option<Field<'_>>) {
        match (r, ok_field) {
            (Ok(_), Some(field)) => self.entry(conn, id, act, Kind::Leave, &[field, ("return", Num(0))]),
            (Ok(_), None) => self.entry(conn, id, act, Kind::Leave, &[("return", Num(0))]),
            (Err(e), _) => {
                let fields = [("return", Text("-1")), ("error", Text(error_name(e.errno)))];
                self.entry(conn, id, act, Kind::Leave, &fields)
            }
        }
    }

    /// Runs the script with the entry as shell variables set before it. Its exit status is
    /// reported and otherwise ignored: a script cannot change or stop a request.
    fn run_script(&self, script: &str, conn: Option<u64>, id: u64, act: &str, kind: Kind, fields: Fields<'_>) {
        let mut text = format!("act={act}\n");
        if let Some(c) = conn {
            let _ = writeln!(text, "connection={c}");
        }
        let _ = writeln!(text, "type={}", kind.name());
        if id != 0 {
            let _ = writeln!(text, "id={id}");
        }
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            push_field(&mut text, name, *value);
        }
        text.push('\n');
        text.push_str(script);
        match std::process::Command::new("/bin/sh").arg("-c").arg(&text).status() {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::error!("log: logscript: {status}"),
            Err(e) => tracing::error!("log: logscript: could not run /bin/sh: {e}"),
        }
    }
}

/// The value of a field of an entry.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// `0x1f`: offsets, counts, sizes.
    Hex(u64),
    /// `31`: flags, numbers of things.
    Num(u64),
    /// Written as it is (quoted already where it must be).
    Text(&'a str),
}

/// `name=value`.
type Field<'a> = (&'a str, Value<'a>);
type Fields<'a> = &'a [Field<'a>];

fn flag(on: bool) -> Value<'static> {
    Num(on.into())
}

fn push_field(out: &mut String, name: &str, value: Value<'_>) {
    out.push_str(name);
    out.push('=');
    match value {
        Hex(n) => push_hex(out, n),
        Num(n) => push_decimal(out, n, 1),
        Text(t) => out.push_str(t),
    }
}

/// Appends `0x` and `n` in lower-case hexadecimal.
fn push_hex(out: &mut String, n: u64) {
    out.push_str("0x");
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(char::from(b"0123456789abcdef"[(n >> (4 * i) & 0xf) as usize]));
    }
}

/// The errno as the NBD error the client receives, by name: what nbdkit's log shows.
fn error_name(errno: i32) -> &'static str {
    match errno {
        libc::EROFS | libc::EPERM => "EPERM",
        libc::EIO => "EIO",
        libc::ENOMEM => "ENOMEM",
        libc::EDQUOT | libc::EFBIG | libc::ENOSPC => "ENOSPC",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ENOTSUP => "ENOTSUP",
        libc::EOVERFLOW => "EOVERFLOW",
        _ => "EINVAL",
    }
}

/// A string as the shell reads it: as it is when it is made only of characters the shell leaves
/// alone, otherwise in double quotes with `$`, `` ` ``, `\` and `"` escaped.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || ":/=,_.-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '$' | '`' | '\\' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `YYYY-MM-DD HH:MM:SS.uuuuuu` in UTC. The date and time to the second are made once a second
/// on each thread: they cost more to format than the rest of a line.
fn push_timestamp(out: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let (year, month, day) = civil_date(secs / 86_400);
            let t = secs % 86_400;
            text.clear();
            let _ = write!(text, "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
            *cached = secs;
        }
        out.push_str(text);
    });
    out.push('.');
    push_decimal(out, u64::from(since.subsec_micros()), 6);
}

/// Appends `n` in decimal, with leading zeroes to at least `width` digits (at most 20).
fn push_decimal(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 || digits.len() - at < width.clamp(1, 20) {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits[at..].iter().for_each(|&d| out.push(char::from(d)));
}

/// The proleptic Gregorian date `days` after 1970-01-01 (the civil-from-days algorithm: count
/// in 400-year eras of 146097 days, with years starting on March 1 so leap days come last).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_in_utc() {
        let at = |s: u64, us: u32| {
            let mut out = String::new();
            push_timestamp(&mut out, UNIX_EPOCH + std::time::Duration::new(s, us * 1000));
            out
        };
        assert_eq!(at(0, 0), "1970-01-01 00:00:00.000000");
        assert_eq!(at(1_596_679_643, 80_415), "2020-08-06 02:07:23.080415");
        assert_eq!(at(951_782_400, 1), "2000-02-29 00:00:00.000001");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28 23:59:59.999999");
        assert_eq!(at(4_107_542_399, 5), "2100-02-28 23:59:59.000005", "the same second again");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01 00:00:00.000000");
        let mut n = String::new();
        push_decimal(&mut n, u64::MAX, 1);
        push_decimal(&mut n, 0, 1);
        push_decimal(&mut n, 42, 3);
        assert_eq!(n, "184467440737095516150042");
    }

    #[test]
    fn quoting_as_the_shell_reads_it() {
        assert_eq!(shell_quote(""), "\"\"");
        assert_eq!(shell_quote("disk-1.img"), "disk-1.img");
        assert_eq!(shell_quote("a:b/c=d,e_f"), "a:b/c=d,e_f");
        assert_eq!(shell_quote("a b"), "\"a b\"");
        assert_eq!(shell_quote("x$y`z\\\"'"), "\"x\\$y\\`z\\\\\\\"'\"");
        assert_eq!(shell_quote("a@b"), "\"a@b\"");
    }

    #[test]
    fn errors_by_the_name_the_client_sees() {
        assert_eq!(error_name(libc::EFBIG), "ENOSPC");
        assert_eq!(error_name(libc::EROFS), "EPERM");
        assert_eq!(error_name(libc::EOPNOTSUPP), "ENOTSUP");
        assert_eq!(error_name(libc::ENOENT), "EINVAL");
        let mut hex = String::new();
        for n in [0, 0x1f, 0x100000, u64::MAX] {
            push_hex(&mut hex, n);
            hex.push(' ');
        }
        assert_eq!(hex, "0x0 0x1f 0x100000 0xffffffffffffffff ");
    }

    /// A 64 KiB RAM disk whose writes past 32 KiB fail, with a data run and a hole.
    struct Disk(std::sync::Mutex<Vec<u8>>);
    impl Handle for Disk {
        fn get_size(&self) -> Result<u64> {
            Ok(65536)
        }
        fn capabilities(&self) -> Result<Capabilities> {
            Ok(Capabilities { write: true, extents: true, zero: Support::Emulate, ..Capabilities::READ_ONLY })
        }
        fn read(&self, count: u64, offset: u64, _f: Flags, sink: &mut dyn ReadSink) -> Result<()> {
            let data = self.0.lock().unwrap();
            sink.borrowed(&[&data[offset as usize..(offset + count) as usize]])
        }
        fn pwrite(&self, buf: &[u8], offset: u64, _f: Flags) -> Result<()> {
            if offset >= 32768 {
                return Err(Error::new(libc::EFBIG, "too far"));
            }
            self.0.lock().unwrap()[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn extents(&self, _c: u64, _o: u64, _f: Flags, e: &mut Extents) -> Result<()> {
            e.add(0, 4096, extents::DATA)?;
            e.add(4096, 61440, extents::HOLE | extents::ZERO)
        }
    }

    fn handle(sink: Sink, export: &str) -> LogHandle {
        LogHandle {
            next: Box::new(Disk(std::sync::Mutex::new(vec![7; 65536]))),
            sink: Arc::new(sink),
            connection: 3,
            export: export.into(),
            tls: false,
            ids: AtomicU64::new(0),
        }
    }

    #[test]
    fn logs_requests_in_nbdkits_format_and_changes_nothing() {
        let path = std::env::temp_dir().join(format!("nbdforge-log-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let h = handle(Sink { file: Some(LineFile::new(file)), script: None }, "a b");
        h.prepare(true).unwrap();
        let mut buf = [0u8; 4];
        h.pread(&mut buf, 16, Flags::NONE).unwrap();
        assert_eq!(buf, [7; 4], "reads pass through unchanged");
        h.pwrite(b"xy", 40000, Flags::FUA).unwrap_err();
        h.zero(512, 0, Flags::MAY_TRIM | Flags::FAST_ZERO).unwrap_or(());
        let mut e = Extents::new(0, 65536);
        h.extents(65536, 0, Flags::REQ_ONE, &mut e).unwrap();
        h.flush(Flags::NONE).unwrap_or(());
        h.finalize().unwrap();
        let caps = h.capabilities().unwrap();
        assert_eq!(caps.zero, Support::Native, "zero requests reach the filter, the layer below emulates them");

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| &l[27..]).collect();
        assert_eq!(
            lines,
            [
                "connection=3 Connect export=\"a b\" tls=0 size=0x10000 minsize=0x0 prefsize=0x0 maxsize=0x0 \
                 write=0 flush=0 rotational=0 trim=0 zero=0 fua=0 extents=1 cache=0 fast_zero=0",
                "connection=3 Read id=1 offset=0x10 count=0x4 ...",
                "connection=3 ...Read id=1 return=0",
                "connection=3 Write id=2 offset=0x9c40 count=0x2 fua=1 ...",
                "connection=3 ...Write id=2 return=-1 error=ENOSPC",
                "connection=3 Zero id=3 offset=0x0 count=0x200 trim=1 fua=0 fast=1 ...",
                "connection=3 ...Zero id=3 return=-1 error=ENOTSUP",
                "connection=3 Extents id=4 offset=0x0 count=0x10000 req_one=1 ...",
                "connection=3 ...Extents id=4 extents=(0x0 0x1000 \"\" 0x1000 0xf000 \"hole,zero\") return=0",
                "connection=3 Flush id=5 ...",
                "connection=3 ...Flush id=5 return=-1 error=ENOTSUP",
                "connection=3 Disconnect transactions=5",
            ]
        );
        assert!(text.as_bytes()[..27].iter().all(|b| b.is_ascii_digit() || b" -:.".contains(b)));
    }

    #[test]
    fn inactive_without_a_file_or_script() {
        let h = handle(Sink::default(), "");
        h.prepare(false).unwrap();
        h.pwrite(b"ok", 0, Flags::NONE).unwrap();
        h.finalize().unwrap();
        let mut f = LogFilter::new();
        assert!(f.config("logappend", "yes").unwrap());
        assert!(!f.config("size", "1M").unwrap(), "the plugin's parameters pass down");
        assert_eq!(
            f.config("logappend", "maybe").unwrap_err().message,
            "logappend=maybe: not a boolean (use true or false)"
        );
    }
}
