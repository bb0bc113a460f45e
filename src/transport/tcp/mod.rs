//! An authenticated TCP mesh.
//!
//! Every replica listens on one address and dials the peer addresses it is
//! given; each link is authenticated both ways with a cluster secret
//! before anything is reported or sent on it.
//!
//! # On the wire
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes.
//! A connection starts with a handshake; the dialer always proves it knows
//! the secret first, so an acceptor sends an unauthenticated process nothing
//! derived from the secret but the id of its own (a one-way HMAC that only
//! names it):
//!
//! 1. Both sides send a hello (46 bytes): `"attn"`, the newest and the
//!    oldest format version it reads ([`crate::wire::Versions`]), a 32-byte
//!    random challenge, and the [`KeyId`] of the secret it dials with. Both
//!    sides then write the highest version both read; either side closes
//!    the connection if there is none ([`crate::wire::WireError::NoCommonVersion`],
//!    logged and counted in [`TcpStats::version_mismatches`]). The magic and
//!    the two versions keep their places in every later hello, which may
//!    only grow. The acceptor closes the connection if it does
//!    not hold the dialer's secret ([`Keyring`]). The acceptor must
//!    receive the dialer's hello within [`TcpConfig::hello_timeout`].
//! 2. The dialer sends its replica id and
//!    `HMAC-SHA256(secret, "attn-dialer\0" ‖ hello_d ‖ hello_a ‖ id_d)` (32 bytes).
//! 3. The acceptor checks it (constant-time), then answers with its own id
//!    and `HMAC-SHA256(secret, "attn-acceptor\0" ‖ hello_d ‖ hello_a ‖ id_d ‖ id_a)`.
//!
//! A replica id is `name length (u8) ‖ name ‖ started_ms (u64 BE) ‖ nonce (u32 BE)`.
//! Handshake frames are limited to 512 bytes, so an unauthenticated process
//! cannot make the transport reserve memory for a large frame.
//!
//! After the handshake, every frame is `payload ‖ tag`, where the tag is the
//! first 16 bytes ([`TAG_LEN`]) of
//! `HMAC-SHA256(session_key, direction (u8) ‖ sequence (u64 BE) ‖ payload)`,
//! `session_key = HMAC-SHA256(secret, "attn-session\0" ‖ hello_d ‖ hello_a ‖ id_d ‖ id_a)`,
//! the direction is 0 from dialer to acceptor and 1 back, and each
//! direction counts its frames from 0. A replayed, reordered, reflected or
//! altered frame fails its tag, and the link is closed. A message costs
//! [`FRAME_OVERHEAD`] (20) bytes on top of its payload. A frame with an
//! empty payload is a keepalive, sent when a link has been quiet for
//! [`TcpConfig::keepalive_interval`]; it is never reported.
//!
//! The MACs authenticate; they do not encrypt. For confidentiality, enable
//! the `tls` feature and set `TcpConfig::tls`: every connection then
//! starts with a TLS handshake, and everything above runs inside it.
//! Without it, run the mesh on a network where the presence data may be
//! seen, or under a tunnel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hmac::Hmac;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "tls")]
use super::tls::TlsConfig;
use super::{Transport, TransportError, TransportEvent};
use crate::ReplicaId;
use crate::log_budget::LogBudget;
use crate::protocol::Destination;

mod frame;
mod handshake;
mod keyring;
mod link;
mod stats;
#[cfg(test)]
mod tests;

pub use keyring::{KeyId, Keyring, MIN_SECRET_LEN};
use link::{accept_loop, dial_loop};
pub use stats::TcpStats;
use stats::{Counters, bump};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the truncated HMAC-SHA256 that ends every frame after the
/// handshake.
pub const TAG_LEN: usize = 16;

/// Bytes a message costs on the wire beyond its payload: the 4-byte length
/// prefix and the tag.
pub const FRAME_OVERHEAD: usize = LENGTH_LEN + TAG_LEN;

