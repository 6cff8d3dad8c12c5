//! The command line, as nbdkit has it: `[OPTIONS] [--filter=F]... PLUGIN [[KEY=]VALUE]...`.
//!
//! Parsing follows GNU getopt, which nbdkit uses, so that any nbdkit command line means the same
//! here: options and plugin parameters may be mixed in any order (`memory 1G -f` is fine), `--`
//! ends the options, short options cluster (`-fv`, `-p10809`), long options take their value after
//! `=` or as the next argument, and a long option may be shortened to any unambiguous prefix
//! (`--fore`). This module only turns words into an [`Options`] value and checks the combinations
//! nbdkit refuses; it neither loads plugins nor touches the system.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nbdforge_process::sockets::Family;
use nbdforge_process::LogDest;
use nbdforge_server::{TlsMode, TlsOptions};

/// What `-U` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSocket {
    /// `-U PATH`.
    Path(PathBuf),
    /// `-U -`: a socket in a new private temporary directory, removed at exit.
    Private,
}

/// One `-D NAME.FLAG=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugFlag {
    /// The plugin, filter or `nbdkit` (the server) the flag is for.
    pub name: String,
    /// The flag, which may itself contain dots (`backend.datapath`).
    pub flag: String,
    pub value: i64,
}

/// Everything the command line says.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-4` / `-6` (the last one given wins).
    pub family: Family,
    pub debug_flags: Vec<DebugFlag>,
    pub dump_config: bool,
    pub dump_plugin: bool,
    pub exit_with_parent: bool,
    pub export_name: Option<String>,
    pub filters: Vec<String>,
    pub foreground: bool,
    pub group: Option<String>,
    pub help: bool,
    pub ipaddr: Option<String>,
    pub keepalive: bool,
    /// `--log`.
    pub log: Option<LogDest>,
    pub long_options: bool,
    pub mask_handshake: Option<u32>,
    /// `--metrics=ADDR:PORT`: where to serve live metrics (an nbdforge extension).
    pub metrics: Option<String>,
    pub no_meta_contexts: bool,
    pub no_structured_replies: bool,
    /// `-o` (true) or `-n` (false); the last one given wins.
    pub oldstyle: bool,
    pub pidfile: Option<PathBuf>,
    /// `-p` as given: a TCP port (or service name), or an AF_VSOCK port with `--vsock`.
    pub port: Option<String>,
    pub print_uri: bool,
    pub readonly: bool,
    pub run: Option<String>,
    pub selinux_label: Option<String>,
    pub short_options: bool,
    pub single: bool,
    pub swap: bool,
    /// `-t`; 0 means the default.
    pub threads: Option<usize>,
    /// `--timeout`; `Some(Duration::ZERO)` means no limit.
    pub timeout: Option<Duration>,
    pub tls: TlsOptions,
    /// `--tls` was given; without it TLS is on exactly when credentials load, as in nbdkit.
    pub tls_given: bool,
    pub unix: Option<UnixSocket>,
    pub user: Option<String>,
    /// Number of `-v`.
    pub verbose: u8,
    pub version: bool,
    pub vsock: bool,
    /// The plugin name or path (the first positional argument).
    pub plugin: Option<String>,
    /// Everything after the plugin name that is not an option, in order.
    pub params: Vec<String>,
}

/// A command-line error: the message, and whether to point at `--help` after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Options that have a short form. `--short-options` lists them.
pub const SHORT_OPTIONS: &[char] =
    &['4', '6', 'D', 'e', 'f', 'g', 'i', 'n', 'o', 'p', 'P', 'r', 's', 't', 'u', 'U', 'v', 'V'];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Ipv4,
    Ipv6,
    Debug,
    DumpConfig,
    DumpPlugin,
    ExitWithParent,
    Export,
    Filter,
    Foreground,
    Group,
    Help,
    IpAddr,
    Keepalive,
    Log,
    LongOptions,
    MaskHandshake,
    Metrics,
    Newstyle,
    NoMetaContexts,
    NoStructuredReplies,
    Oldstyle,
    Pidfile,
    Port,
    PrintUri,
    Readonly,
    Run,
    SelinuxLabel,
    ShortOptions,
    Single,
    Swap,
    Threads,
    Timeout,
    Tls,
    TlsCertificates,
    TlsPsk,
    TlsVerifyPeer,
    Unix,
    User,
    Verbose,
    Version,
    Vsock,
}

