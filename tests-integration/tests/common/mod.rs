//! The model, generators and checks shared by the property tests.
//!
//! Everything here goes through the public API only. A [`Cluster`] runs a
//! random history of mutations on a few replicas, interleaved with random
//! deliveries between them, and keeps a plain ground truth (a `BTreeMap` of
//! the live presences) next to it. Every operation's diff is replayed on a
//! model of the list and compared with the list after every step, so every
//! property also checks that diffs neither miss nor invent anything.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};

use attendance::{
    Change, CounterSet, Delta, Diff, Incarnation, Limits, PresenceId, ReplicaId, ReplicaName,
    State, StateError,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError};

/// The meta type of the tests.
pub type M = u8;

pub const TOPICS: [&str; 3] = ["t0", "t1", "t2"];
pub const KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// Metas are drawn from `0..METAS`, so updates often keep the same meta.
pub const METAS: M = 4;

/// The proptest configuration of every property: at least 1,000 cases, and
/// a fixed RNG seed that is printed first, so a failing run (whose output
/// cargo shows) says how to replay it: `PROPTEST_RNG_SEED=<seed>`. Without
/// that variable the seed is random. Failing inputs are also saved in
/// `tests/properties.proptest-regressions` and replayed first on later runs.
pub fn config() -> Config {
    let mut config = Config::default();
    config.cases = config.cases.max(1000);
    if config.failure_persistence.is_some() {
        config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        )));
    }
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        }
    };
    eprintln!("proptest seed {seed}: replay this run with PROPTEST_RNG_SEED={seed}");
    config.rng_seed = RngSeed::Fixed(seed);
    config
}

// --- names -------------------------------------------------------------

pub fn replica_id(name: &str, started_ms: u64) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).expect("valid name"),
        Incarnation::new(started_ms, 7),
    )
}

/// The replica that runs mutations number `i`.
pub fn owner_id(i: usize) -> ReplicaId {
    replica_id(&format!("r{i}"), 1)
}

/// A replica that never tracks anything: it only merges.
pub fn observer_id(i: usize) -> ReplicaId {
    replica_id(&format!("o{i}"), 1)
}

pub fn observer_state(i: usize) -> State<M> {
    State::new(observer_id(i))
}

/// A presence id as the tests key it.
pub type Pid = (ReplicaId, u64);

pub fn pid(id: &PresenceId) -> Pid {
    (id.replica().clone(), id.as_dot().counter())
}

// --- the canonical, comparable view of a state --------------------------

/// What a listed presence version shows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shown {
    pub topic: String,
    pub key: String,
    pub meta: M,
}

impl Shown {
    pub fn new(topic: &str, key: &str, meta: M) -> Self {
        Self {
            topic: topic.to_owned(),
            key: key.to_owned(),
            meta,
        }
    }
}

/// The lists of a state: one row per listed presence version, keyed by
/// (presence id, version).
pub type View = BTreeMap<(Pid, u64), Shown>;

/// The causal context of every replica a state holds but its own.
pub type Contexts = BTreeMap<ReplicaId, CounterSet>;

