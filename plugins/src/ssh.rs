//! The `ssh` plugin: a disk image on another machine, read and written over SFTP, as nbdkit's
//! ssh plugin does. Each connection opens its own SSH session and SFTP channel (libssh2 through
//! the `ssh2` crate), so the thread model is one request at a time per connection. The host key
//! is checked against known hosts files, authentication tries none, public keys (the agent, then
//! `identity=` and the default key files) and the password; flush is `fsync@openssh.com` where
//! the server has it. A remote failure fails the request with `EIO` and a message naming the
//! remote file; the connection's session is not reopened (stack `--filter=retry` for that).

mod known_hosts;
mod ssh_config;

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nbdforge_api::{
    debug, parse_bool, parse_int, parse_size, read_password, unknown_parameter, Capabilities, Error, Flags, Handle,
    Layer, LayerInfo, OpenArgs, Plugin, Registration, Result, Support, ThreadModel,
};
use ssh2::{CheckResult, ErrorCode, KnownHostFileKind, MethodType, OpenFlags, OpenType, Session, Sftp, TraceFlags};

use ssh_config::{Expansions, HostConfig};

/// The `ssh` plugin's parameters, and where they lead once the configuration files are read.
#[derive(Default)]
pub struct SshPlugin {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    identities: Vec<String>,
    known_hosts: Vec<String>,
    verify_remote_host: Option<bool>,
    path: Option<String>,
    create: bool,
    create_size: Option<u64>,
    create_mode: Option<i32>,
    compression: Option<bool>,
    /// `None`: the default files; `Some("")`: none.
    config: Option<String>,
    timeout: Option<u32>,
    log_level: i32,
    remote: Option<Remote>,
    /// Whether `create=true` has made the file yet: only the first connection makes it.
    created: Mutex<bool>,
}

/// Where to connect and how, resolved in `config_complete`.
#[derive(Debug)]
struct Remote {
    address: String,
    port: u16,
    user: String,
    /// `sftp://user@host:port/path`, for messages (never the password).
    name: String,
    identities: Vec<PathBuf>,
    known_hosts: Vec<PathBuf>,
    compression: bool,
    timeout: Option<Duration>,
}

