//! The tokio runtime: a [`Tracker`] drives one replica's protocol over a
//! transport, and is what applications hold.
//!
//! The replica's state sits behind one short lock shared by the handle and
//! a driver task. Local operations take the lock, change the state and
//! return: once [`Tracker::track`] returns, [`Tracker::list`] on that
//! replica shows the presence. The driver task sleeps until the protocol's
//! next deadline or the next transport event, feeds it to the protocol, and
//! sends what the protocol wants sent. The lock is never held across an
//! `.await`.
//!
//! A [`TrackerBuilder`] takes the protocol's periods and bounds as a
//! [`Config`] and the state's size limits as
//! [`Limits`]; both have defaults.
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

mod guard;
mod subscription;

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use guard::PresenceGuard;
pub use subscription::{Subscription, SubscriptionEvent};

use crate::log_budget::LogBudget;
use crate::protocol::{Config, ConfigError, Event, Metrics, Node, ReplicaStatus};
use crate::state::group_by_key;
use crate::transport::tcp::Keyring;
use crate::transport::{StatsReader, Transport, TransportError, TransportEvent, TransportStats};
use crate::{
    Incarnation, KeyGroup, Limits, Meta, Presence, PresenceId, ReplicaId, ReplicaName, State,
    StateError,
};
use subscription::{Subscriber, Subscribers, publish};

/// Why a tracker did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The replica name is empty or too long.
    #[error(transparent)]
    Name(StateError),
    /// The protocol settings do not fit together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// `start` needs a listen address and a cluster secret.
    #[error("missing setting: {0}")]
    Missing(&'static str),
}

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

/// Builds a [`Tracker`]. See [`Tracker::builder`].
#[must_use]
pub struct TrackerBuilder<M> {
    name: String,
    listen: Option<SocketAddr>,
    peers: Vec<SocketAddr>,
    secret: Option<Vec<u8>>,
    keyring: Option<Keyring>,
    config: Config,
    limits: Limits,
    subscriber_queue: usize,
    incarnation: Option<Incarnation>,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::tls::TlsConfig>,
    #[cfg(feature = "nats")]
    nats: Option<crate::transport::nats::NatsConfig>,
    meta: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for TrackerBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("TrackerBuilder");
        d.field("name", &self.name)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("keyring", &self.keyring)
            .field("config", &self.config)
            .field("limits", &self.limits)
            .field("subscriber_queue", &self.subscriber_queue)
            .field("incarnation", &self.incarnation);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        #[cfg(feature = "nats")]
        d.field("nats", &self.nats);
        d.finish()
    }
}

