//! What the `sh` and `eval` plugins share: nbdkit's convention for plugins written as scripts
//! (nbdkit-sh-plugin(3)). Every plugin method is one run of the script, as
//! `SCRIPT METHOD ARGS...`, with `$tmpdir` in its environment; it answers with its exit status
//! (0 done, 1 and 8-127 failed, 2 method not provided, 3 false, 4-7 reserved, treated as failed),
//! its standard output (sizes, handles, read data, extents) and, on failure, an errno name and a
//! message on standard error (`ENOSPC Out of space`). Written data goes to its standard input.
//!
//! [`Script`] maps the SDK's calls onto those runs; the two plugins differ only in how a method
//! becomes a program ([`Program`]) and in what a missing `can_*` method means.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nbdforge_api::extents::{HOLE, ZERO};
use nbdforge_api::{
    parse_size, BlockSize, Capabilities, ClientInfo, Error, Export, Extents, Flags, Handle, OpenArgs, Result, Support,
    ThreadModel,
};

/// How a method is run.
#[derive(Debug, Clone)]
pub(crate) enum Program {
    /// `sh`: one executable, given the method as its first argument.
    Executable(PathBuf),
    /// `eval`: a `/bin/sh` fragment per method (`missing` for the others, default `exit 2`).
    Fragments { methods: BTreeMap<String, String>, missing: Option<String> },
}

impl Program {
    /// Whether the script has `method` at all (only an `eval` plugin can tell).
    fn defines(&self, method: &str) -> Option<bool> {
        match self {
            Program::Executable(_) => None,
            Program::Fragments { methods, .. } => Some(methods.contains_key(method)),
        }
    }
}

/// What one run of a method came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Exit status 0, with the standard output.
    Done(Vec<u8>),
    /// Exit status 2: the script does not provide the method.
    Missing,
    /// Exit status 3: false.
    False,
}

/// The errno names a script may print, as nbdkit knows them.
const ERRNO_NAMES: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("ENODEV", libc::ENODEV),
    ("EINVAL", libc::EINVAL),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("ERANGE", libc::ERANGE),
    ("ENOTSUP", libc::ENOTSUP),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("ENOTCONN", libc::ENOTCONN),
    ("ESHUTDOWN", libc::ESHUTDOWN),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("EDQUOT", libc::EDQUOT),
];

/// The error a failed run reports: the errno named first on standard error (EIO when there is
/// none), and the rest as the message.
fn script_error(method: &str, stderr: &[u8]) -> Error {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let (first, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    match ERRNO_NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(first)) {
        Some(&(_, errno)) if rest.trim().is_empty() => Error::new(errno, format!("{method}: {first}")),
        Some(&(_, errno)) => Error::new(errno, format!("{method}: {}", rest.trim())),
        None if text.is_empty() => Error::io(format!("{method}: the script failed")),
        None => Error::io(format!("{method}: {text}")),
    }
}

/// The methods run while the server starts or stops, before any client: no time limit, as a
/// script may build its disk in them.
const STARTUP_METHODS: &[&str] =
    &["load", "unload", "config", "config_complete", "thread_model", "get_ready", "after_fork", "dump_plugin"];

/// How often a waiting call looks whether the server is shutting down.
const SHUTDOWN_CHECK: Duration = Duration::from_secs(1);

/// The time limit of a method run for a client, unless `script-timeout=` says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A script and the private directory it may keep state in.
#[derive(Debug)]
pub(crate) struct Script {
    pub(crate) program: Program,
    pub(crate) tmpdir: PathBuf,
    /// How long a method run for a client may take (`None`: as long as it likes).
    pub(crate) timeout: Option<Duration>,
    /// The plugin's name, for messages (`sh`, `eval`).
    name: &'static str,
}

impl Script {
    /// A script with a fresh private directory for `$tmpdir`.
    pub(crate) fn new(name: &'static str, program: Program) -> Result<Self> {
        let tmpdir = make_tmpdir(name)?;
        Ok(Script { program, tmpdir, timeout: Some(DEFAULT_TIMEOUT), name })
    }

