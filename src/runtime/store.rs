//! The tracker's [`ReplicaStore`]: the presences split into topic shards,
//! with one state without entries for what the protocol asks about
//! replicas (contexts, purge records, incarnations).
//!
//! ```text
//!             protocol::Node (liveness, heartbeats, catch-ups)   one lock
//!                     |
//!                   Store --- contexts: a State without entries
//!                     |
//!      +--------------+--------------+
//!   Shard 0        Shard 1   ...  Shard n-1                   a lock each
//!   own State      own State       own State     this replica's presences
//!   peer States    peer States     peer States   one per other replica
//! ```
//!
//! Every change the protocol makes goes through the context-only state
//! first, which decides what a full state would do (which parts of a delta
//! apply, which replicas a newer incarnation replaces); the shards then do
//! the same to the entries. A change of another replica's presences larger
//! than [`STAGE_ENTRIES`] is made outside every lock on copies
//! ([`prepare`]), and swapped in under each shard's lock in O(1), with the
//! diff it made; the joins of a replica shown right after are made there
//! too. So a catch-up of a million presences holds no lock for longer than
//! a small one. Catch-up answers are read from the shards in `answer`;
//! peers are shown, hidden and dropped in `visibility`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::feed::Wake;
use super::shard::{Common, Peer, Pending, Shard, shard_of};
use crate::protocol::{Built, LocalChanges, ReplicaStore, Sealed};
use crate::{
    CounterSet, Delta, Diff, Incarnation, Meta, PurgeReason, PurgeRecord, Reincarnation, ReplicaId,
    ReplicaName, State, StateError, TopicDiff,
};

mod answer;
mod visibility;

pub(crate) use answer::{ServePlan, build};
pub(crate) use visibility::Deferred;

/// The capacity an emptied list of changes keeps however quiet a period
/// was: a few periods' worth for a replica that changes little.
const SPARE_MIN: usize = 64;

/// Changes of another replica with at least this many entries are made
/// outside the locks; so are those of a hidden replica holding this many
/// (its joins are made with it).
pub(crate) const STAGE_ENTRIES: usize = 2048;

/// Something to free outside the locks, and off the async threads when
/// large.
pub(crate) enum Garbage<M> {
    State(Arc<State<M>>),
    Diff(Diff<M>),
    Topic(TopicDiff<M>),
    Delta(Delta<M>),
    Staged(Staged<M>),
}

/// A change of one replica made outside the locks, for one shard.
pub(crate) struct StagedShard<M> {
    shard: usize,
    /// The peer state it was made from; it applies only if that is still
    /// the shard's.
    base: Option<Arc<State<M>>>,
    data: State<M>,
    /// What the change made visible, if the replica is shown.
    diff: Diff<M>,
    /// Every presence as a join, if the replica is hidden and had some
    /// before (otherwise `diff` is that).
    joins: Option<Diff<M>>,
}

/// A change of one replica made outside the locks: for the part with this
/// context, per shard, or the error merging it gave.
pub(crate) struct Staged<M> {
    context: CounterSet,
    outcome: Result<Vec<StagedShard<M>>, StateError>,
}

impl<M: Meta> Staged<M> {
    /// How many presences it holds, to free.
    pub(crate) fn weight(&self) -> usize {
        self.outcome
            .as_ref()
            .map_or(0, |parts| parts.iter().map(|p| p.data.len()).sum())
    }
}

/// The store; see the module docs.
pub(crate) struct Store<M> {
    id: ReplicaId,
    /// Every replica's context, dead dots, removal log, purge record and
    /// incarnation, and no entry.
    skeleton: State<M>,
    shards: Arc<[Arc<Shard<M>>]>,
    common: Arc<Common>,
    staged: BTreeMap<ReplicaId, Staged<M>>,
    /// Replicas with a peer state in some shard.
    held: BTreeSet<ReplicaId>,
    garbage: Vec<Garbage<M>>,
    /// The last counter handed to the node to broadcast.
    broadcast: u64,
    woken: Wake<M>,
    /// Peers to show, hide or drop once the node's lock is let go.
    deferred: Vec<Deferred<M>>,
    /// One emptied list of changes per shard, handed to it at the next
    /// broadcast (see [`Shard::take_pending`]).
    spares: Vec<Pending<M>>,
}

