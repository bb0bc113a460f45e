//! Where presences live, and the indexes that find them without scanning.
//!
//! Entries sit in one slab. Three small indexes point into it by slot number:
//! per replica by dot (so a delta's removals are found in O(1) each), by
//! `(topic, key)` (so updates and `get` are O(presences of the key)), and per
//! topic the list of its members (so `list` and `count` touch one topic
//! only). The hash indexes hold slot numbers with their hashes
//! ([`SlotIndex`]), an entry keeps the hash of its topic and key (so removing
//! it never reads the key), and an entry holds one pointer to its key and
//! meta, which keeps a presence near 150 bytes.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap};

use super::index::SlotIndex;
use super::slab::Slab;
use super::{Key, Topic};

/// A slot number in the slab.
pub(crate) type Slot = u32;

/// The key and meta of one version of a presence, shared between the state,
/// the deltas and the diffs that mention it, so none of them copies it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Payload<M> {
    pub(crate) key: Key,
    pub(crate) meta: M,
}

impl<M> Payload<M> {
    pub(crate) fn new(key: Key, meta: M) -> Arc<Self> {
        Arc::new(Self { key, meta })
    }
}

/// One version of one presence.
#[derive(Clone, Debug)]
pub(crate) struct Entry<M> {
    pub(crate) payload: Arc<Payload<M>>,
    pub(crate) topic: u32,
    pub(crate) replica: u32,
    /// The counter of this version.
    pub(crate) dot: u64,
    /// The counter of the presence's original track.
    pub(crate) pid: u64,
    /// The hash of `(topic, key)` in the key index.
    key_hash: u32,
    topic_pos: u32,
}

/// Where a new entry goes: its replica, topic, dot and presence counter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub(crate) replica: u32,
    pub(crate) topic: u32,
    pub(crate) dot: u64,
    pub(crate) pid: u64,
}

/// Hash index entries waiting to be added together.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    dots: Vec<(u32, Slot)>,
    keys: Vec<(u32, Slot)>,
}

