//! What a merge or a mutation changed in the visible lists.

use std::sync::Arc;

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::store::Payload;
use super::{Key, PresenceId, Topic, VersionRef};

/// One presence as a diff reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence<M> {
    id: PresenceId,
    version: u64,
    payload: Arc<Payload<M>>,
}

impl<M> Presence<M> {
    pub(crate) fn new(id: PresenceId, version: u64, payload: Arc<Payload<M>>) -> Self {
        Self {
            id,
            version,
            payload,
        }
    }

    /// Its stable id.
    pub fn id(&self) -> &PresenceId {
        &self.id
    }

    /// The key it is present under.
    pub fn key(&self) -> &Key {
        &self.payload.key
    }

    /// The counter of the version shown (the dot of its latest track or
    /// update).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Its metadata at that version.
    pub fn meta(&self) -> &M {
        &self.payload.meta
    }

    /// The reference of the version shown: the same on every replica.
    pub fn version_ref(&self) -> VersionRef {
        VersionRef::new(self.id.replica(), self.version)
    }
}

/// A presence whose metadata changed.
///
/// The old version is what this receiver showed before, even when
/// intermediate versions were never seen here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update<M> {
    id: PresenceId,
    old_version: u64,
    old: Arc<Payload<M>>,
    version: u64,
    new: Arc<Payload<M>>,
}

impl<M> Update<M> {
    pub(crate) fn new(
        id: PresenceId,
        (old_version, old): (u64, Arc<Payload<M>>),
        (version, new): (u64, Arc<Payload<M>>),
    ) -> Self {
        Self {
            id,
            old_version,
            old,
            version,
            new,
        }
    }

    /// Its stable id.
    pub fn id(&self) -> &PresenceId {
        &self.id
    }

    /// The key it is present under.
    pub fn key(&self) -> &Key {
        &self.new.key
    }

    /// The version this receiver showed before.
    pub fn old_version(&self) -> u64 {
        self.old_version
    }

    /// The metadata this receiver showed before.
    pub fn old_meta(&self) -> &M {
        &self.old.meta
    }

    /// The version shown now.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The metadata shown now.
    pub fn meta(&self) -> &M {
        &self.new.meta
    }

    /// The presence at the version shown now.
    pub(crate) fn presence(&self) -> Presence<M> {
        Presence::new(self.id.clone(), self.version, self.new.clone())
    }

    /// The reference of the version shown before (Phoenix's
    /// `phx_ref_prev`).
    pub fn old_version_ref(&self) -> VersionRef {
        VersionRef::new(self.id.replica(), self.old_version)
    }

    /// The reference of the version shown now.
    pub fn version_ref(&self) -> VersionRef {
        VersionRef::new(self.id.replica(), self.version)
    }
}

/// The changes to one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDiff<M> {
    joins: SmallVec<[Presence<M>; 1]>,
    leaves: SmallVec<[Presence<M>; 1]>,
    updates: SmallVec<[Update<M>; 1]>,
}

impl<M> Default for TopicDiff<M> {
    fn default() -> Self {
        Self {
            joins: SmallVec::new(),
            leaves: SmallVec::new(),
            updates: SmallVec::new(),
        }
    }
}

impl<M> TopicDiff<M> {
    pub(crate) fn from_parts(
        joins: Vec<Presence<M>>,
        leaves: Vec<Presence<M>>,
        updates: Vec<Update<M>>,
    ) -> Self {
        Self {
            joins: joins.into(),
            leaves: leaves.into(),
            updates: updates.into(),
        }
    }

    /// Presences that appeared.
    pub fn joins(&self) -> &[Presence<M>] {
        &self.joins
    }

    /// Presences that disappeared.
    pub fn leaves(&self) -> &[Presence<M>] {
        &self.leaves
    }

    /// Presences whose metadata changed.
    pub fn updates(&self) -> &[Update<M>] {
        &self.updates
    }

    /// Whether nothing changed on the topic.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty() && self.updates.is_empty()
    }
}

/// What one operation changed in the visible lists, per topic.
///
/// Replaying the diffs of every operation, in order, on an empty list gives
/// exactly the state's current list: no join is missed and none is invented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff<M> {
    /// Sorted by topic, each topic once. Most diffs touch one topic: it is
    /// kept inline.
    topics: SmallVec<[(Topic, TopicDiff<M>); 1]>,
    undecodable: u64,
    refused: u64,
}

impl<M> Default for Diff<M> {
    fn default() -> Self {
        Self {
            topics: SmallVec::new(),
            undecodable: 0,
            refused: 0,
        }
    }
}

impl<M> Diff<M> {
    /// The diff of one join.
    pub(crate) fn one_join(topic: Topic, presence: Presence<M>) -> Self {
        Self {
            topics: SmallVec::from_buf([(
                topic,
                TopicDiff {
                    joins: SmallVec::from_buf([presence]),
                    leaves: SmallVec::new(),
                    updates: SmallVec::new(),
                },
            )]),
            undecodable: 0,
            refused: 0,
        }
    }

    /// Whether the operation changed nothing visible.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The topics that changed, in order, with their changes.
    pub fn iter(&self) -> impl Iterator<Item = (&Topic, &TopicDiff<M>)> {
        self.topics.iter().map(|(t, d)| (t, d))
    }

    /// The changes to one topic, if it changed.
    pub fn topic(&self, topic: &str) -> Option<&TopicDiff<M>> {
        self.topics
            .binary_search_by(|(t, _)| t.as_str().cmp(topic))
            .ok()
            .map(|i| &self.topics[i].1)
    }