/// Long options: name, whether it takes a value, meaning. Every spelling nbdkit accepts (1.32 and
/// the later additions), so scripts written for any of them work. `--long-options` prints the
/// names in this order, except for the two listing options themselves.
const LONG_OPTIONS: &[(&str, bool, Opt)] = &[
    ("ipv4-only", false, Opt::Ipv4),
    ("ipv6-only", false, Opt::Ipv6),
    ("debug", true, Opt::Debug),
    ("dump-config", false, Opt::DumpConfig),
    ("dump-plugin", false, Opt::DumpPlugin),
    ("exit-with-parent", false, Opt::ExitWithParent),
    ("export", true, Opt::Export),
    ("export-name", true, Opt::Export),
    ("exportname", true, Opt::Export),
    ("filter", true, Opt::Filter),
    ("foreground", false, Opt::Foreground),
    ("no-fork", false, Opt::Foreground),
    ("group", true, Opt::Group),
    ("help", false, Opt::Help),
    ("ip-addr", true, Opt::IpAddr),
    ("ipaddr", true, Opt::IpAddr),
    ("keepalive", false, Opt::Keepalive),
    ("log", true, Opt::Log),
    ("long-options", false, Opt::LongOptions),
    ("mask-handshake", true, Opt::MaskHandshake),
    ("metrics", true, Opt::Metrics),
    ("new-style", false, Opt::Newstyle),
    ("newstyle", false, Opt::Newstyle),
    ("no-mc", false, Opt::NoMetaContexts),
    ("no-meta-contexts", false, Opt::NoMetaContexts),
    ("no-sr", false, Opt::NoStructuredReplies),
    ("no-structured-replies", false, Opt::NoStructuredReplies),
    ("old-style", false, Opt::Oldstyle),
    ("oldstyle", false, Opt::Oldstyle),
    ("pid-file", true, Opt::Pidfile),
    ("pidfile", true, Opt::Pidfile),
    ("port", true, Opt::Port),
    ("print-uri", false, Opt::PrintUri),
    ("read-only", false, Opt::Readonly),
    ("readonly", false, Opt::Readonly),
    ("run", true, Opt::Run),
    ("selinux-label", true, Opt::SelinuxLabel),
    ("short-options", false, Opt::ShortOptions),
    ("single", false, Opt::Single),
    ("stdin", false, Opt::Single),
    ("swap", false, Opt::Swap),
    ("threads", true, Opt::Threads),
    ("timeout", true, Opt::Timeout),
    ("tls", true, Opt::Tls),
    ("tls-certificates", true, Opt::TlsCertificates),
    ("tls-psk", true, Opt::TlsPsk),
    ("tls-verify-peer", false, Opt::TlsVerifyPeer),
    ("unix", true, Opt::Unix),
    ("user", true, Opt::User),
    ("verbose", false, Opt::Verbose),
    ("version", false, Opt::Version),
    ("vsock", false, Opt::Vsock),
];

/// The long option names `--long-options` lists (with their dashes).
pub fn long_option_names() -> impl Iterator<Item = String> {
    LONG_OPTIONS
        .iter()
        .filter(|(_, _, opt)| !matches!(opt, Opt::LongOptions | Opt::ShortOptions))
        .map(|(name, _, _)| format!("--{name}"))
}

fn short_option(c: char) -> Option<(bool, Opt)> {
    Some(match c {
        '4' => (false, Opt::Ipv4),
        '6' => (false, Opt::Ipv6),
        'D' => (true, Opt::Debug),
        'e' => (true, Opt::Export),
        'f' => (false, Opt::Foreground),
        'g' => (true, Opt::Group),
        'i' => (true, Opt::IpAddr),
        'n' => (false, Opt::Newstyle),
        'o' => (false, Opt::Oldstyle),
        'p' => (true, Opt::Port),
        'P' => (true, Opt::Pidfile),
        'r' => (false, Opt::Readonly),
        's' => (false, Opt::Single),
        't' => (true, Opt::Threads),
        'u' => (true, Opt::User),
        'U' => (true, Opt::Unix),
        'v' => (false, Opt::Verbose),
        'V' => (false, Opt::Version),
        _ => return None,
    })
}

