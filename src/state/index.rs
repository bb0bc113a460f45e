//! Hash indexes from 32-bit hashes to slot numbers.
//!
//! Written here rather than taken from `hashbrown`: a `hashbrown` table
//! keeps its control bytes apart from its buckets, so one probe into a table
//! of a million entries costs two cache misses (the control group, then the
//! bucket), each 130 to 160 ns on this hardware. Here a bucket holds the slot
//! number and its 32-bit hash side by side, so a probe reads one cache
//! line, compares hashes without touching the entries, and growing rehashes
//! from the buckets alone. Linear probing keeps the probe within that line.
//! The table is a multi-map: several slots may share a hash, and each is
//! found by its slot number or by a caller's test.

use super::store::Slot;

/// An empty bucket: zero, so that a new table is zeroed memory, which the
/// allocator hands out without writing it (the pages are touched as
/// buckets fill, not all at once under the caller's lock).
const EMPTY: u64 = 0;

/// The bit every stored hash has set, so that no live bucket is zero (nor
/// [`MOVED`]). It costs the hashes one bit of telling keys apart.
const LIVE: u32 = 1 << 31;

/// A bucket of the retiring table whose item moved or was removed: it
/// keeps the probe runs through it unbroken, and its hash (zero, without
/// [`LIVE`]) matches no lookup.
const MOVED: u64 = 1;

/// The table grows past this load (13/16, about 0.8): linear probing stays
/// short below it.
const MAX_LOAD_NUM: usize = 13;
const MAX_LOAD_DEN: usize = 16;

/// Buckets of the retiring table moved at each change. A growth starts at
/// load 13/16 of the old size, so the new table (twice as large) is at
/// most 13/32 full; the move must end before it is 13/16 full, that is
/// within `13/16 × size` more items, which any step of two or more buckets
/// does.
const MOVE_STEP: usize = 8;

fn bucket(hash: u32, slot: Slot) -> u64 {
    (u64::from(hash | LIVE) << 32) | u64::from(slot)
}

fn hash_of(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

fn slot_of(bucket: u64) -> Slot {
    bucket as u32
}

/// Whether a bucket holds an item (neither empty nor moved).
fn is_live(bucket: u64) -> bool {
    hash_of(bucket) & LIVE != 0
}

/// Slot numbers by hash, with linear probing and backward-shift deletion
/// (no tombstones, so lookups never slow down with churn).
///
/// Growing does not rehash everything at once: the old table retires and
/// its items move to the new one a few buckets at each change, while
/// lookups probe both. A table of a million items would otherwise stop
/// its caller for milliseconds at each doubling.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlotIndex {
    /// A power of two in length, or empty.
    buckets: Vec<u64>,
    /// Items in both tables.
    len: usize,
    /// `buckets.len() - 1` (0 when empty, with no bucket to mask into).
    mask: usize,
    /// The length past which the table grows.
    grow_at: usize,
    /// The table before the last growth while its items move out: empty
    /// once they all have. Its moved and removed items are [`MOVED`].
    old: Vec<u64>,
    /// `old.len() - 1`.
    old_mask: usize,
    /// The buckets of `old` below this one have moved.
    moved: usize,
}

