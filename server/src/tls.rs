//! TLS for NBD connections (`--tls`, `--tls-certificates`, `--tls-psk`, `--tls-verify-peer`).
//!
//! [`TlsContext`] loads the credentials once at startup: an X.509 directory in the layout nbdkit and
//! qemu use, or a psktool key file. After the negotiation code has sent the ACK to `NBD_OPT_STARTTLS`
//! it hands the raw socket to [`TlsContext::accept`], which runs the server side of the handshake
//! and returns a [`TlsStream`] for the rest of the negotiation; [`TlsStream::split`] then gives the
//! halves the transmission phase uses (one reader thread, writers serialised by the caller).
//!
//! Why the I/O looks the way it does: an OpenSSL `SSL` object must never be used by two threads at
//! once, yet the reader waits for the next request while workers send replies. So the session sits
//! behind a mutex and the socket is only ever read or written without blocking (`MSG_DONTWAIT`): a
//! thread holds the mutex only while OpenSSL runs, and waits for the socket with `poll` after
//! releasing it. A reader idling between requests therefore never delays a reply, and a writer
//! stuck on a full socket never stops the reader from draining requests.

use std::collections::HashMap;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, MsgFlags};
use nix::sys::stat::SFlag;
use openssl::asn1::Asn1Time;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::pkey::PKey;
use openssl::ssl::{
    self, ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslStream, SslVerifyMode, SslVersion,
};
use openssl::stack::Stack;
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Name, X509NameRef, X509VerifyResult, X509};

/// `--tls=off|on|require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// STARTTLS is refused.
    #[default]
    Off,
    /// Clients may use TLS or not.
    On,
    /// Clients must use TLS before anything else.
    Require,
}

impl FromStr for TlsMode {
    type Err = String;

    /// Accepts what nbdkit accepts: `require` (or `required`, `force`), or a boolean (`on`, `yes`,
    /// `true`, `1`, ... / `off`, `no`, `false`, `0`, ...), in any case.
    fn from_str(value: &str) -> Result<TlsMode, String> {
        match value.to_ascii_lowercase().as_str() {
            "require" | "required" | "force" => Ok(TlsMode::Require),
            "on" | "yes" | "y" | "true" | "t" | "1" => Ok(TlsMode::On),
            "off" | "no" | "n" | "false" | "f" | "0" => Ok(TlsMode::Off),
            _ => Err(format!("--tls={value}: expected off, on or require")),
        }
    }
}

/// The TLS options from the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `--tls`.
    pub mode: TlsMode,
    /// `--tls-certificates DIR`.
    pub certificates: Option<PathBuf>,
    /// `--tls-psk FILE`.
    pub psk_file: Option<PathBuf>,
    /// `--tls-verify-peer`.
    pub verify_peer: bool,
}

/// The system-wide certificate directory, searched when running as root.
pub const ROOT_CERTIFICATES_DIR: &str = "/etc/pki/nbdforge";
/// nbdkit's system-wide directory, searched after ours so an nbdkit setup keeps working.
pub const NBDKIT_ROOT_CERTIFICATES_DIR: &str = "/etc/pki/nbdkit";

/// The per-user certificate directory, `$HOME/.pki/nbdforge` (None without `$HOME`).
pub fn user_certificates_dir() -> Option<PathBuf> {
    home_dir().map(|home| home.join(".pki/nbdforge"))
}

/// Where certificates are looked for without `--tls-certificates`, in search order. Like nbdkit, a
/// non-root user's own directories are searched and root's system directory is searched by root;
/// nbdforge's name comes first and nbdkit's follows.
pub fn default_certificate_dirs() -> Vec<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return vec![PathBuf::from(ROOT_CERTIFICATES_DIR), PathBuf::from(NBDKIT_ROOT_CERTIFICATES_DIR)];
    }
    let Some(home) = home_dir() else { return Vec::new() };
    ["nbdforge", "nbdkit"]
        .iter()
        .flat_map(|name| [home.join(".pki").join(name), home.join(".config/pki").join(name)])
        .collect()
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|home| !home.is_empty()).map(PathBuf::from)
}

/// How long a client may take over the TLS handshake, unless changed with
/// [`TlsContext::set_handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Loaded credentials, shared by all connections.
pub struct TlsContext {
    ssl: SslContext,
    psk: bool,
    description: String,
    handshake_timeout: Option<Duration>,
}

/// What the handshake learnt about the client, kept on the `SSL` object by the callbacks.
#[derive(Debug, Clone)]
enum PskNote {
    Known(String),
    Unknown(String),
    FileError(String),
}

fn psk_note_index() -> Index<Ssl, PskNote> {
    static INDEX: OnceLock<Index<Ssl, PskNote>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL: allocating an ex_data index"))
}

impl TlsContext {
    /// Loads certificates or the PSK file. Errors name the file and what is wrong with it.
    ///
    /// As in nbdkit, `--tls-psk` overrides certificates. Without `--tls-certificates` the
    /// [`default_certificate_dirs`] are searched and the first holding `server-cert.pem` and
    /// `server-key.pem` is used. `options.mode` is not looked at: the caller decides what a failure
    /// means (nbdkit exits under `--tls=require` and warns and turns TLS off under `--tls=on`).
    pub fn new(options: &TlsOptions) -> Result<TlsContext, String> {
        let mut builder = new_builder().map_err(|e| format!("tls: setting up OpenSSL: {}", reasons(&e)))?;
        let description = if let Some(file) = &options.psk_file {
            let keys = Arc::new(PskFile::load(file)?);
            set_psk(&mut builder, keys).map_err(|e| format!("tls-psk: {}: {}", file.display(), reasons(&e)))?;
            format!("pre-shared keys from {}", file.display())
        } else {
            let dir = match &options.certificates {
                Some(dir) => dir.clone(),
                None => find_default_certificates()?,
            };
            load_x509(&mut builder, &dir, options.verify_peer)?;
            let verify = if options.verify_peer { ", verifying client certificates" } else { "" };
            format!("X.509 certificates from {}{verify}", dir.display())
        };
        Ok(TlsContext {
            ssl: builder.build(),
            psk: options.psk_file.is_some(),
            description,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        })
    }

    /// What was loaded, for logs: "X.509 certificates from DIR" or "pre-shared keys from FILE".
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Limits the whole handshake (default [`DEFAULT_HANDSHAKE_TIMEOUT`]; None waits forever).
    /// A `SO_RCVTIMEO` set on the socket limits each wait as well.
    pub fn set_handshake_timeout(&mut self, timeout: Option<Duration>) {
        self.handshake_timeout = timeout;
    }

    /// Runs the server side of the TLS handshake on a connected socket (after the NBD STARTTLS
    /// reply was sent). Nothing may have read ahead on the socket.
    ///
    /// The socket's file status flags are left alone (reads and writes use `MSG_DONTWAIT`). Its
    /// `SO_RCVTIMEO` / `SO_SNDTIMEO`, if set, limit each wait of the handshake; after it, the
    /// stream has no timeouts until [`TlsStream::set_read_timeout`] sets one.
    /// The error of a failed handshake says why, e.g. the client's unknown PSK identity or why its
    /// certificate was refused.
    pub fn accept(&self, socket: OwnedFd) -> io::Result<TlsStream> {
        let fd = Arc::new(socket);
        self.accept_transport(Transport::new(fd.clone(), fd)?)
    }

    /// [`accept`](Self::accept) for a connection carried on two descriptors (`-s`: stdin and
    /// stdout). A descriptor that is not a socket is switched to non-blocking mode.
    pub fn accept_pair(&self, read: OwnedFd, write: OwnedFd) -> io::Result<TlsStream> {
        self.accept_transport(Transport::new(Arc::new(read), Arc::new(write))?)
    }

    fn accept_transport(&self, transport: Transport) -> io::Result<TlsStream> {
        let ssl = Ssl::new(&self.ssl).map_err(|e| io::Error::other(format!("TLS: {}", reasons(&e))))?;
        handshake(ssl, transport, Side::Server, self.handshake_timeout, self.psk)
    }
}