impl<M: Meta + Send + Sync + 'static> TrackerBuilder<M> {
    /// The address to accept peers on (port 0 picks a free one).
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.listen = Some(address);
        self
    }

    /// A peer to connect to; more can be added at run time with
    /// [`Tracker::add_peer`].
    pub fn peer(mut self, address: SocketAddr) -> Self {
        self.peers.push(address);
        self
    }

    /// Several peers.
    pub fn peers(mut self, addresses: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.peers.extend(addresses);
        self
    }

    /// The cluster secret every member holds: peers prove they know it
    /// before anything is exchanged. At least 32 random bytes
    /// ([`MIN_SECRET_LEN`](crate::transport::tcp::MIN_SECRET_LEN)); a
    /// shorter one fails [`start`](Self::start).
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Several cluster secrets, to rotate them without a restart (see
    /// [`Keyring`]); takes the place of [`secret`](Self::secret).
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Encrypts the TCP mesh that [`start`](Self::start) runs with TLS (the
    /// `tls` feature); every member must set it. The cluster secret is
    /// still required. Other transports (`start_with`) ignore it.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::transport::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Runs the tracker over a NATS broker instead of the TCP mesh (the
    /// `nats` feature): [`start`](Self::start) connects to the servers of
    /// `config` and needs no listen address. The cluster
    /// [`secret`](Self::secret) keys the MAC every message carries, unless
    /// `config` has its own or turns the MAC off.
    #[cfg(feature = "nats")]
    pub fn nats(mut self, config: crate::transport::nats::NatsConfig) -> Self {
        self.nats = Some(config);
        self
    }

    /// The protocol's periods and bounds (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The state's limits on topics, keys, metas and presences.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How many diffs wait for a slow subscriber before it is resynced
    /// (default 1024).
    pub fn subscriber_queue(mut self, diffs: usize) -> Self {
        self.subscriber_queue = diffs.max(1);
        self
    }

    /// The incarnation to start as, instead of one made from the clock
    /// (start time in ms) and a random number. For tests, and for
    /// operators who keep incarnations themselves; each start of a name
    /// needs a new one, above the previous.
    pub fn incarnation(mut self, incarnation: Incarnation) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// Starts the tracker over the authenticated TCP mesh: it listens on
    /// [`listen`](Self::listen) and connects to the [`peers`](Self::peers).
    /// With [`nats`](Self::nats), over the NATS broker instead.
    ///
    /// # Errors
    ///
    /// A missing listen address or secret, an invalid name or
    /// configuration, or a listener that cannot bind; over NATS, refused
    /// credentials or permissions, or no server reachable.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the tracker's task).
    pub async fn start(
        #[cfg_attr(not(feature = "nats"), allow(unused_mut))] mut self,
    ) -> Result<Tracker<M>, StartError> {
        use crate::transport::tcp::{TAG_LEN, TcpConfig, TcpTransport};
        #[cfg(feature = "nats")]
        if let Some(nats) = self.nats.take() {
            return self.start_nats(nats).await;
        }
        let listen = self.listen.ok_or(StartError::Missing("listen address"))?;
        let keyring = match (&self.keyring, &self.secret) {
            (Some(ring), _) => ring.clone(),
            (None, Some(secret)) => Keyring::new(secret)?,
            (None, None) => return Err(StartError::Missing("secret")),
        };
        self.config.validate()?;
        let id = self.replica_id()?;
        let mut tcp = TcpConfig::new(id.clone(), listen, Vec::new())
            .with_peers(self.peers.clone())
            .with_keyring(keyring.clone());
        // A link never buffers a frame larger than a message may be.
        tcp.max_frame_bytes = self.config.max_message_bytes + TAG_LEN;
        #[cfg(feature = "tls")]
        {
            tcp.tls = self.tls.clone();
        }
        let transport = TcpTransport::bind(tcp).await?;
        let local = transport.local_addr();
        let tracker = self.launch(id, transport)?;
        Ok(Tracker {
            local_addr: Some(local),
            keyring: Some(keyring),
            ..tracker
        })
    }

    /// Starts the tracker over another transport, made from this replica's
    /// id.
    ///
    /// # Errors
    ///
    /// An invalid name or configuration.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it spawns the tracker's task, as
    /// [`tokio::spawn`] does.
    pub fn start_with<T: Transport>(
        self,
        transport: impl FnOnce(ReplicaId) -> T,
    ) -> Result<Tracker<M>, StartError> {
        let id = self.replica_id()?;
        let transport = transport(id.clone());
        self.launch(id, transport)
    }

    /// Starts the tracker over a transport that needs async setup
    /// (connecting to a broker, say), made from this replica's id.
    ///
    /// ```
    /// use attendance::Tracker;
    /// use attendance::transport::MemoryNetwork;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), attendance::StartError> {
    /// let network = MemoryNetwork::new();
    /// let a: Tracker<String> = Tracker::builder("a")
    ///     .start_with_async(|id| async { Ok(network.join(id)) })
    ///     .await?;
    /// # a.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// An invalid name or configuration, or the transport's own error.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`start_with`](Self::start_with).
    pub async fn start_with_async<T, F, Fut>(self, transport: F) -> Result<Tracker<M>, StartError>
    where
        T: Transport,
        F: FnOnce(ReplicaId) -> Fut,
        Fut: std::future::Future<Output = Result<T, TransportError>>,
    {
        self.config.validate()?;
        let id = self.replica_id()?;
        let transport = transport(id.clone()).await?;
        self.launch(id, transport)
    }

    #[cfg(feature = "nats")]
    async fn start_nats(
        self,
        mut nats: crate::transport::nats::NatsConfig,
    ) -> Result<Tracker<M>, StartError> {
        use crate::transport::nats::NatsTransport;
        if nats.message_auth() && !nats.has_secret() {
            match (&self.secret, &self.keyring) {
                (Some(secret), _) => nats = nats.with_secret(secret.clone()),
                (None, Some(_)) => {
                    return Err(TransportError::Unsupported(
                        "keyrings (give the cluster secret with `secret`)",
                    )
                    .into());
                }
                (None, None) => return Err(StartError::Missing("secret")),
            }
        }
        // A message the protocol may send is one the transport carries.
        nats.max_message_bytes = self.config.max_message_bytes;
        nats.max_reassembly_bytes = nats.max_reassembly_bytes.max(nats.max_message_bytes);
        self.start_with_async(|id| NatsTransport::connect(nats, id))
            .await
    }

    fn replica_id(&self) -> Result<ReplicaId, StartError> {
        let name = ReplicaName::new(&self.name).map_err(StartError::Name)?;
        if let Some(incarnation) = self.incarnation {
            return Ok(ReplicaId::new(name, incarnation));
        }
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut nonce = [0u8; 4];
        // Without OS randomness, the start time alone orders incarnations.
        let _ = getrandom::fill(&mut nonce);
        Ok(ReplicaId::new(
            name,
            Incarnation::new(started, u32::from_le_bytes(nonce)),
        ))
    }

    fn launch<T: Transport>(self, id: ReplicaId, transport: T) -> Result<Tracker<M>, StartError> {
        self.config.validate()?;
        let state = State::builder(id.clone()).limits(self.limits).build();
        let node = Node::new(state, self.config)?;
        let transport_stats = transport.stats_reader();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                node,
                subscribers: Subscribers::default(),
                peers_up: 0,
                renamed: HashMap::new(),
                stopped: false,
                refusal_log: LogBudget::default(),
            }),
            origin: Instant::now(),
            next_subscriber: AtomicU64::new(0),
            subscriber_queue: self.subscriber_queue,
            transport_stats,
        });
        let (commands, rx) = mpsc::channel(16);
        let span = tracing::info_span!("tracker", replica = %id);
        tokio::spawn(tracing::Instrument::instrument(
            drive(shared.clone(), transport, rx),
            span,
        ));
        tracing::info!(replica = %id, "tracker started");
        Ok(Tracker {
            shared,
            commands,
            local_addr: None,
            keyring: None,
        })
    }
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
            .field("id", &self.shared.lock().node.id())
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
enum Command {
    AddPeer(SocketAddr, oneshot::Sender<Result<(), TransportError>>),
    Shutdown(oneshot::Sender<()>),
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
    /// Transport links up.
    pub peers_connected: usize,
    /// Visible presences per topic.
    pub presences: BTreeMap<String, usize>,
    /// The transport's own counters, when it keeps any (the TCP mesh does:
    /// [`TransportStats::Tcp`]; so does NATS, under the `nats` feature).
    pub transport: Option<TransportStats>,
}

