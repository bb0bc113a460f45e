//! How many keys each topic of a shard shows, kept up to date from the
//! diffs the shard publishes, so that [`super::Tracker::topics`] reads a
//! topic's key count in O(1).
//!
//! One key's presences may sit in several replicas' states, so the count
//! is not a sum over states: the shard keeps, per topic, how many visible
//! presences each key has, and a topic's key count is the number of keys
//! with at least one. A key is held as its 64-bit hash under a seed of this
//! process (12 bytes a key with its count, rather than a copy of the key):
//! two keys of a topic are counted as one only if their hashes collide,
//! about once in 10^7 for a topic of a million keys, and a peer cannot aim
//! for it without the seed.
//!
//! The counts cost a hash-table update per change, so they are kept only
//! from the first `topics()` call on (see [`Shard::start_key_counts`]).
//!
//! A diff is counted under the shard's lock when it is small. A large one
//! (a catch-up, a replica shown or hidden) is put aside in O(1) and counted
//! later in slices of [`SLICE`] changes, each under the lock, so that no
//! hold grows with the size of a diff. What is put aside is counted in the
//! order it came, and small diffs that come meanwhile queue behind it, so a
//! count never goes below zero. A reader counts what is put aside first. A
//! topic's keys are spread over [`PARTS`] tables once it has many, so that
//! growing a table moves a bounded number of keys too.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::shard::Shard;
use crate::{Key, Meta, PresenceId, Topic, TopicDiff};

/// Changes counted, or slots read, per hold of the shard's lock.
pub(crate) const SLICE: usize = 2048;

/// A topic's keys are spread over this many tables once it has more than
/// [`SPREAD_AT`].
const PARTS: usize = 256;
const SPREAD_AT: usize = 16_384;

/// A key's hash (in two halves: 12 bytes a key rather than 16) and how
/// many visible presences it has.
#[derive(Clone, Copy)]
struct Counted {
    hash: [u32; 2],
    presences: u32,
}

impl Counted {
    fn hash(&self) -> u64 {
        u64::from(self.hash[0]) | (u64::from(self.hash[1]) << 32)
    }
}

/// The keys of one topic: one table, or [`PARTS`] chosen by the hash's
/// top bits.
#[derive(Default)]
struct TopicKeys {
    parts: Vec<HashTable<Counted>>,
    len: usize,
}

impl TopicKeys {
    fn part(&mut self, hash: u64) -> &mut HashTable<Counted> {
        if self.parts.is_empty() {
            self.parts.push(HashTable::new());
        }
        let n = self.parts.len();
        // `n` is 1 or `PARTS`, a power of two.
        &mut self.parts[(hash >> 56) as usize & (n - 1)]
    }

    fn join(&mut self, hash: u64) {
        let part = self.part(hash);
        match part.find_mut(hash, |c| c.hash() == hash) {
            // A count is at most the presences a shard shows, far below
            // u32::MAX for any memory this runs in; saturating keeps it a
            // count anyway.
            Some(c) => c.presences = c.presences.saturating_add(1),
            None => {
                let counted = Counted {
                    hash: [hash as u32, (hash >> 32) as u32],
                    presences: 1,
                };
                part.insert_unique(hash, counted, Counted::hash);
                self.len += 1;
                if self.len > SPREAD_AT && self.parts.len() == 1 {
                    self.spread();
                }
            }
        }
    }

    fn leave(&mut self, hash: u64) {
        if let Ok(mut entry) = self.part(hash).find_entry(hash, |c| c.hash() == hash) {
            if entry.get().presences > 1 {
                entry.get_mut().presences -= 1;
            } else {
                entry.remove();
                self.len -= 1;
            }
        }
    }

    /// Moves the keys of the one table into [`PARTS`] (once, at
    /// [`SPREAD_AT`] keys).
    fn spread(&mut self) {
        let one = std::mem::take(&mut self.parts);
        self.parts = (0..PARTS).map(|_| HashTable::new()).collect();
        for counted in one.into_iter().flatten() {
            let hash = counted.hash();
            self.part(hash).insert_unique(hash, counted, Counted::hash);
        }
    }
}

/// A diff of one topic put aside, and how many of its changes are counted.
struct Deferred<M> {
    topic: Topic,
    changes: Arc<TopicDiff<M>>,
    done: usize,
}

/// Whether the counts are kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not asked for yet: nothing is counted.
    Off,
    /// Being built from the states: every diff is put aside.
    Building,
    On,
}

/// The key counts of one shard's topics; see the module docs.
pub(crate) struct KeyCounts<M> {
    mode: Mode,
    hasher: DefaultHashBuilder,
    topics: HashMap<Topic, TopicKeys>,
    deferred: VecDeque<Deferred<M>>,
}

impl<M> KeyCounts<M> {
    pub(crate) fn new() -> Self {
        Self {
            mode: Mode::Off,
            hasher: DefaultHashBuilder::default(),
            topics: HashMap::new(),
            deferred: VecDeque::new(),
        }
    }

