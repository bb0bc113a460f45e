//! Merging deltas and states: the join, planned first and applied after.
//!
//! Every part is planned against the current state without changing it, and
//! checked against the limits; only when the whole delta is acceptable is
//! anything applied. A refused delta leaves the state exactly as it was.

use hashbrown::HashSet;
use smallvec::SmallVec;

use super::diff::DiffBuilder;
use super::lifecycle::PurgeReason;
use super::replica::ReplicaSlot;
use super::store::{Pending, Place, Slot};
use super::{
    Delta, Diff, Incarnation, Meta, Part, PartEntry, Presence, PresenceId, ReplicaId, State,
    StateError, Topic, Update,
};

/// What merging a delta will do.
#[derive(Default)]
pub(crate) struct MergePlan {
    parts: SmallVec<[Plan; 1]>,
    /// The newest incarnation of this replica's own name in the delta, if
    /// newer than this one.
    newer_self: Option<Incarnation>,
}

/// What merging one part will do.
struct Plan {
    /// The part's index in the delta.
    part: usize,
    /// The local slot of the replica, `None` for a replica new here.
    replica: Option<u32>,
    /// Older incarnations of the same name to purge first.
    superseded: SmallVec<[u32; 1]>,
    /// Whether this is a newer incarnation of its name than any seen.
    newest: bool,
    /// Local entries the part removes (those it replaces are not here).
    removals: SmallVec<[Slot; 2]>,
    /// Entries of the part to add.
    additions: Additions,
    /// How many of `additions` replace nothing (new presences here).
    fresh: usize,
    /// Entries of the part over this state's topic or key limits: not
    /// added (their dots still count as seen).
    refused: u64,
}

impl<M: Meta> State<M> {
    /// Merges a delta or a whole state from a peer and returns what changed
    /// in the visible lists.
    ///
    /// The merge is a join: merging the same deltas in any order, any number
    /// of times, gives the same state. Its cost follows the delta: entries
    /// it removes are found through the dot index, never by scanning, and a
    /// part whose counters are all known here costs O(ranges of its context).
    ///
    /// Data about this replica's own name is not merged: its own data is
    /// authoritative, and a newer incarnation of its name is noted for
    /// [`State::superseded_by`]. Data about purged or replaced incarnations
    /// is ignored.
    ///
    /// # Errors
    ///
    /// When a part would break a [`Limits`](super::Limits) bound; the state
    /// is then unchanged.
    pub fn merge(&mut self, mut delta: Delta<M>) -> Result<Diff<M>, StateError> {
        // The plan and the diff are filled in place and passed by
        // reference: moving them would copy hundreds of bytes each time.
        let mut plan = MergePlan::default();
        self.plan_into(&delta, &mut plan)?;
        let mut diff = DiffBuilder::new();
        self.apply(&mut delta, &plan, &mut diff);
        diff.tidy();
        Ok(diff.diff)
    }

    /// Plans a merge without changing anything; the error a merge would
    /// return, if any.
    pub(crate) fn plan(&self, delta: &Delta<M>) -> Result<MergePlan, StateError> {
        let mut plan = MergePlan::default();
        self.plan_into(delta, &mut plan)?;
        Ok(plan)
    }