impl<M> Sealed for Store<M> {}

impl<M: Meta> Store<M> {
    pub(crate) fn new(id: ReplicaId, shards: Arc<[Arc<Shard<M>>]>, common: Arc<Common>) -> Self {
        let skeleton = State::builder(id.clone())
            .limits(common.limits.clone())
            .build();
        let spares = (0..shards.len()).map(|_| Vec::new()).collect();
        Self {
            id,
            skeleton,
            shards,
            common,
            staged: BTreeMap::new(),
            held: BTreeSet::new(),
            garbage: Vec::new(),
            broadcast: 0,
            woken: Wake::new(),
            deferred: Vec::new(),
            spares,
        }
    }

    fn shard_of(&self, topic: &str) -> usize {
        shard_of(topic, self.shards.len())
    }

    /// What to free outside the locks.
    pub(crate) fn take_garbage(&mut self) -> Vec<Garbage<M>> {
        std::mem::take(&mut self.garbage)
    }

    /// Keeps the subscribers a change woke for the driver to wake once
    /// the node's lock is let go, and the diffs nobody wanted to free.
    fn after_unlock(&mut self, mut wake: Wake<M>) {
        let unwanted = std::mem::take(&mut wake.unwanted);
        self.garbage
            .extend(unwanted.into_iter().map(Garbage::Topic));
        self.woken.absorb(wake);
    }

    /// The subscribers to wake, once the node's lock is let go.
    pub(crate) fn take_woken(&mut self) -> Wake<M> {
        std::mem::replace(&mut self.woken, Wake::new())
    }

    /// Whether `replica` is hidden here, and how many of its presences are
    /// held: what [`prepare`] needs to know of it.
    pub(crate) fn standing(&self, replica: &ReplicaId) -> (bool, usize) {
        let hidden = self.skeleton.is_hidden(replica).unwrap_or(true);
        (hidden, ReplicaStore::presences_of(self, replica))
    }

    /// Changes made outside the locks, for the next merges.
    pub(crate) fn stage(&mut self, staged: BTreeMap<ReplicaId, Staged<M>>) {
        self.staged = staged;
    }

    /// Drops what was staged and not used, and the joins kept for a replica
    /// shown right after its catch-up.
    pub(crate) fn end_staging(&mut self) {
        let unused = std::mem::take(&mut self.staged);
        self.garbage
            .extend(unused.into_values().map(Garbage::Staged));
        for shard in self.shards.clone().iter() {
            let mut s = shard.lock();
            for peer in s.peers.values_mut() {
                if let Some(joins) = peer.joins.take() {
                    self.garbage.push(Garbage::Diff(joins));
                }
            }
        }
    }

    /// The parts of a catch-up answer this store reads outside the lock:
    /// for each replica asked for, what the context-only state says (its
    /// context, dead dots and removals, without entries), or this
    /// replica's own (read from the shards). `None` when nothing can be
    /// sent.
    pub(crate) fn serve_plan(
        &self,
        items: &[(ReplicaId, u64, u64)],
        max_catchup_bytes: usize,
    ) -> Vec<ServePlan<M>> {
        items
            .iter()
            .map(|(replica, since, _)| {
                if *replica == self.id {
                    return ServePlan::Own(*since);
                }
                if let Some(d) = self.skeleton.changes_since(replica, *since) {
                    return ServePlan::Peer(replica.clone(), *since, d, false);
                }
                let least = ReplicaStore::presences_of(self, replica)
                    .saturating_mul(crate::protocol::MIN_ENTRY_BYTES);
                if least > max_catchup_bytes {
                    return ServePlan::Declined;
                }
                match self.skeleton.snapshot_of(replica) {
                    Some(d) => ServePlan::Peer(replica.clone(), 0, d, true),
                    None => ServePlan::Nothing,
                }
            })
            .collect()
    }

