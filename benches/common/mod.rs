//! The workload shared by the benchmarks (`merge`, `footprint`, `runtime`,
//! `tracker_footprint`).
//!
//! Its shape is compared across versions, so change it only on purpose:
//! topics `room:1`..`room:100`, keys `user:{i}`, a small meta, one remote
//! replica with a real incarnation whose counters start above 2^32, and a
//! local replica that holds the remote's presences.

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use attendance::protocol::Config;
use attendance::transport::MemoryNetwork;
use attendance::{Delta, Incarnation, Limits, PresenceId, ReplicaId, ReplicaName, State, Tracker};
use crdts::{CmRDT, Orswot};
use serde::{Deserialize, Serialize};

/// The presence metadata: when the user came online and from what.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meta {
    pub online_at: u64,
    pub device: String,
}

/// The first counter of the remote replica: a long-lived node whose counters
/// no longer fit in 32 bits.
pub const REMOTE_FIRST_COUNTER: u64 = (1 << 32) + 1;

const DEVICES: [&str; 3] = ["web", "ios", "android"];

pub fn remote_id() -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new("node-remote").unwrap(),
        Incarnation::new(1_764_000_000_000, 0x5eed_1234),
    )
}

pub fn local_id() -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new("node-local").unwrap(),
        Incarnation::new(1_764_000_000_500, 0x10ca_1234),
    )
}

/// Default limits with room for the largest workload.
pub fn limits() -> Limits {
    Limits::default().max_presences_per_replica(2_000_000)
}

pub fn topic(i: u64) -> String {
    format!("room:{}", i % 100 + 1)
}

pub fn key(i: u64) -> String {
    format!("user:{i}")
}

pub fn meta(i: u64) -> Meta {
    Meta {
        online_at: 1_764_000_000_000 + i,
        device: DEVICES[(i % 3) as usize].to_string(),
    }
}

/// The `crdts` member for user `i`: the same `(topic, key, meta)` values.
pub type Member = (String, String, Meta);

pub fn member(i: u64) -> Member {
    (topic(i), key(i), meta(i))
}

pub type OrSet = Orswot<Member, ReplicaId>;

#[path = "../../examples/support/rng.rs"]
mod rng;
pub use rng::Rng;

/// A fresh remote state with the workload's identity, counters and limits.
pub fn new_remote() -> State<Meta> {
    State::builder(remote_id())
        .first_counter(REMOTE_FIRST_COUNTER)
        .limits(limits())
        .build()
}

/// A fresh, empty local (observer) state.
pub fn new_local() -> State<Meta> {
    State::builder(local_id()).limits(limits()).build()
}

/// The remote replica, tracking and untracking its own presences.
pub struct Remote {
    pub state: State<Meta>,
    /// The ids of the presences it holds, in no particular order.
    pub held: Vec<PresenceId>,
    /// The user index of the next join.
    pub next: u64,
    pub rng: Rng,
}

impl Remote {
    /// A remote holding `s` presences, users `0..s`.
    pub fn new(s: usize) -> Self {
        let mut remote = Self {
            state: new_remote(),
            held: Vec::with_capacity(s),
            next: 0,
            rng: Rng::new(0x5eed_0000 ^ s as u64),
        };
        for _ in 0..s {
            drop(remote.join());
        }
        remote
    }

    /// Tracks a new presence (the next user) and returns the delta.
    pub fn join(&mut self) -> Delta<Meta> {
        let i = self.next;
        self.next += 1;
        let (id, change) = self.state.track(&topic(i), &key(i), meta(i)).unwrap();
        assert!(!change.diff().is_empty());
        self.held.push(id);
        change.into_delta()
    }

    /// Untracks a random held presence and returns the delta.
    pub fn leave(&mut self) -> Delta<Meta> {
        let index = self.rng.index(self.held.len());
        let id = self.held.swap_remove(index);
        let change = self.state.untrack(&id).unwrap();
        assert_eq!(change.diff().leaves().count(), 1);
        change.into_delta()
    }
}

/// A remote replica and a local one that holds all of its presences.
pub struct Pair {
    pub remote: Remote,
    pub local: State<Meta>,
}

impl Pair {
    /// `s` presences tracked on the remote, then merged into the local as one
    /// snapshot.
    pub fn new(s: usize) -> Self {
        let remote = Remote::new(s);
        let mut local = new_local();
        let diff = local.merge(remote.state.snapshot()).unwrap();
        assert_eq!(diff.joins().count(), s);
        drop(diff);
        assert_eq!(local.len(), s);
        Self { remote, local }
    }

