//! Numbered storage that reuses the numbers of removed items.

use super::segments::Segmented;

/// Items addressed by a `u32`, kept valid until the item is removed; removed
/// numbers are handed out again. Stored in segments ([`Segmented`]), so
/// growing never copies the items already there: the entry slab is most of
/// a state's memory, and a tracker grows it under a lock.
#[derive(Clone, Debug)]
pub(crate) struct Slab<T> {
    items: Segmented<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Segmented::default(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(index) => {
                *self.slot_mut(index) = Some(item);
                index
            }
            None => {
                self.items.push(Some(item));
                (self.items.len() - 1) as u32
            }
        }
    }

    fn slot_mut(&mut self, index: u32) -> &mut Option<T> {
        self.items
            .get_mut(index as usize)
            .expect("slab numbers handed out are in range")
    }

    pub(crate) fn remove(&mut self, index: u32) -> T {
        let item = self
            .slot_mut(index)
            .take()
            .expect("slab numbers in use point at live items");
        self.free.push(index);
        item
    }

    #[inline]
    pub(crate) fn get(&self, index: u32) -> &T {
        match self.items.get(index as usize) {
            Some(Some(item)) => item,
            _ => panic!("slab numbers in use point at live items"),
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, index: u32) -> &mut T {
        self.slot_mut(index)
            .as_mut()
            .expect("slab numbers in use point at live items")
    }

    /// The live items with their numbers.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.range(0..self.end())
    }

    /// The live items numbered in `range`, with their numbers.
    pub(crate) fn range(&self, range: std::ops::Range<u32>) -> impl Iterator<Item = (u32, &T)> {
        self.items
            .range(range.start as usize..range.end as usize)
            .zip(range.start..)
            .filter_map(|(item, i)| item.as_ref().map(|item| (i, item)))
    }

    /// One past the highest number handed out.
    pub(crate) fn end(&self) -> u32 {
        self.items.len() as u32
    }

    /// Makes room for `additional` more items.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.items
            .reserve(additional.saturating_sub(self.free.len()));
    }
}
