//! The causal context of one replica: which of its counter values are known.

use std::fmt;

use smallvec::SmallVec;

/// The largest counter, heartbeat number or incarnation start time (in
/// ms) a peer may send: 2^53. Decoding refuses anything above it, so
/// arithmetic on what peers send (`held + 1`, a counter plus a step) cannot
/// overflow. A replica making a million changes a second reaches it after
/// 285 years.
pub const MAX_COUNTER: u64 = 1 << 53;

/// Ranges kept inline: most sets are one range, and a delta's set is made
/// and dropped on every merge.
type Ranges = SmallVec<[(u64, u64); 1]>;

/// A set of counter values of one replica, kept as sorted, disjoint,
/// non-adjacent inclusive ranges.
///
/// In a state that has received every event in order this is one range
/// `1..=n` (a contiguous prefix); events seen out of order add a few more
/// ranges. Its size follows the gaps, never the number of presences.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CounterSet {
    ranges: Ranges,
}

impl CounterSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set `1..=n` (empty when `n` is 0).
    pub fn prefix(n: u64) -> Self {
        let mut set = Self::new();
        set.insert_range(1, n);
        set
    }

    /// The set of one counter.
    pub(crate) fn single(counter: u64) -> Self {
        Self {
            ranges: SmallVec::from_buf([(counter, counter)]),
        }
    }

    /// Whether no counter is known.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `counter` is in the set.
    pub fn contains(&self, counter: u64) -> bool {
        // Most lookups are of recent counters, so try the last range first.
        match self.ranges.last() {
            None => false,
            Some(&(lo, hi)) if counter >= lo => counter <= hi,
            Some(_) => {
                let i = self.ranges.partition_point(|&(_, hi)| hi < counter);
                self.ranges.get(i).is_some_and(|&(lo, _)| lo <= counter)
            }
        }
    }

    /// The greatest counter in the set, 0 when empty.
    pub fn max(&self) -> u64 {
        self.ranges.last().map_or(0, |&(_, hi)| hi)
    }

    /// The smallest counter in the set, `None` when empty.
    pub fn min(&self) -> Option<u64> {
        self.ranges.first().map(|&(lo, _)| lo)
    }

    /// The `n` such that `1..=n` is in the set and `n + 1` is not.
    pub fn contiguous_prefix(&self) -> u64 {
        match self.ranges.first() {
            Some(&(1, hi)) => hi,
            _ => 0,
        }
    }

    /// How many counters the set holds.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }

    /// The ranges, sorted, as inclusive `(first, last)` pairs.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Every counter in the set, ascending. Use only on small sets.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(lo, hi)| lo..=hi)
    }

    /// Whether every counter of `other` is in `self`.
    pub fn is_superset(&self, other: &CounterSet) -> bool {
        let mut mine = self.ranges.iter().peekable();
        'theirs: for &(lo, hi) in &other.ranges {
            while let Some(&&(mlo, mhi)) = mine.peek() {
                if mhi < lo {
                    mine.next();
                    continue;
                }
                if mlo <= lo && hi <= mhi {
                    continue 'theirs;
                }
                return false;
            }
            return false;
        }
        true
    }

    /// Adds one counter.
    pub(crate) fn insert(&mut self, counter: u64) {
        self.insert_range(counter, counter);
    }

    /// Adds the inclusive range `lo..=hi` (nothing when `lo > hi`).
    pub(crate) fn insert_range(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        // The common case: the range extends or follows the last one.
        if let Some(last) = self.ranges.last_mut() {
            if lo > last.1.saturating_add(1) {
                self.ranges.push((lo, hi));
                return;
            }
            if lo >= last.0 {
                last.1 = last.1.max(hi);
                return;
            }
        } else {
            self.ranges.push((lo, hi));
            return;
        }
        // First range that ends at or after lo - 1 (touching counts).
        let start = self
            .ranges
            .partition_point(|&(_, h)| h.saturating_add(1) < lo);
        // First range that starts after hi + 1.
        let end = self
            .ranges
            .partition_point(|&(l, _)| l <= hi.saturating_add(1));
        if start == end {
            self.ranges.insert(start, (lo, hi));
        } else {
            let merged = (lo.min(self.ranges[start].0), hi.max(self.ranges[end - 1].1));
            self.ranges.drain(start + 1..end);
            self.ranges[start] = merged;
        }
    }

    /// Adds every counter of `other`.
    pub(crate) fn union(&mut self, other: &CounterSet) {
        if other.ranges.len() <= 2 {
            for &(lo, hi) in &other.ranges {
                self.insert_range(lo, hi);
            }
            return;
        }
        let mut merged = Ranges::with_capacity(self.ranges.len() + other.ranges.len());
        let mut a = self.ranges.iter().peekable();
        let mut b = other.ranges.iter().peekable();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) => {
                    if x.0 <= y.0 {
                        a.next();
                        x
                    } else {
                        b.next();
                        y
                    }
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&&y)) => {
                    b.next();
                    y
                }
                (None, None) => break,
            };
            match merged.last_mut() {
                Some(last) if next.0 <= last.1.saturating_add(1) => last.1 = last.1.max(next.1),
                _ => merged.push(next),
            }
        }
        self.ranges = merged;
    }

    /// Removes every counter of `other`.
    pub(crate) fn subtract(&mut self, other: &CounterSet) {
        if self.is_empty() || other.is_empty() {
            return;
        }
        let mut kept = Ranges::with_capacity(self.ranges.len());
        let mut theirs = other.ranges.iter().peekable();
        for &(first, hi) in &self.ranges {
            let mut lo = Some(first);
            while let (Some(l), Some(&&(tlo, thi))) = (lo, theirs.peek()) {
                if thi < l {
                    theirs.next();
                    continue;
                }
                if tlo > hi {
                    break;
                }
                if tlo > l {
                    kept.push((l, tlo - 1));
                }
                if thi >= hi {
                    lo = None;
                    break;
                }
                lo = Some(thi + 1);
                theirs.next();
            }
            if let Some(l) = lo {
                kept.push((l, hi));
            }
        }
        self.ranges = kept;
    }

    /// The counters of `self` above `floor`.
    pub(crate) fn above(&self, floor: u64) -> CounterSet {
        let ranges = self
            .ranges
            .iter()
            .filter(|&&(_, hi)| hi > floor)
            .map(|&(lo, hi)| (lo.max(floor + 1), hi))
            .collect();
        CounterSet { ranges }
    }

    /// The counters of `self` in `lo..=hi`.
    #[cfg(test)]
    pub(crate) fn within(&self, lo: u64, hi: u64) -> CounterSet {
        let ranges = self
            .ranges
            .iter()
            .filter(|&&(l, h)| h >= lo && l <= hi)
            .map(|&(l, h)| (l.max(lo), h.min(hi)))
            .collect();
        CounterSet { ranges }
    }

    /// Whether every counter of `other` in `lo..=hi` is in `self`: the same
    /// as `self.is_superset(&other.within(lo, hi))`, without building the
    /// set.
    pub(crate) fn is_superset_within(&self, other: &CounterSet, lo: u64, hi: u64) -> bool {
        other
            .ranges
            .iter()
            .filter(|&&(l, h)| h >= lo && l <= hi)
            .all(|&(l, h)| {
                let (l, h) = (l.max(lo), h.min(hi));
                let i = self.ranges.partition_point(|&(_, mine)| mine < l);
                self.ranges
                    .get(i)
                    .is_some_and(|&(mlo, mhi)| mlo <= l && h <= mhi)
            })
    }

    /// Builds a set from ranges that are already sorted, disjoint and
    /// non-adjacent; returns `None` when they are not.
    pub(crate) fn from_sorted_ranges(ranges: Vec<(u64, u64)>) -> Option<CounterSet> {
        let mut previous: Option<u64> = None;
        for &(lo, hi) in &ranges {
            if lo > hi || lo == 0 {
                return None;
            }
            if let Some(p) = previous
                && lo <= p.saturating_add(1)
            {
                return None;
            }
            previous = Some(hi);
        }
        Some(CounterSet {
            ranges: ranges.into(),
        })
    }
}