impl Remote {
    /// A remote failure: `EIO`, and a message naming the remote file and what failed.
    fn error(&self, what: &str, e: &dyn std::fmt::Display) -> Error {
        Error::io(format!("ssh: {}: {what}: {e}", self.name))
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ssh", "access disk images over the SSH protocol (SFTP)")
        .help(
            "host=<HOST>                     (required) SSH server.\n\
             [path=]<PATH>                   (required) The remote file, relative to the home directory.\n\
             port=<PORT>                     SSH port (default 22).\n\
             user=<USER>                     Remote user (default the local one).\n\
             password=<PASSWORD>|-|-FD|+FILE The password.\n\
             identity=<FILENAME>             A private key to try first (repeatable).\n\
             known-hosts=<FILENAME>          Known hosts file (repeatable).\n\
             verify-remote-host=false        Do not check the host key (dangerous).\n\
             config=<FILENAME>               ssh_config file instead of ~/.ssh/config and /etc/ssh/ssh_config.\n\
             compression=true                Compress the SSH stream.\n\
             create=true                     Create (replace) the remote file on the first connection.\n\
             create-size=<SIZE>              Size of the created file.\n\
             create-mode=<MODE>              Permissions of the created file (default 0600).\n\
             timeout=<SECS>                  Timeout of the connection and of each remote operation.",
        )
        .magic("path");
    Registration::plugin(info, SshPlugin::default)
}

impl Layer for SshPlugin {
    /// `-D ssh.log=1..4`: libssh2's trace, more of it at each level (printed only when libssh2
    /// was built with tracing).
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        match flag {
            "log" => self.log_level = value,
            _ => return false,
        }
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let bad = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
        match key {
            "host" => self.host = Some(value.to_string()),
            "port" => self.port = Some(value.to_string()),
            "user" => self.user = Some(value.to_string()),
            "password" => self.password = Some(read_password(key, value)?),
            "identity" => self.identities.push(value.to_string()),
            "known-hosts" => self.known_hosts.push(value.to_string()),
            "verify-remote-host" => self.verify_remote_host = Some(parse_bool(key, value)?),
            "path" => self.path = Some(value.to_string()),
            "create" => self.create = parse_bool(key, value)?,
            "create-size" => self.create_size = Some(parse_size(key, value)?),
            "create-mode" => {
                let mode = parse_int::<i32>(key, value)?;
                if !(0..=0o7777).contains(&mode) {
                    return Err(bad("not a file mode (0 to 07777)"));
                }
                self.create_mode = Some(mode);
            }
            "compression" => self.compression = Some(parse_bool(key, value)?),
            "config" => self.config = Some(value.to_string()),
            "timeout" => self.timeout = Some(parse_int::<u32>(key, value)?),
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let (Some(host), Some(path)) = (&self.host, &self.path) else {
            return Err(Error::invalid("host=<HOST> and path=<PATH> are required"));
        };
        if self.create && self.create_size.is_none() {
            return Err(Error::invalid("create=true requires create-size=<SIZE>"));
        }
        let mut file = HostConfig::default();
        let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
        let local_user = local_user();
        let local_host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        // Paths in the configuration files themselves are expanded for the host as given.
        let user_given = self.user.as_deref().unwrap_or(&local_user);
        let early = Expansions {
            home: &home,
            local_user: &local_user,
            local_host: &local_host,
            host,
            user: user_given,
            port: 22,
        };
        let expand = |key: &str, path: &str, e: &Expansions| -> Result<PathBuf> {
            let expanded = e.expand(path).map_err(|why| Error::invalid(format!("{key}={path}: {why}")))?;
            if !expanded.starts_with('/') {
                return Err(Error::invalid(format!("{key}={path}: must expand to an absolute path")));
            }
            Ok(PathBuf::from(expanded))
        };
        match self.config.as_deref() {
            None => {
                file.read_file(&expand("config", "%d/config", &early)?, host);
                file.read_file(Path::new("/etc/ssh/ssh_config"), host);
            }
            Some("") => {}
            Some(c) => {
                let path = expand("config", c, &early)?;
                if !path.is_file() {
                    return Err(Error::invalid(format!("config={c}: cannot read {}", path.display())));
                }
                file.read_file(&path, host);
            }
        }
        let address = match &file.hostname {
            Some(h) => early.expand(h).map_err(|why| Error::invalid(format!("config: HostName {h}: {why}")))?,
            None => host.clone(),
        };
        let port = match self.port.as_deref().or(file.port.as_deref()) {
            None | Some("ssh") => 22,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| Error::invalid(format!("port={p}: not a port number (or 'ssh')")))?,
        };
        let user = self.user.clone().or(file.user.clone()).unwrap_or_else(|| local_user.clone());
        let e = Expansions { host: &address, user: &user, port, ..early };
        let mut identities = Vec::new();
        for i in &self.identities {
            identities.push(expand("identity", i, &e)?);
        }
        for i in
            file.identities.iter().map(String::as_str).chain(["%d/id_ed25519", "%d/id_ecdsa", "%d/id_rsa", "%d/id_dsa"])
        {
            identities.push(expand("IdentityFile", i, &e)?);
        }
        let mut known_hosts = Vec::new();
        for k in &self.known_hosts {
            known_hosts.push(expand("known-hosts", k, &e)?);
        }
        if self.known_hosts.is_empty() {
            let user_files = if file.user_known_hosts.is_empty() {
                vec!["%d/known_hosts".into()]
            } else {
                file.user_known_hosts.clone()
            };
            for k in &user_files {
                known_hosts.push(expand("UserKnownHostsFile", k, &e)?);
            }
        }
        let global_files = if file.global_known_hosts.is_empty() {
            vec!["/etc/ssh/ssh_known_hosts".into()]
        } else {
            file.global_known_hosts.clone()
        };
        for k in &global_files {
            known_hosts.push(expand("GlobalKnownHostsFile", k, &e)?);
        }
        let timeout = match (self.timeout, &file.connect_timeout) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(
                t.parse::<u32>()
                    .map_err(|_| Error::invalid(format!("config: ConnectTimeout {t}: not a number of seconds")))?,
            ),
            (None, None) => None,
        };
        let shown_path = if path.starts_with('/') { path.clone() } else { format!("~/{path}") };
        self.remote = Some(Remote {
            name: format!(
                "sftp://{user}@{address}:{port}{}{shown_path}",
                if shown_path.starts_with('/') { "" } else { "/" }
            ),
            address,
            port,
            user,
            identities,
            known_hosts,
            compression: self.compression.or(file.compression).unwrap_or(false),
            timeout: timeout.filter(|&t| t > 0).map(|t| Duration::from_secs(t.into())),
        });
        debug!("remote {:?}", self.remote);
        Ok(())
    }
}

