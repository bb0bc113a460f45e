//! An authenticated TCP mesh.
//!
//! Every replica listens on one address and dials the peer addresses it is
//! given; each link is authenticated both ways with the cluster secret
//! before anything is reported or sent on it.
//!
//! # On the wire
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes.
//! A connection starts with a handshake; the dialer always proves it knows
//! the secret first, so an acceptor never sends anything derived from the
//! secret to an unauthenticated process:
//!
//! 1. Both sides send a hello (37 bytes): `"attn"`, the format version
//!    ([`wire::VERSION`]), a 32-byte random challenge.
//!    Either side closes the connection if the versions differ.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::codec::{Framed, FramedRead, LengthDelimitedCodec, LengthDelimitedCodecError};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "tls")]
use super::tls::TlsConfig;
use super::{Transport, TransportError, TransportEvent};
use crate::protocol::Destination;
use crate::wire;
use crate::{Incarnation, ReplicaId, ReplicaName};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the truncated HMAC-SHA256 that ends every frame after the
/// handshake.
pub const TAG_LEN: usize = 16;

/// Bytes a message costs on the wire beyond its payload: the 4-byte length
/// prefix and the tag.
pub const FRAME_OVERHEAD: usize = LENGTH_LEN + TAG_LEN;

const LENGTH_LEN: usize = 4;
const MAGIC: &[u8; 4] = b"attn";
const CHALLENGE_LEN: usize = 32;
const HELLO_LEN: usize = MAGIC.len() + 1 + CHALLENGE_LEN;
const MAC_LEN: usize = 32;
/// Room for the largest auth frame (1 + 255 + 12 + 32 bytes).
const HANDSHAKE_MAX_FRAME: usize = 512;
/// The protocol accepts no `max_message_bytes` below 64 KiB.
const MIN_FRAME_BYTES: usize = (64 << 10) + TAG_LEN;
/// Events waiting for [`Transport::recv`]; beyond it, readers stop reading
/// and TCP pushes back on the peers.
const EVENT_QUEUE_LEN: usize = 1024;
/// Handshakes accepted at once; more connections are refused until one ends.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Pause after the listener fails to accept (such as out of descriptors),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Large enough to batch many small messages into one write.
const WRITE_BUFFER: usize = 64 << 10;

const LABEL_DIALER: &[u8] = b"attn-dialer\0";
const LABEL_ACCEPTOR: &[u8] = b"attn-acceptor\0";
const LABEL_SESSION: &[u8] = b"attn-session\0";
const DIRECTION_FROM_DIALER: u8 = 0;
const DIRECTION_FROM_ACCEPTOR: u8 = 1;

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
    /// The largest frame sent or accepted, payload and tag. It must be at
    /// least the protocol's `max_message_bytes` plus [`TAG_LEN`]; larger
    /// messages are dropped on send, and a peer sending a larger frame is
    /// disconnected. Default 64 MiB + 64 KiB; at least 64 KiB + 16 bytes,
    /// at most `u32::MAX`.
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
    pub tls: Option<TlsConfig>,
    secret: Vec<u8>,
}

impl TcpConfig {
    /// The defaults, for `replica` listening on `listen`, authenticating
    /// with the cluster `secret` (which every replica of the cluster shares;
    /// use at least 32 random bytes).
    pub fn new(replica: ReplicaId, listen: SocketAddr, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            replica,
            listen,
            peers: Vec::new(),
            max_frame_bytes: wire::DEFAULT_MAX_MESSAGE_BYTES + (64 << 10),
            queue_len: 1024,
            queue_bytes: 64 << 20,
            connect_backoff_min: Duration::from_millis(50),
            connect_backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls: None,
            secret: secret.into(),
        }
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
            (self.secret.is_empty(), "secret", "must not be empty"),
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
            .field("keepalive_interval", &self.keepalive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("close_timeout", &self.close_timeout);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.field("secret", &"<redacted>").finish()
    }
}

