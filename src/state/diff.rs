//! What a merge or a mutation changed in the visible lists.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use super::{Key, PresenceId, Topic};

/// One presence as a diff reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Presence<M> {
    /// The key it is present under.
    pub key: Key,
    /// Its stable id.
    pub id: PresenceId,
    /// The counter of the version shown (the dot of its latest track or
    /// update).
    pub version: u64,
    /// Its metadata at that version.
    pub meta: M,
}

/// A presence whose metadata changed.
///
/// `old_version` and `old_meta` are what this receiver showed before, even
/// when intermediate versions were never seen here.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Update<M> {
    /// The key it is present under.
    pub key: Key,
    /// Its stable id.
    pub id: PresenceId,
    /// The version this receiver showed before.
    pub old_version: u64,
    /// The metadata this receiver showed before.
    pub old_meta: M,
    /// The version shown now.
    pub version: u64,
    /// The metadata shown now.
    pub meta: M,
}

/// The changes to one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicDiff<M> {
    /// Presences that appeared.
    pub joins: Vec<Presence<M>>,
    /// Presences that disappeared.
    pub leaves: Vec<Presence<M>>,
    /// Presences whose metadata changed.
    pub updates: Vec<Update<M>>,
}

impl<M> Default for TopicDiff<M> {
    fn default() -> Self {
        Self {
            joins: Vec::new(),
            leaves: Vec::new(),
            updates: Vec::new(),
        }
    }
}

impl<M> TopicDiff<M> {
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
    topics: BTreeMap<Topic, TopicDiff<M>>,
    undecodable: u64,
}

impl<M> Default for Diff<M> {
    fn default() -> Self {
        Self {
            topics: BTreeMap::new(),
            undecodable: 0,
        }
    }
}

impl<M> Diff<M> {
    /// Whether the operation changed nothing visible.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The topics that changed, in order, with their changes.
    pub fn iter(&self) -> impl Iterator<Item = (&Topic, &TopicDiff<M>)> {
        self.topics.iter()
    }

    /// The changes to one topic, if it changed.
    pub fn topic(&self, topic: &str) -> Option<&TopicDiff<M>> {
        self.topics.get(topic)
    }

    /// Every join, with its topic.
    pub fn joins(&self) -> impl Iterator<Item = (&Topic, &Presence<M>)> {
        self.topics
            .iter()
            .flat_map(|(t, d)| d.joins.iter().map(move |p| (t, p)))
    }

    /// Every leave, with its topic.
    pub fn leaves(&self) -> impl Iterator<Item = (&Topic, &Presence<M>)> {
        self.topics
            .iter()
            .flat_map(|(t, d)| d.leaves.iter().map(move |p| (t, p)))
    }

    /// Every update, with its topic.
    pub fn updates(&self) -> impl Iterator<Item = (&Topic, &Update<M>)> {
        self.topics
            .iter()
            .flat_map(|(t, d)| d.updates.iter().map(move |u| (t, u)))
    }

    /// How many received entries carried a meta this build cannot decode.
    /// Their dots still advanced the context, so they are never asked for
    /// again.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// The per-topic changes, by value.
    pub fn into_topics(self) -> BTreeMap<Topic, TopicDiff<M>> {
        self.topics
    }
}

/// Collects a diff while an operation runs, hashing topics rather than
/// walking the ordered map for every entry.
pub(crate) struct DiffBuilder<M> {
    topics: HashMap<Topic, TopicDiff<M>>,
    undecodable: u64,
}

impl<M> DiffBuilder<M> {
    pub(crate) fn new() -> Self {
        Self {
            topics: HashMap::default(),
            undecodable: 0,
        }
    }

    fn topic(&mut self, topic: &Topic) -> &mut TopicDiff<M> {
        if !self.topics.contains_key(topic.as_str()) {
            self.topics.insert(topic.clone(), TopicDiff::default());
        }
        self.topics
            .get_mut(topic.as_str())
            .expect("inserted just above")
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
        self.undecodable += n;
    }

    pub(crate) fn finish(self) -> Diff<M> {
        Diff {
            topics: self.topics.into_iter().collect(),
            undecodable: self.undecodable,
        }
    }
}

impl<M> Presence<M> {
    pub(crate) fn new(key: Key, id: PresenceId, version: u64, meta: M) -> Self {
        Self {
            key,
            id,
            version,
            meta,
        }
    }
}
