//! The life of a server process, in the order nbdkit(1) documents it:
//!
//! 1. checks that need nothing but the command line (`-s` with `-p`, socket activation with `-U`,
//!    unknown users), so mistakes fail before anything happens;
//! 2. going into the background unless something keeps us in the foreground (see `daemon`);
//! 3. configuring the stack (`config`, `config_complete`, `get_ready`) and loading TLS
//!    credentials; errors name the parameter and exit 1 before anything listens;
//! 4. binding (or taking systemd's sockets), writing the pid file, dropping privileges;
//! 5. building the server, catching signals, printing the URI, and telling the parent we are
//!    ready; then running `--run`'s command, and serving until a signal, the command's exit, or
//!    (with `-s`) the client's departure.
//!
//! The machinery is the `nbdforge-process` library's, shared with `nbdforge-img`; this file decides
//! from nbdkit's options what to ask of it, and words its errors with nbdkit's option names
//! ([`nbdkit_says`]). Configuring the stack from the plugin parameters and `-D` flags, and nbdkit's
//! TLS defaults, are nbdkit's too and stay here.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nbdforge_process::sockets::{self, ListenOn};
use nbdforge_process::{
    activation, captive, daemon, logging, memory, parent, pidfile, privileges, stdio, uri, Error, LogDest, Setting,
    Target,
};
use nbdforge_server::tls::TlsContext;
use nbdforge_server::{Server, ServerConfig, Stack, TlsMode};

use crate::options::{Options, UnixSocket};
use crate::probe::Identity;

/// Runs the server the options describe; returns the exit status.
pub fn run(id: &Identity, mut o: Options, stack: Stack) -> Result<u8, String> {
    let inherited = activation::take_listen_fds().map_err(nbdkit_says)?;
    o.check_combinations(inherited.is_some()).map_err(|e| e.0)?;
    let creds = privileges::Credentials::resolve(o.user.as_deref(), o.group.as_deref()).map_err(nbdkit_says)?;

    let parent = nix::unistd::getppid();
    if o.exit_with_parent {
        parent::exit_with_parent(parent).map_err(nbdkit_says)?;
    }

    let foreground = o.stays_in_foreground(inherited.is_some());
    // --log applies from the start, as in nbdkit. Without it, start-up errors go to stderr in
    // every mode and a background server switches to syslog once it is ready. Debug messages
    // (-v) always go to stderr.
    logging::init(&id.prog, o.log.unwrap_or(LogDest::Stderr), o.verbose);
    let ready = if foreground { None } else { Some(daemon::fork_into_background(&id.prog).map_err(nbdkit_says)?) };
    let final_log = o.log.unwrap_or(if foreground { LogDest::Stderr } else { LogDest::Syslog });

    if o.swap {
        memory::lock_memory().map_err(nbdkit_says)?;
    }

    let backend = configure_stack(stack, &o)?;
    backend.after_fork().map_err(|e| e.message)?;
    let tls = load_tls(&mut o)?;

    // `..default()` keeps this compiling as the server gains settings.
    #[allow(clippy::needless_update)]
    let config = ServerConfig {
        readonly: o.readonly,
        threads: o.threads.filter(|&t| t > 0).unwrap_or(16),
        oldstyle: o.oldstyle,
        handshake_timeout: o.handshake_timeout(),
        tls_mode: o.tls.mode,
        tls,
        structured_replies: !o.no_structured_replies,
        meta_contexts: !o.no_meta_contexts,
        // Only the low 16 bits are handshake flags; the rest of the mask means nothing.
        mask_handshake: o.mask_handshake.map_or(u16::MAX, |m| m as u16),
        keepalive: o.keepalive,
        ..ServerConfig::default()
    };

    // Bound with the NBD sockets' privileges, and before them, so a mistake stops the server
    // before it listens.
    let metrics = match &o.metrics {
        Some(spec) => Some(nbdforge_server::metrics::bind(spec).map_err(|e| format!("--metrics={spec}: {e}"))?),
        None => None,
    };

    let target = match (o.single, inherited) {
        (true, _) => {
            let (read, write) = stdio::stdin_stdout().map_err(nbdkit_says)?;
            Target::One(read, write)
        }
        (false, Some(fds)) => activation::target(fds).map_err(nbdkit_says)?,
        (false, None) => {
            Target::Listen(sockets::bind(&listen_on(&o), o.selinux_label.as_deref()).map_err(nbdkit_says)?)
        }
    };
    let bound = match target {
        Target::One(read, write) => {
            let server = Server::new(backend, config);
            start_metrics(&server, metrics)?;
            return serve_single(&o, &creds, parent, server, final_log, read, write);
        }
        Target::Listen(bound) => bound,
    };
    if let Some(private) = &bound.private_dir {
        creds.chown(&private.dir).map_err(nbdkit_says)?;
        creds.chown(&private.socket).map_err(nbdkit_says)?;
    }
    if let Some(pidfile) = &o.pidfile {
        pidfile::write_pidfile(pidfile).map_err(nbdkit_says)?;
    }
    creds.drop_privileges().map_err(nbdkit_says)?;
    if o.exit_with_parent && !creds.is_empty() {
        // Changing credentials clears the parent-death signal.
        parent::exit_with_parent(parent).map_err(nbdkit_says)?;
    }

    let export = o.export_name.clone().unwrap_or_default();
    let uri = uri::uri(&bound.endpoint, &export, &o.tls);
    let server = Server::new(backend, config);
    start_metrics(&server, metrics)?;
    server.stop_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;

    if o.print_uri {
        if let Some(u) = &uri {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{u}");
            let _ = out.flush();
        }
    }
    if let Some(u) = &uri {
        tracing::debug!("listening on {u}");
    }
    if let Some(ready) = ready {
        // Debug messages (-v) stay on stderr, so keep it when asked to be verbose or to log there.
        ready.notify(o.verbose > 0 || o.log == Some(LogDest::Stderr)).map_err(nbdkit_says)?;
    }
    logging::set_destination(final_log);

    let captive = match &o.run {
        Some(cmd) => {
            let env = captive::environment(&bound.endpoint, uri.as_deref(), &export, &o.tls);
            Some(captive::Captive::start(cmd, &env, server.shutdown_handle()).map_err(nbdkit_says)?)
        }
        None => None,
    };

    let sockets::Bound { listeners, private_dir, socket_file, .. } = bound;
    let served = server.serve(listeners);
    let status = match captive {
        Some(c) => c.finish(&format!("{}: --run", id.prog)),
        None => 0,
    };
    drop(socket_file);
    drop(private_dir);
    served.map_err(|e| format!("server: {e}"))?;
    Ok(status)
}