/// Counters of a [`TcpTransport`] since it was bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Frames written to authenticated links, keepalives included.
    pub frames_sent: u64,
    /// Bytes of those frames: length prefixes, payloads and tags.
    pub bytes_sent: u64,
    /// Frames read from authenticated links, keepalives and refused frames
    /// included.
    pub frames_received: u64,
    /// Bytes of those frames: length prefixes, payloads and tags.
    pub bytes_received: u64,
    /// Handshakes completed, as dialer or acceptor.
    pub handshakes_ok: u64,
    /// Connections closed before they authenticated, as dialer or acceptor,
    /// for any reason: a wrong MAC or version, a malformed or oversized
    /// frame, a timeout, the other side closing, too many handshakes at
    /// once.
    pub handshakes_refused: u64,
    /// Of `handshakes_refused`: a MAC that did not verify (the other side
    /// does not hold the cluster secret).
    pub auth_failures: u64,
    /// Of `handshakes_refused`: another format version.
    pub version_mismatches: u64,
    /// Of `handshakes_refused`: a TLS handshake that failed (the other side
    /// does not speak TLS, or its certificate is not trusted). Always 0
    /// without the `tls` feature.
    pub tls_failures: u64,
    /// Frames on authenticated links whose tag did not verify; each closed
    /// its link.
    pub frames_refused: u64,
    /// Frames announced larger than the limit, in a handshake or after;
    /// each closed its connection.
    pub frames_oversized: u64,
    /// Messages dropped because the link's queue was full.
    pub dropped_full: u64,
    /// Messages dropped because no authenticated link led to the replica.
    pub dropped_unreachable: u64,
    /// Messages dropped because they were larger than `max_frame_bytes`
    /// allows, or empty.
    pub dropped_invalid: u64,
    /// Dials that did not connect (refused, unreachable, timed out).
    pub connect_failures: u64,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_refused: AtomicU64,
    auth_failures: AtomicU64,
    version_mismatches: AtomicU64,
    tls_failures: AtomicU64,
    frames_refused: AtomicU64,
    frames_oversized: AtomicU64,
    dropped_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_invalid: AtomicU64,
    connect_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TcpStats {
            frames_sent: get(&self.frames_sent),
            bytes_sent: get(&self.bytes_sent),
            frames_received: get(&self.frames_received),
            bytes_received: get(&self.bytes_received),
            handshakes_ok: get(&self.handshakes_ok),
            handshakes_refused: get(&self.handshakes_refused),
            auth_failures: get(&self.auth_failures),
            version_mismatches: get(&self.version_mismatches),
            tls_failures: get(&self.tls_failures),
            frames_refused: get(&self.frames_refused),
            frames_oversized: get(&self.frames_oversized),
            dropped_full: get(&self.dropped_full),
            dropped_unreachable: get(&self.dropped_unreachable),
            dropped_invalid: get(&self.dropped_invalid),
            connect_failures: get(&self.connect_failures),
        }
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
/// let config = TcpConfig::new(me, "0.0.0.0:7400".parse()?, "a long random cluster secret")
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
    pub async fn bind(config: TcpConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let secret =
            HmacSha256::new_from_slice(&config.secret).map_err(|_| TransportError::Config {
                setting: "secret",
                requirement: "must key HMAC-SHA256",
            })?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE_LEN);
        let (alive_tx, alive) = mpsc::channel(1);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            config,
            secret,
            counters: Counters::default(),
            links: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
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

    fn dial(&mut self, address: SocketAddr) {
        let Some(ctx) = &self.ctx else { return };
        if address == self.local_addr {
            tracing::debug!(%address, "not dialing the listening address");
            return;
        }
        if self.dialing.insert(address) {
            ctx.spawn(dial_loop(ctx.clone(), address));
        }
    }

    /// Queues `bytes` on the newest open link to `peer`.
    fn push(shared: &Shared, links: &[Link], bytes: &Bytes) {
        let counters = &shared.counters;
        let Some(link) = links.iter().rev().find(|l| !l.tx.is_closed()) else {
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
            Destination::Replica(peer) => match links.get(peer) {
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
    /// Keyed with the cluster secret; cloned for each use.
    secret: HmacSha256,
    counters: Counters,
    /// Authenticated links by peer, oldest first.
    links: Mutex<BTreeMap<ReplicaId, Vec<Link>>>,
    next_conn: AtomicU64,
    /// No new connections: set by close and drop.
    stop: CancellationToken,
    /// Every task ends: set by drop, and by close after its grace period.
    abort: CancellationToken,
    handshakes: Arc<Semaphore>,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, BTreeMap<ReplicaId, Vec<Link>>> {
        // Nothing panics while holding the lock; if something did, the map
        // is still consistent.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Adds a link; reports the peer connected if it is its first.
    async fn register(&self, peer: &ReplicaId, link: Link) -> bool {
        // The event is queued under the lock that changes the links, so
        // `Connected` and `LinkLost` of one peer reach `recv` in the order
        // its links came and went.
        let Ok(permit) = self.events.reserve().await else {
            return false;
        };
        let mut links = self.shared.links();
        if self.shared.stop.is_cancelled() {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Dialer,
    Acceptor,
}

#[derive(Debug)]
enum HandshakeError {
    Io(io::Error),
    /// The other side closed the connection.
    Closed,
    /// The other side closed the connection after this dialer's MAC.
    Rejected,
    Oversized,
    Malformed(&'static str),
    Version(u8),
    BadMac,
    /// The TLS handshake failed.
    #[cfg(feature = "tls")]
    Tls(io::Error),
    /// The other side is this replica.
    SelfConnection,
    Timeout,
    Busy,
    Random(getrandom::Error),
}

impl From<io::Error> for HandshakeError {
    fn from(error: io::Error) -> Self {
        if is_oversized(&error) {
            Self::Oversized
        } else {
            Self::Io(error)
        }
    }
}

fn is_oversized(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

/// Counts and logs a connection that did not authenticate.
fn refused(shared: &Shared, addr: SocketAddr, role: Role, error: &HandshakeError) {
    let counters = &shared.counters;
    bump(&counters.handshakes_refused);
    match error {
        HandshakeError::BadMac => {
            bump(&counters.auth_failures);
            tracing::warn!(%addr, ?role, "handshake refused: authentication failed (another cluster secret?)");
        }
        HandshakeError::Version(version) => {
            bump(&counters.version_mismatches);
            tracing::warn!(%addr, ?role, peer_version = version, version = wire::VERSION, "handshake refused: another format version");
        }
        HandshakeError::Oversized => {
            bump(&counters.frames_oversized);
            tracing::warn!(%addr, ?role, "handshake refused: oversized frame");
        }
        #[cfg(feature = "tls")]
        HandshakeError::Tls(error) => {
            bump(&counters.tls_failures);
            tracing::warn!(%addr, ?role, %error, "handshake refused: TLS failed");
        }
        HandshakeError::Malformed(what) => {
            tracing::warn!(%addr, ?role, what, "handshake refused: malformed");
        }
        HandshakeError::Rejected => {
            tracing::warn!(%addr, "peer closed the connection after our authentication (another cluster secret or version?)");
        }
        HandshakeError::SelfConnection => {
            tracing::warn!(%addr, ?role, "handshake refused: connected to itself");
        }
        HandshakeError::Timeout => match role {
            Role::Acceptor => tracing::warn!(%addr, "handshake refused: timed out"),
            Role::Dialer => tracing::debug!(%addr, "handshake timed out"),
        },
        HandshakeError::Busy => {
            tracing::warn!(%addr, "connection refused: too many handshakes in progress");
        }
        HandshakeError::Random(error) => {
            tracing::error!(%addr, %error, "no randomness for a handshake challenge");
        }
        HandshakeError::Closed => {
            tracing::debug!(%addr, ?role, "connection closed during the handshake");
        }
        HandshakeError::Io(error) => {
            tracing::debug!(%addr, ?role, %error, "connection failed during the handshake");
        }
    }
}

/// A connection: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

type Conn = Box<dyn Stream>;

/// Starts TLS on a fresh connection when it is configured.
#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
async fn secure(
    shared: &Shared,
    stream: TcpStream,
    role: Role,
    addr: SocketAddr,
) -> Result<Conn, HandshakeError> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.config.tls {
        let conn: Conn = match role {
            Role::Dialer => Box::new(
                tls.connect(stream, addr)
                    .await
                    .map_err(HandshakeError::Tls)?,
            ),
            Role::Acceptor => Box::new(tls.accept(stream).await.map_err(HandshakeError::Tls)?),
        };
        return Ok(conn);
    }
    Ok(Box::new(stream))
}

/// An authenticated connection's keys and what was read past the handshake.
struct Session {
    peer: ReplicaId,
    seal: FrameMac,
    open: FrameMac,
    read_buf: BytesMut,
}

/// The tags of one direction of a link.
struct FrameMac {
    /// Keyed with the session key.
    key: HmacSha256,
    direction: u8,
    seq: u64,
}

impl FrameMac {
    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(&[self.direction]);
        mac.update(&self.seq.to_be_bytes());
        mac.update(payload);
        mac
    }

    fn seal(&mut self, payload: &[u8]) -> [u8; TAG_LEN] {
        let full = self.mac(payload).finalize().into_bytes();
        self.seq = self.seq.wrapping_add(1);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// The payload of a frame whose tag verifies.
    fn open(&mut self, mut frame: BytesMut) -> Option<Bytes> {
        let len = frame.len().checked_sub(TAG_LEN)?;
        let (payload, tag) = frame.split_at(len);
        let ok = self.mac(payload).verify_truncated_left(tag).is_ok();
        self.seq = self.seq.wrapping_add(1);
        if !ok {
            return None;
        }
        frame.truncate(len);
        Some(frame.freeze())
    }
}

fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_LEN)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

fn encode_id(id: &ReplicaId) -> Vec<u8> {
    let name = id.name().as_str().as_bytes();
    // Names are at most 255 bytes (`MAX_REPLICA_NAME_LEN`).
    let len = u8::try_from(name.len()).unwrap_or(u8::MAX);
    let name = name.get(..usize::from(len)).unwrap_or(name);
    let mut out = Vec::with_capacity(1 + name.len() + 12);
    out.push(len);
    out.extend_from_slice(name);
    out.extend_from_slice(&id.incarnation().started_ms().to_be_bytes());
    out.extend_from_slice(&id.incarnation().nonce().to_be_bytes());
    out
}

fn decode_id(bytes: &[u8]) -> Option<ReplicaId> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    if rest.len() != len + 12 {
        return None;
    }
    let (name, rest) = rest.split_at(len);
    let name = ReplicaName::new(std::str::from_utf8(name).ok()?).ok()?;
    let (started_ms, nonce) = rest.split_first_chunk::<8>()?;
    let nonce: [u8; 4] = nonce.try_into().ok()?;
    Some(ReplicaId::new(
        name,
        Incarnation::new(u64::from_be_bytes(*started_ms), u32::from_be_bytes(nonce)),
    ))
}

fn check_hello(hello: &[u8]) -> Result<(), HandshakeError> {
    if hello.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(HandshakeError::Malformed("not a hello"));
    }
    // The version comes before the length check: another version may have
    // another hello.
    match hello.get(MAGIC.len()) {
        Some(&version) if version != wire::VERSION => Err(HandshakeError::Version(version)),
        _ if hello.len() != HELLO_LEN => Err(HandshakeError::Malformed("hello length")),
        _ => Ok(()),
    }
}

/// The MAC over a label, the two hellos and the ids so far.
fn transcript_mac(secret: &HmacSha256, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = secret.clone();
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Splits an auth frame into the replica id bytes and the MAC.
fn split_auth(frame: &[u8]) -> Result<(&[u8], &[u8]), HandshakeError> {
    let len = frame
        .len()
        .checked_sub(MAC_LEN)
        .ok_or(HandshakeError::Malformed("auth too short"))?;
    Ok(frame.split_at(len))
}

async fn read_frame<T>(
    framed: &mut Framed<T, LengthDelimitedCodec>,
) -> Result<BytesMut, HandshakeError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match framed.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(error)) => Err(error.into()),
        None => Err(HandshakeError::Closed),
    }
}

/// Authenticates a fresh connection both ways (see the module docs).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    me: &ReplicaId,
    secret: &HmacSha256,
) -> Result<Session, HandshakeError> {
    let mut framed = Framed::new(&mut *stream, codec(HANDSHAKE_MAX_FRAME));
    let mut own_hello = [0; HELLO_LEN];
    let (head, challenge) = own_hello.split_at_mut(MAGIC.len() + 1);
    head[..MAGIC.len()].copy_from_slice(MAGIC);
    head[MAGIC.len()] = wire::VERSION;
    getrandom::fill(challenge).map_err(HandshakeError::Random)?;
    framed.send(Bytes::copy_from_slice(&own_hello)).await?;

    let peer_hello = read_frame(&mut framed).await?;
    check_hello(&peer_hello)?;
    if peer_hello[..] == own_hello[..] {
        return Err(HandshakeError::Malformed("reflected hello"));
    }
    let (hello_d, hello_a) = match role {
        Role::Dialer => (&own_hello[..], &peer_hello[..]),
        Role::Acceptor => (&peer_hello[..], &own_hello[..]),
    };
    let own_id = encode_id(me);

    let (peer_id, peer_id_bytes) = match role {
        Role::Dialer => {
            let mac = transcript_mac(secret, LABEL_DIALER, &[hello_d, hello_a, &own_id]);
            let mut auth = own_id.clone();
            auth.extend_from_slice(&mac.finalize().into_bytes());
            framed.send(Bytes::from(auth)).await?;
            let frame = match read_frame(&mut framed).await {
                Err(HandshakeError::Closed) => return Err(HandshakeError::Rejected),
                other => other?,
            };
            let (id_bytes, tag) = split_auth(&frame)?;
            transcript_mac(
                secret,
                LABEL_ACCEPTOR,
                &[hello_d, hello_a, &own_id, id_bytes],
            )
            .verify_slice(tag)
            .map_err(|_| HandshakeError::BadMac)?;
            let peer = decode_id(id_bytes).ok_or(HandshakeError::Malformed("replica id"))?;
            if peer == *me {
                return Err(HandshakeError::SelfConnection);
            }
            (peer, id_bytes.to_vec())
        }
        Role::Acceptor => {
            let frame = read_frame(&mut framed).await?;
            let (id_bytes, tag) = split_auth(&frame)?;
            // The MAC is checked before the id is even parsed: nothing from
            // an unauthenticated process is interpreted.
            transcript_mac(secret, LABEL_DIALER, &[hello_d, hello_a, id_bytes])
                .verify_slice(tag)
                .map_err(|_| HandshakeError::BadMac)?;
            let peer = decode_id(id_bytes).ok_or(HandshakeError::Malformed("replica id"))?;
            if peer == *me {
                return Err(HandshakeError::SelfConnection);
            }
            let mac = transcript_mac(
                secret,
                LABEL_ACCEPTOR,
                &[hello_d, hello_a, id_bytes, &own_id],
            );
            let mut auth = own_id.clone();
            auth.extend_from_slice(&mac.finalize().into_bytes());
            framed.send(Bytes::from(auth)).await?;
            (peer, id_bytes.to_vec())
        }
    };

    let (id_d, id_a, seal_dir, open_dir) = match role {
        Role::Dialer => (
            &own_id,
            &peer_id_bytes,
            DIRECTION_FROM_DIALER,
            DIRECTION_FROM_ACCEPTOR,
        ),
        Role::Acceptor => (
            &peer_id_bytes,
            &own_id,
            DIRECTION_FROM_ACCEPTOR,
            DIRECTION_FROM_DIALER,
        ),
    };
    let session_key = transcript_mac(secret, LABEL_SESSION, &[hello_d, hello_a, id_d, id_a])
        .finalize()
        .into_bytes();
    let key = HmacSha256::new_from_slice(&session_key)
        .map_err(|_| HandshakeError::Malformed("session key"))?;
    // Frames the peer sent right after its last handshake frame may already
    // be buffered.
    let read_buf = framed.into_parts().read_buf;
    Ok(Session {
        peer: peer_id,
        seal: FrameMac {
            key: key.clone(),
            direction: seal_dir,
            seq: 0,
        },
        open: FrameMac {
            key,
            direction: open_dir,
            seq: 0,
        },
        read_buf,
    })
}