/// The slots under `hash` in one table, in probe order.
fn run(table: &[u64], mask: usize, hash: u32) -> impl Iterator<Item = Slot> + '_ {
    let start = (!table.is_empty()).then_some(hash as usize & mask);
    let stored = hash | LIVE;
    std::iter::successors(start, move |&i| Some((i + 1) & mask))
        .map(|i| table[i])
        .take_while(|&b| b != EMPTY)
        .filter(move |&b| hash_of(b) == stored)
        .map(slot_of)
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
            .chain(&self.old)
            .filter(|&&b| is_live(b))
            .map(|&b| slot_of(b))
    }

    /// The slots stored under `hash`, each offered to the caller's test
    /// (which tells apart different keys of one hash).
    pub(crate) fn matches(&self, hash: u32) -> impl Iterator<Item = Slot> + '_ {
        run(&self.buckets, self.mask, hash).chain(run(&self.old, self.old_mask, hash))
    }

    /// The first slot under `hash` that passes `test`.
    #[inline]
    pub(crate) fn find(&self, hash: u32, mut test: impl FnMut(Slot) -> bool) -> Option<Slot> {
        match run(&self.buckets, self.mask, hash).find(|&s| test(s)) {
            None if !self.old.is_empty() => self.find_retiring(hash, test),
            found => found,
        }
    }

    /// [`SlotIndex::find`] in the retiring table, while a growth lasts.
    #[cold]
    #[inline(never)]
    fn find_retiring(&self, hash: u32, mut test: impl FnMut(Slot) -> bool) -> Option<Slot> {
        run(&self.old, self.old_mask, hash).find(|&s| test(s))
    }

    /// Adds `slot` under `hash`.
    pub(crate) fn insert(&mut self, hash: u32, slot: Slot) {
        if self.len >= self.grow_at {
            self.start_growth();
        }
        self.place(bucket(hash, slot));
        self.len += 1;
        self.move_some();
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
            self.place(b);
        }
        self.len += items.len();
    }

    /// Removes `slot` from under `hash`; whether it was there.
    pub(crate) fn remove(&mut self, hash: u32, slot: Slot) -> bool {
        let wanted = bucket(hash, slot);
        if !self.remove_current(hash, wanted)
            && (self.old.is_empty() || !self.remove_retiring(hash, wanted))
        {
            return false;
        }
        self.len -= 1;
        self.move_some();
        true
    }

    /// Removes bucket `wanted` from the current table.
    #[inline]
    fn remove_current(&mut self, hash: u32, wanted: u64) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
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
        true
    }

    /// Removes bucket `wanted` from the retiring table: marked moved, not
    /// shifted, so that no item crosses the boundary of what has moved.
    #[cold]
    #[inline(never)]
    fn remove_retiring(&mut self, hash: u32, wanted: u64) -> bool {
        let mask = self.old_mask;
        let mut i = hash as usize & mask;
        loop {
            match self.old[i] {
                EMPTY => return false,
                b if b == wanted => {
                    self.old[i] = MOVED;
                    return true;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Makes room for `additional` more slots without growing again.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if wanted > self.grow_at {
            self.move_rest();
            self.grow_to(wanted);
        }
    }

    /// Retires the current table for one twice as large; its items move a
    /// few at each change from now on.
    fn start_growth(&mut self) {
        self.move_rest();
        let size = (self.buckets.len() * 2).max(16);
        self.old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        self.old_mask = self.mask;
        self.moved = 0;
        self.mask = size - 1;
        self.grow_at = size / MAX_LOAD_DEN * MAX_LOAD_NUM;
    }

    /// Moves the next few buckets of the retiring table, if any.
    #[inline]
    fn move_some(&mut self) {
        if !self.old.is_empty() {
            self.move_step();
        }
    }

    #[cold]
    #[inline(never)]
    fn move_step(&mut self) {
        let end = (self.moved + MOVE_STEP).min(self.old.len());
        self.move_to(end);
    }

    /// Moves every bucket of the retiring table left.
    fn move_rest(&mut self) {
        self.move_to(self.old.len());
    }

    fn move_to(&mut self, end: usize) {
        for i in self.moved..end {
            // An empty bucket stays empty: no probe run went through it.
            let b = self.old[i];
            if is_live(b) {
                self.old[i] = MOVED;
                self.place(b);
            }
        }
        self.moved = end;
        if end == self.old.len() {
            self.old = Vec::new();
            self.moved = 0;
        }
    }

    /// Rehashes everything at once into a table for `len` items (a bulk
    /// insert, whose own writes cost as much).
    fn grow_to(&mut self, len: usize) {
        let needed = len.saturating_mul(MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM);
        let size = needed.max(16).next_power_of_two();
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        self.mask = size - 1;
        self.grow_at = size / MAX_LOAD_DEN * MAX_LOAD_NUM;
        for b in old.into_iter().filter(|&b| is_live(b)) {
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
        agrees_with_a_set(|r| (r % 40) as u32 | 0xFFFF_FF00);
        // Hashes 0 to 2 and slots from 0: without the bit every stored
        // hash has, hash 0 and slot 0 would be an empty bucket, and slot 1
        // a moved one.
        agrees_with_a_set(|r| (r % 3) as u32);
    }

    fn agrees_with_a_set(hash_of_random: impl Fn(u64) -> u32) {
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
            let hash = hash_of_random(next());
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
            if let Some(&(_, slot)) = model.range((hash, 0)..=(hash, Slot::MAX)).last() {
                assert_eq!(index.find(hash, |s| s == slot), Some(slot));
            }
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