/// What to listen on, nbdkit's way: `--vsock`; `-U PATH` or `-U -`; a private Unix socket for
/// `--run` without `-p` or `-U`; otherwise TCP (`-i`, `-p`, `-4`, `-6`).
fn listen_on(o: &Options) -> ListenOn {
    if o.vsock {
        return ListenOn::Vsock { port: o.port.clone() };
    }
    match (&o.unix, o.run.is_some() && o.port.is_none()) {
        (Some(UnixSocket::Path(path)), _) => ListenOn::Unix(path.clone()),
        (Some(UnixSocket::Private), _) | (None, true) => ListenOn::PrivateUnix,
        (None, false) => ListenOn::Tcp { host: o.ipaddr.clone(), port: o.port.clone(), family: o.family },
    }
}

/// An error of the process library in nbdkit's words, naming the option the setting comes from:
/// `-u alice: not a valid user name or uid`, `--selinux-label=LABEL: ...`.
fn nbdkit_says(e: Error) -> String {
    e.describe(|setting, value| {
        let option = match setting {
            Setting::Port => "-p",
            Setting::Address => "-i",
            Setting::UnixSocket => "-U",
            Setting::PrivateUnixSocket => "-U -",
            Setting::Vsock => "--vsock",
            Setting::SelinuxLabel => "--selinux-label",
            Setting::User => "-u",
            Setting::Group => "-g",
            Setting::PidFile => "-P",
            Setting::ExitWithParent => "--exit-with-parent",
            Setting::Run => "--run",
            Setting::LockMemory => "--swap",
            Setting::Stdio => "-s",
        };
        match (setting, value) {
            (Setting::SelinuxLabel, Some(value)) => format!("{option}={value}"),
            (_, Some(value)) => format!("{option} {value}"),
            (_, None) => option.to_string(),
        }
    })
}

