#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms)]
//! Presence replication for Rust clusters.

pub mod state;
pub mod wire;

pub use state::{
    Change, CounterSet, Delta, Diff, Dot, Incarnation, Key, KeyPresences, Limits, Meta, Presence,
    PresenceId, PresenceRef, PurgeReason, PurgeRecord, Reincarnation, ReplicaId, ReplicaInfo,
    ReplicaName, State, StateBuilder, StateError, Topic, TopicDiff, Update,
};
