//! What the runtime needs to keep one replica's presences in several
//! states at once: split by topic, each topic in one state, and each other
//! replica's presences apart from this replica's own.
//!
//! The runtime (`src/runtime/store.rs`) keeps, per topic shard, one state
//! for this replica's own presences and one per other replica, plus one
//! state without entries that holds every replica's context, purge records
//! and incarnations. These hooks let it check a local change before it
//! spends a counter, spend counters another shard used, read a state in
//! bounded slices, and cut deltas by topic and by counter. None changes
//! what a `State` means: each shard's state is a `State` of this replica
//! whose entries are those of its topics.

use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::diff::DiffBuilder;
use super::store::{Entry, Payload, Place};
use super::{
    CounterSet, Delta, Diff, Key, Meta, Part, PartEntry, Presence, PresenceId, Removal, ReplicaId,
    State, StateError, Topic,
};

/// One presence version read out of a state, with its topic by name.
#[derive(Clone, Debug)]
pub(crate) struct HeldEntry<M> {
    pub(crate) dot: u64,
    pub(crate) pid: u64,
    pub(crate) topic: Topic,
    pub(crate) payload: Arc<Payload<M>>,
}

impl<M: Meta> State<M> {
    /// Checks the topic and key of a track as [`State::track`] does.
    /// Nothing changes.
    pub(crate) fn check_track(&self, topic: &str, key: &str) -> Result<(), StateError> {
        self.check_topic(topic)?;
        self.check_key(key)
    }

    /// Checks what [`State::update`] checks: the presence is one of this
    /// replica's held here, and the meta fits. Nothing changes.
    pub(crate) fn check_update(&self, id: &PresenceId, meta: &M) -> Result<(), StateError> {
        self.own_slot(id)?;
        self.check_meta(meta)
    }

    /// Whether one of this replica's presences is held here.
    pub(crate) fn holds_own(&self, id: &PresenceId) -> bool {
        self.own_slot(id).is_ok()
    }

    /// The version and meta of one of this replica's presences held here.
    pub(crate) fn own_version(&self, id: &PresenceId) -> Option<(u64, &M)> {
        let entry = self.store.entry(self.own_slot(id).ok()?);
        Some((entry.dot, &entry.payload.meta))
    }

    /// The ids of this replica's presences under `key` on `topic`.
    pub(crate) fn own_ids_of_key(&self, topic: &str, key: &str) -> Vec<PresenceId> {
        let Some(t) = self.store.topic_index(topic) else {
            return Vec::new();
        };
        self.store
            .key_chain(t, key)
            .map(|s| self.store.entry(s))
            .filter(|e| e.replica == self.me)
            .map(|e| PresenceId::new(self.replica().clone(), e.pid))
            .collect()
    }

    /// Marks this replica's counters up to `last` as spent: other shards of
    /// this replica used them, or a change spent one and failed. The next
    /// local change here takes `last + 1`.
    pub(crate) fn spend_own_counters(&mut self, last: u64) {
        let me = self.me;
        let context = &mut self.slot_mut(me).context;
        let max = context.max();
        if last > max {
            context.insert_range(max + 1, last);
        }
    }

    /// The visible presences on `topic`, in no particular order.
    pub(crate) fn presences_unsorted(&self, topic: &str) -> Vec<Presence<M>> {
        let Some(t) = self.store.topic_index(topic) else {
            return Vec::new();
        };
        self.store
            .topic_members(t)
            .filter(|e| !self.slot(e.replica).hidden)
            .map(|e| {
                let id = PresenceId::new(self.slot(e.replica).id.clone(), e.pid);
                Presence::new(id, e.dot, e.payload.clone())
            })
            .collect()
    }

