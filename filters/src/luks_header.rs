//! LUKSv1, the on-disk format, for the `luks` filter: the header and its key slots, unlocking
//! the master key with a passphrase, and the encryption of 512-byte sectors.
//!
//! The layout (all numbers big-endian): a 592-byte header at offset 0 naming the cipher (`aes`),
//! its mode and IV generator (`xts-plain64`, `cbc-essiv:sha256`, ...), the hash of the key
//! derivation (`sha256`, ...), where the encrypted payload starts and the master key's length,
//! digest and digest salt; then eight key slots, each a PBKDF2 salt and iteration count and the
//! sector where the slot's key material lies. The key material is the master key split into
//! `stripes` pieces (anti-forensic split), encrypted with a key derived from the passphrase.
//!
//! Unlocking tries every active slot: derive the slot key (PBKDF2), decrypt the key material,
//! merge the stripes back (each step XOR then a diffusion by hashing), and accept the result when
//! its PBKDF2 digest equals the header's. All crypto is OpenSSL's.
//!
//! Every length and offset the header gives is checked against the disk before anything is read
//! or allocated from it, so a corrupt or hostile header costs at most a few megabytes.

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::hash::{Hasher, MessageDigest};
use openssl::pkcs5::pbkdf2_hmac;

use nbdforge_api::{Error, Result};

/// The unit of encryption: each sector has its own IV, from its number.
pub const SECTOR: u64 = 512;
/// The header's size on disk.
pub const HEADER_SIZE: usize = 592;

const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const SLOTS: usize = 8;
const SLOT_ENABLED: u32 = 0x00AC_71F3;
const SLOT_DISABLED: u32 = 0x0000_DEAD;
const DIGEST_LEN: usize = 20;
/// Bounds that no real header exceeds (LUKS writes 4000 stripes and keys of 16 to 64 bytes);
/// they keep the key material of one slot under 5 MiB.
const MAX_KEY_BYTES: usize = 512;
const MAX_STRIPES: u32 = 10_000;

fn corrupt(why: String) -> Error {
    Error::io(format!("bad LUKSv1 header: {why}"))
}

fn openssl_error(what: &str, e: openssl::error::ErrorStack) -> Error {
    Error::io(format!("{what}: {e}"))
}

/// A hash the header may name: OpenSSL's digest, and the name to show.
#[derive(Clone, Copy)]
struct Hash {
    name: &'static str,
    md: MessageDigest,
}

fn hash(name: &str) -> Result<Hash> {
    let (name, md) = match name {
        "md5" => ("md5", MessageDigest::md5()),
        "sha1" => ("sha1", MessageDigest::sha1()),
        "sha224" => ("sha224", MessageDigest::sha224()),
        "sha256" => ("sha256", MessageDigest::sha256()),
        "sha384" => ("sha384", MessageDigest::sha384()),
        "sha512" => ("sha512", MessageDigest::sha512()),
        "ripemd160" => ("ripemd160", MessageDigest::ripemd160()),
        _ => {
            return Err(Error::io(format!(
                "unsupported hash '{name}' (md5, sha1, sha224, sha256, sha384, sha512 or ripemd160)"
            )))
        }
    };
    Ok(Hash { name, md })
}

/// How the IV of a sector is made from its number.
#[derive(Clone, Copy)]
enum IvGen {
    /// ECB has none.
    None,
    /// The low 32 bits, little-endian, then zeroes.
    Plain,
    /// The 64 bits, little-endian, then zeroes.
    Plain64,
    /// Plain64 encrypted (ECB) with the hash of the master key as the key.
    Essiv(Hash),
}

/// The cipher the header names, e.g. `aes` with `xts-plain64` and 64 key bytes.
#[derive(Clone, Copy)]
pub struct Spec {
    cipher: &'static CipherRef,
    ivgen: IvGen,
    hash: Hash,
    key_bytes: usize,
    name: &'static str,
}

