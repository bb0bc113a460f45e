#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms)]
//! Presence replication for Rust clusters.
//!
//! Every node holds a [`State`]: who is present on which topic, with what
//! metadata, across the whole cluster. A node changes only its own
//! presences ([`State::track`], [`State::update`], [`State::untrack`]); each
//! change returns a [`Delta`] to send to peers as bytes ([`wire`]), and
//! peers [`State::merge`] it. Merges are commutative, associative and
//! idempotent, so deltas may arrive in any order, any number of times, and
//! every node ends with the same lists. Each merge returns a [`Diff`] of the
//! joins, leaves and updates it caused.
//!
//! ```
//! use attendance::{Incarnation, ReplicaId, ReplicaName, State, wire};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // A replica is a node name plus an incarnation (start time in ms, random nonce).
//!     let started = Incarnation::new(1_764_000_000_000, 0x5eed);
//!     let mut a: State<String> = State::new(ReplicaId::new(ReplicaName::new("a")?, started));
//!     let mut b: State<String> = State::new(ReplicaId::new(ReplicaName::new("b")?, started));
//!
//!     // Replica a tracks alice on a topic; the change holds a delta for peers.
//!     let (alice, change) = a.track("room:lobby", "alice", "web".to_string())?;
//!     let bytes = wire::encode(change.delta())?;
//!
//!     // Replica b merges the bytes; the diff reports one join.
//!     let diff = b.merge(wire::decode(&bytes)?)?;
//!     assert_eq!(diff.joins().count(), 1);
//!     // Merging the same bytes again changes nothing.
//!     assert!(b.merge(wire::decode(&bytes)?)?.is_empty());
//!
//!     // Lists group presences by key (one key may hold several: two tabs).
//!     let lobby = b.list("room:lobby");
//!     assert_eq!(lobby[0].key.as_str(), "alice");
//!     assert_eq!(lobby[0].presences[0].meta, "web");
//!
//!     // Updates (and untracks) are deltas too; the diff names the old version.
//!     let change = a.update(&alice, "mobile".to_string())?;
//!     let diff = b.merge(change.into_delta())?;
//!     let (_, update) = diff.updates().next().ok_or("no update")?;
//!     assert_eq!(update.old_meta(), "web");
//!     assert_eq!(update.meta(), "mobile");
//!     assert_eq!(a.list("room:lobby"), b.list("room:lobby"));
//!     Ok(())
//! }
//! ```

pub mod protocol;
#[cfg(feature = "runtime")]
pub mod runtime;
mod state;
#[cfg(feature = "runtime")]
pub mod transport;
pub mod wire;

pub use state::{
    Change, CounterSet, Delta, Diff, Dot, Incarnation, Key, KeyPresences, Limits,
    MAX_REPLICA_NAME_LEN, Meta, Presence, PresenceId, PresenceRef, PurgeReason, PurgeRecord,
    Reincarnation, ReplicaId, ReplicaInfo, ReplicaName, State, StateBuilder, StateError, Topic,
    TopicDiff, Update,
};

#[cfg(feature = "runtime")]
pub use runtime::{
    KeyGroup, PresenceGuard, StartError, Subscription, SubscriptionEvent, Tracker, TrackerBuilder,
    TrackerMetrics,
};