/// Settings shared by both kinds of credentials.
fn new_builder() -> Result<SslContextBuilder, ErrorStack> {
    let mut builder = SslContextBuilder::new(SslMethod::tls_server())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    // No renegotiation: it is the one thing that would make a write need to read. No session
    // resumption: NBD clients do not use it, and tickets cost work on every handshake. A client
    // closing without close_notify is an ordinary end of the connection (the NBD layer notices a
    // request cut short).
    builder.set_options(
        SslOptions::NO_RENEGOTIATION
            | SslOptions::NO_TICKET
            | SslOptions::IGNORE_UNEXPECTED_EOF
            | SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::PRIORITIZE_CHACHA,
    );
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    builder.set_num_tickets(0)?;
    builder.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    // Read whole socket buffers rather than a record header and then its body.
    builder.set_read_ahead(true);
    // AES-128-GCM costs the least CPU where AES instructions exist; PRIORITIZE_CHACHA still gives
    // ChaCha20 to clients that prefer it (those without them).
    builder.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")?;
    builder.set_cipher_list(
        "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL:!SHA1:!PSK:!SRP",
    )?;
    Ok(builder)
}

fn find_default_certificates() -> Result<PathBuf, String> {
    let dirs = default_certificate_dirs();
    for dir in &dirs {
        if readable(&dir.join("server-cert.pem")) && readable(&dir.join("server-key.pem")) {
            return Ok(dir.clone());
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "tls: could not find TLS certificates (server-cert.pem and server-key.pem) in {}: \
         use --tls-certificates=DIR or --tls-psk=FILE",
        if searched.is_empty() { "any default directory ($HOME is not set)".to_string() } else { searched.join(", ") }
    ))
}

fn readable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::R_OK).is_ok()
}

/// Loads `server-cert.pem` (with any intermediate certificates after it), `server-key.pem`,
/// `ca-cert.pem` (needed to check client certificates) and the optional `ca-crl.pem`.
fn load_x509(builder: &mut SslContextBuilder, dir: &Path, verify_peer: bool) -> Result<(), String> {
    let what = |path: &Path, why: &str| format!("tls-certificates: {}: {why}", path.display());
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(what(dir, "not a directory")),
        Err(e) => return Err(what(dir, &io_reason(&e))),
    }

    let cert_path = dir.join("server-cert.pem");
    let key_path = dir.join("server-key.pem");
    let cert_pem = read_file(&cert_path).map_err(|e| what(&cert_path, &e))?;
    let chain = X509::stack_from_pem(&cert_pem)
        .map_err(|e| what(&cert_path, &format!("not a PEM certificate: {}", reasons(&e))))?;
    let Some((cert, intermediates)) = chain.split_first() else {
        return Err(what(&cert_path, "no certificate in the file (expected -----BEGIN CERTIFICATE-----)"));
    };
    let key_pem = read_file(&key_path).map_err(|e| what(&key_path, &e))?;
    if contains(&key_pem, b"ENCRYPTED") {
        return Err(what(&key_path, "the private key is encrypted; it must be stored without a passphrase"));
    }
    // The callback refuses any passphrase so OpenSSL never prompts on the terminal.
    let key = PKey::private_key_from_pem_callback(&key_pem, |_| Ok(0))
        .map_err(|e| what(&key_path, &format!("not a PEM private key: {}", reasons(&e))))?;
    builder.set_certificate(cert).map_err(|e| what(&cert_path, &reasons(&e)))?;
    for extra in intermediates {
        builder.add_extra_chain_cert(extra.clone()).map_err(|e| what(&cert_path, &reasons(&e)))?;
    }
    let mismatch =
        || what(&key_path, &format!("the private key does not match the certificate in {}", cert_path.display()));
    builder.set_private_key(&key).map_err(|e| {
        let why = reasons(&e);
        if why.contains("mismatch") {
            mismatch()
        } else {
            what(&key_path, &why)
        }
    })?;
    builder.check_private_key().map_err(|_| mismatch())?;
    if let Ok(now) = Asn1Time::days_from_now(0) {
        if cert.not_after() < now {
            tracing::warn!(
                "tls-certificates: {}: the server certificate has expired ({})",
                cert_path.display(),
                cert.not_after()
            );
        }
    }

    let ca_path = dir.join("ca-cert.pem");
    if !verify_peer && !ca_path.exists() {
        builder.set_verify(SslVerifyMode::NONE);
        return Ok(());
    }
    let ca_pem = read_file(&ca_path)
        .map_err(|e| what(&ca_path, &if verify_peer { format!("{e} (needed by --tls-verify-peer)") } else { e }))?;
    let cas = X509::stack_from_pem(&ca_pem)
        .map_err(|e| what(&ca_path, &format!("not a PEM certificate: {}", reasons(&e))))?;
    if cas.is_empty() {
        return Err(what(&ca_path, "no certificate in the file (expected -----BEGIN CERTIFICATE-----)"));
    }
    let mut names = Stack::<X509Name>::new().map_err(|e| what(&ca_path, &reasons(&e)))?;
    for ca in &cas {
        builder.cert_store_mut().add_cert(ca.clone()).map_err(|e| what(&ca_path, &reasons(&e)))?;
        names
            .push(ca.subject_name().to_owned().map_err(|e| what(&ca_path, &reasons(&e)))?)
            .map_err(|e| what(&ca_path, &reasons(&e)))?;
    }
    // Tells clients holding several certificates which one to present.
    builder.set_client_ca_list(names);

    let crl_path = dir.join("ca-crl.pem");
    if crl_path.exists() {
        let crl_pem = read_file(&crl_path).map_err(|e| what(&crl_path, &e))?;
        if !contains(&crl_pem, b"-----BEGIN X509 CRL-----") {
            return Err(what(
                &crl_path,
                "no certificate revocation list in the file (expected -----BEGIN X509 CRL-----)",
            ));
        }
        let store = builder.cert_store_mut();
        let lookup = store.add_lookup(X509Lookup::file()).map_err(|e| what(&crl_path, &reasons(&e)))?;
        lookup
            .load_crl_file(&crl_path, ssl::SslFiletype::PEM)
            .map_err(|e| what(&crl_path, &format!("not a PEM certificate revocation list: {}", reasons(&e))))?;
        store.set_flags(X509VerifyFlags::CRL_CHECK).map_err(|e| what(&crl_path, &reasons(&e)))?;
    }
    builder.set_verify(if verify_peer {
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT
    } else {
        SslVerifyMode::NONE
    });
    Ok(())
}

fn set_psk(builder: &mut SslContextBuilder, keys: Arc<PskFile>) -> Result<(), ErrorStack> {
    // TLS 1.3 gives keys from this callback the SHA-256 hash, so only SHA-256 suites can use them.
    builder.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256")?;
    // TLS 1.2: ECDHE-PSK (forward secrecy) first, then plain PSK (what GnuTLS's NORMAL:+PSK offers).
    builder.set_cipher_list("ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-AES256-CBC-SHA384:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305")?;
    builder.set_psk_server_callback(move |ssl, identity, out| {
        let identity = String::from_utf8_lossy(identity.unwrap_or_default()).into_owned();
        let (note, len) = match keys.lookup(&identity) {
            Ok(Some(key)) if key.len() <= out.len() => {
                out[..key.len()].copy_from_slice(&key);
                (PskNote::Known(identity), key.len())
            }
            Ok(Some(_)) => (PskNote::FileError(format!("the key of '{identity}' is too long for OpenSSL")), 0),
            Ok(None) => (PskNote::Unknown(identity), 0),
            Err(e) => (PskNote::FileError(e), 0),
        };
        ssl.set_ex_data(psk_note_index(), note);
        // 0 bytes: no key for this identity, and the handshake fails.
        Ok(len)
    });
    Ok(())
}

/// A psktool key file (`username:hexkey` per line). Like GnuTLS, which reads the file at every
/// handshake, nbdkit picks up edits without a restart; this re-reads it when it changes.
struct PskFile {
    path: PathBuf,
    state: Mutex<PskState>,
}