    /// The visible presences on `topic` at member positions `low..high`,
    /// added to `out`, where `high` is `below` (or the number of members,
    /// if fewer or `None`) and `low` is `n` before it; returns `low`, or
    /// `None` when it is 0. Members move only when one is removed (the
    /// last takes its place) and new ones go last, so reading downwards a
    /// slice at a time sees every member that stays, maybe twice.
    pub(crate) fn presences_below(
        &self,
        topic: &str,
        below: Option<usize>,
        n: usize,
        out: &mut Vec<Presence<M>>,
    ) -> Option<usize> {
        let t = self.store.topic_index(topic)?;
        let members = self.store.member_slots(t);
        let high = below.map_or(members.len(), |b| b.min(members.len()));
        let low = high.saturating_sub(n);
        for &slot in &members[low..high] {
            let e = self.store.entry(slot);
            if !self.slot(e.replica).hidden {
                let id = PresenceId::new(self.slot(e.replica).id.clone(), e.pid);
                out.push(Presence::new(id, e.dot, e.payload.clone()));
            }
        }
        (low > 0).then_some(low)
    }

    /// Visits the visible presences held in entry slots `from..` (slots
    /// never move: an entry stays in its slot until it is removed), at
    /// most `n` slots; returns the slot to go on from, or `None` past the
    /// last.
    pub(crate) fn visit_slots(
        &self,
        from: u32,
        n: u32,
        mut visit: impl FnMut(PresenceId, &Topic, &Key),
    ) -> Option<u32> {
        self.visit_entries(from, n, |id, topic, e| visit(id, topic, &e.payload.key))
    }

    /// The visible presences held in entry slots `from..`, with their
    /// topics, added to `out`, as [`State::visit_slots`] visits them.
    pub(crate) fn presences_in_slots(
        &self,
        from: u32,
        n: u32,
        out: &mut Vec<(Topic, Presence<M>)>,
    ) -> Option<u32> {
        self.visit_entries(from, n, |id, topic, e| {
            out.push((topic.clone(), Presence::new(id, e.dot, e.payload.clone())));
        })
    }

    fn visit_entries(
        &self,
        from: u32,
        n: u32,
        mut visit: impl FnMut(PresenceId, &Topic, &Entry<M>),
    ) -> Option<u32> {
        let end = from.saturating_add(n);
        for (_, e) in self.store.entries_in(from..end) {
            if !self.slot(e.replica).hidden {
                let id = PresenceId::new(self.slot(e.replica).id.clone(), e.pid);
                visit(id, self.store.topic_name(e.topic), e);
            }
        }
        (end < self.store.slot_end()).then_some(end)
    }

    /// The visible presences under `key` on `topic`, in no particular
    /// order: O(presences of the key).
    pub(crate) fn presences_of_key(&self, topic: &str, key: &str) -> Vec<Presence<M>> {
        let Some(t) = self.store.topic_index(topic) else {
            return Vec::new();
        };
        self.store
            .key_chain(t, key)
            .map(|s| self.store.entry(s))
            .filter(|e| !self.slot(e.replica).hidden)
            .map(|e| {
                let id = PresenceId::new(self.slot(e.replica).id.clone(), e.pid);
                Presence::new(id, e.dot, e.payload.clone())
            })
            .collect()
    }

    /// Every visible presence as a join (`leave` false) or a leave: what
    /// showing or hiding them all changes in the lists.
    pub(crate) fn everything_as(&self, leave: bool) -> Diff<M> {
        let mut diff = DiffBuilder::new();
        for (topic, _) in self.store.visible_topics() {
            let Some(t) = self.store.topic_index(topic.as_str()) else {
                continue;
            };
            let place = diff.place(topic);
            for e in self.store.topic_members(t) {
                if self.slot(e.replica).hidden {
                    continue;
                }
                let id = PresenceId::new(self.slot(e.replica).id.clone(), e.pid);
                let presence = Presence::new(id, e.dot, e.payload.clone());
                if leave {
                    diff.leave(topic, presence);
                } else {
                    diff.join_at(place, presence);
                }
            }
        }
        diff.finish()
    }

    /// The entries of `replica` with a dot in `lo..=hi`, found by dot:
    /// O(hi - lo) lookups whatever the number of entries.
    pub(crate) fn entries_between(
        &self,
        replica: &ReplicaId,
        lo: u64,
        hi: u64,
        out: &mut Vec<HeldEntry<M>>,
    ) {
        let Some(&r) = self.replica_ids.get(replica) else {
            return;
        };
        for dot in lo..=hi {
            if let Some(s) = self.store.find_dot(r, dot) {
                let e = self.store.entry(s);
                out.push(HeldEntry {
                    dot: e.dot,
                    pid: e.pid,
                    topic: self.store.topic_name(e.topic).clone(),
                    payload: e.payload.clone(),
                });
            }
        }
    }

