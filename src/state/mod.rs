//! The presence CRDT: pure data, no I/O, no clock.
//!
//! A [`State`] is one replica's view of every replica's presences. The
//! replica changes its own presences with [`State::track`],
//! [`State::update`] and [`State::untrack`]; each returns a [`Delta`] to ship
//! and a [`Diff`] to show. Peers' deltas come in through [`State::merge`],
//! which returns the [`Diff`] they caused.

mod counters;
#[cfg(feature = "crdts")]
mod crdts_impl;
mod delta;
mod diff;
mod history;
mod ids;
mod index;
mod lifecycle;
mod limits;
mod merge;
mod reference;
mod replica;
mod serial;
#[cfg(feature = "runtime")]
mod sharding;
mod slab;
pub(crate) mod store;
mod view;

use std::collections::BTreeMap;
use std::io;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use counters::{CounterSet, MAX_COUNTER};
pub use delta::Delta;
pub use diff::{Diff, Presence, TopicDiff, Update};
pub use ids::{
    Dot, Incarnation, Key, MAX_REPLICA_NAME_LEN, PresenceId, ReplicaId, ReplicaName, Topic,
};
pub use lifecycle::{PurgeReason, PurgeRecord, Reincarnation};
pub use limits::{Limits, StateError};
pub use reference::{ParseVersionRefError, VersionRef};
#[cfg(feature = "runtime")]
pub(crate) use view::group_by_key;
pub use view::{KeyGroup, KeyGroupRef, PresenceRef};

pub(crate) use delta::{Part, PartEntry, Removal};
use diff::DiffBuilder;
use hashbrown::HashMap;
use replica::ReplicaSlot;
#[cfg(feature = "runtime")]
pub(crate) use sharding::HeldEntry;
use slab::Slab;
use smallvec::SmallVec;
use store::{Payload, Place, Store};

/// What a presence's metadata must be: cloneable, comparable, and encodable
/// as MessagePack. Implemented for every such type.
pub trait Meta: Clone + Eq + Serialize + DeserializeOwned {}
impl<T: Clone + Eq + Serialize + DeserializeOwned> Meta for T {}

/// One replica's view of who is present where.
///
/// ```
/// use attendance::{Incarnation, ReplicaId, ReplicaName, State};
///
/// let id = |name: &str| ReplicaId::new(ReplicaName::new(name).unwrap(), Incarnation::new(1, 7));
/// let mut a: State<String> = State::new(id("a"));
/// let mut b: State<String> = State::new(id("b"));
///
/// let (_, change) = a.track("room:1", "alice", "web".to_string()).unwrap();
/// let diff = b.merge(change.into_delta()).unwrap();
/// assert_eq!(diff.joins().count(), 1);
/// assert_eq!(b.count("room:1"), 1);
/// ```
#[derive(Clone, Debug)]
pub struct State<M> {
    /// The index of this replica's own slot in `replicas`.
    me: u32,
    replicas: Slab<ReplicaSlot>,
    replica_ids: BTreeMap<ReplicaId, u32>,
    store: Store<M>,
    limits: Limits,
    purged: BTreeMap<ReplicaId, PurgeRecord>,
    /// The newest incarnation seen of each name that is held or purged.
    newest: BTreeMap<ReplicaName, Incarnation>,
    /// This replica's own presences that were updated: presence counter to
    /// the counter of the current version (the rest have the two equal).
    moved: HashMap<u64, u64>,
    superseded_by: Option<Incarnation>,
}

/// What a local mutation did: the delta to ship to peers and the diff to show
/// local subscribers.
#[derive(Clone, Debug)]
pub struct Change<M> {
    delta: Delta<M>,
    diff: Diff<M>,
}

impl<M> Change<M> {
    /// The delta to ship to peers.
    pub fn delta(&self) -> &Delta<M> {
        &self.delta
    }

    /// The change to the local lists.
    pub fn diff(&self) -> &Diff<M> {
        &self.diff
    }