async fn accept_loop(ctx: TaskCtx, listener: TcpListener) {
    let shared = &ctx.shared;
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        match Arc::clone(&shared.handshakes).try_acquire_owned() {
            Ok(permit) => ctx.spawn(inbound(ctx.clone(), stream, addr, permit)),
            Err(_) => refused(shared, addr, Role::Acceptor, &HandshakeError::Busy),
        }
    }
}

async fn inbound(ctx: TaskCtx, stream: TcpStream, addr: SocketAddr, permit: OwnedSemaphorePermit) {
    let shared = &ctx.shared;
    set_nodelay(&stream, addr);
    let handshake = tokio::time::timeout(shared.config.handshake_timeout, async {
        let mut conn = secure(shared, stream, Role::Acceptor, addr).await?;
        let session = handshake(
            &mut conn,
            Role::Acceptor,
            &shared.config.replica,
            &shared.secret,
        )
        .await?;
        Ok((conn, session))
    });
    let result = tokio::select! {
        () = shared.stop.cancelled() => return,
        result = handshake => result.unwrap_or(Err(HandshakeError::Timeout)),
    };
    drop(permit);
    match result {
        Ok((conn, session)) => {
            bump(&shared.counters.handshakes_ok);
            run_link(&ctx, conn, session, addr).await;
        }
        Err(error) => refused(shared, addr, Role::Acceptor, &error),
    }
}

