//! Key-level events: a key's first presence joining a topic and its last
//! one leaving, told from the presence-level diffs a subscriber reads.
//!
//! Counted on the subscriber's side, from the list and diffs it was given:
//! the events agree with what that subscriber shows, and the tracker's
//! locks do no extra work for subscribers that do not ask for them.

use hashbrown::HashMap;

use crate::{Key, KeyGroup, TopicDiff};

/// A key that came or went on a topic.
pub(crate) enum KeyChange {
    Joined(Key),
    Left(Key),
}

/// How many presences each key shows on one topic.
#[derive(Default)]
pub(crate) struct KeyCounts {
    counts: HashMap<Key, usize>,
}

impl KeyCounts {
    pub(crate) fn new<M>(list: &[KeyGroup<M>]) -> Self {
        let mut counts = Self::default();
        counts.reset(list, &mut |_| {});
        counts
    }

    /// Applies a diff; `out` gets the keys it made appear or vanish.
    pub(crate) fn apply<M>(&mut self, diff: &TopicDiff<M>, out: &mut impl FnMut(KeyChange)) {
        // A key may leave and join in one diff (one tab closed, another
        // opened): only its count before and after tell.
        let mut before: Vec<(Key, usize)> = Vec::new();
        let mut touch = |counts: &mut HashMap<Key, usize>, key: &Key| {
            if !before.iter().any(|(k, _)| k == key) {
                before.push((key.clone(), counts.get(key).copied().unwrap_or(0)));
            }
        };
        for p in diff.joins() {
            touch(&mut self.counts, p.key());
            *self.counts.entry(p.key().clone()).or_default() += 1;
        }
        for p in diff.leaves() {
            touch(&mut self.counts, p.key());
            if let Some(n) = self.counts.get_mut(p.key()) {
                *n = n.saturating_sub(1);
            }
        }
        for (key, was) in before {
            let now = self.counts.get(&key).copied().unwrap_or(0);
            if now == 0 {
                self.counts.remove(&key);
            }
            match (was, now) {
                (0, n) if n > 0 => out(KeyChange::Joined(key)),
                (w, 0) if w > 0 => out(KeyChange::Left(key)),
                _ => {}
            }
        }
    }

    /// Replaces the counts with a fresh list; `out` gets the keys that
    /// appeared or vanished since the counts before.
    pub(crate) fn reset<M>(&mut self, list: &[KeyGroup<M>], out: &mut impl FnMut(KeyChange)) {
        let mut fresh: HashMap<Key, usize> = HashMap::with_capacity(list.len());
        for group in list.iter().filter(|g| !g.presences.is_empty()) {
            fresh.insert(group.key.clone(), group.presences.len());
        }
        for key in self.counts.keys().filter(|k| !fresh.contains_key(*k)) {
            out(KeyChange::Left(key.clone()));
        }
        for key in fresh.keys().filter(|k| !self.counts.contains_key(*k)) {
            out(KeyChange::Joined(key.clone()));
        }
        self.counts = fresh;
    }
}
