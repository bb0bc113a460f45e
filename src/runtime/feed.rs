//! One topic's diffs for its subscribers (or another stream of shared
//! items: every topic's diffs of a shard, replica events): a bounded ring
//! numbered in order, read by each subscriber at its own position.
//!
//! Publishing a diff is O(1) whatever the number of subscribers: the diff
//! goes into the ring once, behind an `Arc`, and the wakers of the
//! subscribers waiting for it are handed back to be woken after the
//! publisher's locks are released. Each subscriber reads the diffs after its
//! position; one whose position fell out of the ring learns it from the
//! numbers alone, without reading the diffs it missed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use super::lock::{LockStats, TimedMutex};
use crate::TopicDiff;

/// What a subscriber finds at its position.
pub(crate) enum Read<T> {
    /// The next diff.
    Diff(T),
    /// Nothing yet.
    Empty,
    /// Diffs it had not read left the ring.
    Lagged,
    /// The tracker stopped and every diff was read.
    Closed,
}

struct Slot<T> {
    /// Dropped once every subscriber that was there when it came read it.
    diff: Option<T>,
    unread: usize,
}

struct Ring<T> {
    /// The number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot<T>>,
    capacity: usize,
    readers: usize,
    closed: bool,
    /// Subscribers waiting for the next diff, and how many times the list
    /// was emptied (a subscriber registers once per emptying).
    waiting: Vec<Waker>,
    round: u64,
}

impl<T> Ring<T> {
    fn tail(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// Forgets a reader's interest in what is held from `pos` on.
    fn pass(&mut self, pos: u64) {
        let from = pos.saturating_sub(self.base) as usize;
        for slot in self.slots.iter_mut().skip(from) {
            slot.unread = slot.unread.saturating_sub(1);
            if slot.unread == 0 {
                slot.diff = None;
            }
        }
    }
}

/// A stream of shared items; see the module docs.
pub(crate) struct Feed<T> {
    ring: TimedMutex<Ring<T>>,
}

/// The diffs of one topic.
pub(crate) type TopicFeed<M> = Feed<Arc<TopicDiff<M>>>;

/// What a publisher does once its locks are released: wake the
/// subscribers that wait for its diffs, drop the diffs no subscriber
/// wanted (a large one takes a while to free), and have the key counts
/// catch up with a large diff off the async threads.
pub(crate) struct Wake<M> {
    wakers: Vec<Waker>,
    pub(crate) unwanted: Vec<TopicDiff<M>>,
    /// A diff was put aside for the key counts.
    pub(crate) counting: bool,
}

impl<M> Wake<M> {
    pub(crate) fn new() -> Self {
        Self {
            wakers: Vec::new(),
            unwanted: Vec::new(),
            counting: false,
        }
    }

    pub(crate) fn wake(self) {
        for waker in self.wakers {
            waker.wake();
        }
    }

    /// Takes in what another publisher has to do.
    pub(crate) fn absorb(&mut self, other: Wake<M>) {
        self.wakers.extend(other.wakers);
        self.unwanted.extend(other.unwanted);
        self.counting |= other.counting;
    }
}

/// Where a subscriber stands in its feed.
pub(crate) struct Position {
    pub(crate) next: u64,
    /// The waiting round it registered its waker in, and where.
    registered: Option<(u64, usize)>,
}

impl<T: Clone> Feed<T> {
    /// A feed keeping at most `capacity` diffs.
    pub(crate) fn new(capacity: usize, stats: Arc<LockStats>) -> Self {
        Self {
            ring: TimedMutex::new(
                Ring {
                    base: 0,
                    slots: VecDeque::new(),
                    capacity: capacity.max(1),
                    readers: 0,
                    closed: false,
                    waiting: Vec::new(),
                    round: 0,
                },
                stats,
                "feed",
            ),
        }
    }

    /// Adds a diff for the subscribers there now; their wakers go to
    /// `wake`.
    pub(crate) fn push<M>(&self, diff: T, wake: &mut Wake<M>) {
        let mut ring = self.ring.lock();
        if ring.readers == 0 {
            return;
        }
        if ring.slots.len() == ring.capacity {
            ring.slots.pop_front();
            ring.base += 1;
        }
        let unread = ring.readers;
        ring.slots.push_back(Slot {
            diff: Some(diff),
            unread,
        });
        if !ring.waiting.is_empty() {
            wake.wakers.append(&mut ring.waiting);
            ring.round += 1;
        }
    }

    /// A new subscriber, reading from the next diff on.
    pub(crate) fn join(&self) -> Position {
        let mut ring = self.ring.lock();
        ring.readers += 1;
        Position {
            next: ring.tail(),
            registered: None,
        }
    }

    /// A subscriber leaves; whether it was the last.
    pub(crate) fn leave(&self, pos: &Position) -> bool {
        let mut ring = self.ring.lock();
        ring.pass(pos.next);
        ring.readers = ring.readers.saturating_sub(1);
        ring.readers == 0
    }

