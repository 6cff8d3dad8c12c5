//! What the tests of every file in `tls` share. Both ends run in-process: our server side against
//! OpenSSL's client (blocking `SslStream`), and, where both directions must move at once (in
//! `stream`), against a client driven by our own I/O code. Keys and certificates are generated per
//! test run into a temporary directory.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509NameRef, X509};

use super::psk::decode_hex;
use super::{TlsContext, TlsMode, TlsOptions, TlsPeer};

pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
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
    pub(super) fn path(&self) -> &Path {
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
            let san = SubjectAlternativeName::new().dns(cn).build(&b.x509v3_context(Some(&self.cert), None)).unwrap();
            b.append_extension(san).unwrap();
        }
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }
}

/// A certificate directory as nbdkit expects it, plus a client certificate and a second CA's
/// client certificate next to it.
pub(super) struct Pki {
    dir: TempDir,
}

impl Pki {
    pub(super) fn new() -> Pki {
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
    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }
    pub(super) fn options(&self, verify_peer: bool) -> TlsOptions {
        TlsOptions { mode: TlsMode::Require, certificates: Some(self.path().into()), psk_file: None, verify_peer }
    }
}

pub(super) fn psk_options(file: &Path) -> TlsOptions {
    TlsOptions { mode: TlsMode::Require, certificates: None, psk_file: Some(file.into()), verify_peer: false }
}

pub(super) const ALICE_KEY: &str = "7bd4a2e0b2fa9e7b1d0c4f5e3a6b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7";

pub(super) fn psk_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let file = dir.path().join("keys.psk");
    fs::write(&file, format!("alice:{ALICE_KEY}\ncarol:00112233445566778899aabbccddeeff\n")).unwrap();
    (dir, file)
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Version {
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

pub(super) fn x509_client(pki: &Pki, version: Version, cert: Option<&str>) -> SslContext {
    let mut b = client_builder(version);
    b.set_ca_file(pki.path().join("ca-cert.pem")).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    if let Some(who) = cert {
        b.set_certificate_file(pki.path().join(format!("{who}-cert.pem")), SslFiletype::PEM).unwrap();
        b.set_private_key_file(pki.path().join(format!("{who}-key.pem")), SslFiletype::PEM).unwrap();
    }
    b.build()
}

pub(super) fn psk_client(version: Version, user: &str, hex_key: &str) -> SslContext {
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
/// `client` and exchanges "ping"/"pong". Returns the server's result (the client's identity) and
/// the client's.
pub(super) fn exchange(server: &TlsContext, client: SslContext) -> (io::Result<Option<String>>, Result<(), String>) {
    let (server_result, client_result) = exchange_peer(server, client);
    (server_result.map(|peer| peer.identity), client_result)
}

/// [`exchange`], returning all the server learnt about the client.
pub(super) fn exchange_peer(server: &TlsContext, client: SslContext) -> (io::Result<TlsPeer>, Result<(), String>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let handle = s.spawn(move || -> io::Result<TlsPeer> {
            let mut tls = server.accept(OwnedFd::from(ours))?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf)?;
            assert_eq!(&buf, b"ping");
            tls.write_all(b"pong")?;
            Ok(tls.peer().clone())
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

pub(super) fn error_of(options: &TlsOptions) -> String {
    match TlsContext::new(options) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}