struct PskState {
    stamp: FileStamp,
    keys: Result<HashMap<String, Vec<u8>>, String>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// OpenSSL's limit on a pre-shared key (PSK_MAX_PSK_LEN).
const MAX_PSK_BYTES: usize = 512;
/// OpenSSL's limit on a PSK identity (PSK_MAX_IDENTITY_LEN).
const MAX_PSK_IDENTITY: usize = 256;

impl PskFile {
    fn load(path: &Path) -> Result<PskFile, String> {
        let (stamp, keys) = read_psk_file(path)?;
        let keys = keys?;
        if keys.is_empty() {
            return Err(format!(
                "tls-psk: {}: the file holds no keys (expected username:hexkey lines, see psktool(1))",
                path.display()
            ));
        }
        Ok(PskFile { path: path.to_path_buf(), state: Mutex::new(PskState { stamp, keys: Ok(keys) }) })
    }

    fn lookup(&self, identity: &str) -> Result<Option<Vec<u8>>, String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match fs::metadata(&self.path) {
            Ok(meta) if FileStamp::of(&meta) != state.stamp => match read_psk_file(&self.path) {
                Ok((stamp, keys)) => {
                    if let Err(e) = &keys {
                        tracing::error!("{e}");
                    }
                    *state = PskState { stamp, keys };
                }
                Err(e) => return Err(e),
            },
            Ok(_) => {}
            Err(e) => return Err(format!("tls-psk: {}: {}", self.path.display(), io_reason(&e))),
        }
        match &state.keys {
            Ok(keys) => Ok(keys.get(identity).cloned()),
            Err(e) => Err(e.clone()),
        }
    }
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// Reads the file; the outer error is for a file that cannot be read, the inner for bad contents.
#[allow(clippy::type_complexity)]
fn read_psk_file(path: &Path) -> Result<(FileStamp, Result<HashMap<String, Vec<u8>>, String>), String> {
    let fail = |why: String| format!("tls-psk: {}: {why}", path.display());
    let file = fs::File::open(path).map_err(|e| fail(io_reason(&e)))?;
    let meta = file.metadata().map_err(|e| fail(io_reason(&e)))?;
    if meta.is_dir() {
        return Err(fail("is a directory, expected a file of username:hexkey lines".into()));
    }
    let mut text = Vec::new();
    (&file).read_to_end(&mut text).map_err(|e| fail(io_reason(&e)))?;
    Ok((FileStamp::of(&meta), parse_psk(&text).map_err(fail)))
}

/// Parses psktool's format. The first entry for a name wins, as in GnuTLS.
fn parse_psk(text: &[u8]) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut keys = HashMap::new();
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = index + 1;
        let line = line.trim_ascii_end();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {n}: {why}");
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(bad("expected username:hexkey"));
        };
        let (user, hex) = (&line[..colon], &line[colon + 1..]);
        if user.is_empty() {
            return Err(bad("expected username:hexkey, the username is empty"));
        }
        let Ok(user) = std::str::from_utf8(user) else { return Err(bad("the username is not valid UTF-8")) };
        if user.len() > MAX_PSK_IDENTITY {
            return Err(bad(&format!("the username is longer than {MAX_PSK_IDENTITY} bytes")));
        }
        let key = decode_hex(hex).map_err(|why| bad(&format!("the key of '{user}' {why}")))?;
        if key.len() > MAX_PSK_BYTES {
            return Err(bad(&format!("the key of '{user}' is longer than {MAX_PSK_BYTES} bytes")));
        }
        if keys.contains_key(user) {
            tracing::warn!("tls-psk: line {n}: '{user}' appears again; the first key is used");
            continue;
        }
        keys.insert(user.to_string(), key);
    }
    Ok(keys)
}

fn decode_hex(hex: &[u8]) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("is empty (expected username:hexkey)".into());
    }
    if hex.len() & 1 == 1 {
        return Err(format!("has an odd number of hex digits ({})", hex.len()));
    }
    let digit = |c: u8| (c as char).to_digit(16);
    hex.chunks(2)
        .enumerate()
        .map(|(i, pair)| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => {
                Err(format!("is not hexadecimal (at character {})", 2 * i + 1 + usize::from(digit(pair[0]).is_some())))
            }
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| io_reason(&e))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// "Permission denied", without Rust's "(os error 13)".
fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// OpenSSL's reasons, e.g. "no shared cipher; certificate verify failed".
fn reasons(stack: &ErrorStack) -> String {
    let mut out: Vec<String> = Vec::new();
    for e in stack.errors() {
        let reason = e.reason().map(str::to_string).unwrap_or_else(|| e.to_string());
        let reason = match e.data() {
            Some(data) if !data.is_empty() => format!("{reason} ({data})"),
            _ => reason,
        };
        if !out.contains(&reason) {
            out.push(reason);
        }
    }
    if out.is_empty() {
        "unknown OpenSSL error".into()
    } else {
        out.join("; ")
    }
}

/// The session's socket: one descriptor, or two for `-s`. Reads and writes never block; `Session`
/// waits with `poll` when OpenSSL asks to.
///
/// It also saves system calls, which cost about as much as the cipher on a local socket: OpenSSL
/// reads one record (16 KiB) at a time, so ciphertext is read in larger gulps and handed out from
/// `input`; and while a reply is being sealed (`gather`), its records collect in `output` and go
/// out in a few large writes instead of one write and one reader wake-up per record.
struct Transport {
    read: Arc<OwnedFd>,
    write: Arc<OwnedFd>,
    read_is_socket: bool,
    write_is_socket: bool,
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    output: Vec<u8>,
    output_start: usize,
    gather: bool,
}

/// How much ciphertext one read may take from the socket.
const INPUT_BUFFER: usize = 64 << 10;
/// How many sealed bytes may wait in `output` before they must be written.
const OUTPUT_LIMIT: usize = 128 << 10;

impl Transport {
    fn new(read: Arc<OwnedFd>, write: Arc<OwnedFd>) -> io::Result<Transport> {
        let read_is_socket = prepare_fd(&read)?;
        let write_is_socket = if Arc::ptr_eq(&read, &write) { read_is_socket } else { prepare_fd(&write)? };
        Ok(Transport {
            read,
            write,
            read_is_socket,
            write_is_socket,
            input: Vec::new(),
            input_start: 0,
            input_end: 0,
            output: Vec::new(),
            output_start: 0,
            gather: false,
        })
    }