    /// Whether diffs are counted (or put aside to be).
    pub(crate) fn kept(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Whether some diff waits to be counted.
    pub(crate) fn behind(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// How many keys `topic` shows, once the counts are kept and nothing
    /// waits to be counted.
    pub(crate) fn keys(&self, topic: &str) -> usize {
        debug_assert!(self.mode == Mode::On && !self.behind());
        self.topics.get(topic).map_or(0, |t| t.len)
    }

    /// Whether `changes` should be put aside rather than counted now: it is
    /// large, something before it waits, or the counts are being built.
    pub(crate) fn defers(&self, changes: &TopicDiff<M>) -> bool {
        self.mode == Mode::Building
            || self.behind()
            || changes.joins().len() + changes.leaves().len() > SLICE
    }

    /// Counts a small diff of `topic` now.
    pub(crate) fn count(&mut self, topic: &Topic, changes: &TopicDiff<M>) {
        debug_assert!(!self.defers(changes));
        self.count_range(
            topic,
            changes,
            0..changes.leaves().len() + changes.joins().len(),
        );
    }

    /// Puts a diff of `topic` aside, to count later.
    pub(crate) fn defer(&mut self, topic: Topic, changes: Arc<TopicDiff<M>>) {
        self.deferred.push_back(Deferred {
            topic,
            changes,
            done: 0,
        });
    }

    /// Counts up to about [`SLICE`] changes put aside (none while the
    /// counts are built); returns the diffs counted in full, to drop once
    /// the lock is let go.
    pub(crate) fn catch_up(&mut self) -> Vec<Arc<TopicDiff<M>>> {
        let mut budget = if self.mode == Mode::On { SLICE } else { 0 };
        let mut finished = Vec::new();
        while budget > 0 {
            let Some(mut next) = self.deferred.pop_front() else {
                break;
            };
            let total = next.changes.leaves().len() + next.changes.joins().len();
            let end = total.min(next.done.saturating_add(budget));
            self.count_range(&next.topic, &next.changes, next.done..end);
            budget -= end - next.done;
            next.done = end;
            if end < total {
                self.deferred.push_front(next);
            } else {
                finished.push(next.changes);
            }
        }
        finished
    }

    /// Counts the changes of `range`, numbered leaves first, then joins.
    /// Updates keep their key: they change no count.
    fn count_range(
        &mut self,
        topic: &Topic,
        changes: &TopicDiff<M>,
        range: std::ops::Range<usize>,
    ) {
        if range.is_empty() {
            return;
        }
        let (leaves, joins) = (changes.leaves(), changes.joins());
        let hash = |key: &Key| self.hasher.hash_one(key.as_str());
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.clone(), TopicKeys::default());
        }
        let Some(keys) = self.topics.get_mut(topic) else {
            return;
        };
        for i in range {
            match i.checked_sub(leaves.len()) {
                None => keys.leave(hash(leaves[i].key())),
                Some(j) => keys.join(hash(joins[j].key())),
            }
        }
        if keys.len == 0 {
            self.topics.remove(topic);
        }
    }
}

/// A visible presence's topic and key hash, as read while building.
type Read = (Topic, u64);

impl<M: Meta> Shard<M> {
    /// Starts keeping the key counts of this shard, if they are not kept
    /// yet, and returns once they are.
    ///
    /// The counts are built from the states in slices of [`SLICE`] entry
    /// slots, each read under the lock (as `slices.rs` reads them); every
    /// diff published meanwhile is put aside. Entries never move between
    /// slots, so a presence that does not change during the reading is
    /// read exactly once, and one that does is settled by the diffs put
    /// aside, replayed in order over what was read: a leave removes it, a
    /// join adds it. The replayed diffs leave the queue and those after
    /// them are counted as usual.
    pub(crate) fn start_key_counts(&self) {
        if self.lock().keys.mode == Mode::On {
            return;
        }
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        let hasher = {
            let mut s = self.lock();
            if s.keys.mode == Mode::On {
                return;
            }
            // After a build that did not finish, everything since its
            // start is still put aside: building again from here is sound.
            s.keys.mode = Mode::Building;
            s.keys.hasher.clone()
        };
        let hash = |key: &Key| hasher.hash_one(key.as_str());
        let read = self.read_in_slices(SLICE, |state, from, out| {
            let from = u32::try_from(from.unwrap_or(0)).unwrap_or(u32::MAX);
            let next = state.visit_slots(from, SLICE as u32, |id, topic, key| {
                out.push((id, (topic.clone(), hash(key))));
            });
            next.map(|slot| slot as usize)
        });
        let mut visible: HashMap<PresenceId, Read> = read.into_iter().collect();
        let replayed: Vec<(Topic, Arc<TopicDiff<M>>)> = {
            let s = self.lock();
            let deferred = s.keys.deferred.iter();
            deferred
                .map(|d| (d.topic.clone(), d.changes.clone()))
                .collect()
        };
        for (topic, changes) in &replayed {
            for p in changes.leaves() {
                visible.remove(p.id());
            }
            for p in changes.joins() {
                visible.insert(p.id().clone(), (topic.clone(), hash(p.key())));
            }
        }
        let mut topics: HashMap<Topic, TopicKeys> = HashMap::new();
        for (topic, hash) in visible.into_values() {
            topics.entry(topic).or_default().join(hash);
        }
        let old = {
            let mut s = self.lock();
            s.keys.mode = Mode::On;
            let done: Vec<_> = s.keys.deferred.drain(..replayed.len()).collect();
            (std::mem::replace(&mut s.keys.topics, topics), done)
        };
        drop(old);
    }

