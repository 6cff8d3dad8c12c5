//! TLS for NBD connections (`--tls`, `--tls-certificates`, `--tls-psk`, `--tls-verify-peer`).
//!
//! [`TlsContext`] loads the credentials once at startup: an X.509 directory in the layout nbdkit and
//! qemu use, or a psktool key file. After the negotiation code has sent the ACK to `NBD_OPT_STARTTLS`
//! it hands the raw socket to [`TlsContext::accept`], which runs the server side of the handshake
//! and returns a [`TlsStream`] for the rest of the negotiation; [`TlsStream::split`] then gives the
//! halves the transmission phase uses (one reader thread, writers serialised by the caller).
//! [`TlsStream::peer`] says who the client proved to be ([`TlsPeer`]: its PSK identity, or its
//! verified certificate's subject and issuer DNs).
//!
//! Why the I/O looks the way it does: an OpenSSL `SSL` object must never be used by two threads at
//! once, yet the reader waits for the next request while workers send replies. So the session sits
//! behind a mutex and the socket is only ever read or written without blocking (`MSG_DONTWAIT`): a
//! thread holds the mutex only while OpenSSL runs, and waits for the socket with `poll` after
//! releasing it. A reader idling between requests therefore never delays a reply, and a writer
//! stuck on a full socket never stops the reader from draining requests.
//!
//! The files, from the command line down to the socket:
//! - `options`: the command-line settings and where certificates are looked for by default;
//! - `client`: [`TlsClient`], the client side for layers that connect to another server;
//! - `context`: [`TlsContext`], the OpenSSL settings every connection shares, and accepting;
//! - `x509`: loading a certificate directory (server key and chain, CA, CRL, `--tls-verify-peer`);
//! - `psk`: the psktool key file, re-read when it changes, and the callback that looks keys up;
//! - `handshake`: running the handshake without blocking, explaining failures, [`TlsPeer`];
//! - `stream`: [`TlsStream`] and its halves, sharing one session behind a mutex;
//! - `transport`: the non-blocking descriptors under OpenSSL, and waiting on them with `poll`;
//! - `errors`: how OpenSSL's and the system's errors are worded for users.

mod client;
mod context;
mod errors;
mod handshake;
mod options;
mod psk;
mod stream;
#[cfg(test)]
mod testing;
mod transport;
mod x509;

pub use client::{TlsClient, TlsClientOptions};
pub use context::{TlsContext, DEFAULT_HANDSHAKE_TIMEOUT};
pub use handshake::TlsPeer;
pub use options::{
    default_certificate_dirs, user_certificates_dir, TlsMode, TlsOptions, NBDKIT_ROOT_CERTIFICATES_DIR,
    ROOT_CERTIFICATES_DIR,
};
pub use stream::TlsStream;
