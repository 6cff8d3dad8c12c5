//! The `tls-fallback` filter: with `--tls=on`, serves plaintext clients a small read-only disk
//! holding a message instead of the real export, which only TLS clients reach.
//!
//! A plaintext client never opens the layers below: its handle is a leaf holding the message
//! (`tlsreadme=`, padded with zero bytes to a multiple of 512), whatever export name it asked for,
//! and the export list it sees holds one nameless export. A plugin that serializes connections
//! is refused at start-up, since a plaintext client could then hold the only slot forever.

use std::sync::Arc;

use nbdforge_api::{
    Backend, Capabilities, Error, Export, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
    ThreadModel,
};

/// What plaintext clients read unless `tlsreadme=` says otherwise.
const DEFAULT_README: &str = "This NBD server requires TLS authentication before it will serve useful data.\n";

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("tls-fallback", "serves a message to clients not using TLS")
        .help("tlsreadme=MESSAGE              Alternate contents for the plaintext dummy export.");
    Registration::filter(info, TlsFallbackFilter::default)
}

/// The `tls-fallback` filter.
#[derive(Debug)]
pub struct TlsFallbackFilter {
    /// The message, padded: the whole disk of a plaintext client.
    readme: Arc<Vec<u8>>,
}

impl Default for TlsFallbackFilter {
    fn default() -> Self {
        TlsFallbackFilter { readme: Arc::new(padded(DEFAULT_README)) }
    }
}

/// `message` followed by zero bytes up to a multiple of 512 (at least 512).
fn padded(message: &str) -> Vec<u8> {
    let size = message.len().div_ceil(512).max(1) * 512;
    let mut disk = message.as_bytes().to_vec();
    disk.resize(size, 0);
    disk
}

impl Layer for TlsFallbackFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "tlsreadme" {
            return Ok(false);
        }
        self.readme = Arc::new(padded(value));
        Ok(true)
    }
}

impl Filter for TlsFallbackFilter {
    fn get_ready(&mut self, next: &Arc<dyn Backend>) -> Result<()> {
        if next.thread_model() == ThreadModel::SerializeConnections {
            return Err(Error::invalid(
                "the layers below serialize connections: a plaintext client could block every other one",
            ));
        }
        Ok(())
    }

    fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        if !tls {
            return Ok(vec![Export::named("")]);
        }
        next.list_exports(readonly, tls)
    }

    fn default_export(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<String> {
        if !tls {
            return Ok(String::new());
        }
        next.default_export(readonly, tls)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        if args.tls {
            return next.open(args);
        }
        Ok(Box::new(ReadmeHandle { disk: Arc::clone(&self.readme) }))
    }
}

/// A plaintext client's disk: the message, read-only.
struct ReadmeHandle {
    disk: Arc<Vec<u8>>,
}

impl Handle for ReadmeHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.disk.len() as u64)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities::READ_ONLY)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        // The server checked the range against get_size.
        let start = offset as usize;
        buf.copy_from_slice(&self.disk[start..start + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;

    #[test]
    fn plaintext_clients_read_the_message_tls_clients_the_export() {
        let mut f = TlsFallbackFilter::default();
        let next = MemBackend::disk(4096);
        let plain = f.open(&next, &OpenArgs::local("anything", false)).unwrap();
        assert_eq!(plain.get_size().unwrap(), 512);
        let mut buf = [0u8; 16];
        plain.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"This NBD server ");
        assert!(!plain.capabilities().unwrap().write);
        let tls = f.open(&next, &OpenArgs { tls: true, ..OpenArgs::local("", false) }).unwrap();
        assert_eq!(tls.get_size().unwrap(), 4096);
        assert!(f.config("tlsreadme", &"x".repeat(600)).unwrap());
        assert_eq!(f.open(&next, &OpenArgs::local("", false)).unwrap().get_size().unwrap(), 1024);
        assert_eq!(f.list_exports(next.as_ref(), false, false).unwrap(), vec![Export::named("")]);
    }
}