    /// [`State::plan`], into `plan` (empty).
    fn plan_into(&self, delta: &Delta<M>, plan: &mut MergePlan) -> Result<(), StateError> {
        // Entries on a topic over this state's limits are refused one by
        // one, not the whole delta with them: a peer configured with larger
        // limits must not stop the rest of its presences from arriving.
        let bad_topics: SmallVec<[u32; 2]> = if delta
            .topics
            .iter()
            .all(|t| self.check_topic(t.as_str()).is_ok())
        {
            SmallVec::new()
        } else {
            (0u32..)
                .zip(&delta.topics)
                .filter(|(_, t)| self.check_topic(t.as_str()).is_err())
                .map(|(i, _)| i)
                .collect()
        };
        let plans = &mut plan.parts;
        let mut newer_self = None;
        let mut new_replicas = 0usize;
        let mut replaced = 0usize;
        for (index, part) in delta.parts.iter().enumerate() {
            let id = &part.replica;
            if id.name() == self.replica().name() {
                if id.incarnation() > self.replica().incarnation() {
                    newer_self = newer_self.max(Some(id.incarnation()));
                }
                continue;
            }
            // Data about a purged incarnation, or about one older than the
            // newest seen of its name, is ignored.
            let newest = self.newest.get(id.name()).copied();
            if self.purged.contains_key(id) || newest > Some(id.incarnation()) || part.is_empty() {
                continue;
            }
            // Parts are sorted by replica, so a newer incarnation of the same
            // name comes next; it wins.
            let newer_follows = delta
                .parts
                .get(index + 1)
                .is_some_and(|p| p.replica.name() == id.name());
            if newer_follows {
                continue;
            }
            let local = self.replica_ids.get(id).copied();
            if let Some(r) = local {
                if self.slot(r).context.is_superset(&part.context) {
                    // The sub-state is a function of the events applied:
                    // no new event, nothing new.
                    continue;
                }
            } else {
                new_replicas += 1;
            }
            // Older incarnations held here are purged by this one. None is
            // held when this is already the newest incarnation seen.
            let known_newest = newest == Some(id.incarnation());
            let superseded = if known_newest {
                SmallVec::new()
            } else {
                self.older_incarnations(id)
            };
            replaced += superseded.len();
            plans.push(Plan {
                part: index,
                replica: local,
                superseded,
                newest: !known_newest,
                removals: SmallVec::new(),
                additions: Additions::Every,
                fresh: 0,
                refused: 0,
            });
            if let Some(plan) = plans.last_mut() {
                self.plan_part(plan, part, &delta.topics, &bad_topics)?;
            }
        }
        let replicas = (self.replica_ids.len() + new_replicas).saturating_sub(replaced);
        if replicas > self.limits.replicas() {
            return Err(StateError::TooManyReplicas {
                count: replicas,
                max: self.limits.replicas(),
            });
        }
        plan.newer_self = newer_self;
        Ok(())
    }

    /// Fills in what merging `part` does: which entries it adds, which it
    /// removes, which it refuses.
    fn plan_part(
        &self,
        plan: &mut Plan,
        part: &Part<M>,
        topics: &[Topic],
        bad_topics: &[u32],
    ) -> Result<(), StateError> {
        let refused = |e: &PartEntry<M>| {
            (!bad_topics.is_empty() && bad_topics.contains(&e.topic))
                || self.check_key(e.payload.key.as_str()).is_err()
        };
        let Some(r) = plan.replica else {
            plan.refused = part.entries.iter().filter(|e| refused(e)).count() as u64;
            if plan.refused > 0 {
                plan.additions = Additions::Listed(
                    (0..part.entries.len())
                        .filter(|&i| !refused(&part.entries[i]))
                        .map(|i| (i, None))
                        .collect(),
                );
            }
            plan.fresh = part.entries.len() - plan.refused as usize;
            return self.check_part(part, plan, 0);
        };
        let held = self.store.replica_len(r);
        let mut removals = self.covered_entries(r, part, held);
        // Entries new here. One that comes with the removal of another
        // version of the same presence is an update of it: pair them, and
        // take the paired slot out of `removals`.
        // Only entries can pair with removals (a leave carries none), and
        // a join removes nothing: neither needs the set.
        let mut gone = if part.entries.is_empty() || removals.is_empty() {
            Gone::Few(SmallVec::new())
        } else {
            Gone::new(&removals)
        };
        let mut paired = false;
        let mut additions = SmallVec::new();
        let slot = self.slot(r);
        for (i, e) in part.entries.iter().enumerate() {
            if slot.covers(e.dot) {
                continue;
            }
            if refused(e) {
                // Never held here (topic and key do not change across
                // versions), so it replaces nothing either.
                plan.refused += 1;
                continue;
            }
            let replaces = if gone.is_empty() {
                None
            } else {
                let topic = self.store.topic_index(topics[e.topic as usize].as_str());
                topic.and_then(|t| {
                    self.store.key_chain(t, e.payload.key.as_str()).find(|s| {
                        let local = self.store.entry(*s);
                        local.replica == r && local.pid == e.pid && gone.contains(*s)
                    })
                })
            };
            match replaces {
                Some(s) => {
                    gone.take(s);
                    paired = true;
                }
                None => plan.fresh += 1,
            }
            additions.push((i, replaces));
        }
        plan.additions = Additions::Listed(additions);
        if paired {
            removals.retain(|s| gone.contains(*s));
        }
        plan.removals = removals;
        self.check_part(part, plan, held)
    }

