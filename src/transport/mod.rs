//! How replicas reach each other: a [`Transport`] carries the protocol's
//! messages and reports links coming and going.
//!
//! Two are built in: [`MemoryNetwork`] for many replicas in one process (and
//! for tests, with cuts and partitions), and [`tcp`], an authenticated TCP
//! mesh, encrypted with TLS under the `tls` feature (module `tls`). The
//! `nats` feature adds a third, module `nats`: the replicas meet on a NATS
//! broker. Sockets live here and nowhere else.

pub mod memory;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
pub mod tcp;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The byte buffer messages travel in, re-exported from the `bytes` crate.
pub use bytes::Bytes;

use crate::ReplicaId;
use crate::protocol::Destination;

pub use memory::{MemoryNetwork, MemoryTransport};

/// A transport's own counters, as [`TrackerMetrics::transport`](crate::TrackerMetrics::transport)
/// reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportStats {
    /// The TCP mesh's: traffic, handshakes, refusals, drops.
    Tcp(tcp::TcpStats),
    /// The NATS transport's: the broker link, traffic, refusals, drops.
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    Nats(nats::NatsStats),
}

/// Reads a transport's counters from any thread while the transport runs
/// (a [`Tracker`](crate::Tracker) holds one, the transport itself being
/// owned by its driver task).
#[derive(Clone)]
pub struct StatsReader(Arc<dyn Fn() -> TransportStats + Send + Sync>);

impl StatsReader {
    /// A reader that calls `read` for every reading.
    pub fn new(read: impl Fn() -> TransportStats + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// The counters now.
    pub fn read(&self) -> TransportStats {
        (self.0)()
    }
}

impl fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StatsReader").field(&self.read()).finish()
    }
}

/// What a transport reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// An authenticated link to a peer is up, for the first time or again.
    Connected(ReplicaId),
    /// A message from an authenticated peer.
    Message {
        /// The peer it came from.
        from: ReplicaId,
        /// The message.
        bytes: Bytes,
    },
    /// The link to a peer is lost. Reported after everything that arrived
    /// on that link was reported.
    LinkLost(ReplicaId),
}

/// Why a transport could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// This transport does not do that.
    #[error("this transport does not support {0}")]
    Unsupported(&'static str),
    /// A socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A setting is not usable.
    #[error("invalid transport setting {setting}: it {requirement}")]
    Config {
        /// The setting's name, as its field is called.
        setting: &'static str,
        /// What the setting must be.
        requirement: &'static str,
    },
    /// The TLS settings are not usable (a certificate or key that does not
    /// parse or match).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The NATS transport could not start: credentials refused, no server
    /// reachable, TLS failing, subjects this replica may not use.
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
}

/// Carries messages between replicas.
///
/// `send` never waits: a transport keeps a bounded queue per peer and drops
/// what does not fit (the protocol notices the gap and catches up) rather
/// than buffering without limit. Only authenticated peers' messages are
/// reported.
pub trait Transport: Send + 'static {
    /// Queues a message for one replica or for every connected peer.
    fn send(&mut self, to: &Destination, bytes: Bytes);

    /// The next event; `None` once the transport is closed.
    fn recv(&mut self) -> impl Future<Output = Option<TransportEvent>> + Send;

    /// Starts connecting to one more peer address.
    ///
    /// # Errors
    ///
    /// [`TransportError::Unsupported`] for transports without addresses.
    fn add_peer(&mut self, address: SocketAddr) -> Result<(), TransportError> {
        let _ = address;
        Err(TransportError::Unsupported("peer addresses"))
    }

    /// A reader of this transport's counters, if it keeps any. The
    /// default keeps none.
    fn stats_reader(&self) -> Option<StatsReader> {
        None
    }

    /// Sends what is queued (waiting a bounded time), then closes every
    /// link.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}