/// Resolves a long option the way getopt_long does: an exact name, or a prefix that matches
/// only one option (several spellings of the same option count as one).
fn long_option(name: &str) -> Result<(&'static str, bool, Opt), UsageError> {
    if let Some(&(full, arg, opt)) = LONG_OPTIONS.iter().find(|(n, _, _)| *n == name) {
        return Ok((full, arg, opt));
    }
    let candidates: Vec<_> = LONG_OPTIONS.iter().filter(|(n, _, _)| n.starts_with(name)).collect();
    match candidates.as_slice() {
        [] => Err(UsageError(format!("unrecognized option '--{name}'"))),
        [first, rest @ ..] if rest.iter().all(|(_, a, o)| *o == first.2 && *a == first.1) => {
            Ok((first.0, first.1, first.2))
        }
        many => {
            let names: Vec<String> = many.iter().map(|(n, _, _)| format!("'--{n}'")).collect();
            Err(UsageError(format!("option '--{name}' is ambiguous; possibilities: {}", names.join(" "))))
        }
    }
}

fn os_to_string(what: &str, value: OsString) -> Result<String, UsageError> {
    value.into_string().map_err(|v| UsageError(format!("{what}: {}: not valid UTF-8", v.to_string_lossy())))
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Options, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::Arg;

    let mut parser = lexopt::Parser::from_args(args);
    // getopt takes `-p=1` as the value "=1", not as an error.
    parser.set_short_equals(false);
    let mut o = Options::default();
    let mut positionals: Vec<String> = Vec::new();

    loop {
        let arg = parser.next().map_err(lexopt_error)?;
        let (display, takes_value, opt) = match arg {
            None => break,
            Some(Arg::Value(v)) => {
                positionals.push(os_to_string("argument", v)?);
                continue;
            }
            Some(Arg::Short(c)) => match short_option(c) {
                Some((takes, opt)) => (format!("-{c}"), takes, opt),
                None => return Err(UsageError(format!("invalid option -- '{c}'"))),
            },
            Some(Arg::Long(name)) => {
                let (full, takes, opt) = long_option(name)?;
                (format!("--{full}"), takes, opt)
            }
        };
        let value = if takes_value {
            let v = parser.value().map_err(|_| UsageError(format!("option '{display}' requires an argument")))?;
            Some(v)
        } else {
            None
        };
        apply(&mut o, opt, &display, value)?;
    }

    let mut words = positionals.into_iter();
    o.plugin = words.next();
    o.params = words.collect();
    Ok(o)
}

fn lexopt_error(e: lexopt::Error) -> UsageError {
    match e {
        lexopt::Error::UnexpectedValue { option, .. } => {
            UsageError(format!("option '{option}' doesn't allow an argument"))
        }
        other => UsageError(other.to_string()),
    }
}