    /// Merges `delta`, or re-admits from it; see the module docs.
    fn apply(&mut self, delta: Delta<M>, readmit: bool) -> Result<Diff<M>, StateError> {
        self.flush_deferred();
        let own = self.id.name().clone();
        let replicas: Vec<ReplicaId> = delta
            .replicas()
            .filter(|r| r.name() != &own)
            .cloned()
            .collect();
        // Everything is checked before anything changes.
        let mut plans = Vec::with_capacity(replicas.len());
        for replica in replicas {
            let plan = self.plan(&delta, &replica)?;
            plans.push((replica, plan));
        }
        let before: Vec<Option<CounterSet>> = plans
            .iter()
            .map(|(r, _)| self.skeleton.context(r).cloned())
            .collect();
        let stripped = delta.without_entries();
        // A large delta is freed off the async threads.
        if delta.entry_count() > STAGE_ENTRIES {
            self.garbage.push(Garbage::Delta(delta));
        }
        if readmit {
            self.skeleton.readmit(stripped)?;
        } else {
            self.skeleton.merge(stripped)?;
        }
        let mut counts = (0u64, 0u64);
        let mut names: BTreeSet<ReplicaName> = BTreeSet::new();
        for ((replica, plan), before) in plans.into_iter().zip(before) {
            names.insert(replica.name().clone());
            // What the context-only state left alone, the shards do too.
            if self.skeleton.context(&replica) == before.as_ref() {
                continue;
            }
            let shown = self.skeleton.is_hidden(&replica) == Some(false);
            self.held.insert(replica.clone());
            match plan {
                Plan::Staged(parts) => self.install(&replica, parts, shown, &mut counts),
                Plan::Direct(parts) => self.merge_in_place(&replica, parts, shown, &mut counts),
            }
        }
        self.reconcile(&names);
        Ok(count_only(counts))
    }

    /// How `replica`'s part of `delta` will be merged: as staged outside the
    /// locks, or in place; its error if it breaks a limit.
    fn plan(&mut self, delta: &Delta<M>, replica: &ReplicaId) -> Result<Plan<M>, StateError> {
        if let Some(staged) = self.staged.remove(replica)
            && delta.context(replica) == Some(&staged.context)
        {
            let parts = staged.outcome?;
            let current = parts.iter().all(|p| {
                let s = self.shards[p.shard].lock();
                match (&p.base, s.peers.get(replica)) {
                    (Some(base), Some(peer)) => Arc::ptr_eq(base, &peer.data),
                    (None, None) => true,
                    _ => false,
                }
            });
            if current {
                return Ok(Plan::Staged(parts));
            }
        }
        let shards = self.shards.len();
        let Some(subs) = delta.split_part(replica, shards, |t| self.shard_of(t)) else {
            return Ok(Plan::Direct(Vec::new()));
        };
        let entries: usize = subs.iter().map(|(_, n)| n).sum();
        let held = ReplicaStore::presences_of(self, replica);
        let max = self.common.limits.presences_per_replica();
        if held.saturating_add(entries) > max {
            // Near the limit: counted exactly, on copies.
            let (hidden, _) = self.standing(replica);
            let mut staged = prepare_part(&self.shards, delta, replica, hidden, max);
            let parts = std::mem::replace(&mut staged.outcome, Ok(Vec::new()))?;
            return Ok(Plan::Staged(parts));
        }
        let mut parts = Vec::new();
        for (k, (sub, n)) in subs.into_iter().enumerate() {
            let s = self.shards[k].lock();
            match s.peers.get(replica) {
                Some(peer) => {
                    peer.data.plan(&sub)?;
                }
                None if n == 0 => continue,
                None => {
                    drop(s);
                    self.shards[k].new_peer_state().plan(&sub)?;
                }
            }
            parts.push((k, sub));
        }
        Ok(Plan::Direct(parts))
    }

