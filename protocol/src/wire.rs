//! Reading big-endian fields out of a received buffer without panicking on short input.

/// A cursor over bytes from the peer. Every getter returns `None` when the data runs out, so a
/// malformed message becomes an error reply, never a panic.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Some(head)
    }

    /// Takes a big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Takes a big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a big-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// Takes a string of `n` bytes that must be UTF-8.
    pub fn string(&mut self, n: usize) -> Option<&'a str> {
        self.bytes(n).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Takes a string preceded by its 32-bit length.
    pub fn string32(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        self.string(n)
    }

    /// Bytes not yet taken.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }
}