fn apply(o: &mut Options, opt: Opt, display: &str, value: Option<OsString>) -> Result<(), UsageError> {
    let text = |value: Option<OsString>| os_to_string(display, value.expect("option has a value"));
    let path = |value: Option<OsString>| PathBuf::from(value.expect("option has a value"));
    match opt {
        Opt::Ipv4 => o.family = Family::V4,
        Opt::Ipv6 => o.family = Family::V6,
        Opt::Debug => o.debug_flags.push(parse_debug_flag(&text(value)?)?),
        Opt::DumpConfig => o.dump_config = true,
        Opt::DumpPlugin => o.dump_plugin = true,
        Opt::ExitWithParent => o.exit_with_parent = true,
        Opt::Export => o.export_name = Some(text(value)?),
        Opt::Filter => o.filters.push(text(value)?),
        Opt::Foreground => o.foreground = true,
        Opt::Group => o.group = Some(text(value)?),
        Opt::Help => o.help = true,
        Opt::IpAddr => o.ipaddr = Some(text(value)?),
        Opt::Keepalive => o.keepalive = true,
        Opt::Log => {
            o.log = Some(match text(value)?.as_str() {
                "stderr" => LogDest::Stderr,
                "syslog" => LogDest::Syslog,
                "null" => LogDest::Null,
                other => return Err(UsageError(format!("--log={other}: must be \"stderr\", \"syslog\" or \"null\""))),
            })
        }
        Opt::LongOptions => o.long_options = true,
        Opt::MaskHandshake => {
            let v = text(value)?;
            let mask = parse_unsigned(&v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| UsageError(format!("--mask-handshake={v}: not a number (a bit mask such as 0 or 3)")))?;
            o.mask_handshake = Some(mask);
        }
        Opt::Metrics => o.metrics = Some(text(value)?),
        Opt::Newstyle => o.oldstyle = false,
        Opt::NoMetaContexts => o.no_meta_contexts = true,
        Opt::NoStructuredReplies => o.no_structured_replies = true,
        Opt::Oldstyle => o.oldstyle = true,
        Opt::Pidfile => o.pidfile = Some(path(value)),
        Opt::Port => o.port = Some(text(value)?),
        Opt::PrintUri => o.print_uri = true,
        Opt::Readonly => o.readonly = true,
        Opt::Run => o.run = Some(text(value)?),
        Opt::SelinuxLabel => o.selinux_label = Some(text(value)?),
        Opt::ShortOptions => o.short_options = true,
        Opt::Single => o.single = true,
        Opt::Swap => o.swap = true,
        Opt::Threads => {
            let v = text(value)?;
            let n =
                parse_unsigned(&v).and_then(|n| usize::try_from(n).ok()).filter(|&n| n <= 65536).ok_or_else(|| {
                    UsageError(format!("-t {v}: threads must be a number from 1 to 65536 (0 means the default, 16)"))
                })?;
            o.threads = Some(n);
        }
        Opt::Timeout => {
            let v = text(value)?;
            o.timeout = Some(parse_timeout(&v).ok_or_else(|| {
                UsageError(format!("--timeout={v}: not a duration (seconds, such as 10, 2.5 or 500ms)"))
            })?);
        }
        Opt::Tls => {
            let v = text(value)?;
            o.tls.mode = v
                .parse::<TlsMode>()
                .map_err(|_| UsageError(format!("--tls={v}: must be \"off\", \"on\" or \"require\"")))?;
            o.tls_given = true;
        }
        Opt::TlsCertificates => o.tls.certificates = Some(path(value)),
        Opt::TlsPsk => o.tls.psk_file = Some(path(value)),
        Opt::TlsVerifyPeer => o.tls.verify_peer = true,
        Opt::Unix => {
            let p = path(value);
            o.unix = Some(if p.as_os_str() == "-" { UnixSocket::Private } else { UnixSocket::Path(p) });
        }
        Opt::User => o.user = Some(text(value)?),
        Opt::Verbose => o.verbose = o.verbose.saturating_add(1),
        Opt::Version => o.version = true,
        Opt::Vsock => o.vsock = true,
    }
    Ok(())
}

/// An unsigned integer in C notation: decimal, `0x` hex or `0` octal (as strtoul with base 0).
pub fn parse_unsigned(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_signed(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix('-') {
        Some(rest) => parse_unsigned(rest).and_then(|n| i64::try_from(n).ok()).map(|n| -n),
        None => parse_unsigned(s.strip_prefix('+').unwrap_or(s)).and_then(|n| i64::try_from(n).ok()),
    }
}

/// `NAME.FLAG=N`. The name is everything before the first dot; the flag may contain dots.
fn parse_debug_flag(s: &str) -> Result<DebugFlag, UsageError> {
    let bad = || UsageError(format!("-D {s}: a debug flag must have the form NAME.FLAG=N (for example memory.dir=1)"));
    let (lhs, value) = s.split_once('=').ok_or_else(bad)?;
    let (name, flag) = lhs.split_once('.').ok_or_else(bad)?;
    let ident = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !ident(name) || name.contains('.') || !ident(flag) {
        return Err(bad());
    }
    let value = parse_signed(value)
        .filter(|v| i32::try_from(*v).is_ok())
        .ok_or_else(|| UsageError(format!("-D {s}: {value}: the value must be an integer")))?;
    Ok(DebugFlag { name: name.to_string(), flag: flag.to_string(), value })
}

/// Seconds as a whole or decimal number, optionally with an `s` or `ms` suffix.
fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let secs: f64 = number.parse().ok()?;
    let secs = secs * scale;
    (secs.is_finite() && secs <= 1e9).then(|| Duration::from_secs_f64(secs))
}

