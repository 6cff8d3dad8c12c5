//! The client side of TLS, for layers that connect to another NBD server (the nbd plugin's
//! `tls=`): the same session and stream machinery as the server side (`handshake`, `stream`), with
//! client credentials: a psktool key file and a user name, or an X.509 directory in libnbd's
//! layout (`ca-cert.pem`, optionally `client-cert.pem` and `client-key.pem`).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion};

use super::context::DEFAULT_HANDSHAKE_TIMEOUT;
use super::errors::reasons;
use super::handshake::{handshake, Side};
use super::psk::{set_psk_ciphers, PskFile};
use super::stream::TlsStream;
use super::transport::Transport;

/// What a client presents and checks.
#[derive(Debug, Clone, Default)]
pub struct TlsClientOptions {
    /// A psktool key file: PSK instead of certificates.
    pub psk_file: Option<PathBuf>,
    /// The PSK identity, or the user name; default the login name of the process's user.
    pub username: Option<String>,
    /// Directory with `ca-cert.pem` (and `client-cert.pem`, `client-key.pem` to present one);
    /// without it the system's CAs verify the server.
    pub certificates: Option<PathBuf>,
    /// Verify the server's certificate and name.
    pub verify: bool,
}

/// Loaded client credentials.
pub struct TlsClient {
    ssl: SslContext,
    psk: bool,
    verify: bool,
}

impl TlsClient {
    /// Loads the credentials. Errors name the parameter and the file.
    pub fn new(options: &TlsClientOptions) -> Result<TlsClient, String> {
        let setup = |e: openssl::error::ErrorStack| format!("tls: setting up OpenSSL: {}", reasons(&e));
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(setup)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(setup)?;
        if let Some(file) = &options.psk_file {
            let user = match &options.username {
                Some(u) => u.clone(),
                None => login_name()?,
            };
            let keys = PskFile::load(file)?;
            let key = keys
                .lookup(&user)?
                .ok_or_else(|| format!("tls-psk: {}: no key for user '{user}' (set tls-username=)", file.display()))?;
            set_psk_ciphers(&mut b).map_err(setup)?;
            b.set_verify(SslVerifyMode::NONE);
            b.set_psk_client_callback(move |_, _, identity, psk| {
                if user.len() >= identity.len() || key.len() > psk.len() {
                    return Ok(0);
                }
                identity[..user.len()].copy_from_slice(user.as_bytes());
                identity[user.len()] = 0;
                psk[..key.len()].copy_from_slice(&key);
                Ok(key.len())
            });
        } else {
            match &options.certificates {
                Some(dir) => {
                    let ca = dir.join("ca-cert.pem");
                    b.set_ca_file(&ca).map_err(|e| format!("tls-certificates: {}: {}", ca.display(), reasons(&e)))?;
                    let (cert, key) = (dir.join("client-cert.pem"), dir.join("client-key.pem"));
                    if cert.exists() && key.exists() {
                        b.set_certificate_chain_file(&cert)
                            .map_err(|e| format!("tls-certificates: {}: {}", cert.display(), reasons(&e)))?;
                        b.set_private_key_file(&key, SslFiletype::PEM)
                            .map_err(|e| format!("tls-certificates: {}: {}", key.display(), reasons(&e)))?;
                    }
                }
                None => b.set_default_verify_paths().map_err(setup)?,
            }
            b.set_verify(if options.verify { SslVerifyMode::PEER } else { SslVerifyMode::NONE });
        }
        Ok(TlsClient { ssl: b.build(), psk: options.psk_file.is_some(), verify: options.verify })
    }

    /// Runs the client side of the handshake on a connected socket, after the server's ACK to
    /// NBD_OPT_STARTTLS. `hostname`, for a TCP server, is sent and (with certificates and
    /// verification) checked against the server's certificate.
    pub fn connect(&self, socket: OwnedFd, hostname: Option<&str>) -> io::Result<TlsStream> {
        let fd = Arc::new(socket);
        let transport = Transport::new(fd.clone(), fd)?;
        let mut ssl = Ssl::new(&self.ssl).map_err(|e| io::Error::other(format!("TLS: {}", reasons(&e))))?;
        if let Some(host) = hostname.filter(|_| !self.psk) {
            let _ = ssl.set_hostname(host);
            if self.verify {
                ssl.param_mut().set_host(host).map_err(|e| io::Error::other(format!("TLS: {}", reasons(&e))))?;
            }
        }
        handshake(ssl, transport, Side::Client, Some(DEFAULT_HANDSHAKE_TIMEOUT), self.psk)
    }
}

/// The login name of the process's user: libnbd's default PSK identity.
fn login_name() -> Result<String, String> {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        _ => Err(format!("tls-psk: uid {uid} has no user name; set tls-username=")),
    }
}
