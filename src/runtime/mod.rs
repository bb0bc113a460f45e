//! The tokio runtime: a [`Tracker`] drives one replica's protocol over a
//! transport, and is what applications hold.
//!
//! The replica's presences are split by topic into shards, each behind a
//! short lock of its own; one protocol node, behind another, keeps the
//! replica's liveness, heartbeats and catch-ups for all of them. Local
//! operations take their topic's shard lock, change it and return: once
//! [`Tracker::track`] returns, [`Tracker::list`] on that replica shows the
//! presence, and calls on topics of different shards never wait for each
//! other. A driver task sleeps until the protocol's next deadline or the
//! next transport event, feeds it to the protocol, and sends what the
//! protocol wants sent; what takes long (decoding large messages, merging
//! large catch-ups, building and encoding catch-up answers and broadcasts)
//! runs on tokio's blocking threads, outside every lock, and is swapped in
//! under the locks in bounded time. No lock is held across an `.await`.
//!
//! A [`TrackerBuilder`] takes the protocol's periods and bounds as a
//! [`Config`](crate::protocol::Config) and the state's size limits as
//! [`Limits`](crate::Limits); both have defaults.
//!
//! ```
//! use attendance::Tracker;
//! use attendance::transport::MemoryNetwork;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let network = MemoryNetwork::new();
//! let a: Tracker<String> = Tracker::builder("a").start_with(|id| network.join(id))?;
//! let b: Tracker<String> = Tracker::builder("b").start_with(|id| network.join(id))?;
//!
//! let mut lobby = b.subscribe("room:lobby");
//! let guard = a.track("room:lobby", "alice", "web".to_string())?;
//! assert_eq!(a.count("room:lobby"), 1); // read-your-writes
//!
//! // b hears of it within a broadcast period or so.
//! let event = lobby.next().await;
//! assert!(matches!(event, Some(attendance::SubscriptionEvent::Diff(_))));
//! assert_eq!(b.count("room:lobby"), 1);
//!
//! drop(guard); // untracks
//! a.shutdown().await;
//! b.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod builder;
mod driver;
mod events;
mod feed;
mod guard;
mod key_counts;
mod keys;
mod listing;
mod lock;
#[cfg(feature = "metrics")]
mod metrics_export;
mod shard;
mod slices;
mod store;
mod subscription;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use builder::{StartError, TrackerBuilder};
pub use events::{Events, ReplicaEvent, TopicLists, TopicScope, TrackerEvent};
pub use guard::PresenceGuard;
pub use subscription::{Subscription, SubscriptionEvent};

use crate::log_budget::LogBudget;
use crate::protocol::{Metrics, Node, ReplicaStatus};
use crate::transport::tcp::Keyring;
use crate::transport::{StatsReader, TransportError, TransportStats};
use crate::{KeyGroup, Meta, Presence, ReplicaId, StateError, Topic};
use lock::{LockStats, TimedGuard, TimedMutex};
use shard::{Common, Shard, shard_of};
use store::Store;

/// Why a tracker refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// The tracker was shut down (or its transport closed): nothing more
    /// is tracked or replicated.
    #[error("the tracker has stopped")]
    Stopped,
    /// A topic, key or meta over the limits, too many presences, or a
    /// presence that is no longer tracked.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A replica of the presence set, running. Cloning gives another handle to
/// the same replica.
///
/// Build one with [`Tracker::builder`]; see the [module docs](self) for an
/// example.
pub struct Tracker<M: Meta> {
    shared: Arc<Shared<M>>,
    commands: mpsc::Sender<Command>,
    local_addr: Option<SocketAddr>,
    keyring: Option<Keyring>,
}

impl<M: Meta> std::fmt::Debug for Tracker<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("id", self.shared.lock().node.id())
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<M: Meta> Clone for Tracker<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            commands: self.commands.clone(),
            local_addr: self.local_addr,
            keyring: self.keyring.clone(),
        }
    }
}

/// What the driver task is asked to do.
pub(crate) enum Command {
    AddPeer(SocketAddr, oneshot::Sender<Result<(), TransportError>>),
    Shutdown(oneshot::Sender<()>),
}

/// A topic and its counts, as [`Tracker::topics`] lists them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TopicCounts {
    /// The topic.
    pub topic: Topic,
    /// Its visible presences.
    pub presences: usize,
    /// The keys those presences are under.
    pub keys: usize,
}

