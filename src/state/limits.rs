//! Size limits and the state layer's error type.

use super::{Incarnation, PresenceId, ReplicaId};

/// Bounds on what one state accepts.
///
/// Topic and key lengths, presences per replica and replicas per state are
/// checked on local calls and on merges alike; the meta size is checked
/// where the meta is tracked (a peer's metas are bounded by the largest
/// message its decoder accepts).
///
/// Built from [`Limits::default`] and adjusted with its setters:
///
/// ```
/// use attendance::Limits;
/// let limits = Limits::default().max_key_len(64).max_presences_per_replica(50_000);
/// assert_eq!(limits.key_len(), 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    max_topic_len: usize,
    max_key_len: usize,
    max_meta_bytes: usize,
    max_presences_per_replica: usize,
    max_replicas: usize,
    removal_log_len: usize,
}

impl Default for Limits {
    /// Topics and keys up to 256 bytes, metas up to 4 KiB encoded, 1,000,000
    /// presences per replica, 4,096 replicas, and the last 4,096 removals of
    /// each replica kept for catch-ups.
    fn default() -> Self {
        Self {
            max_topic_len: 256,
            max_key_len: 256,
            max_meta_bytes: 4096,
            max_presences_per_replica: 1_000_000,
            max_replicas: 4096,
            removal_log_len: 4096,
        }
    }
}

macro_rules! limit {
    ($field:ident, $getter:ident, $doc:literal) => {
        #[doc = concat!("Sets the ", $doc, ".")]
        pub fn $field(mut self, value: usize) -> Self {
            self.$field = value;
            self
        }

        #[doc = concat!("The ", $doc, ".")]
        pub fn $getter(&self) -> usize {
            self.$field
        }
    };
}

impl Limits {
    limit!(max_topic_len, topic_len, "longest topic, in bytes");
    limit!(max_key_len, key_len, "longest key, in bytes");
    limit!(
        max_meta_bytes,
        meta_bytes,
        "largest meta, in MessagePack bytes (checked where the meta is tracked)"
    );
    limit!(
        max_presences_per_replica,
        presences_per_replica,
        "most presences one replica may hold"
    );
    limit!(max_replicas, replicas, "most replicas one state may hold");
    limit!(
        removal_log_len,
        removal_log,
        "number of recent removals kept per replica to serve catch-ups"
    );
}

/// Why the state refused an operation. The state is unchanged when one is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A replica name is empty or too long.
    #[error("replica name of {len} bytes is not between 1 and 255 bytes")]
    InvalidReplicaName {
        /// The length given.
        len: usize,
    },
    /// A topic is empty or longer than [`Limits::topic_len`].
    #[error("topic of {len} bytes is not between 1 and {max} bytes")]
    InvalidTopic {
        /// The length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key is empty or longer than [`Limits::key_len`].
    #[error("key of {len} bytes is not between 1 and {max} bytes")]
    InvalidKey {
        /// The length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A meta encodes to more than [`Limits::meta_bytes`].
    #[error("meta of {len} bytes exceeds the limit of {max} bytes")]
    MetaTooLarge {
        /// The encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A meta cannot be encoded as MessagePack.
    #[error("meta cannot be encoded: {0}")]
    MetaEncoding(String),
    /// The operation would leave a replica with more presences than allowed.
    #[error("replica {replica} would hold {count} presences, over the limit of {max}")]
    TooManyPresences {
        /// The replica.
        replica: ReplicaId,
        /// How many it would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The operation would make the state hold more replicas than allowed.
    #[error("the state would hold {count} replicas, over the limit of {max}")]
    TooManyReplicas {
        /// How many it would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// No presence of this replica has that id.
    #[error("no local presence {0}")]
    UnknownPresence(PresenceId),
    /// The new incarnation is not above the ones this replica has seen.
    #[error("incarnation {given:?} is not above {floor:?}")]
    StaleIncarnation {
        /// The incarnation given.
        given: Incarnation,
        /// The incarnation it must exceed.
        floor: Incarnation,
    },
    /// A replica cannot be re-admitted: it is not purged by a permdown, or it
    /// left or was replaced for good.
    #[error("replica {0} cannot be re-admitted")]
    NotReadmittable(ReplicaId),
    /// A re-admission did not carry the replica's whole sub-state up to the
    /// counter it was purged at.
    #[error("snapshot of {replica} is not a whole sub-state reaching counter {needed}")]
    IncompleteSnapshot {
        /// The replica.
        replica: ReplicaId,
        /// The counter the snapshot must reach.
        needed: u64,
    },
    /// Data about this replica itself arrived where only peers are expected.
    #[error("replica {0} is this replica")]
    OwnReplica(ReplicaId),
}
