//! A vector stored in fixed-size segments.
//!
//! A `Vec` that outgrows its allocation copies everything it holds into a
//! new one: a million entries take milliseconds, and a tracker grows its
//! state under a shard's lock. Here the items sit in segments of
//! [`SEGMENT`] items that never move once full, so growing past the first
//! segment allocates one more and copies nothing. The first segment grows
//! by a quarter at a time, so a small state stays small.

use std::ops::Range;

const SEGMENT_BITS: u32 = 12;
/// Items per segment.
pub(crate) const SEGMENT: usize = 1 << SEGMENT_BITS;
const OFFSET: usize = SEGMENT - 1;

#[derive(Clone, Debug)]
pub(crate) struct Segmented<T> {
    /// Every segment but the last holds [`SEGMENT`] items; only the first
    /// may be empty (it is kept, with its room, through churn at one item).
    segments: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Segmented<T> {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Segmented<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        self.segments
            .get(index >> SEGMENT_BITS)?
            .get(index & OFFSET)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.segments
            .get_mut(index >> SEGMENT_BITS)?
            .get_mut(index & OFFSET)
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        match self.segments.last_mut() {
            Some(last) if last.len() < last.capacity() => last.push(item),
            _ => self.push_growing(item),
        }
        self.len += 1;
    }

    /// [`Segmented::push`] into a full last segment: grows the first one
    /// by a quarter, or starts a segment.
    #[cold]
    fn push_growing(&mut self, item: T) {
        match self.segments.last_mut() {
            Some(last) if last.len() < SEGMENT => {
                let more = (last.len() / 4).max(16).min(SEGMENT - last.len());
                last.reserve_exact(more);
                last.push(item);
            }
            _ => {
                let mut segment = Vec::with_capacity(if self.segments.is_empty() {
                    16
                } else {
                    SEGMENT
                });
                segment.push(item);
                self.segments.push(segment);
            }
        }
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        let item = self.segments.last_mut()?.pop()?;
        if self.segments.len() > 1 && self.segments.last().is_some_and(Vec::is_empty) {
            self.segments.pop();
        }
        self.len -= 1;
        Some(item)
    }

    /// Removes the item at `index` and puts the last one in its place.
    pub(crate) fn swap_remove(&mut self, index: usize) -> Option<T> {
        if index >= self.len {
            return None;
        }
        let last = self.pop()?;
        match self.get_mut(index) {
            Some(item) => Some(std::mem::replace(item, last)),
            None => Some(last),
        }
    }

    /// Makes room for `additional` more items: in the first segment while
    /// they fit there, and in the list of segments past it (segments
    /// themselves are allocated as they fill).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if wanted <= SEGMENT {
            match self.segments.first_mut() {
                Some(first) => first.reserve_exact(wanted - first.len()),
                None => self.segments.push(Vec::with_capacity(wanted)),
            }
        } else {
            self.segments
                .reserve(wanted.div_ceil(SEGMENT).saturating_sub(self.segments.len()));
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.segments.iter().flatten()
    }

    /// The items at `range`, cut to the items there are.
    pub(crate) fn range(&self, range: Range<usize>) -> impl Iterator<Item = &T> {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        self.segments
            .iter()
            .enumerate()
            .skip(start >> SEGMENT_BITS)
            .take_while(move |(s, _)| s << SEGMENT_BITS < end)
            .flat_map(move |(s, segment)| {
                let base = s << SEGMENT_BITS;
                let from = start.saturating_sub(base);
                let to = (end - base).min(segment.len());
                &segment[from..to]
            })
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
