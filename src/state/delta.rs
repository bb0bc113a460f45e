//! Deltas: small states that carry what changed, and whole states too.

use hashbrown::HashMap;

use std::sync::Arc;

use smallvec::SmallVec;

use super::store::Payload;
use super::{CounterSet, ReplicaId, Topic};

/// A piece of state to ship to peers and [`merge`](super::State::merge)
/// there.
///
/// Every mutation returns one (covering only the counters it touched), a
/// catch-up is one (what changed since a counter), and a snapshot is one
/// (whole sub-states). Deltas join like states: [`Delta::join`] makes one
/// delta from two, and merging the joined delta equals merging both.
#[derive(Clone, Debug)]
pub struct Delta<M> {
    /// Topics the entries refer to by index.
    pub(crate) topics: SmallVec<[Topic; 1]>,
    /// One part per replica, sorted by replica id.
    pub(crate) parts: SmallVec<[Part<M>; 1]>,
}

/// What a delta says about one replica's sub-state.
#[derive(Clone, Debug)]
pub(crate) struct Part<M> {
    pub(crate) replica: ReplicaId,
    /// The events (counter values) whose effects this part carries.
    pub(crate) context: CounterSet,
    /// Dots known to be removed, by events of `context`, whose own event is
    /// not in `context`. An entry whose dot is in `context` or `dead` but
    /// not among `entries` is gone.
    ///
    /// Keeping these apart from `context` is what makes equal contexts mean
    /// equal sub-states even when deltas arrive out of order: knowing that a
    /// dot died is not knowing what its event did.
    pub(crate) dead: CounterSet,
    /// Live entries, sorted by dot, every dot in `context`.
    pub(crate) entries: SmallVec<[PartEntry<M>; 1]>,
    /// Which event removed which dot, sorted by event; feeds the receivers'
    /// removal logs so that they can serve catch-ups in turn.
    pub(crate) removals: SmallVec<[Removal; 1]>,
    /// `removals` lists every removal event of `context` above this counter.
    pub(crate) history_floor: u64,
    /// Entries the decoder dropped because their meta did not decode.
    pub(crate) undecodable: u64,
}

/// One version of one presence inside a delta.
#[derive(Clone, Debug)]
pub(crate) struct PartEntry<M> {
    pub(crate) dot: u64,
    pub(crate) pid: u64,
    /// Index into [`Delta::topics`].
    pub(crate) topic: u32,
    pub(crate) payload: Arc<Payload<M>>,
}

/// The event counter `event` removed the entry with dot `dot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Removal {
    pub(crate) event: u64,
    pub(crate) dot: u64,
}

impl<M> Default for Delta<M> {
    fn default() -> Self {
        Self {
            topics: SmallVec::new(),
            parts: SmallVec::new(),
        }
    }
}

// Two deltas are equal when they say the same thing; the order of their topic
// tables does not matter.
impl<M: PartialEq> PartialEq for Delta<M> {
    fn eq(&self, other: &Self) -> bool {
        self.parts.len() == other.parts.len()
            && self.parts.iter().zip(&other.parts).all(|(a, b)| {
                a.replica == b.replica
                    && a.context == b.context
                    && a.dead == b.dead
                    && a.removals == b.removals
                    && a.history_floor == b.history_floor
                    && a.undecodable == b.undecodable
                    && a.entries.len() == b.entries.len()
                    && a.entries.iter().zip(&b.entries).all(|(x, y)| {
                        x.dot == y.dot
                            && x.pid == y.pid
                            && x.payload == y.payload
                            && self.topics[x.topic as usize] == other.topics[y.topic as usize]
                    })
            })
    }
}

impl<M> Delta<M> {
    /// A delta of one part, or of none when the part says nothing.
    pub(crate) fn of_part(topics: impl IntoIterator<Item = Topic>, part: Part<M>) -> Self {
        let mut delta = Delta {
            topics: topics.into_iter().collect(),
            parts: SmallVec::new(),
        };
        if !part.is_empty() {
            delta.parts.push(part);
        }
        delta
    }
}

impl<M> Part<M> {
    pub(crate) fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            context: CounterSet::new(),
            dead: CounterSet::new(),
            entries: SmallVec::new(),
            removals: SmallVec::new(),
            history_floor: 0,
            undecodable: 0,
        }
    }

    /// Whether the part knows the fate of this dot.
    pub(crate) fn covers(&self, dot: u64) -> bool {
        self.context.contains(dot) || self.dead.contains(dot)
    }

    /// Whether the part says nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.context.is_empty() && self.dead.is_empty()
    }

    /// Whether the part holds an entry with this dot.
    pub(crate) fn has_entry(&self, dot: u64) -> bool {
        self.entries.binary_search_by_key(&dot, |e| e.dot).is_ok()
    }
}

