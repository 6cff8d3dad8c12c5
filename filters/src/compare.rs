//! Comparing what the layer below holds with what a request would leave there, for the filters
//! that allow a write only when it changes nothing (`protect` in its ranges, `checkwrite`
//! everywhere). The data below is read a piece at a time, so that a large zero request does not
//! mean a large buffer.

use nbdforge_api::{Flags, Handle, Result};

/// What a range should hold.
#[derive(Clone, Copy)]
pub enum Expected<'a> {
    /// These bytes: the data of a write, starting at the range's offset.
    Bytes(&'a [u8]),
    /// Zeroes (a zero or trim request).
    Zeroes,
}

/// The largest read done at once.
const PIECE: u64 = 1 << 20;

/// The offset of the first piece of `[offset, offset + count)` in `next` that differs from
/// `expected`, or `None` when the whole range already holds it.
pub fn first_difference(next: &dyn Handle, count: u64, offset: u64, expected: Expected) -> Result<Option<u64>> {
    let mut current = vec![0u8; count.min(PIECE) as usize];
    let mut done = 0;
    while done < count {
        let n = (count - done).min(PIECE) as usize;
        let piece = &mut current[..n];
        next.pread(piece, offset + done, Flags::NONE)?;
        let same = match expected {
            Expected::Bytes(data) => *piece == data[done as usize..done as usize + n],
            Expected::Zeroes => piece.iter().all(|&b| b == 0),
        };
        if !same {
            return Ok(Some(offset + done));
        }
        done += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemDisk;

    #[test]
    fn finds_the_piece_that_differs() {
        let disk = MemDisk::new(3 << 20);
        disk.pwrite(b"x", (2 << 20) + 5, Flags::NONE).unwrap();
        assert_eq!(first_difference(&disk, 2 << 20, 0, Expected::Zeroes).unwrap(), None);
        assert_eq!(first_difference(&disk, 3 << 20, 0, Expected::Zeroes).unwrap(), Some(2 << 20));
        let want = [0, b'x', 0];
        assert_eq!(first_difference(&disk, 3, (2 << 20) + 4, Expected::Bytes(&want)).unwrap(), None);
        assert_eq!(first_difference(&disk, 3, (2 << 20) + 3, Expected::Bytes(&want)).unwrap(), Some((2 << 20) + 3));
    }
}
