//! The names of things: replicas, incarnations, dots, presences, topics, keys.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StateError;

/// The longest replica name accepted, in bytes.
pub const MAX_REPLICA_NAME_LEN: usize = 255;

/// The name a user gives a node, such as `"eu-west-1a"` or `"node-3"`.
///
/// A name is stable across restarts; the [`Incarnation`] tells restarts apart.
/// It is non-empty and at most [`MAX_REPLICA_NAME_LEN`] bytes long.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReplicaName(Arc<str>);

impl PartialOrd for ReplicaName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

// Maps keyed by name mostly hold the very name looked up (a clone of one
// allocation): equal addresses are equal names, with no text to compare.
impl Ord for ReplicaName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_shared(&self.0, &other.0)
    }
}

/// Orders two shared values: the same allocation is equal without reading
/// it. Inlined into both `Ord`s: as a call it cost a merge some 30
/// instructions (`cargo bench --bench instructions`).
#[inline(always)]
fn cmp_shared<T: Ord + ?Sized>(a: &Arc<T>, b: &Arc<T>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        return std::cmp::Ordering::Equal;
    }
    a.cmp(b)
}

impl ReplicaName {
    /// Checks and wraps a name.
    ///
    /// ```
    /// use attendance::ReplicaName;
    /// assert!(ReplicaName::new("node-1").is_ok());
    /// assert!(ReplicaName::new("").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, StateError> {
        if name.is_empty() || name.len() > MAX_REPLICA_NAME_LEN {
            return Err(StateError::InvalidReplicaName { len: name.len() });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReplicaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ReplicaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One life of a named node: its start time and a random number, ordered in
/// that order.
///
/// A restarted node takes a new, greater incarnation, and every older
/// incarnation of its name is dead for good from then on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Incarnation {
    started_ms: u64,
    nonce: u32,
}

impl Incarnation {
    /// An incarnation from a start time in milliseconds since the Unix epoch
    /// and a random number that separates two starts in the same millisecond.
    pub const fn new(started_ms: u64, nonce: u32) -> Self {
        Self { started_ms, nonce }
    }

    /// The start time, in milliseconds since the Unix epoch.
    pub const fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The random part.
    pub const fn nonce(&self) -> u32 {
        self.nonce
    }
}

/// One running node: a [`ReplicaName`] and its [`Incarnation`].
///
/// Ordered by name, then incarnation, so all incarnations of one name sit
/// together, oldest first. Cloning is cheap: the id is shared, so that the
/// presence ids in guards and diffs stay small.
#[derive(Clone)]
pub struct ReplicaId(Arc<ReplicaIdParts>);

#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ReplicaIdParts {
    name: ReplicaName,
    incarnation: Incarnation,
}

impl ReplicaId {
    /// A replica from its name and incarnation.
    pub fn new(name: ReplicaName, incarnation: Incarnation) -> Self {
        Self(Arc::new(ReplicaIdParts { name, incarnation }))
    }

    /// The node's name.
    pub fn name(&self) -> &ReplicaName {
        &self.0.name
    }

    /// Which life of the node this is.
    pub fn incarnation(&self) -> Incarnation {
        self.0.incarnation
    }
}

impl PartialEq for ReplicaId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for ReplicaId {}

impl PartialOrd for ReplicaId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ReplicaId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_shared(&self.0, &other.0)
    }
}

impl std::hash::Hash for ReplicaId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}.{:08x}",
            self.0.name, self.0.incarnation.started_ms, self.0.incarnation.nonce
        )
    }
}

// A replica id travels as the flat tuple `(name, started_ms, nonce)`.
impl Serialize for ReplicaId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            self.0.name.as_str(),
            self.0.incarnation.started_ms,
            self.0.incarnation.nonce,
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (name, started_ms, nonce) = <(String, u64, u32)>::deserialize(deserializer)?;
        let name = ReplicaName::new(&name).map_err(serde::de::Error::custom)?;
        Ok(Self::new(name, Incarnation::new(started_ms, nonce)))
    }
}

/// One event of one replica: the replica and the value its counter took.
///
/// Every mutation a replica makes (track, update, untrack) takes the next
/// value of its counter, so a dot names one event and one version of a
/// presence.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Dot {
    replica: ReplicaId,
    counter: u64,
}

impl Dot {
    /// The dot `(replica, counter)`.
    pub fn new(replica: ReplicaId, counter: u64) -> Self {
        Self { replica, counter }
    }

    /// The replica that made the event.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// The counter value the event took.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.replica, self.counter)
    }
}

/// The stable identity of one presence: the dot of the track that created it.
///
/// Updates give the presence new versions (new dots) but never a new id, so
/// two tabs of one user on one topic are two presences with two ids.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PresenceId(Dot);

impl PresenceId {
    pub(crate) fn new(replica: ReplicaId, counter: u64) -> Self {
        Self(Dot::new(replica, counter))
    }

    /// The dot of the track that created the presence.
    pub fn as_dot(&self) -> &Dot {
        &self.0
    }

    /// The replica that owns the presence; only it may update or untrack it.
    pub fn replica(&self) -> &ReplicaId {
        self.0.replica()
    }
}

impl fmt::Display for PresenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($inner);

        impl $name {
            /// The text as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(<$inner>::from(text))
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(<$inner>::from(text))
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
            }
        }
    };
}

text_newtype! {
    /// What presences are grouped under: a room, a document, a channel.
    ///
    /// Topics are few and repeated in every presence, so a topic is a shared
    /// reference-counted string: cloning one is cheap.
    Topic(Arc<str>)
}

text_newtype! {
    /// Who is present on a topic: a user id, a device id.
    ///
    /// One key may hold several presences (two tabs of one user). Keys of up
    /// to 24 bytes are stored inline, without an allocation of their own.
    Key(CompactString)
}

impl Topic {
    /// The address of the shared text: equal for clones of one topic, so it
    /// keys a map more cheaply than the text does.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.0).cast::<u8>() as usize
    }
}