impl Plugin for SshPlugin {
    /// libssh2 sessions are not shared between threads: one request at a time per connection.
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeRequests
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let remote = self.remote.as_ref().ok_or_else(|| Error::invalid("ssh: not configured"))?;
        let path = self.path.as_deref().unwrap_or_default();
        let fail = |what: &str, e: &dyn std::fmt::Display| remote.error(what, e);
        let session = self.connect(remote)?;
        let sftp = session.sftp().map_err(|e| fail("cannot start SFTP", &Described(&e)))?;
        let mut flags = if args.readonly { OpenFlags::READ } else { OpenFlags::READ | OpenFlags::WRITE };
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let creating = self.create && !*created;
        if creating {
            flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::TRUNCATE;
        }
        let mode = self.create_mode.unwrap_or(0o600);
        let mut file = sftp
            .open_mode(Path::new(path), flags, mode, OpenType::File)
            .map_err(|e| fail("cannot open the file", &Described(&e)))?;
        if creating {
            // The mode too: a file that existed keeps its own through O_TRUNC; nbdkit leaves it
            // with create-mode.
            let stat = ssh2::FileStat {
                size: self.create_size,
                perm: Some(mode as u32),
                uid: None,
                gid: None,
                atime: None,
                mtime: None,
            };
            file.setstat(stat).map_err(|e| fail("cannot set the size of the created file", &Described(&e)))?;
            *created = true;
            debug!("created {} of {} bytes", remote.name, self.create_size.unwrap_or(0));
        }
        drop(created);
        let size = file.stat().map_err(|e| fail("cannot stat the file", &Described(&e)))?.size.unwrap_or(0);
        // A server without fsync@openssh.com answers "unsupported"; without it there is no flush
        // (nor multi-conn, whose safety this extension is the sign of, as in nbdkit).
        let fsync = match file.fsync() {
            Ok(()) => true,
            Err(e) if e.code() == ErrorCode::SFTP(ssh2_sys_fx::OP_UNSUPPORTED) => false,
            Err(e) => return Err(fail("fsync", &Described(&e))),
        };
        debug!("opened {}: {size} bytes, fsync@openssh.com {}", remote.name, if fsync { "yes" } else { "no" });
        Ok(Box::new(SshHandle {
            file: Mutex::new(OpenFile { file, read_end: None }),
            _sftp: sftp,
            _session: session,
            size,
            fsync,
            readonly: args.readonly,
            name: remote.name.clone(),
        }))
    }
}

/// An `ssh2::Error` as the log shows it: libssh2's message, then the code it came with.
struct Described<'a>(&'a ssh2::Error);

impl std::fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.code() {
            ErrorCode::SFTP(code) => write!(f, "{} (SFTP status {code})", self.0.message()),
            ErrorCode::Session(code) => write!(f, "{} (libssh2 error {code})", self.0.message()),
        }
    }
}

/// libssh2's SFTP status codes the plugin tells apart.
mod ssh2_sys_fx {
    pub const OP_UNSUPPORTED: i32 = 8;
    pub const NO_SPACE_ON_FILESYSTEM: i32 = 14;
    pub const QUOTA_EXCEEDED: i32 = 15;
}

