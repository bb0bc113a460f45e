//! A NATS broker transport (the `nats` feature), for clusters that outgrow
//! a TCP mesh: many or short-lived replicas, replicas that cannot dial each
//! other, hundreds of nodes.
//!
//! Every replica keeps one connection to a NATS server (or a NATS
//! cluster, failing over between its nodes) and the protocol runs over it
//! unchanged. Tested against Debian's `nats-server` 2.9.10 with
//! `async-nats` 0.51.
//!
//! # Subjects
//!
//! Under a prefix (default `attendance`) and a cluster name (default
//! `default`), with `X` the [`subject_token`] of replica X's name:
//!
//! | subject | published by | subscribed by | carries |
//! |---|---|---|---|
//! | `<prefix>.<cluster>.bcast.X` | X | everyone (`….bcast.*`) | X's intervals and heartbeats, in the order X sent them |
//! | `<prefix>.<cluster>.rpc.Y.X` | X | Y (`….rpc.Y.*`) | X's catch-up requests to Y, with the reply subject `….inbox.X.Y` |
//! | `<prefix>.<cluster>.inbox.Y.X` | X | Y (`….inbox.Y.*`) | X's catch-up answers to Y, and heartbeats for Y alone |
//!
//! Intervals and heartbeats share one subject per sender, so a heartbeat
//! never overtakes the interval it summarises (NATS keeps one publisher's
//! order). The protocol addresses heartbeats to each peer; those with the
//! same bytes for every peer (nearly all of them) go out once on the
//! broadcast subject, the others (relays, digests) to each recipient's
//! inbox, so that no replica receives what is meant for another. A
//! receiver reads its broadcast subscription before the others, so a
//! heartbeat in its inbox does not overtake an interval sent before it
//! either. When a request finds no one subscribed (the holder is gone),
//! the server answers "no responders" on the reply subject at once; the
//! transport reports the holder's link lost, so the protocol asks another
//! holder now instead of after `catchup_timeout`.
//!
//! The last token of every subject names its sender, so a NATS server can
//! enforce who publishes as whom: replica X's user may publish only on
//! `….bcast.X`, `….rpc.*.X` and `….inbox.*.X` (`docs/operations.md` has
//! the permissions to grant).
//!
//! # Frames
//!
//! Every NATS message is a frame around a protocol message:
//!
//! ```text
//! frame  = version (1), flags, sender, seq (u64 BE), [piece], payload, [tag]
//! flags  = bit 0 tag, 1 piece, 2 probe (the start-up check, to itself)
//! sender = name length (u8) ‖ name ‖ started_ms (u64 BE) ‖ nonce (u32 BE)
//! piece  = index (u16 BE), count (u16 BE), total length (u32 BE)
//! tag    = the first 16 bytes of HMAC-SHA256(key, subject ‖ 0 ‖ frame before the tag)
//! key    = HMAC-SHA256(cluster secret, "attn-nats\0")
//! ```
//!
//! `seq` counts the sender's frames per subject kind (broadcast, request,
//! answer) from 1; a receiver drops a frame whose number it has already
//! passed (a replay or a duplicate). A message larger than the server's
//! `max_payload` (read again before every message, so after every
//! reconnect) goes in pieces with consecutive numbers; a gap drops the
//! message and the protocol fetches what it misses. A frame with an empty
//! payload is a hello: a replica that knows no peer sends one every second
//! so that replicas starting together find each other.
//!
//! # Liveness
//!
//! The broker hides peers: no connection to a peer comes or goes. A peer
//! is reported [`Connected`](crate::transport::TransportEvent::Connected)
//! when its first frame arrives, and lost only when a request to it finds
//! no responders, when a newer incarnation of its name speaks, or when it
//! is forgotten to make room (`max_peers`). Otherwise liveness comes from
//! heartbeats, as on the mesh: a silent peer is down after `down_period`.
//! This replica's own link to the broker going down is counted
//! ([`NatsStats::connected`], [`NatsStats::disconnects`]) and logged, not
//! taken as every peer failing: the client reconnects (with
//! `reconnect_backoff_min` to `reconnect_backoff_max` between attempts)
//! and re-subscribes, and catch-ups repair what was lost meanwhile.
//!
//! [`Transport::send`] never waits: the transport queues at most
//! `queue_len` messages and `queue_bytes` bytes for the broker and drops
//! the rest (the client blocks once its own queue is full, while the
//! link is down); closing waits at most `close_timeout`.
//!
//! # Trust
//!
//! Anyone the broker admits to the cluster's subjects can read and publish
//! there. With the cluster secret (the default), a replica accepts only
//! frames whose MAC verifies, so a client without the secret can neither
//! speak as a replica, nor alter, redirect to another subject or replay a
//! message (within a receiver's life); it can still read presences (use
//! TLS to the server and NATS permissions for that) and drop messages.
//! Every replica also checks that the sender a frame names matches the
//! token of the subject it came on, and the protocol that each message
//! speaks as that sender. So, with per-replica NATS permissions, a member
//! holding the secret can speak only as its own replica.
//!
//! Without the MAC ([`NatsConfig::without_message_auth`]) the broker is the
//! only gate: any client allowed to publish on `….bcast.X` is believed to
//! be X, and nothing detects a message altered by a client or server on
//! the way. Per-replica permissions then still keep each user to its own
//! replica name.
//!
//! ```no_run
//! use attendance::Tracker;
//! use attendance::transport::nats::{NatsAuth, NatsConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = NatsConfig::new(["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"])
//!     .with_auth(NatsAuth::UserPassword { user: "node-1".into(), password: "…".into() });
//! let tracker: Tracker<String> = Tracker::builder("node-1")
//!     .nats(nats)
//!     .secret(std::env::var("ATTENDANCE_SECRET")?)
//!     .start()
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod broker;
mod config;
mod frame;
mod probe;
mod stats;
mod subject;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{NatsAuth, NatsConfig, NatsError, NatsTls};
pub use stats::NatsStats;
pub use subject::subject_token;

