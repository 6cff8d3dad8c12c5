//! One lock stripe's page table: which of the stripe's pages exist, by page index.
//!
//! The stripe's pages are grouped in chunks of [`CHUNK`] consecutive ones (consecutive in the
//! stripe, so `CHUNK * STRIPES` pages of the disk apart at most), kept in an ordered map by chunk
//! number. Finding a page is a search among few chunks (four per stripe for a 512 MiB disk,
//! a map that stays in the cache) and one index, where a map of the pages themselves took three
//! levels of nodes, each a likely cache miss on random 4 KiB requests. The order still lets
//! extents and large trims skip the empty stretches of an exabyte-sized disk chunk by chunk.
//! A chunk costs 1 KiB, freed with its last page: at worst 3% on top of the 32 KiB pages.

use std::collections::BTreeMap;

use super::slab::Page;

/// Pages per chunk.
const CHUNK: u64 = 64;

pub(super) struct PageMap {
    /// The stripe this map serves: every index in it is `stripe` modulo `stripes`.
    stripe: u64,
    stripes: u64,
    chunks: BTreeMap<u64, Box<Chunk>>,
}

struct Chunk {
    slots: [Option<Page>; CHUNK as usize],
    used: usize,
}

impl PageMap {
    pub fn new(stripe: u64, stripes: u64) -> PageMap {
        PageMap { stripe, stripes, chunks: BTreeMap::new() }
    }

    /// The chunk number and slot of page `index` (which must belong to this stripe).
    fn place(&self, index: u64) -> (u64, usize) {
        debug_assert_eq!(index % self.stripes, self.stripe);
        let local = index / self.stripes;
        (local / CHUNK, (local % CHUNK) as usize)
    }

    /// The page index held by `slot` of chunk `chunk`.
    fn index_of(&self, chunk: u64, slot: usize) -> u64 {
        (chunk * CHUNK + slot as u64) * self.stripes + self.stripe
    }

    pub fn get(&self, index: u64) -> Option<&Page> {
        let (chunk, slot) = self.place(index);
        self.chunks.get(&chunk)?.slots[slot].as_ref()
    }

    pub fn get_mut(&mut self, index: u64) -> Option<&mut Page> {
        let (chunk, slot) = self.place(index);
        self.chunks.get_mut(&chunk)?.slots[slot].as_mut()
    }

    pub fn contains(&self, index: u64) -> bool {
        self.get(index).is_some()
    }

    /// Puts `page` at `index`, which must be empty; returns the page now there.
    pub fn insert(&mut self, index: u64, page: Page) -> &mut Page {
        let (chunk, slot) = self.place(index);
        let chunk = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Box::new(Chunk { slots: std::array::from_fn(|_| None), used: 0 }));
        debug_assert!(chunk.slots[slot].is_none(), "page {index} inserted twice");
        chunk.used += 1;
        chunk.slots[slot].insert(page)
    }

    pub fn remove(&mut self, index: u64) -> Option<Page> {
        let (key, slot) = self.place(index);
        let chunk = self.chunks.get_mut(&key)?;
        let page = chunk.slots[slot].take()?;
        chunk.used -= 1;
        if chunk.used == 0 {
            self.chunks.remove(&key);
        }
        Some(page)
    }

    /// The indices of the pages in `[from, to]`, in order.
    pub fn indices(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        // The first page of this stripe at or after `from`, which may belong to any stripe.
        let first = (from / self.stripes + u64::from(from % self.stripes > self.stripe)) / CHUNK;
        // No page of this stripe in the range leaves `first` past `last`: an empty range then.
        let last = (to / self.stripes / CHUNK).max(first);
        self.chunks
            .range(first..=last)
            .flat_map(move |(&key, chunk)| {
                chunk
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_some())
                    .map(move |(slot, _)| self.index_of(key, slot))
            })
            .skip_while(move |&i| i < from)
            .take_while(move |&i| i <= to)
    }
}

#[cfg(test)]
mod tests {
    use super::super::slab::SlabPool;
    use super::*;

    #[test]
    fn pages_are_found_where_they_were_put_and_ranges_in_order() {
        let pool = SlabPool::new();
        let stripes = 8;
        let mut map = PageMap::new(3, stripes);
        // Indices in stripe 3, in three chunks, one far away.
        let indices = [3, 11, 3 + 8 * 63, 3 + 8 * 64, 3 + 8 * 200, 3 + (8 << 40)];
        for &i in indices.iter().rev() {
            map.insert(i, pool.alloc().unwrap());
        }
        for &i in &indices {
            assert!(map.contains(i), "{i}");
        }
        assert!(!map.contains(19));
        assert_eq!(map.indices(0, u64::MAX).collect::<Vec<_>>(), indices);
        // Bounds of any stripe, inclusive.
        assert_eq!(map.indices(4, 11).collect::<Vec<_>>(), [11]);
        assert_eq!(map.indices(11, 3 + 8 * 64).collect::<Vec<_>>(), [11, 3 + 8 * 63, 3 + 8 * 64]);
        assert_eq!(map.indices(12, 3 + 8 * 63 - 1).count(), 0);
        // A range that holds no page of this stripe and starts past its last one in a chunk.
        assert_eq!(map.indices(8 * 63 + 4, 8 * 63 + 6).count(), 0);
        // The last page of a chunk takes the chunk with it.
        assert_eq!(map.chunks.len(), 4);
        let page = map.remove(3 + 8 * 200).unwrap();
        pool.free(page);
        assert_eq!(map.chunks.len(), 3);
        assert!(map.remove(3 + 8 * 200).is_none());
        for &i in &indices {
            if let Some(page) = map.remove(i) {
                pool.free(page);
            }
        }
        assert!(map.chunks.is_empty());
    }
}