    /// Every join, with its topic.
    pub fn joins(&self) -> impl Iterator<Item = (&Topic, &Presence<M>)> {
        self.iter()
            .flat_map(|(t, d)| d.joins.iter().map(move |p| (t, p)))
    }

    /// Every leave, with its topic.
    pub fn leaves(&self) -> impl Iterator<Item = (&Topic, &Presence<M>)> {
        self.iter()
            .flat_map(|(t, d)| d.leaves.iter().map(move |p| (t, p)))
    }

    /// Every update, with its topic.
    pub fn updates(&self) -> impl Iterator<Item = (&Topic, &Update<M>)> {
        self.iter()
            .flat_map(|(t, d)| d.updates.iter().map(move |u| (t, u)))
    }

    /// How many received entries carried a meta this build cannot decode.
    /// Their dots still advanced the context, so they are never asked for
    /// again.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// How many received entries broke this state's topic or key length
    /// limits (a peer with larger limits sent them). They are not held;
    /// their dots still advanced the context, so they are never asked for
    /// again, and the rest of the merge went through.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The per-topic changes, by value, sorted by topic.
    pub fn into_topics(self) -> impl Iterator<Item = (Topic, TopicDiff<M>)> {
        self.topics.into_iter()
    }
}

/// Past this many topics a diff under construction indexes them by hash
/// rather than by a scan.
const SCANNED_TOPICS: usize = 8;

/// Collects a diff while an operation runs. Topics are told apart by the
/// address of their shared text, which is cheaper than the text; two clones
/// of one name from different allocations are joined at the end.
pub(crate) struct DiffBuilder<M> {
    /// The diff under construction; finished in place, so that the whole
    /// of it moves once.
    pub(super) diff: Diff<M>,
    index: Option<HashMap<usize, usize>>,
}

impl<M> DiffBuilder<M> {
    pub(crate) fn new() -> Self {
        Self {
            diff: Diff::default(),
            index: None,
        }
    }

    /// The place of `topic` in the diff, for [`DiffBuilder::join_at`].
    pub(crate) fn place(&mut self, topic: &Topic) -> usize {
        let identity = topic.identity();
        let found = match &self.index {
            Some(index) => index.get(&identity).copied(),
            None => self
                .diff
                .topics
                .iter()
                .position(|(t, _)| t.identity() == identity),
        };
        if let Some(i) = found {
            return i;
        }
        // The clone keeps the address from being reused meanwhile.
        let topics = &mut self.diff.topics;
        topics.push((topic.clone(), TopicDiff::default()));
        let i = topics.len() - 1;
        if let Some(index) = &mut self.index {
            index.insert(identity, i);
        } else if topics.len() > SCANNED_TOPICS {
            let index = topics
                .iter()
                .enumerate()
                .map(|(i, (t, _))| (t.identity(), i))
                .collect();
            self.index = Some(index);
        }
        i
    }

    fn topic(&mut self, topic: &Topic) -> &mut TopicDiff<M> {
        let i = self.place(topic);
        &mut self.diff.topics[i].1
    }

    /// Reserves room for `additional` more joins at `place`.
    pub(crate) fn reserve_joins(&mut self, place: usize, additional: usize) {
        self.diff.topics[place].1.joins.reserve(additional);
    }

    /// Adds a join to the topic at `place`, from [`DiffBuilder::place`].
    pub(crate) fn join_at(&mut self, place: usize, presence: Presence<M>) {
        self.diff.topics[place].1.joins.push(presence);
    }

    pub(crate) fn join(&mut self, topic: &Topic, presence: Presence<M>) {
        self.topic(topic).joins.push(presence);
    }

    pub(crate) fn leave(&mut self, topic: &Topic, presence: Presence<M>) {
        self.topic(topic).leaves.push(presence);
    }

    pub(crate) fn update(&mut self, topic: &Topic, update: Update<M>) {
        self.topic(topic).updates.push(update);
    }

    pub(crate) fn count_undecodable(&mut self, n: u64) {
        self.diff.undecodable += n;
    }

    pub(crate) fn count_refused(&mut self, n: u64) {
        self.diff.refused += n;
    }

    pub(crate) fn finish(mut self) -> Diff<M> {
        self.tidy();
        self.diff
    }

    /// Finishes the diff in place: drops the topics left empty, sorts the
    /// rest and joins the clones of one name. The caller then takes
    /// `diff`, which moves it once where [`DiffBuilder::finish`] moves it
    /// twice.
    pub(crate) fn tidy(&mut self) {
        let topics = &mut self.diff.topics;
        if topics.len() == 1 {
            // Most diffs: one topic, nothing to sort or join.
            if topics[0].1.is_empty() {
                topics.clear();
            }
            return;
        }
        topics.retain(|(_, diff)| !diff.is_empty());
        topics.sort_by(|a, b| a.0.cmp(&b.0));
        if topics.windows(2).any(|w| w[0].0 == w[1].0) {
            let mut joined: SmallVec<[(Topic, TopicDiff<M>); 1]> = SmallVec::new();
            for (topic, diff) in topics.drain(..) {
                match joined.last_mut() {
                    Some((last, held)) if *last == topic => {
                        held.joins.extend(diff.joins);
                        held.leaves.extend(diff.leaves);
                        held.updates.extend(diff.updates);
                    }
                    _ => joined.push((topic, diff)),
                }
            }
            *topics = joined;
        }
    }
}