use super::{StatsReader, Transport, TransportError, TransportEvent, TransportStats};
use crate::ReplicaId;
use crate::protocol::{Destination, MessageKind};
use broker::{Outgoing, Reader, Shared};
use stats::bump;

/// Events waiting for [`Transport::recv`]; beyond it, the reader waits and
/// the client's subscription buffers fill.
const EVENT_QUEUE_LEN: usize = 1024;

/// Messages addressed to single replicas held back, to be sent once to
/// all of them when their bytes are the same, before they go anyway.
const MAX_PENDING: usize = 4096;

/// A NATS broker transport; see the [module docs](self) for the subjects,
/// the frames and what holds when.
///
/// ```no_run
/// use attendance::transport::nats::{NatsConfig, NatsTransport};
/// use attendance::transport::{Transport, TransportEvent};
/// use attendance::{Incarnation, ReplicaId, ReplicaName};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let me = ReplicaId::new(ReplicaName::new("node-1")?, Incarnation::new(1_764_000_000_000, 7));
/// let config = NatsConfig::new(["nats://127.0.0.1:4222"])
///     .with_secret("a random cluster secret of 32+ bytes");
/// let mut transport = NatsTransport::connect(config, me).await?;
/// while let Some(event) = transport.recv().await {
///     if let TransportEvent::Message { from, bytes } = event {
///         println!("{from}: {} bytes", bytes.len());
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct NatsTransport {
    shared: Arc<Shared>,
    client: async_nats::Client,
    /// `None` once closed.
    queue: Option<mpsc::Sender<Outgoing>>,
    events: mpsc::Receiver<TransportEvent>,
    /// Messages for single replicas not handed to the writer yet: each
    /// distinct message and whom it goes to, in the order first sent.
    pending: Vec<(Bytes, Vec<ReplicaId>)>,
    pending_count: usize,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl NatsTransport {
    /// Checks the settings, connects to a server, subscribes, and checks
    /// that this replica may publish and subscribe on its subjects (a
    /// second connection with the same credentials and this one send each
    /// other a probe on each), so that wrong credentials or permissions
    /// fail here rather than leave a replica running alone.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for unusable settings (such as no
    /// secret while the MAC is on), [`TransportError::Nats`] when the
    /// server refuses the credentials, cannot be reached within
    /// `connect_timeout`, fails TLS, or does not let this replica use its
    /// subjects.
    pub async fn connect(config: NatsConfig, replica: ReplicaId) -> Result<Self, TransportError> {
        config.validate()?;
        let key = match config.secret() {
            Some(secret) => Some(frame::derive_key(secret).ok_or(TransportError::Config {
                setting: "secret",
                requirement: "must key HMAC-SHA256",
            })?),
            None => None,
        };
        let queue_len = config.queue_len;
        let shared = Arc::new(Shared::new(replica, config, key));
        let client = broker::connect(&shared).await?;
        let subs = broker::subscribe(&shared, &client).await?;
        // The server must hold these subscriptions before the start-up
        // check's probes come (a flush is answered once it has read them),
        // or a probe sent to them on another connection may be missed.
        let _ = tokio::time::timeout(shared.config.connect_timeout, client.flush()).await;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE_LEN);
        let (probe_tx, probed) = watch::channel([false; 3]);
        let mut nonce = [0u8; 16];
        // Without randomness the nonce stays zero; the probe still names
        // this incarnation as its sender.
        let _ = getrandom::fill(&mut nonce);
        let nonce = Bytes::copy_from_slice(&nonce);
        let reader = Reader::new(Arc::clone(&shared), events_tx, probe_tx, nonce.clone());
        let reader = tokio::spawn(reader.run(subs));
        let (queue, rx) = mpsc::channel(queue_len);
        let writer = tokio::spawn(broker::write_loop(Arc::clone(&shared), client.clone(), rx));
        let transport = Self {
            shared,
            client,
            queue: Some(queue),
            events,
            pending: Vec::new(),
            pending_count: 0,
            writer,
            reader,
        };
        // On failure the transport is dropped, and its subscriptions with it.
        probe::check(&transport.shared, &nonce, probed, || {
            transport.enqueue(Outgoing::Probe(nonce.clone()));
        })
        .await?;
        // Let peers know at once; the writer repeats it while none is known.
        transport.enqueue(Outgoing::Broadcast(Bytes::new()));
        tracing::debug!(replica = %transport.shared.me, subject = %transport.shared.subjects.broadcast(), "NATS transport ready");
        Ok(transport)
    }

    /// The counters so far.
    pub fn stats(&self) -> NatsStats {
        self.shared.counters.snapshot()
    }

    /// This replica's subject token.
    pub fn token(&self) -> &str {
        self.shared.subjects.my_token()
    }

    fn enqueue(&self, item: Outgoing) {
        let Some(queue) = &self.queue else { return };
        let shared = &self.shared;
        let len = item.len();
        // `send` takes `&mut self`: this is the only producer, so the check
        // and the increment cannot race with another send.
        if shared.queued.load(Ordering::Relaxed) >= shared.config.queue_bytes {
            bump(&shared.counters.dropped_full);
            return;
        }
        shared.queued.fetch_add(len, Ordering::Relaxed);
        if queue.try_send(item).is_err() {
            shared.queued.fetch_sub(len, Ordering::Relaxed);
            bump(&shared.counters.dropped_full);
        }
    }

    /// Holds a message for `peer` back: the same bytes for every peer
    /// become one broadcast. A peer's messages keep their order: the
    /// message joins an earlier identical one only if nothing held after
    /// that one goes to the same peer.
    fn hold(&mut self, peer: &ReplicaId, bytes: Bytes) {
        let same = self.pending.iter().rposition(|(b, _)| *b == bytes);
        let joinable = same.filter(|&i| {
            self.pending[i + 1..]
                .iter()
                .all(|(_, to)| !to.iter().any(|p| p.name() == peer.name()))
        });
        match joinable {
            Some(i) => self.pending[i].1.push(peer.clone()),
            None => self.pending.push((bytes, vec![peer.clone()])),
        }
        self.pending_count += 1;
        if self.pending_count >= MAX_PENDING {
            self.release();
        }
    }

    /// Hands the held messages to the writer: once on the broadcast
    /// subject when they go to every peer known, else to each recipient's
    /// inbox.
    fn release(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_count = 0;
        let known: Vec<_> = self.shared.connected().keys().cloned().collect();
        for (bytes, to) in pending {
            let names: BTreeSet<_> = to.iter().map(|p| p.name().clone()).collect();
            if !known.is_empty() && known.iter().all(|n| names.contains(n)) {
                self.enqueue(Outgoing::Broadcast(bytes));
                continue;
            }
            for name in names {
                let to = subject_token(&name);
                self.enqueue(Outgoing::Direct {
                    to,
                    bytes: bytes.clone(),
                });
            }
        }
    }
}