enum DialError {
    Connect(io::Error),
    Handshake(HandshakeError),
}

async fn dial_loop(ctx: TaskCtx, addr: SocketAddr) {
    let shared = &ctx.shared;
    let config = &shared.config;
    let mut backoff = config.connect_backoff_min;
    loop {
        let attempt =
            async {
                let stream =
                    match tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr))
                        .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => return Err(DialError::Connect(error)),
                        Err(_) => {
                            return Err(DialError::Connect(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "connect timed out",
                            )));
                        }
                    };
                set_nodelay(&stream, addr);
                let handshake = async {
                    let mut conn = secure(shared, stream, Role::Dialer, addr).await?;
                    let session =
                        handshake(&mut conn, Role::Dialer, &config.replica, &shared.secret).await?;
                    Ok((conn, session))
                };
                match tokio::time::timeout(config.handshake_timeout, handshake).await {
                    Ok(Ok(connected)) => Ok(connected),
                    Ok(Err(error)) => Err(DialError::Handshake(error)),
                    Err(_) => Err(DialError::Handshake(HandshakeError::Timeout)),
                }
            };
        let result = tokio::select! {
            () = shared.stop.cancelled() => return,
            result = attempt => result,
        };
        match result {
            Ok((stream, session)) => {
                bump(&shared.counters.handshakes_ok);
                backoff = config.connect_backoff_min;
                run_link(&ctx, stream, session, addr).await;
            }
            Err(DialError::Connect(error)) => {
                bump(&shared.counters.connect_failures);
                tracing::debug!(%addr, %error, "connect failed");
            }
            Err(DialError::Handshake(error)) => refused(shared, addr, Role::Dialer, &error),
        }
        let pause = jittered(backoff);
        backoff = backoff.saturating_mul(2).min(config.connect_backoff_max);
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// `backoff` shortened by a random amount up to half, so that replicas
/// restarted together do not dial in lockstep.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    let extra = (half.as_nanos() * u128::from(random)) >> 32;
    half + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
}

fn set_nodelay(stream: &TcpStream, addr: SocketAddr) {
    // Writes are batched by hand; Nagle would only delay heartbeats.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%addr, %error, "cannot set TCP_NODELAY");
    }
}

/// Why a link ended.
enum LinkEnd {
    Eof,
    Read(io::Error),
    Write(io::Error),
    Oversized,
    BadMac,
    Idle,
    /// Nobody receives the events any more.
    Unheard,
}

