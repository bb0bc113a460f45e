//! One replica's replication protocol as a state machine: no I/O, no clock.
//!
//! A [`Node`] owns a replica's [`State`] and decides what to tell peers and
//! when. Everything that happens to it is an input with the current time:
//! a local mutation ([`Node::track`] and friends), a message from a peer
//! ([`Node::handle_message`]), a timer ([`Node::handle_timeout`]), a peer
//! connecting ([`Node::peer_connected`]) or a link reported lost
//! ([`Node::link_lost`]). What it wants done comes out of queues: messages
//! to send ([`Node::poll_transmit`]), events to publish
//! ([`Node::poll_event`]), and when to wake it next ([`Node::poll_timeout`]).
//! Time is a [`Duration`] since any origin the caller keeps fixed.
//!
//! The same inputs give the same outputs: nothing depends on hash-map order
//! or on the system clock, so a seeded simulator replays a run exactly. The
//! runtime drives it with tokio; `docs/protocol.md` describes the messages,
//! the windows and why replicas converge.
//!
//! ```
//! use std::time::Duration;
//! use attendance::protocol::{Config, Destination, Node};
//! use attendance::{Incarnation, ReplicaId, ReplicaName, State};
//!
//! let id = |name: &str| ReplicaId::new(ReplicaName::new(name).unwrap(), Incarnation::new(1, 7));
//! let config = Config::default();
//! let mut a: Node<String> = Node::new(State::new(id("a")), config.clone()).unwrap();
//! let mut b: Node<String> = Node::new(State::new(id("b")), config.clone()).unwrap();
//! a.peer_connected(Duration::ZERO, id("b"));
//! b.peer_connected(Duration::ZERO, id("a"));
//! a.track("room:1", "alice", "web".to_string()).unwrap();
//!
//! // A tiny network: deliver everything, advance time a period at a time.
//! fn step(now: Duration, from: &mut Node<String>, to: &mut Node<String>) {
//!     from.handle_timeout(now);
//!     while let Some(t) = from.poll_transmit() {
//!         to.handle_message(now, from.id(), &t.bytes).unwrap();
//!     }
//! }
//! let mut now = Duration::ZERO;
//! for _ in 0..4 {
//!     step(now, &mut a, &mut b);
//!     step(now, &mut b, &mut a);
//!     now += config.broadcast_period;
//! }
//! assert_eq!(b.state().count("room:1"), 1);
//! ```

mod config;
pub(crate) mod message;
mod metrics;
mod remote;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

pub use config::{Config, ConfigError};
pub use message::MessageKind;
pub use metrics::{KindCounters, Metrics};
pub use remote::ReplicaStatus;

use crate::state::{
    Delta, Diff, Incarnation, Meta, PresenceId, PurgeReason, ReplicaId, State, StateError,
    encoded_meta_len,
};
use crate::wire::{self, WireError};
use message::{DigestEntry, EntryId, EntryState, Envelope, Heartbeat, Message, ReplyChunk};
use remote::{Assembly, Remote, Request, id_hash};

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Every connected peer.
    All,
    /// One replica.
    Replica(ReplicaId),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    /// Where to.
    pub destination: Destination,
    /// What kind of message it is.
    pub kind: MessageKind,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

/// Something for the application to know.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event<M> {
    /// The lists changed.
    Diff(Diff<M>),
    /// A replica is shown: alive and caught up.
    ReplicaUp(ReplicaId),
    /// A replica went silent: its presences are hidden.
    ReplicaDown(ReplicaId),
    /// A replica's entries were dropped for good or until it comes back.
    ReplicaPurged(ReplicaId, PurgeReason),
    /// A newer incarnation of this replica's name appeared elsewhere, so
    /// this one moved above it: its presences have new ids. The lists did
    /// not change.
    Reincarnated {
        /// The new id of this replica.
        replica: ReplicaId,
        /// Each live presence's old id and new one.
        renamed: Vec<(PresenceId, PresenceId)>,
    },
    /// Another process keeps running under this replica's name: it has
    /// been re-incarnated above three times within `down_period`. This
    /// replica stops re-incarnating; its presences are no longer believed
    /// by peers.
    NameConflict(ReplicaId),
}

/// Why a message was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The bytes are not a message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The message breaks a limit of the state.
    #[error(transparent)]
    State(#[from] StateError),
    /// The message is well-formed but says something impossible.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// The message names another replica than the authenticated peer it
    /// came from as its sender.
    #[error("message names another replica than its authenticated sender")]
    WrongSender,
}

/// Changes of this replica not broadcast yet: the counters `(from, to]`.
#[derive(Clone)]
struct Chunk<M> {
    from: u64,
    to: u64,
    delta: Delta<M>,
    /// An upper estimate of its encoded size.
    bytes: usize,
}

/// What the last heartbeat from a peer said it knows.
#[derive(Clone, Default)]
struct Link {
    /// The replicas it named.
    mentioned: BTreeSet<ReplicaId>,
    /// The counters it said it holds.
    counters: BTreeMap<ReplicaId, u64>,
    /// When the link was reported lost before anything was heard of the
    /// peer: kept until the peer is heard of (through a relay), so that the
    /// report still counts then.
    lost_unknown: Option<Duration>,
    /// The newer incarnation of its name the peer speaks as, and since
    /// when.
    speaks_as: Option<(ReplicaId, Duration)>,
    /// When it moved to a newer incarnation, within the last `down_period`.
    moves: Vec<Duration>,
    /// Replicas it introduced in the current period, and when that began.
    introductions: Option<(Duration, usize)>,
}

/// How a heartbeat number reached this replica.
#[derive(Clone, Copy)]
enum Heard {
    /// From the replica itself, over its authenticated link.
    Directly,
    /// Relayed by another replica, this many milliseconds old.
    Relayed(u64),
}

/// The most times a link's peer may move to a newer incarnation of its name
/// within `down_period`: one more than a replica moves before it reports a
/// name conflict.
const MAX_MOVES: usize = 4;

/// The most replicas one link may introduce per period: those not known
/// here yet. The rest are taken up from later heartbeats.
const MAX_INTRODUCTIONS: usize = 64;

/// The fewest bytes one presence takes in an encoded sub-state (a topic
/// index, a one-byte key, a one-byte meta and two counter steps): a lower
/// bound that sizes an answer before encoding it.
const MIN_ENTRY_BYTES: usize = 6;

/// Bytes of a message around its payload, kept free when splitting.
const ENVELOPE_MARGIN: usize = 1024;

