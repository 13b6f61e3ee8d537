//! The customer index: customer id → position in the engine's customer vector.
//!
//! An open-addressing table of 64-bit slots (32-bit hash tag, 32-bit position + 1; 0 is
//! empty), linear probing, at most half full. It exists instead of a general hash map
//! because a batch of lookups must be split into stages whose memory accesses can be
//! prefetched: the slot of every event first, then the record of every candidate, then
//! the work. With a million customers each stage is a cache miss per event; staged,
//! the misses of a batch overlap instead of queueing one after another.

/// Hash of a customer id (the same for lookups and inserts within a process). Seeded
/// per process, so that no one can choose ids that collide in the table (20,000 ids
/// sharing their low 16 bits made a replay 17 times slower with a fixed hash). Nothing
/// the engine outputs depends on it: the table only finds positions.
pub fn hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), seed())
}

/// This process's hash seed (random, from the standard library's hash keys).
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    })
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Index {
    slots: Vec<u64>,
    len: usize,
}

fn tag(h: u64) -> u64 {
    (h >> 32) << 32
}

impl Index {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.slots.capacity() * 8
    }

    /// The address of the first slot a lookup of `h` reads, for prefetching.
    pub fn slot_ptr(&self, h: u64) -> *const u8 {
        if self.slots.is_empty() {
            return std::ptr::null();
        }
        (&self.slots[h as usize & self.mask()] as *const u64).cast()
    }

    /// Finds the position of the entry with hash `h` for which `is` (given a position)
    /// says yes.
    pub fn find(&self, h: u64, is: impl Fn(u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = h as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & 0xffff_ffff_0000_0000 == tag(h) {
                let pos = (s as u32).wrapping_sub(1);
                if is(pos) {
                    return Some(pos);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// The first candidate position for `h` (tag matches), without confirming it: for
    /// prefetching the record before the real lookup.
    pub fn candidate(&self, h: u64) -> Option<u32> {
        self.find(h, |_| true)
    }

    /// Inserts position `pos` under hash `h` (the caller checked it is absent); `rehash`
    /// gives the hash of an existing position when the table grows.
    pub fn insert(&mut self, h: u64, pos: u32, rehash: impl Fn(u32) -> u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow(&rehash);
        }
        self.put(h, pos);
        self.len += 1;
    }

    /// Room for `n` more entries without growing.
    pub fn reserve(&mut self, n: usize, rehash: impl Fn(u32) -> u64) {
        while (self.len + n) * 2 > self.slots.len() {
            self.grow(&rehash);
        }
    }

    /// Removes position `pos`, stored under hash `h` (backward-shift deletion: the
    /// entries after it in its probe run move up, so lookups need no tombstones);
    /// `rehash` gives the hash of an existing position.
    pub fn remove(&mut self, h: u64, pos: u32, rehash: impl Fn(u32) -> u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.mask();
        let want = tag(h) | u64::from(pos + 1);
        let mut i = h as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return false;
            }
            if s == want {
                break;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = 0;
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == 0 {
                return true;
            }
            let home = rehash((s as u32) - 1) as usize & mask;
            // The entry at j may move to the hole at i if its home is not in (i, j].
            let between = if i <= j {
                home > i && home <= j
            } else {
                home > i || home <= j
            };
            if !between {
                self.slots[i] = s;
                self.slots[j] = 0;
                i = j;
            }
        }
    }

    fn put(&mut self, h: u64, pos: u32) {
        let mask = self.mask();
        let mut i = h as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = tag(h) | u64::from(pos + 1);
    }

    fn grow(&mut self, rehash: &impl Fn(u32) -> u64) {
        let cap = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        for s in old.into_iter().filter(|s| *s != 0) {
            let pos = (s as u32) - 1;
            self.put(rehash(pos), pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The index answers exactly like a hash map from id to position, also after
        /// removals (ids prefixed `-` remove the id if present).
        #[test]
        fn behaves_like_a_map(ids in prop::collection::vec("-?[a-z]{1,3}", 0..400), probes in prop::collection::vec("[a-z]{1,3}", 0..50)) {
            let mut names: Vec<String> = Vec::new();
            let mut index = Index::default();
            let mut model: HashMap<String, u32> = HashMap::new();
            for id in ids {
                if let Some(gone) = id.strip_prefix('-') {
                    let h = hash(gone);
                    if let Some(pos) = model.remove(gone) {
                        prop_assert!(index.remove(h, pos, |p| hash(&names[p as usize])));
                    }
                    prop_assert_eq!(index.find(h, |p| names[p as usize] == gone), None);
                    continue;
                }
                let h = hash(&id);
                let found = index.find(h, |p| names[p as usize] == id);
                prop_assert_eq!(found, model.get(&id).copied());
                if found.is_none() {
                    let pos = names.len() as u32;
                    names.push(id.clone());
                    index.insert(h, pos, |p| hash(&names[p as usize]));
                    model.insert(id, pos);
                }
            }
            for id in probes {
                prop_assert_eq!(index.find(hash(&id), |p| names[p as usize] == id), model.get(&id).copied());
            }
            prop_assert_eq!(index.len(), model.len());
        }
    }

    #[test]
    fn colliding_tags_are_told_apart_by_the_record() {
        let mut index = Index::default();
        let names = ["a", "b"];
        // force both under the same hash
        index.insert(42, 0, |_| 42);
        index.insert(42, 1, |_| 42);
        assert_eq!(index.find(42, |p| names[p as usize] == "b"), Some(1));
        assert_eq!(index.find(42, |p| names[p as usize] == "a"), Some(0));
        assert_eq!(index.find(42, |p| names[p as usize] == "c"), None);
    }

    #[test]
    fn ids_chosen_to_collide_under_a_fixed_hash_spread_under_the_seeded_one() {
        // 1,000 ids whose unseeded xxh3 shares its low 10 bits: one probe chain of
        // 1,000 in a table of that size.
        let fixed = |id: &str| xxhash_rust::xxh3::xxh3_64(id.as_bytes());
        let target = fixed("c-0") & 1023;
        let ids: Vec<String> = (0..)
            .map(|i| format!("c-{i}"))
            .filter(|id| fixed(id) & 1023 == target)
            .take(1000)
            .collect();
        let buckets: std::collections::BTreeSet<u64> =
            ids.iter().map(|id| hash(id) & 1023).collect();
        assert!(buckets.len() > 500, "{} buckets", buckets.len());
        assert_eq!(hash("c-1"), hash("c-1"), "stable within the process");
    }
}
