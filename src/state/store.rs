//! Where presences live, and the indexes that find them without scanning.
//!
//! Entries sit in one slab. Three small indexes point into it by slot number:
//! per replica by dot (so a delta's removals are found in O(1) each), per
//! `(topic, key)` the head of a chain of the key's presences (so updates and
//! `get` are O(presences of the key)), and per topic the list of its members
//! (so `list` and `count` touch one topic only). The indexes hold 4-byte slot
//! numbers rather than keys or entries, and an entry holds one pointer to its
//! key and meta, which keeps a presence near 140 bytes.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable, hash_table};

use super::slab::Slab;
use super::{Key, Topic};

/// A slot number in the slab; `NONE` ends a key chain.
pub(crate) type Slot = u32;
const NONE: Slot = Slot::MAX;

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
    next_in_key: Slot,
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

#[derive(Clone, Debug)]
struct TopicSlot {
    name: Topic,
    members: Vec<Slot>,
    visible: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Store<M> {
    slots: Slab<Entry<M>>,
    by_key: HashTable<Slot>,
    by_dot: Vec<HashTable<Slot>>,
    topics: Slab<TopicSlot>,
    topic_ids: HashMap<Topic, u32>,
    hasher: DefaultHashBuilder,
}

impl<M> Default for Store<M> {
    fn default() -> Self {
        Self {
            slots: Slab::default(),
            by_key: HashTable::new(),
            by_dot: Vec::new(),
            topics: Slab::default(),
            topic_ids: HashMap::default(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

fn key_hash(hasher: &DefaultHashBuilder, topic: u32, key: &str) -> u64 {
    hasher.hash_one((topic, key))
}

fn dot_hash(hasher: &DefaultHashBuilder, dot: u64) -> u64 {
    hasher.hash_one(dot)
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
            self.by_dot.resize_with(index + 1, HashTable::new);
        }
    }

    /// Frees the dot index of a replica that holds no entry any more.
    pub(crate) fn close_replica(&mut self, replica: u32) {
        debug_assert!(self.by_dot[replica as usize].is_empty());
        self.by_dot[replica as usize] = HashTable::new();
    }

    /// Reserves room for `additional` entries of `replica`.
    pub(crate) fn reserve(&mut self, replica: u32, additional: usize) {
        let hasher = &self.hasher;
        let slots = &self.slots;
        self.by_dot[replica as usize]
            .reserve(additional, |&s| dot_hash(hasher, live(slots, s).dot));
        self.by_key.reserve(additional, |&s| {
            let e = live(slots, s);
            key_hash(hasher, e.topic, e.payload.key.as_str())
        });
        self.slots.reserve(additional);
    }

    pub(crate) fn replica_len(&self, replica: u32) -> usize {
        self.by_dot.get(replica as usize).map_or(0, HashTable::len)
    }

    /// The slots of one replica's entries, in no particular order.
    pub(crate) fn replica_slots(&self, replica: u32) -> impl Iterator<Item = Slot> + '_ {
        self.by_dot[replica as usize].iter().copied()
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
            .find(dot_hash(&self.hasher, dot), |&s| live(slots, s).dot == dot)
            .copied()
    }

    /// The entries on `(topic, key)`, newest first.
    pub(crate) fn key_chain(&self, topic: u32, key: &str) -> impl Iterator<Item = Slot> + '_ {
        let slots = &self.slots;
        let head = self
            .by_key
            .find(key_hash(&self.hasher, topic, key), |&s| {
                let e = live(slots, s);
                e.topic == topic && e.payload.key.as_str() == key
            })
            .copied();
        std::iter::successors(head, move |&s| {
            let next = live(slots, s).next_in_key;
            (next != NONE).then_some(next)
        })
    }

