//! What a state keeps about each replica besides its entries.

use std::collections::VecDeque;

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
    /// Recent removals, sorted by event, one per event, to serve
    /// catch-ups. Removals arrive in event order when deltas do, so keeping
    /// the order is an append.
    pub(crate) log: VecDeque<Removal>,
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
            log: VecDeque::new(),
            history_floor: 0,
        }
    }

    /// Records one removal, forgetting the oldest beyond `capacity`.
    pub(crate) fn record(&mut self, removal: Removal, capacity: usize) {
        self.insert(removal);
        self.truncate(capacity);
    }

    /// Takes in the context, dead dots and removals of a part; call before
    /// the part's context joins `self.context`.
    pub(crate) fn absorb(
        &mut self,
        context: &CounterSet,
        dead: &CounterSet,
        removals: &[Removal],
        history_floor: u64,
        capacity: usize,
    ) {
        let floor = joined_floor(&self.context, self.history_floor, context, history_floor);
        if floor > self.history_floor {
            self.history_floor = floor;
            let below = self.log.partition_point(|r| r.event <= floor);
            self.log.drain(..below);
        }
        if !removals.is_empty() {
            for &removal in removals {
                self.insert(removal);
            }
            self.truncate(capacity);
        }
        self.context.union(context);
        // Dead dots whose events are known are no news (a leave's dot
        // usually is): only the rest waits in `dead`.
        let nothing_waits = self.dead.is_empty() && self.context.is_superset(dead);
        if !nothing_waits {
            self.dead.union(dead);
            self.dead.subtract(&self.context);
        }
    }

    /// Removals of events above `since`, oldest first.
    pub(crate) fn removals_since(&self, since: u64) -> impl Iterator<Item = Removal> + '_ {
        let start = self.log.partition_point(|r| r.event <= since);
        self.log.range(start..).copied()
    }

    fn insert(&mut self, removal: Removal) {
        if removal.event <= self.history_floor {
            return;
        }
        match self.log.back() {
            Some(last) if last.event >= removal.event => {
                let at = self.log.partition_point(|r| r.event < removal.event);
                if self.log.get(at).map(|r| r.event) != Some(removal.event) {
                    self.log.insert(at, removal);
                }
            }
            _ => self.log.push_back(removal),
        }
    }

    fn truncate(&mut self, capacity: usize) {
        while self.log.len() > capacity {
            if let Some(oldest) = self.log.pop_front() {
                self.history_floor = self.history_floor.max(oldest.event);
            }
        }
    }

    /// Whether the fate of this dot is known here.
    pub(crate) fn covers(&self, dot: u64) -> bool {
        self.context.contains(dot) || self.dead.contains(dot)
    }
}