    /// Counts the keys of the diffs put aside, a slice per hold; returns
    /// the lock once nothing is left to count (or the counts are not kept,
    /// or are being built).
    pub(crate) fn count_keys(&self) -> super::lock::TimedGuard<'_, super::shard::Inner<M>> {
        loop {
            let mut s = self.lock();
            if s.keys.mode != Mode::On || !s.keys.behind() {
                return s;
            }
            let counted = s.keys.catch_up();
            drop(s);
            drop(counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Incarnation, PresenceId, ReplicaId, ReplicaName, State};

    fn kept() -> KeyCounts<String> {
        let mut counts = KeyCounts::new();
        counts.mode = Mode::On;
        counts
    }

    /// A state whose tracks and untracks give the diffs to count.
    struct Presences {
        state: State<String>,
    }

    impl Presences {
        fn new() -> Self {
            let name = ReplicaName::new("r").expect("a valid name");
            let id = ReplicaId::new(name, Incarnation::new(1, 1));
            Self {
                state: State::new(id),
            }
        }

        fn track(&mut self, keys: &[&str]) -> (Vec<PresenceId>, TopicDiff<String>) {
            let mut ids = Vec::new();
            let mut joins = Vec::new();
            for key in keys {
                let (id, change) = self.state.track("doc", key, String::new()).expect("tracks");
                ids.push(id);
                joins.extend(change.into_parts().1.joins().map(|(_, p)| p.clone()));
            }
            (ids, TopicDiff::from_parts(joins, Vec::new(), Vec::new()))
        }

        fn untrack(&mut self, ids: &[PresenceId]) -> TopicDiff<String> {
            let mut leaves = Vec::new();
            for id in ids {
                let change = self.state.untrack(id).expect("untracks");
                leaves.extend(change.into_parts().1.leaves().map(|(_, p)| p.clone()));
            }
            TopicDiff::from_parts(Vec::new(), leaves, Vec::new())
        }
    }

    #[test]
    fn a_key_counts_once_however_many_presences_it_has() {
        let (mut source, mut counts) = (Presences::new(), kept());
        let topic = Topic::from("doc");
        let (ids, joins) = source.track(&["alice", "alice", "bob"]);
        counts.count(&topic, &joins);
        assert_eq!(counts.keys("doc"), 2);
        counts.count(&topic, &source.untrack(&ids[..1]));
        assert_eq!(counts.keys("doc"), 2, "alice still has a presence");
        counts.count(&topic, &source.untrack(&ids[1..2]));
        assert_eq!(counts.keys("doc"), 1);
        counts.count(&topic, &source.untrack(&ids[2..]));
        assert_eq!(counts.keys("doc"), 0);
        assert!(counts.topics.is_empty(), "an empty topic is forgotten");
    }

    #[test]
    fn a_topic_with_many_keys_spreads_them_over_tables_and_counts_the_same() {
        let mut keys = TopicKeys::default();
        let hashes: Vec<u64> = (0..SPREAD_AT as u64 * 2)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &h in &hashes {
            keys.join(h);
            keys.join(h);
        }
        assert_eq!(keys.parts.len(), PARTS);
        assert_eq!(keys.len, hashes.len());
        let largest = keys.parts.iter().map(HashTable::len).max().unwrap_or(0);
        assert!(largest < hashes.len() / 64, "{largest} keys in one table");
        for &h in &hashes {
            keys.leave(h);
        }
        assert_eq!(keys.len, hashes.len(), "each key had two presences");
        for &h in &hashes {
            keys.leave(h);
        }
        assert_eq!(keys.len, 0);
    }

    #[test]
    fn a_large_diff_is_counted_in_slices_in_order_with_what_came_after() {
        let (mut source, mut counts) = (Presences::new(), kept());
        let topic = Topic::from("doc");
        let names: Vec<String> = (0..SLICE * 2 + 10).map(|i| format!("user:{i}")).collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        let (ids, large) = source.track(&keys);
        assert!(counts.defers(&large));
        counts.defer(topic.clone(), Arc::new(large));
        // A small leave after it waits behind it, or its key would go
        // below zero.
        let small = source.untrack(&ids[..1]);
        assert!(counts.defers(&small), "queued behind the large one");
        counts.defer(topic.clone(), Arc::new(small));
        let mut holds = 0;
        while counts.behind() {
            let before = counts.topics.get("doc").map_or(0, |t| t.len);
            drop(counts.catch_up());
            let after = counts.topics.get("doc").map_or(0, |t| t.len);
            assert!(after.abs_diff(before) <= SLICE, "one slice per hold");
            holds += 1;
        }
        assert_eq!(holds, 3);
        assert_eq!(counts.keys("doc"), names.len() - 1);
        let (_, one) = source.track(&["x"]);
        assert!(!counts.defers(&one), "caught up");
    }
}