    fn read_fd(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = if self.read_is_socket {
                socket::recv(self.read.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)
            } else {
                nix::unistd::read(self.read.as_raw_fd(), buf)
            };
            match result {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn write_fd(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let result = if self.write_is_socket {
                // MSG_NOSIGNAL: a client that went away is an EPIPE error, not a SIGPIPE.
                socket::send(self.write.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            } else {
                nix::unistd::write(self.write.as_fd(), buf)
            };
            match result {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn output_pending(&self) -> usize {
        self.output.len() - self.output_start
    }

    /// Writes what `output` holds, without blocking (`WouldBlock` if the socket is full first).
    fn flush_output(&mut self) -> io::Result<()> {
        while self.output_start < self.output.len() {
            let n = self.write_fd(&self.output[self.output_start..])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.output_start += n;
        }
        self.output.clear();
        self.output_start = 0;
        Ok(())
    }
}

/// Whether `fd` is a socket; any other descriptor is switched to non-blocking mode, since only
/// sockets take `MSG_DONTWAIT`.
fn prepare_fd(fd: &OwnedFd) -> io::Result<bool> {
    let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK {
        return Ok(true);
    }
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(false)
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input_start == self.input_end {
            if buf.len() >= INPUT_BUFFER {
                return self.read_fd(buf);
            }
            if self.input.is_empty() {
                self.input = vec![0; INPUT_BUFFER];
            }
            let mut input = std::mem::take(&mut self.input);
            let result = self.read_fd(&mut input);
            self.input = input;
            let n = result?;
            self.input_start = 0;
            self.input_end = n;
        }
        let n = buf.len().min(self.input_end - self.input_start);
        buf[..n].copy_from_slice(&self.input[self.input_start..self.input_start + n]);
        self.input_start += n;
        Ok(n)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.gather && self.output_pending() == 0 {
            return self.write_fd(buf);
        }
        // Behind bytes already waiting (an alert from a reader while a reply is being sent) or
        // gathering: queue, within the limit.
        if self.output_pending() >= OUTPUT_LIMIT {
            self.flush_output()?;
        }
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The session shared by a stream's halves.
struct Session {
    ssl: Mutex<SslStream<Transport>>,
    read_fd: Arc<OwnedFd>,
    write_fd: Arc<OwnedFd>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Server,
    #[cfg_attr(not(test), allow(dead_code))]
    Client,
}

/// What OpenSSL is waiting for before the operation can go on.
enum Need {
    Read,
    Write,
}

/// Runs a handshake on a fresh `SSL` (the client side only in tests, to drive our I/O code from
/// both ends).
fn handshake(
    ssl: Ssl,
    transport: Transport,
    side: Side,
    timeout: Option<Duration>,
    psk: bool,
) -> io::Result<TlsStream> {
    let read_fd = transport.read.clone();
    let write_fd = transport.write.clone();
    let read_timeout = socket_timeout(&read_fd, sockopt::ReceiveTimeout);
    let write_timeout = socket_timeout(&write_fd, sockopt::SendTimeout);
    let mut stream = SslStream::new(ssl, transport).map_err(|e| io::Error::other(format!("TLS: {}", reasons(&e))))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let result = match side {
            Side::Server => stream.accept(),
            Side::Client => stream.connect(),
        };
        let need = match result {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ => Need::Read,
            Err(e) if e.code() == ErrorCode::WANT_WRITE => Need::Write,
            Err(e) => return Err(handshake_error(&e, stream.ssl(), psk)),
        };
        let (fd, events, each) = match need {
            Need::Read => (&read_fd, PollFlags::POLLIN, read_timeout),
            Need::Write => (&write_fd, PollFlags::POLLOUT, write_timeout),
        };
        let wait_until = earliest(deadline, each.map(|t| Instant::now() + t));
        wait(fd.as_fd(), events, wait_until).map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    }

    let identity = match side {
        Side::Server => client_identity(stream.ssl()),
        Side::Client => None,
    };
    tracing::debug!(
        "TLS handshake done: {} {}{}",
        stream.ssl().version_str(),
        stream.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"),
        identity.as_deref().map(|i| format!(", client {i}")).unwrap_or_default()
    );
    let session = Arc::new(Session { ssl: Mutex::new(stream), read_fd, write_fd });
    // The socket's timeouts were for the handshake; the stream's are set by its user.
    let io = HalfIo { session: session.clone(), read_timeout: Timeout::new(None), write_timeout: Timeout::new(None) };
    Ok(TlsStream {
        reader: TlsReader { io: io.copy() },
        writer: TlsWriter { io, staging: Vec::new(), _closer: CloseNotify(session) },
        identity,
    })
}

fn socket_timeout(fd: &OwnedFd, opt: impl socket::GetSockOpt<Val = nix::sys::time::TimeVal>) -> Option<Duration> {
    let tv = socket::getsockopt(fd, opt).ok()?;
    let d = Duration::new(tv.tv_sec().max(0) as u64, (tv.tv_usec().max(0) as u32) * 1000);
    (!d.is_zero()).then_some(d)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Says why a handshake failed in the user's terms where we can tell, then OpenSSL's reasons.
fn handshake_error(e: &ssl::Error, ssl: &ssl::SslRef, psk: bool) -> io::Error {
    let openssl = if e.code() == ErrorCode::SYSCALL || e.code() == ErrorCode::ZERO_RETURN {
        match e.io_error() {
            Some(io) => io.to_string(),
            None => "the client closed the connection".into(),
        }
    } else if let Some(stack) = e.ssl_error() {
        reasons(stack)
    } else {
        e.to_string()
    };
    let verify = ssl.verify_result();
    let why = match ssl.ex_data(psk_note_index()) {
        Some(PskNote::Unknown(identity)) => format!("the client's PSK identity '{identity}' is not in the key file"),
        Some(PskNote::FileError(e)) => e.clone(),
        Some(PskNote::Known(identity)) if e.ssl_error().is_some() => {
            format!("the client's key for '{identity}' is not the one in the key file ({openssl})")
        }
        None if psk && e.ssl_error().is_some() => format!("the client offered no pre-shared key ({openssl})"),
        None if verify != X509VerifyResult::OK => {
            format!("client certificate refused: {} ({openssl})", verify.error_string())
        }
        _ => openssl,
    };
    io::Error::new(io::ErrorKind::PermissionDenied, format!("TLS handshake failed: {why}"))
}

/// The PSK username, or the subject of a verified client certificate (RFC 4514 form, as GnuTLS
/// prints it: "CN=client.example.com,O=Example").
fn client_identity(ssl: &ssl::SslRef) -> Option<String> {
    if let Some(PskNote::Known(identity)) = ssl.ex_data(psk_note_index()) {
        return Some(identity.clone());
    }
    let cert = ssl.peer_certificate()?;
    (ssl.verify_result() == X509VerifyResult::OK).then(|| rfc4514(cert.subject_name()))
}

fn rfc4514(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = Vec::new();
    for entry in name.entries() {
        let nid = entry.object().nid();
        let key = nid.short_name().map(str::to_string).unwrap_or_else(|_| entry.object().to_string());
        let value =
            entry.data().to_string().unwrap_or_else(|_| String::from_utf8_lossy(entry.data().as_slice()).into_owned());
        let mut escaped = String::new();
        let last = value.chars().count().saturating_sub(1);
        for (i, c) in value.chars().enumerate() {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (i == 0 && (c == '#' || c == ' '))
                || (i == last && c == ' ');
            if special {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        parts.push(format!("{key}={escaped}"));
    }
    parts.reverse();
    parts.join(",")
}

/// Waits until `fd` is ready for `events` (or has an error or hangup, which the next OpenSSL call
/// reports), or the deadline passes.
fn wait(fd: BorrowedFd<'_>, events: PollFlags, deadline: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the client"));
                }
                // Round up so a wait of less than a millisecond does not spin.
                PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, SslStream<Transport>> {
        // A panic elsewhere while holding the lock leaves OpenSSL in a consistent state (our code
        // does not panic inside OpenSSL calls), so a poisoned lock is still usable.
        self.ssl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_for(&self, need: Need, timeout: Option<Duration>, deadline: &mut Option<Instant>) -> io::Result<()> {
        if deadline.is_none() {
            *deadline = timeout.map(|t| Instant::now() + t);
        }
        match need {
            Need::Read => wait(self.read_fd.as_fd(), PollFlags::POLLIN, *deadline),
            Need::Write => wait(self.write_fd.as_fd(), PollFlags::POLLOUT, *deadline),
        }
    }

    /// Reads at most one record's worth; 0 at the end of the stream.
    fn read(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut deadline = None;
        loop {
            let need = match self.lock().ssl_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) => match e.code() {
                    ErrorCode::WANT_READ => Need::Read,
                    ErrorCode::WANT_WRITE => Need::Write,
                    ErrorCode::ZERO_RETURN => return Ok(0),
                    ErrorCode::SYSCALL if e.io_error().is_none() => return Ok(0),
                    _ => return Err(io_error(e, "reading")),
                },
            };
            self.wait_for(need, timeout, &mut deadline)?;
        }
    }

    /// Writes all of `buf`: OpenSSL seals it into records, gathered in the transport and written
    /// in large pieces. Returns once everything is written to the socket.
    fn write_all(&self, buf: &[u8], timeout: Option<Duration>) -> io::Result<()> {
        let mut done = 0;
        let mut deadline = None;
        loop {
            let need = {
                let mut ssl = self.lock();
                let mut need = None;
                while done < buf.len() {
                    // On WANT_WRITE OpenSSL keeps the record it could not hand over, and the
                    // retry must pass the same bytes again, which this does.
                    ssl.get_mut().gather = true;
                    let result = ssl.ssl_write(&buf[done..]);
                    ssl.get_mut().gather = false;
                    match result {
                        Ok(n) => done += n,
                        Err(e) => match e.code() {
                            ErrorCode::WANT_WRITE => {
                                need = Some(Need::Write);
                                break;
                            }
                            ErrorCode::WANT_READ => {
                                need = Some(Need::Read);
                                break;
                            }
                            ErrorCode::ZERO_RETURN => {
                                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS: the session was closed"))
                            }
                            _ => return Err(io_error(e, "writing")),
                        },
                    }
                }
                match ssl.get_mut().flush_output() {
                    Ok(()) => match need {
                        None => return Ok(()),
                        Some(need) => need,
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Need::Write,
                    Err(e) => return Err(e),
                }
            };
            self.wait_for(need, timeout, &mut deadline)?;
        }
    }

    /// Sends close_notify, waiting a little for room in the socket, and never for the client.
    fn close_notify(&self) {
        let deadline = Some(Instant::now() + Duration::from_secs(2));
        loop {
            match self.lock().shutdown() {
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {}
                _ => return,
            }
            if wait(self.write_fd.as_fd(), PollFlags::POLLOUT, deadline).is_err() {
                return;
            }
        }
    }
}

fn io_error(e: ssl::Error, doing: &str) -> io::Error {
    if let Some(stack) = e.ssl_error() {
        return io::Error::new(io::ErrorKind::InvalidData, format!("TLS error {doing}: {}", reasons(stack)));
    }
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => io::Error::other(format!("TLS error {doing}: {e}")),
    }
}

/// The state both halves (and the unsplit stream) carry: the session and the timeouts.
struct HalfIo {
    session: Arc<Session>,
    read_timeout: Timeout,
    write_timeout: Timeout,
}

impl HalfIo {
    fn copy(&self) -> HalfIo {
        HalfIo {
            session: self.session.clone(),
            read_timeout: self.read_timeout.copy(),
            write_timeout: self.write_timeout.copy(),
        }
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read(buf, self.read_timeout.get())
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.session.write_all(buf, self.write_timeout.get())
    }
}

/// An optional timeout settable through `&self`, as on std's sockets.
struct Timeout(AtomicU64);

impl Timeout {
    const NONE: u64 = u64::MAX;

    fn new(timeout: Option<Duration>) -> Timeout {
        let t = Timeout(AtomicU64::new(Self::NONE));
        t.set(timeout);
        t
    }
    fn set(&self, timeout: Option<Duration>) {
        let nanos = timeout.map_or(Self::NONE, |t| u64::try_from(t.as_nanos()).unwrap_or(Self::NONE - 1));
        self.0.store(nanos, Ordering::Relaxed);
    }
    fn get(&self) -> Option<Duration> {
        let nanos = self.0.load(Ordering::Relaxed);
        (nanos != Self::NONE).then(|| Duration::from_nanos(nanos))
    }
    fn copy(&self) -> Timeout {
        Timeout::new(self.get())
    }
}

/// Sends close_notify when the last writer goes.
struct CloseNotify(Arc<Session>);

impl Drop for CloseNotify {
    fn drop(&mut self) {
        self.0.close_notify();
    }
}

/// Largest TLS record payload: replies are gathered into records of this size.
const RECORD_SIZE: usize = 16384;

/// Writes `bufs` completely as full records: small pieces (a reply header) are gathered with the
/// data after them into one record instead of a record and a syscall of their own, and long
/// stretches go to OpenSSL without being copied.
fn write_gathered(io: &HalfIo, staging: &mut Vec<u8>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let result = (|| {
        let mut total = 0;
        for buf in bufs {
            let mut buf: &[u8] = buf;
            total += buf.len();
            if !staging.is_empty() {
                let take = (RECORD_SIZE - staging.len()).min(buf.len());
                staging.extend_from_slice(&buf[..take]);
                buf = &buf[take..];
                if staging.len() < RECORD_SIZE {
                    continue;
                }
                io.write_all(staging)?;
                staging.clear();
            }
            let whole = buf.len() - buf.len() % RECORD_SIZE;
            if whole > 0 {
                io.write_all(&buf[..whole])?;
            }
            if staging.capacity() == 0 {
                staging.reserve_exact(RECORD_SIZE);
            }
            staging.extend_from_slice(&buf[whole..]);
        }
        if !staging.is_empty() {
            io.write_all(staging)?;
        }
        Ok(total)
    })();
    staging.clear();
    result
}

/// An established TLS session. Blocking `Read + Write` for the rest of the negotiation; `split`
/// gives halves that one reader thread and many writer threads (serialised by the caller) can use at
/// the same time.
///
/// Every `write`/`write_vectored` call writes everything it is given (or fails), so one reply is
/// one call. `flush` has nothing to do. Dropping the stream (or the write half after `split`)
/// sends close_notify; the descriptors close when both halves are gone. A reader blocked waiting
/// for data holds no lock: `shutdown(2)` on the socket (see [`AsFd`]) wakes it with end-of-file.
pub struct TlsStream {
    /// The halves `split` hands out; until then the stream reads and writes through them.
    reader: TlsReader,
    writer: TlsWriter,
    identity: Option<String>,
}

impl TlsStream {
    /// The PSK identity or client certificate subject.
    ///
    /// The PSK username for `--tls-psk`; with `--tls-verify-peer` the verified client
    /// certificate's subject in RFC 4514 form (`CN=client.example.com,O=Example`); otherwise None.
    pub fn identity(&self) -> Option<String> {
        self.identity.clone()
    }

    /// The protocol and cipher in use, for logs: "TLSv1.3 TLS_AES_128_GCM_SHA256".
    pub fn description(&self) -> String {
        let ssl = self.writer.io.session.lock();
        format!("{} {}", ssl.ssl().version_str(), ssl.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"))
    }

    /// Limits each read to waiting this long for data (then an `io::ErrorKind::TimedOut` error);
    /// None (the starting value) waits forever. Like `UnixStream::set_read_timeout`; the socket's
    /// own `SO_RCVTIMEO` no longer matters after the handshake. The halves from `split` start with
    /// the value it has then.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.io.read_timeout.set(timeout);
        Ok(())
    }

    /// Limits each write to waiting this long for room in the socket; None (the start) waits forever.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.io.write_timeout.set(timeout);
        Ok(())
    }

    /// Read and write halves for the transmission phase.
    ///
    /// Both may be used at once from different threads; several writers must be serialised by the
    /// caller. Dropping the writer sends close_notify; neither drop waits for the other half.
    pub fn split(self) -> (Box<dyn io::Read + Send>, Box<dyn io::Write + Send>) {
        (Box::new(self.reader), Box::new(self.writer))
    }
}

impl AsFd for TlsStream {
    /// The socket the session reads from. Only for `shutdown(2)`, socket options and addresses:
    /// reading or writing it directly would corrupt the session.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.io.session.read_fd.as_fd()
    }
}

impl io::Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl io::Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.writer.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// The read half from [`TlsStream::split`].
struct TlsReader {
    io: HalfIo,
}

impl io::Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read(buf)
    }
}

/// The write half from [`TlsStream::split`].
struct TlsWriter {
    io: HalfIo,
    staging: Vec<u8>,
    _closer: CloseNotify,
}

impl io::Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write_all(buf)?;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        write_gathered(&self.io, &mut self.staging, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Both ends run in-process: our server side against OpenSSL's client (blocking `SslStream`),
    //! and, where both directions must move at once, against a client driven by our own I/O code.
    //! Keys and certificates are generated per test run into a temporary directory.

    use super::*;
    use openssl::asn1::Asn1Integer;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::Private;
    use openssl::ssl::SslFiletype;
    use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509Builder, X509NameBuilder};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "nbdforge-tls-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ec_key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn name(cn: &str) -> X509Name {
        let mut b = X509NameBuilder::new().unwrap();
        b.append_entry_by_text("O", "nbdforge test").unwrap();
        b.append_entry_by_text("CN", cn).unwrap();
        b.build()
    }