    /// Runs `method` with `args`, feeding it `input` on standard input. A run past the time
    /// limit, or still going when the server shuts down, is killed with everything it started
    /// and the call fails.
    pub(crate) fn call(&self, method: &str, args: &[&str], input: Option<&[u8]>) -> Result<Outcome> {
        let mut command = match &self.program {
            Program::Executable(path) => Command::new(path),
            Program::Fragments { methods, missing } => {
                let body = methods.get(method).or(missing.as_ref()).map_or("exit 2", String::as_str);
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(body).arg(format!("{}-{method}", self.name));
                c
            }
        };
        command
            .arg(method)
            .args(args)
            .env("tmpdir", &self.tmpdir)
            .process_group(0)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fail = |e: std::io::Error| Error::from_io(format!("{}: {method}: running the script", self.name), &e);
        let mut child = command.spawn().map_err(fail)?;
        let limit = if STARTUP_METHODS.contains(&method) { None } else { self.timeout };
        let deadline = limit.map(|d| Instant::now() + d);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let mut killed = None;
        // The pipes are drained by threads of their own (a script may fill one while we wait
        // on the other, or answer before reading all of its input), so that this thread can
        // watch the clock.
        let (output, errors) = std::thread::scope(|s| {
            if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
                s.spawn(move || {
                    let _ = stdin.write_all(data);
                });
            }
            let (done, finished) = mpsc::channel();
            let drain = |pipe: Option<Box<dyn Read + Send>>, done: mpsc::Sender<()>| {
                move || {
                    let mut bytes = Vec::new();
                    if let Some(mut pipe) = pipe {
                        let _ = pipe.read_to_end(&mut bytes);
                    }
                    let _ = done.send(());
                    bytes
                }
            };
            let out = s.spawn(drain(stdout.map(|p| Box::new(p) as _), done.clone()));
            let err = s.spawn(drain(stderr.map(|p| Box::new(p) as _), done));
            let mut open_pipes = 2;
            while open_pipes > 0 {
                let now = Instant::now();
                let step = deadline.map_or(SHUTDOWN_CHECK, |d| d.saturating_duration_since(now).min(SHUTDOWN_CHECK));
                match finished.recv_timeout(step) {
                    Ok(()) => open_pipes -= 1,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let why = if deadline.is_some_and(|d| Instant::now() >= d) {
                            format!("ran for more than {} s", limit.unwrap_or_default().as_secs_f64())
                        } else if nbdforge_api::server::is_shutting_down() {
                            "was still running when the server shut down".to_string()
                        } else {
                            continue;
                        };
                        // The group is the script's own (process_group above), and the child
                        // is not reaped yet, so the id cannot name anything else.
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(child.id() as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        killed = Some(why);
                        break;
                    }
                }
            }
            (out.join().unwrap_or_default(), err.join().unwrap_or_default())
        });
        let status = child.wait().map_err(fail)?;
        if let Some(why) = killed {
            return Err(Error::io(format!("{method}: the script {why} and was killed")));
        }
        match status.code() {
            Some(0) => Ok(Outcome::Done(output)),
            Some(2) => Ok(Outcome::Missing),
            Some(3) => Ok(Outcome::False),
            Some(_) => Err(script_error(method, &errors)),
            None => Err(Error::io(format!(
                "{method}: the script was killed by signal {}",
                status.signal().unwrap_or_default()
            ))),
        }
    }

    /// Passes `key=value` to the script's `config` method; a script without one takes no
    /// parameters.
    pub(crate) fn config(&self, key: &str, value: &str) -> Result<()> {
        match self.call("config", &[key, value], None)? {
            Outcome::Done(_) => Ok(()),
            Outcome::Missing => Err(nbdforge_api::unknown_parameter(key)),
            Outcome::False => Err(Error::invalid(format!("{key}={value}: refused by the script"))),
        }
    }

    /// Runs a method that must succeed if the script has it; `Ok(None)` if it does not.
    pub(crate) fn optional(&self, method: &str, args: &[&str]) -> Result<Option<Vec<u8>>> {
        match self.call(method, args, None)? {
            Outcome::Done(out) => Ok(Some(out)),
            Outcome::Missing => Ok(None),
            Outcome::False => Err(Error::io(format!("{method}: unexpected exit status 3"))),
        }
    }

    /// Runs a method that must exist and succeed.
    fn required(&self, method: &str, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>> {
        match self.call(method, args, input)? {
            Outcome::Done(out) => Ok(out),
            Outcome::Missing => Err(Error::io(format!("{method}: the script does not provide this method"))),
            Outcome::False => Err(Error::io(format!("{method}: unexpected exit status 3"))),
        }
    }

    /// A yes-or-no method: exit 0 is true, 3 false. When the script lacks it, `eval` answers
    /// whether the method it guards (`pwrite` for `can_write`) is defined; `sh` says false.
    fn boolean(&self, method: &str, args: &[&str], guarded: Option<&str>) -> Result<bool> {
        match self.call(method, args, None)? {
            Outcome::Done(_) => Ok(true),
            Outcome::False => Ok(false),
            Outcome::Missing => Ok(guarded.and_then(|m| self.program.defines(m)).unwrap_or(false)),
        }
    }

    /// `none`, `emulate` or `native`, from `can_fua` or `can_cache`.
    fn support(&self, method: &str, args: &[&str], otherwise: Support) -> Result<Support> {
        let Some(out) = self.optional(method, args)? else { return Ok(otherwise) };
        match String::from_utf8_lossy(&out).trim() {
            "none" => Ok(Support::None),
            "emulate" => Ok(Support::Emulate),
            "native" => Ok(Support::Native),
            other => Err(Error::invalid(format!("{method}: expected none, emulate or native, not '{other}'"))),
        }
    }

    /// The thread model the script asks for (`serialize_all_requests` if it does not say).
    pub(crate) fn thread_model(&self) -> ThreadModel {
        let Ok(Some(out)) = self.optional("thread_model", &[]) else { return ThreadModel::SerializeAllRequests };
        match String::from_utf8_lossy(&out).trim() {
            "serialize_connections" => ThreadModel::SerializeConnections,
            "serialize_requests" => ThreadModel::SerializeRequests,
            "parallel" => ThreadModel::Parallel,
            _ => ThreadModel::SerializeAllRequests,
        }
    }

    pub(crate) fn preconnect(&self, _client: &ClientInfo, readonly: bool) -> Result<()> {
        self.optional("preconnect", &[bool_word(readonly)]).map(drop)
    }

    pub(crate) fn list_exports(&self, readonly: bool, tls: bool) -> Result<Option<Vec<Export>>> {
        let out = self.optional("list_exports", &[bool_word(readonly), bool_word(tls)])?;
        Ok(out.map(|out| parse_export_list(&String::from_utf8_lossy(&out))))
    }

    pub(crate) fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        let out = self.optional("default_export", &[bool_word(readonly), bool_word(tls)])?;
        let exports = out.map(|out| parse_export_list(&String::from_utf8_lossy(&out))).unwrap_or_default();
        Ok(exports.into_iter().next().map(|e| e.name).unwrap_or_default())
    }

    /// Opens a connection: runs `open` and keeps the handle it prints.
    pub(crate) fn open(self: &Arc<Self>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let open_args = [bool_word(args.readonly), args.export_name.as_str(), bool_word(args.tls)];
        let mut handle = match self.optional("open", &open_args)? {
            Some(out) => String::from_utf8_lossy(&out).into_owned(),
            None => String::new(),
        };
        if handle.ends_with('\n') {
            handle.pop();
        }
        let mut h = ScriptHandle {
            script: self.clone(),
            handle,
            readonly: args.readonly,
            capabilities: Capabilities::READ_ONLY,
        };
        h.capabilities = h.ask_capabilities()?;
        Ok(Box::new(h))
    }
}