    /// Local entries of replica `r` (holding `held`) whose fate `part` knows
    /// but that it does not hold, sorted by dot. Enumerates the part's
    /// counters or the local entries, whichever is fewer.
    fn covered_entries(&self, r: u32, part: &Part<M>, held: usize) -> SmallVec<[Slot; 2]> {
        let counters = part.context.len().saturating_add(part.dead.len());
        let mut found: SmallVec<[(u64, Slot); 2]> = SmallVec::new();
        if counters <= held as u64 {
            // Entries held here have dots of the local context: a counter
            // new here (the event of the delta itself) needs no lookup.
            let known = &self.slot(r).context;
            for dot in part.context.iter().chain(part.dead.iter()) {
                if known.contains(dot)
                    && let Some(slot) = self.store.find_dot(r, dot)
                    && !part.has_entry(dot)
                {
                    found.push((dot, slot));
                }
            }
        } else {
            // A whole sub-state: look up each of its entries once, then keep
            // the local entries it covers and did not mention.
            let mut mentioned = hashbrown::HashSet::with_capacity(part.entries.len());
            for e in &part.entries {
                if let Some(slot) = self.store.find_dot(r, e.dot) {
                    mentioned.insert(slot);
                }
            }
            if mentioned.len() == held {
                return SmallVec::new();
            }
            found = self
                .store
                .replica_slots(r)
                .filter(|s| !mentioned.contains(s))
                .map(|s| (self.store.entry(s).dot, s))
                .filter(|&(dot, _)| part.covers(dot))
                .collect();
        }
        match found.len() {
            0 => SmallVec::new(),
            1 => SmallVec::from_elem(found[0].1, 1),
            _ => {
                found.sort_unstable();
                found.iter().map(|&(_, slot)| slot).collect()
            }
        }
    }

    /// Checks what a part would add against the presence limit.
    fn check_part(&self, part: &Part<M>, plan: &Plan, held: usize) -> Result<(), StateError> {
        let count = (held + plan.fresh).saturating_sub(plan.removals.len());
        let max = self.limits.presences_per_replica();
        if count > max {
            return Err(StateError::TooManyPresences {
                replica: part.replica.clone(),
                count,
                max,
            });
        }
        Ok(())
    }

    fn apply(&mut self, delta: &mut Delta<M>, plan: &MergePlan, diff: &mut DiffBuilder<M>) {
        self.superseded_by = self.superseded_by.max(plan.newer_self);
        for plan in &plan.parts {
            let part = &mut delta.parts[plan.part];
            for &old in &plan.superseded {
                self.purge_slot(old, PurgeReason::Superseded, diff);
            }
            if plan.newest {
                self.newest
                    .insert(part.replica.name().clone(), part.replica.incarnation());
            }
            let r = match plan.replica {
                Some(r) => r,
                None => self.add_replica(part.replica.clone()),
            };
            self.apply_part(r, part, &delta.topics, plan, diff);
        }
    }