/// Counters of a running tracker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TrackerMetrics {
    /// The protocol's traffic counters.
    pub protocol: Metrics,
    /// Other replicas listed (up), and known but not listed.
    pub replicas_up: usize,
    /// Other replicas known but not listed: joining, down or purged.
    pub replicas_not_up: usize,
    /// Other replicas known, by status: `joining`, `up`, `down`, `purged`
    /// (every status present, zero or not).
    pub replicas_by_status: BTreeMap<&'static str, usize>,
    /// Subscribers that fell more than the subscriber queue behind and got
    /// [`SubscriptionEvent::Resync`] instead of the diffs they missed.
    pub subscriber_resyncs: u64,
    /// Transport links up.
    pub peers_connected: usize,
    /// Visible presences per topic.
    pub presences: BTreeMap<String, usize>,
    /// The transport's own counters, when it keeps any (the TCP mesh does:
    /// [`TransportStats::Tcp`]; so does NATS, under the `nats` feature).
    pub transport: Option<TransportStats>,
    /// The longest any of the tracker's locks was held since it started
    /// (or since [`Tracker::reset_longest_lock_hold`]): the longest any
    /// call could have waited for one.
    pub longest_lock_hold: Duration,
    /// How many holds of the tracker's locks lasted longer than a
    /// millisecond, over the same time.
    pub lock_holds_over_1ms: u64,
    /// Which lock was held longest: `node` (the protocol's), `shard` (a
    /// topic shard's), `feed` (a topic's diffs) or `renamed`.
    pub longest_held_lock: &'static str,
}

