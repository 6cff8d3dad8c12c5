//! The `luks` filter: serves the plaintext of a LUKSv1-encrypted disk held by the layer below,
//! for reading and writing (nbdkit-luks-filter).
//!
//! Opening a connection reads the LUKS header and unlocks the master key with `passphrase=`
//! (the module `luks_header` holds the format and the crypto). The key found is kept
//! for later connections as long as the header they read is the same, so the slow key
//! derivation runs once, not once per connection. A wrong passphrase, a LUKSv2 or corrupt
//! header, or a cipher that is not supported refuses the connection, with the reason in the log.
//!
//! The export is the payload: the disk from the header's payload offset to its end, each
//! 512-byte sector encrypted on its own. Reads decrypt the sectors they cover; writes encrypt
//! them, reading the sector first when a write covers only part of it (those read-modify-write
//! cycles are serialized). Zeroing is written as encrypted zeroes; trim and block status are not
//! offered, since the layer below knows nothing of what the ciphertext means.

use std::sync::{Arc, Mutex};

use nbdforge_api::{
    debug, read_password, Backend, BlockSize, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs,
    Registration, Result, Support,
};

use crate::luks_header::{Header, SectorCipher, HEADER_SIZE, SECTOR};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("luks", "read and write LUKSv1-encrypted disks")
        .help("passphrase=<SECRET>|+FILE|-|-FD  The passphrase of one of the key slots (required).");
    Registration::filter(info, LuksFilter::default)
}

/// The `luks` filter.
#[derive(Default)]
pub struct LuksFilter {
    passphrase: Option<String>,
    /// The last header unlocked, and what it unlocked.
    unlocked: Mutex<Option<LastUnlocked>>,
    /// Serializes read-modify-write cycles of partial sectors, across connections.
    rmw: Arc<Mutex<()>>,
}

impl Drop for LuksFilter {
    fn drop(&mut self) {
        if let Some(p) = self.passphrase.take() {
            let mut bytes = p.into_bytes();
            bytes.fill(0);
        }
    }
}

/// A header as read from the disk, and what it unlocked.
type LastUnlocked = (Box<[u8; HEADER_SIZE]>, Arc<Unlocked>);

/// An unlocked disk: the payload's place and the master key's cipher.
struct Unlocked {
    payload: u64,
    cipher: SectorCipher,
}

impl Layer for LuksFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "passphrase" => self.passphrase = Some(read_password(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.passphrase.is_none() {
            return Err(Error::invalid("passphrase=<SECRET> is required"));
        }
        Ok(())
    }
}

impl LuksFilter {
    /// The disk below unlocked: from the last connection when its header is the same, otherwise
    /// by trying the passphrase on its key slots.
    fn unlock(&self, below: &dyn Handle) -> Result<Arc<Unlocked>> {
        let size = below.get_size()?;
        if size < 2 * HEADER_SIZE as u64 {
            return Err(Error::io(format!("luks: the disk ({size} bytes) is too small to hold a LUKS header")));
        }
        let mut bytes = Box::new([0u8; HEADER_SIZE]);
        below.pread(&mut bytes[..], 0, Flags::NONE)?;
        let mut last = self.unlocked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, u)) = last.as_ref() {
            if *b == bytes {
                return Ok(u.clone());
            }
        }
        let header = Header::parse(&bytes, size).map_err(|e| Error::new(e.errno, format!("luks: {}", e.message)))?;
        debug!("{}, payload at byte {}", header.spec.describe(), header.payload);
        let passphrase = self.passphrase.as_deref().unwrap_or_default();
        let mut read = |offset: u64, buf: &mut [u8]| below.pread(buf, offset, Flags::NONE);
        let Some((mut key, slot)) = header.unlock(passphrase.as_bytes(), &mut read)? else {
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "luks: passphrase: wrong passphrase, it opens none of the disk's {} active key slots",
                    header.active_slots()
                ),
            ));
        };
        debug!("key slot {slot} unlocked");
        let cipher = header.spec.keyed(&key)?;
        key.fill(0);
        let unlocked = Arc::new(Unlocked { payload: header.payload, cipher });
        *last = Some((bytes, unlocked.clone()));
        Ok(unlocked)
    }
}