impl SshPlugin {
    /// Connects, checks the host key and logs in.
    fn connect(&self, remote: &Remote) -> Result<Session> {
        let fail = |what: &str, e: &dyn std::fmt::Display| remote.error(what, e);
        let addresses = (remote.address.as_str(), remote.port)
            .to_socket_addrs()
            .map_err(|e| fail("cannot resolve the host", &e))?;
        let mut last = None;
        let mut stream = None;
        for a in addresses {
            let tried = match remote.timeout {
                Some(t) => TcpStream::connect_timeout(&a, t),
                None => TcpStream::connect(a),
            };
            match tried {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(fail("cannot connect", &e)),
            (None, None) => return Err(fail("cannot connect", &"the host has no address")),
        };
        let mut session = Session::new().map_err(|e| fail("cannot make a session", &Described(&e)))?;
        if self.log_level > 0 {
            let mut trace = TraceFlags::ERROR;
            if self.log_level >= 2 {
                trace |= TraceFlags::AUTH | TraceFlags::CONN | TraceFlags::SFTP | TraceFlags::KEX;
            }
            if self.log_level >= 3 {
                trace |= TraceFlags::TRANS | TraceFlags::PUBLICKEY;
            }
            session.trace(trace);
        }
        // SFTP requests are small packets sent while waiting for answers: Nagle would hold them.
        let _ = stream.set_nodelay(true);
        session.set_tcp_stream(stream);
        if let Some(t) = remote.timeout {
            session.set_timeout(t.as_millis().try_into().unwrap_or(u32::MAX));
        }
        session.set_compress(remote.compression);
        let verify = self.verify_remote_host.unwrap_or(true);
        let known: Vec<(&Path, String)> = if verify {
            remote.known_hosts.iter().filter_map(|f| Some((f.as_path(), std::fs::read_to_string(f).ok()?))).collect()
        } else {
            Vec::new()
        };
        if verify {
            prefer_recorded_key_types(&session, remote, &known);
        }
        session.handshake().map_err(|e| fail("SSH handshake", &Described(&e)))?;
        if verify {
            self.verify_host_key(&session, remote, &known)?;
        }
        self.authenticate(&session, remote)?;
        Ok(session)
    }

    /// Checks the server's key against the known hosts files, as ssh(1) does.
    fn verify_host_key(&self, session: &Session, remote: &Remote, known_files: &[(&Path, String)]) -> Result<()> {
        let fail = |what: String| Error::io(format!("ssh: {}: {what}", remote.name));
        let (key, _) = session.host_key().ok_or_else(|| fail("the server sent no host key".into()))?;
        let mut known = session.known_hosts().map_err(|e| fail(format!("known hosts: {}", Described(&e))))?;
        for (file, text) in known_files {
            // Line by line: one entry libssh2 does not understand must not hide the others.
            for line in text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
                if known.read_str(line, KnownHostFileKind::OpenSSH).is_err() {
                    debug!("{}: ignoring an entry libssh2 cannot read", file.display());
                }
            }
        }
        let files = remote.known_hosts.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        match known.check_port(&remote.address, remote.port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(fail(format!(
                "the host key does not match the one recorded in the known hosts files ({files}): \
                 possible man-in-the-middle attack"
            ))),
            CheckResult::NotFound | CheckResult::Failure => Err(fail(format!(
                "the host key is not in the known hosts files ({files}); connect once with ssh(1), \
                 give known-hosts=, or (dangerously) verify-remote-host=false"
            ))),
        }
    }

    /// Tries the methods nbdkit does: none, public keys (agent, then key files), password.
    fn authenticate(&self, session: &Session, remote: &Remote) -> Result<()> {
        let user = remote.user.as_str();
        let fail = |what: String| Error::io(format!("ssh: {}: {what}", remote.name));
        let methods =
            session.auth_methods(user).map_err(|e| fail(format!("authentication: {}", Described(&e))))?.to_string();
        if session.authenticated() {
            return Ok(());
        }
        if methods.split(',').any(|m| m == "publickey") {
            if std::env::var_os("SSH_AUTH_SOCK").is_some() && session.userauth_agent(user).is_ok() {
                return Ok(());
            }
            for key in remote.identities.iter().filter(|k| k.is_file()) {
                let public = PathBuf::from(format!("{}.pub", key.display()));
                let public = public.is_file().then_some(public.as_path());
                match session.userauth_pubkey_file(user, public, key, None) {
                    Ok(()) => return Ok(()),
                    Err(e) => debug!("{}: public key {}: {}", remote.name, key.display(), Described(&e)),
                }
            }
        }
        if let Some(password) = &self.password {
            if methods.split(',').any(|m| m == "password") {
                match session.userauth_password(user, password) {
                    Ok(()) => return Ok(()),
                    Err(e) => return Err(fail(format!("password authentication refused: {}", Described(&e)))),
                }
            }
        }
        Err(fail(format!("authentication failed (the server offers: {methods})")))
    }
}

/// Asks the server for the host key types recorded for it first (then the others, so that an
/// unknown host is still reported as unknown).
fn prefer_recorded_key_types(session: &Session, remote: &Remote, known: &[(&Path, String)]) {
    let Ok(supported) = session.supported_algs(MethodType::HostKey) else { return };
    let mut prefs: Vec<&str> = Vec::new();
    for (_, text) in known {
        for key_type in known_hosts::recorded_key_types(text, &remote.address, remote.port) {
            for alg in known_hosts::algorithms_for(&key_type) {
                if supported.contains(alg) && !prefs.contains(alg) {
                    prefs.push(alg);
                }
            }
        }
    }
    if prefs.is_empty() {
        return;
    }
    debug!("{}: host key types recorded: {}", remote.name, prefs.join(","));
    prefs.extend(supported.iter().filter(|a| !prefs.contains(a)).copied().collect::<Vec<_>>());
    if let Err(e) = session.method_pref(MethodType::HostKey, &prefs.join(",")) {
        debug!("{}: cannot prefer the recorded host key types: {e}", remote.name);
    }
}