impl Spec {
    /// The cipher for `name` (`aes`), `mode` (`MODE-IVGEN[:HASH]`) and a key of `key_bytes`.
    fn new(name: &str, mode: &str, hash_name: &str, key_bytes: usize) -> Result<Spec> {
        let unsupported = || {
            Error::io(format!(
                "unsupported cipher {name}-{mode} with a {}-bit key (aes in xts, cbc, ctr or ecb mode)",
                key_bytes * 8
            ))
        };
        if name != "aes" {
            return Err(unsupported());
        }
        let (chain, ivspec) = mode.split_once('-').unwrap_or((mode, ""));
        let (cipher, cipher_name): (&'static CipherRef, &'static str) = match (chain, key_bytes) {
            ("xts", 32) => (Cipher::aes_128_xts(), "aes-128-xts"),
            ("xts", 64) => (Cipher::aes_256_xts(), "aes-256-xts"),
            ("cbc", 16) => (Cipher::aes_128_cbc(), "aes-128-cbc"),
            ("cbc", 24) => (Cipher::aes_192_cbc(), "aes-192-cbc"),
            ("cbc", 32) => (Cipher::aes_256_cbc(), "aes-256-cbc"),
            ("ctr", 16) => (Cipher::aes_128_ctr(), "aes-128-ctr"),
            ("ctr", 24) => (Cipher::aes_192_ctr(), "aes-192-ctr"),
            ("ctr", 32) => (Cipher::aes_256_ctr(), "aes-256-ctr"),
            ("ecb", 16) => (Cipher::aes_128_ecb(), "aes-128-ecb"),
            ("ecb", 24) => (Cipher::aes_192_ecb(), "aes-192-ecb"),
            ("ecb", 32) => (Cipher::aes_256_ecb(), "aes-256-ecb"),
            _ => return Err(unsupported()),
        };
        let ivgen = match (chain, ivspec.split_once(':')) {
            ("ecb", _) => IvGen::None,
            (_, Some(("essiv", h))) => {
                let h = hash(h)?;
                essiv_cipher(h)?;
                IvGen::Essiv(h)
            }
            _ if ivspec == "plain" => IvGen::Plain,
            _ if ivspec == "plain64" => IvGen::Plain64,
            _ => {
                return Err(Error::io(format!(
                    "unsupported IV generator '{ivspec}' in cipher mode '{mode}' (plain, plain64 or essiv:HASH)"
                )))
            }
        };
        Ok(Spec { cipher, ivgen, hash: hash(hash_name)?, key_bytes, name: cipher_name })
    }

    /// A sector cipher with `key` (the master key, or a slot key).
    pub fn keyed(&self, key: &[u8]) -> Result<SectorCipher> {
        let essiv = match self.ivgen {
            IvGen::Essiv(h) => {
                let salt = openssl::hash::hash(h.md, key).map_err(|e| openssl_error("ESSIV", e))?;
                Some((essiv_cipher(h)?, salt.to_vec()))
            }
            _ => None,
        };
        Ok(SectorCipher { spec: *self, key: key.to_vec(), essiv })
    }

    /// Says which cipher this is, for debug messages.
    pub fn describe(&self) -> String {
        let iv = match self.ivgen {
            IvGen::None => "no IV".to_string(),
            IvGen::Plain => "plain IV".to_string(),
            IvGen::Plain64 => "plain64 IV".to_string(),
            IvGen::Essiv(h) => format!("essiv:{} IV", h.name),
        };
        format!("{}, {iv}, {} key derivation", self.name, self.hash.name)
    }
}

/// The cipher of ESSIV: AES with a key of the hash's length (which must be an AES key length).
fn essiv_cipher(h: Hash) -> Result<&'static CipherRef> {
    match h.md.size() {
        16 => Ok(Cipher::aes_128_ecb()),
        24 => Ok(Cipher::aes_192_ecb()),
        32 => Ok(Cipher::aes_256_ecb()),
        n => Err(Error::io(format!("essiv:{}: a {n}-byte hash is not an AES key", h.name))),
    }
}

/// Encrypts and decrypts whole sectors, numbered from 0 at the start of what it covers.
pub struct SectorCipher {
    spec: Spec,
    key: Vec<u8>,
    essiv: Option<(&'static CipherRef, Vec<u8>)>,
}

impl Drop for SectorCipher {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

impl SectorCipher {
    /// Decrypts `buf` (whole sectors), its first sector being number `sector`.
    pub fn decrypt(&self, buf: &mut [u8], sector: u64) -> Result<()> {
        self.apply(buf, sector, false)
    }

    /// Encrypts `buf` (whole sectors), its first sector being number `sector`.
    pub fn encrypt(&self, buf: &mut [u8], sector: u64) -> Result<()> {
        self.apply(buf, sector, true)
    }