impl Options {
    /// Whether systemd handed us sockets (`LISTEN_PID` is ours and `LISTEN_FDS` is set).
    pub fn check_combinations(&self, socket_activation: bool) -> Result<(), UsageError> {
        let set = |b: bool, name: &'static str| b.then_some(name);
        if socket_activation {
            let clash = [
                set(self.ipaddr.is_some(), "-i"),
                set(self.port.is_some(), "-p"),
                set(self.run.is_some(), "--run"),
                set(self.single, "-s"),
                set(self.unix.is_some(), "-U"),
                set(self.vsock, "--vsock"),
            ];
            if let Some(flag) = clash.into_iter().flatten().next() {
                return Err(UsageError(format!("cannot use socket activation (LISTEN_FDS) with the {flag} flag")));
            }
        }
        if self.single {
            let clash = [
                set(self.port.is_some(), "-p"),
                set(self.unix.is_some(), "-U"),
                set(self.run.is_some(), "--run"),
                set(self.vsock, "--vsock"),
                set(self.print_uri, "--print-uri"),
            ];
            if let Some(flag) = clash.into_iter().flatten().next() {
                return Err(UsageError(format!("-s (serve stdin/stdout) cannot be used with {flag}")));
            }
        }
        if self.vsock && self.unix.is_some() {
            return Err(UsageError("--vsock and -U cannot be used together".into()));
        }
        if self.port.is_some() && self.unix.is_some() {
            return Err(UsageError("-p and -U cannot be used together: choose TCP or a Unix socket".into()));
        }
        if self.vsock && self.ipaddr.is_some() {
            return Err(UsageError("--vsock and -i cannot be used together".into()));
        }
        if self.oldstyle && self.tls.mode == TlsMode::Require {
            return Err(UsageError("cannot use the oldstyle protocol (-o) and require TLS".into()));
        }
        Ok(())
    }

    /// Whether the server stays in the foreground: `-f`, or anything that needs it to.
    pub fn stays_in_foreground(&self, socket_activation: bool) -> bool {
        self.foreground || self.run.is_some() || self.single || self.exit_with_parent || socket_activation
    }