const LENGTH_LEN: usize = 4;

/// The protocol accepts no `max_message_bytes` below 64 KiB.
const MIN_FRAME_BYTES: usize = (64 << 10) + TAG_LEN;
/// Events waiting for [`Transport::recv`]; beyond it, readers stop reading
/// and TCP pushes back on the peers.
const EVENT_QUEUE_LEN: usize = 1024;
/// Authenticated links to one replica id: one it dialed and one dialed to
/// it. A further connection claiming the id is refused.
const MAX_LINKS_PER_PEER: usize = 2;

/// Settings of a [`TcpTransport`].
///
/// [`TcpConfig::new`] sets the defaults; change fields as needed before
/// [`TcpTransport::bind`], which checks them.
///
/// ```
/// use std::time::Duration;
/// use attendance::transport::tcp::TcpConfig;
/// use attendance::{Incarnation, ReplicaId, ReplicaName};
///
/// let me = ReplicaId::new(ReplicaName::new("node-1").unwrap(), Incarnation::new(1, 7));
/// let mut config = TcpConfig::new(me, "0.0.0.0:7400".parse().unwrap(), "cluster secret")
///     .with_peers(["10.0.0.2:7400".parse().unwrap()]);
/// config.queue_len = 256;
/// config.connect_backoff_max = Duration::from_secs(2);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct TcpConfig {
    /// This replica, as its peers will see it.
    pub replica: ReplicaId,
    /// The address to listen on; port 0 picks a free port
    /// ([`TcpTransport::local_addr`] tells which).
    pub listen: SocketAddr,
    /// Addresses to dial and keep dialing. Peers that dial this replica
    /// need not be listed.
    pub peers: Vec<SocketAddr>,
    /// The largest frame sent or accepted, payload and tag: the protocol's
    /// `max_message_bytes` plus [`TAG_LEN`] (a `Tracker` sets it so).
    /// Larger messages are dropped on send, and a peer announcing a larger
    /// frame is disconnected, so a link never buffers more. Default
    /// 1 MiB + 16 bytes, as the protocol's default; at least 64 KiB + 16
    /// bytes, at most `u32::MAX`.
    pub max_frame_bytes: usize,
    /// Messages queued per link before more are dropped. Default 1024.
    pub queue_len: usize,
    /// Payload bytes queued per link beyond which more messages are
    /// dropped. A message is accepted while the queue holds less than this,
    /// so a link holds at most this plus one message. Default 64 MiB.
    pub queue_bytes: usize,
    /// The first pause before dialing again. Default 50 ms.
    pub connect_backoff_min: Duration,
    /// The pause between dials doubles after each failure up to this.
    /// Each pause is randomly shortened by up to half. Default 5 s.
    pub connect_backoff_max: Duration,
    /// The time allowed to connect, and then to complete the handshake.
    /// Default 5 s.
    pub handshake_timeout: Duration,
    /// An accepted connection must deliver its first handshake message
    /// (and, with TLS, finish the TLS handshake) within this (or within
    /// `handshake_timeout`, if shorter), so that idle connections cannot
    /// hold handshake slots. Default 1 s.
    pub hello_timeout: Duration,
    /// Handshakes accepted at once from addresses other than the
    /// configured peers'. Default 64.
    pub max_handshakes: usize,
    /// Handshakes accepted at once from one IP address. Default 4.
    pub max_handshakes_per_ip: usize,
    /// Handshake slots kept for the IP addresses of the configured peers
    /// (and of [`Transport::add_peer`]), which a flood from other addresses
    /// cannot take. Default 16.
    pub reserved_handshakes: usize,
    /// Authenticated links held at once, to all peers. Default 8,192 (two
    /// per replica at the protocol's default `max_replicas`).
    pub max_links: usize,
    /// A link that sent nothing for this long sends a keepalive. Default 5 s.
    pub keepalive_interval: Duration,
    /// A link on which nothing arrived for this long is closed (the peer
    /// vanished without closing it). Must exceed `keepalive_interval`.
    /// Default 20 s.
    pub idle_timeout: Duration,
    /// How long [`Transport::close`] waits for queued messages to be sent.
    /// Default 2 s.
    pub close_timeout: Duration,
    /// Encrypts every connection with TLS, under the handshake above: both
    /// sides must set it. Default `None`.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub tls: Option<TlsConfig>,
    secret: Vec<u8>,
    keyring: Option<Keyring>,
    /// The format versions advertised: [`wire::Versions::SUPPORTED`],
    /// other ranges standing in for other builds in tests.
    versions: crate::wire::Versions,
}

