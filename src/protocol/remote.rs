//! What a replica knows of another: its liveness, how far it is held here,
//! who holds more of it, and the pieces of it in transit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::state::{Delta, PurgeReason, ReplicaId};

/// Where another replica stands, as seen from this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaStatus {
    /// Alive, and being caught up: its presences are hidden until its
    /// sub-state here reaches the counter it advertised.
    Joining,
    /// Alive and listed.
    Up,
    /// No sign of life lately: its presences are hidden, its entries kept.
    Down,
    /// Its entries are gone; a purge record stays.
    Purged(PurgeReason),
}

impl std::fmt::Display for ReplicaStatus {
    /// `joining`, `up`, `down`, or `purged (REASON)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaStatus::Joining => f.write_str("joining"),
            ReplicaStatus::Up => f.write_str("up"),
            ReplicaStatus::Down => f.write_str("down"),
            ReplicaStatus::Purged(reason) => write!(f, "purged ({reason})"),
        }
    }
}

impl ReplicaStatus {
    /// Dead for good: it left or a newer incarnation replaced it.
    pub(crate) fn is_dead(self) -> bool {
        matches!(
            self,
            ReplicaStatus::Purged(PurgeReason::Left | PurgeReason::Superseded)
        )
    }
}

#[derive(Clone)]
pub(crate) struct Remote<M> {
    pub(crate) status: ReplicaStatus,
    /// When `status` last changed.
    pub(crate) since: Duration,
    /// A stable hash of its id, how digests name it once a link knows it.
    pub(crate) hash: u32,
    /// Its greatest heartbeat number seen, and when it was produced as
    /// reckoned here (arrival time minus the age it came with).
    pub(crate) beat: u64,
    pub(crate) beat_at: Option<Duration>,
    /// The production time of its last heartbeat that counted as a sign of
    /// life.
    pub(crate) alive_at: Option<Duration>,
    /// When its last heartbeat came from itself, and the counter it said
    /// it had broadcast then.
    pub(crate) direct: Option<(Duration, u64)>,
    /// The heartbeat number relayed numbers are judged against: the last
    /// one heard from it directly (or the first one relayed), and when.
    pub(crate) anchor: Option<(u64, Duration)>,
    /// When a transport reported the link to it lost, until a heartbeat it
    /// produced after that arrives.
    pub(crate) lost_at: Option<Duration>,
    /// The counter to reach before it is shown (while joining).
    pub(crate) target: u64,
    /// It was purged (permdown) and came back: a whole sub-state is needed.
    pub(crate) readmit: bool,
    /// Replicas known to hold more of it than this one: their counter and
    /// since when they are known to be ahead.
    pub(crate) holders: BTreeMap<ReplicaId, (u64, Duration)>,
    pub(crate) request: Option<Request>,
    /// Holders already asked in vain since the last successful catch-up.
    pub(crate) tried: BTreeSet<ReplicaId>,
    /// Intervals that arrived before an earlier one: `from -> (to, delta,
    /// encoded bytes)`.
    pub(crate) buffer: BTreeMap<u64, (u64, Delta<M>, usize)>,
    /// The encoded bytes of what `buffer` holds.
    pub(crate) buffered_bytes: usize,
    /// No catch-up is asked for before then: an answer from the last
    /// holder was refused (it broke a limit here), so asking again at once
    /// would only repeat it.
    pub(crate) backoff_until: Option<Duration>,
}

impl<M> Remote<M> {
    pub(crate) fn new(hash: u32, now: Duration) -> Self {
        Self {
            status: ReplicaStatus::Down,
            since: now,
            hash,
            beat: 0,
            beat_at: None,
            alive_at: None,
            direct: None,
            anchor: None,
            lost_at: None,
            target: 0,
            readmit: false,
            holders: BTreeMap::new(),
            request: None,
            tried: BTreeSet::new(),
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            backoff_until: None,
        }
    }

    pub(crate) fn set_status(&mut self, status: ReplicaStatus, now: Duration) {
        self.status = status;
        self.since = now;
    }

    /// The last time it was known alive, or first heard of.
    pub(crate) fn last_alive(&self) -> Duration {
        self.alive_at.unwrap_or(self.since)
    }

    /// Forgets what is in transit about it.
    pub(crate) fn clear_transit(&mut self) {
        self.holders.clear();
        self.request = None;
        self.tried.clear();
        self.buffer.clear();
        self.buffered_bytes = 0;
    }

    /// Holds an interval that arrived before an earlier one.
    pub(crate) fn buffer_insert(&mut self, from: u64, to: u64, delta: Delta<M>, bytes: usize) {
        if let Some((.., old)) = self.buffer.insert(from, (to, delta, bytes)) {
            self.buffered_bytes -= old;
        }
        self.buffered_bytes += bytes;
    }

    /// Takes the held interval starting lowest, if it starts at or below
    /// `held`.
    pub(crate) fn buffer_take(&mut self, held: u64) -> Option<(u64, Delta<M>)> {
        let entry = self.buffer.first_entry().filter(|e| *e.key() <= held)?;
        let (to, delta, bytes) = entry.remove();
        self.buffered_bytes -= bytes;
        Some((to, delta))
    }
}

/// An outstanding catch-up request of one replica.
#[derive(Clone)]
pub(crate) struct Request {
    pub(crate) holder: ReplicaId,
    /// The request message it went in (see `Batch`).
    pub(crate) batch: u64,
    /// How far the holder said it holds: no answer may go further.
    pub(crate) claimed: u64,
    pub(crate) sent_at: Duration,
}

/// A catch-up request message for several replicas.
#[derive(Clone)]
pub(crate) struct Batch {
    pub(crate) holder: ReplicaId,
    pub(crate) replicas: BTreeSet<ReplicaId>,
    pub(crate) sent_at: Duration,
}

/// A catch-up answer arriving in pieces.
#[derive(Clone)]
pub(crate) struct Assembly {
    pub(crate) total: u64,
    pub(crate) pieces: BTreeMap<u64, Vec<u8>>,
}

impl Assembly {
    /// Adds a piece; true once every byte has arrived.
    pub(crate) fn add(&mut self, offset: u64, bytes: Vec<u8>) -> bool {
        self.pieces.insert(offset, bytes);
        let mut next = 0u64;
        for (&at, piece) in &self.pieces {
            if at > next {
                return false;
            }
            next = next.max(at + piece.len() as u64);
        }
        next >= self.total
    }

    /// The whole answer from its pieces, once [`Assembly::add`] said every
    /// byte arrived.
    pub(crate) fn whole(&self) -> Vec<u8> {
        let mut whole = Vec::with_capacity(self.total as usize);
        for (&at, piece) in &self.pieces {
            let skip = (whole.len() as u64).saturating_sub(at) as usize;
            if skip < piece.len() {
                whole.extend_from_slice(&piece[skip..]);
            }
        }
        whole.truncate(self.total as usize);
        whole
    }
}

/// A hash of a replica id that is the same in every process and build:
/// FNV-1a over the name, the start time and the nonce.
pub(crate) fn id_hash(id: &ReplicaId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(id.name().as_str().as_bytes());
    eat(&[0xff]);
    eat(&id.incarnation().started_ms().to_le_bytes());
    eat(&id.incarnation().nonce().to_le_bytes());
    h
}

/// A replica's share of a view hash: its id's hash and the counter held,
/// mixed (SplitMix64's finaliser) so that shares add up without cancelling.
pub(crate) fn view_term(hash: u32, held: u64) -> u64 {
    let mut z = (u64::from(hash) << 32 ^ held.rotate_left(17)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