    static SERIAL: AtomicUsize = AtomicUsize::new(1);

    fn builder(subject: &X509NameRef, issuer: &X509NameRef, key: &PKey<Private>) -> X509Builder {
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let serial = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::SeqCst) as u32).unwrap();
        b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap()).unwrap();
        b.set_subject_name(subject).unwrap();
        b.set_issuer_name(issuer).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
        b
    }

    struct Ca {
        cert: X509,
        key: PKey<Private>,
    }

    impl Ca {
        fn new(cn: &str) -> Ca {
            let key = ec_key();
            let n = name(cn);
            let mut b = builder(&n, &n, &key);
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
            b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
            b.sign(&key, MessageDigest::sha256()).unwrap();
            Ca { cert: b.build(), key }
        }

        fn issue(&self, cn: &str, server: bool) -> (X509, PKey<Private>) {
            let key = ec_key();
            let mut b = builder(&name(cn), self.cert.subject_name(), &key);
            b.append_extension(BasicConstraints::new().build().unwrap()).unwrap();
            b.append_extension(KeyUsage::new().digital_signature().key_agreement().build().unwrap()).unwrap();
            let eku = if server {
                ExtendedKeyUsage::new().server_auth().build()
            } else {
                ExtendedKeyUsage::new().client_auth().build()
            };
            b.append_extension(eku.unwrap()).unwrap();
            if server {
                let san =
                    SubjectAlternativeName::new().dns(cn).build(&b.x509v3_context(Some(&self.cert), None)).unwrap();
                b.append_extension(san).unwrap();
            }
            b.sign(&self.key, MessageDigest::sha256()).unwrap();
            (b.build(), key)
        }
    }

    /// A certificate directory as nbdkit expects it, plus a client certificate and a second CA's
    /// client certificate next to it.
    struct Pki {
        dir: TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = TempDir::new();
            let ca = Ca::new("nbdforge test CA");
            let (server, server_key) = ca.issue("localhost", true);
            let (client, client_key) = ca.issue("client.example.com", false);
            let (rogue, rogue_key) = Ca::new("someone else's CA").issue("client.example.com", false);
            let write = |name: &str, data: Vec<u8>| fs::write(dir.path().join(name), data).unwrap();
            write("ca-cert.pem", ca.cert.to_pem().unwrap());
            write("server-cert.pem", server.to_pem().unwrap());
            write("server-key.pem", server_key.private_key_to_pem_pkcs8().unwrap());
            write("client-cert.pem", client.to_pem().unwrap());
            write("client-key.pem", client_key.private_key_to_pem_pkcs8().unwrap());
            write("rogue-cert.pem", rogue.to_pem().unwrap());
            write("rogue-key.pem", rogue_key.private_key_to_pem_pkcs8().unwrap());
            Pki { dir }
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
        fn options(&self, verify_peer: bool) -> TlsOptions {
            TlsOptions { mode: TlsMode::Require, certificates: Some(self.path().into()), psk_file: None, verify_peer }
        }
    }

    fn psk_options(file: &Path) -> TlsOptions {
        TlsOptions { mode: TlsMode::Require, certificates: None, psk_file: Some(file.into()), verify_peer: false }
    }

    const ALICE_KEY: &str = "7bd4a2e0b2fa9e7b1d0c4f5e3a6b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn psk_dir() -> (TempDir, PathBuf) {
        let dir = TempDir::new();
        let file = dir.path().join("keys.psk");
        fs::write(&file, format!("alice:{ALICE_KEY}\ncarol:00112233445566778899aabbccddeeff\n")).unwrap();
        (dir, file)
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Version {
        Tls12,
        Tls13,
    }

    fn client_builder(version: Version) -> SslContextBuilder {
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        if version == Version::Tls12 {
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        } else {
            b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
        }
        b
    }

    fn x509_client(pki: &Pki, version: Version, cert: Option<&str>) -> SslContext {
        let mut b = client_builder(version);
        b.set_ca_file(pki.path().join("ca-cert.pem")).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        if let Some(who) = cert {
            b.set_certificate_file(pki.path().join(format!("{who}-cert.pem")), SslFiletype::PEM).unwrap();
            b.set_private_key_file(pki.path().join(format!("{who}-key.pem")), SslFiletype::PEM).unwrap();
        }
        b.build()
    }

    fn psk_client(version: Version, user: &str, hex_key: &str) -> SslContext {
        let mut b = client_builder(version);
        b.set_verify(SslVerifyMode::NONE);
        b.set_ciphersuites("TLS_AES_128_GCM_SHA256").unwrap();
        b.set_cipher_list("ECDHE-PSK:PSK").unwrap();
        let user = user.to_string();
        let key = decode_hex(hex_key.as_bytes()).unwrap();
        b.set_psk_client_callback(move |_, _, identity, psk| {
            identity[..user.len()].copy_from_slice(user.as_bytes());
            identity[user.len()] = 0;
            psk[..key.len()].copy_from_slice(&key);
            Ok(key.len())
        });
        b.build()
    }

    /// Runs `server` on the accepted stream in a thread while an OpenSSL client connects with
    /// `client` and exchanges "ping"/"pong". Returns the server's result and the client's.
    fn exchange(server: &TlsContext, client: SslContext) -> (io::Result<Option<String>>, Result<(), String>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        thread::scope(|s| {
            let handle = s.spawn(move || -> io::Result<Option<String>> {
                let mut tls = server.accept(OwnedFd::from(ours))?;
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf)?;
                assert_eq!(&buf, b"ping");
                tls.write_all(b"pong")?;
                Ok(tls.identity())
            });
            let client_result = (|| -> Result<(), String> {
                let ssl = Ssl::new(&client).map_err(|e| e.to_string())?;
                let mut ssl = ssl;
                ssl.set_hostname("localhost").map_err(|e| e.to_string())?;
                let mut stream = ssl.connect(theirs).map_err(|e| e.to_string())?;
                stream.write_all(b"ping").map_err(|e| e.to_string())?;
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
                if &buf != b"pong" {
                    return Err(format!("client got {buf:?}"));
                }
                Ok(())
            })();
            (handle.join().unwrap(), client_result)
        })
    }

    #[test]
    fn tls_mode_parses_like_nbdkit() {
        assert_eq!("require".parse::<TlsMode>(), Ok(TlsMode::Require));
        assert_eq!("Force".parse::<TlsMode>(), Ok(TlsMode::Require));
        assert_eq!("ON".parse::<TlsMode>(), Ok(TlsMode::On));
        assert_eq!("yes".parse::<TlsMode>(), Ok(TlsMode::On));
        assert_eq!("0".parse::<TlsMode>(), Ok(TlsMode::Off));
        assert_eq!("maybe".parse::<TlsMode>(), Err("--tls=maybe: expected off, on or require".to_string()));
    }

    #[test]
    fn default_dirs_put_ours_before_nbdkits() {
        let dirs = default_certificate_dirs();
        let as_strings: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(as_strings, ["/etc/pki/nbdforge", "/etc/pki/nbdkit"]);
        } else if let Some(home) = home_dir() {
            assert_eq!(dirs[0], home.join(".pki/nbdforge"));
            assert_eq!(dirs.last().unwrap(), &home.join(".config/pki/nbdkit"));
            assert_eq!(dirs.len(), 4);
            assert_eq!(user_certificates_dir(), Some(home.join(".pki/nbdforge")));
        }
    }

    #[test]
    fn x509_tls13_and_tls12() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(false)).unwrap();
        assert!(server.description().contains("X.509 certificates from"), "{}", server.description());
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange(&server, x509_client(&pki, version, None));
            c.unwrap();
            // Without --tls-verify-peer no client certificate is asked for, so no identity.
            assert_eq!(s.unwrap(), None);
        }
    }

    #[test]
    fn client_sees_its_protocol_and_server_reports_it() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(false)).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        thread::scope(|s| {
            let h = s.spawn(move || {
                let tls = server.accept(OwnedFd::from(ours)).unwrap();
                tls.description()
            });
            let client = x509_client(&pki, Version::Tls13, None);
            let mut ssl = Ssl::new(&client).unwrap();
            ssl.set_hostname("localhost").unwrap();
            let stream = ssl.connect(theirs).unwrap();
            assert_eq!(stream.ssl().version_str(), "TLSv1.3");
            drop(stream);
            let description = h.join().unwrap();
            // The server's preference: AES-128-GCM.
            assert_eq!(description, "TLSv1.3 TLS_AES_128_GCM_SHA256");
        });
    }

    #[test]
    fn verify_peer_refuses_a_client_without_a_certificate() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(true)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange(&server, x509_client(&pki, version, None));
            let e = s.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("certificate"), "{e}");
            assert!(c.is_err());
        }
    }

    #[test]
    fn verify_peer_accepts_a_client_certificate_and_names_it() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(true)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange(&server, x509_client(&pki, version, Some("client")));
            c.unwrap();
            assert_eq!(s.unwrap().as_deref(), Some("CN=client.example.com,O=nbdforge test"));
        }
    }

    #[test]
    fn verify_peer_refuses_a_certificate_from_another_ca() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(true)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange(&server, x509_client(&pki, version, Some("rogue")));
            let e = s.unwrap_err().to_string();
            assert!(e.contains("client certificate refused: unable to get local issuer certificate"), "{e}");
            assert!(c.is_err());
        }
    }

    #[test]
    fn psk_tls13_and_tls12() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange(&server, psk_client(version, "alice", ALICE_KEY));
            c.unwrap();
            assert_eq!(s.unwrap().as_deref(), Some("alice"));
            let (s, c) = exchange(&server, psk_client(version, "carol", "00112233445566778899aabbccddeeff"));
            c.unwrap();
            assert_eq!(s.unwrap().as_deref(), Some("carol"));
        }
    }

    #[test]
    fn psk_wrong_key_is_refused() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let wrong = ALICE_KEY.replace('7', "8");
            let (s, c) = exchange(&server, psk_client(version, "alice", &wrong));
            let e = s.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(
                e.to_string()
                    .starts_with("TLS handshake failed: the client's key for 'alice' is not the one in the key file ("),
                "{e}"
            );
            assert!(c.is_err());
        }
    }

    #[test]
    fn psk_unknown_identity_is_refused_and_named() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange(&server, psk_client(version, "mallory", ALICE_KEY));
            let e = s.unwrap_err().to_string();
            assert!(e.contains("the client's PSK identity 'mallory' is not in the key file"), "{e}");
            assert!(c.is_err());
        }
    }

    #[test]
    fn psk_file_edits_are_picked_up() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let (s, _) = exchange(&server, psk_client(Version::Tls13, "bob", "0123456789abcdef"));
        assert!(s.is_err());
        let mut text = fs::read_to_string(&file).unwrap();
        text.push_str("bob:0123456789abcdef\n");
        fs::write(&file, text).unwrap();
        let (s, c) = exchange(&server, psk_client(Version::Tls13, "bob", "0123456789abcdef"));
        c.unwrap();
        assert_eq!(s.unwrap().as_deref(), Some("bob"));
    }

    #[test]
    fn x509_server_does_not_do_psk_and_psk_server_does_not_do_x509() {
        let pki = Pki::new();
        let (_dir, file) = psk_dir();
        let x509 = TlsContext::new(&pki.options(false)).unwrap();
        let psk = TlsContext::new(&psk_options(&file)).unwrap();
        // A PSK client that does not check certificates gets in, but unauthenticated.
        let (s, c) = exchange(&x509, psk_client(Version::Tls13, "alice", ALICE_KEY));
        c.unwrap();
        assert_eq!(s.unwrap(), None);
        let e = exchange(&psk, x509_client(&pki, Version::Tls13, None)).0.unwrap_err().to_string();
        assert!(e.starts_with("TLS handshake failed: the client offered no pre-shared key ("), "{e}");
        // --tls-psk overrides certificates, as in nbdkit.
        let both = TlsOptions { psk_file: Some(file.clone()), ..pki.options(false) };
        let both = TlsContext::new(&both).unwrap();
        assert!(both.description().starts_with("pre-shared keys from"));
    }

    fn error_of(options: &TlsOptions) -> String {
        match TlsContext::new(options) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn certificate_errors_name_the_file() {
        let pki = Pki::new();
        let dir = pki.path().display().to_string();
        fs::rename(pki.path().join("server-key.pem"), pki.path().join("saved-key.pem")).unwrap();
        assert_eq!(
            error_of(&pki.options(false)),
            format!("tls-certificates: {dir}/server-key.pem: No such file or directory")
        );
        // A key that belongs to another certificate.
        fs::copy(pki.path().join("client-key.pem"), pki.path().join("server-key.pem")).unwrap();
        assert_eq!(
            error_of(&pki.options(false)),
            format!("tls-certificates: {dir}/server-key.pem: the private key does not match the certificate in {dir}/server-cert.pem")
        );
        fs::write(pki.path().join("server-key.pem"), "hello\n").unwrap();
        let e = error_of(&pki.options(false));
        assert!(e.starts_with(&format!("tls-certificates: {dir}/server-key.pem: not a PEM private key")), "{e}");
        fs::write(
            pki.path().join("server-key.pem"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = error_of(&pki.options(false));
        assert!(e.contains("server-key.pem: the private key is encrypted"), "{e}");
        fs::rename(pki.path().join("saved-key.pem"), pki.path().join("server-key.pem")).unwrap();
        TlsContext::new(&pki.options(false)).unwrap();

        fs::write(pki.path().join("server-cert.pem"), "").unwrap();
        let e = error_of(&pki.options(false));
        assert_eq!(e, format!("tls-certificates: {dir}/server-cert.pem: no certificate in the file (expected -----BEGIN CERTIFICATE-----)"));

        let missing = TlsOptions { certificates: Some(pki.path().join("nope")), ..pki.options(false) };
        assert_eq!(error_of(&missing), format!("tls-certificates: {dir}/nope: No such file or directory"));
    }

    #[test]
    fn ca_is_needed_only_to_verify_clients() {
        let pki = Pki::new();
        let dir = pki.path().display().to_string();
        fs::remove_file(pki.path().join("ca-cert.pem")).unwrap();
        TlsContext::new(&pki.options(false)).unwrap();
        assert_eq!(
            error_of(&pki.options(true)),
            format!("tls-certificates: {dir}/ca-cert.pem: No such file or directory (needed by --tls-verify-peer)")
        );
    }

    #[test]
    fn psk_file_errors_name_the_file_and_line() {
        let dir = TempDir::new();
        let file = dir.path().join("keys.psk");
        let path = file.display().to_string();
        let cases = [
            ("alice:00ff\n\nbob 1234\n", "line 3: expected username:hexkey"),
            ("alice:00ff\nbob:12zz\n", "line 2: the key of 'bob' is not hexadecimal (at character 3)"),
            ("alice:00f\n", "line 1: the key of 'alice' has an odd number of hex digits (3)"),
            ("alice:\n", "line 1: the key of 'alice' is empty (expected username:hexkey)"),
            (":00ff\n", "line 1: expected username:hexkey, the username is empty"),
            ("\n\n", "the file holds no keys (expected username:hexkey lines, see psktool(1))"),
        ];
        for (text, why) in cases {
            fs::write(&file, text).unwrap();
            assert_eq!(error_of(&psk_options(&file)), format!("tls-psk: {path}: {why}"), "for {text:?}");
        }
        // CRLF line ends and duplicate names are accepted (the first key wins, as in GnuTLS).
        fs::write(&file, "alice:00ff\r\nalice:11ee\r\n").unwrap();
        TlsContext::new(&psk_options(&file)).unwrap();

        let missing = dir.path().join("missing.psk");
        assert_eq!(
            error_of(&psk_options(&missing)),
            format!("tls-psk: {}: No such file or directory", missing.display())
        );
        assert_eq!(
            error_of(&psk_options(dir.path())),
            format!("tls-psk: {}: is a directory, expected a file of username:hexkey lines", dir.path().display())
        );
        if !nix::unistd::geteuid().is_root() {
            fs::write(&file, "alice:00ff\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o000)).unwrap();
            assert_eq!(error_of(&psk_options(&file)), format!("tls-psk: {path}: Permission denied"));
        }
    }

    /// A client on our own I/O code, so that both ends can read and write at once.
    fn our_client(context: &SslContext, read: OwnedFd, write: OwnedFd) -> io::Result<TlsStream> {
        let ssl = Ssl::new(context).unwrap();
        handshake(
            ssl,
            Transport::new(Arc::new(read), Arc::new(write))?,
            Side::Client,
            Some(Duration::from_secs(10)),
            false,
        )
    }

    fn pattern(offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let n = offset + i as u64;
            *b = (n ^ (n >> 8) ^ (n >> 17)) as u8;
        }
    }

    /// Sends `total` bytes as "replies": a 16-byte header and a body, one write_vectored each.
    fn send_replies(mut writer: Box<dyn Write + Send>, total: u64) {
        let mut offset = 0;
        let mut body = vec![0u8; 1 << 20];
        let mut round = 0usize;
        while offset < total {
            // Bodies of varied sizes, so records start and end everywhere.
            let left = (total - offset) as usize;
            let len = [1 << 20, 4096, 65536 + 7, 1, 200_000][round % 5].min(left.saturating_sub(16));
            round += 1;
            let mut header = [0u8; 16];
            pattern(offset, &mut header);
            pattern(offset + 16, &mut body[..len]);
            let header = &header[..left.min(16)];
            let n = writer.write_vectored(&[IoSlice::new(header), IoSlice::new(&body[..len])]).unwrap();
            assert_eq!(n, header.len() + len);
            offset += n as u64;
        }
    }

    fn receive_and_check(mut reader: Box<dyn Read + Send>, total: u64) {
        let mut offset = 0;
        let mut buf = vec![0u8; 300_000];
        let mut expect = vec![0u8; 300_000];
        while offset < total {
            let want = buf.len().min((total - offset) as usize);
            reader.read_exact(&mut buf[..want]).unwrap();
            pattern(offset, &mut expect[..want]);
            assert!(buf[..want] == expect[..want], "data differs near offset {offset}");
            offset += want as u64;
        }
    }

    #[test]
    fn split_halves_move_64_mib_each_way_at_once() {
        const TOTAL: u64 = 64 << 20;
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let client = psk_client(Version::Tls13, "alice", ALICE_KEY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        let started = Instant::now();
        thread::scope(|s| {
            let srv = s.spawn(|| server.accept(OwnedFd::from(ours)).unwrap());
            let cli = our_client(&client, theirs.into(), theirs2.into()).unwrap();
            let srv = srv.join().unwrap();
            let (sr, sw) = srv.split();
            let (cr, cw) = cli.split();
            let threads = [
                s.spawn(move || send_replies(sw, TOTAL)),
                s.spawn(move || receive_and_check(sr, TOTAL)),
                s.spawn(move || send_replies(cw, TOTAL)),
                s.spawn(move || receive_and_check(cr, TOTAL)),
            ];
            for t in threads {
                t.join().unwrap();
            }
        });
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn pipes_work_as_the_two_descriptors_of_dash_s() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(false)).unwrap();
        let client = x509_client(&pki, Version::Tls13, None);
        let (c2s_read, c2s_write) = nix::unistd::pipe().unwrap();
        let (s2c_read, s2c_write) = nix::unistd::pipe().unwrap();
        thread::scope(|s| {
            let srv = s.spawn(|| {
                let (mut r, mut w) = server.accept_pair(c2s_read, s2c_write).unwrap().split();
                let mut buf = vec![0u8; 1 << 20];
                r.read_exact(&mut buf).unwrap();
                w.write_all(&buf).unwrap();
            });
            let mut cli = our_client(&client, s2c_read, c2s_write).unwrap();
            let mut data = vec![0u8; 1 << 20];
            pattern(5, &mut data);
            cli.write_all(&data).unwrap();
            let mut back = vec![0u8; 1 << 20];
            cli.read_exact(&mut back).unwrap();
            assert!(back == data);
            srv.join().unwrap();
        });
    }

    #[test]
    fn dropping_the_writer_sends_close_notify_while_the_reader_waits() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let client = psk_client(Version::Tls13, "alice", ALICE_KEY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        thread::scope(|s| {
            let srv = s.spawn(|| server.accept(OwnedFd::from(ours)).unwrap());
            let cli = our_client(&client, theirs.into(), theirs2.into()).unwrap();
            let (mut sr, sw) = srv.join().unwrap().split();
            let reader = s.spawn(move || {
                let mut buf = [0u8; 10];
                let n = sr.read(&mut buf).unwrap();
                (n, sr)
            });
            thread::sleep(Duration::from_millis(100));
            // The reader is blocked in read; dropping the writer must neither wait for it nor hang.
            let t = Instant::now();
            drop(sw);
            assert!(t.elapsed() < Duration::from_secs(1));
            let (mut cr, cw) = cli.split();
            let mut buf = [0u8; 10];
            // close_notify: a clean end of stream for the client.
            assert_eq!(cr.read(&mut buf).unwrap(), 0);
            // The client's close_notify in turn ends the server's read.
            drop(cw);
            let (n, _sr) = reader.join().unwrap();
            assert_eq!(n, 0);
        });
    }

    #[test]
    fn read_timeout_limits_reads() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let client = psk_client(Version::Tls13, "alice", ALICE_KEY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        thread::scope(|s| {
            let srv = s.spawn(|| server.accept(OwnedFd::from(ours)).unwrap());
            let _cli = our_client(&client, theirs.into(), theirs2.into()).unwrap();
            let mut srv = srv.join().unwrap();
            // The socket's timeout was for the handshake only.
            assert_eq!(srv.reader.io.read_timeout.get(), None);
            srv.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let t = Instant::now();
            let e = srv.read(&mut [0u8; 4]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(t.elapsed() >= Duration::from_millis(290) && t.elapsed() < Duration::from_secs(3));
            srv.set_read_timeout(None).unwrap();
            srv.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            assert_eq!(srv.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::TimedOut);
        });
    }

    #[test]
    fn handshake_times_out_on_a_silent_client() {
        let (_dir, file) = psk_dir();
        let mut server = TlsContext::new(&psk_options(&file)).unwrap();
        server.set_handshake_timeout(Some(Duration::from_millis(200)));
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let e = server.accept(OwnedFd::from(ours)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // The socket's SO_RCVTIMEO (how the negotiation code applies its deadline) limits it too.
        server.set_handshake_timeout(None);
        let (ours, _theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let t = Instant::now();
        let e = server.accept(OwnedFd::from(ours)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn garbage_instead_of_a_client_hello_is_an_error() {
        let (_dir, file) = psk_dir();
        let server = TlsContext::new(&psk_options(&file)).unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"IHAVEOPT\0\0\0\x05\0\0\0\0").unwrap();
        drop(theirs);
        let e = server.accept(OwnedFd::from(ours)).unwrap_err();
        assert!(e.to_string().starts_with("TLS handshake failed"), "{e}");
    }

    #[test]
    fn rfc4514_escapes() {
        let mut b = X509NameBuilder::new().unwrap();
        b.append_entry_by_text("C", "US").unwrap();
        b.append_entry_by_text("O", "Acme, Inc.").unwrap();
        b.append_entry_by_text("CN", "#host ").unwrap();
        assert_eq!(rfc4514(&b.build()), "CN=\\#host\\ ,O=Acme\\, Inc.,C=US");
    }
}