/// The lists of `state`, built from `topics()` and `list()`, after checking
/// that every query agrees with them (`count`, `get`, `len`, `is_empty`,
/// the per-replica counts of `replicas()`), that topics and keys come in
/// order, and that no row is listed twice.
pub fn view(state: &State<M>) -> Result<View, TestCaseError> {
    let mut rows = View::new();
    let topics = state.topics();
    for pair in topics.windows(2) {
        prop_assert!(pair[0].0 < pair[1].0, "topics out of order: {:?}", topics);
    }
    let mut total = 0;
    for (topic, count) in &topics {
        prop_assert!(*count > 0, "topic {} listed with no presence", topic);
        prop_assert_eq!(state.count(topic.as_str()), *count);
        let mut listed = 0;
        let mut last_key: Option<&str> = None;
        for group in state.list(topic.as_str()) {
            let key = group.key.as_str();
            prop_assert!(!group.presences.is_empty(), "empty group {}", key);
            if let Some(last) = last_key {
                prop_assert!(last < key, "keys out of order on {}", topic);
            }
            last_key = Some(key);
            for pair in group.presences.windows(2) {
                prop_assert!(pair[0].id <= pair[1].id, "presences out of order");
            }
            let mut grouped: Vec<_> = group
                .presences
                .iter()
                .map(|p| (p.id.clone(), p.version, *p.meta))
                .collect();
            let mut got: Vec<_> = state
                .get(topic.as_str(), key)
                .into_iter()
                .map(|p| (p.id.clone(), p.version, *p.meta))
                .collect();
            grouped.sort();
            got.sort();
            prop_assert_eq!(
                &grouped,
                &got,
                "get({}, {}) disagrees with list",
                topic,
                key
            );
            for p in &group.presences {
                let shown = Shown::new(topic.as_str(), key, *p.meta);
                let before = rows.insert((pid(&p.id), p.version), shown);
                prop_assert!(before.is_none(), "{:?} listed twice", p);
                listed += 1;
            }
        }
        prop_assert_eq!(listed, *count, "count of {} disagrees with list", topic);
        total += listed;
    }
    for topic in TOPICS {
        if !topics.iter().any(|(t, _)| t.as_str() == topic) {
            prop_assert!(state.list(topic).is_empty());
            prop_assert_eq!(state.count(topic), 0);
        }
    }
    prop_assert_eq!(state.len(), total);
    prop_assert_eq!(state.is_empty(), total == 0);
    for info in state.replicas() {
        if !info.hidden {
            let rows_of = rows.keys().filter(|((r, _), _)| r == info.id).count();
            prop_assert_eq!(info.presences, rows_of, "presences of {}", info.id);
        }
    }
    Ok(rows)
}

