//! Numbered storage that reuses the numbers of removed items.

/// Items addressed by a `u32`, kept valid until the item is removed; removed
/// numbers are handed out again. Grows by a quarter at a time rather than
/// doubling: the entry slab is most of a state's memory, and a doubled
/// vector idles up to half of it.
#[derive(Clone, Debug)]
pub(crate) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.items[index as usize] = Some(item);
                index
            }
            None => {
                if self.items.len() == self.items.capacity() {
                    self.items.reserve_exact((self.items.len() / 4).max(16));
                }
                self.items.push(Some(item));
                (self.items.len() - 1) as u32
            }
        }
    }

    pub(crate) fn remove(&mut self, index: u32) -> T {
        let item = self.items[index as usize]
            .take()
            .expect("slab numbers in use point at live items");
        self.free.push(index);
        item
    }

    pub(crate) fn get(&self, index: u32) -> &T {
        self.items[index as usize]
            .as_ref()
            .expect("slab numbers in use point at live items")
    }

    pub(crate) fn get_mut(&mut self, index: u32) -> &mut T {
        self.items[index as usize]
            .as_mut()
            .expect("slab numbers in use point at live items")
    }

    /// The live items with their numbers.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.as_ref().map(|item| (i as u32, item)))
    }

    /// The live items numbered in `range`, with their numbers.
    pub(crate) fn range(&self, range: std::ops::Range<u32>) -> impl Iterator<Item = (u32, &T)> {
        let end = (range.end as usize).min(self.items.len());
        let start = (range.start as usize).min(end);
        self.items[start..end]
            .iter()
            .zip(range.start..)
            .filter_map(|(item, i)| item.as_ref().map(|item| (i, item)))
    }

    /// One past the highest number handed out.
    pub(crate) fn end(&self) -> u32 {
        self.items.len() as u32
    }

    /// Makes room for `additional` more items without growing again.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let spare = self.free.len() + (self.items.capacity() - self.items.len());
        if additional > spare {
            self.items.reserve_exact(additional - spare);
        }
    }
}