    fn merge_in_place(
        &mut self,
        replica: &ReplicaId,
        parts: Vec<(usize, Delta<M>)>,
        shown: bool,
        counts: &mut (u64, u64),
    ) {
        for (k, sub) in parts {
            let shard = self.shards[k].clone();
            let mut wake = Wake::new();
            {
                let mut s = shard.lock();
                let peer = s
                    .peers
                    .entry(replica.clone())
                    .or_insert_with(|| Peer::new(shard.new_peer_state(), shown, None));
                peer.shown = shown;
                // Only this replica's driver changes a peer, and it holds no
                // copy now: the copy-on-write never copies in practice.
                let data = Arc::make_mut(&mut peer.data);
                let Ok(diff) = data.merge(sub) else {
                    continue;
                };
                counts.0 += diff.undecodable();
                counts.1 += diff.refused();
                if shown {
                    s.publish(diff, &mut wake);
                } else if !diff.is_empty() {
                    self.garbage.push(Garbage::Diff(diff));
                }
            }
            self.after_unlock(wake);
        }
    }

    fn install(
        &mut self,
        replica: &ReplicaId,
        parts: Vec<StagedShard<M>>,
        shown: bool,
        counts: &mut (u64, u64),
    ) {
        for part in parts {
            let StagedShard {
                shard,
                base,
                data,
                diff,
                joins,
            } = part;
            counts.0 += diff.undecodable();
            counts.1 += diff.refused();
            let mut wake = Wake::new();
            let old = {
                let mut s = self.shards[shard].lock();
                let (diff, joins) = match (shown, joins, base.is_some()) {
                    (true, joins, _) => (Some(diff), joins),
                    (false, Some(joins), _) => (None, Some(joins)),
                    // From nothing, the merge's diff is every presence.
                    (false, None, false) => (None, Some(diff)),
                    (false, None, true) => (None, None),
                };
                let old = s
                    .peers
                    .insert(replica.clone(), Peer::new(data, shown, joins));
                if let Some(diff) = diff {
                    s.publish(diff, &mut wake);
                }
                old
            };
            if let Some(old) = old {
                self.garbage.push(Garbage::State(old.data));
                if let Some(joins) = old.joins {
                    self.garbage.push(Garbage::Diff(joins));
                }
            }
            drop(base);
            self.after_unlock(wake);
        }
    }

    /// Drops the peer states of replicas of these names that the
    /// context-only state no longer holds (purged, or replaced by a newer
    /// incarnation), with leaves for those shown.
    fn reconcile(&mut self, names: &BTreeSet<ReplicaName>) {
        let gone: Vec<ReplicaId> = self
            .held
            .iter()
            .filter(|r| names.contains(r.name()) && self.skeleton.context(r).is_none())
            .cloned()
            .collect();
        for replica in gone {
            self.held.remove(&replica);
            self.drop_peer(&replica);
        }
    }
}

enum Plan<M> {
    Staged(Vec<StagedShard<M>>),
    Direct(Vec<(usize, Delta<M>)>),
}

fn count_only<M>((undecodable, refused): (u64, u64)) -> Diff<M> {
    Diff::counts_only(undecodable, refused)
}

/// Makes the large changes of a decoded catch-up answer outside the locks:
/// for each replica whose part is large, or which is hidden and holds many
/// presences, new peer states per shard with the part merged, the diff it
/// made, and its joins. `standing` says, per replica, whether it is hidden
/// and how many presences are held (see [`Store::standing`]).
pub(crate) fn prepare<M: Meta>(
    shards: &[Arc<Shard<M>>],
    delta: &Delta<M>,
    own: &ReplicaName,
    standing: &BTreeMap<ReplicaId, (bool, usize)>,
    max_presences: usize,
) -> BTreeMap<ReplicaId, Staged<M>> {
    let mut staged = BTreeMap::new();
    for replica in delta.replicas() {
        if replica.name() == own {
            continue;
        }
        let (hidden, held) = standing.get(replica).copied().unwrap_or((true, 0));
        let entries = delta.entries_of(replica);
        if entries < STAGE_ENTRIES && !(hidden && held >= STAGE_ENTRIES) {
            continue;
        }
        let part = prepare_part(shards, delta, replica, hidden, max_presences);
        staged.insert(replica.clone(), part);
    }
    staged
}