    /// Moves a subscriber that lagged to the next diff to come.
    pub(crate) fn skip_to_tail(&self, pos: &mut Position) {
        let mut ring = self.ring.lock();
        ring.pass(pos.next);
        pos.next = ring.tail();
    }

    /// Every diff from a reader's place to the end of the feed, or `None`
    /// when diffs it had not read left the ring.
    pub(crate) fn read_to_end(&self, pos: &mut Position) -> Option<Vec<T>> {
        let mut diffs = Vec::new();
        loop {
            match self.read(pos, Waker::noop()) {
                Read::Diff(diff) => diffs.push(diff),
                Read::Empty | Read::Closed => return Some(diffs),
                Read::Lagged => return None,
            }
        }
    }

    /// The diff at a subscriber's position, if any; when there is none,
    /// its `waker` is woken once one comes.
    pub(crate) fn read(&self, pos: &mut Position, waker: &Waker) -> Read<T> {
        let mut ring = self.ring.lock();
        if pos.next < ring.base {
            return Read::Lagged;
        }
        let index = (pos.next - ring.base) as usize;
        if let Some(slot) = ring.slots.get_mut(index) {
            pos.next += 1;
            slot.unread = slot.unread.saturating_sub(1);
            let diff = if slot.unread == 0 {
                slot.diff.take()
            } else {
                slot.diff.clone()
            };
            return match diff {
                Some(diff) => Read::Diff(diff),
                // Only a reader that was not counted for it could get here.
                None => Read::Lagged,
            };
        }
        if ring.closed {
            return Read::Closed;
        }
        let round = ring.round;
        match pos.registered {
            Some((r, at)) if r == round => {
                if let Some(w) = ring.waiting.get_mut(at)
                    && !w.will_wake(waker)
                {
                    w.clone_from(waker);
                }
            }
            _ => {
                ring.waiting.push(waker.clone());
                pos.registered = Some((round, ring.waiting.len() - 1));
            }
        }
        Read::Empty
    }

    /// The tracker stopped: subscribers read what is left, then the end.
    pub(crate) fn close<M>(&self, wake: &mut Wake<M>) {
        let mut ring = self.ring.lock();
        ring.closed = true;
        wake.wakers.append(&mut ring.waiting);
        ring.round += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;

    use super::{Feed, Read, Wake};
    use crate::TopicDiff;
    use crate::runtime::lock::LockStats;

    fn feed(capacity: usize) -> Feed<Arc<TopicDiff<String>>> {
        Feed::new(capacity, Arc::new(LockStats::default()))
    }

    fn push(feed: &Feed<Arc<TopicDiff<String>>>) -> Arc<TopicDiff<String>> {
        let diff = Arc::new(TopicDiff::default());
        let mut wake = Wake::<String>::new();
        feed.push(diff.clone(), &mut wake);
        diff
    }

    #[test]
    fn a_diff_is_shared_and_freed_once_every_subscriber_read_it() {
        let feed = feed(8);
        let waker = Waker::noop();
        let (mut a, mut b) = (feed.join(), feed.join());
        let diff = push(&feed);
        // The ring holds one reference for both subscribers.
        assert_eq!(Arc::strong_count(&diff), 2);
        let Read::Diff(got) = feed.read(&mut a, waker) else {
            panic!("a diff");
        };
        assert!(Arc::ptr_eq(&got, &diff));
        drop(got);
        assert_eq!(Arc::strong_count(&diff), 2, "b has not read it");
        assert!(matches!(feed.read(&mut b, waker), Read::Diff(_)));
        assert_eq!(Arc::strong_count(&diff), 1, "freed by the ring");
        assert!(matches!(feed.read(&mut a, waker), Read::Empty));
    }

    #[test]
    fn a_subscriber_that_fell_out_of_the_ring_is_told_by_its_position() {
        let feed = feed(4);
        let waker = Waker::noop();
        let mut slow = feed.join();
        let mut fast = feed.join();
        for _ in 0..1_000 {
            push(&feed);
            assert!(matches!(feed.read(&mut fast, waker), Read::Diff(_)));
        }
        assert!(matches!(feed.read(&mut slow, waker), Read::Lagged));
        feed.skip_to_tail(&mut slow);
        assert!(matches!(feed.read(&mut slow, waker), Read::Empty));
        let diff = push(&feed);
        assert!(matches!(feed.read(&mut slow, waker), Read::Diff(_)));
        assert!(matches!(feed.read(&mut fast, waker), Read::Diff(_)));
        assert_eq!(Arc::strong_count(&diff), 1);
    }

    #[test]
    fn a_subscriber_that_leaves_releases_what_it_did_not_read() {
        let feed = feed(8);
        let waker = Waker::noop();
        let (mut a, b) = (feed.join(), feed.join());
        let diff = push(&feed);
        assert!(matches!(feed.read(&mut a, waker), Read::Diff(_)));
        assert!(!feed.leave(&b), "a is still there");
        assert_eq!(Arc::strong_count(&diff), 1);
        assert!(feed.leave(&a), "the last one");
    }
}