    /// The delta, by value.
    pub fn into_delta(self) -> Delta<M> {
        self.delta
    }

    /// Both parts, by value.
    pub fn into_parts(self) -> (Delta<M>, Diff<M>) {
        (self.delta, self.diff)
    }
}

/// One replica whose sub-state a [`State`] holds.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReplicaInfo<'a> {
    /// The replica.
    pub id: &'a ReplicaId,
    /// Which of its counters are known here.
    pub context: &'a CounterSet,
    /// Whether its presences are hidden from lists (it is considered down).
    pub hidden: bool,
    /// How many presences of it are held, shown or hidden.
    pub presences: usize,
    /// How many of its recent removals are kept to serve catch-ups (at
    /// most [`Limits::removal_log`]).
    pub removals_kept: usize,
}

/// Builds a [`State`] with non-default settings.
///
/// ```
/// use attendance::{Incarnation, Limits, ReplicaId, ReplicaName, State};
///
/// let id = ReplicaId::new(ReplicaName::new("a").unwrap(), Incarnation::new(1, 2));
/// let state: State<String> = State::builder(id)
///     .limits(Limits::default().max_presences_per_replica(10))
///     .build();
/// assert_eq!(state.limits().presences_per_replica(), 10);
/// ```
#[derive(Debug)]
pub struct StateBuilder<M> {
    replica: ReplicaId,
    limits: Limits,
    first_counter: u64,
    meta: PhantomData<fn() -> M>,
}

impl<M> StateBuilder<M> {
    /// Sets the limits (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Starts this replica's counter at `first` instead of 1, as if it had
    /// already spent the counters below. Counters are opaque to peers; this
    /// exists so tests and benchmarks can exercise long-lived replicas,
    /// whose large counters cost more bytes on the wire. It is kept within
    /// `1..=2^62`, which leaves more counters than any replica can spend.
    pub fn first_counter(mut self, first: u64) -> Self {
        self.first_counter = first.clamp(1, 1 << 62);
        self
    }

    /// The state, holding nothing yet.
    pub fn build(self) -> State<M> {
        let mut newest = BTreeMap::new();
        newest.insert(self.replica.name().clone(), self.replica.incarnation());
        let mut own = ReplicaSlot::new(self.replica.clone());
        own.context = CounterSet::prefix(self.first_counter - 1);
        let mut replicas = Slab::default();
        let me = replicas.insert(own);
        let mut replica_ids = BTreeMap::new();
        replica_ids.insert(self.replica, me);
        let mut store = Store::default();
        store.open_replica(me);
        State {
            me,
            replicas,
            replica_ids,
            store,
            limits: self.limits,
            purged: BTreeMap::new(),
            newest,
            moved: HashMap::default(),
            superseded_by: None,
        }
    }
}

/// Counts the bytes of a MessagePack encoding without keeping them.
struct ByteCount(usize);

impl io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) fn encoded_meta_len<M: Serialize>(meta: &M) -> Result<usize, StateError> {
    let mut count = ByteCount(0);
    rmp_serde::encode::write(&mut count, meta)
        .map_err(|e| StateError::MetaEncoding(e.to_string()))?;
    Ok(count.0)
}

impl<M: Meta> State<M> {
    /// An empty state for `replica`, with default limits.
    pub fn new(replica: ReplicaId) -> Self {
        Self::builder(replica).build()
    }

    /// A builder for a state of `replica`.
    pub fn builder(replica: ReplicaId) -> StateBuilder<M> {
        StateBuilder {
            replica,
            limits: Limits::default(),
            first_counter: 1,
            meta: PhantomData,
        }
    }