/// [`prepare`] for one replica.
fn prepare_part<M: Meta>(
    shards: &[Arc<Shard<M>>],
    delta: &Delta<M>,
    replica: &ReplicaId,
    hidden: bool,
    max_presences: usize,
) -> Staged<M> {
    let context = delta.context(replica).cloned().unwrap_or_default();
    let Some(subs) = delta.split_part(replica, shards.len(), |t| shard_of(t, shards.len())) else {
        return Staged {
            context,
            outcome: Ok(Vec::new()),
        };
    };
    let mut parts = Vec::new();
    let mut total = 0usize;
    for (k, (sub, n)) in subs.into_iter().enumerate() {
        let base = shards[k].lock().peers.get(replica).map(|p| p.data.clone());
        if base.is_none() && n == 0 {
            continue;
        }
        let mut data = match &base {
            Some(b) => State::clone(b),
            None => shards[k].new_peer_state(),
        };
        let diff = match data.merge(sub) {
            Ok(diff) => diff,
            Err(e) => {
                return Staged {
                    context,
                    outcome: Err(e),
                };
            }
        };
        total += data.presences_of(replica);
        let joins = (hidden && base.is_some()).then(|| data.everything_as(false));
        parts.push(StagedShard {
            shard: k,
            base,
            data,
            diff,
            joins,
        });
    }
    // The shards not staged keep what they hold.
    for (k, shard) in shards.iter().enumerate() {
        if parts.iter().all(|p| p.shard != k)
            && let Some(peer) = shard.lock().peers.get(replica)
        {
            total += peer.data.presences_of(replica);
        }
    }
    if total > max_presences {
        return Staged {
            context,
            outcome: Err(StateError::TooManyPresences {
                replica: replica.clone(),
                count: total,
                max: max_presences,
            }),
        };
    }
    Staged {
        context,
        outcome: Ok(parts),
    }
}

impl<M: Meta> ReplicaStore<M> for Store<M> {
    fn replica(&self) -> &ReplicaId {
        &self.id
    }

    fn counter(&self) -> u64 {
        self.common.counter()
    }

    fn context(&self, replica: &ReplicaId) -> Option<&CounterSet> {
        self.skeleton.context(replica)
    }

    fn presences_of(&self, replica: &ReplicaId) -> usize {
        if *replica == self.id {
            return self.common.own_presences();
        }
        if !self.held.contains(replica) {
            return 0;
        }
        self.shards
            .iter()
            .filter_map(|s| {
                s.lock()
                    .peers
                    .get(replica)
                    .map(|p| p.data.presences_of(replica))
            })
            .sum()
    }

    fn superseded_by(&self) -> Option<Incarnation> {
        self.skeleton.superseded_by()
    }

    fn purge_record(&self, replica: &ReplicaId) -> Option<&PurgeRecord> {
        self.skeleton.purge_record(replica)
    }

    fn merge(&mut self, delta: Delta<M>) -> Result<Diff<M>, StateError> {
        self.apply(delta, false)
    }

    fn readmit(&mut self, snapshot: Delta<M>) -> Result<Diff<M>, StateError> {
        self.apply(snapshot, true)
    }

    fn hide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError> {
        self.skeleton.hide(replica)?;
        self.set_shown(replica, false);
        Ok(Diff::default())
    }

    fn unhide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError> {
        self.skeleton.unhide(replica)?;
        self.set_shown(replica, true);
        Ok(Diff::default())
    }

    fn purge(&mut self, replica: &ReplicaId, reason: PurgeReason) -> Result<Diff<M>, StateError> {
        self.skeleton.purge(replica, reason)?;
        self.reconcile(&BTreeSet::from([replica.name().clone()]));
        Ok(Diff::default())
    }