impl<M: Meta + Send + Sync + 'static> Tracker<M> {
    /// A builder for a replica named `name` (unique in the cluster).
    pub fn builder(name: &str) -> TrackerBuilder<M> {
        TrackerBuilder::new(name)
    }

    /// This replica, at its current incarnation: it moves to a newer one
    /// when it meets a newer incarnation of its own name (its clock went
    /// backwards, or it restarted within the same millisecond).
    pub fn id(&self) -> ReplicaId {
        self.shared.lock().node.id().clone()
    }

    /// The address the TCP transport listens on, when it is the transport.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The cluster secrets of the TCP mesh, when it is the transport:
    /// install, use and remove secrets here while the tracker runs.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Tracks a presence of this replica. Dropping the guard untracks it.
    ///
    /// # Errors
    ///
    /// [`TrackerError::State`] for a topic, key or meta over the limits,
    /// or too many presences; [`TrackerError::Stopped`] after
    /// [`Tracker::shutdown`].
    pub fn track(&self, topic: &str, key: &str, meta: M) -> Result<PresenceGuard<M>, TrackerError> {
        let shard = self.shared.shard(topic);
        let id = shard.track(topic, key, meta)?;
        Ok(PresenceGuard::new(shard.clone(), id))
    }

    /// The visible presences on `topic`, grouped by key in key order.
    pub fn list(&self, topic: &str) -> Vec<KeyGroup<M>> {
        let (presences, _) = self.shared.shard(topic).snapshot(topic, false);
        subscription::sorted(presences)
    }

    /// The visible presences under `key` on `topic`, in id order.
    pub fn get(&self, topic: &str, key: &str) -> Vec<Presence<M>> {
        let mut found = self.shared.shard(topic).get(topic, key);
        found.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        found
    }

    /// Untracks every presence this replica holds under `key` on `topic`
    /// (all tabs of one user, say), each as if its guard were dropped;
    /// returns how many there were. Their guards stay valid: dropping them
    /// later does nothing, and updating them fails with
    /// [`StateError::UnknownPresence`].
    pub fn untrack_key(&self, topic: &str, key: &str) -> usize {
        self.shared.shard(topic).untrack_key(topic, key)
    }

    /// Every topic with a visible presence, in topic order, with how many
    /// presences and how many keys (users, say) it has.
    ///
    /// O(replicas shown) per topic: the key count is read in O(1), and the
    /// presence count sums the states of the topic's shard. Each topic is
    /// counted at one instant; different topics at different ones.
    ///
    /// One key's presences may be held by several replicas, so key counts
    /// are kept per topic as presences come and go: a hash update per
    /// change (a few hundred nanoseconds at a million presences). They are
    /// kept only from the first call of `topics()` on, which builds them
    /// from the presences held (about 160 ms for 1,000,000), reading a
    /// slice at a time so that no call on the tracker waits for it more
    /// than a fraction of a millisecond.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use attendance::Tracker;
    /// use attendance::transport::MemoryNetwork;
    ///
    /// let network = MemoryNetwork::new();
    /// let tracker: Tracker<String> = Tracker::builder("a").start_with(|id| network.join(id))?;
    /// let _laptop = tracker.track("doc:1", "alice", "laptop".into())?;
    /// let _phone = tracker.track("doc:1", "alice", "phone".into())?;
    /// let _bob = tracker.track("doc:1", "bob", "web".into())?;
    /// let doc = &tracker.topics()[0];
    /// assert_eq!((doc.topic.as_str(), doc.presences, doc.keys), ("doc:1", 3, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn topics(&self) -> Vec<TopicCounts> {
        let mut out = Vec::new();
        for shard in self.shared.shards.iter() {
            shard.add_topics(&mut out);
        }
        out.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// How many visible presences `topic` has: O(replicas shown).
    pub fn count(&self, topic: &str) -> usize {
        self.shared.shard(topic).count(topic)
    }

    /// The list of `topic` now and a stream of every change after it. The
    /// stream ends once the tracker stops.
    pub fn subscribe(&self, topic: &str) -> Subscription<M> {
        Subscription::new(topic, self.shared.shard(topic).clone())
    }

    /// Every change on this replica, across all topics, local or
    /// replicated, and the other replicas coming and going: the lists of
    /// every topic first (consistent per topic), then each topic's diffs
    /// in order. See [`Events`].
    ///
    /// ```
    /// use attendance::{Tracker, TrackerEvent};
    /// use attendance::transport::MemoryNetwork;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let network = MemoryNetwork::new();
    /// let tracker: Tracker<String> = Tracker::builder("a").start_with(|id| network.join(id))?;
    /// let _doc = tracker.track("doc:1", "alice", "web".into())?;
    /// let mut events = tracker.events();
    /// let _chat = tracker.track("chat:7", "bob", "mobile".into())?;
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         TrackerEvent::Lists(lists) => {
    ///             for (topic, list) in lists.lists() {
    ///                 println!("{topic}: {} keys", list.len());
    ///             }
    ///         }
    ///         TrackerEvent::Diff(topic, diff) => {
    ///             assert_eq!(topic.as_str(), "chat:7");
    ///             assert_eq!(diff.joins()[0].key().as_str(), "bob");
    ///             break;
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # tracker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> Events<M> {
        Events::new(self.shared.clone())
    }

    /// The other replicas known here and where they stand.
    pub fn replicas(&self) -> Vec<(ReplicaId, ReplicaStatus)> {
        self.shared.replicas()
    }

    /// Counters: traffic, replicas, presences per topic.
    pub fn metrics(&self) -> TrackerMetrics {
        self.shared.metrics()
    }

    /// Starts measuring [`TrackerMetrics::longest_lock_hold`] and
    /// [`TrackerMetrics::lock_holds_over_1ms`] afresh.
    pub fn reset_longest_lock_hold(&self) {
        self.shared.locks.reset();
    }

    /// Connects to one more peer.
    ///
    /// # Errors
    ///
    /// When the transport has no addresses, or the tracker has stopped.
    pub async fn add_peer(&self, address: SocketAddr) -> Result<(), TransportError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || TransportError::Unsupported("adding peers to a stopped tracker");
        self.commands
            .send(Command::AddPeer(address, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Leaves the cluster: tells every peer to drop this replica's
    /// presences now, and stops. Other handles and guards stay usable but
    /// nothing they do is replicated any more.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// What the handles and the driver task share.
pub(crate) struct Shared<M> {
    /// The protocol node and what only the driver changes.
    node: TimedMutex<Driven<M>>,
    shards: Arc<[Arc<Shard<M>>]>,
    common: Arc<Common>,
    locks: Arc<LockStats>,
    /// Protocol time is measured from here.
    origin: Instant,
    max_message_bytes: usize,
    transport_stats: Option<StatsReader>,
}

/// The protocol node of a tracker, behind its lock.
pub(crate) struct Driven<M> {
    node: Node<M, Store<M>>,
    peers_up: usize,
    /// Refused messages logged this second.
    refusal_log: LogBudget,
    /// Entries refused for this replica's limits, as last logged.
    refused_seen: u64,
}

impl<M: Meta> Shared<M> {
    fn lock(&self) -> TimedGuard<'_, Driven<M>> {
        self.node.lock()
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The other replicas known here and where they stand.
    fn replicas(&self) -> Vec<(ReplicaId, ReplicaStatus)> {
        let driven = self.lock();
        driven
            .node
            .replicas()
            .map(|(id, s)| (id.clone(), s))
            .collect()
    }

    fn shard(&self, topic: &str) -> &Arc<Shard<M>> {
        &self.shards[shard_of(topic, self.shards.len())]
    }

    /// What [`Tracker::metrics`] returns.
    fn metrics(&self) -> TrackerMetrics {
        let (protocol, statuses, peers_up) = {
            let inner = self.lock();
            let statuses: Vec<ReplicaStatus> = inner.node.replicas().map(|(_, s)| s).collect();
            (inner.node.metrics().clone(), statuses, inner.peers_up)
        };
        let mut replicas_by_status: BTreeMap<&'static str, usize> =
            [("joining", 0), ("up", 0), ("down", 0), ("purged", 0)].into();
        for status in &statuses {
            let name = match status {
                ReplicaStatus::Joining => "joining",
                ReplicaStatus::Up => "up",
                ReplicaStatus::Down => "down",
                ReplicaStatus::Purged(_) => "purged",
            };
            *replicas_by_status.entry(name).or_default() += 1;
        }
        let up = replicas_by_status["up"];
        let mut presences = BTreeMap::new();
        for shard in self.shards.iter() {
            shard.add_counts(&mut presences);
        }
        TrackerMetrics {
            protocol,
            replicas_up: up,
            replicas_not_up: statuses.len() - up,
            replicas_by_status,
            subscriber_resyncs: self.common.resyncs.load(Ordering::Relaxed),
            peers_connected: peers_up,
            presences,
            transport: self.transport_stats.as_ref().map(StatsReader::read),
            longest_lock_hold: self.locks.longest(),
            lock_holds_over_1ms: self.locks.long_holds(),
            longest_held_lock: self.locks.longest_lock(),
        }
    }

    /// The driver task ends: refuse changes from now on, and end every
    /// subscription's stream.
    fn stop(&self, driven: &mut Driven<M>) {
        self.common.stopped.store(true, Ordering::Release);
        driven.node.state_mut().close();
    }
}