fn bool_word(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// The export lists of `list_exports` and `default_export`: a first line `NAMES`,
/// `INTERLEAVED` or `NAMES+DESCRIPTIONS` saying how the rest is laid out (without one, every
/// line is a name).
fn parse_export_list(text: &str) -> Vec<Export> {
    let mut lines: Vec<&str> = text.lines().collect();
    let mode = lines.first().copied().unwrap_or("");
    let named = |names: &[&str]| names.iter().map(|n| Export::named(*n)).collect::<Vec<_>>();
    match mode {
        "NAMES" => named(&lines[1..]),
        "INTERLEAVED" => lines[1..]
            .chunks(2)
            .map(|pair| Export { name: pair[0].to_string(), description: pair.get(1).map(|d| d.to_string()) })
            .collect(),
        "NAMES+DESCRIPTIONS" => {
            lines.remove(0);
            let half = lines.len() / 2;
            (0..half)
                .map(|i| Export { name: lines[i].to_string(), description: Some(lines[half + i].to_string()) })
                .collect()
        }
        _ => named(&lines),
    }
}

/// Makes the private directory a script gets as `$tmpdir`.
fn make_tmpdir(name: &str) -> Result<PathBuf> {
    make_private_dir(&std::env::temp_dir(), name)
}

/// Makes a new directory in `base` that only this user may enter (`nbdforge-NAME-...`): what
/// goes in it cannot be seen or swapped by other users while it is being made.
pub(crate) fn make_private_dir(base: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("nbdforge-{name}-{}-{nanos:08x}{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::from_io(format!("{name}: creating {}", dir.display()), &e)),
        }
    }
    Err(Error::io(format!("{name}: could not create a temporary directory in {}", base.display())))
}