impl fmt::Debug for CounterSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (lo, hi)) in self.ranges().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}..={hi}")?;
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn model(set: &CounterSet) -> BTreeSet<u64> {
        set.iter().collect()
    }

    #[test]
    fn insert_keeps_ranges_disjoint_and_merges_neighbours() {
        let mut set = CounterSet::new();
        for c in [5, 1, 3, 2, 9, 4, 7, 8] {
            set.insert(c);
        }
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(1, 5), (7, 9)]);
        set.insert(6);
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(1, 9)]);
        assert_eq!(set.contiguous_prefix(), 9);
        assert_eq!(set.len(), 9);
    }

    #[test]
    fn operations_agree_with_a_set_of_integers() {
        // A small deterministic generator: no dependency, same cases every run.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let mut a = CounterSet::new();
            let mut b = CounterSet::new();
            let mut ma = BTreeSet::new();
            let mut mb = BTreeSet::new();
            for _ in 0..(next() % 12) {
                let lo = 1 + next() % 40;
                let hi = lo + next() % 4;
                a.insert_range(lo, hi);
                ma.extend(lo..=hi);
                let lo = 1 + next() % 40;
                let hi = lo + next() % 3;
                b.insert_range(lo, hi);
                mb.extend(lo..=hi);
            }
            assert_eq!(model(&a), ma);
            assert_eq!(a.is_superset(&b), mb.is_subset(&ma));
            let (lo, hi) = (next() % 45, next() % 45);
            assert_eq!(
                a.is_superset_within(&b, lo, hi),
                a.is_superset(&b.within(lo, hi))
            );
            for c in 0..50 {
                assert_eq!(a.contains(c), ma.contains(&c));
            }
            let floor = next() % 40;
            assert_eq!(
                model(&a.above(floor)),
                ma.iter().copied().filter(|&c| c > floor).collect()
            );
            let mut u = a.clone();
            u.union(&b);
            assert_eq!(model(&u), ma.union(&mb).copied().collect());
            let mut d = a.clone();
            d.subtract(&b);
            assert_eq!(model(&d), ma.difference(&mb).copied().collect());
            assert_eq!(
                CounterSet::from_sorted_ranges(u.ranges().collect()).as_ref(),
                Some(&u)
            );
        }
    }

    #[test]
    fn from_sorted_ranges_rejects_overlap_adjacency_and_zero() {
        assert!(CounterSet::from_sorted_ranges(vec![(1, 3), (4, 5)]).is_none());
        assert!(CounterSet::from_sorted_ranges(vec![(1, 3), (2, 5)]).is_none());
        assert!(CounterSet::from_sorted_ranges(vec![(0, 3)]).is_none());
        assert!(CounterSet::from_sorted_ranges(vec![(4, 3)]).is_none());
        assert!(CounterSet::from_sorted_ranges(vec![(1, 3), (5, 5)]).is_some());
    }
}
