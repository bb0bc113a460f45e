//! The counters of a [`NatsTransport`](super::NatsTransport): the public
//! [`NatsStats`] snapshot and the atomics its tasks bump.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of a [`NatsTransport`](super::NatsTransport) since it
/// connected, as [`TrackerMetrics::transport`](crate::TrackerMetrics::transport)
/// reports them in [`TransportStats::Nats`](crate::transport::TransportStats::Nats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStats {
    /// Whether the link to the broker is up now. While it is down every
    /// peer looks silent; peers are marked down only after `down_period`,
    /// as on the mesh.
    pub connected: bool,
    /// Times the link to the broker came up, the first time included.
    pub connects: u64,
    /// Times it went down.
    pub disconnects: u64,
    /// The server's `max_payload` when last read (before every message
    /// sent, so after every reconnect).
    pub max_payload: u64,
    /// NATS messages published (pieces of a large message count one each).
    pub messages_sent: u64,
    /// Their bytes: frames with headers and tags, without NATS's own
    /// protocol lines.
    pub bytes_sent: u64,
    /// NATS messages received on this replica's subscriptions.
    pub messages_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Protocol messages larger than the server's `max_payload` that went
    /// in pieces.
    pub messages_split: u64,
    /// Protocol messages put together again from pieces.
    pub messages_joined: u64,
    /// Pieces dropped: a gap in a sender's pieces, or over the limits of
    /// `max_message_bytes` and `max_reassembly_bytes`.
    pub pieces_dropped: u64,
    /// Messages dropped because this transport's queue was full (the
    /// broker link down or slow): the protocol catches up.
    pub dropped_full: u64,
    /// Messages the client refused or failed to publish (larger than the
    /// server allows after a reconnect, the connection closing).
    pub publish_failures: u64,
    /// Frames refused: not a frame, an unknown version, a subject that is
    /// not one of this cluster's.
    pub frames_malformed: u64,
    /// Frames whose MAC did not verify, or that carried none where one is
    /// required (or one where no secret is set).
    pub frames_unauthenticated: u64,
    /// Frames naming another sender than the replica token of their
    /// subject: someone publishing as another replica.
    pub frames_wrong_subject: u64,
    /// Frames with a sequence number already seen from their sender (a
    /// replay), or from an older incarnation than the one heard.
    pub frames_stale: u64,
    /// Catch-up requests the server answered with "no responders": the
    /// holder is gone, and another one is asked.
    pub no_responders: u64,
    /// Times the client's subscription buffer overflowed and messages
    /// were dropped (this replica too slow): the protocol catches up.
    pub slow_consumer_events: u64,
    /// Errors the server sent (permission violations among them).
    pub server_errors: u64,
    /// Peers forgotten because `max_peers` were known.
    pub peers_evicted: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connected: AtomicBool,
    pub(crate) connects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) max_payload: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_split: AtomicU64,
    pub(crate) messages_joined: AtomicU64,
    pub(crate) pieces_dropped: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) frames_malformed: AtomicU64,
    pub(crate) frames_unauthenticated: AtomicU64,
    pub(crate) frames_wrong_subject: AtomicU64,
    pub(crate) frames_stale: AtomicU64,
    pub(crate) no_responders: AtomicU64,
    pub(crate) slow_consumer_events: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) peers_evicted: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> NatsStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NatsStats {
            connected: self.connected.load(Ordering::Relaxed),
            connects: get(&self.connects),
            disconnects: get(&self.disconnects),
            max_payload: get(&self.max_payload),
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            messages_received: get(&self.messages_received),
            bytes_received: get(&self.bytes_received),
            messages_split: get(&self.messages_split),
            messages_joined: get(&self.messages_joined),
            pieces_dropped: get(&self.pieces_dropped),
            dropped_full: get(&self.dropped_full),
            publish_failures: get(&self.publish_failures),
            frames_malformed: get(&self.frames_malformed),
            frames_unauthenticated: get(&self.frames_unauthenticated),
            frames_wrong_subject: get(&self.frames_wrong_subject),
            frames_stale: get(&self.frames_stale),
            no_responders: get(&self.no_responders),
            slow_consumer_events: get(&self.slow_consumer_events),
            server_errors: get(&self.server_errors),
            peers_evicted: get(&self.peers_evicted),
        }
    }
}