impl TcpConfig {
    /// The defaults, for `replica` listening on `listen`, authenticating
    /// with the cluster `secret`, which every replica of the cluster shares:
    /// at least [`MIN_SECRET_LEN`] (32) random bytes.
    pub fn new(replica: ReplicaId, listen: SocketAddr, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            replica,
            listen,
            peers: Vec::new(),
            max_frame_bytes: (1 << 20) + TAG_LEN,
            queue_len: 1024,
            queue_bytes: 64 << 20,
            connect_backoff_min: Duration::from_millis(50),
            connect_backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(1),
            max_handshakes: 64,
            max_handshakes_per_ip: 4,
            reserved_handshakes: 16,
            max_links: 8192,
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls: None,
            secret: secret.into(),
            keyring: None,
            versions: crate::wire::Versions::SUPPORTED,
        }
    }

    /// Authenticates with the secrets of `keyring` instead of the one
    /// given to [`TcpConfig::new`]: several accepted at once, one used to
    /// dial, rotated while the transport runs.
    #[must_use]
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Advertises `versions` instead of the ones this build reads: a
    /// stand-in for another build.
    #[cfg(test)]
    pub(crate) fn with_versions(mut self, versions: crate::wire::Versions) -> Self {
        self.versions = versions;
        self
    }

    /// Adds addresses to dial.
    #[must_use]
    pub fn with_peers(mut self, peers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.peers.extend(peers);
        self
    }

    fn validate(&self) -> Result<(), TransportError> {
        let max_frame = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        let checks = [
            (
                self.keyring.is_none() && self.secret.len() < MIN_SECRET_LEN,
                "secret",
                "must be at least 32 bytes (a random key, not a passphrase)",
            ),
            (
                self.max_frame_bytes < MIN_FRAME_BYTES,
                "max_frame_bytes",
                "must be at least 64 KiB + 16 bytes",
            ),
            (
                self.max_frame_bytes > max_frame,
                "max_frame_bytes",
                "must fit a 4-byte length",
            ),
            (self.queue_len == 0, "queue_len", "must be at least 1"),
            (self.queue_bytes == 0, "queue_bytes", "must be at least 1"),
            (
                self.connect_backoff_min.is_zero(),
                "connect_backoff_min",
                "must be positive",
            ),
            (
                self.connect_backoff_max < self.connect_backoff_min,
                "connect_backoff_max",
                "must be at least connect_backoff_min",
            ),
            (
                self.handshake_timeout.is_zero(),
                "handshake_timeout",
                "must be positive",
            ),
            (
                self.keepalive_interval.is_zero(),
                "keepalive_interval",
                "must be positive",
            ),
            (
                self.idle_timeout <= self.keepalive_interval,
                "idle_timeout",
                "must exceed keepalive_interval",
            ),
            (
                self.hello_timeout.is_zero(),
                "hello_timeout",
                "must be positive",
            ),
            (
                self.max_handshakes == 0,
                "max_handshakes",
                "must be at least 1",
            ),
            (
                self.max_handshakes_per_ip == 0,
                "max_handshakes_per_ip",
                "must be at least 1",
            ),
            (self.max_links == 0, "max_links", "must be at least 1"),
        ];
        match checks.into_iter().find(|(failed, ..)| *failed) {
            Some((_, setting, requirement)) => Err(TransportError::Config {
                setting,
                requirement,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TcpConfig");
        d.field("replica", &self.replica)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("queue_len", &self.queue_len)
            .field("queue_bytes", &self.queue_bytes)
            .field("connect_backoff_min", &self.connect_backoff_min)
            .field("connect_backoff_max", &self.connect_backoff_max)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshakes_per_ip", &self.max_handshakes_per_ip)
            .field("reserved_handshakes", &self.reserved_handshakes)
            .field("max_links", &self.max_links)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("versions", &self.versions);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.field("secret", &"<redacted>")
            .field("keyring", &self.keyring)
            .finish()
    }
}

/// An authenticated TCP mesh; see the [module docs](self) for the wire
/// format.
///
/// [`TcpTransport::bind`] listens and starts dialing the configured peers
/// (more with [`Transport::add_peer`]), redialing with backoff whenever a
/// link ends, so a restarted peer is reached again. Each link has a
/// bounded queue; [`Transport::send`] drops what does not fit. Two links to
/// one peer (both sides dialed) both stay up; the peer is reported
/// [`Connected`](TransportEvent::Connected) when its first link is up and
/// [`LinkLost`](TransportEvent::LinkLost) when its last one ends. A
/// restarted peer has a new [`ReplicaId`] and is a new peer.
///
/// Must be bound within a tokio runtime.
///
/// ```no_run
/// use attendance::protocol::Destination;
/// use attendance::transport::tcp::{TcpConfig, TcpTransport};
/// use attendance::transport::{Transport, TransportEvent};
/// use attendance::{Incarnation, ReplicaId, ReplicaName};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let me = ReplicaId::new(ReplicaName::new("node-1")?, Incarnation::new(1_764_000_000_000, 7));
/// let config = TcpConfig::new(me, "0.0.0.0:7400".parse()?, "a random cluster secret of 32+ bytes")
///     .with_peers(["10.0.0.2:7400".parse()?, "10.0.0.3:7400".parse()?]);
/// let mut transport = TcpTransport::bind(config).await?;
/// while let Some(event) = transport.recv().await {
///     match event {
///         TransportEvent::Connected(peer) => {
///             transport.send(&Destination::Replica(peer), "hello".into());
///         }
///         TransportEvent::Message { from, bytes } => println!("{from}: {} bytes", bytes.len()),
///         TransportEvent::LinkLost(peer) => println!("lost {peer}"),
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct TcpTransport {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::Receiver<TransportEvent>,
    /// Ends (yields `None`) once every task has ended.
    alive: mpsc::Receiver<()>,
    /// `None` once closed.
    ctx: Option<TaskCtx>,
    dialing: BTreeSet<SocketAddr>,
}

impl TcpTransport {
    /// Checks the settings, binds the listener and starts dialing the
    /// configured peers.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for unusable settings (such as an empty
    /// secret), [`TransportError::Io`] when the address cannot be bound.
    pub async fn bind(mut config: TcpConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let keyring = match config.keyring.take() {
            Some(ring) => ring,
            None => Keyring::new(&config.secret)?,
        };
        config.secret.clear();
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE_LEN);
        let (alive_tx, alive) = mpsc::channel(1);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            keyring,
            counters: Counters::default(),
            links: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            reserved: Arc::new(Semaphore::new(config.reserved_handshakes)),
            pending_by_ip: Mutex::new(HashMap::new()),
            peer_ips: Mutex::new(peers.iter().map(|a| a.ip().to_canonical()).collect()),
            refusal_log: Mutex::new(LogBudget::default()),
            config,
        });
        let ctx = TaskCtx {
            shared: Arc::clone(&shared),
            events: events_tx,
            _alive: alive_tx,
        };
        ctx.spawn(accept_loop(ctx.clone(), listener));
        tracing::debug!(replica = %shared.config.replica, %local_addr, "listening");
        let mut transport = Self {
            local_addr,
            shared,
            events,
            alive,
            ctx: Some(ctx),
            dialing: BTreeSet::new(),
        };
        for peer in peers {
            transport.dial(peer);
        }
        Ok(transport)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters so far.
    pub fn stats(&self) -> TcpStats {
        self.shared.counters.snapshot()
    }

    /// The secrets this transport accepts and dials with; rotate them here
    /// while it runs.
    pub fn keyring(&self) -> &Keyring {
        &self.shared.keyring
    }

    fn dial(&mut self, address: SocketAddr) {
        let Some(ctx) = &self.ctx else { return };
        if address == self.local_addr {
            tracing::debug!(%address, "not dialing the listening address");
            return;
        }
        self.shared.peer_ips().insert(address.ip().to_canonical());
        if self.dialing.insert(address) {
            ctx.spawn(dial_loop(ctx.clone(), address));
        }
    }

    /// Queues `bytes` on the oldest open link to `peer`: a second
    /// connection claiming a live peer's id does not capture its traffic.
    fn push(shared: &Shared, links: &[Link], bytes: &Bytes) {
        let counters = &shared.counters;
        let Some(link) = links.iter().find(|l| !l.tx.is_closed()) else {
            bump(&counters.dropped_unreachable);
            return;
        };
        // `send` takes `&mut self`, so this is the only producer: the check
        // and the increment cannot race with another send.
        if link.queued.load(Ordering::Relaxed) >= shared.config.queue_bytes {
            bump(&counters.dropped_full);
            tracing::trace!(len = bytes.len(), "queue bytes full, message dropped");
            return;
        }
        link.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        if let Err(error) = link.tx.try_send(bytes.clone()) {
            link.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            match error {
                mpsc::error::TrySendError::Full(_) => {
                    bump(&counters.dropped_full);
                    tracing::trace!(len = bytes.len(), "queue full, message dropped");
                }
                mpsc::error::TrySendError::Closed(_) => bump(&counters.dropped_unreachable),
            }
        }
    }
}

