//! NBD URIs of an [`Endpoint`], for the captive command's `$uri`/`$nbd` and for printing
//! (`--print-uri`), in the form the NBD project documents (nbd_connect_uri(3)):
//! `nbd://localhost:10809/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`, `nbd+vsock://1:PORT/EXPORT`,
//! with `nbds` when TLS is required. When TLS is required the URI also carries what a local client
//! needs to complete the handshake, so that `--run 'nbdinfo "$uri"'` works as it does without
//! TLS: the PSK file and its first user (`nbds+unix://alice@/?socket=...&tls-psk-file=FILE`), or
//! the certificate directory (`tls-certificates=DIR`, which holds the CA certificate).

use nbdforge_server::{TlsMode, TlsOptions};

use crate::sockets::Endpoint;

/// Percent-encodes everything but unreserved characters and those in `keep`.
fn encode(s: &str, keep: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "-._~".contains(c) || keep.contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first user named in a PSK file (`user:hexkey` lines).
fn first_psk_user(file: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| l.split_once(':').map(|(u, _)| u.trim().to_string())).filter(|u| !u.is_empty())
}

/// The URI of `export` at `endpoint`, or `None` when there is no address to give (socket
/// activation).
pub fn uri(endpoint: &Endpoint, export: &str, tls: &TlsOptions) -> Option<String> {
    let require = tls.mode == TlsMode::Require;
    let s = if require { "s" } else { "" };
    let path = if export.is_empty() { String::new() } else { format!("/{}", encode(export, "/")) };
    let mut user = String::new();
    let mut query: Vec<String> = Vec::new();
    if require {
        if let Some(psk) = &tls.psk_file {
            if let Some(u) = first_psk_user(psk) {
                user = format!("{}@", encode(&u, ""));
            }
            query.push(format!("tls-psk-file={}", encode(&psk.to_string_lossy(), "/")));
        } else if let Some(dir) = &tls.certificates {
            query.push(format!("tls-certificates={}", encode(&dir.to_string_lossy(), "/")));
        }
    }
    let uri = match endpoint {
        Endpoint::Tcp { host, port } => format!("nbd{s}://{user}{host}:{port}{path}"),
        Endpoint::Unix(sock) => {
            query.insert(0, format!("socket={}", encode(&sock.to_string_lossy(), "/")));
            format!("nbd{s}+unix://{user}/{}", path.trim_start_matches('/'))
        }
        // CID 1 is the local host; a guest reaches the host as CID 2.
        Endpoint::Vsock(port) => format!("nbd{s}+vsock://{user}1:{port}{path}"),
        Endpoint::Activated => return None,
    };
    Some(if query.is_empty() { uri } else { format!("{uri}?{}", query.join("&")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: TlsMode) -> TlsOptions {
        TlsOptions { mode, ..TlsOptions::default() }
    }

    #[test]
    fn forms() {
        let tcp = Endpoint::Tcp { host: "localhost".into(), port: 10809 };
        assert_eq!(uri(&tcp, "", &tls(TlsMode::Off)).unwrap(), "nbd://localhost:10809");
        assert_eq!(uri(&tcp, "a b/c?", &tls(TlsMode::Require)).unwrap(), "nbds://localhost:10809/a%20b/c%3F");
        let unix = Endpoint::Unix("/tmp/x y/sock".into());
        assert_eq!(uri(&unix, "", &tls(TlsMode::Off)).unwrap(), "nbd+unix:///?socket=/tmp/x%20y/sock");
        assert_eq!(uri(&unix, "foo", &tls(TlsMode::On)).unwrap(), "nbd+unix:///foo?socket=/tmp/x%20y/sock");
        assert_eq!(uri(&Endpoint::Activated, "", &tls(TlsMode::Off)), None);
        let certs = TlsOptions { mode: TlsMode::Require, certificates: Some("/pki".into()), ..TlsOptions::default() };
        assert_eq!(uri(&unix, "", &certs).unwrap(), "nbds+unix:///?socket=/tmp/x%20y/sock&tls-certificates=/pki");
    }
}