impl<M: Clone> Delta<M> {
    /// Whether the delta says nothing.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Part::is_empty)
    }

    /// The replicas the delta speaks about.
    pub fn replicas(&self) -> impl Iterator<Item = &ReplicaId> {
        self.parts.iter().map(|p| &p.replica)
    }

    /// The counters the delta speaks for, of one replica.
    pub fn context(&self, replica: &ReplicaId) -> Option<&CounterSet> {
        self.part(replica).map(|p| &p.context)
    }

    /// How many presence versions the delta carries.
    pub fn entry_count(&self) -> usize {
        self.parts.iter().map(|p| p.entries.len()).sum()
    }

    /// How many entries the decoder dropped because their meta did not
    /// decode as `M`. Their counters still count as applied.
    pub fn undecodable(&self) -> u64 {
        self.parts.iter().map(|p| p.undecodable).sum()
    }

    pub(crate) fn part(&self, replica: &ReplicaId) -> Option<&Part<M>> {
        self.parts
            .binary_search_by(|p| p.replica.cmp(replica))
            .ok()
            .map(|i| &self.parts[i])
    }

    /// Joins `other` into `self`: merging the result anywhere equals merging
    /// `self` and then `other`.
    ///
    /// This is how a replica batches the deltas of one broadcast period.
    pub fn join(&mut self, other: Delta<M>) {
        let Delta { topics, parts } = other;
        // A batch grows one small delta at a time: most bring one topic,
        // shared with the state (same address) and often the one just
        // before. Scanning addresses beats building an index every time.
        let remap: SmallVec<[u32; 1]> = if self.topics.len() <= 1024 {
            topics
                .into_iter()
                .map(|t| {
                    let found = self
                        .topics
                        .iter()
                        .rposition(|mine| mine.identity() == t.identity())
                        .or_else(|| self.topics.iter().rposition(|mine| *mine == t));
                    match found {
                        Some(i) => i as u32,
                        None => {
                            self.topics.push(t);
                            (self.topics.len() - 1) as u32
                        }
                    }
                })
                .collect()
        } else {
            let mut index: HashMap<Topic, u32> = self
                .topics
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            topics
                .into_iter()
                .map(|t| {
                    *index.entry(t.clone()).or_insert_with(|| {
                        self.topics.push(t);
                        (self.topics.len() - 1) as u32
                    })
                })
                .collect()
        };
        for mut part in parts {
            for e in &mut part.entries {
                e.topic = remap[e.topic as usize];
            }
            match self
                .parts
                .binary_search_by(|p| p.replica.cmp(&part.replica))
            {
                Ok(i) => join_parts(&mut self.parts[i], part),
                Err(i) => self.parts.insert(i, part),
            }
        }
    }
}

/// The lowest counter above which a log made of two logs, complete above
/// `a_floor` for the events of `a` and above `b_floor` for those of `b`, is
/// complete for the events of both.
pub(crate) fn joined_floor(a: &CounterSet, a_floor: u64, b: &CounterSet, b_floor: u64) -> u64 {
    if a_floor == b_floor {
        return a_floor;
    }
    let (low, low_floor, high, high_floor) = if a_floor < b_floor {
        (a, a_floor, b, b_floor)
    } else {
        (b, b_floor, a, a_floor)
    };
    // The lower floor holds if the side with the higher floor knows nothing
    // in between that the other side does not know too.
    if low.is_superset_within(high, low_floor + 1, high_floor) {
        low_floor
    } else {
        high_floor
    }
}

/// The CRDT join of two parts of one replica.
fn join_parts<M: Clone>(a: &mut Part<M>, b: Part<M>) {
    let follows = b
        .context
        .min()
        .is_some_and(|lo| lo > a.context.max() && lo > a.dead.max());
    if follows && b.dead.len() <= 64 {
        append_part(a, b);
        return;
    }
    let a_entries = std::mem::take(&mut a.entries);
    let mut kept: SmallVec<[PartEntry<M>; 1]> =
        SmallVec::with_capacity(a_entries.len() + b.entries.len());
    // An entry survives if the other side holds it too or has never seen it.
    for e in a_entries {
        if b.has_entry(e.dot) || !b.covers(e.dot) {
            kept.push(e);
        }
    }
    for e in b.entries {
        if !a.covers(e.dot) {
            kept.push(e);
        }
    }
    kept.sort_by_key(|e| e.dot);
    a.entries = kept;
    a.history_floor = joined_floor(&a.context, a.history_floor, &b.context, b.history_floor);
    a.context.union(&b.context);
    a.dead.union(&b.dead);
    a.dead.subtract(&a.context);
    a.removals.extend(b.removals);
    a.removals.sort_unstable();
    a.removals.dedup();
    a.undecodable += b.undecodable;
}

/// [`join_parts`] when every event of `b` follows those of `a`, as when a
/// replica batches its own mutations: nothing of `b` is known to `a`, and
/// `b` removes from `a` only the dots it lists as dead, so the join is an
/// append (entries and removals stay sorted) plus a few removals.
fn append_part<M: Clone>(a: &mut Part<M>, b: Part<M>) {
    for dot in b.dead.iter() {
        if let Ok(i) = a.entries.binary_search_by_key(&dot, |e| e.dot) {
            a.entries.remove(i);
        }
    }
    a.entries.extend(b.entries);
    a.history_floor = joined_floor(&a.context, a.history_floor, &b.context, b.history_floor);
    a.context.union(&b.context);
    a.dead.union(&b.dead);
    a.dead.subtract(&a.context);
    a.removals.extend(b.removals);
    a.undecodable += b.undecodable;
}