impl<M: Meta + Send + Sync + 'static> Tracker<M> {
    /// A builder for a replica named `name` (unique in the cluster).
    pub fn builder(name: &str) -> TrackerBuilder<M> {
        TrackerBuilder {
            name: name.to_string(),
            listen: None,
            peers: Vec::new(),
            secret: None,
            keyring: None,
            config: Config::default(),
            limits: Limits::default(),
            subscriber_queue: 1024,
            incarnation: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "nats")]
            nats: None,
            meta: PhantomData,
        }
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
        let mut inner = self.shared.lock();
        if inner.stopped {
            return Err(TrackerError::Stopped);
        }
        let id = inner.node.track(topic, key, meta)?;
        inner.dispatch();
        Ok(PresenceGuard::new(self.shared.clone(), id))
    }

    /// The visible presences on `topic`, grouped by key in key order.
    pub fn list(&self, topic: &str) -> Vec<KeyGroup<M>> {
        let inner = self.shared.lock();
        group_by_key(inner.node.state().presences(topic))
    }

    /// The visible presences under `key` on `topic`.
    pub fn get(&self, topic: &str, key: &str) -> Vec<Presence<M>> {
        let inner = self.shared.lock();
        let mut found = inner.node.state().presences(topic);
        found.retain(|p| p.key().as_str() == key);
        found
    }

    /// How many visible presences `topic` has. O(1).
    pub fn count(&self, topic: &str) -> usize {
        self.shared.lock().node.state().count(topic)
    }

    /// The list of `topic` now and a stream of every change after it. The
    /// stream ends once the tracker stops.
    pub fn subscribe(&self, topic: &str) -> Subscription<M> {
        let (tx, rx) = mpsc::channel(self.shared.subscriber_queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.shared.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.shared.lock();
        let list = group_by_key(inner.node.state().presences(topic));
        if !inner.stopped {
            // After a stop no sender is kept: the stream ends at once.
            inner
                .subscribers
                .entry(topic.to_string())
                .or_default()
                .push(Subscriber {
                    id,
                    tx,
                    lagged: Arc::clone(&lagged),
                });
        }
        drop(inner);
        Subscription::new(
            list,
            topic.to_string(),
            id,
            (rx, lagged),
            self.shared.clone(),
        )
    }

    /// The other replicas known here and where they stand.
    pub fn replicas(&self) -> Vec<(ReplicaId, ReplicaStatus)> {
        let inner = self.shared.lock();
        inner
            .node
            .replicas()
            .map(|(id, s)| (id.clone(), s))
            .collect()
    }

    /// Counters: traffic, replicas, presences per topic.
    pub fn metrics(&self) -> TrackerMetrics {
        let inner = self.shared.lock();
        let statuses: Vec<ReplicaStatus> = inner.node.replicas().map(|(_, s)| s).collect();
        let up = statuses.iter().filter(|s| **s == ReplicaStatus::Up).count();
        TrackerMetrics {
            protocol: inner.node.metrics().clone(),
            replicas_up: up,
            replicas_not_up: statuses.len() - up,
            peers_connected: inner.peers_up,
            presences: inner
                .node
                .state()
                .topics()
                .into_iter()
                .map(|(t, n)| (t.as_str().to_string(), n))
                .collect(),
            transport: self.shared.transport_stats.as_ref().map(StatsReader::read),
        }
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
    inner: Mutex<Inner<M>>,
    /// Protocol time is measured from here.
    origin: Instant,
    next_subscriber: AtomicU64,
    subscriber_queue: usize,
    transport_stats: Option<StatsReader>,
}

pub(crate) struct Inner<M> {
    pub(crate) node: Node<M>,
    pub(crate) subscribers: Subscribers<M>,
    peers_up: usize,
    /// Presences that got new ids when this replica re-incarnated: the id
    /// their guard holds to the current one.
    renamed: HashMap<PresenceId, PresenceId>,
    /// The driver task ended: calls that change something are refused.
    pub(crate) stopped: bool,
    /// Refused messages logged this second.
    refusal_log: LogBudget,
}

impl<M> Shared<M> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        // Nothing under the lock panics on input; should a bug panic there,
        // the state is still consistent (every change is planned first).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

impl<M: Meta> Inner<M> {
    /// The current id of the presence a guard tracked as `id`.
    pub(crate) fn current_id(&self, id: &PresenceId) -> PresenceId {
        self.renamed.get(id).unwrap_or(id).clone()
    }

    /// Forgets a guard's presence.
    pub(crate) fn forget(&mut self, id: &PresenceId) {
        self.renamed.remove(id);
    }

    /// The driver task ends: refuse changes from now on, and end every
    /// subscription's stream (its sender is dropped here).
    fn stop(&mut self) {
        self.stopped = true;
        self.subscribers.clear();
    }

    /// Hands the protocol's events to subscribers and logs.
    pub(crate) fn dispatch(&mut self) {
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::Diff(diff) => {
                    if diff.refused() > 0 {
                        tracing::warn!(
                            refused = diff.refused(),
                            "presences over this replica's topic or key limits were not taken"
                        );
                    }
                    for (topic, changes) in diff.into_topics() {
                        publish(&mut self.subscribers, topic.as_str(), changes);
                    }
                }
                Event::ReplicaUp(id) => tracing::info!(peer = %id, "replica up"),
                Event::ReplicaDown(id) => tracing::warn!(peer = %id, "replica down"),
                Event::ReplicaPurged(id, reason) => {
                    tracing::info!(peer = %id, ?reason, "replica purged");
                }
                Event::Reincarnated { replica, renamed } => {
                    tracing::warn!(%replica, "a newer incarnation of this name appeared: moved above it");
                    let moved: HashMap<PresenceId, PresenceId> = renamed.into_iter().collect();
                    for current in self.renamed.values_mut() {
                        if let Some(new) = moved.get(current) {
                            *current = new.clone();
                        }
                    }
                    for (old, new) in moved {
                        self.renamed.entry(old).or_insert(new);
                    }
                }
                Event::NameConflict(id) => {
                    tracing::error!(replica = %id, "another process runs under this replica's name");
                }
            }
        }
    }
}