    /// The entries of `replica` with a dot above `since`, in no particular
    /// order: O(entries of the replica).
    pub(crate) fn entries_above(&self, replica: &ReplicaId, since: u64) -> Vec<HeldEntry<M>> {
        let Some(&r) = self.replica_ids.get(replica) else {
            return Vec::new();
        };
        self.store
            .replica_slots(r)
            .map(|s| self.store.entry(s))
            .filter(|e| e.dot > since)
            .map(|e| HeldEntry {
                dot: e.dot,
                pid: e.pid,
                topic: self.store.topic_name(e.topic).clone(),
                payload: e.payload.clone(),
            })
            .collect()
    }

    /// The removals of `replica` with an event above `since` and the floor
    /// of its log, or `None` when the log no longer reaches back to
    /// `since`.
    pub(crate) fn removals_since(&self, replica: &ReplicaId, since: u64) -> Option<Vec<Removal>> {
        let &r = self.replica_ids.get(replica)?;
        let slot = self.slot(r);
        if since < slot.history_floor {
            return None;
        }
        Some(slot.removals_since(since).collect())
    }

    /// Whether `replica` is held and hidden; `None` when not held.
    pub(crate) fn is_hidden(&self, replica: &ReplicaId) -> Option<bool> {
        self.replica_ids.get(replica).map(|&r| self.slot(r).hidden)
    }

    /// This replica's presences, oldest dot first, by topic name and
    /// payload: what a re-incarnation tracks again.
    pub(crate) fn own_entries_by_dot(&self) -> Vec<HeldEntry<M>> {
        self.store
            .replica_slots_by_dot(self.me)
            .into_iter()
            .map(|s| {
                let e = self.store.entry(s);
                HeldEntry {
                    dot: e.dot,
                    pid: e.pid,
                    topic: self.store.topic_name(e.topic).clone(),
                    payload: e.payload.clone(),
                }
            })
            .collect()
    }

    /// Tracks again, under this state's replica and the next counters,
    /// presences another incarnation held (their key and meta shared, not
    /// copied); returns their new ids in order.
    pub(crate) fn adopt_own(&mut self, entries: &[HeldEntry<M>]) -> Vec<PresenceId> {
        let mut ids = Vec::with_capacity(entries.len());
        for e in entries {
            let counter = self.next_counter();
            let topic = match self.store.topic_index(e.topic.as_str()) {
                Some(t) => t,
                None => self.store.intern_topic(&e.topic),
            };
            let at = Place {
                replica: self.me,
                topic,
                dot: counter,
                pid: counter,
            };
            self.store.insert(at, e.payload.clone(), true);
            ids.push(PresenceId::new(self.replica().clone(), counter));
        }
        ids
    }
}

impl<M> Diff<M> {
    /// How many joins, leaves and updates it holds.
    pub(crate) fn len(&self) -> usize {
        self.iter()
            .map(|(_, d)| d.joins().len() + d.leaves().len() + d.updates().len())
            .sum()
    }

    /// A diff that changes nothing visible but counts entries that did not
    /// decode or were refused (a merge split over several states reports
    /// its counts so).
    pub(crate) fn counts_only(undecodable: u64, refused: u64) -> Self {
        let mut diff = DiffBuilder::new();
        diff.count_undecodable(undecodable);
        diff.count_refused(refused);
        diff.finish()
    }
}

impl<M: Clone> Delta<M> {
    /// The same delta without entries: what the contexts, dead dots,
    /// removals and incarnations say, for a state that keeps no entries.
    pub(crate) fn without_entries(&self) -> Delta<M> {
        Delta {
            topics: SmallVec::new(),
            parts: self
                .parts
                .iter()
                .map(|p| Part {
                    replica: p.replica.clone(),
                    context: p.context.clone(),
                    dead: p.dead.clone(),
                    entries: SmallVec::new(),
                    removals: p.removals.clone(),
                    history_floor: p.history_floor,
                    undecodable: p.undecodable,
                })
                .collect(),
        }
    }