    /// This replica.
    pub fn replica(&self) -> &ReplicaId {
        &self.slot(self.me).id
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The last counter value this replica used.
    pub fn counter(&self) -> u64 {
        self.slot(self.me).context.max()
    }

    // --- local mutations -------------------------------------------------

    /// Tracks a new presence of this replica on `topic` under `key`.
    ///
    /// Returns its id and the change. The presence is listed at once.
    pub fn track(
        &mut self,
        topic: &str,
        key: &str,
        meta: M,
    ) -> Result<(PresenceId, Change<M>), StateError> {
        self.check_topic(topic)?;
        self.check_key(key)?;
        self.check_meta(&meta)?;
        let count = self.store.replica_len(self.me) + 1;
        if count > self.limits.presences_per_replica() {
            return Err(StateError::TooManyPresences {
                replica: self.replica().clone(),
                count,
                max: self.limits.presences_per_replica(),
            });
        }
        let counter = self.next_counter();
        let topic_index = match self.store.topic_index(topic) {
            Some(index) => index,
            None => self.store.intern_topic(&Topic::from(topic)),
        };
        let topic = self.store.topic_name(topic_index).clone();
        let payload = Payload::new(Key::from(key), meta);
        let at = Place {
            replica: self.me,
            topic: topic_index,
            dot: counter,
            pid: counter,
        };
        self.store.insert(at, payload.clone(), true);
        let replica = self.replica().clone();
        let id = PresenceId::new(replica.clone(), counter);
        let entry = PartEntry {
            dot: counter,
            pid: counter,
            topic: 0,
            payload: payload.clone(),
        };
        // Built in place: a change is a few hundred bytes, and moving its
        // pieces into it one by one copied them several times over.
        Ok((
            id.clone(),
            Change {
                delta: Delta {
                    topics: SmallVec::from_buf([topic.clone()]),
                    parts: SmallVec::from_buf([Part {
                        context: CounterSet::single(counter),
                        entries: SmallVec::from_buf([entry]),
                        ..Part::new(replica)
                    }]),
                },
                diff: Diff::one_join(topic, Presence::new(id, counter, payload)),
            },
        ))
    }

    /// Replaces the metadata of one of this replica's presences.
    ///
    /// The presence keeps its id; the new version takes the next counter.
    pub fn update(&mut self, id: &PresenceId, meta: M) -> Result<Change<M>, StateError> {
        let slot = self.own_slot(id)?;
        self.check_meta(&meta)?;
        let counter = self.next_counter();
        let entry = self.store.entry(slot);
        let payload = Payload::new(entry.payload.key.clone(), meta);
        let (topic, pid) = (self.store.topic_name(entry.topic).clone(), entry.pid);
        let (old_dot, old_payload) = self.store.replace(slot, counter, payload.clone());
        self.moved.insert(pid, counter);
        let removal = Removal {
            event: counter,
            dot: old_dot,
        };
        let mut part = Part::new(self.replica().clone());
        part.context.insert(counter);
        part.dead.insert(old_dot);
        part.entries.push(PartEntry {
            dot: counter,
            pid,
            topic: 0,
            payload: payload.clone(),
        });
        part.removals.push(removal);
        self.log_removal(self.me, removal);
        let mut diff = DiffBuilder::new();
        let update = Update::new(id.clone(), (old_dot, old_payload), (counter, payload));
        diff.update(&topic, update);
        Ok(Change {
            delta: Delta::of_part([topic], part),
            diff: diff.finish(),
        })
    }

    /// Removes one of this replica's presences.
    pub fn untrack(&mut self, id: &PresenceId) -> Result<Change<M>, StateError> {
        let slot = self.own_slot(id)?;
        Ok(self.remove_own(&mut [slot]))
    }

    /// Removes several of this replica's presences at once, such as
    /// everything one connection held. Each removal takes its own counter.
    /// Nothing is removed if any id is unknown.
    pub fn untrack_many(&mut self, ids: &[PresenceId]) -> Result<Change<M>, StateError> {
        let mut slots = ids
            .iter()
            .map(|id| self.own_slot(id))
            .collect::<Result<Vec<_>, _>>()?;
        slots.sort_unstable();
        slots.dedup();
        Ok(self.remove_own(&mut slots))
    }

    /// Removes every presence this replica holds under `key` on `topic`.
    pub fn untrack_key(&mut self, topic: &str, key: &str) -> Change<M> {
        let mut slots: Vec<_> = match self.store.topic_index(topic) {
            Some(t) => self
                .store
                .key_chain(t, key)
                .filter(|&s| self.store.entry(s).replica == self.me)
                .collect(),
            None => Vec::new(),
        };
        self.remove_own(&mut slots)
    }

    fn remove_own(&mut self, slots: &mut [store::Slot]) -> Change<M> {
        // Oldest first, so counters follow the order of the presences.
        slots.sort_by_key(|&s| self.store.entry(s).dot);
        // Removals name dots only: the delta needs no topic. Built in place,
        // as in `track`.
        let mut delta = Delta {
            topics: SmallVec::new(),
            parts: SmallVec::from_buf([Part::new(self.replica().clone())]),
        };
        let part = &mut delta.parts[0];
        let mut diff = DiffBuilder::new();
        for &slot in slots.iter() {
            let counter = self.next_counter();
            let (old, topic) = self.store.remove(slot, true);
            self.moved.remove(&old.pid);
            part.context.insert(counter);
            part.dead.insert(old.dot);
            let removal = Removal {
                event: counter,
                dot: old.dot,
            };
            part.removals.push(removal);
            self.log_removal(self.me, removal);
            let id = PresenceId::new(self.replica().clone(), old.pid);
            diff.leave(&topic, Presence::new(id, old.dot, old.payload));
        }
        if part.is_empty() {
            delta.parts.clear();
        }
        Change {
            delta,
            diff: diff.finish(),
        }
    }

    // --- queries ---------------------------------------------------------

    /// The visible presences on `topic`, grouped by key in key order.
    pub fn list(&self, topic: &str) -> Vec<KeyGroupRef<'_, M>> {
        let Some(t) = self.store.topic_index(topic) else {
            return Vec::new();
        };
        let mut members: Vec<_> = self
            .store
            .topic_members(t)
            .filter(|e| !self.slot(e.replica).hidden)
            .collect();
        members.sort_by(|a, b| {
            (a.payload.key.as_str(), &self.slot(a.replica).id, a.pid).cmp(&(
                b.payload.key.as_str(),
                &self.slot(b.replica).id,
                b.pid,
            ))
        });
        let mut groups: Vec<KeyGroupRef<'_, M>> = Vec::new();
        for e in members {
            let presence = self.presence_ref(e);
            match groups.last_mut() {
                Some(group) if group.key == &e.payload.key => group.presences.push(presence),
                _ => groups.push(KeyGroupRef {
                    key: &e.payload.key,
                    presences: vec![presence],
                }),
            }
        }
        groups
    }