/// The kind of a protocol message, from its second byte (the layout in
/// `protocol::codec`: version, kind, …): the transport sends requests
/// and answers on their own subjects.
fn kind_of(bytes: &[u8]) -> Option<MessageKind> {
    match bytes.get(1)? {
        2 => Some(MessageKind::Heartbeat),
        3 => Some(MessageKind::Interval),
        4 => Some(MessageKind::CatchUpRequest),
        5 => Some(MessageKind::CatchUpReply),
        _ => None,
    }
}

impl Transport for NatsTransport {
    fn send(&mut self, to: &Destination, bytes: Bytes) {
        if bytes.is_empty() || bytes.len() > self.shared.config.max_message_bytes {
            bump(&self.shared.counters.publish_failures);
            tracing::debug!(
                len = bytes.len(),
                "message empty or too large to send, dropped"
            );
            return;
        }
        match (to, kind_of(&bytes)) {
            (Destination::All, _) => {
                self.release();
                self.enqueue(Outgoing::Broadcast(bytes));
            }
            (Destination::Replica(peer), Some(MessageKind::CatchUpRequest)) => {
                let holder = subject_token(peer.name());
                self.enqueue(Outgoing::Request { holder, bytes });
            }
            (Destination::Replica(peer), Some(MessageKind::CatchUpReply)) => {
                let to = subject_token(peer.name());
                self.enqueue(Outgoing::Direct { to, bytes });
            }
            (Destination::Replica(peer), _) => self.hold(peer, bytes),
        }
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        // The runtime asks for the next event once it has sent everything
        // one step of the protocol produced: what is held goes out now.
        self.release();
        self.events.recv().await
    }