impl Transport for TcpTransport {
    fn stats_reader(&self) -> Option<super::StatsReader> {
        let shared = Arc::clone(&self.shared);
        Some(super::StatsReader::new(move || {
            super::TransportStats::Tcp(shared.counters.snapshot())
        }))
    }

    fn send(&mut self, to: &Destination, bytes: Bytes) {
        let shared = &self.shared;
        // Empty frames are keepalives; the protocol never sends empty
        // messages.
        if bytes.is_empty() || bytes.len() > shared.config.max_frame_bytes - TAG_LEN {
            bump(&shared.counters.dropped_invalid);
            tracing::debug!(
                len = bytes.len(),
                "message empty or too large to send, dropped"
            );
            return;
        }
        let links = shared.links();
        match to {
            Destination::All => {
                for peer_links in links.values() {
                    Self::push(shared, peer_links, &bytes);
                }
            }
            // A peer that moved to a newer incarnation of its name keeps
            // the link it authenticated with under the old one.
            Destination::Replica(peer) => match links.get(peer).or_else(|| {
                links
                    .iter()
                    .find(|(id, _)| id.name() == peer.name())
                    .map(|(_, l)| l)
            }) {
                Some(peer_links) => Self::push(shared, peer_links, &bytes),
                None => {
                    bump(&shared.counters.dropped_unreachable);
                    tracing::trace!(%peer, "no link to replica, message dropped");
                }
            },
        }
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        self.events.recv().await
    }