    fn apply(&self, buf: &mut [u8], first: u64, encrypt: bool) -> Result<()> {
        let fail = |e| openssl_error(if encrypt { "encrypting" } else { "decrypting" }, e);
        let mut ctx = CipherCtx::new().map_err(fail)?;
        let init = |ctx: &mut CipherCtx, cipher: Option<&CipherRef>, key: Option<&[u8]>, iv: Option<&[u8]>| {
            if encrypt {
                ctx.encrypt_init(cipher, key, iv)
            } else {
                ctx.decrypt_init(cipher, key, iv)
            }
        };
        init(&mut ctx, Some(self.spec.cipher), Some(&self.key), None).map_err(fail)?;
        ctx.set_padding(false);
        let mut essiv = match &self.essiv {
            Some((cipher, salt)) => {
                let mut c = CipherCtx::new().map_err(fail)?;
                c.encrypt_init(Some(cipher), Some(salt), None).map_err(fail)?;
                c.set_padding(false);
                Some(c)
            }
            None => None,
        };
        let mut out = [0u8; SECTOR as usize + 32];
        for (i, sector) in buf.chunks_mut(SECTOR as usize).enumerate() {
            let number = first + i as u64;
            let mut iv = [0u8; 16];
            match self.spec.ivgen {
                IvGen::None => {}
                IvGen::Plain => iv[..4].copy_from_slice(&(number as u32).to_le_bytes()),
                IvGen::Plain64 | IvGen::Essiv(_) => iv[..8].copy_from_slice(&number.to_le_bytes()),
            }
            if let Some(c) = essiv.as_mut() {
                let mut enc = [0u8; 32];
                c.cipher_update(&iv, Some(&mut enc)).map_err(fail)?;
                iv.copy_from_slice(&enc[..16]);
            }
            if !matches!(self.spec.ivgen, IvGen::None) {
                init(&mut ctx, None, None, Some(&iv)).map_err(fail)?;
            }
            let n = ctx.cipher_update(sector, Some(&mut out)).map_err(fail)?;
            if n != sector.len() {
                return Err(Error::io(format!("{} gave {n} bytes for a sector of {}", self.spec.name, sector.len())));
            }
            sector.copy_from_slice(&out[..n]);
        }
        Ok(())
    }
}

/// One key slot.
#[derive(Clone, Copy, Debug)]
struct Slot {
    iterations: u32,
    salt: [u8; 32],
    /// Where the key material starts, in sectors.
    material: u64,
    stripes: u32,
}

/// A parsed LUKSv1 header.
pub struct Header {
    /// The cipher, mode, IV generator and hash.
    pub spec: Spec,
    /// Where the encrypted payload starts, in bytes.
    pub payload: u64,
    digest: [u8; DIGEST_LEN],
    digest_salt: [u8; 32],
    digest_iterations: u32,
    /// The active slots, by number.
    slots: Vec<(usize, Slot)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Header {
    /// Parses the first [`HEADER_SIZE`] bytes of a disk of `disk_size` bytes.
    pub fn parse(b: &[u8; HEADER_SIZE], disk_size: u64) -> Result<Header> {
        if &b[..6] != MAGIC {
            return Err(Error::io("the disk has no LUKS header"));
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(Error::io(format!("the disk has a LUKS version {version} header; only LUKSv1 is supported")));
        }
        let payload = u64::from(be32(b, 104)) * SECTOR;
        if payload < HEADER_SIZE as u64 {
            return Err(corrupt(format!("the payload starts at byte {payload}, inside the header")));
        }
        if payload >= disk_size {
            return Err(corrupt(format!(
                "the payload starts at byte {payload}, past the end of the disk ({disk_size})"
            )));
        }
        let key_bytes = be32(b, 108) as usize;
        if key_bytes == 0 || key_bytes > MAX_KEY_BYTES {
            return Err(corrupt(format!("a master key of {key_bytes} bytes")));
        }
        let spec = Spec::new(&text(&b[8..40]), &text(&b[40..72]), &text(&b[72..104]), key_bytes)?;
        let mut slots = Vec::new();
        for i in 0..SLOTS {
            let s = &b[208 + 48 * i..208 + 48 * (i + 1)];
            match be32(s, 0) {
                SLOT_DISABLED => continue,
                SLOT_ENABLED => {}
                flag => return Err(corrupt(format!("key slot {i} has the state {flag:#x}"))),
            }
            let slot = Slot {
                iterations: be32(s, 4),
                salt: s[8..40].try_into().unwrap_or([0; 32]),
                material: u64::from(be32(s, 40)),
                stripes: be32(s, 44),
            };
            if slot.stripes == 0 || slot.stripes > MAX_STRIPES || slot.iterations == 0 {
                return Err(corrupt(format!("key slot {i}: {} stripes, {} iterations", slot.stripes, slot.iterations)));
            }
            let end = slot.material * SECTOR + material_len(key_bytes, slot.stripes);
            if end > disk_size {
                return Err(corrupt(format!(
                    "the key material of slot {i} ends at byte {end}, past the end of the disk ({disk_size})"
                )));
            }
            // Writes to the payload must never reach the header or a key slot.
            if slot.material * SECTOR < HEADER_SIZE as u64 || (slot.material * SECTOR < payload && end > payload) {
                return Err(corrupt(format!(
                    "the key material of slot {i} (bytes {} to {end}) overlaps the header or the payload (from byte {payload})",
                    slot.material * SECTOR
                )));
            }
            slots.push((i, slot));
        }
        let digest_iterations = be32(b, 164);
        if digest_iterations == 0 {
            return Err(corrupt("master key digest of 0 iterations".into()));
        }
        Ok(Header {
            spec,
            payload,
            digest: b[112..132].try_into().unwrap_or([0; DIGEST_LEN]),
            digest_salt: b[132..164].try_into().unwrap_or([0; 32]),
            digest_iterations,
            slots,
        })
    }

    /// The number of active key slots.
    pub fn active_slots(&self) -> usize {
        self.slots.len()
    }

    /// Tries `passphrase` on each active slot; `read(offset, buf)` reads the disk. Returns the
    /// master key and the slot it came from, or `None` when no slot opens.
    pub fn unlock(
        &self,
        passphrase: &[u8],
        read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<Option<(Vec<u8>, usize)>> {
        let key_bytes = self.spec.key_bytes;
        for &(i, ref slot) in &self.slots {
            let mut slot_key = vec![0u8; key_bytes];
            pbkdf2_hmac(passphrase, &slot.salt, slot.iterations as usize, self.spec.hash.md, &mut slot_key)
                .map_err(|e| openssl_error("PBKDF2", e))?;
            let mut material = vec![0u8; material_len(key_bytes, slot.stripes) as usize];
            read(slot.material * SECTOR, &mut material)?;
            self.spec.keyed(&slot_key)?.decrypt(&mut material, 0)?;
            slot_key.fill(0);
            let key = af_merge(&material[..key_bytes * slot.stripes as usize], key_bytes, self.spec.hash.md)?;
            material.fill(0);
            let mut digest = [0u8; DIGEST_LEN];
            pbkdf2_hmac(&key, &self.digest_salt, self.digest_iterations as usize, self.spec.hash.md, &mut digest)
                .map_err(|e| openssl_error("PBKDF2", e))?;
            if digest == self.digest {
                return Ok(Some((key, i)));
            }
        }
        Ok(None)
    }
}

/// The bytes of key material a slot holds: the split key, in whole sectors.
fn material_len(key_bytes: usize, stripes: u32) -> u64 {
    (key_bytes as u64 * u64::from(stripes)).div_ceil(SECTOR) * SECTOR
}

/// Merges the anti-forensic stripes of `split` (`key_bytes` each) back into the key.
fn af_merge(split: &[u8], key_bytes: usize, md: MessageDigest) -> Result<Vec<u8>> {
    let mut key = vec![0u8; key_bytes];
    let mut stripes = split.chunks_exact(key_bytes);
    let last = stripes.next_back().ok_or_else(|| Error::io("no stripes"))?;
    for stripe in stripes {
        key.iter_mut().zip(stripe).for_each(|(k, s)| *k ^= s);
        diffuse(&mut key, md)?;
    }
    key.iter_mut().zip(last).for_each(|(k, s)| *k ^= s);
    Ok(key)
}

/// The diffusion of the AF split: each digest-sized piece replaced by the hash of its index
/// (32-bit big-endian) and itself, the last piece cut to its length.
fn diffuse(buf: &mut [u8], md: MessageDigest) -> Result<()> {
    let fail = |e| openssl_error("hashing", e);
    for (i, piece) in buf.chunks_mut(md.size()).enumerate() {
        let mut h = Hasher::new(md).map_err(fail)?;
        h.update(&(i as u32).to_be_bytes()).map_err(fail)?;
        h.update(piece).map_err(fail)?;
        let d = h.finish().map_err(fail)?;
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitting the merge undoes (what LUKS does when it writes a slot), with fixed
    /// random stripes.
    fn af_split(key: &[u8], stripes: usize, md: MessageDigest) -> Vec<u8> {
        let n = key.len();
        let mut out = vec![0u8; n * stripes];
        let mut d = vec![0u8; n];
        for (i, stripe) in out.chunks_exact_mut(n).take(stripes - 1).enumerate() {
            stripe.iter_mut().enumerate().for_each(|(j, b)| *b = (i * 7 + j * 13) as u8);
            d.iter_mut().zip(stripe.iter()).for_each(|(a, b)| *a ^= b);
            diffuse(&mut d, md).unwrap();
        }
        let last = &mut out[n * (stripes - 1)..];
        last.iter_mut().zip(d.iter().zip(key)).for_each(|(o, (a, k))| *o = a ^ k);
        out
    }

    #[test]
    fn af_merge_undoes_the_split() {
        let key: Vec<u8> = (0..48u8).collect();
        for md in [MessageDigest::sha1(), MessageDigest::sha256(), MessageDigest::sha512()] {
            let split = af_split(&key, 40, md);
            assert_eq!(af_merge(&split, key.len(), md).unwrap(), key);
        }
    }

    #[test]
    fn sectors_round_trip_and_differ_by_number() {
        for (mode, bytes) in [("xts-plain64", 64), ("cbc-essiv:sha256", 32), ("cbc-plain", 16), ("ecb", 24)] {
            let spec = Spec::new("aes", mode, "sha256", bytes).unwrap();
            let key: Vec<u8> = (0..bytes as u8).collect();
            let c = spec.keyed(&key).unwrap();
            let plain: Vec<u8> = (0..1024).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            c.encrypt(&mut buf, 5).unwrap();
            assert_ne!(buf, plain);
            let mut again = plain.clone();
            c.encrypt(&mut again[512..], 6).unwrap();
            assert_eq!(again[512..], buf[512..], "{mode}: sector 6 alone");
            c.decrypt(&mut buf, 5).unwrap();
            assert_eq!(buf, plain, "{mode}");
        }
    }

    #[test]
    fn unknown_ciphers_and_versions_are_refused() {
        assert!(Spec::new("twofish", "xts-plain64", "sha256", 64).is_err());
        assert!(Spec::new("aes", "xts-plain64", "sha256", 24).is_err());
        assert!(Spec::new("aes", "cbc-essiv:sha1", "sha256", 32).is_err());
        assert!(Spec::new("aes", "cbc-benbi", "sha256", 32).is_err());
        assert!(Spec::new("aes", "xts-plain64", "whirlpool", 64).is_err());
        let mut b = [0u8; HEADER_SIZE];
        b[..6].copy_from_slice(MAGIC);
        b[7] = 2;
        let e = Header::parse(&b, 1 << 20).err().unwrap();
        assert!(e.message.contains("version 2"), "{}", e.message);
        // A key slot whose material lies past the end of the disk, or that claims 2^32-1 stripes.
        b[7] = 1;
        b[8..11].copy_from_slice(b"aes");
        b[40..51].copy_from_slice(b"xts-plain64");
        b[72..78].copy_from_slice(b"sha256");
        b[104..108].copy_from_slice(&4096u32.to_be_bytes());
        b[108..112].copy_from_slice(&64u32.to_be_bytes());
        b[164..168].copy_from_slice(&1000u32.to_be_bytes());
        b[208..212].copy_from_slice(&SLOT_ENABLED.to_be_bytes());
        b[212..216].copy_from_slice(&1000u32.to_be_bytes());
        for i in 1..SLOTS {
            b[208 + 48 * i..212 + 48 * i].copy_from_slice(&SLOT_DISABLED.to_be_bytes());
        }
        b[248..252].copy_from_slice(&8000u32.to_be_bytes());
        b[252..256].copy_from_slice(&4000u32.to_be_bytes());
        let e = Header::parse(&b, 4 << 20).err().unwrap();
        assert!(e.message.contains("past the end of the disk"), "{}", e.message);
        b[248..252].copy_from_slice(&4090u32.to_be_bytes());
        assert!(Header::parse(&b, 4 << 20).err().unwrap().message.contains("overlaps"));
        b[248..252].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(Header::parse(&b, 4 << 20).unwrap().active_slots(), 1);
        b[252..256].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Header::parse(&b, 4 << 20).err().unwrap().message.contains("stripes"));
        assert!(Header::parse(&b, 1 << 20).err().unwrap().message.contains("payload starts at byte 2097152"));
        b[0] = b'X';
        assert!(Header::parse(&b, 1 << 20).err().unwrap().message.contains("no LUKS header"));
    }
}