/// Removes the private directory when the server exits.
pub(crate) fn remove_tmpdir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The directory goes with the script, also when the server stops on a configuration error
/// before `cleanup` could run. (A server going into the background leaves its parent by
/// `exit`, which drops nothing, so the directory stays for the child.)
impl Drop for Script {
    fn drop(&mut self) {
        remove_tmpdir(&self.tmpdir);
    }
}

/// One connection: the handle string `open` printed, passed to every method after it.
struct ScriptHandle {
    script: Arc<Script>,
    handle: String,
    readonly: bool,
    capabilities: Capabilities,
}

/// The words a flags argument is made of: `fua`, `may_trim`, `fast`, `req_one`.
fn flag_words(flags: Flags) -> String {
    let mut words = Vec::new();
    if flags.contains(Flags::FUA) {
        words.push("fua");
    }
    if flags.contains(Flags::MAY_TRIM) {
        words.push("may_trim");
    }
    if flags.contains(Flags::FAST_ZERO) {
        words.push("fast");
    }
    if flags.contains(Flags::REQ_ONE) {
        words.push("req_one");
    }
    words.join(",")
}

impl ScriptHandle {
    fn h(&self) -> &str {
        &self.handle
    }

    /// Asks every `can_*` method once, when the connection opens.
    fn ask_capabilities(&self) -> Result<Capabilities> {
        let s = &self.script;
        let h = [self.h()];
        let write = !self.readonly && s.boolean("can_write", &h, Some("pwrite"))?;
        let flush = s.boolean("can_flush", &h, Some("flush"))?;
        let zero = s.boolean("can_zero", &h, Some("zero"))?;
        Ok(Capabilities {
            write,
            flush,
            rotational: s.boolean("is_rotational", &h, None)?,
            trim: write && s.boolean("can_trim", &h, Some("trim"))?,
            zero: if zero { Support::Native } else { Support::Emulate },
            fast_zero: zero && s.boolean("can_fast_zero", &h, None)?,
            fua: s.support("can_fua", &h, if flush { Support::Emulate } else { Support::None })?,
            multi_conn: s.boolean("can_multi_conn", &h, None)?,
            extents: s.boolean("can_extents", &h, Some("extents"))?,
            cache: s.support("can_cache", &h, Support::None)?,
        })
    }

    fn count_offset(count: u64, offset: u64) -> [String; 2] {
        [count.to_string(), offset.to_string()]
    }
}

impl Drop for ScriptHandle {
    fn drop(&mut self) {
        let _ = self.script.optional("close", &[self.h()]);
    }
}

impl Handle for ScriptHandle {
    fn get_size(&self) -> Result<u64> {
        let out = self.script.required("get_size", &[self.h()], None)?;
        let text = String::from_utf8_lossy(&out);
        parse_size("get_size", text.trim())
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let Some(out) = self.script.optional("block_size", &[self.h()])? else { return Ok(None) };
        let text = String::from_utf8_lossy(&out);
        let sizes: Vec<&str> = text.split_whitespace().collect();
        let [min, pref, max] = sizes.as_slice() else {
            return Err(Error::invalid(format!("block_size: expected three sizes, not '{}'", text.trim())));
        };
        let size = |s: &str| -> Result<u32> {
            u32::try_from(parse_size("block_size", s)?)
                .map_err(|_| Error::invalid(format!("block_size: {s} is too large")))
        };
        Ok(Some(BlockSize { minimum: size(min)?, preferred: size(pref)?, maximum: size(max)? }))
    }