    /// Applies one planned part; takes its entries out of `part`.
    fn apply_part(
        &mut self,
        r: u32,
        part: &mut Part<M>,
        topics: &[Topic],
        plan: &Plan,
        diff: &mut DiffBuilder<M>,
    ) {
        let visible = !self.slot(r).hidden;
        let id = self.slot(r).id.clone();
        for &slot in &plan.removals {
            let (old, topic) = self.store.remove(slot, visible);
            if visible {
                let pid = PresenceId::new(id.clone(), old.pid);
                diff.leave(&topic, Presence::new(pid, old.dot, old.payload));
            }
        }
        diff.count_undecodable(part.undecodable);
        diff.count_refused(plan.refused);
        let entries = std::mem::take(&mut part.entries);
        // A large merge sizes the tables, the topics' member lists and the
        // diff once, rather than growing them step by step.
        let mut per_topic: SmallVec<[usize; 4]> = SmallVec::new();
        let mut pending = None;
        if plan.fresh > 64 {
            pending = Some(Pending::default());
            self.store.reserve(r, plan.fresh);
            per_topic = SmallVec::from_elem(0, topics.len());
            for (i, replaces) in plan.additions.iter(entries.len()) {
                if replaces.is_none() {
                    per_topic[entries[i].topic as usize] += 1;
                }
            }
        }
        let mut additions = plan.additions.iter(entries.len()).peekable();
        // The delta's topics, interned here as they are first needed, with
        // their place in the diff. No topic is released while entries are
        // added, so the map holds.
        let mut local_topics: SmallVec<[Option<(u32, usize)>; 4]> =
            SmallVec::from_elem(None, topics.len());
        for (i, e) in entries.into_iter().enumerate() {
            let Some((_, replaces)) = additions.next_if(|a| a.0 == i) else {
                continue;
            };
            match replaces {
                Some(slot) => {
                    let old = self.store.replace(slot, e.dot, e.payload.clone());
                    if visible {
                        let topic = self.store.topic_name(self.store.entry(slot).topic);
                        let id = PresenceId::new(id.clone(), e.pid);
                        diff.update(topic, Update::new(id, old, (e.dot, e.payload)));
                    }
                }
                None => {
                    let (topic, in_diff) = match local_topics[e.topic as usize] {
                        Some(known) => known,
                        None => {
                            let topic = self.store.intern_topic(&topics[e.topic as usize]);
                            let coming = per_topic.get(e.topic as usize).copied();
                            if let Some(coming) = coming {
                                self.store.reserve_members(topic, coming);
                            }
                            // Hidden replicas report nothing: no place.
                            let in_diff = if visible {
                                let place = diff.place(self.store.topic_name(topic));
                                if let Some(coming) = coming {
                                    diff.reserve_joins(place, coming);
                                }
                                place
                            } else {
                                usize::MAX
                            };
                            local_topics[e.topic as usize] = Some((topic, in_diff));
                            (topic, in_diff)
                        }
                    };
                    let at = Place {
                        replica: r,
                        topic,
                        dot: e.dot,
                        pid: e.pid,
                    };
                    if visible {
                        let pid = PresenceId::new(id.clone(), e.pid);
                        diff.join_at(in_diff, Presence::new(pid, e.dot, e.payload.clone()));
                    }
                    match &mut pending {
                        Some(pending) => {
                            self.store.insert_unindexed(at, e.payload, visible, pending);
                        }
                        None => {
                            self.store.insert(at, e.payload, visible);
                        }
                    }
                }
            }
        }
        if let Some(pending) = pending {
            self.store.index(r, pending);
        }
        let capacity = self.limits.removal_log();
        self.slot_mut(r).absorb(
            &part.context,
            &part.dead,
            &part.removals,
            part.history_floor,
            capacity,
        );
    }

    /// The slots of the incarnations of `id`'s name older than it.
    pub(crate) fn older_incarnations(&self, id: &ReplicaId) -> SmallVec<[u32; 1]> {
        self.replica_ids
            .range(..id.clone())
            .rev()
            .take_while(|(held, _)| held.name() == id.name())
            .map(|(_, &r)| r)
            .collect()
    }

    /// Opens a slot for a replica new here.
    pub(crate) fn add_replica(&mut self, id: ReplicaId) -> u32 {
        let slot = ReplicaSlot::new(id.clone());
        let index = self.replicas.insert(slot);
        self.store.open_replica(index);
        self.replica_ids.insert(id, index);
        index
    }
}

/// The removals of a plan not yet paired with an addition: scanned when
/// few, hashed when many.
enum Gone {
    Few(SmallVec<[Slot; 2]>),
    Many(HashSet<Slot>),
}

impl Gone {
    fn new(removals: &[Slot]) -> Self {
        if removals.len() <= 16 {
            Gone::Few(removals.into())
        } else {
            Gone::Many(removals.iter().copied().collect())
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Gone::Few(slots) => slots.is_empty(),
            Gone::Many(slots) => slots.is_empty(),
        }
    }

    fn contains(&self, slot: Slot) -> bool {
        match self {
            Gone::Few(slots) => slots.contains(&slot),
            Gone::Many(slots) => slots.contains(&slot),
        }
    }

    fn take(&mut self, slot: Slot) {
        match self {
            Gone::Few(slots) => slots.retain(|s| *s != slot),
            Gone::Many(slots) => {
                slots.remove(&slot);
            }
        }
    }
}

/// Which entries of a part a merge adds.
enum Additions {
    /// All of them, none replacing anything (a replica new here).
    Every,
    /// These, by index, with the local version of the same presence each
    /// replaces.
    Listed(SmallVec<[(usize, Option<Slot>); 2]>),
}

impl Additions {
    /// `(entry index, replaced slot)` in entry order, for a part of `len`
    /// entries.
    fn iter(&self, len: usize) -> impl Iterator<Item = (usize, Option<Slot>)> + '_ {
        let (every, listed) = match self {
            Additions::Every => (0..len, &[][..]),
            Additions::Listed(listed) => (0..0, &listed[..]),
        };
        every.map(|i| (i, None)).chain(listed.iter().copied())
    }
}