/// `-D NAME.FLAG=N`. Plugins cannot declare debug flags yet, so flags for layers in the stack
/// are only recorded in the debug log; the server's own nbdkit.* flags are known by name.
/// `-D NAME.FLAG=N`: server flags (`nbdkit.*`) are accepted as nbdkit's are; a flag for a
/// plugin or filter that is not loaded is ignored, and one the layer does not have is warned about.
fn apply_debug_flags(o: &Options, stack: &mut Stack) {
    const SERVER_FLAGS: &[&str] = &["backend.controlpath", "backend.datapath", "tls.log", "tls.session"];
    for f in &o.debug_flags {
        if f.name == "nbdkit" || f.name == "nbdforge" {
            if !SERVER_FLAGS.contains(&f.flag.as_str()) {
                tracing::warn!("-D {}.{}: the server has no debug flag called {}", f.name, f.flag, f.flag);
            }
            continue;
        }
        let Ok(value) = i32::try_from(f.value) else {
            tracing::warn!("-D {}.{}={}: the value does not fit a debug flag (an int)", f.name, f.flag, f.value);
            continue;
        };
        match stack.debug_flag(&f.name, &f.flag, value) {
            Ok(true) => tracing::debug!("debug flag {}.{}={}", f.name, f.flag, f.value),
            Ok(false) => tracing::debug!("-D {}.{}: {} is not loaded; ignored", f.name, f.flag, f.name),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// The key of each plugin parameter, nbdkit's way: `key=value` when the part before `=` is a
/// valid key; otherwise the whole word is the value of the plugin's magic key, or, for a plugin
/// with none, the first such word is `script=` (so shebang scripts work:
/// `#!/usr/bin/env -S nbdforge sh`).
pub fn split_params<'a>(magic: Option<&'a str>, params: &'a [String]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out = Vec::with_capacity(params.len());
    for (i, word) in params.iter().enumerate() {
        match word.split_once('=') {
            Some((key, value)) if is_config_key(key) => out.push((key, value)),
            _ => match magic {
                Some(key) => out.push((key, word.as_str())),
                None if i == 0 => out.push(("script", word.as_str())),
                None => {
                    return Err(format!("expecting key=value on the command line but got: {word}"));
                }
            },
        }
    }
    Ok(out)
}

/// A parameter key: a letter, then letters, digits, `_`, `-` and `.`.
fn is_config_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// A parameter's value as `-v` logs it: secrets are hidden. Values of keys that name one
/// (passwords, cookies, headers that carry tokens, keys and secrets of remote plugins) are not
/// shown at all, and a URL keeps its user but not its password (`http://bob:***@host/`).
fn logged_value<'a>(key: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
    let key = key.to_ascii_lowercase();
    if ["password", "cookie", "header", "secret", "token", "credential", "psk"].iter().any(|s| key.contains(s)) {
        return "<hidden>".into();
    }
    if let Some((scheme, rest)) = value.split_once("://") {
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                let after = &rest[authority.len()..];
                return format!("{scheme}://{user}:***@{host}{after}").into();
            }
        }
    }
    value.into()
}

/// Configures every layer and finishes the stack (config_complete, get_ready).
fn configure_stack(mut stack: Stack, o: &Options) -> Result<Arc<dyn nbdforge_api::Backend>, String> {
    apply_debug_flags(o, &mut stack);
    let magic = stack.magic_config_key().map(str::to_string);
    for (key, value) in split_params(magic.as_deref(), &o.params)? {
        tracing::debug!("config {key}={}", logged_value(key, value));
        stack.config(key, value).map_err(|e| e.message)?;
    }
    stack.finish().map_err(|e| e.message)
}

/// TLS credentials. `--tls=on` without usable credentials serves without TLS, with a warning, as
/// nbdkit does; `--tls=require` without them is an error.
fn load_tls(o: &mut Options) -> Result<Option<Arc<TlsContext>>, String> {
    if !o.tls_given {
        // nbdkit's default: TLS is offered (not required) when credentials load, from
        // --tls-certificates, --tls-psk or the default directories, and off otherwise.
        o.tls.mode = TlsMode::On;
    }
    if o.tls.mode == TlsMode::Off {
        return Ok(None);
    }
    match TlsContext::new(&o.tls) {
        Ok(mut ctx) => {
            tracing::debug!("TLS: {}", ctx.description());
            // --timeout bounds the whole handshake, TLS included.
            ctx.set_handshake_timeout(o.handshake_timeout());
            Ok(Some(Arc::new(ctx)))
        }
        Err(e) if !o.tls_given => {
            tracing::debug!("TLS is off: no credentials could be loaded: {e}");
            o.tls.mode = TlsMode::Off;
            Ok(None)
        }
        Err(e) if o.tls.mode == TlsMode::On => {
            tracing::warn!("--tls=on but the TLS credentials could not be loaded: {e}; TLS is disabled and clients asking for it will be refused");
            o.tls.mode = TlsMode::Off;
            Ok(None)
        }
        Err(e) => Err(format!("--tls=require: {e}")),
    }
}

/// Starts the `--metrics` endpoint, if asked for, on the socket bound for it.
fn start_metrics(server: &Server, listener: Option<std::net::TcpListener>) -> Result<(), String> {
    let Some(listener) = listener else { return Ok(()) };
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!("metrics on http://{addr}/metrics");
    }
    server.serve_metrics(listener).map_err(|e| format!("--metrics: {e}"))
}