    fn export_description(&self) -> Result<Option<String>> {
        let out = self.script.optional("export_description", &[self.h()])?;
        Ok(out.map(|out| {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            if text.ends_with('\n') {
                text.pop();
            }
            text
        }))
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(self.capabilities)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let [count, offset] = Self::count_offset(buf.len() as u64, offset);
        let out = self.script.required("pread", &[self.h(), &count, &offset], None)?;
        if out.len() != buf.len() {
            return Err(Error::io(format!(
                "pread: the script printed {} bytes, {} were asked for",
                out.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let [count, offset] = Self::count_offset(buf.len() as u64, offset);
        self.script.required("pwrite", &[self.h(), &count, &offset, &flag_words(flags)], Some(buf)).map(drop)
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.script.required("flush", &[self.h()], None).map(drop)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let [count, offset] = Self::count_offset(count, offset);
        self.script.required("trim", &[self.h(), &count, &offset, &flag_words(flags)], None).map(drop)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let [count, offset] = Self::count_offset(count, offset);
        self.script.required("zero", &[self.h(), &count, &offset, &flag_words(flags)], None).map(drop)
    }

    /// Lines of `offset length [type]`, the type a number or `hole`, `zero`, `hole,zero`.
    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let [c, o] = Self::count_offset(count, offset);
        let out = self.script.required("extents", &[self.h(), &c, &o, &flag_words(flags)], None)?;
        for line in String::from_utf8_lossy(&out).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (start, length, kind) = match fields.as_slice() {
                [] => continue,
                [start, length] => (*start, *length, "0"),
                [start, length, kind, ..] => (*start, *length, *kind),
                [_] => return Err(Error::io(format!("extents: cannot parse '{line}'"))),
            };
            let flags = match kind.parse::<u32>() {
                Ok(n) => n,
                Err(_) => kind.split(',').try_fold(0, |acc, word| match word {
                    "hole" => Ok(acc | HOLE),
                    "zero" => Ok(acc | ZERO),
                    "" => Ok(acc),
                    other => Err(Error::io(format!("extents: unknown type '{other}' in '{line}'"))),
                })?,
            };
            let start = parse_size("extents", start)?;
            let length = parse_size("extents", length)?;
            // Runs before the next offset are dropped; a gap is the script's mistake.
            if start + length > extents.next_offset() {
                extents.add(
                    start.max(extents.next_offset()),
                    start + length - start.max(extents.next_offset()),
                    flags,
                )?;
            }
            if extents.is_full() {
                break;
            }
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let [count, offset] = Self::count_offset(count, offset);
        self.script.required("cache", &[self.h(), &count, &offset], None).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_take_the_errno_named_first() {
        assert_eq!(script_error("pwrite", b"ENOSPC Out of space\n"), Error::new(libc::ENOSPC, "pwrite: Out of space"));
        assert_eq!(script_error("trim", b"EROFS").errno, libc::EROFS);
        assert_eq!(script_error("pread", b"something odd").errno, libc::EIO);
        assert_eq!(script_error("pread", b"").errno, libc::EIO);
    }

    #[test]
    fn export_lists_in_every_layout() {
        let listed = |text: &str| -> Vec<(String, Option<String>)> {
            parse_export_list(text).into_iter().map(|e| (e.name, e.description)).collect()
        };
        let want = |pairs: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
            pairs.iter().map(|(n, d)| (n.to_string(), d.map(str::to_string))).collect()
        };
        assert_eq!(listed("a\nb\n"), want(&[("a", None), ("b", None)]));
        assert_eq!(listed("NAMES\na\n"), want(&[("a", None)]));
        let described = want(&[("a", Some("first")), ("b", Some("second"))]);
        assert_eq!(listed("INTERLEAVED\na\nfirst\nb\nsecond\n"), described);
        assert_eq!(listed("NAMES+DESCRIPTIONS\na\nb\nfirst\nsecond\n"), described);
    }

    #[test]
    fn fragments_run_with_the_method_and_tmpdir() {
        let methods: BTreeMap<String, String> = [
            ("get_size".to_string(), "echo 1M".to_string()),
            ("pread".to_string(), r#"head -c "$3" /dev/zero | tr '\0' x"#.to_string()),
            ("pwrite".to_string(), r#"test "$1" = pwrite && cat > "$tmpdir/written""#.to_string()),
            ("trim".to_string(), "echo 'EROFS no trimming here' >&2; exit 1".to_string()),
        ]
        .into_iter()
        .collect();
        let script = Arc::new(Script::new("eval", Program::Fragments { methods, missing: None }).unwrap());
        let h = script.open(&OpenArgs::local("", false)).unwrap();
        assert_eq!(h.get_size().unwrap(), 1 << 20);
        let caps = h.capabilities().unwrap();
        assert!(caps.write && caps.trim && !caps.flush && !caps.extents);
        let mut buf = [0u8; 5];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"xxxxx");
        h.pwrite(b"hello", 0, Flags::FUA).unwrap();
        assert_eq!(std::fs::read(script.tmpdir.join("written")).unwrap(), b"hello");
        let err = h.trim(1, 0, Flags::NONE).unwrap_err();
        assert_eq!(err, Error::new(libc::EROFS, "trim: no trimming here"));
        drop(h);
        remove_tmpdir(&script.tmpdir);
    }
}