    fn add_peer(&mut self, address: SocketAddr) -> Result<(), TransportError> {
        if self.ctx.is_none() {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the transport is closed",
            )));
        }
        self.dial(address);
        Ok(())
    }

    async fn close(&mut self) {
        self.shared.stop.cancel();
        // Dropping every queue's sender lets each writer send what it holds,
        // shut its side down and wait for the peer to close.
        drop(std::mem::take(&mut *self.shared.links()));
        self.ctx = None;
        let _ = tokio::time::timeout(self.shared.config.close_timeout, self.alive.recv()).await;
        self.shared.abort.cancel();
        self.events.close();
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.abort.cancel();
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("replica", &self.shared.config.replica)
            .field("local_addr", &self.local_addr)
            .field("closed", &self.ctx.is_none())
            .finish_non_exhaustive()
    }
}

/// One authenticated connection's queue.
struct Link {
    conn: u64,
    tx: mpsc::Sender<Bytes>,
    /// Payload bytes in the queue.
    queued: Arc<AtomicUsize>,
}

struct Shared {
    config: TcpConfig,
    keyring: Keyring,
    counters: Counters,
    /// Authenticated links by peer, oldest first.
    links: Mutex<BTreeMap<ReplicaId, Vec<Link>>>,
    next_conn: AtomicU64,
    /// No new connections: set by close and drop.
    stop: CancellationToken,
    /// Every task ends: set by drop, and by close after its grace period.
    abort: CancellationToken,
    /// Handshake slots for any address, and those kept for the configured
    /// peers' addresses.
    handshakes: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    /// Handshakes in progress per source address.
    pending_by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The addresses of the peers this transport dials.
    peer_ips: Mutex<BTreeSet<IpAddr>>,
    /// How many refusals may still be logged this second.
    refusal_log: Mutex<LogBudget>,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, BTreeMap<ReplicaId, Vec<Link>>> {
        // Nothing panics while holding the lock; if something did, the map
        // is still consistent.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn peer_ips(&self) -> MutexGuard<'_, BTreeSet<IpAddr>> {
        self.peer_ips.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending_by_ip(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.pending_by_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every background task holds.
#[derive(Clone)]
struct TaskCtx {
    shared: Arc<Shared>,
    events: mpsc::Sender<TransportEvent>,
    /// Dropped when the task ends; close waits for all of them.
    _alive: mpsc::Sender<()>,
}

impl TaskCtx {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let abort = self.shared.abort.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = abort.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Whether the caps leave room for one more link to `peer`.
    fn room_for(&self, links: &BTreeMap<ReplicaId, Vec<Link>>, peer: &ReplicaId) -> bool {
        let total: usize = links.values().map(Vec::len).sum();
        let held = links.get(peer).map_or(0, Vec::len);
        if total >= self.shared.config.max_links || held >= MAX_LINKS_PER_PEER {
            bump(&self.shared.counters.links_refused);
            tracing::warn!(%peer, held, total, "link refused: too many links");
            return false;
        }
        true
    }

    /// Adds a link; reports the peer connected if it is its first.
    async fn register(&self, peer: &ReplicaId, link: Link) -> bool {
        // Refused before waiting for room in the event queue, so that
        // connections over the caps do not pile up while it is full.
        if !self.room_for(&self.shared.links(), peer) {
            return false;
        }
        // The event is queued under the lock that changes the links, so
        // `Connected` and `LinkLost` of one peer reach `recv` in the order
        // its links came and went.
        let Ok(permit) = self.events.reserve().await else {
            return false;
        };
        let mut links = self.shared.links();
        if self.shared.stop.is_cancelled() || !self.room_for(&links, peer) {
            return false;
        }
        let peer_links = links.entry(peer.clone()).or_default();
        if peer_links.is_empty() {
            permit.send(TransportEvent::Connected(peer.clone()));
        }
        peer_links.push(link);
        true
    }

    /// Removes a link; reports the peer lost if it was its last.
    async fn unregister(&self, peer: &ReplicaId, conn: u64) {
        let permit = self.events.reserve().await.ok();
        let mut links = self.shared.links();
        let Some(peer_links) = links.get_mut(peer) else {
            return;
        };
        let before = peer_links.len();
        peer_links.retain(|l| l.conn != conn);
        if peer_links.len() < before && peer_links.is_empty() {
            links.remove(peer);
            if let Some(permit) = permit {
                permit.send(TransportEvent::LinkLost(peer.clone()));
            }
        }
    }
}
