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

/// Past this many slots an index is spread over [`PARTS`] tables chosen by
/// the top bits of the hash, each growing on its own. One table of a million
/// slots doubles in tens of milliseconds, and a tracker does that under its
/// shard's lock; a part of a million-slot index doubles in tens of
/// microseconds. Below it, one table keeps a small state small.
const SPREAD_AT: usize = 8_192;
const PART_BITS: u32 = 8;
const PARTS: usize = 1 << PART_BITS;

/// Slot numbers by hash: one [`Table`], or [`PARTS`] of them past
/// [`SPREAD_AT`] slots.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlotIndex {
    /// The table while the index is not spread.
    one: Table,
    /// The tables once spread, numbered by the top bits of the hash.
    parts: Option<Box<[Table; PARTS]>>,
    len: usize,
}

#[inline]
fn part_of(hash: u32) -> usize {
    (hash >> (32 - PART_BITS)) as usize
}

impl SlotIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn table(&self, hash: u32) -> &Table {
        match &self.parts {
            None => &self.one,
            Some(parts) => &parts[part_of(hash)],
        }
    }

    #[inline]
    fn table_mut(&mut self, hash: u32) -> &mut Table {
        match &mut self.parts {
            None => &mut self.one,
            Some(parts) => &mut parts[part_of(hash)],
        }
    }

    /// Every slot, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        let parts = self.parts.iter().flat_map(|parts| parts.iter());
        std::iter::once(&self.one)
            .chain(parts)
            .flat_map(Table::iter)
    }

    /// The slots stored under `hash`, each offered to the caller's test
    /// (which tells apart different keys of one hash).
    #[inline]
    pub(crate) fn matches(&self, hash: u32) -> impl Iterator<Item = Slot> + '_ {
        self.table(hash).matches(hash)
    }

    /// The first slot under `hash` that passes `test`.
    pub(crate) fn find(&self, hash: u32, mut test: impl FnMut(Slot) -> bool) -> Option<Slot> {
        self.matches(hash).find(|&s| test(s))
    }

    /// Adds `slot` under `hash`.
    pub(crate) fn insert(&mut self, hash: u32, slot: Slot) {
        debug_assert!(slot != Slot::MAX);
        self.len += 1;
        if self.len > SPREAD_AT && self.parts.is_none() {
            self.spread();
        }
        self.table_mut(hash).insert(bucket(hash, slot));
    }

    /// Adds many slots at once, in the order of their places in the table:
    /// each write then lands next to the one before, where one at a time
    /// they land at random (a cache miss each once the table outgrows the
    /// cache).
    pub(crate) fn insert_many(&mut self, items: &[(u32, Slot)]) {
        self.reserve(items.len());
        self.len += items.len();
        let Some(parts) = &mut self.parts else {
            let buckets: Vec<u64> = items.iter().map(|&(h, s)| bucket(h, s)).collect();
            self.one.insert_many(&buckets, true);
            return;
        };
        // Parts of a large index are small enough to stay in cache: grouping
        // the items by part is enough.
        let mut starts = vec![0usize; PARTS + 1];
        for &(hash, _) in items {
            starts[part_of(hash) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let bounds = starts.clone();
        let mut sorted = vec![EMPTY; items.len()];
        for &(hash, slot) in items {
            let at = &mut starts[part_of(hash)];
            sorted[*at] = bucket(hash, slot);
            *at += 1;
        }
        for (part, table) in parts.iter_mut().enumerate() {
            table.insert_many(&sorted[bounds[part]..bounds[part + 1]], false);
        }
    }

    /// Removes `slot` from under `hash`; whether it was there.
    pub(crate) fn remove(&mut self, hash: u32, slot: Slot) -> bool {
        let removed = self.table_mut(hash).remove(bucket(hash, slot));
        self.len -= usize::from(removed);
        removed
    }

    /// Makes room for `additional` more slots without growing again (past
    /// [`SPREAD_AT`], for an even spread of hashes over the parts).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if wanted > SPREAD_AT && self.parts.is_none() {
            self.spread();
        }
        match &mut self.parts {
            None => self.one.reserve(wanted),
            Some(parts) => {
                // The even share: the few parts that get more grow alone,
                // where room for them in every part would idle memory.
                let share = wanted.div_ceil(PARTS);
                parts.iter_mut().for_each(|table| table.reserve(share));
            }
        }
    }

    /// Moves the slots of the one table into [`PARTS`] tables.
    fn spread(&mut self) {
        let mut parts: Box<[Table; PARTS]> = Box::new(std::array::from_fn(|_| {
            let mut table = Table::default();
            table.reserve(2 * SPREAD_AT / PARTS);
            table
        }));
        let one = std::mem::take(&mut self.one);
        for b in one.buckets.into_iter().filter(|&b| b != EMPTY) {
            parts[part_of(hash_of(b))].insert(b);
        }
        self.parts = Some(parts);
    }
}