/// The driver task: feeds the protocol its deadlines and the transport's
/// events, and hands the transport what the protocol sends.
async fn drive<M: Meta, T: Transport>(
    shared: Arc<Shared<M>>,
    mut transport: T,
    mut commands: mpsc::Receiver<Command>,
) {
    loop {
        let deadline = shared.origin + shared.lock().node.poll_timeout();
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::AddPeer(address, reply)) => {
                    let _ = reply.send(transport.add_peer(address));
                }
                Some(Command::Shutdown(done)) => {
                    leave(&shared, &mut transport).await;
                    let _ = done.send(());
                    return;
                }
                // Every handle is gone: leave as on shutdown.
                None => {
                    leave(&shared, &mut transport).await;
                    return;
                }
            },
            event = transport.recv() => {
                let Some(event) = event else {
                    tracing::warn!("transport closed");
                    shared.lock().stop();
                    return;
                };
                let outgoing = {
                    let mut inner = shared.lock();
                    let now = shared.now();
                    match event {
                        TransportEvent::Connected(peer) => {
                            tracing::debug!(%peer, "link up");
                            inner.peers_up += 1;
                            inner.node.peer_connected(now, peer);
                        }
                        TransportEvent::Message { from, bytes } => {
                            if let Err(error) = inner.node.handle_message(now, &from, &bytes) {
                                // Counted in the protocol's metrics; logged
                                // a few a second.
                                let (log, unlogged) = inner.refusal_log.take();
                                if unlogged > 0 {
                                    tracing::warn!(unlogged, "refused messages not logged in the last second");
                                }
                                if log {
                                    tracing::warn!(%error, peer = %from, "message refused");
                                }
                            }
                        }
                        TransportEvent::LinkLost(peer) => {
                            tracing::debug!(%peer, "link lost");
                            inner.peers_up = inner.peers_up.saturating_sub(1);
                            inner.node.link_lost(now, &peer);
                        }
                    }
                    inner.dispatch();
                    take_transmits(&mut inner)
                };
                for (to, bytes) in outgoing {
                    transport.send(&to, bytes);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let outgoing = {
                    let mut inner = shared.lock();
                    let now = shared.now();
                    inner.node.handle_timeout(now);
                    inner.dispatch();
                    take_transmits(&mut inner)
                };
                for (to, bytes) in outgoing {
                    transport.send(&to, bytes);
                }
            }
        }
    }
}

/// Tells every peer this replica leaves, and closes the transport.
async fn leave<M: Meta, T: Transport>(shared: &Shared<M>, transport: &mut T) {
    let outgoing = {
        let mut inner = shared.lock();
        inner.node.leave(shared.now());
        inner.stop();
        take_transmits(&mut inner)
    };
    for (to, bytes) in outgoing {
        transport.send(&to, bytes);
    }
    transport.close().await;
    tracing::info!("tracker stopped");
}

fn take_transmits<M: Meta>(inner: &mut Inner<M>) -> Vec<(crate::protocol::Destination, Bytes)> {
    std::iter::from_fn(|| inner.node.poll_transmit())
        .map(|t| (t.destination, Bytes::from(t.bytes)))
        .collect()
}