    /// The visible presences on `topic` as owned values (sharing their key
    /// and meta with the state), in key order then id order: what
    /// [`State::list`] shows, to keep beyond a borrow.
    pub fn presences(&self, topic: &str) -> Vec<Presence<M>> {
        let Some(t) = self.store.topic_index(topic) else {
            return Vec::new();
        };
        let mut out: Vec<Presence<M>> = self
            .store
            .topic_members(t)
            .filter(|e| !self.slot(e.replica).hidden)
            .map(|e| {
                let id = PresenceId::new(self.slot(e.replica).id.clone(), e.pid);
                Presence::new(id, e.dot, e.payload.clone())
            })
            .collect();
        out.sort_by(|a, b| (a.key(), a.id()).cmp(&(b.key(), b.id())));
        out
    }

    /// The visible presences under `key` on `topic`, ordered by id.
    pub fn get(&self, topic: &str, key: &str) -> Vec<PresenceRef<'_, M>> {
        let Some(t) = self.store.topic_index(topic) else {
            return Vec::new();
        };
        let mut found: Vec<_> = self
            .store
            .key_chain(t, key)
            .map(|s| self.store.entry(s))
            .filter(|e| !self.slot(e.replica).hidden)
            .map(|e| self.presence_ref(e))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }

    /// How many visible presences `topic` has. O(1).
    pub fn count(&self, topic: &str) -> usize {
        self.store
            .topic_index(topic)
            .map_or(0, |t| self.store.visible_count(t))
    }

    /// The topics with at least one visible presence, in order, with counts.
    pub fn topics(&self) -> Vec<(&Topic, usize)> {
        let mut topics: Vec<_> = self.store.visible_topics().collect();
        topics.sort_unstable_by(|a, b| a.0.cmp(b.0));
        topics
    }

    /// How many presences are visible in all. O(replicas).
    pub fn len(&self) -> usize {
        self.replicas
            .iter()
            .filter(|(_, r)| !r.hidden)
            .map(|(i, _)| self.store.replica_len(i))
            .sum()
    }

    /// Whether no presence is visible.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The replicas whose sub-states this state holds, in id order.
    pub fn replicas(&self) -> impl Iterator<Item = ReplicaInfo<'_>> {
        self.replica_ids.values().map(|&i| {
            let slot = self.slot(i);
            ReplicaInfo {
                id: &slot.id,
                context: &slot.context,
                hidden: slot.hidden,
                presences: self.store.replica_len(i),
                removals_kept: slot.log.len(),
            }
        })
    }

    /// How many presences of `replica` are held, shown or hidden.
    pub(crate) fn presences_of(&self, replica: &ReplicaId) -> usize {
        self.replica_ids
            .get(replica)
            .map_or(0, |&i| self.store.replica_len(i))
    }

    /// Which counters of `replica` this state knows.
    pub fn context(&self, replica: &ReplicaId) -> Option<&CounterSet> {
        self.replica_ids
            .get(replica)
            .map(|&i| &self.slot(i).context)
    }

    // --- helpers ---------------------------------------------------------

    fn presence_ref<'a>(&'a self, e: &'a store::Entry<M>) -> PresenceRef<'a, M> {
        PresenceRef {
            id: PresenceId::new(self.slot(e.replica).id.clone(), e.pid),
            version: e.dot,
            meta: &e.payload.meta,
        }
    }

    pub(crate) fn slot(&self, index: u32) -> &ReplicaSlot {
        self.replicas.get(index)
    }

    pub(crate) fn slot_mut(&mut self, index: u32) -> &mut ReplicaSlot {
        self.replicas.get_mut(index)
    }

    fn next_counter(&mut self) -> u64 {
        let me = self.me;
        let slot = self.slot_mut(me);
        let counter = slot.context.max() + 1;
        slot.context.insert(counter);
        counter
    }

    /// The slot of one of this replica's own presences.
    fn own_slot(&self, id: &PresenceId) -> Result<store::Slot, StateError> {
        if id.replica() != self.replica() {
            return Err(StateError::UnknownPresence(id.clone()));
        }
        let pid = id.as_dot().counter();
        let dot = self.moved.get(&pid).copied().unwrap_or(pid);
        self.store
            .find_dot(self.me, dot)
            .filter(|&s| self.store.entry(s).pid == pid)
            .ok_or_else(|| StateError::UnknownPresence(id.clone()))
    }

    fn check_topic(&self, topic: &str) -> Result<(), StateError> {
        let max = self.limits.topic_len();
        if topic.is_empty() || topic.len() > max {
            return Err(StateError::InvalidTopic {
                len: topic.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        let max = self.limits.key_len();
        if key.is_empty() || key.len() > max {
            return Err(StateError::InvalidKey {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_meta(&self, meta: &M) -> Result<(), StateError> {
        let len = encoded_meta_len(meta)?;
        let max = self.limits.meta_bytes();
        if len > max {
            return Err(StateError::MetaTooLarge { len, max });
        }
        Ok(())
    }
}