    /// The part of `replica` cut by topic into `shards` deltas: each keeps
    /// the part's context and dead dots and the entries of its shard's
    /// topics (`shard_of` names the shard of a topic). Removals stay out:
    /// the states that take these keep no log. `None` when no part speaks
    /// of `replica`.
    pub(crate) fn split_part(
        &self,
        replica: &ReplicaId,
        shards: usize,
        shard_of: impl Fn(&str) -> usize,
    ) -> Option<Vec<(Delta<M>, usize)>> {
        let part = self.part(replica)?;
        let topic_shard: SmallVec<[usize; 4]> =
            self.topics.iter().map(|t| shard_of(t.as_str())).collect();
        let mut out: Vec<(Delta<M>, usize)> = (0..shards)
            .map(|_| {
                let p = Part {
                    replica: part.replica.clone(),
                    context: part.context.clone(),
                    dead: part.dead.clone(),
                    entries: SmallVec::new(),
                    removals: SmallVec::new(),
                    history_floor: part.context.max(),
                    undecodable: 0,
                };
                (
                    Delta {
                        topics: self.topics.clone(),
                        parts: smallvec::smallvec![p],
                    },
                    0,
                )
            })
            .collect();
        // The decoder's count of undecodable entries goes to one shard only.
        if let Some((first, _)) = out.first_mut() {
            first.parts[0].undecodable = part.undecodable;
        }
        for e in &part.entries {
            let k = topic_shard.get(e.topic as usize).copied().unwrap_or(0);
            if let Some((delta, count)) = out.get_mut(k) {
                delta.parts[0].entries.push(e.clone());
                *count += 1;
            }
        }
        Some(out)
    }

    /// How many entries the part of `replica` carries.
    pub(crate) fn entries_of(&self, replica: &ReplicaId) -> usize {
        self.part(replica).map_or(0, |p| p.entries.len())
    }

    /// Adds entries read out of states to the part of `replica`, which
    /// must have none yet; they are sorted by dot and take their topics by
    /// name.
    pub(crate) fn fill(&mut self, replica: &ReplicaId, mut entries: Vec<HeldEntry<M>>) {
        let Ok(i) = self.parts.binary_search_by(|p| p.replica.cmp(replica)) else {
            return;
        };
        entries.sort_unstable_by_key(|e| e.dot);
        entries.dedup_by_key(|e| e.dot);
        let mut index: BTreeMap<Topic, u32> = self
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let part = &mut self.parts[i];
        part.entries = entries
            .into_iter()
            .map(|e| {
                let topic = *index.entry(e.topic.clone()).or_insert_with(|| {
                    self.topics.push(e.topic);
                    (self.topics.len() - 1) as u32
                });
                PartEntry {
                    dot: e.dot,
                    pid: e.pid,
                    topic,
                    payload: e.payload,
                }
            })
            .collect();
    }

    /// A delta of one part made from entries read out of states: its
    /// context and dead dots, its live entries, and the removals logged
    /// above `history_floor`.
    pub(crate) fn from_held(
        replica: ReplicaId,
        (context, dead): (CounterSet, CounterSet),
        entries: Vec<HeldEntry<M>>,
        removals: Vec<Removal>,
        history_floor: u64,
    ) -> Delta<M> {
        let mut part = Part::new(replica.clone());
        part.context = context;
        part.dead = dead;
        part.removals = removals.into_iter().collect();
        part.history_floor = history_floor;
        let mut delta = Delta {
            topics: SmallVec::new(),
            parts: smallvec::smallvec![part],
        };
        delta.fill(&replica, entries);
        delta
    }

    /// A delta that spends `counter` of `replica` on nothing.
    pub(crate) fn empty_event(replica: ReplicaId, counter: u64) -> Delta<M> {
        let mut part = Part::new(replica);
        part.context.insert(counter);
        part.history_floor = counter;
        Delta {
            topics: SmallVec::new(),
            parts: smallvec::smallvec![part],
        }
    }
}
