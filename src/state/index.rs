//! Hash indexes from 32-bit hashes to slot numbers.
//!
//! Written here rather than taken from `hashbrown`: a `hashbrown` table
//! keeps its control bytes apart from its buckets, so one probe into a table
//! of a million entries costs two cache misses (the control group, then the
//! bucket), each 130 to 160 ns on this hardware. Here a bucket holds the slot
//! number and its whole 32-bit hash side by side, so a probe reads one cache
//! line, compares hashes without touching the entries, and growing rehashes
//! from the buckets alone. Linear probing keeps the probe within that line.
//! The table is a multi-map: several slots may share a hash, and each is
//! found by its slot number or by a caller's test.

use super::store::Slot;

/// An empty bucket. A live bucket never equals it: that would need slot
/// number `u32::MAX`, which no slab reaches (it is `store::NONE`).
const EMPTY: u64 = u64::MAX;

/// The table grows past this load (13/16, about 0.8): linear probing stays
/// short below it.
const MAX_LOAD_NUM: usize = 13;
const MAX_LOAD_DEN: usize = 16;

fn bucket(hash: u32, slot: Slot) -> u64 {
    (u64::from(hash) << 32) | u64::from(slot)
}

fn hash_of(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

fn slot_of(bucket: u64) -> Slot {
    bucket as u32
}

/// Slot numbers by hash, with linear probing and backward-shift deletion
/// (no tombstones, so lookups never slow down with churn).
#[derive(Clone, Debug, Default)]
pub(crate) struct SlotIndex {
    /// A power of two in length, or empty.
    buckets: Vec<u64>,
    len: usize,
    /// `buckets.len() - 1` (0 when empty, with no bucket to mask into).
    mask: usize,
    /// The length past which the table grows.
    grow_at: usize,
}

impl SlotIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask
    }

    /// Every slot, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.buckets
            .iter()
            .filter(|&&b| b != EMPTY)
            .map(|&b| slot_of(b))
    }

    /// The slots stored under `hash`, each offered to the caller's test
    /// (which tells apart different keys of one hash).
    pub(crate) fn matches(&self, hash: u32) -> impl Iterator<Item = Slot> + '_ {
        let start = if self.buckets.is_empty() {
            None
        } else {
            Some(self.home(hash))
        };
        let mask = self.mask;
        std::iter::successors(start, move |&i| Some((i + 1) & mask))
            .map(|i| self.buckets[i])
            .take_while(|&b| b != EMPTY)
            .filter(move |&b| hash_of(b) == hash)
            .map(slot_of)
    }

    /// The first slot under `hash` that passes `test`.
    pub(crate) fn find(&self, hash: u32, mut test: impl FnMut(Slot) -> bool) -> Option<Slot> {
        self.matches(hash).find(|&s| test(s))
    }

    /// Adds `slot` under `hash`.
    pub(crate) fn insert(&mut self, hash: u32, slot: Slot) {
        debug_assert!(slot != Slot::MAX);
        if self.len >= self.grow_at {
            self.grow_to(self.len + 1);
        }
        self.place(bucket(hash, slot));
        self.len += 1;
    }

    /// Adds many slots at once, in the order of their places in the table:
    /// each write then lands next to the one before, where one at a time
    /// they land at random (a cache miss each once the table outgrows the
    /// cache).
    pub(crate) fn insert_many(&mut self, items: &[(u32, Slot)]) {
        self.reserve(items.len());
        // A counting sort on the top bits of each home bucket.
        let bits = self.mask.count_ones();
        let radix = bits.min(12);
        let shift = bits - radix;
        let group = |hash: u32| (hash as usize & self.mask) >> shift;
        let mut starts = vec![0usize; (1 << radix) + 1];
        for &(hash, _) in items {
            starts[group(hash) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut sorted = vec![EMPTY; items.len()];
        for &(hash, slot) in items {
            let at = &mut starts[group(hash)];
            sorted[*at] = bucket(hash, slot);
            *at += 1;
        }
        for b in sorted {
            debug_assert!(slot_of(b) != Slot::MAX);
            self.place(b);
        }
        self.len += items.len();
    }

    /// Removes `slot` from under `hash`; whether it was there.
    pub(crate) fn remove(&mut self, hash: u32, slot: Slot) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let wanted = bucket(hash, slot);
        let mask = self.mask;
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return false;
            }
            if b == wanted {
                break;
            }
            i = (i + 1) & mask;
        }
        // Backward shift: move later buckets of the run into the hole when
        // their home is not between the hole and where they sit.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            let home = self.home(hash_of(b));
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Makes room for `additional` more slots without growing again.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if wanted > self.grow_at {
            self.grow_to(wanted);
        }
    }

    fn grow_to(&mut self, len: usize) {
        let needed = len.saturating_mul(MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM);
        let size = needed.max(16).next_power_of_two();
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        self.mask = size - 1;
        self.grow_at = size / MAX_LOAD_DEN * MAX_LOAD_NUM;
        for b in old.into_iter().filter(|&b| b != EMPTY) {
            self.place(b);
        }
    }

    fn place(&mut self, b: u64) {
        let mask = self.mask;
        let mut i = self.home(hash_of(b));
        while self.buckets[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.buckets[i] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn agrees_with_a_set_under_inserts_and_removals() {
        // Few distinct hashes, so runs are long and wrap around the end.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut index = SlotIndex::default();
        let mut model: BTreeSet<(u32, Slot)> = BTreeSet::new();
        for round in 0..20_000u32 {
            let hash = (next() % 40) as u32 | 0xFFFF_FF00;
            if next() % 3 == 0 && !model.is_empty() {
                let victim = *model.iter().nth((next() as usize) % model.len()).unwrap();
                assert!(index.remove(victim.0, victim.1));
                model.remove(&victim);
            } else {
                index.insert(hash, round);
                model.insert((hash, round));
            }
            assert!(!index.remove(hash, u32::MAX - 1));
            assert_eq!(index.len(), model.len());
            let mut found: Vec<Slot> = index.matches(hash).collect();
            found.sort_unstable();
            let expected: Vec<Slot> = model
                .range((hash, 0)..=(hash, Slot::MAX))
                .map(|&(_, s)| s)
                .collect();
            assert_eq!(found, expected);
        }
        let mut bulk = SlotIndex::default();
        let items: Vec<(u32, Slot)> = model.iter().copied().collect();
        bulk.insert_many(&items[..items.len() / 2]);
        bulk.insert_many(&items[items.len() / 2..]);
        for &(hash, slot) in &items {
            assert!(bulk.matches(hash).any(|s| s == slot));
        }
        assert_eq!(bulk.len(), items.len());
        let mut all: Vec<Slot> = index.iter().collect();
        all.sort_unstable();
        let expected: Vec<Slot> = model
            .iter()
            .map(|&(_, s)| s)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(all, expected);
    }
}
