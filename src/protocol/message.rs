//! The messages replicas exchange, as data. Their bytes are laid out in
//! `src/wire/message.rs`.

use crate::state::{Delta, ReplicaId};

/// What kind a message is: metrics are kept per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// Liveness and a digest of what the sender holds; every period, to
    /// every peer.
    Heartbeat,
    /// An interval of the sender's own changes; every period with changes,
    /// to all.
    Interval,
    /// A request for what changed of some replicas since given counters.
    CatchUpRequest,
    /// A piece of the answer to a catch-up request.
    CatchUpReply,
}

impl MessageKind {
    /// Every kind, in wire order.
    pub const ALL: [MessageKind; 4] = [
        MessageKind::Heartbeat,
        MessageKind::Interval,
        MessageKind::CatchUpRequest,
        MessageKind::CatchUpReply,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kind's name as metrics and logs label it: `heartbeat`,
    /// `interval`, `catchup_request`, `catchup_reply`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Interval => "interval",
            MessageKind::CatchUpRequest => "catchup_request",
            MessageKind::CatchUpReply => "catchup_reply",
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded message and who sent it: `None` when the message leaves
/// its sender implied, the authenticated peer of the link it came over.
#[derive(Debug)]
pub(crate) struct Envelope<M> {
    pub(crate) sender: Option<ReplicaId>,
    pub(crate) message: Message<M>,
}

#[derive(Debug)]
pub(crate) enum Message<M> {
    Heartbeat(Heartbeat),
    /// The sender's changes with counters in `(from, to]`: its sub-state at
    /// `from` merged with this is its sub-state at `to`.
    Interval {
        from: u64,
        to: u64,
        delta: Delta<M>,
    },
    /// "Send me what changed of each replica after its counter": one
    /// request for several replicas, answered by one delta.
    CatchUpRequest {
        /// The requester's number for it, echoed by the answer.
        batch: u64,
        items: Vec<(ReplicaId, u64)>,
    },
    CatchUpReply(ReplyChunk),
}

impl<M> Message<M> {
    pub(crate) fn kind(&self) -> MessageKind {
        match self {
            Message::Heartbeat(_) => MessageKind::Heartbeat,
            Message::Interval { .. } => MessageKind::Interval,
            Message::CatchUpRequest { .. } => MessageKind::CatchUpRequest,
            Message::CatchUpReply(_) => MessageKind::CatchUpReply,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    /// The sender's heartbeat number, bumped every period.
    pub(crate) beat: u64,
    /// The greatest counter of the sender's own changes it has broadcast.
    pub(crate) counter: u64,
    /// The sender is shutting down: drop its presences now.
    pub(crate) leaving: bool,
    /// The entries are the sender's whole view, and it asks for an answer:
    /// what the receiver holds beyond them.
    pub(crate) digest: bool,
    /// The entries answer the receiver's digest.
    pub(crate) answer: bool,
    /// A hash of the sender's view: the replicas it shows or is catching
    /// up, with the counters it holds of them.
    pub(crate) view: u32,
    /// Replicas the sender has not heard from lately, by hash: relay their
    /// heartbeats.
    pub(crate) wants: Vec<u32>,
    /// What the sender knows of other replicas: relays, its digest or its
    /// answer to the receiver's.
    pub(crate) entries: Vec<DigestEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DigestEntry {
    pub(crate) id: EntryId,
    /// The replica's greatest heartbeat number the sender has seen.
    pub(crate) beat: u64,
    /// How long ago, as the sender reckons it, that heartbeat was produced.
    pub(crate) age_ms: u64,
    pub(crate) state: EntryState,
}

/// A replica named in full, or by a 32-bit hash of its id where the
/// receiver is known to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryId {
    Full(ReplicaId),
    Hash(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryState {
    /// The sender holds none of it.
    NotAhead,
    /// It left or was replaced: dead for good.
    Dead,
    /// The sender holds its sub-state up to this counter.
    Counter(u64),
}

/// One piece of an encoded catch-up answer: the answer to request `batch`
/// is a delta, encoded, `total` bytes long; this piece holds its bytes
/// from `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplyChunk {
    pub(crate) batch: u64,
    pub(crate) total: u64,
    pub(crate) offset: u64,
    pub(crate) bytes: Vec<u8>,
}
