//! Building and starting a [`Tracker`]: its settings, and the transport
//! it runs over.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::lock::{LockStats, TimedMutex};
use super::shard::{Common, Shard};
use super::store::Store;
use super::{Driven, Shared, Tracker, driver};
use crate::log_budget::LogBudget;
use crate::protocol::{Config, ConfigError, Node};
use crate::transport::tcp::Keyring;
use crate::transport::{Transport, TransportError};
use crate::{Incarnation, Limits, Meta, ReplicaId, ReplicaName, StateError};

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
    shards: usize,
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
            .field("shards", &self.shards)
            .field("incarnation", &self.incarnation);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        #[cfg(feature = "nats")]
        d.field("nats", &self.nats);
        d.finish()
    }
}

impl<M: Meta + Send + Sync + 'static> TrackerBuilder<M> {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            listen: None,
            peers: Vec::new(),
            secret: None,
            keyring: None,
            config: Config::default(),
            limits: Limits::default(),
            subscriber_queue: 1024,
            shards: 16,
            incarnation: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "nats")]
            nats: None,
            meta: PhantomData,
        }
    }

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
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
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
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
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

    /// How many topic shards hold the presences (default 16, at most
    /// 1024): calls on topics of different shards run in parallel. Every
    /// shard shares the replica's one protocol node: the number of shards
    /// changes nothing on the wire.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1024);
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
        let locks = Arc::new(LockStats::default());
        // An interval may fill half a message by the estimate, as the
        // node's own batching does.
        let budget = (self.config.max_message_bytes - crate::protocol::ENVELOPE_MARGIN) / 2;
        let common = Arc::new(Common::new(
            id.clone(),
            self.limits.clone(),
            self.subscriber_queue,
            (self.config.max_interval_span, budget),
            locks.clone(),
        ));
        let shards: Arc<[Arc<Shard<M>>]> = (0..self.shards)
            .map(|_| Arc::new(Shard::new(id.clone(), common.clone())))
            .collect();
        let store = Store::new(id.clone(), shards.clone(), common.clone());
        let mut node = Node::new(store, self.config.clone())?;
        node.defer_work();
        let transport_stats = transport.stats_reader();
        let shared = Arc::new(Shared {
            node: TimedMutex::new(
                Driven {
                    node,
                    peers_up: 0,
                    refusal_log: LogBudget::default(),
                    refused_seen: 0,
                },
                locks.clone(),
                "node",
            ),
            shards,
            common,
            locks,
            origin: Instant::now(),
            max_message_bytes: self.config.max_message_bytes,
            transport_stats,
        });
        let (commands, rx) = mpsc::channel(16);
        let span = tracing::info_span!("tracker", replica = %id);
        tokio::spawn(tracing::Instrument::instrument(
            driver::drive(shared.clone(), transport, rx),
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