    fn stats_reader(&self) -> Option<StatsReader> {
        let shared = Arc::clone(&self.shared);
        Some(StatsReader::new(move || {
            TransportStats::Nats(shared.counters.snapshot())
        }))
    }

    async fn close(&mut self) {
        self.release();
        // Dropping the queue's sender lets the writer publish what it holds
        // and end.
        if self.queue.take().is_none() {
            return;
        }
        let timeout = self.shared.config.close_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let _ = tokio::time::timeout_at(deadline, &mut self.writer).await;
        let _ = tokio::time::timeout_at(deadline, self.client.flush()).await;
        self.writer.abort();
        self.reader.abort();
        self.events.close();
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("replica", &self.shared.me)
            .field("subject", &self.shared.subjects.broadcast())
            .field("closed", &self.queue.is_none())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::kind_of;
    use crate::protocol::{Config, Destination, MessageKind, Node};
    use crate::{Incarnation, ReplicaId, ReplicaName, State};

    fn id(name: &str) -> ReplicaId {
        ReplicaId::new(ReplicaName::new(name).unwrap(), Incarnation::new(1, 1))
    }

    /// The kinds the transport reads from the bytes are the kinds the
    /// protocol says it sent: a catch-up is provoked by losing an interval.
    #[test]
    fn the_kind_read_from_the_bytes_is_the_kind_sent() {
        let config = Config::default();
        let mut a: Node<String> = Node::new(State::new(id("a")), config.clone()).unwrap();
        let mut b: Node<String> = Node::new(State::new(id("b")), config.clone()).unwrap();
        a.peer_connected(Duration::ZERO, id("b"));
        b.peer_connected(Duration::ZERO, id("a"));
        a.track("t", "k", "m".into()).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut now = Duration::ZERO;
        for round in 0..6 {
            a.handle_timeout(now);
            b.handle_timeout(now);
            let mut moved = true;
            while moved {
                moved = false;
                while let Some(t) = a.poll_transmit() {
                    moved = true;
                    assert_eq!(kind_of(&t.bytes), Some(t.kind));
                    seen.insert(t.kind);
                    // The first interval is lost: b catches up.
                    if round == 0 && t.destination == Destination::All {
                        continue;
                    }
                    let _ = b.handle_message(now, &id("a"), &t.bytes);
                }
                while let Some(t) = b.poll_transmit() {
                    moved = true;
                    assert_eq!(kind_of(&t.bytes), Some(t.kind));
                    seen.insert(t.kind);
                    let _ = a.handle_message(now, &id("b"), &t.bytes);
                }
            }
            now += config.broadcast_period;
        }
        assert_eq!(seen.len(), MessageKind::ALL.len(), "{seen:?}");
        assert_eq!(b.state().count("t"), 1);
    }
}
