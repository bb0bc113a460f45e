//! Catch-up answers built outside the node's lock: this replica's own
//! presences read from the shards by dot, a slice per hold, and other
//! replicas' sub-states from their peer states.

use std::sync::Arc;

use crate::protocol::Built;
use crate::runtime::shard::{Common, Shard};
use crate::state::HeldEntry;
use crate::{CounterSet, Delta, Meta, ReplicaId};

/// Dot lookups per hold when reading this replica's own presences for a
/// catch-up answer.
const SLICE: u64 = 1024;

/// A shard with at most this many of this replica's presences is read in
/// one hold.
const SMALL_SHARD: usize = 8192;

/// What one part of a catch-up answer is read from.
pub(crate) enum ServePlan<M> {
    /// This replica's own presences, since this counter.
    Own(u64),
    /// Another replica's: the part without entries from the context-only
    /// state, from which counter its entries are wanted, and whether it is
    /// the whole sub-state.
    Peer(ReplicaId, u64, Delta<M>, bool),
    Declined,
    Nothing,
}

/// Builds the parts of a catch-up answer outside the node's lock: entries
/// are read from the shards a slice at a time.
pub(crate) fn build<M: Meta>(
    shards: &[Arc<Shard<M>>],
    common: &Common,
    own: &ReplicaId,
    plans: Vec<ServePlan<M>>,
    max_catchup_bytes: usize,
) -> Vec<Built<M>> {
    plans
        .into_iter()
        .map(|plan| match plan {
            ServePlan::Own(since) => own_part(shards, common, own, since, max_catchup_bytes),
            ServePlan::Peer(replica, since, mut delta, whole) => {
                let mut entries = Vec::new();
                for shard in shards {
                    let data = shard.lock().peers.get(&replica).map(|p| p.data.clone());
                    if let Some(data) = data {
                        entries.extend(data.entries_above(&replica, since));
                    }
                }
                delta.fill(&replica, entries);
                Built::Part(delta, whole)
            }
            ServePlan::Declined => Built::Declined,
            ServePlan::Nothing => Built::Nothing,
        })
        .collect()
}

/// This replica's presences for a catch-up answer: its changes since
/// `since` when every shard's removal log reaches back that far, else its
/// whole sub-state, as they stand at one counter.
///
/// Entries are found by dot, a slice of counters per hold, so no hold is
/// long; what changes meanwhile is caught up in rounds, the last with
/// every shard held (a few counters), and entries read before a removal
/// are dropped by the removal logs.
fn own_part<M: Meta>(
    shards: &[Arc<Shard<M>>],
    common: &Common,
    own: &ReplicaId,
    since: u64,
    max_catchup_bytes: usize,
) -> Built<M> {
    let reaches = since > 0
        && shards
            .iter()
            .all(|s| s.lock().own_removals_since(since).is_some());
    let whole = !reaches;
    let least = common
        .own_presences()
        .saturating_mul(crate::protocol::MIN_ENTRY_BYTES);
    if whole && least > max_catchup_bytes {
        return Built::Declined;
    }
    let floor = if whole { 0 } else { since };
    let start = common.counter();
    let mut entries: Vec<HeldEntry<M>> = Vec::new();
    for shard in shards {
        let (n, first) = shard.own_extent();
        let Some(first) = first else {
            continue;
        };
        if n == 0 {
            continue;
        }
        if n <= SMALL_SHARD {
            // Grown outside the lock: growing a vector of a million entries
            // under it would copy them all while callers wait.
            entries.reserve(n + 64);
            shard.own_all(&mut entries);
            continue;
        }
        read_slices(shard, first.max(floor + 1), start, &mut entries);
    }
    // What changed meanwhile, in rounds, until little is left.
    let mut done = start;
    for _ in 0..64 {
        let now = common.counter();
        if now - done <= 64 {
            break;
        }
        for shard in shards {
            read_slices(shard, done + 1, now, &mut entries);
        }
        done = now;
    }
    // The last few with every shard held: the answer is this replica at
    // counter `to`.
    let to = {
        entries.reserve(1024);
        let guards: Vec<_> = shards.iter().map(|s| s.lock()).collect();
        let to = common.counter();
        for g in &guards {
            g.own_between(done + 1, to, &mut entries);
        }
        to
    };
    // Removals after the scan began drop what was read before them; a
    // catch-up also sends those since `since`.
    let mut removals = Vec::new();
    for shard in shards {
        match shard.lock().own_removals_since(floor.min(start)) {
            Some(logged) => removals.extend(logged.into_iter().filter(|r| r.event <= to)),
            // The log moved on meanwhile: nothing now, asked again later.
            None => return Built::Nothing,
        }
    }
    removals.sort_unstable();
    removals.dedup();
    let mut gone = CounterSet::new();
    for r in &removals {
        gone.insert(r.dot);
    }
    entries.retain(|e| e.dot > floor && !gone.contains(e.dot));
    if whole {
        let context = CounterSet::prefix(to);
        let delta = Delta::from_held(
            own.clone(),
            (context, CounterSet::new()),
            entries,
            Vec::new(),
            to,
        );
        return Built::Part(delta, true);
    }
    let mut context = CounterSet::new();
    if to > since {
        context.insert_range(since + 1, to);
    }
    let mut dead = gone;
    dead.subtract(&context);
    let removals = removals.into_iter().filter(|r| r.event > since).collect();
    let delta = Delta::from_held(own.clone(), (context, dead), entries, removals, since);
    Built::Part(delta, false)
}

fn read_slices<M: Meta>(shard: &Shard<M>, lo: u64, hi: u64, out: &mut Vec<HeldEntry<M>>) {
    let mut at = lo;
    while at <= hi {
        let end = at.saturating_add(SLICE - 1).min(hi);
        // Grown outside the lock, as in `own_part`.
        out.reserve(SLICE as usize);
        shard.own_between(at, end, out);
        at = end + 1;
        // Between holds rather than in one: a thread the OS takes off the
        // CPU while it holds the lock makes every waiter wait.
        std::thread::yield_now();
    }
}