    fn forget_purged(&mut self, replica: &ReplicaId) -> bool {
        self.skeleton.forget_purged(replica)
    }

    fn reincarnate(&mut self, incarnation: Incarnation) -> Result<Reincarnation<M>, StateError> {
        self.skeleton.reincarnate(incarnation)?;
        let id = self.skeleton.replica().clone();
        let limits = self.common.limits.clone();
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        let mut next = 1;
        let mut renamed = Vec::new();
        for g in &mut guards {
            let (moves, last) = Shard::reincarnate(&mut *g, &id, next, &limits);
            next = last + 1;
            renamed.extend(moves);
        }
        self.common.restart(next - 1, renamed.len());
        self.broadcast = next - 1;
        // Under every shard's lock: no guard acts on an old id meanwhile.
        self.common.rename(renamed.clone());
        drop(guards);
        self.id = id;
        Ok(Reincarnation {
            delta: Delta::default(),
            renamed,
        })
    }

    fn changes_since(&self, replica: &ReplicaId, since: u64) -> Option<Delta<M>> {
        let plan = if *replica == self.id {
            ServePlan::Own(since)
        } else {
            ServePlan::Peer(
                replica.clone(),
                since,
                self.skeleton.changes_since(replica, since)?,
                false,
            )
        };
        match build(&self.shards, &self.common, &self.id, vec![plan], usize::MAX).pop() {
            Some(Built::Part(delta, false)) => Some(delta),
            _ => None,
        }
    }

    fn snapshot_of(&self, replica: &ReplicaId) -> Option<Delta<M>> {
        let plan = if *replica == self.id {
            ServePlan::Own(0)
        } else {
            ServePlan::Peer(
                replica.clone(),
                0,
                self.skeleton.snapshot_of(replica)?,
                true,
            )
        };
        match build(&self.shards, &self.common, &self.id, vec![plan], usize::MAX).pop() {
            Some(Built::Part(delta, _)) => Some(delta),
            _ => None,
        }
    }

    fn take_local(&mut self) -> Option<LocalChanges<M>> {
        // A counter is spent under its shard's lock and its change recorded
        // before the lock is let go: once a shard's lock is taken after the
        // cut, every change of that shard up to the cut is in its pending
        // list. So the shards are taken one at a time, and no lock waits
        // for another.
        let (ended, to) = self.common.cut();
        let from = std::mem::replace(&mut self.broadcast, to);
        let mut taken: Vec<Pending<M>> = self
            .shards
            .iter()
            .zip(&mut self.spares)
            .map(|(shard, spare)| {
                Shard::take_pending(&mut shard.lock(), ended, std::mem::take(spare))
            })
            .collect();
        let mut chunks = Vec::with_capacity(taken.iter().map(Vec::len).sum());
        for (list, spare) in taken.iter_mut().zip(&mut self.spares) {
            let used = list.len();
            chunks.extend(
                list.drain(..)
                    .map(|(slot, delta)| (self.common.interval_start(slot, from), delta)),
            );
            // What a burst grew is given back once periods are quieter.
            list.shrink_to(used.saturating_mul(2).max(SPARE_MIN));
            *spare = std::mem::take(list);
        }
        (!chunks.is_empty()).then_some((to, chunks))
    }
}

impl<M: Meta> Store<M> {
    /// Tells the readers of [`super::Events`] of a replica event.
    pub(crate) fn announce(&mut self, event: super::events::ReplicaEvent) {
        self.common.replica_events.push(event, &mut self.woken);
    }

    /// Ends the feeds of every shard: the tracker stopped.
    pub(crate) fn close(&mut self) {
        self.common.replica_events.close(&mut self.woken);
        for shard in self.shards.clone().iter() {
            let mut wake = Wake::new();
            shard.lock().close(&mut wake);
            self.after_unlock(wake);
        }
    }
}
