//! Deltas made from the state: catch-ups and snapshots.

use std::collections::BTreeMap;

use super::{Delta, Meta, Part, PartEntry, Removal, ReplicaId, State, Topic};

impl<M: Meta> State<M> {
    /// What `replica` changed after its counter `since`: the entries added
    /// since, and the removals since (from the removal log). Merged by a
    /// state that holds `replica`'s sub-state at `since`, it brings that
    /// state up to this one.
    ///
    /// `None` when the replica is not held here, or when the removal log no
    /// longer reaches back to `since`: send [`State::snapshot_of`] instead.
    pub fn changes_since(&self, replica: &ReplicaId, since: u64) -> Option<Delta<M>> {
        let &r = self.replica_ids.get(replica)?;
        let slot = self.slot(r);
        if since < slot.history_floor {
            return None;
        }
        let mut part = Part::new(replica.clone());
        part.context = slot.context.above(since);
        // The removal log holds every removal event above the floor, so the
        // dots killed by the events sent are exactly the logged ones.
        for removal in slot.removals_since(since) {
            part.removals.push(removal);
            part.dead.insert(removal.dot);
        }
        part.dead.subtract(&part.context);
        part.history_floor = since;
        Some(self.delta_of(r, part, |dot| dot > since))
    }

    /// The whole sub-state of one replica, with its removal log.
    pub fn snapshot_of(&self, replica: &ReplicaId) -> Option<Delta<M>> {
        let &r = self.replica_ids.get(replica)?;
        Some(self.snapshot_slot(r))
    }

    /// The whole state: every sub-state held, hidden ones included.
    pub fn snapshot(&self) -> Delta<M> {
        let mut whole = Delta::default();
        for &r in self.replica_ids.values() {
            whole.join(self.snapshot_slot(r));
        }
        whole
    }

    fn snapshot_slot(&self, r: u32) -> Delta<M> {
        let slot = self.slot(r);
        let mut part = Part::new(slot.id.clone());
        part.context = slot.context.clone();
        part.dead = slot.dead.clone();
        part.removals = slot.log.iter().copied().collect();
        part.history_floor = slot.history_floor;
        self.delta_of(r, part, |_| true)
    }

    /// Fills `part` with the entries of replica slot `r` whose dots pass
    /// `wanted`, sorted by dot.
    fn delta_of(&self, r: u32, mut part: Part<M>, wanted: impl Fn(u64) -> bool) -> Delta<M> {
        let mut slots: Vec<_> = self
            .store
            .replica_slots(r)
            .filter(|&s| wanted(self.store.entry(s).dot))
            .collect();
        slots.sort_unstable_by_key(|&s| self.store.entry(s).dot);
        let mut topics: Vec<Topic> = Vec::new();
        let mut topic_ids: BTreeMap<u32, u32> = BTreeMap::new();
        part.entries = slots
            .into_iter()
            .map(|s| {
                let e = self.store.entry(s);
                let topic = *topic_ids.entry(e.topic).or_insert_with(|| {
                    topics.push(self.store.topic_name(e.topic).clone());
                    (topics.len() - 1) as u32
                });
                PartEntry {
                    dot: e.dot,
                    pid: e.pid,
                    topic,
                    payload: e.payload.clone(),
                }
            })
            .collect();
        // A part that speaks for no counter says nothing.
        Delta::of_part(topics, part)
    }

    pub(crate) fn log_removal(&mut self, r: u32, removal: Removal) {
        let capacity = self.limits.removal_log();
        self.slot_mut(r).record(removal, capacity);
    }
}