/// The rows of one replica.
pub fn rows_of(view: &View, replica: &ReplicaId) -> View {
    view.iter()
        .filter(|(((r, _), _), _)| r == replica)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The rows of every replica but one.
pub fn rows_without(view: &View, replica: &ReplicaId) -> View {
    view.iter()
        .filter(|(((r, _), _), _)| r != replica)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The contexts of every replica `state` holds, its own excluded.
pub fn contexts(state: &State<M>) -> Contexts {
    state
        .replicas()
        .filter(|info| info.id != state.replica())
        .map(|info| (info.id.clone(), info.context.clone()))
        .collect()
}

/// Asserts that two states list the same presences and hold the same
/// contexts (each one's own replica aside).
pub fn assert_same(a: &State<M>, b: &State<M>, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(view(a)?, view(b)?, "lists differ: {}", what);
    prop_assert_eq!(contexts(a), contexts(b), "contexts differ: {}", what);
    Ok(())
}

/// What `state` knows of `replica`: `None` when it knows no counter of it.
pub fn known(state: &State<M>, replica: &ReplicaId) -> Option<CounterSet> {
    state.context(replica).filter(|c| !c.is_empty()).cloned()
}

/// The ranges of a counter set, for comparisons with literal ranges.
pub fn ranges(set: &CounterSet) -> Vec<(u64, u64)> {
    set.ranges().collect()
}

// --- diffs ---------------------------------------------------------------

/// Applies a diff to a model of the list and checks that it can be applied:
/// a leave or an update names a row that is shown (with the same topic, key,
/// version and meta), a join a row that is not, and no diff both removes and
/// adds one row, or leaves and joins one presence (that is an update).
pub fn replay(shown: &mut View, diff: &Diff<M>) -> Result<(), TestCaseError> {
    let mut removed: BTreeSet<(Pid, u64)> = BTreeSet::new();
    let mut left: BTreeSet<Pid> = BTreeSet::new();
    let mut added: Vec<((Pid, u64), Shown)> = Vec::new();
    let mut joined: BTreeSet<Pid> = BTreeSet::new();
    let (mut joins, mut leaves, mut updates) = (0, 0, 0);
    for (topic, change) in diff.iter() {
        prop_assert!(!change.is_empty(), "empty change listed for {}", topic);
        prop_assert_eq!(diff.topic(topic.as_str()), Some(change));
        for p in change.leaves() {
            leaves += 1;
            let row = (pid(p.id()), p.version());
            let expected = Shown::new(topic.as_str(), p.key().as_str(), *p.meta());
            prop_assert_eq!(
                shown.remove(&row),
                Some(expected),
                "leave of a row not shown: {:?}",
                p
            );
            left.insert(row.0.clone());
            removed.insert(row);
        }
        for u in change.updates() {
            updates += 1;
            prop_assert!(u.old_version() != u.version(), "update to itself: {:?}", u);
            let old = (pid(u.id()), u.old_version());
            let expected = Shown::new(topic.as_str(), u.key().as_str(), *u.old_meta());
            prop_assert_eq!(
                shown.remove(&old),
                Some(expected),
                "update of a version not shown: {:?}",
                u
            );
            removed.insert(old);
            let row = (pid(u.id()), u.version());
            added.push((row, Shown::new(topic.as_str(), u.key().as_str(), *u.meta())));
        }
        for p in change.joins() {
            joins += 1;
            let row = (pid(p.id()), p.version());
            joined.insert(row.0.clone());
            added.push((row, Shown::new(topic.as_str(), p.key().as_str(), *p.meta())));
        }
    }
    prop_assert!(
        left.is_disjoint(&joined),
        "one diff leaves and joins a presence instead of updating it: {:?}",
        diff
    );
    for (row, value) in added {
        prop_assert!(
            !removed.contains(&row),
            "one diff removes and adds {:?}",
            row
        );
        prop_assert!(
            shown.insert(row.clone(), value).is_none(),
            "join of a row already shown: {:?}",
            row
        );
    }
    prop_assert_eq!(diff.joins().count(), joins);
    prop_assert_eq!(diff.leaves().count(), leaves);
    prop_assert_eq!(diff.updates().count(), updates);
    prop_assert_eq!(diff.is_empty(), joins + leaves + updates == 0);
    Ok(())
}

/// A state and the list its diffs add up to.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub state: State<M>,
    pub shown: View,
}

impl Replayed {
    /// A state that has shown nothing yet.
    pub fn new(state: State<M>) -> Self {
        assert!(state.is_empty(), "a new state lists nothing");
        Self {
            state,
            shown: View::new(),
        }
    }

    /// A state that has already shown what it lists.
    pub fn resume(state: State<M>) -> Result<Self, TestCaseError> {
        let shown = view(&state)?;
        Ok(Self { state, shown })
    }

    pub fn observer(i: usize) -> Self {
        Self::new(observer_state(i))
    }

    /// Checks a diff just returned by the state against the list.
    pub fn check(&mut self, diff: &Diff<M>) -> Result<(), TestCaseError> {
        replay(&mut self.shown, diff)?;
        prop_assert_eq!(
            &self.shown,
            &view(&self.state)?,
            "diffs do not replay the list"
        );
        Ok(())
    }

    /// Merges a delta, which must be accepted, and checks its diff.
    pub fn merge(&mut self, delta: Delta<M>) -> Result<Diff<M>, TestCaseError> {
        let diff = self
            .state
            .merge(delta)
            .map_err(|e| TestCaseError::fail(format!("merge refused: {e}")))?;
        self.check(&diff)?;
        Ok(diff)
    }
}

// --- random histories ----------------------------------------------------

/// A mutation. `pick`s choose among the replica's own presence ids, live or
/// already gone (which must then be refused).
#[derive(Clone, Debug)]
pub enum Op {
    Track { topic: usize, key: usize, meta: M },
    Update { pick: usize, meta: M },
    Untrack { pick: usize },
    UntrackMany { picks: Vec<usize> },
    UntrackKey { topic: usize, key: usize },
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TOPICS.len(), 0..KEYS.len(), 0..METAS)
            .prop_map(|(topic, key, meta)| Op::Track { topic, key, meta }),
        6 => (any::<usize>(), 0..METAS).prop_map(|(pick, meta)| Op::Update { pick, meta }),
        2 => any::<usize>().prop_map(|pick| Op::Untrack { pick }),
        1 => proptest::collection::vec(any::<usize>(), 0..4)
            .prop_map(|picks| Op::UntrackMany { picks }),
        1 => (0..TOPICS.len(), 0..KEYS.len()).prop_map(|(topic, key)| Op::UntrackKey { topic, key }),
    ]
}

