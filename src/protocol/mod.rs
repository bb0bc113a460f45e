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

mod catchup;
mod codec;
mod config;
mod heartbeat;
mod intervals;
mod liveness;
pub(crate) mod message;
mod metrics;
mod remote;
mod store;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

pub use config::{Config, ConfigError};
pub use message::MessageKind;
pub use metrics::{KindCounters, Metrics};
pub use remote::ReplicaStatus;
#[cfg(feature = "runtime")]
pub(crate) use store::sealed::Sealed;
pub use store::{LocalChanges, ReplicaStore};

use crate::state::{
    Delta, Diff, Meta, PresenceId, PurgeReason, ReplicaId, State, StateError, encoded_meta_len,
};
use crate::wire::WireError;
#[cfg(feature = "runtime")]
pub(crate) use catchup::Built;
pub(crate) use catchup::{AnswerWork, ServeWork};
pub(crate) use heartbeat::BroadcastWork;
pub(crate) use message::Envelope;
use message::Message;
use remote::{Assembly, Batch, Remote, id_hash};

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

/// What this replica keeps about a link to a peer.
#[derive(Clone, Default)]
struct Link {
    /// The view hash of its last heartbeat, and when it came.
    view: Option<(u32, Duration)>,
    /// The replicas its last heartbeat asked to hear of: their heartbeats
    /// are relayed to it.
    wants: Vec<ReplicaId>,
    /// When its digest was last answered.
    answered: Option<Duration>,
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

/// What a heartbeat carries besides liveness.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// Relays of the replicas the peer asked to hear of.
    Plain,
    /// The last one: this replica is leaving.
    Leaving,
    /// This replica's whole view, asking what the peer holds beyond it.
    Digest,
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
pub(crate) const MIN_ENTRY_BYTES: usize = 6;

/// Bytes of a message around its payload, kept free when splitting.
pub(crate) const ENVELOPE_MARGIN: usize = 1024;

/// The most replicas one heartbeat asks to hear of.
const MAX_WANTS: usize = 1024;

/// The most catch-up request messages outstanding at once.
const MAX_BATCHES: usize = 8;

/// The most catch-up answers put together at once (late answers to
/// requests that timed out count too).
const MAX_ANSWERS: usize = 16;

/// One replica's protocol. See the [module docs](self).
///
/// It keeps the presences in a [`State`] unless given another
/// [`ReplicaStore`] (the tokio runtime gives it one split by topic).
#[derive(Clone)]
pub struct Node<M, S = State<M>> {
    state: S,
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
    /// The id this replica started as, which transports authenticate:
    /// messages leave the sender implied while it still speaks as that.
    first_id: ReplicaId,
    /// Times to run [`Node::handle_timeout`] at between periods: requests
    /// timing out, lost links, back-offs, holders becoming due, the first
    /// replica to go silent for `down_period` (found once a period).
    wakes: BTreeSet<Duration>,
    /// Replicas with a holder ahead, or waiting for a whole sub-state.
    behind: BTreeSet<ReplicaId>,
    /// Catch-up requests outstanding, by number.
    batches: BTreeMap<u64, Batch>,
    /// Answers arriving in pieces, by holder and request number: kept
    /// while the holder has a request outstanding, so that the late answer
    /// to a request that timed out still counts.
    answers: BTreeMap<(ReplicaId, u64), Assembly>,
    next_batch: u64,
    /// Catch-ups of replicas not shown yet wait until then, for the answer
    /// to the digest of a replica that just started.
    gather_until: Option<Duration>,
    /// A digest sent to a peer to learn what it holds beyond this view:
    /// to whom, and when. Unset once answered.
    probe: Option<(ReplicaId, Duration)>,
    probed: bool,
    /// Consecutive periods this replica's view differed from most peers'.
    minority: u32,
    /// Replicas not heard from lately, asked of every peer by hash.
    wants: Vec<u32>,
    /// The hash of this replica's view as its heartbeats carry it: taken
    /// once a period, and when a digest or an answer goes out.
    own_view: u32,
    /// Decoding and encoding whole catch-up answers and broadcasts is left
    /// to the driver (see [`Work`]) rather than done inside the call.
    defer: bool,
    work: VecDeque<Work<M>>,
}

/// What a node set to [`Node::defer_work`] leaves to its driver: the
/// heavy parts of catch-ups and broadcasts, done outside the node's lock
/// (decoding and encoding touch no node state), then handed back.
#[derive(Clone)]
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(crate) enum Work<M> {
    /// A whole catch-up answer arrived: decode it with
    /// [`AnswerWork::decode`], then [`Node::finish_answer`].
    Answer(AnswerWork),
    /// A catch-up request to answer: build each part, encode them with
    /// [`ServeWork::encode`], then [`Node::finish_serve`].
    Serve(ServeWork),
    /// This replica's changes to broadcast: [`BroadcastWork::encode`],
    /// then [`Node::finish_broadcast`].
    Broadcast(BroadcastWork<M>),
}

/// A catch-up answer sent: from which counter to which, and when.
#[derive(Clone)]
struct Served {
    to: u64,
    at: Duration,
}

impl<M: Meta, S: ReplicaStore<M>> std::fmt::Debug for Node<M, S> {
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

impl<M: Meta, S: ReplicaStore<M>> Node<M, S> {
    /// A node driving `state`. Its first [`Node::handle_timeout`] sends the
    /// first heartbeats.
    ///
    /// # Errors
    ///
    /// When the configuration does not validate.
    pub fn new(state: S, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let broadcast = state.counter();
        let state_id = state.replica().clone();
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
            first_id: state_id,
            wakes: BTreeSet::new(),
            behind: BTreeSet::new(),
            batches: BTreeMap::new(),
            answers: BTreeMap::new(),
            next_batch: 0,
            gather_until: None,
            probe: None,
            probed: false,
            minority: 0,
            wants: Vec::new(),
            own_view: 0,
            defer: false,
            work: VecDeque::new(),
        })
    }

