#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]
//! Presence replication for Rust clusters: every node knows who is present
//! on which topic, with what metadata, across the whole cluster, with no
//! leader, lock or database.
//!
//! # A tracker
//!
//! A [`Tracker`] is one running replica. [`Tracker::track`] returns a
//! [`PresenceGuard`] (dropping it untracks, so a closed connection leaves by
//! itself); [`Tracker::list`] on the same replica shows the presence as soon
//! as `track` returns; [`Tracker::subscribe`] gives a topic's list and then
//! every change to it. Here two replicas share an in-memory network;
//! [`Tracker::builder`] with `listen`, `peer` and `secret` runs one over the
//! authenticated TCP mesh instead.
//!
//! ```
//! use attendance::transport::MemoryNetwork;
//! use attendance::{SubscriptionEvent, Tracker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let network = MemoryNetwork::new();
//! let a: Tracker<String> = Tracker::builder("a").start_with(|id| network.join(id))?;
//! let b: Tracker<String> = Tracker::builder("b").start_with(|id| network.join(id))?;
//!
//! let mut lobby = b.subscribe("room:lobby");
//! let alice = a.track("room:lobby", "alice", "web".to_string())?;
//! assert_eq!(a.count("room:lobby"), 1); // read-your-writes
//!
//! // b sees the join within a broadcast period or so.
//! if let Some(SubscriptionEvent::Diff(diff)) = lobby.next().await {
//!     assert_eq!(diff.joins()[0].key().as_str(), "alice");
//! }
//! drop(alice); // untracks, everywhere
//! a.shutdown().await;
//! b.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The protocol's periods and bounds are a [`protocol::Config`], the
//! state's size limits a [`Limits`]; both go to the [`TrackerBuilder`].
//!
//! # Feature flags
//!
//! | flag | default | what it brings |
//! |---|---|---|
//! | `runtime` | yes | the tokio [`Tracker`], its guards and subscriptions, and the [`transport`]s: in-memory and the authenticated TCP mesh |
//! | `tls` | no | TLS (rustls, `ring` provider) under the TCP mesh: `transport::tls` and `TrackerBuilder::tls` |
//! | `nats` | no | a NATS broker transport (`async-nats`): `transport::nats` and `TrackerBuilder::nats` |
//! | `metrics` | no | the tracker's counters published through the [`metrics`](https://docs.rs/metrics) facade once a broadcast period, for any recorder (Prometheus, StatsD, …); names in `docs/operations.md` |
//! | `crdts` | no | `crdts::CvRDT` and `crdts::CmRDT` for [`State`], to plug into code written against those traits |
//!
//! Without `runtime`, the crate is the state, protocol and wire layers
//! only, with no tokio.
//!
//! # Building your own runtime
//!
//! Underneath, every replica holds a [`State`]: an observed-remove set made
//! of one single-writer sub-state per replica. A replica changes only its
//! own presences ([`State::track`], [`State::update`], [`State::untrack`]);
//! each change returns a [`Delta`] to send to peers as bytes ([`wire`]), and
//! peers [`State::merge`] it. Merges are commutative, associative and
//! idempotent, so deltas may arrive in any order, any number of times, and
//! every replica ends with the same lists. Each merge returns a [`Diff`] of
//! the joins, leaves and updates it caused. [`protocol::Node`] runs the
//! replication protocol over a `State` as a state machine without I/O:
//! time and messages go in, messages to send and events come out.
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

#[cfg(feature = "runtime")]
mod log_budget;
pub mod protocol;
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub mod runtime;
mod state;
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub mod transport;
pub mod wire;

#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub use runtime::{
    Events, PresenceGuard, ReplicaEvent, StartError, Subscription, SubscriptionEvent, TopicCounts,
    TopicLists, TopicScope, Tracker, TrackerBuilder, TrackerError, TrackerEvent, TrackerMetrics,
};

pub use state::{
    Change, CounterSet, Delta, Diff, Dot, Incarnation, Key, KeyGroup, KeyGroupRef, Limits,
    MAX_COUNTER, MAX_REPLICA_NAME_LEN, Meta, ParseVersionRefError, Presence, PresenceId,
    PresenceRef, PurgeReason, PurgeRecord, Reincarnation, ReplicaId, ReplicaInfo, ReplicaName,
    State, StateBuilder, StateError, Topic, TopicDiff, Update, VersionRef,
};