#[derive(Clone, Debug)]
pub enum Step {
    /// Replica `replica % n` runs `op`.
    Mutate { replica: usize, op: Op },
    /// Replica `to % n` merges delta `pick % sent` (any order, duplicates).
    Deliver { to: usize, pick: usize },
}

/// Mutations favour the first two replicas, so that they build long
/// histories (presences updated again and again, then untracked) while the
/// others make a few.
pub fn step() -> impl Strategy<Value = Step> {
    let replica = prop_oneof![3 => 0..2usize, 1 => 0..5usize];
    prop_oneof![
        3 => (replica, op()).prop_map(|(replica, op)| Step::Mutate { replica, op }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
    ]
}

/// A replica to single out, favouring those with long histories.
pub fn victim() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..2usize, 1 => 0..5usize]
}

/// How many replicas mutate, and what happens.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub replicas: usize,
    pub steps: Vec<Step>,
}

pub fn scenario() -> impl Strategy<Value = Scenario> {
    (2..=5usize, proptest::collection::vec(step(), 1..64))
        .prop_map(|(replicas, steps)| Scenario { replicas, steps })
}

/// One mutation's delta, with what it did, for oracles.
#[derive(Clone, Debug)]
pub struct Sent {
    pub from: usize,
    pub delta: Delta<M>,
    /// Versions it removed and added: (presence, version, meta).
    pub removed: Vec<(Pid, u64, M)>,
    pub added: Vec<(Pid, u64, M)>,
}

/// Replicas running a history, with the ground truth beside them.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub owners: Vec<Replayed>,
    /// The live presences: one row per presence, at its current version.
    pub truth: View,
    /// Every mutation's delta, in the order they happened.
    pub sent: Vec<Sent>,
    live: Vec<Vec<PresenceId>>,
    gone: Vec<Vec<PresenceId>>,
    counters: Vec<u64>,
}

fn fail(e: StateError) -> TestCaseError {
    TestCaseError::fail(format!("refused: {e}"))
}

impl Cluster {
    pub fn new(replicas: usize, limits: &Limits) -> Self {
        Self {
            owners: (0..replicas)
                .map(|i| Replayed::new(State::builder(owner_id(i)).limits(limits.clone()).build()))
                .collect(),
            truth: View::new(),
            sent: Vec::new(),
            live: vec![Vec::new(); replicas],
            gone: vec![Vec::new(); replicas],
            counters: vec![0; replicas],
        }
    }

    /// Runs a whole scenario with default limits.
    pub fn run(scenario: &Scenario) -> Result<Self, TestCaseError> {
        Self::run_with(scenario, &Limits::default())
    }

