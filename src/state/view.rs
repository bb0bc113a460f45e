//! What queries return: presences and their groups by key, borrowed from a
//! [`State`](super::State) or owned.

#[cfg(doc)]
use super::State;
use super::{Key, Presence, PresenceId};

/// A visible presence as [`State::list`] returns it, borrowed from the
/// state. [`Presence`] is the owned form, which also knows its key.
#[derive(Debug, PartialEq, Eq)]
pub struct PresenceRef<'a, M> {
    /// Its stable id.
    pub id: PresenceId,
    /// The counter of its current version.
    pub version: u64,
    /// Its metadata.
    pub meta: &'a M,
}

/// The presences of one key, as [`State::list`] groups them, borrowed from
/// the state. [`KeyGroup`] is the owned form.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyGroupRef<'a, M> {
    /// The key.
    pub key: &'a Key,
    /// Its presences, ordered by id.
    pub presences: Vec<PresenceRef<'a, M>>,
}

/// The presences of one key on a topic, owned: what the `Tracker`'s lists
/// and subscriptions hold. [`KeyGroupRef`] is the borrowed form.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyGroup<M> {
    /// The key.
    pub key: Key,
    /// Its presences, in id order.
    pub presences: Vec<Presence<M>>,
}

/// Groups presences sorted by key.
#[cfg(feature = "runtime")]
pub(crate) fn group_by_key<M>(presences: Vec<Presence<M>>) -> Vec<KeyGroup<M>> {
    let mut groups: Vec<KeyGroup<M>> = Vec::new();
    for p in presences {
        match groups.last_mut() {
            Some(g) if &g.key == p.key() => g.presences.push(p),
            _ => groups.push(KeyGroup {
                key: p.key().clone(),
                presences: vec![p],
            }),
        }
    }
    groups
}
