//! How replicas reach each other: a [`Transport`] carries the protocol's
//! messages and reports links coming and going.
//!
//! Two are built in: [`MemoryNetwork`] for many replicas in one process (and
//! for tests, with cuts and partitions), and [`tcp`], an authenticated TCP
//! mesh, encrypted with TLS under the `tls` feature (module `tls`). Sockets live
//! here and nowhere else.

pub mod memory;
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::ReplicaId;
use crate::protocol::Destination;

pub use memory::{MemoryNetwork, MemoryTransport};

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
    /// The settings are not usable.
    #[error("invalid transport settings: {0}")]
    Config(&'static str),
    /// The TLS settings are not usable (a certificate or key that does not
    /// parse or match).
    #[cfg(feature = "tls")]
    #[error("invalid TLS settings: {0}")]
    Tls(String),
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

    /// Sends what is queued (waiting a bounded time), then closes every
    /// link.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}
