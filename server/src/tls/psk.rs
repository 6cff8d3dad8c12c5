//! Pre-shared keys (`--tls-psk`): the psktool key file (`username:hexkey` lines), parsed with
//! errors that name the line, and re-read when it changes so keys can be added without a restart;
//! and the OpenSSL server callback `context` installs, which looks up the client's identity in it.
//! The callback leaves a [`PskNote`] on the connection's `SSL` so that `handshake` can name the
//! client, or say why it was refused.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContextBuilder};

use super::errors::io_reason;

/// What the handshake learnt about the client, kept on the `SSL` object by the callbacks.
#[derive(Debug, Clone)]
pub(super) enum PskNote {
    Known(String),
    Unknown(String),
    FileError(String),
}

pub(super) fn psk_note_index() -> Index<Ssl, PskNote> {
    static INDEX: OnceLock<Index<Ssl, PskNote>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL: allocating an ex_data index"))
}

/// The suites pre-shared keys work with, for both sides.
pub(super) fn set_psk_ciphers(builder: &mut SslContextBuilder) -> Result<(), ErrorStack> {
    // TLS 1.3 gives keys from the callbacks the SHA-256 hash, so only SHA-256 suites can use them.
    builder.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256")?;
    // TLS 1.2: ECDHE-PSK (forward secrecy) first, then plain PSK (what GnuTLS's NORMAL:+PSK offers).
    builder.set_cipher_list("ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-AES256-CBC-SHA384:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305")
}

pub(super) fn set_psk(builder: &mut SslContextBuilder, keys: Arc<PskFile>) -> Result<(), ErrorStack> {
    set_psk_ciphers(builder)?;
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
pub(super) struct PskFile {
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
    pub(super) fn load(path: &Path) -> Result<PskFile, String> {
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

    pub(super) fn lookup(&self, identity: &str) -> Result<Option<Vec<u8>>, String> {
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

pub(super) fn decode_hex(hex: &[u8]) -> Result<Vec<u8>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::*;
    use crate::tls::TlsContext;
    use std::io;

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
}