/// One open-addressed table, with linear probing and backward-shift deletion
/// (no tombstones, so lookups never slow down with churn).
#[derive(Clone, Debug, Default)]
struct Table {
    /// A power of two in length, or empty.
    buckets: Vec<u64>,
    len: usize,
    /// `buckets.len() - 1` (0 when empty, with no bucket to mask into).
    mask: usize,
    /// The length past which the table grows.
    grow_at: usize,
}

impl Table {
    #[inline]
    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask
    }

    fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.buckets
            .iter()
            .filter(|&&b| b != EMPTY)
            .map(|&b| slot_of(b))
    }

    #[inline]
    fn matches(&self, hash: u32) -> impl Iterator<Item = Slot> + '_ {
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

    fn insert(&mut self, b: u64) {
        if self.len >= self.grow_at {
            self.grow_to(self.len + 1);
        }
        self.place(b);
        self.len += 1;
    }

    /// Adds `buckets`; with `in_order`, placed in the order of their homes,
    /// which pays once the table outgrows the cache.
    fn insert_many(&mut self, buckets: &[u64], in_order: bool) {
        self.reserve(self.len + buckets.len());
        self.len += buckets.len();
        if !in_order {
            buckets.iter().for_each(|&b| self.place(b));
            return;
        }
        // A counting sort on the top bits of each home bucket.
        let bits = self.mask.count_ones();
        let radix = bits.min(12);
        let shift = bits - radix;
        let group = |b: u64| (hash_of(b) as usize & self.mask) >> shift;
        let mut starts = vec![0usize; (1 << radix) + 1];
        for &b in buckets {
            starts[group(b) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut sorted = vec![EMPTY; buckets.len()];
        for &b in buckets {
            let at = &mut starts[group(b)];
            sorted[*at] = b;
            *at += 1;
        }
        for b in sorted {
            debug_assert!(slot_of(b) != Slot::MAX);
            self.place(b);
        }
    }

    fn remove(&mut self, wanted: u64) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let mask = self.mask;
        let mut i = self.home(hash_of(wanted));
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

    /// Makes room for `len` slots in all without growing again.
    fn reserve(&mut self, len: usize) {
        if len > self.grow_at {
            self.grow_to(len);
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
        agrees_with_a_set(20_000, |r| (r % 40) as u32 | 0xFFFF_FF00);
    }

    #[test]
    fn agrees_with_a_set_when_spread_over_parts() {
        // Enough slots to spread, with hashes that differ in their top bits
        // and a few that share a part and a home.
        agrees_with_a_set(60_000, |r| {
            if r % 5 == 0 {
                (r % 16) as u32 | 0x7700_0000
            } else {
                r as u32
            }
        });
    }

    fn agrees_with_a_set(rounds: u32, hash_of: impl Fn(u64) -> u32) {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut index = SlotIndex::default();
        let mut model: BTreeSet<(u32, Slot)> = BTreeSet::new();
        let mut held: Vec<(u32, Slot)> = Vec::new();
        for round in 0..rounds {
            let hash = hash_of(next());
            if next() % 3 == 0 && !model.is_empty() {
                let victim = held.swap_remove((next() as usize) % held.len());
                assert!(index.remove(victim.0, victim.1));
                model.remove(&victim);
            } else {
                index.insert(hash, round);
                model.insert((hash, round));
                held.push((hash, round));
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
