//! What a replica counts about its traffic.

use super::message::MessageKind;

/// Messages and bytes of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindCounters {
    /// Messages.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Counters a replica keeps about its protocol traffic. A message to all
/// peers counts once among the sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    sent: [KindCounters; 4],
    received: [KindCounters; 4],
    /// Catch-up requests sent.
    pub catchups_requested: u64,
    /// Catch-up requests answered.
    pub catchups_served: u64,
    /// Of those, the ones answered with a whole sub-state because the
    /// history did not reach back far enough.
    pub full_transfers_served: u64,
    /// Messages refused: malformed, from a stale incarnation's data, or
    /// over a limit.
    pub rejected: u64,
    /// Entries whose meta did not decode (another application version).
    pub undecodable_metas: u64,
    /// Intervals dropped because too many were already waiting for an
    /// earlier one.
    pub intervals_dropped: u64,
}

impl Metrics {
    /// What was sent of one kind.
    pub fn sent(&self, kind: MessageKind) -> KindCounters {
        self.sent[kind.index()]
    }

    /// What was received of one kind, refused messages excluded.
    pub fn received(&self, kind: MessageKind) -> KindCounters {
        self.received[kind.index()]
    }

    pub(crate) fn count_sent(&mut self, kind: MessageKind, bytes: usize) {
        let c = &mut self.sent[kind.index()];
        c.messages += 1;
        c.bytes += bytes as u64;
    }

    pub(crate) fn count_received(&mut self, kind: MessageKind, bytes: usize) {
        let c = &mut self.received[kind.index()];
        c.messages += 1;
        c.bytes += bytes as u64;
    }
}
