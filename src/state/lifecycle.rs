//! Replicas coming and going: hide, unhide, purge, re-admit, re-incarnate.

use super::diff::DiffBuilder;
use super::store::Place;
use super::{
    CounterSet, Delta, Diff, Incarnation, Meta, Part, PartEntry, Presence, PresenceId, ReplicaId,
    State, StateError,
};

/// Why a replica incarnation's entries were purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PurgeReason {
    /// It was down for too long (permdown). A fresh sign of life and a whole
    /// sub-state may re-admit it.
    Permdown,
    /// It left gracefully. It never comes back.
    Left,
    /// A newer incarnation of its name appeared. It never comes back.
    Superseded,
}

impl std::fmt::Display for PurgeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PurgeReason::Permdown => "permdown",
            PurgeReason::Left => "left",
            PurgeReason::Superseded => "superseded",
        })
    }
}

/// What is kept of a purged incarnation so that stale data about it is
/// ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeRecord {
    /// The greatest counter of it known when it was purged.
    pub counter: u64,
    /// Why it was purged.
    pub reason: PurgeReason,
}

/// What [`State::reincarnate`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Reincarnation<M> {
    /// The whole sub-state of the new incarnation, to ship to peers.
    pub delta: Delta<M>,
    /// Each live presence's old id and its new one.
    pub renamed: Vec<(PresenceId, PresenceId)>,
}

impl<M: Meta> State<M> {
    /// Hides a replica's presences from lists (it is considered down) and
    /// returns their leaves. Its entries are kept and still merged.
    ///
    /// A replica not held yet is registered hidden, so that what is merged
    /// of it later stays out of the lists until [`State::unhide`]. Nothing
    /// happens for a purged incarnation or one older than the newest seen
    /// of its name.
    ///
    /// # Errors
    ///
    /// [`StateError::OwnReplica`] for this replica, and
    /// [`StateError::TooManyReplicas`] when registering would break the
    /// limit.
    pub fn hide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError> {
        if self.peer_slot(replica)?.is_none() {
            let stale = self.purged.contains_key(replica)
                || self.newest.get(replica.name()) > Some(&replica.incarnation());
            if stale {
                return Ok(Diff::default());
            }
            if self.replica_ids.len() >= self.limits.replicas() {
                return Err(StateError::TooManyReplicas {
                    count: self.replica_ids.len() + 1,
                    max: self.limits.replicas(),
                });
            }
            let r = self.add_replica(replica.clone());
            self.slot_mut(r).hidden = true;
            return Ok(Diff::default());
        }
        self.set_hidden(replica, true)
    }

    /// Shows a hidden replica's presences again and returns their joins:
    /// only the presences held now, so nothing it already dropped flashes
    /// back.
    pub fn unhide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError> {
        self.set_hidden(replica, false)
    }

    fn set_hidden(&mut self, replica: &ReplicaId, hidden: bool) -> Result<Diff<M>, StateError> {
        let r = self.peer_slot(replica)?;
        let mut diff = DiffBuilder::new();
        let Some(r) = r else {
            return Ok(diff.finish());
        };
        if self.slot(r).hidden == hidden {
            return Ok(diff.finish());
        }
        self.slot_mut(r).hidden = hidden;
        let slots = self.store.replica_slots_by_dot(r);
        for slot in slots {
            let topic = self.store.entry(slot).topic;
            self.store.shift_visible(topic, !hidden);
            let e = self.store.entry(slot);
            let name = self.store.topic_name(topic).clone();
            let presence = Presence::new(
                PresenceId::new(replica.clone(), e.pid),
                e.dot,
                e.payload.clone(),
            );
            if hidden {
                diff.leave(&name, presence);
            } else {
                diff.join(&name, presence);
            }
        }
        Ok(diff.finish())
    }

    /// Purges a replica incarnation: its entries go (leaves are reported for
    /// those visible) and a [`PurgeRecord`] stays, so stale deltas and
    /// snapshots of it are ignored from then on.
    ///
    /// A [`PurgeReason::Permdown`] purge can be undone by
    /// [`State::readmit`]; the others are for good.
    pub fn purge(
        &mut self,
        replica: &ReplicaId,
        reason: PurgeReason,
    ) -> Result<Diff<M>, StateError> {
        let r = self.peer_slot(replica)?;
        let mut diff = DiffBuilder::new();
        match r {
            Some(r) => self.purge_slot(r, reason, &mut diff),
            None => {
                let record = self
                    .purged
                    .entry(replica.clone())
                    .or_insert(PurgeRecord { counter: 0, reason });
                record.reason = record.reason.max(reason);
                let newest = self
                    .newest
                    .entry(replica.name().clone())
                    .or_insert(replica.incarnation());
                *newest = (*newest).max(replica.incarnation());
                // Whatever older incarnation of the name is held is replaced.
                for older in self.older_incarnations(replica) {
                    self.purge_slot(older, PurgeReason::Superseded, &mut diff);
                }
            }
        }
        Ok(diff.finish())
    }

    pub(crate) fn purge_slot(&mut self, r: u32, reason: PurgeReason, diff: &mut DiffBuilder<M>) {
        let visible = !self.slot(r).hidden;
        let slots = self.store.replica_slots_by_dot(r);
        let id = self.slot(r).id.clone();
        for slot in slots {
            let (old, topic) = self.store.remove(slot, visible);
            if visible {
                let pid = PresenceId::new(id.clone(), old.pid);
                diff.leave(&topic, Presence::new(pid, old.dot, old.payload));
            }
        }
        let counter = self.slot(r).context.max();
        self.purged
            .insert(id.clone(), PurgeRecord { counter, reason });
        self.store.close_replica(r);
        self.replicas.remove(r);
        self.replica_ids.remove(&id);
    }

