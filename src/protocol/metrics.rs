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
    /// Of those, messages that named another replica than the
    /// authenticated peer they came from.
    pub wrong_sender: u64,
    /// Relayed heartbeat numbers ignored because they ran further ahead
    /// than the time since the last one allows.
    pub implausible_beats: u64,
    /// Entries whose meta did not decode (another application version).
    pub undecodable_metas: u64,
    /// Entries received whose topic or key broke this replica's limits (a
    /// peer with larger limits): not held, the rest arrived.
    pub refused_entries: u64,
    /// Intervals dropped because too many were already waiting for an
    /// earlier one, or they started too far ahead.
    pub intervals_dropped: u64,
    /// Catch-up requests not answered without encoding anything: repeated
    /// before the last answer could have been applied, or asking for what
    /// was already found too large to send.
    pub catchups_declined: u64,
    /// Catch-up answers encoded and found larger than
    /// `max_catchup_bytes`: not sent, and not encoded again until the
    /// replica changes.
    pub catchups_too_large: u64,
    /// Catch-up answers refused here (undecodable, or over a limit of this
    /// replica); the next request backs off.
    pub catchups_refused: u64,
    /// Catch-up pieces dropped because no request of this replica asked
    /// their sender for them.
    pub unrequested_pieces: u64,
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
