//! What a state keeps about each replica besides its entries.

use std::collections::BTreeMap;

use super::delta::joined_floor;
use super::{CounterSet, Removal, ReplicaId};

#[derive(Clone, Debug)]
pub(crate) struct ReplicaSlot {
    pub(crate) id: ReplicaId,
    /// The replica's events whose effects are applied here.
    pub(crate) context: CounterSet,
    /// Dots known removed whose own event is not in `context` yet.
    pub(crate) dead: CounterSet,
    /// Hidden replicas are considered down: their entries are kept (and kept
    /// up to date) but not listed.
    pub(crate) hidden: bool,
    /// Recent removals, event counter to removed dot, to serve catch-ups.
    pub(crate) log: BTreeMap<u64, u64>,
    /// `log` holds every removal event of `context` above this counter.
    pub(crate) history_floor: u64,
}

impl ReplicaSlot {
    pub(crate) fn new(id: ReplicaId) -> Self {
        Self {
            id,
            context: CounterSet::new(),
            dead: CounterSet::new(),
            hidden: false,
            log: BTreeMap::new(),
            history_floor: 0,
        }
    }

    /// Records one removal, forgetting the oldest beyond `capacity`.
    pub(crate) fn record(&mut self, removal: Removal, capacity: usize) {
        if removal.event > self.history_floor {
            self.log.insert(removal.event, removal.dot);
        }
        self.truncate(capacity);
    }

    /// Takes in the removals and context of a part; call before the part's
    /// context joins `self.context`.
    pub(crate) fn absorb(
        &mut self,
        context: &CounterSet,
        dead: &CounterSet,
        removals: &[Removal],
        history_floor: u64,
        capacity: usize,
    ) {
        self.history_floor =
            joined_floor(&self.context, self.history_floor, context, history_floor);
        for removal in removals {
            if removal.event > self.history_floor {
                self.log.insert(removal.event, removal.dot);
            }
        }
        self.log = self.log.split_off(&self.history_floor.saturating_add(1));
        self.truncate(capacity);
        self.context.union(context);
        self.dead.union(dead);
        self.dead.subtract(&self.context);
    }

    /// Whether the fate of this dot is known here.
    pub(crate) fn covers(&self, dot: u64) -> bool {
        self.context.contains(dot) || self.dead.contains(dot)
    }

    fn truncate(&mut self, capacity: usize) {
        while self.log.len() > capacity {
            if let Some((event, _)) = self.log.pop_first() {
                self.history_floor = self.history_floor.max(event);
            }
        }
    }
}
