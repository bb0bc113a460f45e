//! A vector stored in fixed-size segments.
//!
//! A `Vec` that outgrows its allocation copies everything it holds into a
//! new one: a million entries take milliseconds, and a tracker grows its
//! state under a shard's lock. Here the first [`SEGMENT`] items sit in a
//! `Vec` that grows by a quarter at a time (a small state stays small, and
//! growing it copies at most [`SEGMENT`] items); the items past them sit in
//! boxed segments of [`SEGMENT`] items, allocated as needed, so growing
//! there copies nothing.

use std::ops::Range;

const SEGMENT_BITS: u32 = 12;
/// Items per segment.
const SEGMENT: usize = 1 << SEGMENT_BITS;
const OFFSET: usize = SEGMENT - 1;

/// A segment past the first: of a fixed length, so that an index into it
/// needs no length check.
type Fixed<T> = Box<[T; SEGMENT]>;

#[derive(Clone, Debug)]
pub(crate) struct Segmented<T> {
    /// Items `0..SEGMENT`, growing by a quarter at a time.
    first: Vec<T>,
    /// Items from `SEGMENT` on; places at `len` and past hold
    /// `T::default()`. The last segment may be empty.
    rest: Vec<Fixed<T>>,
    len: usize,
}

impl<T> Default for Segmented<T> {
    fn default() -> Self {
        Self {
            first: Vec::new(),
            rest: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Default> Segmented<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index < SEGMENT {
            self.first.get(index)
        } else if index < self.len {
            Some(&self.rest[(index >> SEGMENT_BITS) - 1][index & OFFSET])
        } else {
            None
        }
    }

    #[inline(always)]
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        if index < SEGMENT {
            self.first.get_mut(index)
        } else if index < self.len {
            Some(&mut self.rest[(index >> SEGMENT_BITS) - 1][index & OFFSET])
        } else {
            None
        }
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, item: T) {
        let index = self.len;
        if index < SEGMENT {
            if self.first.len() == self.first.capacity() {
                let more = (index / 4).max(16).min(SEGMENT - index);
                self.first.reserve_exact(more);
            }
            self.first.push(item);
        } else {
            let (segment, offset) = ((index >> SEGMENT_BITS) - 1, index & OFFSET);
            if segment == self.rest.len() {
                self.rest.push(fixed_segment());
            }
            self.rest[segment][offset] = item;
        }
        self.len += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        let index = self.len.checked_sub(1)?;
        self.len = index;
        if index < SEGMENT {
            return self.first.pop();
        }
        let (segment, offset) = ((index >> SEGMENT_BITS) - 1, index & OFFSET);
        let item = std::mem::take(&mut self.rest[segment][offset]);
        // One empty segment is kept, so that churn across a segment's
        // border does not allocate and free it each time.
        if offset == 0 && self.rest.len() > segment + 1 {
            self.rest.pop();
        }
        Some(item)
    }

    /// Removes the item at `index` and puts the last one in its place.
    #[inline]
    pub(crate) fn swap_remove(&mut self, index: usize) -> Option<T> {
        if index.checked_add(1)? >= self.len {
            return if index + 1 == self.len {
                self.pop()
            } else {
                None
            };
        }
        let last = self.pop()?;
        self.get_mut(index)
            .map(|item| std::mem::replace(item, last))
    }

    /// Makes room for `additional` more items: in the first segment while
    /// they fit there, and in the list of segments past it (segments
    /// themselves are allocated as they fill).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if wanted <= SEGMENT {
            self.first.reserve_exact(wanted - self.first.len());
        } else {
            let segments = wanted.div_ceil(SEGMENT) - 1;
            self.rest.reserve(segments.saturating_sub(self.rest.len()));
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.range(0..self.len)
    }

    /// The items at `range`, cut to the items there are.
    pub(crate) fn range(&self, range: Range<usize>) -> impl Iterator<Item = &T> {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        let first = &self.first[start.min(SEGMENT)..end.min(SEGMENT)];
        let rest = self.rest.iter().enumerate().flat_map(move |(s, segment)| {
            let base = (s + 1) << SEGMENT_BITS;
            let from = start.clamp(base, base + SEGMENT) - base;
            let to = end.clamp(base, base + SEGMENT) - base;
            &segment[from..to]
        });
        first.iter().chain(rest)
    }
}

/// A segment of default items, built on the heap (a segment on the stack
/// could overflow a small thread stack).
fn fixed_segment<T: Default>() -> Fixed<T> {
    let items: Box<[T]> = (0..SEGMENT).map(|_| T::default()).collect();
    match items.try_into() {
        Ok(fixed) => fixed,
        Err(_) => unreachable!("SEGMENT items were collected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_a_vec() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut segmented = Segmented::default();
        let mut model = Vec::new();
        for round in 0..40_000u64 {
            match next() % 8 {
                0 if !model.is_empty() => {
                    let at = (next() as usize) % model.len();
                    assert_eq!(segmented.swap_remove(at), Some(model.swap_remove(at)));
                }
                1 => assert_eq!(segmented.pop(), model.pop()),
                2 => segmented.reserve((next() % 5_000) as usize),
                _ => {
                    segmented.push(round);
                    model.push(round);
                }
            }
            assert_eq!(segmented.len(), model.len());
            assert_eq!(segmented.swap_remove(model.len()), None);
            if round % 997 == 0 {
                assert!(segmented.iter().eq(model.iter()));
                let a = (next() as usize) % (model.len() + 10);
                let b = (next() as usize) % (model.len() + 10);
                let (lo, hi) = (a.min(b), a.max(b));
                let cut = lo.min(model.len())..hi.min(model.len());
                assert!(segmented.range(lo..hi).eq(model[cut].iter()));
            }
        }
        for (i, item) in model.iter().enumerate() {
            assert_eq!(segmented.get(i), Some(item));
        }
        assert_eq!(segmented.get(model.len()), None);
    }
}