/// One replica's protocol. See the [module docs](self).
#[derive(Clone)]
pub struct Node<M> {
    state: State<M>,
    config: Config,
    beat: u64,
    /// The greatest own counter broadcast.
    broadcast: u64,
    pending: Vec<Chunk<M>>,
    remotes: BTreeMap<ReplicaId, Remote<M>>,
    /// Digest hashes of the replicas known here; `None` when two collide.
    hashes: BTreeMap<u32, Option<ReplicaId>>,
    links: BTreeMap<ReplicaId, Link>,
    next_tick: Option<Duration>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event<M>>,
    metrics: Metrics,
    reincarnations: VecDeque<Duration>,
    conflict: bool,
    /// Catch-up answers sent lately, per requester and replica: a request
    /// repeated before its answer could have been applied is not answered
    /// twice.
    served: BTreeMap<(ReplicaId, ReplicaId), Served>,
    /// Answers found too large to send: per replica, from which counter
    /// and at which counter held. Not encoded again, nor any from an
    /// earlier counter, until more of the replica is held.
    oversized: BTreeMap<ReplicaId, (u64, u64)>,
    /// The latest time an input came with.
    now: Duration,
}

/// A catch-up answer sent: from which counter to which, and when.
#[derive(Clone)]
struct Served {
    to: u64,
    at: Duration,
}

