//! [`TlsContext`]: the credentials and OpenSSL settings every connection shares, built once at
//! startup from [`TlsOptions`], and the entry points that run a connection's handshake. The
//! credentials themselves are read by `x509` (a certificate directory) or `psk` (a key file); the
//! handshake is in `handshake` and the stream it yields in `stream`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode, SslVersion,
};

use super::errors::reasons;
use super::handshake::{handshake, Side};
use super::options::TlsOptions;
use super::psk::{set_psk, PskFile};
use super::stream::TlsStream;
use super::transport::Transport;
use super::x509::{find_default_certificates, load_x509};

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

impl TlsContext {
    /// Loads certificates or the PSK file. Errors name the file and what is wrong with it.
    ///
    /// As in nbdkit, `--tls-psk` overrides certificates. Without `--tls-certificates` the
    /// [`default_certificate_dirs`](super::default_certificate_dirs) are searched and the first
    /// holding `server-cert.pem` and `server-key.pem` is used. `options.mode` is not looked at: the
    /// caller decides what a failure means (nbdkit exits under `--tls=require` and warns and turns
    /// TLS off under `--tls=on`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

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
}