/// Serves one connection (`-s`, or a connection systemd accepted) until the client leaves.
#[allow(clippy::too_many_arguments)]
fn serve_single(
    o: &Options,
    creds: &privileges::Credentials,
    parent: nix::unistd::Pid,
    server: Server,
    final_log: LogDest,
    read: OwnedFd,
    write: OwnedFd,
) -> Result<u8, String> {
    if let Some(pidfile) = &o.pidfile {
        pidfile::write_pidfile(pidfile).map_err(nbdkit_says)?;
    }
    creds.drop_privileges().map_err(nbdkit_says)?;
    if o.exit_with_parent && !creds.is_empty() {
        parent::exit_with_parent(parent).map_err(nbdkit_says)?;
    }
    logging::set_destination(final_log);
    server.stop_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;
    server.serve_one(read, write).map_err(|e| format!("server: {e}"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn secrets_are_not_logged() {
        assert_eq!(logged_value("password", "s3cret"), "<hidden>");
        assert_eq!(logged_value("proxy-password", "+/f"), "<hidden>");
        assert_eq!(logged_value("cookie", "a=b"), "<hidden>");
        assert_eq!(logged_value("header-script", "echo x"), "<hidden>");
        assert_eq!(logged_value("url", "http://bob:pw@h:80/a?b=c"), "http://bob:***@h:80/a?b=c");
        assert_eq!(logged_value("url", "http://bob@h/a@b"), "http://bob@h/a@b");
        assert_eq!(logged_value("size", "1G"), "1G");
    }
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn magic_parameters() {
        let p = strings(&["1G", "allocator=sparse", "./a=b", "=x"]);
        assert_eq!(
            split_params(Some("size"), &p).unwrap(),
            vec![("size", "1G"), ("allocator", "sparse"), ("size", "./a=b"), ("size", "=x")]
        );
        let p = strings(&["/path/script.sh", "k=v"]);
        assert_eq!(split_params(None, &p).unwrap(), vec![("script", "/path/script.sh"), ("k", "v")]);
        let p = strings(&["k=v", "bare"]);
        assert!(split_params(None, &p).unwrap_err().contains("got: bare"));
        assert!(is_config_key("tls-psk.file_2"));
        assert!(!is_config_key("2x"));
        assert!(!is_config_key(""));
    }

    #[test]
    fn library_errors_name_nbdkits_options() {
        let e = privileges::Credentials::resolve(Some("no-such-user-xyz"), None).unwrap_err();
        assert_eq!(nbdkit_says(e), "-u no-such-user-xyz: not a valid user name or uid");
        let e = sockets::parse_port(" 65536").unwrap_err();
        assert_eq!(nbdkit_says(e), "-p 65536: not a port number (0 to 65535) or a service name from /etc/services");
        let e = sockets::bind(&ListenOn::Vsock { port: Some("x ".into()) }, None).unwrap_err();
        assert_eq!(nbdkit_says(e), "-p x : not an AF_VSOCK port (0 to 4294967295)");
        let e = pidfile::write_pidfile("/no/such/dir/x.pid".as_ref()).unwrap_err();
        assert_eq!(nbdkit_says(e), "-P /no/such/dir/x.pid: No such file or directory (os error 2)");
        let e = sockets::bind(&ListenOn::Unix("/no/such/dir/sock".into()), None).unwrap_err();
        assert!(nbdkit_says(e).starts_with("-U: "));
        let label = Error { setting: Some(Setting::SelinuxLabel), value: Some("L".into()), message: "why".into() };
        assert_eq!(nbdkit_says(label), "--selinux-label=L: why");
    }

    #[test]
    fn run_without_a_port_or_socket_listens_on_a_private_socket() {
        let o = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            listen_on(&o)
        };
        let tcp = ListenOn::Tcp { host: None, port: None, family: Default::default() };
        assert_eq!(o(|_| {}), tcp);
        assert_eq!(o(|o| o.run = Some("true".into())), ListenOn::PrivateUnix);
        let with_port = o(|o| {
            o.run = Some("true".into());
            o.port = Some("0".into());
        });
        assert_eq!(with_port, ListenOn::Tcp { host: None, port: Some("0".into()), family: Default::default() });
        assert_eq!(o(|o| o.unix = Some(UnixSocket::Path("/s".into()))), ListenOn::Unix("/s".into()));
        assert_eq!(o(|o| o.vsock = true), ListenOn::Vsock { port: None });
    }
}