    /// Re-admits purged incarnations from a snapshot holding their whole
    /// sub-states (every counter from 1) up to at least the counter they
    /// were purged at, and merges it.
    ///
    /// # Errors
    ///
    /// [`StateError::NotReadmittable`] for an incarnation that left or was
    /// replaced, [`StateError::IncompleteSnapshot`] for a part that is not a
    /// whole sub-state reaching the purge counter, and whatever
    /// [`State::merge`] refuses. The state is then unchanged.
    pub fn readmit(&mut self, snapshot: Delta<M>) -> Result<Diff<M>, StateError> {
        let mut lifted = Vec::new();
        for part in &snapshot.parts {
            let Some(record) = self.purged.get(&part.replica) else {
                continue;
            };
            let replaced = self.newest.get(part.replica.name()) > Some(&part.replica.incarnation())
                || snapshot
                    .parts
                    .iter()
                    .any(|p| p.replica.name() == part.replica.name() && p.replica > part.replica);
            if record.reason != PurgeReason::Permdown || replaced {
                return Err(StateError::NotReadmittable(part.replica.clone()));
            }
            let whole = part.context.ranges().len() == 1 && part.context.min() == Some(1);
            if !whole || part.context.max() < record.counter {
                return Err(StateError::IncompleteSnapshot {
                    replica: part.replica.clone(),
                    needed: record.counter,
                });
            }
            lifted.push((part.replica.clone(), *record));
        }
        for (id, _) in &lifted {
            self.purged.remove(id);
        }
        match self.merge(snapshot) {
            Ok(diff) => Ok(diff),
            Err(e) => {
                self.purged.extend(lifted);
                Err(e)
            }
        }
    }

    /// Drops the purge record of an incarnation, once no stale data about it
    /// can still be in flight. Returns whether there was one.
    pub fn forget_purged(&mut self, replica: &ReplicaId) -> bool {
        let removed = self.purged.remove(replica).is_some();
        let name_in_use = self
            .replica_ids
            .keys()
            .chain(self.purged.keys())
            .any(|id| id.name() == replica.name());
        if removed && !name_in_use {
            self.newest.remove(replica.name());
        }
        removed
    }

    /// The purge record of `replica`, if one is kept.
    pub fn purge_record(&self, replica: &ReplicaId) -> Option<&PurgeRecord> {
        self.purged.get(replica)
    }

    /// The purge records kept, in replica order.
    pub fn purged(&self) -> impl Iterator<Item = (&ReplicaId, &PurgeRecord)> {
        self.purged.iter()
    }

    /// A newer incarnation of this replica's own name seen in merged data:
    /// another process started under this name, or this one restarted with a
    /// clock that went backwards. See [`State::reincarnate`].
    pub fn superseded_by(&self) -> Option<Incarnation> {
        self.superseded_by
    }

    /// Moves this replica to a new incarnation, above every one seen of its
    /// name, and tracks its live presences again there with fresh counters.
    ///
    /// The lists do not change (no diff); the presences get new ids, listed
    /// in [`Reincarnation::renamed`]. Ship [`Reincarnation::delta`] to peers.
    pub fn reincarnate(
        &mut self,
        incarnation: Incarnation,
    ) -> Result<Reincarnation<M>, StateError> {
        let floor = self
            .superseded_by
            .unwrap_or(self.replica().incarnation())
            .max(self.replica().incarnation());
        if incarnation <= floor {
            return Err(StateError::StaleIncarnation {
                given: incarnation,
                floor,
            });
        }
        let old_id = self.replica().clone();
        let new_id = ReplicaId::new(old_id.name().clone(), incarnation);
        let old = self.me;
        let slots = self.store.replica_slots_by_dot(old);
        let new = self.add_replica(new_id.clone());
        self.me = new;
        self.moved.clear();
        let mut part = Part::new(new_id.clone());
        let mut topics = Vec::new();
        let mut renamed = Vec::with_capacity(slots.len());
        for slot in slots {
            let (e, topic) = self.store.remove(slot, true);
            let counter = renamed.len() as u64 + 1;
            let topic_index = self.store.intern_topic(&topic);
            let at = Place {
                replica: new,
                topic: topic_index,
                dot: counter,
                pid: counter,
            };
            self.store.insert(at, e.payload.clone(), true);
            let delta_topic = match topics.iter().position(|t| t == &topic) {
                Some(i) => i,
                None => {
                    topics.push(topic);
                    topics.len() - 1
                }
            };
            part.entries.push(PartEntry {
                dot: counter,
                pid: counter,
                topic: delta_topic as u32,
                payload: e.payload,
            });
            renamed.push((
                PresenceId::new(old_id.clone(), e.pid),
                PresenceId::new(new_id.clone(), counter),
            ));
        }
        part.context = CounterSet::prefix(renamed.len() as u64);
        self.slot_mut(new).context = part.context.clone();
        let old_counter = self.slot(old).context.max();
        self.store.close_replica(old);
        self.replicas.remove(old);
        self.replica_ids.remove(&old_id);
        self.purged.insert(
            old_id.clone(),
            PurgeRecord {
                counter: old_counter,
                reason: PurgeReason::Superseded,
            },
        );
        self.newest.insert(new_id.name().clone(), incarnation);
        self.superseded_by = None;
        Ok(Reincarnation {
            delta: Delta::of_part(topics, part),
            renamed,
        })
    }

    /// The slot of a peer, `None` if not held; an error for this replica.
    fn peer_slot(&self, replica: &ReplicaId) -> Result<Option<u32>, StateError> {
        if replica == self.replica() {
            return Err(StateError::OwnReplica(replica.clone()));
        }
        Ok(self.replica_ids.get(replica).copied())
    }
}