    /// Adds an entry; `visible` says whether its replica is shown.
    pub(crate) fn insert(&mut self, at: Place, payload: Arc<Payload<M>>, visible: bool) -> Slot {
        let Place {
            replica,
            topic,
            dot,
            pid,
        } = at;
        let topic_pos = self.topic(topic).members.len() as u32;
        let entry = Entry {
            payload,
            topic,
            replica,
            dot,
            pid,
            next_in_key: NONE,
            topic_pos,
        };
        let slot = self.slots.insert(entry);
        let hasher = &self.hasher;
        let slots = &mut self.slots;
        self.by_dot[replica as usize].insert_unique(dot_hash(hasher, dot), slot, |&s| {
            dot_hash(hasher, live(slots, s).dot)
        });
        let key_str = live(slots, slot).payload.key.as_str();
        let hash = key_hash(hasher, topic, key_str);
        let same_key = |&s: &Slot| {
            let e = live(slots, s);
            e.topic == topic && e.payload.key.as_str() == key_str
        };
        let rehash = |&s: &Slot| {
            let e = live(slots, s);
            key_hash(hasher, e.topic, e.payload.key.as_str())
        };
        // The new entry heads its key's chain.
        let previous = match self.by_key.entry(hash, same_key, rehash) {
            hash_table::Entry::Occupied(mut head) => Some(std::mem::replace(head.get_mut(), slot)),
            hash_table::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                None
            }
        };
        if let Some(previous) = previous {
            live_mut(slots, slot).next_in_key = previous;
        }
        let topic_slot = self.topic_mut(topic);
        topic_slot.members.push(slot);
        if visible {
            topic_slot.visible += 1;
        }
        slot
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
        if let Ok(found) = table.find_entry(dot_hash(hasher, old_dot), |&s| s == slot) {
            found.remove();
        }
        table.insert_unique(dot_hash(hasher, dot), slot, |&s| {
            dot_hash(hasher, live(slots, s).dot)
        });
        (old_dot, old_payload)
    }

    /// Removes an entry and returns it with its topic's name (the topic
    /// itself is released when this was its last entry); `visible` says
    /// whether its replica is shown.
    pub(crate) fn remove(&mut self, slot: Slot, visible: bool) -> (Entry<M>, Topic) {
        let hasher = &self.hasher;
        let slots = &mut self.slots;
        let (replica, topic, dot, next, topic_pos) = {
            let e = live(slots, slot);
            (e.replica, e.topic, e.dot, e.next_in_key, e.topic_pos)
        };
        if let Ok(found) =
            self.by_dot[replica as usize].find_entry(dot_hash(hasher, dot), |&s| s == slot)
        {
            found.remove();
        }
        let key_str = live(slots, slot).payload.key.as_str();
        let hash = key_hash(hasher, topic, key_str);
        let head = self
            .by_key
            .find(hash, |&s| {
                let e = live(slots, s);
                e.topic == topic && e.payload.key.as_str() == key_str
            })
            .copied();
        match head {
            Some(head) if head == slot => {
                // The chain's head is found by its slot number from here on.
                if next == NONE {
                    if let Ok(found) = self.by_key.find_entry(hash, |&s| s == slot) {
                        found.remove();
                    }
                } else if let Some(head) = self.by_key.find_mut(hash, |&s| s == slot) {
                    *head = next;
                }
            }
            Some(mut previous) => loop {
                let after = live(slots, previous).next_in_key;
                if after == slot {
                    live_mut(slots, previous).next_in_key = next;
                    break;
                }
                if after == NONE {
                    debug_assert!(false, "an entry is on its key chain");
                    break;
                }
                previous = after;
            },
            None => debug_assert!(false, "an entry has a key chain"),
        }
        let topic_slot = self.topic_mut(topic);
        topic_slot.members.swap_remove(topic_pos as usize);
        if visible {
            topic_slot.visible -= 1;
        }
        let emptied = topic_slot.members.is_empty();
        if let Some(&moved) = topic_slot.members.get(topic_pos as usize) {
            live_mut(&mut self.slots, moved).topic_pos = topic_pos;
        }
        let name = if emptied {
            let name = self.topics.remove(topic).name;
            self.topic_ids.remove(name.as_str());
            name
        } else {
            self.topic_name(topic).clone()
        };
        let entry = self.slots.remove(slot);
        (entry, name)
    }
}