    /// The replicated state, to query.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The replicated state, to change outside the protocol (the runtime
    /// stages prepared merges in its store).
    #[cfg(feature = "runtime")]
    pub(crate) fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// From now on, whole catch-up answers are decoded, catch-up answers
    /// built and encoded, and broadcasts encoded by the driver: they come
    /// out of [`Node::poll_work`].
    #[cfg(feature = "runtime")]
    pub(crate) fn defer_work(&mut self) {
        self.defer = true;
    }

    /// The next piece of work left to the driver.
    #[cfg(feature = "runtime")]
    pub(crate) fn poll_work(&mut self) -> Option<Work<M>> {
        self.work.pop_front()
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
        let intervals: usize = self.remotes.values().map(|r| r.buffer.len()).sum();
        let pieces: usize = self.answers.values().map(|a| a.pieces.len()).sum();
        intervals + pieces
    }

    /// The bytes of what [`Node::buffered`] counts: at most
    /// `max_buffered_bytes` of intervals, plus the pieces of the catch-up
    /// answers being put together (at most sixteen, each at most twice
    /// `max_catchup_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        let intervals: usize = self.remotes.values().map(|r| r.buffered_bytes).sum();
        let pieces: usize = self
            .answers
            .values()
            .map(|a| a.pieces.values().map(Vec::len).sum::<usize>())
            .sum();
        intervals + pieces
    }

    // --- inputs ------------------------------------------------------------

    /// Runs what is due at `now`: the periodic broadcast and heartbeats,
    /// down and permdown decisions, catch-up retries.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let period = self.config.broadcast_period;
        while self.wakes.first().is_some_and(|&t| t <= now) {
            self.wakes.pop_first();
        }
        if self.next_tick.is_none_or(|t| now >= t) {
            self.tick(now);
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
        let next = self.next_tick.unwrap_or(Duration::ZERO);
        self.wakes.first().map_or(next, |&w| next.min(w))
    }

    /// Asks for [`Node::handle_timeout`] at `at`.
    fn wake_at(&mut self, at: Duration) {
        if at > self.now {
            self.wakes.insert(at);
        }
    }

    /// A transport connected to `peer` (again): heartbeats go to it from
    /// now on, and one goes at once.
    pub fn peer_connected(&mut self, now: Duration, peer: ReplicaId) {
        if &peer == self.id() {
            return;
        }
        self.links.insert(peer.clone(), Link::default());
        if self.next_tick.is_some() {
            self.send_heartbeat(now, &peer, Beat::Plain);
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
        let three = self.config.broadcast_period * 3;
        self.wake_at(now + three);
        // What `peer` holds cannot be fetched now: ask other holders.
        self.holder_lost(now, peer);
        self.request_catchups(now);
    }

    /// Leaves the cluster: broadcasts what is pending and tells every peer
    /// to drop this replica's presences now. Send the transmits, then stop
    /// driving this node.
    pub fn leave(&mut self, now: Duration) {
        self.flush(true);
        let peers: Vec<ReplicaId> = self.links.keys().cloned().collect();
        for peer in peers {
            self.send_heartbeat(now, &peer, Beat::Leaving);
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
        let decoded = codec::decode(bytes, self.config.max_message_bytes);
        self.handle_decoded(now, from, decoded, bytes.len())
    }

    /// [`Node::handle_message`] for a message decoded beforehand with
    /// [`decode`] (outside the node's lock), `len` bytes long.
    pub(crate) fn handle_decoded(
        &mut self,
        now: Duration,
        from: &ReplicaId,
        decoded: Result<Envelope<M>, WireError>,
        len: usize,
    ) -> Result<(), ProtocolError> {
        self.now = self.now.max(now);
        let envelope: Envelope<M> = match decoded {
            Ok(e) => e,
            Err(e) => {
                self.metrics.rejected += 1;
                return Err(e.into());
            }
        };
        let Envelope { sender, message } = envelope;
        let sender = sender.unwrap_or_else(|| from.clone());
        if sender.name() != from.name()
            || sender.incarnation() < from.incarnation()
            || !self.may_speak_as(now, from, &sender)
        {
            self.metrics.rejected += 1;
            self.metrics.wrong_sender += 1;
            return Err(ProtocolError::WrongSender);
        }
        self.metrics.count_received(message.kind(), len);
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
            } => self.on_interval(now, &sender, (start, to), delta, len),
            Message::CatchUpRequest { batch, items } => {
                self.on_request(now, from, batch, items);
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
        // The sender goes in full only once this replica speaks as another
        // incarnation than the one its links authenticated.
        let sender = Some(self.state.replica()).filter(|id| **id != self.first_id);
        match codec::encode(sender, message) {
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

    /// Queues a message encoded elsewhere (by the driver, off the lock).
    fn send_encoded(&mut self, destination: Destination, kind: MessageKind, bytes: Vec<u8>) {
        self.metrics.count_sent(kind, bytes.len());
        self.transmits.push_back(Transmit {
            destination,
            kind,
            bytes,
        });
    }

    /// The sender a message names: `None` while this replica still speaks
    /// as the incarnation its links authenticated.
    fn named_sender(&self) -> Option<ReplicaId> {
        Some(self.state.replica())
            .filter(|id| **id != self.first_id)
            .cloned()
    }

    fn publish(&mut self, diff: Diff<M>) {
        self.metrics.undecodable_metas += diff.undecodable();
        self.metrics.refused_entries += diff.refused();
        if !diff.is_empty() {
            self.events.push_back(Event::Diff(diff));
        }
    }
}

/// Local changes through the node: with a [`State`], the node batches them
/// for the next broadcast itself.
impl<M: Meta> Node<M, State<M>> {
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
            self.flush(true);
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
}

/// Decodes a message of at most `max_message_bytes` for
/// [`Node::handle_decoded`], without the node.
#[cfg(feature = "runtime")]
pub(crate) fn decode<M: Meta>(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<Envelope<M>, WireError> {
    codec::decode(bytes, max_message_bytes)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
