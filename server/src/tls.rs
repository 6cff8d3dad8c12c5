//! placeholder: TLS (owned by the TLS developer). Interface the rest of the server uses:
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

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

/// Loaded credentials, shared by all connections.
pub struct TlsContext {}

impl TlsContext {
    /// Loads certificates or the PSK file. Errors name the file and what is wrong with it.
    pub fn new(options: &TlsOptions) -> Result<TlsContext, String> {
        let _ = options;
        todo!()
    }

    /// Runs the server side of the TLS handshake on a connected socket (after the NBD STARTTLS
    /// reply was sent). Nothing may have read ahead on the socket.
    pub fn accept(&self, socket: OwnedFd) -> io::Result<TlsStream> {
        let _ = socket;
        todo!()
    }
}

/// An established TLS session. Blocking `Read + Write` for the rest of the negotiation; `split`
/// gives halves that one reader thread and many writer threads (serialised by the caller) can use at
/// the same time.
pub struct TlsStream {}

impl TlsStream {
    /// The PSK identity or client certificate subject.
    pub fn identity(&self) -> Option<String> {
        todo!()
    }

    /// Read and write halves for the transmission phase.
    pub fn split(self) -> (Box<dyn io::Read + Send>, Box<dyn io::Write + Send>) {
        todo!()
    }
}

impl io::Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

impl io::Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
