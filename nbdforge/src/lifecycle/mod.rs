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

mod activation;
mod captive;
mod daemon;
mod privileges;
mod sockets;
mod uri;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nbdforge_server::tls::TlsContext;
use nbdforge_server::{Server, ServerConfig, Stack, TlsMode};

use crate::logging;
use crate::options::{LogDest, Options};
use crate::probe::Identity;

/// Runs the server the options describe; returns the exit status.
pub fn run(id: &Identity, mut o: Options, stack: Stack) -> Result<u8, String> {
    let inherited = activation::take_listen_fds()?;
    o.check_combinations(inherited.is_some()).map_err(|e| e.0)?;
    let creds = privileges::Credentials::resolve(o.user.as_deref(), o.group.as_deref())?;

    let parent = nix::unistd::getppid();
    if o.exit_with_parent {
        exit_with_parent(parent)?;
    }

    let foreground = o.stays_in_foreground(inherited.is_some());
    // --log applies from the start, as in nbdkit. Without it, start-up errors go to stderr in
    // every mode and a background server switches to syslog once it is ready. Debug messages
    // (-v) always go to stderr.
    logging::init(&id.prog, o.log.unwrap_or(LogDest::Stderr), o.verbose);
    let ready = if foreground { None } else { Some(daemon::fork_into_background(&id.prog)?) };
    let final_log = o.log.unwrap_or(if foreground { LogDest::Stderr } else { LogDest::Syslog });

    if o.swap {
        lock_memory()?;
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

    let target = match (o.single, inherited) {
        (true, _) => Target::One(stdin_stdout()?),
        (false, Some(fds)) => inherited_target(fds)?,
        (false, None) => Target::Listen(sockets::bind_from_options(&o)?),
    };
    let bound = match target {
        Target::One((read, write)) => {
            return serve_single(&o, &creds, parent, backend, config, final_log, read, write)
        }
        Target::Listen(bound) => bound,
    };
    if let Some(private) = &bound.private_dir {
        creds.chown(&private.dir)?;
        creds.chown(&private.socket)?;
    }
    if let Some(pidfile) = &o.pidfile {
        write_pidfile(pidfile)?;
    }
    creds.drop_privileges()?;
    if o.exit_with_parent && !creds.is_empty() {
        // Changing credentials clears the parent-death signal.
        exit_with_parent(parent)?;
    }

    let export = o.export_name.clone().unwrap_or_default();
    let uri = uri::uri(&bound.endpoint, &export, &o.tls);
    let server = Server::new(backend, config);
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
        ready.notify(o.verbose > 0 || o.log == Some(LogDest::Stderr))?;
    }
    logging::set_destination(final_log);

    let captive = match &o.run {
        Some(cmd) => {
            let env = captive::environment(&bound.endpoint, uri.as_deref(), &export, &o.tls);
            Some(captive::Captive::start(cmd, &env, server.shutdown_handle())?)
        }
        None => None,
    };

    let sockets::Bound { listeners, private_dir, socket_file, .. } = bound;
    let served = server.serve(listeners);
    let status = match captive {
        Some(c) => c.finish(&id.prog),
        None => 0,
    };
    drop(socket_file);
    drop(private_dir);
    served.map_err(|e| format!("server: {e}"))?;
    Ok(status)
}

/// Where clients come from: listening sockets, or one connection (`-s`, or systemd's
/// `Accept=yes`) given as the descriptors to read and write.
enum Target {
    Listen(sockets::Bound),
    One((OwnedFd, OwnedFd)),
}

/// The sockets systemd passed: listening ones (`Accept=no`), or one accepted connection
/// (`Accept=yes`).
fn inherited_target(fds: Vec<OwnedFd>) -> Result<Target, String> {
    let mut listeners = Vec::new();
    let mut connections = Vec::new();
    for fd in fds {
        match activation::classify(fd)? {
            activation::Inherited::Listener(l) => listeners.push(l),
            activation::Inherited::Connection(c) => connections.push(c),
        }
    }
    match (listeners.is_empty(), connections.pop()) {
        (true, Some(conn)) if connections.is_empty() => {
            let other = dup_owned(conn.as_raw_fd())?;
            Ok(Target::One((conn, other)))
        }
        (false, None) => Ok(Target::Listen(sockets::Bound {
            listeners,
            endpoint: sockets::Endpoint::Activated,
            private_dir: None,
            socket_file: None,
        })),
        _ => Err("socket activation: expected listening sockets (Accept=no) or one connection (Accept=yes), got a mixture".into()),
    }
}