/// Runs an authenticated connection until it ends, reporting the peer
/// connected first (if it is its first link) and lost last (if it was its
/// last).
async fn run_link(ctx: &TaskCtx, stream: Conn, session: Session, addr: SocketAddr) {
    let Session {
        peer,
        mut seal,
        mut open,
        read_buf,
    } = session;
    let shared = &ctx.shared;
    let (tx, mut rx) = mpsc::channel(shared.config.queue_len);
    let queued = Arc::new(AtomicUsize::new(0));
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let link = Link {
        conn,
        tx,
        queued: Arc::clone(&queued),
    };
    if !ctx.register(&peer, link).await {
        return;
    }
    tracing::debug!(%peer, %addr, "link up");
    let end = {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FramedRead::new(read_half, codec(shared.config.max_frame_bytes));
        *reader.read_buffer_mut() = read_buf;
        let read = read_loop(ctx, &peer, &mut reader, &mut open);
        let write = write_loop(shared, write_half, &mut rx, &mut seal, &queued);
        tokio::pin!(read, write);
        tokio::select! {
            end = &mut read => end,
            written = &mut write => match written {
                // Closing: what was queued is written and our side shut
                // down. Reading on until the peer closes too means the
                // socket is not reset with the peer's data unread.
                Ok(()) => read.await,
                Err(error) => LinkEnd::Write(error),
            },
        }
    };
    // Later sends to this peer fail over to another link or are counted
    // as unreachable, rather than queueing into a dead one.
    rx.close();
    let counters = &shared.counters;
    match end {
        LinkEnd::Eof => tracing::debug!(%peer, %addr, "link closed by the peer"),
        LinkEnd::Read(error) => tracing::debug!(%peer, %addr, %error, "link read failed"),
        LinkEnd::Write(error) => tracing::debug!(%peer, %addr, %error, "link write failed"),
        LinkEnd::Idle => tracing::debug!(%peer, %addr, "link idle, closed"),
        LinkEnd::Unheard => tracing::debug!(%peer, %addr, "transport dropped, link closed"),
        LinkEnd::Oversized => {
            bump(&counters.frames_oversized);
            tracing::warn!(%peer, %addr, "oversized frame, link closed");
        }
        LinkEnd::BadMac => {
            bump(&counters.frames_refused);
            tracing::warn!(%peer, %addr, "frame failed authentication, link closed");
        }
    }
    ctx.unregister(&peer, conn).await;
}

async fn read_loop(
    ctx: &TaskCtx,
    peer: &ReplicaId,
    reader: &mut FramedRead<ReadHalf<Conn>, LengthDelimitedCodec>,
    open: &mut FrameMac,
) -> LinkEnd {
    let counters = &ctx.shared.counters;
    let idle_timeout = ctx.shared.config.idle_timeout;
    // Buffered bytes of a frame still arriving, as of the last timeout: a
    // large frame on a slow link is progress, not idleness.
    let mut seen = reader.read_buffer().len();
    loop {
        let frame = match tokio::time::timeout(idle_timeout, reader.next()).await {
            Err(_) => {
                let buffered = reader.read_buffer().len();
                if buffered > seen {
                    seen = buffered;
                    continue;
                }
                return LinkEnd::Idle;
            }
            Ok(None) => return LinkEnd::Eof,
            Ok(Some(Err(error))) if is_oversized(&error) => return LinkEnd::Oversized,
            Ok(Some(Err(error))) => return LinkEnd::Read(error),
            Ok(Some(Ok(frame))) => frame,
        };
        seen = reader.read_buffer().len();
        bump(&counters.frames_received);
        add(&counters.bytes_received, LENGTH_LEN + frame.len());
        let Some(bytes) = open.open(frame) else {
            return LinkEnd::BadMac;
        };
        if bytes.is_empty() {
            continue;
        }
        let message = TransportEvent::Message {
            from: peer.clone(),
            bytes,
        };
        if ctx.events.send(message).await.is_err() {
            return LinkEnd::Unheard;
        }
    }
}

/// Writes queued messages, batching what is waiting into one flush, and a
/// keepalive when nothing was sent for a while. Returns `Ok` once the queue
/// is closed and drained.
async fn write_loop(
    shared: &Shared,
    write_half: WriteHalf<Conn>,
    rx: &mut mpsc::Receiver<Bytes>,
    seal: &mut FrameMac,
    queued: &AtomicUsize,
) -> io::Result<()> {
    let counters = &shared.counters;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, write_half);
    loop {
        match tokio::time::timeout(shared.config.keepalive_interval, rx.recv()).await {
            Ok(Some(bytes)) => {
                queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                write_frame(&mut out, seal, counters, &bytes).await?;
            }
            Ok(None) => {
                out.flush().await?;
                out.shutdown().await?;
                return Ok(());
            }
            Err(_) => write_frame(&mut out, seal, counters, &[]).await?,
        }
        while let Ok(bytes) = rx.try_recv() {
            queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            write_frame(&mut out, seal, counters, &bytes).await?;
        }
        out.flush().await?;
    }
}