    /// The handshake limit the server applies: `--timeout`, else 10 seconds (as qemu-nbd).
    pub fn handshake_timeout(&self) -> Option<Duration> {
        match self.timeout {
            None => Some(Duration::from_secs(10)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        }
    }
}

/// The synopsis `--help` prints and usage errors point to.
pub fn usage(prog: &str) -> String {
    let pad = " ".repeat(prog.len());
    format!(
        "\
{prog} [-4|--ipv4-only] [-6|--ipv6-only]
{pad} [-D|--debug PLUGIN|FILTER|nbdkit.FLAG=N]
{pad} [--exit-with-parent] [-e|--exportname EXPORTNAME]
{pad} [--filter=FILTER ...] [-f|--foreground]
{pad} [-g|--group GROUP] [-i|--ipaddr IPADDR] [--keepalive]
{pad} [--log=stderr|syslog|null] [--mask-handshake=MASK]
{pad} [--metrics=ADDR:PORT]
{pad} [-n|--newstyle] [--no-mc|--no-meta-contexts]
{pad} [--no-sr|--no-structured-replies] [-o|--oldstyle]
{pad} [-P|--pidfile PIDFILE] [-p|--port PORT] [--print-uri]
{pad} [-r|--readonly] [--run 'COMMAND ARGS ...']
{pad} [--selinux-label=LABEL] [-s|--single] [--swap]
{pad} [-t|--threads THREADS] [--timeout=SECS]
{pad} [--tls=off|on|require]
{pad} [--tls-certificates=/path/to/certificates]
{pad} [--tls-psk=/path/to/pskfile] [--tls-verify-peer]
{pad} [-U|--unix SOCKET|-] [-u|--user USER]
{pad} [-v|--verbose] [--vsock]
{pad} PLUGIN [[KEY=]VALUE [KEY=VALUE [...]]]

{prog} --dump-config
{prog} PLUGIN --dump-plugin
{prog} [--filter=FILTER ...] PLUGIN --help
{prog} [-V|--version]

Without -f, {prog} forks into the background once it is listening.
Read the nbdforge(1) manual (docs/nbdforge.md) for every option.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Options {
        parse(args.iter().copied()).unwrap()
    }

    fn err(args: &[&str]) -> String {
        parse(args.iter().copied()).unwrap_err().0
    }

    #[test]
    fn options_mix_with_parameters() {
        let o = p(&["memory", "1G", "-f", "--port", "1234", "-rv"]);
        assert_eq!(o.plugin.as_deref(), Some("memory"));
        assert_eq!(o.params, vec!["1G"]);
        assert!(o.foreground && o.readonly);
        assert_eq!(o.verbose, 1);
        assert_eq!(o.port.as_deref(), Some("1234"));
    }

    #[test]
    fn double_dash_ends_options() {
        let o = p(&["memory", "--", "-f"]);
        assert!(!o.foreground);
        assert_eq!(o.params, vec!["-f"]);
    }

    #[test]
    fn values_every_way() {
        assert_eq!(p(&["-p10809"]).port.as_deref(), Some("10809"));
        assert_eq!(p(&["-p", "10809"]).port.as_deref(), Some("10809"));
        assert_eq!(p(&["--port=10809"]).port.as_deref(), Some("10809"));
        assert_eq!(p(&["-fp", "1"]).port.as_deref(), Some("1"));
        assert_eq!(p(&["-U", "-"]).unix, Some(UnixSocket::Private));
        assert_eq!(p(&["--unix=/a b"]).unix, Some(UnixSocket::Path("/a b".into())));
        assert_eq!(p(&["-e", "-x"]).export_name.as_deref(), Some("-x"));
    }

    #[test]
    fn abbreviations() {
        assert!(p(&["--fore"]).foreground);
        assert!(p(&["--read"]).readonly);
        assert!(p(&["--vers"]).version);
        assert!(err(&["--no"]).contains("ambiguous"));
        assert!(err(&["--bogus"]).contains("unrecognized option '--bogus'"));
        assert!(err(&["-x"]).contains("invalid option -- 'x'"));
        assert!(err(&["--dump-config=1"]).contains("doesn't allow an argument"));
        assert!(err(&["--port"]).contains("requires an argument"));
    }

    #[test]
    fn values_checked() {
        assert!(err(&["--log=foo"]).contains("--log=foo"));
        assert!(err(&["-t", "abc"]).contains("-t abc"));
        assert_eq!(p(&["--tls=require"]).tls.mode, TlsMode::Require);
        assert_eq!(p(&["--tls=yes"]).tls.mode, TlsMode::On);
        assert_eq!(p(&["--tls=on", "--tls=off"]).tls.mode, TlsMode::Off);
        assert!(err(&["--tls=maybe"]).contains("--tls=maybe"));
        assert_eq!(p(&["--mask-handshake=0x3"]).mask_handshake, Some(3));
        assert_eq!(p(&["--timeout=2.5"]).timeout, Some(Duration::from_millis(2500)));
        assert_eq!(p(&["--timeout=500ms"]).timeout, Some(Duration::from_millis(500)));
        assert!(err(&["--timeout=x"]).contains("--timeout=x"));
        assert!(!p(&["-o", "-n"]).oldstyle);
        assert!(p(&["-n", "-o"]).oldstyle);
    }

    #[test]
    fn debug_flags() {
        let o = p(&["-D", "nbdkit.backend.datapath=0", "-D", "memory.dir=0x10"]);
        assert_eq!(o.debug_flags[0], DebugFlag { name: "nbdkit".into(), flag: "backend.datapath".into(), value: 0 });
        assert_eq!(o.debug_flags[1].value, 16);
        assert!(err(&["-D", "foo"]).contains("NAME.FLAG=N"));
        assert!(err(&["-D", "memory.foo=x"]).contains("integer"));
        assert!(err(&["-D", ".foo=1"]).contains("NAME.FLAG=N"));
    }

    #[test]
    fn combinations() {
        let c = |args: &[&str], act: bool| p(args).check_combinations(act);
        assert!(c(&["-s", "-p", "1"], false).is_err());
        assert!(c(&["-s", "-U", "/x"], false).is_err());
        assert!(c(&["-s", "--run", "true"], false).is_err());
        assert!(c(&["-s", "--vsock"], false).is_err());
        assert!(c(&["-p", "1", "-U", "/x"], false).is_err());
        assert!(c(&["--vsock", "-U", "/x"], false).is_err());
        assert!(c(&["-o", "--tls=require"], false).is_err());
        assert!(c(&["-p", "1"], true).unwrap_err().0.contains("-p"));
        assert!(c(&["-i", "::1"], true).is_err());
        assert!(c(&["-s", "-i", "::1"], false).is_ok());
        assert!(c(&["-p", "1", "--run", "x"], false).is_ok());
    }

    #[test]
    fn long_options_listing() {
        let names: Vec<String> = long_option_names().collect();
        assert!(names.contains(&"--print-uri".to_string()));
        assert!(!names.contains(&"--long-options".to_string()));
    }
}