/// Options the command line accepts but the server cannot act on yet: each needs a setting in
/// `ServerConfig` first. Refusing them is better than pretending, since users reach for them to
/// test clients.
/// `--exit-with-parent`: SIGTERM (a clean shutdown) when the process that started us exits.
fn exit_with_parent(parent: nix::unistd::Pid) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("--exit-with-parent: prctl: {e}"))?;
    // The parent may have gone before the signal was armed.
    if nix::unistd::getppid() != parent {
        return Err("--exit-with-parent: the parent process has already exited".into());
    }
    Ok(())
}

/// `--swap`: keep every page in RAM, so that serving a swap device never waits on swap.
fn lock_memory() -> Result<(), String> {
    // SAFETY: mlockall only changes how the kernel pages this process; it has no memory-safety
    // preconditions.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if r != 0 {
        return Err(format!("--swap: mlockall: {} (raise ulimit -l or run as root)", std::io::Error::last_os_error()));
    }
    Ok(())
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

/// Configures every layer and finishes the stack (config_complete, get_ready).
fn configure_stack(mut stack: Stack, o: &Options) -> Result<Arc<dyn nbdforge_api::Backend>, String> {
    apply_debug_flags(o, &mut stack);
    let magic = stack.magic_config_key().map(str::to_string);
    for (key, value) in split_params(magic.as_deref(), &o.params)? {
        tracing::debug!("config {key}={value}");
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

/// Writes our pid, replacing the file atomically so a reader never sees it empty.
fn write_pidfile(path: &Path) -> Result<(), String> {
    let text = format!("{}\n", std::process::id());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let renamed = std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
        std::fs::write(path, &text).map_err(|e| format!("-P {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A descriptor of our own for `fd` (close-on-exec, so nothing we start inherits it).
fn dup_owned(fd: i32) -> Result<OwnedFd, String> {
    use std::os::fd::FromRawFd;
    let copy = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    // SAFETY: `copy` was just returned by fcntl(F_DUPFD_CLOEXEC) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `-s`: the NBD stream keeps duplicates of descriptors 0 and 1, and 0 and 1 themselves are
/// pointed at /dev/null and stderr, so that a stray print can never corrupt the protocol.
fn stdin_stdout() -> Result<(OwnedFd, OwnedFd), String> {
    use nix::unistd::dup2;
    let read = dup_owned(0).map_err(|e| format!("-s: {e}"))?;
    let write = dup_owned(1).map_err(|e| format!("-s: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    dup2(null.as_raw_fd(), 0).map_err(|e| format!("dup2: {e}"))?;
    dup2(2, 1).map_err(|e| format!("dup2: {e}"))?;
    Ok((read, write))
}

/// Serves one connection (`-s`, or a connection systemd accepted) until the client leaves.
#[allow(clippy::too_many_arguments)]
fn serve_single(
    o: &Options,
    creds: &privileges::Credentials,
    parent: nix::unistd::Pid,
    backend: Arc<dyn nbdforge_api::Backend>,
    config: ServerConfig,
    final_log: LogDest,
    read: OwnedFd,
    write: OwnedFd,
) -> Result<u8, String> {
    if let Some(pidfile) = &o.pidfile {
        write_pidfile(pidfile)?;
    }
    creds.drop_privileges()?;
    if o.exit_with_parent && !creds.is_empty() {
        exit_with_parent(parent)?;
    }
    logging::set_destination(final_log);
    let server = Server::new(backend, config);
    server.stop_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;
    server.serve_one(read, write).map_err(|e| format!("server: {e}"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
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
}