    /// One join on the remote, merged into the local.
    pub fn join(&mut self) {
        let delta = self.remote.join();
        let diff = self.local.merge(delta).unwrap();
        assert_eq!(diff.joins().count(), 1);
    }

    /// One leave of a random held presence on the remote, merged into the
    /// local.
    pub fn leave(&mut self) {
        let delta = self.remote.leave();
        let diff = self.local.merge(delta).unwrap();
        assert_eq!(diff.leaves().count(), 1);
    }

    /// `n` leaves of random held presences, then `n` new joins, each merged
    /// into the local as its own delta. Needs `n <= held`.
    pub fn churn(&mut self, n: usize) {
        assert!(n <= self.remote.held.len());
        for _ in 0..n {
            self.leave();
        }
        for _ in 0..n {
            self.join();
        }
    }

    /// `n` rounds of one leave and one join: enough rounds (the removal log
    /// length) put both replicas in their steady state, removal logs full.
    pub fn churn_interleaved(&mut self, n: usize) {
        for _ in 0..n {
            self.leave();
            self.join();
        }
    }
}

/// The `crdts` counterpart of [`Remote`]: an `Orswot` that one actor (the
/// remote replica) adds to and removes from.
pub struct OrRemote {
    pub set: OrSet,
    pub actor: ReplicaId,
    /// The members it holds, in no particular order.
    pub held: Vec<Member>,
    pub next: u64,
    pub rng: Rng,
}

impl OrRemote {
    /// A set holding `s` members, users `0..s`.
    pub fn new(s: usize) -> Self {
        let actor = remote_id();
        let mut set = OrSet::new();
        // Start the actor's counter above 2^32 too.
        set.apply(crdts::orswot::Op::Add {
            dot: crdts::Dot::new(actor.clone(), REMOTE_FIRST_COUNTER - 1),
            members: Vec::new(),
        });
        let mut remote = Self {
            set,
            actor,
            held: Vec::with_capacity(s),
            next: 0,
            rng: Rng::new(0x5eed_0000 ^ s as u64),
        };
        for _ in 0..s {
            drop(remote.add());
        }
        remote
    }

    /// Adds a new member (the next user) and returns the op.
    pub fn add(&mut self) -> crdts::orswot::Op<Member, ReplicaId> {
        let m = member(self.next);
        self.next += 1;
        let add_ctx = self.set.read_ctx().derive_add_ctx(self.actor.clone());
        let op = self.set.add(m.clone(), add_ctx);
        self.set.apply(op.clone());
        self.held.push(m);
        op
    }

    /// Removes a random held member and returns the op with the member.
    pub fn rm(&mut self) -> (crdts::orswot::Op<Member, ReplicaId>, Member) {
        let index = self.rng.index(self.held.len());
        let m = self.held.swap_remove(index);
        let rm_ctx = self.set.contains(&m).derive_rm_ctx();
        let op = self.set.rm(m.clone(), rm_ctx);
        self.set.apply(op.clone());
        (op, m)
    }
}

/// An [`OrRemote`] and a local `Orswot` that has applied all of its ops.
pub struct OrPair {
    pub remote: OrRemote,
    pub local: OrSet,
}

impl OrPair {
    pub fn new(s: usize) -> Self {
        let remote = OrRemote::new(s);
        let local = remote.set.clone();
        Self { remote, local }
    }

    /// One add on the remote, applied to the local.
    pub fn add(&mut self) {
        let op = self.remote.add();
        self.local.apply(op);
    }

    /// One removal of a random held member on the remote, applied to the
    /// local.
    pub fn rm(&mut self) {
        let (op, m) = self.remote.rm();
        self.local.apply(op);
        debug_assert!(!self.local.contains(&m).val);
    }
}

/// The protocol settings of the benches of the public API: a 100 ms
/// broadcast period.
pub fn tracker_config() -> Config {
    Config::with_broadcast_period(Duration::from_millis(100))
}

/// A tracker named `name` on `network`, with the workload's limits and
/// [`tracker_config`].
pub fn start_tracker(network: &MemoryNetwork, name: &str) -> Tracker<Meta> {
    Tracker::builder(name)
        .config(tracker_config())
        .limits(limits())
        .start_with(|id| network.join(id))
        .expect("starts")
}
