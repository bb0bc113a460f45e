//! The counters of a [`TcpTransport`](super::TcpTransport): the public
//! [`TcpStats`] snapshot and the atomics its tasks bump.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`TcpTransport`](super::TcpTransport) since it was bound.
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
    /// Of `handshakes_refused`: connections refused at once because their
    /// address, or every address, had too many handshakes in progress.
    pub handshakes_busy: u64,
    /// Of `handshakes_refused`: a dialer naming a secret this replica does
    /// not hold (or no longer holds).
    pub unknown_keys: u64,
    /// Authenticated connections closed at once because the peer already
    /// had two links, or `max_links` were up.
    pub links_refused: u64,
    /// Links closed because the secret that authenticated them was removed.
    pub links_rekeyed: u64,
    /// Refusals not logged because more than ten came within a second.
    pub refusals_not_logged: u64,
    /// Of `handshakes_refused`: a peer whose certificate does not name the
    /// replica it claimed (with `TlsConfig::with_replica_names`). Always 0
    /// without the `tls` feature.
    pub names_not_certified: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) frames_sent: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    pub(super) handshakes_ok: AtomicU64,
    pub(super) handshakes_refused: AtomicU64,
    pub(super) auth_failures: AtomicU64,
    pub(super) version_mismatches: AtomicU64,
    pub(super) tls_failures: AtomicU64,
    pub(super) frames_refused: AtomicU64,
    pub(super) frames_oversized: AtomicU64,
    pub(super) dropped_full: AtomicU64,
    pub(super) dropped_unreachable: AtomicU64,
    pub(super) dropped_invalid: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) handshakes_busy: AtomicU64,
    pub(super) unknown_keys: AtomicU64,
    pub(super) links_refused: AtomicU64,
    pub(super) links_rekeyed: AtomicU64,
    pub(super) refusals_not_logged: AtomicU64,
    pub(super) names_not_certified: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

pub(super) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl Counters {
    pub(super) fn snapshot(&self) -> TcpStats {
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
            handshakes_busy: get(&self.handshakes_busy),
            unknown_keys: get(&self.unknown_keys),
            links_refused: get(&self.links_refused),
            links_rekeyed: get(&self.links_rekeyed),
            refusals_not_logged: get(&self.refusals_not_logged),
            names_not_certified: get(&self.names_not_certified),
        }
    }
}