    pub fn run_with(scenario: &Scenario, limits: &Limits) -> Result<Self, TestCaseError> {
        let mut cluster = Self::new(scenario.replicas, limits);
        for step in &scenario.steps {
            cluster.step(step)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn id(&self, i: usize) -> ReplicaId {
        owner_id(i % self.len())
    }

    pub fn owner(&self, i: usize) -> &State<M> {
        &self.owners[i % self.len()].state
    }

    /// The last counter replica `i` used, by the model's count.
    pub fn counter(&self, i: usize) -> u64 {
        self.counters[i % self.len()]
    }

    /// The deltas replica `i` produced, in order.
    pub fn sent_by(&self, i: usize) -> Vec<&Sent> {
        let i = i % self.len();
        self.sent.iter().filter(|s| s.from == i).collect()
    }

    pub fn pick(&self, pick: usize) -> Option<&Sent> {
        if self.sent.is_empty() {
            None
        } else {
            Some(&self.sent[pick % self.sent.len()])
        }
    }

    /// Runs one step; returns the index in `sent` of the delta it made.
    pub fn step(&mut self, step: &Step) -> Result<Option<usize>, TestCaseError> {
        match step {
            Step::Mutate { replica, op } => self.mutate(replica % self.len(), op),
            Step::Deliver { to, pick } => {
                self.deliver(to % self.len(), *pick)?;
                Ok(None)
            }
        }
    }

    /// Replica `to` merges one of the deltas made so far. Its own sub-state
    /// must not change.
    pub fn deliver(&mut self, to: usize, pick: usize) -> Result<(), TestCaseError> {
        let Some(sent) = self.pick(pick) else {
            return Ok(());
        };
        let delta = sent.delta.clone();
        let me = self.id(to);
        let owner = &mut self.owners[to];
        let own_before = rows_of(&owner.shown, &me);
        let counter = owner.state.counter();
        owner.merge(delta)?;
        prop_assert_eq!(
            rows_of(&owner.shown, &me),
            own_before,
            "a merge changed own data"
        );
        prop_assert_eq!(owner.state.counter(), counter);
        Ok(())
    }

    /// One of replica `i`'s own presence ids: usually a live one (often the
    /// newest, so that some presences see many updates), sometimes (or when
    /// none is live) one already untracked.
    fn pick_id(&self, i: usize, pick: usize) -> Option<PresenceId> {
        let (live, gone) = (&self.live[i], &self.gone[i]);
        if (pick % 8 == 7 || live.is_empty()) && !gone.is_empty() {
            Some(gone[(pick / 8) % gone.len()].clone())
        } else if pick % 8 < 3 {
            live.last().cloned()
        } else if !live.is_empty() {
            Some(live[(pick / 8) % live.len()].clone())
        } else {
            None
        }
    }

    fn is_live(&self, i: usize, id: &PresenceId) -> bool {
        self.live[i].contains(id)
    }

    /// The truth row of a live presence.
    fn truth_row(&self, id: &PresenceId) -> ((Pid, u64), Shown) {
        let p = pid(id);
        self.truth
            .iter()
            .find(|((q, _), _)| *q == p)
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("live presences are in the truth")
    }

    /// Replica `i` runs `op`. Checks the result against the model: ids and
    /// versions take the next counters, refusals change nothing, the delta
    /// speaks for exactly the new counters, and the diff replays the list.
    pub fn mutate(&mut self, i: usize, op: &Op) -> Result<Option<usize>, TestCaseError> {
        let me = self.id(i);
        let before = self.counters[i];
        prop_assert_eq!(self.owners[i].state.counter(), before);
        let others_before = rows_without(&self.owners[i].shown, &me);
        let mut removed = Vec::new();
        let mut added = Vec::new();
        // The ids to remove, oldest version first, as untrack_many orders them.
        let mut removing: Vec<PresenceId> = Vec::new();
        let change: Change<M> = match op {
            Op::Track { topic, key, meta } => {
                let state = &mut self.owners[i].state;
                let (id, change) = state
                    .track(TOPICS[*topic], KEYS[*key], *meta)
                    .map_err(fail)?;
                let version = before + 1;
                prop_assert_eq!(
                    pid(&id),
                    (me.clone(), version),
                    "a track takes the next counter"
                );
                self.truth.insert(
                    (pid(&id), version),
                    Shown::new(TOPICS[*topic], KEYS[*key], *meta),
                );
                added.push((pid(&id), version, *meta));
                self.live[i].push(id);
                change
            }
            Op::Update { pick, meta } => {
                let Some(id) = self.pick_id(i, *pick) else {
                    return Ok(None);
                };
                if !self.is_live(i, &id) {
                    return self.refused(i, self.owners[i].state.clone().update(&id, *meta), &id);
                }
                let (row, shown) = self.truth_row(&id);
                let change = self.owners[i].state.update(&id, *meta).map_err(fail)?;
                let version = before + 1;
                self.truth.remove(&row);
                removed.push((row.0.clone(), row.1, shown.meta));
                added.push((row.0.clone(), version, *meta));
                self.truth.insert(
                    (row.0, version),
                    Shown {
                        meta: *meta,
                        ..shown
                    },
                );
                change
            }
            Op::Untrack { pick } => {
                let Some(id) = self.pick_id(i, *pick) else {
                    return Ok(None);
                };
                if !self.is_live(i, &id) {
                    return self.refused(i, self.owners[i].state.clone().untrack(&id), &id);
                }
                removing.push(id.clone());
                self.owners[i].state.untrack(&id).map_err(fail)?
            }
            Op::UntrackMany { picks } => {
                let ids: Vec<PresenceId> =
                    picks.iter().filter_map(|&p| self.pick_id(i, p)).collect();
                if let Some(dead) = ids.iter().find(|id| !self.is_live(i, id)) {
                    let result = self.owners[i].state.clone().untrack_many(&ids);
                    return self.refused(i, result, &dead.clone());
                }
                for id in &ids {
                    if !removing.contains(id) {
                        removing.push(id.clone());
                    }
                }
                self.owners[i].state.untrack_many(&ids).map_err(fail)?
            }
            Op::UntrackKey { topic, key } => {
                removing = self.live[i]
                    .iter()
                    .filter(|id| {
                        let (_, shown) = self.truth_row(id);
                        shown.topic == TOPICS[*topic] && shown.key == KEYS[*key]
                    })
                    .cloned()
                    .collect();
                self.owners[i].state.untrack_key(TOPICS[*topic], KEYS[*key])
            }
        };
        removing.sort_by_key(|id| self.truth_row(id).0.1);
        for id in &removing {
            let (row, shown) = self.truth_row(id);
            self.truth.remove(&row);
            removed.push((row.0, row.1, shown.meta));
            self.live[i].retain(|x| x != id);
            self.gone[i].push(id.clone());
        }
        let events = match op {
            Op::Track { .. } | Op::Update { .. } => 1,
            _ => removing.len() as u64,
        };
        let after = before + events;
        self.counters[i] = after;
        let owner = &mut self.owners[i];
        prop_assert_eq!(
            owner.state.counter(),
            after,
            "every mutation takes one counter"
        );
        let (delta, diff) = change.into_parts();
        if events == 0 {
            prop_assert!(delta.is_empty(), "a no-op made a delta: {:?}", delta);
            prop_assert!(diff.is_empty());
        } else {
            let replicas: Vec<_> = delta.replicas().cloned().collect();
            prop_assert_eq!(replicas, vec![me.clone()]);
            let context = delta
                .context(&me)
                .expect("the delta speaks for its replica");
            prop_assert_eq!(
                ranges(context),
                vec![(before + 1, after)],
                "a delta speaks for exactly the counters it took"
            );
            prop_assert_eq!(delta.entry_count(), added.len());
        }
        owner.check(&diff)?;
        prop_assert_eq!(rows_of(&owner.shown, &me), rows_of(&self.truth, &me));
        prop_assert_eq!(
            rows_without(&owner.shown, &me),
            others_before,
            "a local mutation changed other replicas' data"
        );
        if events == 0 {
            return Ok(None);
        }
        self.sent.push(Sent {
            from: i,
            delta,
            removed,
            added,
        });
        Ok(Some(self.sent.len() - 1))
    }

    /// A mutation naming a presence that is gone must be refused with
    /// `UnknownPresence` and change nothing. It was run on a clone.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        i: usize,
        result: Result<T, StateError>,
        id: &PresenceId,
    ) -> Result<Option<usize>, TestCaseError> {
        prop_assert_eq!(
            result.err(),
            Some(StateError::UnknownPresence(id.clone())),
            "a gone presence must be refused"
        );
        // And the real state, given the same call, stays as it was.
        let state = &mut self.owners[i].state;
        let counter = state.counter();
        let before = view(state)?;
        prop_assert!(state.untrack(id).is_err());
        prop_assert!(state.update(id, 0).is_err());
        prop_assert_eq!(state.counter(), counter);
        prop_assert_eq!(view(state)?, before);
        Ok(None)
    }
}

// --- deliveries to observers ----------------------------------------------

/// Something an observer receives.
#[derive(Clone, Debug)]
pub enum Piece {
    /// One mutation delta: `sent[pick % len]`.
    One(usize),
    /// Several mutation deltas joined into one.
    Batch(Vec<usize>),
    /// Consecutive deltas of one replica joined into one, as the protocol
    /// batches a broadcast period: `(replica, first, count)`.
    Run(usize, usize, usize),
    /// The whole state of an owner, with what it merged from others.
    Snapshot(usize),
    /// An owner's copy of one replica's sub-state: `(owner, replica)`.
    SnapshotOf(usize, usize),
    /// Every mutation delta, one by one, in an order drawn from the seed.
    All(u64),
}

pub fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        10 => any::<usize>().prop_map(Piece::One),
        2 => proptest::collection::vec(any::<usize>(), 1..5).prop_map(Piece::Batch),
        3 => (any::<usize>(), any::<usize>(), 2..6usize).prop_map(|(r, f, n)| Piece::Run(r, f, n)),
        1 => any::<usize>().prop_map(Piece::Snapshot),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Piece::SnapshotOf(a, b)),
        1 => any::<u64>().prop_map(Piece::All),
    ]
}