impl<M: Meta> std::fmt::Debug for Node<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("replica", self.state.replica())
            .field("beat", &self.beat)
            .field("broadcast", &self.broadcast)
            .field("remotes", &self.remotes.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl<M: Meta> Node<M> {
    /// A node driving `state`. Its first [`Node::handle_timeout`] sends the
    /// first heartbeats.
    ///
    /// # Errors
    ///
    /// When the configuration does not validate.
    pub fn new(state: State<M>, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let broadcast = state.counter();
        let mut hashes = BTreeMap::new();
        hashes.insert(id_hash(state.replica()), Some(state.replica().clone()));
        Ok(Self {
            state,
            config,
            beat: 0,
            broadcast,
            pending: Vec::new(),
            remotes: BTreeMap::new(),
            hashes,
            links: BTreeMap::new(),
            next_tick: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            metrics: Metrics::default(),
            reincarnations: VecDeque::new(),
            conflict: false,
            served: BTreeMap::new(),
            oversized: BTreeMap::new(),
            now: Duration::ZERO,
        })
    }

    /// The replicated state, to query.
    pub fn state(&self) -> &State<M> {
        &self.state
    }

    /// This replica.
    pub fn id(&self) -> &ReplicaId {
        self.state.replica()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The traffic counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The other replicas known here and where they stand, in id order.
    pub fn replicas(&self) -> impl Iterator<Item = (&ReplicaId, ReplicaStatus)> {
        self.remotes.iter().map(|(id, r)| (id, r.status))
    }

    /// The status of one replica, `None` if unknown here.
    pub fn status(&self, replica: &ReplicaId) -> Option<ReplicaStatus> {
        self.remotes.get(replica).map(|r| r.status)
    }

    /// How many out-of-order intervals and catch-up pieces are held,
    /// across all replicas.
    pub fn buffered(&self) -> usize {
        self.remotes
            .values()
            .map(|r| r.buffer.len() + r.assembly.as_ref().map_or(0, |a| a.pieces.len()))
            .sum()
    }

    /// The bytes of what [`Node::buffered`] counts: at most
    /// `max_buffered_bytes` of intervals, plus the pieces of the catch-up
    /// answers being put together (one per replica, each at most twice
    /// `max_catchup_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        self.remotes
            .values()
            .map(|r| {
                let pieces = r
                    .assembly
                    .as_ref()
                    .map_or(0, |a| a.pieces.values().map(Vec::len).sum());
                r.buffered_bytes + pieces
            })
            .sum()
    }

    // --- local mutations -------------------------------------------------

    /// Tracks a presence of this replica; it is broadcast with the next
    /// period's changes. The local diff comes out of [`Node::poll_event`].
    ///
    /// # Errors
    ///
    /// As [`State::track`]; nothing changes then.
    pub fn track(&mut self, topic: &str, key: &str, meta: M) -> Result<PresenceId, StateError> {
        let size = topic.len() + key.len() + encoded_meta_len(&meta)?;
        let (id, change) = self.state.track(topic, key, meta)?;
        let (delta, diff) = change.into_parts();
        self.record(delta, diff, size);
        Ok(id)
    }

    /// Replaces the meta of a presence of this replica.
    ///
    /// # Errors
    ///
    /// As [`State::update`]; nothing changes then.
    pub fn update(&mut self, id: &PresenceId, meta: M) -> Result<(), StateError> {
        let size = encoded_meta_len(&meta)?;
        let change = self.state.update(id, meta)?;
        let (delta, diff) = change.into_parts();
        let size = size + delta.topics.iter().map(|t| t.as_str().len()).sum::<usize>() + 256;
        self.record(delta, diff, size);
        Ok(())
    }

    /// Untracks a presence of this replica.
    ///
    /// # Errors
    ///
    /// As [`State::untrack`]; nothing changes then.
    pub fn untrack(&mut self, id: &PresenceId) -> Result<(), StateError> {
        self.untrack_many(std::slice::from_ref(id))
    }

    /// Untracks several presences of this replica at once (a connection
    /// closing).
    ///
    /// # Errors
    ///
    /// As [`State::untrack_many`]; nothing changes then.
    pub fn untrack_many(&mut self, ids: &[PresenceId]) -> Result<(), StateError> {
        let change = self.state.untrack_many(ids)?;
        let (delta, diff) = change.into_parts();
        self.record(delta, diff, 32 * ids.len());
        Ok(())
    }

    /// Queues a local change: its delta joins the pending interval, its
    /// diff goes to the application.
    fn record(&mut self, delta: Delta<M>, diff: Diff<M>, size: usize) {
        self.publish(diff);
        let to = self.state.counter();
        if delta
            .context(self.id())
            .is_some_and(|c| c.len() > self.config.max_interval_span)
        {
            // One change wider than an interval may be (untracking a very
            // large batch at once): peers fetch it with a catch-up when the
            // next heartbeat shows the counter.
            self.flush();
            self.broadcast = to;
            return;
        }
        let limit = (self.config.max_message_bytes - ENVELOPE_MARGIN) / 2;
        let size = size + 16;
        let span = self.config.max_interval_span;
        match self.pending.last_mut() {
            Some(chunk) if chunk.bytes + size <= limit && to - chunk.from <= span => {
                chunk.delta.join(delta);
                chunk.to = to;
                chunk.bytes += size;
            }
            last => {
                let from = last.map_or(self.broadcast, |c| c.to);
                self.pending.push(Chunk {
                    from,
                    to,
                    delta,
                    bytes: size,
                });
            }
        }
    }

    // --- inputs ------------------------------------------------------------

    /// Runs what is due at `now`: the periodic broadcast and heartbeats,
    /// down and permdown decisions, catch-up retries.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let period = self.config.broadcast_period;
        if self.next_tick.is_none_or(|t| now >= t) {
            self.flush();
            self.beat += 1;
            let peers: Vec<ReplicaId> = self.links.keys().cloned().collect();
            for peer in peers {
                self.send_heartbeat(now, &peer, false);
            }
            let next = self.next_tick.map_or(now, |t| t + period);
            self.next_tick = Some(if next > now { next } else { now + period });
        }
        self.check_liveness(now);
        self.check_requests(now);
        self.request_catchups(now);
        let timeout = self.config.catchup_timeout;
        self.served
            .retain(|_, s| now.saturating_sub(s.at) < timeout);
        let oversized = std::mem::take(&mut self.oversized);
        self.oversized = oversized
            .into_iter()
            .filter(|(id, (_, at))| self.held(id) == *at)
            .collect();
    }

    /// When [`Node::handle_timeout`] should run next: the next period, or
    /// an earlier deadline (a peer going down, a request timing out).
    pub fn poll_timeout(&self) -> Duration {
        let three = self.config.broadcast_period * 3;
        let mut next = self.next_tick.unwrap_or(Duration::ZERO);
        for r in self.remotes.values() {
            let deadline = match r.status {
                ReplicaStatus::Up | ReplicaStatus::Joining => {
                    let silent = r.last_alive() + self.config.down_period;
                    r.lost_at.map_or(silent, |lost| silent.min(lost + three))
                }
                ReplicaStatus::Down => r.last_alive() + self.config.permdown_period,
                ReplicaStatus::Purged(_) => r.since + self.config.tombstone_ttl,
            };
            next = next.min(deadline);
            if let Some(t) = r.backoff_until
                && t > self.now
            {
                next = next.min(t);
            }
            match &r.request {
                Some(req) => next = next.min(req.sent_at + self.config.catchup_timeout),
                // A third party ahead is asked a period after it said so.
                None => {
                    for (_, seen) in r.holders.values() {
                        let due = *seen + self.config.broadcast_period;
                        if due > self.now {
                            next = next.min(due);
                        }
                    }
                }
            }
        }
        next
    }

    /// A transport connected to `peer` (again): heartbeats go to it from
    /// now on, and one goes at once.
    pub fn peer_connected(&mut self, now: Duration, peer: ReplicaId) {
        if &peer == self.id() {
            return;
        }
        self.links.insert(peer.clone(), Link::default());
        if self.next_tick.is_some() {
            self.send_heartbeat(now, &peer, false);
        }
    }

    /// `peer` is no longer a peer: no more heartbeats go to it.
    pub fn remove_peer(&mut self, peer: &ReplicaId) {
        self.links.remove(peer);
    }

    /// The transport lost its link to `peer`. Unless a heartbeat `peer`
    /// produced after now arrives (directly or relayed) within three
    /// periods, `peer` is considered down then.
    pub fn link_lost(&mut self, now: Duration, peer: &ReplicaId) {
        match self.remotes.get_mut(peer) {
            Some(r) => {
                r.lost_at.get_or_insert(now);
            }
            None => {
                if let Some(link) = self.links.get_mut(peer) {
                    link.lost_unknown.get_or_insert(now);
                }
            }
        }
        // What `peer` holds cannot be fetched now: ask other holders.
        for r in self.remotes.values_mut() {
            r.holders.remove(peer);
            if r.request.as_ref().is_some_and(|q| &q.holder == peer) {
                r.request = None;
                r.assembly = None;
                r.tried.insert(peer.clone());
            }
        }
        self.request_catchups(now);
    }

    /// Leaves the cluster: broadcasts what is pending and tells every peer
    /// to drop this replica's presences now. Send the transmits, then stop
    /// driving this node.
    pub fn leave(&mut self, now: Duration) {
        self.flush();
        let peers: Vec<ReplicaId> = self.links.keys().cloned().collect();
        for peer in peers {
            self.send_heartbeat(now, &peer, true);
        }
    }

    /// A message that arrived over the link to `from`, the peer the
    /// transport authenticated.
    ///
    /// The message must speak as `from`: its sender must carry `from`'s
    /// name, at `from`'s incarnation or a newer one (a peer that moved
    /// above a newer incarnation of its name keeps its link). What it says
    /// about other replicas is hearsay: it can hasten suspicion of a silent
    /// replica, never purge one.
    ///
    /// # Errors
    ///
    /// When the bytes are not a valid message, the message speaks for
    /// another replica ([`ProtocolError::WrongSender`]), or what it carries
    /// breaks a limit; it is counted in [`Metrics::rejected`] and nothing
    /// changes.
    pub fn handle_message(
        &mut self,
        now: Duration,
        from: &ReplicaId,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        self.now = self.now.max(now);
        let envelope: Envelope<M> =
            match wire::message::decode(bytes, self.config.max_message_bytes) {
                Ok(e) => e,
                Err(e) => {
                    self.metrics.rejected += 1;
                    return Err(e.into());
                }
            };
        let Envelope { sender, message } = envelope;
        if sender.name() != from.name()
            || sender.incarnation() < from.incarnation()
            || !self.may_speak_as(now, from, &sender)
        {
            self.metrics.rejected += 1;
            self.metrics.wrong_sender += 1;
            return Err(ProtocolError::WrongSender);
        }
        self.metrics.count_received(message.kind(), bytes.len());
        if &sender == self.id() {
            return Ok(());
        }
        if sender.name() == self.id().name() {
            if sender.incarnation() > self.id().incarnation() {
                self.superseded(now, sender.incarnation());
            }
            return Ok(());
        }
        if self.is_stale(&sender) {
            return Ok(());
        }
        let result = match message {
            Message::Heartbeat(hb) => {
                self.on_heartbeat(now, from, sender, hb);
                Ok(())
            }
            Message::Interval {
                from: start,
                to,
                delta,
            } => self.on_interval(now, &sender, (start, to), delta, bytes.len()),
            Message::CatchUpRequest { replica, since } => {
                self.on_request(now, from, &replica, since);
                Ok(())
            }
            Message::CatchUpReply(chunk) => self.on_reply(now, &sender, chunk),
        };
        if result.is_err() {
            self.metrics.rejected += 1;
        }
        self.request_catchups(now);
        result
    }

    /// Whether the peer authenticated as `link` may speak as `sender`: its
    /// own id, or a newer incarnation of its name (it moved above a newer
    /// incarnation of its name), never back, and at most
    /// [`MAX_MOVES`] moves per `down_period` (a replica that keeps moving
    /// reports a name conflict after three), so that a member cannot mint
    /// incarnations to fill tables.
    fn may_speak_as(&mut self, now: Duration, link: &ReplicaId, sender: &ReplicaId) -> bool {
        if sender == link {
            return true;
        }
        let down = self.config.down_period;
        let link = self.links.entry(link.clone()).or_default();
        if let Some((current, _)) = &link.speaks_as {
            if current == sender {
                return true;
            }
            if current > sender {
                return false;
            }
        }
        link.moves.retain(|at| now.saturating_sub(*at) < down);
        if link.moves.len() >= MAX_MOVES {
            return false;
        }
        link.moves.push(now);
        link.speaks_as = Some((sender.clone(), now));
        true
    }

    // --- outputs -----------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<M>> {
        self.events.pop_front()
    }

    fn send(&mut self, destination: Destination, message: &Message<M>) {
        match wire::message::encode(self.state.replica(), message) {
            Ok(bytes) => {
                self.metrics.count_sent(message.kind(), bytes.len());
                self.transmits.push_back(Transmit {
                    destination,
                    kind: message.kind(),
                    bytes,
                });
            }
            // Only a meta that stopped encoding can get here; the state
            // checked every meta when it was tracked.
            Err(_) => self.metrics.rejected += 1,
        }
    }

    fn publish(&mut self, diff: Diff<M>) {
        self.metrics.undecodable_metas += diff.undecodable();
        self.metrics.refused_entries += diff.refused();
        if !diff.is_empty() {
            self.events.push_back(Event::Diff(diff));
        }
    }

    // --- broadcast and heartbeats -----------------------------------------

    fn flush(&mut self) {
        for chunk in std::mem::take(&mut self.pending) {
            let message = Message::Interval {
                from: chunk.from,
                to: chunk.to,
                delta: chunk.delta,
            };
            self.send(Destination::All, &message);
            self.broadcast = chunk.to;
        }
    }

    fn send_heartbeat(&mut self, now: Duration, peer: &ReplicaId, leaving: bool) {
        let empty = Link::default();
        let link = self.links.get(peer).unwrap_or(&empty);
        let mut entries = Vec::with_capacity(self.remotes.len());
        for (id, r) in &self.remotes {
            if id == peer {
                continue;
            }
            // A peer always hears of newer incarnations of its own name, so
            // that one restarted with a clock behind moves above them.
            let successor = id.name() == peer.name() && id > peer;
            let state = match r.status {
                ReplicaStatus::Purged(_) if r.status.is_dead() => {
                    // Spread for a while; those who miss it find it down.
                    if !successor && now.saturating_sub(r.since) >= self.config.down_period {
                        continue;
                    }
                    EntryState::Dead
                }
                ReplicaStatus::Purged(_) if successor => EntryState::NotAhead,
                ReplicaStatus::Purged(_) => continue,
                _ => {
                    let held = self.held(id);
                    let known = link.counters.get(id).copied();
                    if held > 0 && known.is_none_or(|k| held > k) {
                        EntryState::Counter(held)
                    } else {
                        EntryState::NotAhead
                    }
                }
            };
            let age = r
                .beat_at
                .map_or(u64::from(u32::MAX), |t| millis(now.saturating_sub(t)));
            entries.push(DigestEntry {
                id: if link.mentioned.contains(id) {
                    EntryId::Hash(r.hash)
                } else {
                    EntryId::Full(id.clone())
                },
                beat: r.beat,
                age_ms: age,
                state,
            });
        }
        // Past max_message_bytes (thousands of replicas under a small
        // limit), a different window of the entries goes every period.
        let budget = self.config.max_message_bytes - ENVELOPE_MARGIN;
        let mut size: usize = entries.iter().map(entry_bytes).sum();
        if size > budget {
            let start = usize::try_from(self.beat).unwrap_or(0) % entries.len();
            entries.rotate_left(start);
            while size > budget {
                let Some(last) = entries.pop() else { break };
                size -= entry_bytes(&last);
            }
        }
        let hb = Heartbeat {
            beat: self.beat,
            counter: self.broadcast,
            leaving,
            entries,
        };
        self.send(Destination::Replica(peer.clone()), &Message::Heartbeat(hb));
    }

    // --- receiving ---------------------------------------------------------

    fn on_heartbeat(&mut self, now: Duration, link: &ReplicaId, sender: ReplicaId, hb: Heartbeat) {
        if hb.leaving {
            self.purge(now, &sender, PurgeReason::Left);
            return;
        }
        if !self.learn(now, &sender) {
            return;
        }
        // What the peer knows is kept per authenticated link, whatever
        // incarnation it speaks as.
        self.links.entry(link.clone()).or_default();
        if let Some(r) = self.remotes.get_mut(&sender) {
            r.direct = Some((now, hb.counter));
        }
        self.observe_beat(now, &sender, hb.beat, Heard::Directly, Some(hb.counter));
        self.note_holder(now, &sender, &sender, Some(hb.counter));
        let mut mentioned = BTreeSet::new();
        // Introductions are budgeted per link and period, so that many
        // heartbeats in a period do not add up.
        let period = self.config.broadcast_period;
        let (window, mut introduced) = match self.links.get(link).and_then(|l| l.introductions) {
            Some((at, n)) if now.saturating_sub(at) < period => (at, n),
            _ => (now, 0),
        };
        for entry in hb.entries {
            let id = match entry.id {
                EntryId::Full(id) => id,
                EntryId::Hash(h) => match self.hashes.get(&h) {
                    Some(Some(id)) => id.clone(),
                    _ => continue,
                },
            };
            if id.name() == self.id().name() {
                if id.incarnation() > self.id().incarnation() {
                    self.superseded(now, id.incarnation());
                }
                continue;
            }
            if self.is_stale(&id) {
                continue;
            }
            if entry.state == EntryState::Dead {
                self.suspect(now, &id);
                continue;
            }
            let fresh = entry.age_ms < millis(self.config.broadcast_period * 2);
            // A replica first heard of through a third party is only taken
            // up on fresh news of it, and only a few new ones a heartbeat,
            // so that made-up ids cost little and fill nothing.
            let known = self.remotes.contains_key(&id)
                || (fresh
                    && introduced < MAX_INTRODUCTIONS
                    && !self.has_live_predecessor(now, &id)
                    && {
                        introduced += 1;
                        self.learn(now, &id)
                    });
            if !known {
                continue;
            }
            let advertised = match entry.state {
                EntryState::Counter(c) => Some(c),
                _ => None,
            };
            if let (Some(c), Some(link)) = (advertised, self.links.get_mut(link)) {
                let known = link.counters.entry(id.clone()).or_insert(c);
                *known = (*known).max(c);
            }
            mentioned.insert(id.clone());
            self.observe_beat(
                now,
                &id,
                entry.beat,
                Heard::Relayed(entry.age_ms),
                advertised,
            );
            self.note_holder(now, &id, &sender, advertised);
        }
        if let Some(link) = self.links.get_mut(link) {
            link.introductions = Some((window, introduced));
            link.counters.retain(|id, _| mentioned.contains(id));
            link.mentioned = mentioned;
        }
    }

    fn on_interval(
        &mut self,
        now: Duration,
        sender: &ReplicaId,
        (from, to): (u64, u64),
        delta: Delta<M>,
        size: usize,
    ) -> Result<(), ProtocolError> {
        if from >= to {
            return Err(ProtocolError::Invalid("an interval must not be empty"));
        }
        if to - from > self.config.max_interval_span {
            return Err(ProtocolError::Invalid(
                "an interval spans more than max_interval_span counters",
            ));
        }
        let within = delta.parts.iter().all(|p| {
            &p.replica == sender
                && p.context.min().is_none_or(|lo| lo > from)
                && p.context.max() <= to
        });
        if !within {
            return Err(ProtocolError::Invalid(
                "an interval holds only its sender's counters within it",
            ));
        }
        let Some(r) = self.remotes.get_mut(sender) else {
            // Not heard of yet: its heartbeat comes next, and a catch-up.
            return Ok(());
        };
        if r.status.is_dead() || r.readmit || matches!(r.status, ReplicaStatus::Purged(_)) {
            return Ok(());
        }
        let held = self.held(sender);
        if to <= held {
            return Ok(());
        }
        if from > held {
            let reach = (self.config.max_interval_span)
                .saturating_mul(self.config.max_buffered_intervals as u64);
            let total: usize = self.remotes.values().map(|r| r.buffered_bytes).sum();
            let budget = self.config.max_buffered_bytes;
            let Some(r) = self.remotes.get_mut(sender) else {
                return Ok(());
            };
            // One replica may hold at most a quarter of the budget, so a
            // member that never fills its own gap cannot starve the others.
            if from - held <= reach
                && r.buffer.len() < self.config.max_buffered_intervals
                && total.saturating_add(size) <= budget
                && r.buffered_bytes.saturating_add(size) <= budget / 4
            {
                r.buffer_insert(from, to, delta, size);
            } else {
                self.metrics.intervals_dropped += 1;
            }
            return Ok(());
        }
        let diff = self.state.merge(delta)?;
        self.publish(diff);
        self.after_merge(now, sender);
        Ok(())
    }

    /// Answers a catch-up request from `requester`, the authenticated
    /// peer that sent it, and to no one else.
    fn on_request(
        &mut self,
        now: Duration,
        requester: &ReplicaId,
        replica: &ReplicaId,
        since: u64,
    ) {
        let held = self.held(replica);
        let showable = replica == self.id()
            || self
                .remotes
                .get(replica)
                .is_some_and(|r| !matches!(r.status, ReplicaStatus::Purged(_)));
        if !showable || held <= since {
            return;
        }
        // One answer per requester and replica until it could have been
        // applied: a request repeated sooner than an honest requester
        // retries (a timeout after its own send, so about a timeout after
        // our answer; half of it leaves room for uneven delays) buys
        // nothing twice.
        let key = (requester.clone(), replica.clone());
        if let Some(last) = self.served.get(&key)
            && since < last.to
            && now.saturating_sub(last.at) < self.config.catchup_timeout / 2
        {
            self.metrics.catchups_declined += 1;
            return;
        }
        // An answer already found too large is not encoded again.
        if self
            .oversized
            .get(replica)
            .is_some_and(|&(from, at)| at == held && since <= from)
        {
            self.metrics.catchups_declined += 1;
            return;
        }
        let (delta, full) = match self.state.changes_since(replica, since) {
            Some(d) => (d, false),
            None => {
                // Nor is a whole sub-state whose smallest possible
                // encoding is too large.
                let least = self
                    .state
                    .presences_of(replica)
                    .saturating_mul(MIN_ENTRY_BYTES);
                if least > self.config.max_catchup_bytes {
                    self.metrics.catchups_declined += 1;
                    return;
                }
                match self.state.snapshot_of(replica) {
                    Some(d) => (d, true),
                    None => return,
                }
            }
        };
        let Ok(bytes) = wire::encode(&delta) else {
            return;
        };
        if bytes.len() > self.config.max_catchup_bytes {
            self.oversized.insert(replica.clone(), (since, held));
            self.metrics.catchups_too_large += 1;
            return;
        }
        if full {
            self.metrics.full_transfers_served += 1;
        }
        self.served.insert(key, Served { to: held, at: now });
        self.metrics.catchups_served += 1;
        let piece = self.config.max_message_bytes - ENVELOPE_MARGIN;
        let total = bytes.len() as u64;
        for (i, part) in bytes.chunks(piece).enumerate() {
            let chunk = ReplyChunk {
                replica: replica.clone(),
                since,
                to: held,
                total,
                offset: (i * piece) as u64,
                bytes: part.to_vec(),
            };
            self.send(
                Destination::Replica(requester.clone()),
                &Message::CatchUpReply(chunk),
            );
        }
    }

    /// A piece of a catch-up answer from `sender`. Pieces are kept only
    /// for the request outstanding, from the holder it was sent to, and go
    /// with it when it times out.
    fn on_reply(
        &mut self,
        now: Duration,
        sender: &ReplicaId,
        chunk: ReplyChunk,
    ) -> Result<(), ProtocolError> {
        let ReplyChunk {
            replica,
            since,
            to,
            total,
            offset,
            bytes,
        } = chunk;
        let end = offset.checked_add(bytes.len() as u64);
        if total > self.config.max_catchup_bytes as u64 || end.is_none_or(|e| e > total) {
            return Err(ProtocolError::Invalid(
                "a catch-up piece lies outside its answer",
            ));
        }
        if since >= to {
            return Err(ProtocolError::Invalid(
                "a catch-up answer must not be empty",
            ));
        }
        let Some(r) = self.remotes.get_mut(&replica) else {
            return Ok(());
        };
        // Only the answer asked for, and from a third party no further
        // than it said it holds (the owner may have changed more since its
        // last heartbeat).
        let asked = r.request.as_ref().is_some_and(|q| {
            &q.holder == sender && q.since == since && (to <= q.claimed || sender == &replica)
        });
        if !asked {
            self.metrics.unrequested_pieces += 1;
            return Ok(());
        }
        let same = r
            .assembly
            .as_ref()
            .is_some_and(|a| a.since == since && a.to == to && a.total == total);
        if !same {
            r.assembly = Some(Assembly {
                since,
                to,
                total,
                pieces: BTreeMap::new(),
            });
        }
        let assembly = r.assembly.as_mut().expect("set above");
        let stored: u64 = assembly.pieces.values().map(|p| p.len() as u64).sum();
        if stored + bytes.len() as u64 > total.saturating_mul(2) {
            r.assembly = None;
            return Err(ProtocolError::Invalid("catch-up pieces overlap too much"));
        }
        let Some(whole) = assembly.add(offset, bytes) else {
            return Ok(());
        };
        r.assembly = None;
        let result = self.apply_answer(now, &replica, (since, to), &whole);
        if result.is_err() {
            // Asking the same holder again at once would get the same
            // answer: back off, and try another holder first.
            self.metrics.catchups_refused += 1;
            if let Some(r) = self.remotes.get_mut(&replica) {
                r.request = None;
                r.tried.insert(sender.clone());
                r.backoff_until = Some(now + self.config.catchup_timeout);
            }
        }
        result
    }

    /// Decodes a whole catch-up answer and applies it.
    fn apply_answer(
        &mut self,
        now: Duration,
        replica: &ReplicaId,
        (since, to): (u64, u64),
        whole: &[u8],
    ) -> Result<(), ProtocolError> {
        let delta: Delta<M> = wire::decode_with_limit(whole, self.config.max_catchup_bytes)?;
        let exact = delta.parts.iter().all(|p| {
            &p.replica == replica && p.context.ranges().len() == 1 && p.context.max() == to
        });
        if !exact || delta.parts.len() != 1 {
            return Err(ProtocolError::Invalid(
                "a catch-up answer holds one replica's counters up to its end",
            ));
        }
        let lowest = delta.parts[0].context.min().unwrap_or(1);
        self.apply_catchup(now, replica, since, to, lowest, delta)
    }

    fn apply_catchup(
        &mut self,
        now: Duration,
        replica: &ReplicaId,
        since: u64,
        to: u64,
        lowest: u64,
        delta: Delta<M>,
    ) -> Result<(), ProtocolError> {
        let held = self.held(replica);
        let Some(r) = self.remotes.get_mut(replica) else {
            return Ok(());
        };
        r.request = None;
        if r.readmit {
            if since != 0 || lowest != 1 || to < r.target {
                return Ok(());
            }
            let diff = self.state.readmit(delta)?;
            let Some(r) = self.remotes.get_mut(replica) else {
                return Ok(());
            };
            r.readmit = false;
            r.tried.clear();
            r.set_status(ReplicaStatus::Up, now);
            self.publish(diff);
            self.events.push_back(Event::ReplicaUp(replica.clone()));
            self.after_merge(now, replica);
            return Ok(());
        }
        if r.status.is_dead() || matches!(r.status, ReplicaStatus::Purged(_)) {
            return Ok(());
        }
        // Only an answer that extends what is held keeps the view a prefix.
        if to <= held || lowest > held.saturating_add(1) {
            return Ok(());
        }
        r.tried.clear();
        let diff = self.state.merge(delta)?;
        self.publish(diff);
        self.after_merge(now, replica);
        Ok(())
    }

    /// After merging data of `replica`: apply the intervals it unblocked,
    /// show it if it caught up, and handle a newer incarnation of our name.
    fn after_merge(&mut self, now: Duration, replica: &ReplicaId) {
        loop {
            let held = self.held(replica);
            let Some(r) = self.remotes.get_mut(replica) else {
                break;
            };
            let Some((to, delta)) = r.buffer_take(held) else {
                break;
            };
            if to > held {
                match self.state.merge(delta) {
                    Ok(diff) => self.publish(diff),
                    Err(_) => self.metrics.rejected += 1,
                }
            }
        }
        let held = self.held(replica);
        if let Some(r) = self.remotes.get_mut(replica) {
            r.holders.retain(|_, (c, _)| *c > held);
        }
        self.try_show(now, replica);
        if let Some(newer) = self.state.superseded_by() {
            self.superseded(now, newer);
        }
    }

    // --- liveness ----------------------------------------------------------

    /// Starts tracking a replica heard of for the first time, hidden.
    /// Older incarnations of its name are purged. False when it is stale
    /// or cannot be held.
    fn learn(&mut self, now: Duration, id: &ReplicaId) -> bool {
        if self.remotes.contains_key(id) {
            return true;
        }
        if self.is_stale(id) {
            return false;
        }
        let older: Vec<ReplicaId> = self
            .remotes
            .iter()
            .filter(|(other, r)| other.name() == id.name() && *other < id && !r.status.is_dead())
            .map(|(other, _)| other.clone())
            .collect();
        for old in older {
            self.purge(now, &old, PurgeReason::Superseded);
        }
        if self.state.hide(id).is_err() {
            self.metrics.rejected += 1;
            return false;
        }
        let hash = id_hash(id);
        self.hashes
            .entry(hash)
            .and_modify(|slot| *slot = None)
            .or_insert_with(|| Some(id.clone()));
        let mut remote = Remote::new(hash, now);
        remote.lost_at = self.links.get_mut(id).and_then(|l| l.lost_unknown.take());
        self.remotes.insert(id.clone(), remote);
        true
    }

    /// An older incarnation of `id`'s name showed a sign of life within
    /// `down_period`. A newer one heard of only through a third party is
    /// not taken up then: it would replace the older one on hearsay (and
    /// hearsay of a death hides a replica after two quiet periods, so that
    /// alone must not open the way). A real successor speaks for itself, or
    /// the older one falls silent for good.
    fn has_live_predecessor(&self, now: Duration, id: &ReplicaId) -> bool {
        let quiet = self.config.down_period;
        self.remotes
            .range(..id.clone())
            .rev()
            .take_while(|(other, _)| other.name() == id.name())
            .any(|(_, r)| {
                matches!(
                    r.status,
                    ReplicaStatus::Up | ReplicaStatus::Joining | ReplicaStatus::Down
                ) && now.saturating_sub(r.last_alive()) < quiet
            })
    }

    /// Data about `id` is to be ignored: it left, was replaced, or a newer
    /// incarnation of its name is known. Map lookups only: it runs for
    /// every entry of every heartbeat.
    fn is_stale(&self, id: &ReplicaId) -> bool {
        if self.remotes.get(id).is_some_and(|r| r.status.is_dead()) {
            return true;
        }
        let newer = self
            .remotes
            .range(id.clone()..)
            .skip(1)
            .take_while(|(other, _)| other.name() == id.name())
            .next()
            .is_some();
        newer
            || self
                .state
                .purge_record(id)
                .is_some_and(|rec| rec.reason != PurgeReason::Permdown)
    }

    /// A heartbeat number of `id`. From `id` itself it is a sign of life
    /// whatever its value (a peer cannot lie about itself to others'
    /// harm). Relayed, only a fresh number above the one known counts, and
    /// only a plausible one (see `Remote::anchor`), so a lying relayer
    /// cannot push it out of reach.
    fn observe_beat(
        &mut self,
        now: Duration,
        id: &ReplicaId,
        beat: u64,
        heard: Heard,
        advertised: Option<u64>,
    ) {
        let period = self.config.broadcast_period;
        let fresh_limit = millis(period * 2);
        let held = self.held(id);
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        let age_ms = match heard {
            Heard::Directly => {
                r.anchor = Some((beat, now));
                0
            }
            Heard::Relayed(age_ms) => {
                // A stale relay changes nothing: only fresh news moves what
                // is known, so a relayer cannot move the anchor below.
                if age_ms >= fresh_limit || beat <= r.beat {
                    return;
                }
                // Numbers grow one a period: from the last number heard
                // from the replica itself (or the first one relayed), a
                // relayed one may be ahead by the periods since, plus two.
                let (base, at) = *r.anchor.get_or_insert((beat, now));
                let periods = now.saturating_sub(at).as_nanos() / period.as_nanos().max(1);
                let plausible = base
                    .saturating_add(u64::try_from(periods).unwrap_or(u64::MAX))
                    .saturating_add(2);
                if beat > plausible {
                    self.metrics.implausible_beats += 1;
                    return;
                }
                age_ms
            }
        };
        let produced = now.saturating_sub(Duration::from_millis(age_ms));
        r.beat = match heard {
            Heard::Directly => beat,
            Heard::Relayed(_) => beat.max(r.beat),
        };
        r.beat_at = Some(produced);
        if age_ms >= fresh_limit {
            return;
        }
        r.alive_at = Some(r.alive_at.map_or(produced, |a| a.max(produced)));
        if r.lost_at.is_some_and(|lost| produced > lost) {
            r.lost_at = None;
        }
        let target = advertised.unwrap_or(0).max(held);
        match r.status {
            ReplicaStatus::Down => {
                r.target = target;
                r.set_status(ReplicaStatus::Joining, now);
            }
            ReplicaStatus::Purged(PurgeReason::Permdown) if !r.readmit => {
                let purged_at = self.state.purge_record(id).map_or(0, |rec| rec.counter);
                r.target = target.max(purged_at);
                r.readmit = true;
                r.set_status(ReplicaStatus::Joining, now);
            }
            _ => {}
        }
        self.try_show(now, id);
    }

    /// A third party says `id` left or was replaced. That is hearsay: it
    /// hides `id` only when `id` has shown no sign of life here for two
    /// periods (so a lying member cannot evict a replica others still
    /// hear), it never purges (`Left` comes only from the owner), and it
    /// creates no record of a replica not known here.
    fn suspect(&mut self, now: Duration, id: &ReplicaId) {
        let quiet = self.config.broadcast_period * 2;
        let Some(r) = self.remotes.get(id) else {
            return;
        };
        let live = matches!(r.status, ReplicaStatus::Up | ReplicaStatus::Joining);
        if live && now.saturating_sub(r.last_alive()) >= quiet {
            self.mark_down(now, id);
        }
    }

    /// Remembers that `holder` holds `id` up to `counter` (`None`: not
    /// ahead of us). While `id` itself is heard, a third party is believed
    /// only up to the counter `id` advertised: a lying member cannot get
    /// itself asked for data it made up about a replica that is reachable.
    fn note_holder(
        &mut self,
        now: Duration,
        id: &ReplicaId,
        holder: &ReplicaId,
        counter: Option<u64>,
    ) {
        let held = self.held(id);
        let fresh = self.config.broadcast_period * 2;
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        let counter = match (counter, r.direct) {
            (Some(c), Some((at, own))) if holder != id && now.saturating_sub(at) < fresh => {
                Some(c.min(own))
            }
            _ => counter,
        };
        match counter {
            Some(c) if c > held => {
                let since = r.holders.get(holder).map_or(now, |(_, s)| *s);
                r.holders.insert(holder.clone(), (c, since));
            }
            _ => {
                r.holders.remove(holder);
            }
        }
    }

    /// Shows a joining replica once its sub-state here reached the counter
    /// it advertised when it came back.
    fn try_show(&mut self, now: Duration, id: &ReplicaId) {
        let held = self.held(id);
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        if r.status != ReplicaStatus::Joining || r.readmit || held < r.target {
            return;
        }
        r.set_status(ReplicaStatus::Up, now);
        match self.state.unhide(id) {
            Ok(diff) => self.publish(diff),
            Err(_) => self.metrics.rejected += 1,
        }
        self.events.push_back(Event::ReplicaUp(id.clone()));
    }

    fn check_liveness(&mut self, now: Duration) {
        let three = self.config.broadcast_period * 3;
        let mut down = Vec::new();
        let mut purge = Vec::new();
        let mut forget = Vec::new();
        for (id, r) in &mut self.remotes {
            let silent = now.saturating_sub(r.last_alive());
            match r.status {
                ReplicaStatus::Up | ReplicaStatus::Joining => {
                    let mut lost = false;
                    if let Some(t) = r.lost_at
                        && now >= t + three
                    {
                        // No heartbeat it produced after the report came.
                        lost = r.last_alive() <= t;
                        r.lost_at = None;
                    }
                    if silent >= self.config.down_period || lost {
                        down.push(id.clone());
                    }
                }
                ReplicaStatus::Down => {
                    if silent >= self.config.permdown_period {
                        purge.push(id.clone());
                    }
                }
                ReplicaStatus::Purged(_) => {
                    if now.saturating_sub(r.since) >= self.config.tombstone_ttl {
                        forget.push(id.clone());
                    }
                }
            }
        }
        for id in down {
            self.mark_down(now, &id);
        }
        for id in purge {
            self.purge(now, &id, PurgeReason::Permdown);
        }
        for id in forget {
            self.state.forget_purged(&id);
            if let Some(r) = self.remotes.remove(&id)
                && self.hashes.get(&r.hash) == Some(&Some(id.clone()))
            {
                self.hashes.remove(&r.hash);
            }
        }
    }

    fn mark_down(&mut self, now: Duration, id: &ReplicaId) {
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        r.lost_at = None;
        if r.readmit {
            // It came back from a purge and went silent again before its
            // sub-state arrived: still purged.
            r.readmit = false;
            r.clear_transit();
            r.set_status(ReplicaStatus::Purged(PurgeReason::Permdown), now);
            return;
        }
        r.set_status(ReplicaStatus::Down, now);
        match self.state.hide(id) {
            Ok(diff) => self.publish(diff),
            Err(_) => self.metrics.rejected += 1,
        }
        self.events.push_back(Event::ReplicaDown(id.clone()));
    }

    fn purge(&mut self, now: Duration, id: &ReplicaId, reason: PurgeReason) {
        if !self.learn_dead(now, id) {
            return;
        }
        let r = self.remotes.get_mut(id).expect("learnt above");
        if r.status == ReplicaStatus::Purged(reason) || r.status.is_dead() {
            return;
        }
        r.clear_transit();
        r.readmit = false;
        r.lost_at = None;
        r.set_status(ReplicaStatus::Purged(reason), now);
        if let Ok(diff) = self.state.purge(id, reason) {
            self.publish(diff);
        }
        // A replica that left is gone; a replaced one may still be running
        // and has to hear of its successor to move above it.
        if reason == PurgeReason::Left {
            self.links.remove(id);
        }
        for other in self.remotes.values_mut() {
            other.holders.remove(id);
        }
        self.events
            .push_back(Event::ReplicaPurged(id.clone(), reason));
    }

    /// Makes sure a record exists for `id` so its death can be kept, even
    /// when it was never known here.
    fn learn_dead(&mut self, now: Duration, id: &ReplicaId) -> bool {
        if self.remotes.contains_key(id) {
            return true;
        }
        if id.name() == self.id().name() {
            return false;
        }
        let hash = id_hash(id);
        self.hashes.entry(hash).or_insert_with(|| Some(id.clone()));
        self.remotes.insert(id.clone(), Remote::new(hash, now));
        true
    }

    // --- catch-ups ---------------------------------------------------------

    /// Asks one holder that is ahead for each replica this one is behind
    /// on, one request per replica at a time.
    fn request_catchups(&mut self, now: Duration) {
        let period = self.config.broadcast_period;
        let mut requests = Vec::new();
        for (id, r) in &self.remotes {
            if r.request.is_some() || r.status.is_dead() {
                continue;
            }
            if r.backoff_until.is_some_and(|t| now < t) {
                continue;
            }
            if matches!(r.status, ReplicaStatus::Purged(_)) && !r.readmit {
                continue;
            }
            let held = if r.readmit { 0 } else { self.held(id) };
            let needed = if r.readmit {
                r.target.max(1)
            } else {
                held.saturating_add(1)
            };
            // The owner's word is acted on at once; a third party's after a
            // period, when the owner's own interval had time to arrive.
            let ready = |holder: &ReplicaId, c: u64, seen: Duration| {
                c >= needed && (holder == id || now.saturating_sub(seen) >= period)
            };
            let mut candidates: Vec<(&ReplicaId, u64)> = r
                .holders
                .iter()
                .filter(|(h, (c, seen))| ready(h, *c, *seen))
                .map(|(h, (c, _))| (h, *c))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // Holders not tried yet; when every one was, a new round.
            let fresh = candidates.iter().any(|(h, _)| !r.tried.contains(*h));
            if fresh {
                candidates.retain(|(h, _)| !r.tried.contains(*h));
            }
            // The most advanced holder; the smallest id among equals.
            candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            if let Some(&(holder, claimed)) = candidates.first() {
                requests.push((id.clone(), holder.clone(), held, claimed, !fresh));
            }
        }
        for (id, holder, since, claimed, new_round) in requests {
            if new_round && let Some(r) = self.remotes.get_mut(&id) {
                r.tried.clear();
            }
            let message = Message::CatchUpRequest {
                replica: id.clone(),
                since,
            };
            self.send(Destination::Replica(holder.clone()), &message);
            self.metrics.catchups_requested += 1;
            if let Some(r) = self.remotes.get_mut(&id) {
                r.request = Some(Request {
                    holder,
                    since,
                    claimed,
                    sent_at: now,
                });
            }
        }
    }

    /// Gives up on requests unanswered for `catchup_timeout`; the next
    /// holder is asked.
    fn check_requests(&mut self, now: Duration) {
        for r in self.remotes.values_mut() {
            if let Some(req) = &r.request
                && now.saturating_sub(req.sent_at) >= self.config.catchup_timeout
            {
                r.tried.insert(req.holder.clone());
                r.request = None;
                r.assembly = None;
            }
        }
    }

    // --- incarnations ------------------------------------------------------

    /// A newer incarnation of this replica's name exists: move above it,
    /// unless that keeps happening (two processes share the name).
    fn superseded(&mut self, now: Duration, newer: Incarnation) {
        // Moving above a start time at the bound would leave this replica
        // where no peer accepts its messages.
        if self.conflict
            || newer <= self.id().incarnation()
            || newer.started_ms() >= crate::state::MAX_COUNTER
        {
            return;
        }
        while self
            .reincarnations
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > self.config.down_period)
        {
            self.reincarnations.pop_front();
        }
        if self.reincarnations.len() >= 3 {
            self.conflict = true;
            self.events
                .push_back(Event::NameConflict(self.id().clone()));
            return;
        }
        let current = self.id().incarnation();
        let nonce = current.nonce().wrapping_mul(0x9e37_79b9).wrapping_add(1);
        let started = newer
            .started_ms()
            .max(current.started_ms())
            .saturating_add(1);
        let Ok(moved) = self.state.reincarnate(Incarnation::new(started, nonce)) else {
            return;
        };
        self.reincarnations.push_back(now);
        self.pending.clear();
        // Peers catch up on the new incarnation from its heartbeats.
        self.broadcast = self.state.counter();
        let id = self.id().clone();
        self.hashes.insert(id_hash(&id), Some(id.clone()));
        self.events.push_back(Event::Reincarnated {
            replica: id,
            renamed: moved.renamed,
        });
    }

    /// The counter up to which `id`'s sub-state is held here.
    fn held(&self, id: &ReplicaId) -> u64 {
        if id == self.id() {
            return self.state.counter();
        }
        self.state.context(id).map_or(0, |c| c.contiguous_prefix())
    }
}

/// An upper bound of a digest entry's encoded size.
fn entry_bytes(entry: &DigestEntry) -> usize {
    let id = match &entry.id {
        EntryId::Full(id) => 1 + id.name().as_str().len() + 10 + 5,
        EntryId::Hash(_) => 4,
    };
    // The tag, the heartbeat number and the age: varints of at most 10.
    30 + id
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