impl Filter for LuksFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let disk = self.unlock(&*below)?;
        Ok(Box::new(LuksHandle { below, disk, rmw: self.rmw.clone() }))
    }
}

/// One connection.
struct LuksHandle {
    below: Box<dyn Handle>,
    disk: Arc<Unlocked>,
    rmw: Arc<Mutex<()>>,
}

impl LuksHandle {
    /// The sectors covering `len` bytes at `offset` of the payload: the first one's number, and
    /// where the range starts in the first.
    fn cover(offset: u64, len: usize) -> (u64, usize, usize) {
        let first = offset / SECTOR;
        let skip = (offset % SECTOR) as usize;
        let bytes = (skip + len).div_ceil(SECTOR as usize) * SECTOR as usize;
        (first, skip, bytes)
    }

    /// Reads and decrypts whole sectors from `first` into `buf`.
    fn read_sectors(&self, buf: &mut [u8], first: u64, flags: Flags) -> Result<()> {
        self.below.pread(buf, self.disk.payload + first * SECTOR, flags)?;
        self.disk.cipher.decrypt(buf, first)
    }
}

impl Handle for LuksHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.below)
    }

    fn get_size(&self) -> Result<u64> {
        let size = self.below.get_size()?;
        size.checked_sub(self.disk.payload)
            .ok_or_else(|| Error::io(format!("luks: the disk ({size} bytes) ends before its payload")))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let max = u32::MAX - (u32::MAX % SECTOR as u32);
        Ok(Some(match self.below.block_size()? {
            Some(b) => {
                let minimum = b.minimum.max(SECTOR as u32);
                BlockSize { minimum, preferred: b.preferred.max(minimum), maximum: b.maximum - b.maximum % minimum }
            }
            None => BlockSize { minimum: SECTOR as u32, preferred: SECTOR as u32, maximum: max },
        }))
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let below = self.below.capabilities()?;
        Ok(Capabilities {
            trim: false,
            zero: Support::Emulate,
            fast_zero: false,
            extents: false,
            cache: Support::Emulate,
            ..below
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let (first, skip, bytes) = Self::cover(offset, buf.len());
        if skip == 0 && bytes == buf.len() {
            return self.read_sectors(buf, first, flags);
        }
        let mut sectors = vec![0u8; bytes];
        self.read_sectors(&mut sectors, first, flags)?;
        buf.copy_from_slice(&sectors[skip..skip + buf.len()]);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let (first, skip, bytes) = Self::cover(offset, buf.len());
        let mut sectors = vec![0u8; bytes];
        let partial = skip != 0 || bytes != buf.len();
        // Partial sectors: their other bytes are read, so no other write of them may come between.
        let _guard = partial.then(|| self.rmw.lock().unwrap_or_else(|e| e.into_inner()));
        if skip != 0 {
            self.read_sectors(&mut sectors[..SECTOR as usize], first, Flags::NONE)?;
        }
        let last = bytes - SECTOR as usize;
        let last_read_already = skip != 0 && last == 0;
        if !(skip + buf.len()).is_multiple_of(SECTOR as usize) && !last_read_already {
            self.read_sectors(&mut sectors[last..], first + last as u64 / SECTOR, Flags::NONE)?;
        }
        sectors[skip..skip + buf.len()].copy_from_slice(buf);
        self.disk.cipher.encrypt(&mut sectors, first)?;
        self.below.pwrite(&sectors, self.disk.payload + first * SECTOR, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    #[test]
    fn a_missing_passphrase_is_refused() {
        let mut f = LuksFilter::default();
        assert!(f.config_complete().unwrap_err().message.contains("passphrase"));
    }

    #[test]
    fn a_disk_without_a_header_is_refused() {
        let disk = MemDisk::new(1 << 20);
        let e = open_over(LuksFilter::default(), &[("passphrase", "x")], &disk).err().unwrap();
        assert!(e.message.contains("luks: the disk has no LUKS header"), "{}", e.message);
    }

    #[test]
    fn partial_sectors_are_covered() {
        assert_eq!(LuksHandle::cover(0, 512), (0, 0, 512));
        assert_eq!(LuksHandle::cover(100, 10), (0, 100, 512));
        assert_eq!(LuksHandle::cover(500, 20), (0, 500, 1024));
        assert_eq!(LuksHandle::cover(1024, 513), (2, 0, 1024));
    }
}