pub fn pieces(max: usize) -> impl Strategy<Value = Vec<Piece>> {
    proptest::collection::vec(piece(), 0..max)
}

/// Joins deltas into one.
pub fn joined(deltas: impl IntoIterator<Item = Delta<M>>) -> Delta<M> {
    let mut all = Delta::default();
    for d in deltas {
        all.join(d);
    }
    all
}

impl Piece {
    /// The deltas this piece delivers, in order.
    pub fn deltas(&self, cluster: &Cluster) -> Vec<Delta<M>> {
        match self {
            Piece::One(pick) => cluster
                .pick(*pick)
                .map(|s| s.delta.clone())
                .into_iter()
                .collect(),
            Piece::Batch(picks) => vec![joined(
                picks
                    .iter()
                    .filter_map(|&p| cluster.pick(p))
                    .map(|s| s.delta.clone()),
            )],
            Piece::Run(r, first, count) => {
                let mine = cluster.sent_by(*r);
                let first = first % (mine.len() + 1);
                let last = (first + count).min(mine.len());
                vec![joined(mine[first..last].iter().map(|s| s.delta.clone()))]
            }
            Piece::Snapshot(i) => vec![cluster.owner(*i).snapshot()],
            Piece::SnapshotOf(i, r) => cluster
                .owner(*i)
                .snapshot_of(&cluster.id(*r))
                .into_iter()
                .collect(),
            Piece::All(seed) => shuffle(cluster.sent.len(), *seed)
                .into_iter()
                .map(|k| cluster.sent[k].delta.clone())
                .collect(),
        }
    }