#[derive(Clone, Debug)]
struct TopicSlot {
    name: Topic,
    members: Vec<Slot>,
    visible: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Store<M> {
    slots: Slab<Entry<M>>,
    by_key: SlotIndex,
    by_dot: Vec<SlotIndex>,
    topics: Slab<TopicSlot>,
    topic_ids: HashMap<Topic, u32>,
    hasher: DefaultHashBuilder,
}

impl<M> Default for Store<M> {
    fn default() -> Self {
        Self {
            slots: Slab::default(),
            by_key: SlotIndex::default(),
            by_dot: Vec::new(),
            topics: Slab::default(),
            topic_ids: HashMap::default(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

// Seeded hashes: peers choose dots and keys, and must not be able to make
// them collide.
fn fold(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

fn key_hash(hasher: &DefaultHashBuilder, topic: u32, key: &str) -> u32 {
    fold(hasher.hash_one((topic, key)))
}

fn dot_hash(hasher: &DefaultHashBuilder, dot: u64) -> u32 {
    fold(hasher.hash_one(dot))
}

fn live<M>(slots: &Slab<Entry<M>>, slot: Slot) -> &Entry<M> {
    slots.get(slot)
}

fn live_mut<M>(slots: &mut Slab<Entry<M>>, slot: Slot) -> &mut Entry<M> {
    slots.get_mut(slot)
}

impl<M> Store<M> {
    pub(crate) fn entry(&self, slot: Slot) -> &Entry<M> {
        live(&self.slots, slot)
    }

    /// The local index of a topic, if any presence is on it.
    pub(crate) fn topic_index(&self, topic: &str) -> Option<u32> {
        self.topic_ids.get(topic).copied()
    }

    pub(crate) fn topic_name(&self, topic: u32) -> &Topic {
        &self.topic(topic).name
    }

    fn topic(&self, topic: u32) -> &TopicSlot {
        self.topics.get(topic)
    }

    fn topic_mut(&mut self, topic: u32) -> &mut TopicSlot {
        self.topics.get_mut(topic)
    }

    /// The index of `topic`, creating it if needed. A topic with no member
    /// is released by [`Store::remove`].
    pub(crate) fn intern_topic(&mut self, topic: &Topic) -> u32 {
        if let Some(&index) = self.topic_ids.get(topic.as_str()) {
            return index;
        }
        let slot = TopicSlot {
            name: topic.clone(),
            members: Vec::new(),
            visible: 0,
        };
        let index = self.topics.insert(slot);
        self.topic_ids.insert(topic.clone(), index);
        index
    }

    /// Topics that have at least one visible presence, with their counts.
    pub(crate) fn visible_topics(&self) -> impl Iterator<Item = (&Topic, usize)> {
        self.topics
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.visible > 0)
            .map(|t| (&t.name, t.visible))
    }

    pub(crate) fn visible_count(&self, topic: u32) -> usize {
        self.topic(topic).visible
    }

    /// The entries in the slots of `range`.
    pub(crate) fn entries_in(
        &self,
        range: std::ops::Range<Slot>,
    ) -> impl Iterator<Item = (Slot, &Entry<M>)> {
        self.slots.range(range)
    }

    /// One past the highest slot in use.
    pub(crate) fn slot_end(&self) -> Slot {
        self.slots.end()
    }

    /// The slots of a topic's members. A member removed is replaced by
    /// the last one; new members go last.
    pub(crate) fn member_slots(&self, topic: u32) -> &[Slot] {
        &self.topic(topic).members
    }

    pub(crate) fn topic_members(&self, topic: u32) -> impl Iterator<Item = &Entry<M>> {
        self.topic(topic)
            .members
            .iter()
            .map(|&slot| live(&self.slots, slot))
    }

    /// Counts a replica's presences on a topic in or out of the visible total.
    pub(crate) fn shift_visible(&mut self, topic: u32, visible: bool) {
        let slot = self.topic_mut(topic);
        if visible {
            slot.visible += 1;
        } else {
            slot.visible -= 1;
        }
    }

    /// Makes room for the dot index of replica `replica`.
    pub(crate) fn open_replica(&mut self, replica: u32) {
        let index = replica as usize;
        if self.by_dot.len() <= index {
            self.by_dot.resize_with(index + 1, SlotIndex::default);
        }
    }

    /// Frees the dot index of a replica that holds no entry any more.
    pub(crate) fn close_replica(&mut self, replica: u32) {
        debug_assert!(self.by_dot[replica as usize].is_empty());
        self.by_dot[replica as usize] = SlotIndex::default();
    }

    /// Reserves room for `additional` entries of `replica`.
    pub(crate) fn reserve(&mut self, replica: u32, additional: usize) {
        self.by_dot[replica as usize].reserve(additional);
        self.by_key.reserve(additional);
        self.slots.reserve(additional);
    }

    /// Reserves room for `additional` more members of `topic`.
    pub(crate) fn reserve_members(&mut self, topic: u32, additional: usize) {
        self.topics.get_mut(topic).members.reserve(additional);
    }

    pub(crate) fn replica_len(&self, replica: u32) -> usize {
        self.by_dot.get(replica as usize).map_or(0, SlotIndex::len)
    }

    /// The slots of one replica's entries, in no particular order.
    pub(crate) fn replica_slots(&self, replica: u32) -> impl Iterator<Item = Slot> + '_ {
        self.by_dot[replica as usize].iter()
    }

    /// The slots of one replica's entries, oldest dot first.
    pub(crate) fn replica_slots_by_dot(&self, replica: u32) -> Vec<Slot> {
        let mut slots: Vec<_> = self.replica_slots(replica).collect();
        slots.sort_unstable_by_key(|&s| live(&self.slots, s).dot);
        slots
    }

    pub(crate) fn find_dot(&self, replica: u32, dot: u64) -> Option<Slot> {
        let slots = &self.slots;
        self.by_dot
            .get(replica as usize)?
            .find(dot_hash(&self.hasher, dot), |s| live(slots, s).dot == dot)
    }

    /// The entries on `(topic, key)`, in no particular order.
    pub(crate) fn key_chain<'a>(
        &'a self,
        topic: u32,
        key: &'a str,
    ) -> impl Iterator<Item = Slot> + 'a {
        let slots = &self.slots;
        self.by_key
            .matches(key_hash(&self.hasher, topic, key))
            .filter(move |&s| {
                let e = live(slots, s);
                e.topic == topic && e.payload.key.as_str() == key
            })
    }

    /// Adds an entry; `visible` says whether its replica is shown.
    pub(crate) fn insert(&mut self, at: Place, payload: Arc<Payload<M>>, visible: bool) -> Slot {
        let (slot, dot_hash, key_hash) = self.place_entry(at, payload, visible);
        self.by_dot[at.replica as usize].insert(dot_hash, slot);
        self.by_key.insert(key_hash, slot);
        slot
    }

    /// [`Store::insert`] for one entry of a large merge: its hash index
    /// entries wait in `pending` for [`Store::index`], which adds them all
    /// at once. Until then the entry is not found by dot or by key.
    pub(crate) fn insert_unindexed(
        &mut self,
        at: Place,
        payload: Arc<Payload<M>>,
        visible: bool,
        pending: &mut Pending,
    ) -> Slot {
        let (slot, dot_hash, key_hash) = self.place_entry(at, payload, visible);
        pending.dots.push((dot_hash, slot));
        pending.keys.push((key_hash, slot));
        slot
    }

    /// Adds the index entries of the entries of `replica` inserted by
    /// [`Store::insert_unindexed`].
    pub(crate) fn index(&mut self, replica: u32, pending: Pending) {
        self.by_dot[replica as usize].insert_many(&pending.dots);
        self.by_key.insert_many(&pending.keys);
    }

    /// Puts an entry in the slab and its topic's members; returns its slot
    /// and its hashes by dot and by key.
    fn place_entry(
        &mut self,
        at: Place,
        payload: Arc<Payload<M>>,
        visible: bool,
    ) -> (Slot, u32, u32) {
        let Place {
            replica,
            topic,
            dot,
            pid,
        } = at;
        let key_hash = key_hash(&self.hasher, topic, payload.key.as_str());
        let topic_slot = self.topics.get_mut(topic);
        let topic_pos = topic_slot.members.len() as u32;
        let slot = self.slots.insert(Entry {
            payload,
            topic,
            replica,
            dot,
            pid,
            key_hash,
            topic_pos,
        });
        topic_slot.members.push(slot);
        if visible {
            topic_slot.visible += 1;
        }
        (slot, dot_hash(&self.hasher, dot), key_hash)
    }

    /// Gives an entry a new version in place; returns the old dot and
    /// payload. The key stays the same.
    pub(crate) fn replace(
        &mut self,
        slot: Slot,
        dot: u64,
        payload: Arc<Payload<M>>,
    ) -> (u64, Arc<Payload<M>>) {
        let hasher = &self.hasher;
        let slots = &mut self.slots;
        let entry = live_mut(slots, slot);
        let replica = entry.replica as usize;
        let old_dot = std::mem::replace(&mut entry.dot, dot);
        let old_payload = std::mem::replace(&mut entry.payload, payload);
        let table = &mut self.by_dot[replica];
        table.remove(dot_hash(hasher, old_dot), slot);
        table.insert(dot_hash(hasher, dot), slot);
        (old_dot, old_payload)
    }

    /// Removes an entry and returns it with its topic's name (the topic
    /// itself is released when this was its last entry); `visible` says
    /// whether its replica is shown.
    pub(crate) fn remove(&mut self, slot: Slot, visible: bool) -> (Entry<M>, Topic) {
        let entry = self.slots.remove(slot);
        let removed = self.by_dot[entry.replica as usize]
            .remove(dot_hash(&self.hasher, entry.dot), slot)
            && self.by_key.remove(entry.key_hash, slot);
        debug_assert!(removed, "an entry is in both hash indexes");
        let topic_slot = self.topics.get_mut(entry.topic);
        topic_slot.members.swap_remove(entry.topic_pos as usize);
        if visible {
            topic_slot.visible -= 1;
        }
        if let Some(&moved) = topic_slot.members.get(entry.topic_pos as usize) {
            self.slots.get_mut(moved).topic_pos = entry.topic_pos;
        }
        let name = if topic_slot.members.is_empty() {
            let name = self.topics.remove(entry.topic).name;
            self.topic_ids.remove(name.as_str());
            name
        } else {
            topic_slot.name.clone()
        };
        (entry, name)
    }
}