async fn write_frame(
    out: &mut BufWriter<WriteHalf<Conn>>,
    seal: &mut FrameMac,
    counters: &Counters,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len() + TAG_LEN)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let tag = seal.seal(payload);
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(payload).await?;
    out.write_all(&tag).await?;
    bump(&counters.frames_sent);
    add(&counters.bytes_sent, FRAME_OVERHEAD + payload.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    const SECRET: &str = "a shared secret for tests";

    fn id(name: &str, nonce: u32) -> ReplicaId {
        ReplicaId::new(
            ReplicaName::new(name).unwrap(),
            Incarnation::new(1_764_000_000_000, nonce),
        )
    }

    fn config(replica: ReplicaId, secret: &str) -> TcpConfig {
        let mut config = TcpConfig::new(replica, "127.0.0.1:0".parse().unwrap(), secret);
        config.connect_backoff_min = Duration::from_millis(10);
        config.connect_backoff_max = Duration::from_millis(100);
        config.handshake_timeout = Duration::from_secs(1);
        config.close_timeout = Duration::from_secs(1);
        config
    }

    async fn bind(replica: ReplicaId, peers: &[SocketAddr]) -> TcpTransport {
        let config = config(replica, SECRET).with_peers(peers.iter().copied());
        TcpTransport::bind(config).await.unwrap()
    }

    async fn next(transport: &mut TcpTransport) -> TransportEvent {
        tokio::time::timeout(WAIT, transport.recv())
            .await
            .expect("no event in time")
            .expect("transport closed")
    }

    async fn quiet(transport: &mut TcpTransport, time: Duration) {
        if let Ok(event) = tokio::time::timeout(time, transport.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let start = tokio::time::Instant::now();
        while !condition() {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn message(from: &ReplicaId, bytes: &'static [u8]) -> TransportEvent {
        TransportEvent::Message {
            from: from.clone(),
            bytes: Bytes::from_static(bytes),
        }
    }

    /// Two transports, `a` dialing `b`, both reporting the other connected.
    async fn pair() -> (TcpTransport, ReplicaId, TcpTransport, ReplicaId) {
        let (ida, idb) = (id("a", 1), id("b", 1));
        let mut b = bind(idb.clone(), &[]).await;
        let mut a = bind(ida.clone(), &[b.local_addr()]).await;
        assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        (a, ida, b, idb)
    }

    /// Reads until the other side closes; what arrived.
    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        let read = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("connection not closed");
        got
    }

    fn with_timeout<F: Future>(future: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(WAIT, future)
    }

    #[tokio::test]
    async fn peers_connect_and_exchange_messages() {
        let (mut a, ida, mut b, idb) = pair().await;

        a.send(
            &Destination::Replica(idb.clone()),
            Bytes::from_static(b"a to b"),
        );
        assert_eq!(next(&mut b).await, message(&ida, b"a to b"));
        b.send(&Destination::All, Bytes::from_static(b"b to all"));
        assert_eq!(next(&mut a).await, message(&idb, b"b to all"));
        b.send(
            &Destination::Replica(ida.clone()),
            Bytes::from_static(b"b to a"),
        );
        assert_eq!(next(&mut a).await, message(&idb, b"b to a"));
        a.send(&Destination::All, Bytes::from_static(b"a to all"));
        assert_eq!(next(&mut b).await, message(&ida, b"a to all"));

        // A large message arrives intact and costs 20 bytes beyond its payload.
        let large: Bytes = (0..1_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let before = a.stats().bytes_sent;
        a.send(&Destination::Replica(idb.clone()), large.clone());
        match next(&mut b).await {
            TransportEvent::Message { from, bytes } => {
                assert_eq!(from, ida);
                assert_eq!(bytes, large);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            a.stats().bytes_sent - before,
            large.len() as u64 + FRAME_OVERHEAD as u64
        );

        // Nothing goes to an unknown replica; empty messages are refused.
        a.send(&Destination::Replica(id("c", 1)), Bytes::from_static(b"x"));
        a.send(&Destination::All, Bytes::new());
        let stats = a.stats();
        assert_eq!(stats.dropped_unreachable, 1);
        assert_eq!(stats.dropped_invalid, 1);
        assert_eq!(stats.handshakes_ok, 1);
        assert_eq!(stats.frames_sent, 3);
        assert_eq!(b.stats().frames_received, 3);

        a.close().await;
        assert_eq!(next(&mut b).await, TransportEvent::LinkLost(ida));
        assert!(with_timeout(a.recv()).await.unwrap().is_none());
        b.close().await;
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_nothing_reported() {
        let mut b = bind(id("b", 1), &[]).await;
        let config = config(id("a", 1), "another secret").with_peers([b.local_addr()]);
        let mut a = TcpTransport::bind(config).await.unwrap();
        eventually("an authentication failure", || b.stats().auth_failures >= 1).await;
        b.send(&Destination::All, Bytes::from_static(b"secret"));
        a.send(&Destination::All, Bytes::from_static(b"forged"));
        b.send(
            &Destination::Replica(id("a", 1)),
            Bytes::from_static(b"secret"),
        );
        a.send(
            &Destination::Replica(id("b", 1)),
            Bytes::from_static(b"forged"),
        );
        let (_, _) = tokio::join!(
            quiet(&mut a, Duration::from_millis(500)),
            quiet(&mut b, Duration::from_millis(500))
        );
        let (sa, sb) = (a.stats(), b.stats());
        assert!(sb.handshakes_refused >= 1, "{sb:?}");
        assert!(sa.handshakes_refused >= 1, "{sa:?}");
        assert_eq!((sa.handshakes_ok, sb.handshakes_ok), (0, 0));
        assert_eq!((sa.frames_sent, sb.frames_sent), (0, 0));
        assert_eq!((sa.dropped_unreachable, sb.dropped_unreachable), (1, 1));
    }

    #[tokio::test]
    async fn malformed_handshakes_are_refused_and_good_peers_still_served() {
        let mut config = config(id("b", 1), SECRET);
        config.handshake_timeout = Duration::from_millis(300);
        let mut b = TcpTransport::bind(config).await.unwrap();
        let addr = b.local_addr();
        let frame = |body: &[u8]| {
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(body);
            out
        };
        let mut wrong_version = MAGIC.to_vec();
        wrong_version.push(wire::VERSION.wrapping_add(1));
        wrong_version.extend_from_slice(&[7; CHALLENGE_LEN]);
        let mut truncated = frame(&wrong_version);
        truncated[LENGTH_LEN + MAGIC.len()] = wire::VERSION;
        truncated.truncate(12);
        let attempts: Vec<(Vec<u8>, bool)> = vec![
            (b"GET / HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(), false),
            (frame(b"hello, who is there?"), false),
            (vec![0xff; 4], false),
            (frame(&wrong_version), false),
            // Cut short, then the write side closed.
            (truncated.clone(), true),
            // Cut short, and left hanging until the handshake times out.
            (truncated, false),
        ];
        for (bytes, shutdown) in attempts {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            if shutdown {
                stream.shutdown().await.unwrap();
            }
            // An unauthenticated process gets the hello and nothing more.
            let got = read_to_close(&mut stream).await;
            assert!(got.len() <= LENGTH_LEN + HELLO_LEN, "{} bytes", got.len());
        }
        eventually("six refusals", || b.stats().handshakes_refused == 6).await;
        let stats = b.stats();
        assert_eq!(stats.version_mismatches, 1);
        assert_eq!(stats.frames_oversized, 2);
        assert_eq!(stats.auth_failures, 0);

        let ida = id("a", 1);
        let mut a = bind(ida.clone(), &[addr]).await;
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        assert_eq!(next(&mut a).await, TransportEvent::Connected(id("b", 1)));
        a.send(&Destination::All, Bytes::from_static(b"still here"));
        assert_eq!(next(&mut b).await, message(&ida, b"still here"));
    }

    #[tokio::test]
    async fn a_replayed_or_forged_frame_closes_the_link() {
        let mut b = bind(id("b", 1), &[]).await;
        let secret = HmacSha256::new_from_slice(SECRET.as_bytes()).unwrap();
        let me = id("raw", 1);
        let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
        let mut session = with_timeout(handshake(&mut stream, Role::Dialer, &me, &secret))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(session.peer, id("b", 1));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(me.clone()));

        let mut frame = ((2 + TAG_LEN) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(b"hi");
        frame.extend_from_slice(&session.seal.seal(b"hi"));
        stream.write_all(&frame).await.unwrap();
        assert_eq!(next(&mut b).await, message(&me, b"hi"));
        // The same frame again: its sequence number is past.
        stream.write_all(&frame).await.unwrap();
        assert_eq!(next(&mut b).await, TransportEvent::LinkLost(me.clone()));
        assert_eq!(b.stats().frames_refused, 1);

        // A frame with an altered payload.
        let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
        let mut session = with_timeout(handshake(&mut stream, Role::Dialer, &me, &secret))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next(&mut b).await, TransportEvent::Connected(me.clone()));
        let mut frame = ((2 + TAG_LEN) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(b"ho");
        frame.extend_from_slice(&session.seal.seal(b"hi"));
        stream.write_all(&frame).await.unwrap();
        assert_eq!(next(&mut b).await, TransportEvent::LinkLost(me));
        assert_eq!(b.stats().frames_refused, 2);
    }

    #[tokio::test]
    async fn a_restarted_peer_is_reconnected() {
        let (mut a, ida, mut b, idb) = pair().await;
        let addr = b.local_addr();
        b.close().await;
        drop(b);
        assert_eq!(next(&mut a).await, TransportEvent::LinkLost(idb));

        let restarted = id("b", 2);
        let mut config = config(restarted.clone(), SECRET);
        config.listen = addr;
        let mut b = with_timeout(async {
            loop {
                match TcpTransport::bind(config.clone()).await {
                    Ok(b) => break b,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            next(&mut a).await,
            TransportEvent::Connected(restarted.clone())
        );
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        a.send(
            &Destination::Replica(restarted),
            Bytes::from_static(b"welcome back"),
        );
        assert_eq!(next(&mut b).await, message(&ida, b"welcome back"));
    }

    #[tokio::test]
    async fn peers_dialing_each_other_are_reported_once() {
        let (ida, idb) = (id("a", 1), id("b", 1));
        let mut b = bind(idb.clone(), &[]).await;
        let mut a = bind(ida.clone(), &[b.local_addr()]).await;
        b.add_peer(a.local_addr()).unwrap();
        assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        eventually("two links each way", || {
            a.stats().handshakes_ok == 2 && b.stats().handshakes_ok == 2
        })
        .await;
        a.send(&Destination::All, Bytes::from_static(b"one"));
        assert_eq!(next(&mut b).await, message(&ida, b"one"));
        quiet(&mut b, Duration::from_millis(100)).await;
        quiet(&mut a, Duration::from_millis(100)).await;

        b.close().await;
        assert_eq!(next(&mut a).await, TransportEvent::LinkLost(idb));
        quiet(&mut a, Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let (ida, idb) = (id("a", 1), id("b", 1));
        let mut b = bind(idb.clone(), &[]).await;
        let mut config = config(ida.clone(), SECRET).with_peers([b.local_addr()]);
        config.queue_len = 2;
        let mut a = TcpTransport::bind(config).await.unwrap();
        assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        // On this single-threaded runtime the writer cannot run between
        // these sends: two fit, the rest are dropped.
        for _ in 0..100 {
            a.send(&Destination::Replica(idb.clone()), Bytes::from_static(b"m"));
        }
        assert_eq!(a.stats().dropped_full, 98);
        assert_eq!(next(&mut b).await, message(&ida, b"m"));
        assert_eq!(next(&mut b).await, message(&ida, b"m"));
        quiet(&mut b, Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn an_idle_peer_is_dropped_and_keepalives_keep_links_up() {
        let (ida, idb) = (id("a", 1), id("b", 1));
        let mut config_b = config(idb.clone(), SECRET);
        config_b.keepalive_interval = Duration::from_millis(20);
        config_b.idle_timeout = Duration::from_millis(100);
        let mut b = TcpTransport::bind(config_b).await.unwrap();
        let mut config_a = config(ida.clone(), SECRET).with_peers([b.local_addr()]);
        config_a.keepalive_interval = Duration::from_millis(20);
        config_a.idle_timeout = Duration::from_millis(100);
        let mut a = TcpTransport::bind(config_a).await.unwrap();
        assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        // Several idle timeouts pass without a message: keepalives hold.
        quiet(&mut a, Duration::from_millis(400)).await;
        assert!(b.stats().frames_received >= 5);

        // A raw peer that authenticates and then says nothing is dropped.
        let secret = HmacSha256::new_from_slice(SECRET.as_bytes()).unwrap();
        let raw = id("raw", 1);
        let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
        with_timeout(handshake(&mut stream, Role::Dialer, &raw, &secret))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next(&mut b).await, TransportEvent::Connected(raw.clone()));
        assert_eq!(next(&mut b).await, TransportEvent::LinkLost(raw));
    }

    #[tokio::test]
    async fn unusable_settings_are_refused() {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let refused = async |config: TcpConfig| {
            matches!(
                TcpTransport::bind(config).await,
                Err(TransportError::Config { .. })
            )
        };
        assert!(refused(TcpConfig::new(id("a", 1), listen, "")).await);
        let mut config = TcpConfig::new(id("a", 1), listen, SECRET);
        config.queue_len = 0;
        assert!(refused(config).await);
        let mut config = TcpConfig::new(id("a", 1), listen, SECRET);
        config.max_frame_bytes = 1024;
        assert!(refused(config).await);
        let mut config = TcpConfig::new(id("a", 1), listen, SECRET);
        config.idle_timeout = config.keepalive_interval;
        assert!(refused(config).await);
        assert!(!format!("{:?}", TcpConfig::new(id("a", 1), listen, SECRET)).contains(SECRET));
    }

    #[test]
    fn replica_ids_round_trip_and_junk_is_refused() {
        let long = "n".repeat(255);
        for replica in [id("a", 1), id(&long, u32::MAX)] {
            assert_eq!(decode_id(&encode_id(&replica)), Some(replica));
        }
        let bytes = encode_id(&id("node", 9));
        for cut in 0..bytes.len() {
            assert_eq!(decode_id(&bytes[..cut]), None);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_id(&longer), None);
        assert_eq!(decode_id(&[0; 13]), None, "empty name");
        assert_eq!(
            decode_id(&[2, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "not UTF-8"
        );
    }

    #[cfg(feature = "tls")]
    mod tls {
        use std::sync::Mutex;

        use tokio::io::AsyncWriteExt;
        use tokio::net::TcpListener;

        use super::*;
        use crate::transport::tls::{TlsConfig, TlsError};

        const MARKER: &[u8] = b"a presence nobody outside may read";

        fn fixture(file: &str) -> Vec<u8> {
            let path = format!("{}/tests/fixtures/tls/{file}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        }

        /// The cluster's authority, and a replica certificate signed by it
        /// (`cluster`) or by another authority (`other`).
        fn tls(cert: &str) -> TlsConfig {
            TlsConfig::from_pem(
                &fixture("cluster-ca.pem"),
                &fixture(&format!("{cert}-node.pem")),
                &fixture(&format!("{cert}-node.key")),
            )
            .unwrap()
        }

        fn tls_config(replica: ReplicaId, cert: Option<&str>) -> TcpConfig {
            let mut config = config(replica, SECRET);
            config.tls = cert.map(tls);
            config
        }

        /// Forwards one connection from its own address to `to`, recording
        /// every byte that crosses it, both ways.
        async fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = Arc::clone(&seen);
            tokio::spawn(async move {
                let (inbound, _) = listener.accept().await.unwrap();
                let outbound = TcpStream::connect(to).await.unwrap();
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                            mut to: tokio::net::tcp::OwnedWriteHalf,
                            record: Arc<Mutex<Vec<u8>>>| async move {
                    let mut buf = [0; 4096];
                    while let Ok(n @ 1..) = from.read(&mut buf).await {
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(
                    pipe(in_read, out_write, Arc::clone(&record)),
                    pipe(out_read, in_write, record),
                );
            });
            (addr, seen)
        }

        /// Sends the marker from a to b through a recording proxy; whether
        /// it crossed the wire readable.
        async fn marker_visible(cert: Option<&str>) -> bool {
            let (ida, idb) = (id("a", 1), id("b", 1));
            let mut b = TcpTransport::bind(tls_config(idb.clone(), cert))
                .await
                .unwrap();
            let (proxy, seen) = recording_proxy(b.local_addr()).await;
            let config = tls_config(ida.clone(), cert).with_peers([proxy]);
            let mut a = TcpTransport::bind(config).await.unwrap();
            assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
            assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
            a.send(&Destination::Replica(idb), Bytes::from_static(MARKER));
            assert_eq!(next(&mut b).await, message(&ida, MARKER));
            let seen = seen.lock().unwrap();
            seen.windows(MARKER.len()).any(|w| w == MARKER)
        }

        #[tokio::test]
        async fn with_tls_messages_cross_the_wire_encrypted() {
            assert!(
                marker_visible(None).await,
                "plain TCP carries payloads as they are"
            );
            assert!(
                !marker_visible(Some("cluster")).await,
                "TLS must hide payloads"
            );
        }

        #[tokio::test]
        async fn plain_peers_and_untrusted_certificates_are_refused() {
            let (ida, idb) = (id("a", 1), id("b", 1));
            let mut a = TcpTransport::bind(tls_config(ida, Some("cluster")))
                .await
                .unwrap();
            // b dials without TLS, then with a certificate of another
            // authority, then a's TLS dials b's plain listener: nothing
            // connects, and a counts each refusal.
            for cert in [None, Some("other")] {
                let config = tls_config(idb.clone(), cert).with_peers([a.local_addr()]);
                let mut b = TcpTransport::bind(config).await.unwrap();
                eventually("a refusing b", || a.stats().tls_failures >= 1).await;
                quiet(&mut b, Duration::from_millis(200)).await;
                b.close().await;
            }
            let b = TcpTransport::bind(tls_config(idb, None)).await.unwrap();
            a.add_peer(b.local_addr()).unwrap();
            eventually("a failing TLS towards b", || a.stats().tls_failures >= 3).await;
            quiet(&mut a, Duration::from_millis(200)).await;
            assert_eq!(a.stats().handshakes_ok, 0);
            assert_eq!(b.stats().handshakes_ok, 0);
        }

        #[test]
        fn unusable_pem_is_a_typed_error() {
            let (ca, cert, key) = (
                fixture("cluster-ca.pem"),
                fixture("cluster-node.pem"),
                fixture("cluster-node.key"),
            );
            let junk = b"not PEM at all".as_slice();
            let wrong_key = fixture("other-node.key");
            let check =
                |ca: &[u8], cert: &[u8], key: &[u8], expected: &dyn Fn(&TlsError) -> bool| {
                    match TlsConfig::from_pem(ca, cert, key) {
                        Err(TransportError::Tls(error)) => {
                            assert!(expected(&error), "unexpected {error:?}");
                            let detailed = matches!(error, TlsError::Missing(_))
                                || std::error::Error::source(&error).is_some();
                            assert!(detailed, "{error:?} lost its source");
                        }
                        other => panic!("expected a TLS error, got {other:?}"),
                    }
                };
            check(junk, &cert, &key, &|e| {
                matches!(e, TlsError::Missing("certificate authority"))
            });
            check(&ca, junk, &key, &|e| {
                matches!(e, TlsError::Missing("certificate"))
            });
            check(&ca, &cert, junk, &|e| {
                matches!(
                    e,
                    TlsError::Pem {
                        what: "private key",
                        ..
                    }
                )
            });
            check(&ca, &cert, &wrong_key, &|e| {
                matches!(e, TlsError::Rejected { .. })
            });
        }
    }
}