    /// All of them as one delta.
    pub fn delta(&self, cluster: &Cluster) -> Delta<M> {
        joined(self.deltas(cluster))
    }
}

/// A fresh observer that received `pieces`, diffs checked at every merge.
pub fn observe(
    cluster: &Cluster,
    name: usize,
    pieces: &[Piece],
) -> Result<Replayed, TestCaseError> {
    let mut observer = Replayed::observer(name);
    for piece in pieces {
        for delta in piece.deltas(cluster) {
            observer.merge(delta)?;
        }
    }
    Ok(observer)
}

/// A fresh state named `name` that merged `deltas` in order.
pub fn merged(
    name: usize,
    deltas: impl IntoIterator<Item = Delta<M>>,
) -> Result<State<M>, TestCaseError> {
    let mut state = Replayed::observer(name);
    for d in deltas {
        state.merge(d)?;
    }
    Ok(state.state)
}

// --- a small deterministic shuffle ------------------------------------------

#[path = "../../../examples/support/rng.rs"]
mod rng;
use rng::Rng;

/// A permutation of `0..n` drawn from `seed`.
pub fn shuffle(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.index(i + 1));
    }
    order
}

/// Every index of `0..n` at least once, in a random order, a few twice.
pub fn shuffle_with_duplicates(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut order = shuffle(n, seed);
    if n > 0 {
        for _ in 0..rng.index(n + 1) {
            let at = rng.index(order.len() + 1);
            let dup = rng.index(n);
            order.insert(at, dup);
        }
    }
    order
}
