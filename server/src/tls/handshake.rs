//! The server side of the TLS handshake, driven without blocking over a `transport` so that it
//! keeps to the deadline the negotiation code sets; on success it wraps the session in a
//! [`TlsStream`]. It also turns a failed handshake into an error in the user's terms (the client's
//! unknown PSK identity, why its certificate was refused) from what the `psk` callback and the
//! `x509` verification left on the `SSL`, and says who the client proved to be ([`TlsPeer`]) after
//! a successful one.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{self, sockopt};
use openssl::ssl::{self, ErrorCode, Ssl, SslStream};
use openssl::x509::{X509NameRef, X509VerifyResult};

use super::errors::reasons;
use super::psk::{psk_note_index, PskNote};
use super::stream::TlsStream;
use super::transport::{wait, Need, Transport};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Side {
    Server,
    Client,
}

/// Runs a handshake on a fresh `SSL`, as the server or (the nbd plugin, and tests) the client.
pub(super) fn handshake(
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
            Err(e) => return Err(handshake_error(&e, stream.ssl(), side, psk)),
        };
        let (fd, events, each) = match need {
            Need::Read => (&read_fd, PollFlags::POLLIN, read_timeout),
            Need::Write => (&write_fd, PollFlags::POLLOUT, write_timeout),
        };
        let wait_until = earliest(deadline, each.map(|t| Instant::now() + t));
        wait(fd.as_fd(), events, wait_until).map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    }

    let peer = match side {
        Side::Server => peer_of(stream.ssl()),
        Side::Client => TlsPeer::default(),
    };
    tracing::debug!(
        "TLS handshake done: {} {}{}",
        stream.ssl().version_str(),
        stream.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"),
        peer.identity.as_deref().map(|i| format!(", client {i}")).unwrap_or_default()
    );
    Ok(TlsStream::new(stream, read_fd, write_fd, peer))
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
fn handshake_error(e: &ssl::Error, ssl: &ssl::SslRef, side: Side, psk: bool) -> io::Error {
    if side == Side::Client {
        return client_handshake_error(e, ssl);
    }
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

/// The same for the client side: the server's certificate refused, or OpenSSL's reasons.
fn client_handshake_error(e: &ssl::Error, ssl: &ssl::SslRef) -> io::Error {
    let verify = ssl.verify_result();
    let why = if verify != X509VerifyResult::OK {
        format!("the server's certificate was refused: {}", verify.error_string())
    } else if let Some(stack) = e.ssl_error() {
        reasons(stack)
    } else {
        match e.io_error() {
            Some(io) => io.to_string(),
            None => "the server closed the connection".into(),
        }
    };
    io::Error::new(io::ErrorKind::PermissionDenied, format!("TLS handshake failed: {why}"))
}

/// Who the client proved to be ([`TlsPeer`], the SDK's type: what plugins learn from it). Distinguished
/// names are in RFC 4514 form, most specific first, as GnuTLS and OpenSSL's `-nameopt RFC2253` print
/// them: `CN=client.example.com,O=Example,C=US`. The identity is the PSK username with
/// `--tls-psk`; with `--tls-verify-peer` the verified client certificate's subject (the same string
/// as `dn`). The DNs are set only for a verified client certificate, as in nbdkit.
pub use nbdforge_api::TlsPeer;

/// What the handshake on `ssl` established: the PSK callback's note, or the verified client
/// certificate. The server only asks for a certificate under `--tls-verify-peer`.
fn peer_of(ssl: &ssl::SslRef) -> TlsPeer {
    if let Some(PskNote::Known(identity)) = ssl.ex_data(psk_note_index()) {
        return TlsPeer { identity: Some(identity.clone()), dn: None, issuer_dn: None };
    }
    match ssl.peer_certificate() {
        Some(cert) if ssl.verify_result() == X509VerifyResult::OK => {
            let dn = rfc4514(cert.subject_name());
            TlsPeer { identity: Some(dn.clone()), dn: Some(dn), issuer_dn: Some(rfc4514(cert.issuer_name())) }
        }
        _ => TlsPeer::default(),
    }
}

/// A name in RFC 4514 form: attributes in reverse order, special characters escaped.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::*;
    use crate::tls::TlsContext;
    use openssl::x509::X509NameBuilder;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

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
    fn peer_names_a_verified_certificate_and_its_issuer() {
        let pki = Pki::new();
        let server = TlsContext::new(&pki.options(true)).unwrap();
        for version in [Version::Tls13, Version::Tls12] {
            let (s, c) = exchange_peer(&server, x509_client(&pki, version, Some("client")));
            c.unwrap();
            let subject = "CN=client.example.com,O=nbdforge test".to_string();
            let expected = TlsPeer {
                identity: Some(subject.clone()),
                dn: Some(subject),
                issuer_dn: Some("CN=nbdforge test CA,O=nbdforge test".into()),
            };
            assert_eq!(s.unwrap(), expected);
        }
    }

    #[test]
    fn peer_has_no_names_for_psk_or_without_verify_peer() {
        let (_dir, file) = psk_dir();
        let psk = TlsContext::new(&psk_options(&file)).unwrap();
        let (s, c) = exchange_peer(&psk, psk_client(Version::Tls13, "alice", ALICE_KEY));
        c.unwrap();
        assert_eq!(s.unwrap(), TlsPeer { identity: Some("alice".into()), dn: None, issuer_dn: None });

        // Without --tls-verify-peer no certificate is asked for, even from a client that has one.
        let pki = Pki::new();
        let x509 = TlsContext::new(&pki.options(false)).unwrap();
        let (s, c) = exchange_peer(&x509, x509_client(&pki, Version::Tls13, Some("client")));
        c.unwrap();
        assert_eq!(s.unwrap(), TlsPeer::default());
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
