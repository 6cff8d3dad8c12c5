//! X.509 credentials: finding a certificate directory (`--tls-certificates`, or the default
//! directories from `options`) and loading it into the OpenSSL context `context` builds: the
//! server's certificate chain and key, the CA that client certificates must chain to and an optional
//! revocation list, and whether clients must present a certificate (`--tls-verify-peer`). The
//! subject of a verified client certificate becomes the peer's identity in `handshake`.

use std::fs;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::pkey::PKey;
use openssl::ssl::{self, SslContextBuilder, SslVerifyMode};
use openssl::stack::Stack;
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Name, X509};

use super::errors::{io_reason, reasons};
use super::options::default_certificate_dirs;

pub(super) fn find_default_certificates() -> Result<PathBuf, String> {
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
pub(super) fn load_x509(builder: &mut SslContextBuilder, dir: &Path, verify_peer: bool) -> Result<(), String> {
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
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| io_reason(&e))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::*;
    use crate::tls::{TlsContext, TlsOptions};
    use std::io;

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
}