/// The local user's name, the default `user=`.
fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into())
}

/// One connection's session, SFTP channel and open file.
struct SshHandle {
    // Dropped in this order: the file is closed before its channel and session.
    file: Mutex<OpenFile>,
    _sftp: Sftp,
    _session: Session,
    size: u64,
    fsync: bool,
    readonly: bool,
    name: String,
}

/// The remote file, and where the last read ended.
///
/// libssh2 reads a file ahead of the caller, several requests in flight, and every seek throws
/// that away, even a seek to where the file already is. So a read that starts where the last
/// one ended does not seek, and a sequential reader keeps the read-ahead. Everything else
/// seeks: a write must, since libssh2 would take the bytes read ahead for part of the write
/// already sent, and the seek also drops read-ahead data the write may change. So must a read
/// after a flush on any connection: what another connection wrote and flushed is to be seen
/// (multi-conn), and the data read ahead may be older.
struct OpenFile {
    file: ssh2::File,
    /// Where the last read ended, and [`FLUSHES`] then, if nothing but reads happened since.
    read_end: Option<(u64, u64)>,
}

/// Flushes on every connection so far.
static FLUSHES: AtomicU64 = AtomicU64::new(0);

impl OpenFile {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let flushes = FLUSHES.load(Ordering::SeqCst);
        if self.read_end.take() == Some((offset, flushes)) {
            self.file.read_exact(buf)?;
        } else {
            self.file.seek(SeekFrom::Start(offset))?;
            self.read_no_further(buf)?;
        }
        self.read_end = Some((offset + buf.len() as u64, flushes));
        Ok(())
    }

    /// `read_exact` after a seek, asking the server for little more than `buf`: libssh2 asks
    /// for four times the buffer each call is given, less what it asked for already, and on
    /// random reads what it read ahead was thrown away at the next seek (64 KiB random reads
    /// moved four times their bytes). The first call gets a quarter of `buf`, which asks for
    /// all of it; each later one at most a quarter of what is asked for and not yet here, which
    /// asks for nothing more, until the last few KiB.
    fn read_no_further(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        const SMALLEST: usize = 4096;
        let mut asked = 0;
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.len() - done;
            let piece = if done == 0 { rest.div_ceil(4) } else { ((asked - done) / 4).max(SMALLEST) }.min(rest);
            asked = asked.max(done + 4 * piece);
            match self.file.read(&mut buf[done..done + piece]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.read_end = None;
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(buf)
    }
}

impl SshHandle {
    fn error(&self, what: String, e: std::io::Error) -> Error {
        Error::io(format!("ssh: {}: {what}: {e}", self.name))
    }

    fn file(&self) -> std::sync::MutexGuard<'_, OpenFile> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Handle for SshHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    /// As nbdkit: zeroing writes zeroes, FUA flushes after the write, and multi-conn is offered
    /// where the server has fsync@openssh.com (OpenSSH's sftp-server, whose writes are safe for it).
    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities {
            write: !self.readonly,
            flush: self.fsync,
            zero: Support::Emulate,
            fua: if self.fsync { Support::Emulate } else { Support::None },
            multi_conn: self.fsync,
            ..Capabilities::READ_ONLY
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let len = buf.len();
        self.file().read(buf, offset).map_err(|e| self.error(format!("read {len} bytes at {offset}"), e))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.file().write(buf, offset).map_err(|e| self.error(format!("write {} bytes at {offset}", buf.len()), e))
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        // The count drops this connection's read-ahead too.
        let synced = self.file().file.fsync();
        FLUSHES.fetch_add(1, Ordering::SeqCst);
        synced.map_err(|e| {
            let errno = match e.code() {
                ErrorCode::SFTP(ssh2_sys_fx::NO_SPACE_ON_FILESYSTEM) => libc::ENOSPC,
                ErrorCode::SFTP(ssh2_sys_fx::QUOTA_EXCEEDED) => libc::EDQUOT,
                _ => libc::EIO,
            };
            Error::new(errno, format!("ssh: {}: fsync: {}", self.name, Described(&e)))
        })
    }
}
