//! One topic shard of a tracker: the presences on its topics, behind one
//! lock, and the subscribers of its topics.
//!
//! A shard holds this replica's own presences on its topics in one
//! [`State`], and every other replica's presences on its topics in a
//! `State` of their own (a *peer*), shown or hidden as a whole. A peer is
//! changed in place when a delta is small, and replaced by one built
//! outside the lock when a delta is large (see `store.rs`), so the lock is
//! held for a bounded time whatever the size of a catch-up.
//!
//! Local calls take this shard's lock only: calls on topics of different
//! shards run in parallel, and a long list of one topic never holds up a
//! call on another shard's topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::events::{ReplicaEvent, ShardFeed};
use super::feed::{Feed, Position, TopicFeed, Wake};
use super::key_counts::KeyCounts;
use super::lock::{LockStats, TimedMutex};
use super::{TopicCounts, TrackerError};
use crate::state::{HeldEntry, Removal};
use crate::{Delta, Diff, Limits, Meta, Presence, PresenceId, ReplicaId, State, StateError, Topic};

/// What every shard of a tracker shares.
pub(crate) struct Common {
    /// The driver task ended: calls that change something are refused.
    pub(crate) stopped: AtomicBool,
    pub(crate) locks: Arc<LockStats>,
    /// The last counter spent (the low 56 bits) and the broadcast its
    /// change goes out with (the high 8 bits, counted modulo 256): one
    /// atomic, so that a change learns both at once without a lock.
    spent: Line<AtomicU64>,
    /// Intervals start at the multiples of this many counters (and where a
    /// broadcast cut them): so many changes of the largest size the limits
    /// allow fit in half a message.
    block: u64,
    /// This replica's presences, across shards.
    own: Line<AtomicUsize>,
    pub(crate) limits: Limits,
    /// Diffs kept for a subscriber that has not read them.
    pub(crate) queue: usize,
    /// The id this replica started as: the peers' states hold no presence
    /// of their own, and keep it.
    pub(crate) first_id: ReplicaId,
    /// Presences that got new ids when this replica re-incarnated: the id
    /// their guard holds to the current one.
    renamed: TimedMutex<HashMap<PresenceId, PresenceId>>,
    any_renamed: AtomicBool,
    /// Other replicas coming and going, for [`super::Events`].
    pub(crate) replica_events: Arc<Feed<ReplicaEvent>>,
    /// Subscribers that fell behind and were sent the whole list again.
    pub(crate) resyncs: AtomicU64,
}

/// A value alone in its cache lines: the cores that write it do not
/// slow the cores that read its neighbours.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Where a change goes in the broadcasts: the broadcast (counted modulo
/// 256) and the block of counters whose interval it joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    broadcast: u8,
    block: u64,
}

const COUNTER_BITS: u32 = 56;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

impl Common {
    pub(crate) fn new(
        first_id: ReplicaId,
        limits: Limits,
        queue: usize,
        (span, budget): (u64, usize),
        locks: Arc<LockStats>,
    ) -> Self {
        Self {
            stopped: AtomicBool::new(false),
            spent: Line(AtomicU64::new(0)),
            block: {
                let largest = limits.topic_len() + limits.key_len() + limits.meta_bytes() + 64;
                ((budget / largest.max(1)) as u64).clamp(1, span.max(1))
            },
            own: Line(AtomicUsize::new(0)),
            limits,
            queue,
            first_id,
            renamed: TimedMutex::new(HashMap::new(), locks.clone(), "renamed"),
            any_renamed: AtomicBool::new(false),
            replica_events: Arc::new(Feed::new(queue, locks.clone())),
            resyncs: AtomicU64::new(0),
            locks,
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The last counter spent.
    pub(crate) fn counter(&self) -> u64 {
        self.spent.load(Ordering::Acquire) & COUNTER_MASK
    }

    /// How many presences this replica holds.
    pub(crate) fn own_presences(&self) -> usize {
        self.own.load(Ordering::Relaxed)
    }

    /// Spends the next counter on a change; returns it and where its change
    /// goes in the broadcasts. Call with the change's shard locked, and
    /// record the change before letting it go.
    fn spend(&self) -> (u64, Slot) {
        let packed = self.spent.fetch_add(1, Ordering::AcqRel);
        let counter = (packed & COUNTER_MASK) + 1;
        let slot = Slot {
            broadcast: (packed >> COUNTER_BITS) as u8,
            block: (counter - 1) / self.block,
        };
        (counter, slot)
    }

    /// Where the interval of a change in `slot` starts, for a broadcast
    /// that starts after `from`.
    pub(crate) fn interval_start(&self, slot: Slot, from: u64) -> u64 {
        (slot.block * self.block).max(from)
    }

    /// Ends the broadcast being filled: changes spent from now on go out
    /// with the next. Returns the broadcast ended and the last counter it
    /// reaches.
    pub(crate) fn cut(&self) -> (u8, u64) {
        let packed = self.spent.fetch_add(1 << COUNTER_BITS, Ordering::AcqRel);
        ((packed >> COUNTER_BITS) as u8, packed & COUNTER_MASK)
    }

    /// Starts counting again from `counter` (a new incarnation).
    pub(crate) fn restart(&self, counter: u64, presences: usize) {
        let broadcast = (self.spent.load(Ordering::Acquire) >> COUNTER_BITS).wrapping_add(1);
        self.spent
            .store((broadcast << COUNTER_BITS) | counter, Ordering::Release);
        self.own.store(presences, Ordering::Relaxed);
    }

    fn reserve_presence(&self, id: &ReplicaId) -> Result<(), StateError> {
        let max = self.limits.presences_per_replica();
        let count = self.own.fetch_add(1, Ordering::AcqRel) + 1;
        if count > max {
            self.own.fetch_sub(1, Ordering::AcqRel);
            return Err(StateError::TooManyPresences {
                replica: id.clone(),
                count,
                max,
            });
        }
        Ok(())
    }

    fn release_presence(&self) {
        self.own.fetch_sub(1, Ordering::AcqRel);
    }

    /// The current id of the presence a guard tracked as `id`.
    pub(crate) fn current_id(&self, id: &PresenceId) -> PresenceId {
        if !self.any_renamed.load(Ordering::Acquire) {
            return id.clone();
        }
        self.renamed.lock().get(id).unwrap_or(id).clone()
    }

    /// Forgets a guard's presence.
    pub(crate) fn forget(&self, id: &PresenceId) {
        if self.any_renamed.load(Ordering::Acquire) {
            self.renamed.lock().remove(id);
        }
    }

    /// Presences moved to new ids: guards holding an old id follow.
    pub(crate) fn rename(&self, moved: Vec<(PresenceId, PresenceId)>) {
        let moved: HashMap<PresenceId, PresenceId> = moved.into_iter().collect();
        let mut renamed = self.renamed.lock();
        for current in renamed.values_mut() {
            if let Some(new) = moved.get(current) {
                *current = new.clone();
            }
        }
        for (old, new) in moved {
            renamed.entry(old).or_insert(new);
        }
        self.any_renamed
            .store(!renamed.is_empty(), Ordering::Release);
    }
}

/// Another replica's presences on a shard's topics.
pub(crate) struct Peer<M> {
    /// Only this replica's driver changes it, in place while no copy is
    /// out, replaced whole when a large change was made outside the lock.
    pub(crate) data: Arc<State<M>>,
    /// Listed, or hidden (down or not caught up yet).
    pub(crate) shown: bool,
    /// Its presences as joins, made outside the lock with a large change,
    /// for showing it right after; dropped when the change is done.
    pub(crate) joins: Option<Diff<M>>,
    /// Which state `data` is, unique in this process: `data` is replaced
    /// whole by a large change, and a reader across several holds learns
    /// so by this.
    pub(crate) generation: u64,
}

/// Numbers the states of a shard (see [`Peer::generation`]).
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl<M> Peer<M> {
    pub(crate) fn new(data: State<M>, shown: bool, joins: Option<Diff<M>>) -> Self {
        Self {
            data: Arc::new(data),
            shown,
            joins,
            generation: next_generation(),
        }
    }
}

pub(crate) struct Inner<M> {
    /// This replica's presences on the shard's topics. Its context is this
    /// replica's, every counter up to the last change here.
    pub(crate) own: State<M>,
    /// Which state `own` is (it is replaced by a re-incarnation); see
    /// [`Peer::generation`].
    pub(crate) own_generation: u64,
    /// The first counter spent here since the last incarnation began.
    first_own: Option<u64>,
    pub(crate) peers: BTreeMap<ReplicaId, Peer<M>>,
    feeds: HashMap<Topic, Arc<TopicFeed<M>>>,
    /// Every topic's diffs, while a tracker-wide stream reads them.
    all: Option<Arc<ShardFeed<M>>>,
    /// This replica's changes here not broadcast yet, by where they go.
    pending: Pending<M>,
    /// How many keys each topic shows.
    pub(crate) keys: KeyCounts<M>,
}

/// This replica's changes in a shard, in the order their counters were
/// spent, each with the interval slot it goes out in.
pub(crate) type Pending<M> = Vec<(Slot, Delta<M>)>;

/// A topic and its visible presences, unsorted.
pub(crate) type TopicPresences<M> = (Topic, Vec<Presence<M>>);

/// A reader of every topic's diffs of a shard, and its place.
pub(crate) type ShardReader<M> = (Arc<ShardFeed<M>>, Position);

/// A subscriber's feed and its place in it.
pub(crate) type Subscribed<M> = (Arc<TopicFeed<M>>, super::feed::Position);

/// One topic shard; see the module docs.
pub(crate) struct Shard<M> {
    inner: TimedMutex<Inner<M>>,
    pub(crate) common: Arc<Common>,
    /// Held while the key counts are built from the states.
    pub(crate) building: std::sync::Mutex<()>,
}

/// The shard of `topic` among `shards`: FNV-1a of its bytes.
pub(crate) fn shard_of(topic: &str, shards: usize) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in topic.as_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as usize % shards.max(1)
}

impl<M: Meta> Shard<M> {
    pub(crate) fn new(own: ReplicaId, common: Arc<Common>) -> Self {
        let state = State::builder(own).limits(common.limits.clone()).build();
        Self {
            inner: TimedMutex::new(
                Inner {
                    own: state,
                    own_generation: next_generation(),
                    first_own: None,
                    peers: BTreeMap::new(),
                    feeds: HashMap::new(),
                    all: None,
                    pending: Vec::new(),
                    keys: KeyCounts::new(),
                },
                common.locks.clone(),
                "shard",
            ),
            common,
            building: std::sync::Mutex::new(()),
        }
    }

    pub(crate) fn lock(&self) -> super::lock::TimedGuard<'_, Inner<M>> {
        self.inner.lock()
    }

    /// An empty state for another replica's presences on these topics.
    pub(crate) fn new_peer_state(&self) -> State<M> {
        // It keeps no removal log: the store's context-only state does.
        let limits = self.common.limits.clone().removal_log_len(0);
        State::builder(self.common.first_id.clone())
            .limits(limits)
            .build()
    }

    // --- local changes -----------------------------------------------------

    /// Tracks a presence of this replica on one of the shard's topics.
    pub(crate) fn track(
        &self,
        topic: &str,
        key: &str,
        meta: M,
    ) -> Result<PresenceId, TrackerError> {
        let mut wake = Wake::new();
        let result = {
            let mut s = self.lock();
            if self.common.stopped() {
                return Err(TrackerError::Stopped);
            }
            // The meta is checked by `State::track`, after the counter is
            // spent: a meta over the limit spends one on nothing.
            s.own.check_track(topic, key)?;
            let id = s.own.replica().clone();
            self.common.reserve_presence(&id)?;
            let (counter, after) = self.common.spend();
            s.first_own.get_or_insert(counter);
            s.own.spend_own_counters(counter - 1);
            match s.own.track(topic, key, meta) {
                Ok((id, change)) => {
                    let (delta, diff) = change.into_parts();
                    s.record(after, delta);
                    s.publish(diff, &mut wake);
                    Ok(id)
                }
                Err(e) => {
                    self.common.release_presence();
                    s.spend_on_nothing(counter, after);
                    Err(e.into())
                }
            }
        };
        wake.wake();
        result
    }

    /// Replaces the meta of a presence of this replica held here, tracked
    /// as `tracked` (its id now may differ, after a re-incarnation). With
    /// `expected`, only if the version shown is still that one: returns
    /// whether it was replaced.
    pub(crate) fn update(
        &self,
        tracked: &PresenceId,
        meta: M,
        expected: Option<u64>,
    ) -> Result<bool, TrackerError> {
        let mut wake = Wake::new();
        let result = {
            let mut s = self.lock();
            if self.common.stopped() {
                return Err(TrackerError::Stopped);
            }
            // Re-incarnations rename under every shard's lock: resolved
            // here, the id is current.
            let id = &self.common.current_id(tracked);
            s.own.check_update(id, &meta)?;
            if expected.is_some() && s.own.own_version(id).map(|(v, _)| v) != expected {
                return Ok(false);
            }
            let (counter, after) = self.common.spend();
            s.own.spend_own_counters(counter - 1);
            match s.own.update(id, meta) {
                Ok(change) => {
                    let (delta, diff) = change.into_parts();
                    s.record(after, delta);
                    s.publish(diff, &mut wake);
                    Ok(true)
                }
                Err(e) => {
                    s.spend_on_nothing(counter, after);
                    Err(e.into())
                }
            }
        };
        wake.wake();
        result
    }

    /// The version and meta of a presence of this replica tracked as
    /// `tracked`, if held here.
    pub(crate) fn own_version(&self, tracked: &PresenceId) -> Option<(u64, M)> {
        let s = self.lock();
        let id = &self.common.current_id(tracked);
        s.own.own_version(id).map(|(v, m)| (v, m.clone()))
    }

    /// Untracks this replica's presences under `key` on `topic`; returns
    /// how many there were.
    pub(crate) fn untrack_key(&self, topic: &str, key: &str) -> usize {
        let ids = self.lock().own.own_ids_of_key(topic, key);
        // Each is one change, as if its guard were dropped; a guard dropped
        // later finds nothing to untrack.
        for id in &ids {
            self.untrack(id);
        }
        ids.len()
    }

    /// Untracks a presence of this replica tracked as `tracked`, if held
    /// here.
    pub(crate) fn untrack(&self, tracked: &PresenceId) {
        let mut wake = Wake::new();
        {
            let mut s = self.lock();
            let id = &self.common.current_id(tracked);
            self.common.forget(tracked);
            if !s.own.holds_own(id) {
                return;
            }
            let (counter, after) = self.common.spend();
            s.own.spend_own_counters(counter - 1);
            match s.own.untrack(id) {
                Ok(change) => {
                    self.common.release_presence();
                    let (delta, diff) = change.into_parts();
                    s.record(after, delta);
                    s.publish(diff, &mut wake);
                }
                Err(_) => s.spend_on_nothing(counter, after),
            }
        }
        wake.wake();
    }

    // --- reads -------------------------------------------------------------

    /// The visible presences on `topic`, unsorted, and (to subscribe) a
    /// place in its feed, taken at the same instant.
    pub(crate) fn snapshot(
        &self,
        topic: &str,
        subscribe: bool,
    ) -> (Vec<Presence<M>>, Option<Subscribed<M>>) {
        let mut s = self.lock();
        let stopped = self.common.stopped();
        if !stopped && s.visible_on(topic) > super::listing::SLICE {
            let (feed, pos) = self.feed_of(&mut s, topic);
            drop(s);
            return self.snapshot_in_slices(topic, subscribe, feed, pos);
        }
        let out = s.presences_on(topic);
        let feed = (subscribe && !stopped).then(|| self.feed_of(&mut s, topic));
        drop(s);
        (out, feed)
    }

    /// The feed of `topic`, made if it has none, and a new place in it.
    pub(crate) fn feed_of(&self, s: &mut Inner<M>, topic: &str) -> Subscribed<M> {
        let (queue, locks) = (self.common.queue, self.common.locks.clone());
        let feed = s
            .feeds
            .entry(Topic::from(topic))
            .or_insert_with(|| Arc::new(Feed::new(queue, locks)))
            .clone();
        let pos = feed.join();
        (feed, pos)
    }

    /// The shard's stream of every topic's diffs, made if nothing reads
    /// it, and a new place in it.
    pub(crate) fn all_feed_of(&self, s: &mut Inner<M>) -> ShardReader<M> {
        let (queue, locks) = (self.common.queue, self.common.locks.clone());
        let feed = s
            .all
            .get_or_insert_with(|| Arc::new(Feed::new(queue, locks)))
            .clone();
        let pos = feed.join();
        (feed, pos)
    }

    /// The visible presences under `key` on `topic`, unsorted.
    pub(crate) fn get(&self, topic: &str, key: &str) -> Vec<Presence<M>> {
        let s = self.lock();
        let mut out = s.own.presences_of_key(topic, key);
        for peer in s.peers.values().filter(|p| p.shown) {
            out.extend(peer.data.presences_of_key(topic, key));
        }
        out
    }

    /// How many visible presences `topic` has: O(replicas shown).
    pub(crate) fn count(&self, topic: &str) -> usize {
        self.lock().visible_on(topic)
    }

    /// Visible presences per topic, added to `counts`.
    pub(crate) fn add_counts(&self, counts: &mut BTreeMap<String, usize>) {
        let s = self.lock();
        let shown = s.peers.values().filter(|p| p.shown).map(|p| &*p.data);
        for state in std::iter::once(&s.own).chain(shown) {
            for (topic, n) in state.topics() {
                *counts.entry(topic.as_str().to_string()).or_default() += n;
            }
        }
    }

    /// Every topic with a visible presence, with its presence and key
    /// counts, added to `out`: O(replicas shown) per topic.
    pub(crate) fn add_topics(&self, out: &mut Vec<TopicCounts>) {
        self.start_key_counts();
        let s = self.count_keys();
        let shown = s.peers.values().filter(|p| p.shown).map(|p| &*p.data);
        let mut topics: BTreeMap<&Topic, usize> = BTreeMap::new();
        for state in std::iter::once(&s.own).chain(shown) {
            for (topic, n) in state.topics() {
                *topics.entry(topic).or_default() += n;
            }
        }
        out.extend(topics.into_iter().map(|(topic, presences)| TopicCounts {
            topic: topic.clone(),
            presences,
            keys: s.keys.keys(topic.as_str()),
        }));
    }

    /// A reader of every topic's diffs is gone.
    pub(crate) fn unsubscribe_all(&self, feed: &ShardFeed<M>, pos: &Position) {
        let mut s = self.lock();
        if feed.leave(pos) {
            s.all = None;
        }
    }

    /// A subscriber of `topic` is gone; its feed goes with the last one.
    pub(crate) fn unsubscribe(
        &self,
        topic: &str,
        feed: &TopicFeed<M>,
        pos: &super::feed::Position,
    ) {
        let mut s = self.lock();
        if feed.leave(pos) {
            s.feeds.remove(topic);
        }
    }

    /// A subscriber that lagged: the topic's list now, and its position
    /// moved to the diffs after it.
    pub(crate) fn resync(
        &self,
        topic: &str,
        feed: &TopicFeed<M>,
        pos: &mut super::feed::Position,
    ) -> Vec<Presence<M>> {
        self.common.resyncs.fetch_add(1, Ordering::Relaxed);
        let s = self.lock();
        if s.visible_on(topic) > super::listing::SLICE {
            drop(s);
            return self.resync_in_slices(topic, feed, pos);
        }
        feed.skip_to_tail(pos);
        s.presences_on(topic)
    }

    // --- this replica's data, for the store --------------------------------

    /// This replica's changes here that go out with broadcast `ended`
    /// (and any before it), taken; those spent after it stay, moved into
    /// `spare` (empty), which becomes the shard's list.
    ///
    /// The list's buffer thus goes back and forth between the shard and
    /// the store: a shard that records as many changes each period as the
    /// last does not grow its list under its lock.
    pub(crate) fn take_pending(s: &mut Inner<M>, ended: u8, mut spare: Pending<M>) -> Pending<M> {
        // Changes are recorded in the order their counters were spent.
        let next = ended.wrapping_add(1);
        let kept = s
            .pending
            .partition_point(|(slot, _)| slot.broadcast != next);
        spare.extend(s.pending.drain(kept..));
        std::mem::replace(&mut s.pending, spare)
    }

    /// How many of this replica's presences are here, and the first
    /// counter spent here.
    pub(crate) fn own_extent(&self) -> (usize, Option<u64>) {
        let s = self.lock();
        let n = s.own.presences_of(s.own.replica());
        (n, s.first_own)
    }

    /// This replica's entries with a dot in `lo..=hi`, added to `out`.
    pub(crate) fn own_between(&self, lo: u64, hi: u64, out: &mut Vec<HeldEntry<M>>) {
        let s = self.lock();
        let me = s.own.replica().clone();
        s.own.entries_between(&me, lo, hi, out);
    }

    /// Every entry of this replica here, added to `out` (one hold, for
    /// shards with few presences).
    pub(crate) fn own_all(&self, out: &mut Vec<HeldEntry<M>>) {
        let s = self.lock();
        let me = s.own.replica().clone();
        out.extend(s.own.entries_above(&me, 0));
    }

    /// Re-incarnates this shard's own presences under `id`, with counters
    /// from `first`; returns the moves and the last counter spent.
    pub(crate) fn reincarnate(
        s: &mut Inner<M>,
        id: &ReplicaId,
        first: u64,
        limits: &Limits,
    ) -> (Vec<(PresenceId, PresenceId)>, u64) {
        let old = s.own.replica().clone();
        let entries = s.own.own_entries_by_dot();
        let mut state = State::builder(id.clone())
            .limits(limits.clone())
            .first_counter(first)
            .build();
        let ids = state.adopt_own(&entries);
        let last = state.counter();
        let moves = entries
            .iter()
            .zip(ids)
            .map(|(e, new)| (PresenceId::new(old.clone(), e.pid), new))
            .collect();
        s.own = state;
        s.own_generation = next_generation();
        s.first_own = (last >= first).then_some(first);
        s.pending.clear();
        (moves, last)
    }
}

impl<M: Meta> Inner<M> {
    /// Queues one of this replica's changes for its broadcast.
    fn record(&mut self, after: Slot, delta: Delta<M>) {
        match self.pending.last_mut() {
            Some((last, joined)) if *last == after => joined.join(delta),
            _ => self.pending.push((after, delta)),
        }
    }

    /// A counter was spent and the change failed after all: it is spent on
    /// nothing, so that the counters broadcast stay contiguous.
    fn spend_on_nothing(&mut self, counter: u64, after: Slot) {
        self.own.spend_own_counters(counter);
        let id = self.own.replica().clone();
        self.record(after, Delta::empty_event(id, counter));
    }

    /// How many visible presences `topic` has: O(replicas shown).
    /// How many visible presences the shard shows: O(replicas).
    pub(crate) fn visible(&self) -> usize {
        let shown = self.peers.values().filter(|p| p.shown);
        self.own.len() + shown.map(|p| p.data.len()).sum::<usize>()
    }

    pub(crate) fn visible_on(&self, topic: &str) -> usize {
        let shown = self.peers.values().filter(|p| p.shown);
        self.own.count(topic) + shown.map(|p| p.data.count(topic)).sum::<usize>()
    }

    /// The visible presences on `topic`, unsorted.
    pub(crate) fn presences_on(&self, topic: &str) -> Vec<Presence<M>> {
        let mut out = self.own.presences_unsorted(topic);
        for peer in self.peers.values().filter(|p| p.shown) {
            out.extend(peer.data.presences_unsorted(topic));
        }
        out
    }

    /// Every topic's visible presences, unsorted.
    pub(crate) fn all_presences(&self) -> Vec<TopicPresences<M>> {
        let shown = self.peers.values().filter(|p| p.shown).map(|p| &*p.data);
        let mut lists: HashMap<Topic, Vec<Presence<M>>> = HashMap::new();
        for state in std::iter::once(&self.own).chain(shown) {
            for (topic, _) in state.topics() {
                let list = lists.entry(topic.clone()).or_default();
                list.extend(state.presences_unsorted(topic.as_str()));
            }
        }
        lists.into_iter().collect()
    }

    /// Hands a diff of this shard's topics to their subscribers, and to
    /// the key counts when they are kept.
    pub(crate) fn publish(&mut self, diff: Diff<M>, wake: &mut Wake<M>) {
        let counting = self.keys.kept();
        if !counting && self.feeds.is_empty() && self.all.is_none() && diff.len() <= 256 {
            return;
        }
        for (topic, changes) in diff.into_topics() {
            let feed = self.feeds.get(topic.as_str());
            let later = counting && self.keys.defers(&changes);
            if counting && !later {
                self.keys.count(&topic, &changes);
            }
            if feed.is_none() && self.all.is_none() && !later {
                // A large diff nobody wants is freed after the lock.
                if changes.joins().len() + changes.leaves().len() > 256 {
                    wake.unwanted.push(changes);
                }
                continue;
            }
            let changes = Arc::new(changes);
            if let Some(feed) = feed {
                feed.push(changes.clone(), wake);
            }
            if later {
                // Dropped by whoever counts it, off the async threads.
                self.keys.defer(topic.clone(), changes.clone());
                wake.counting = true;
            }
            if let Some(all) = &self.all {
                all.push((topic, changes), wake);
            }
        }
    }

    /// Ends every feed: the tracker stopped.
    pub(crate) fn close(&mut self, wake: &mut Wake<M>) {
        for feed in self.feeds.values() {
            feed.close(wake);
        }
        self.feeds.clear();
        if let Some(all) = self.all.take() {
            all.close(wake);
        }
    }

    /// This replica's removals logged here with an event above `since`,
    /// or `None` when the log does not reach back that far.
    pub(crate) fn own_removals_since(&self, since: u64) -> Option<Vec<Removal>> {
        self.own.removals_since(self.own.replica(), since)
    }

    /// This replica's entries with a dot in `lo..=hi`, added to `out`.
    pub(crate) fn own_between(&self, lo: u64, hi: u64, out: &mut Vec<HeldEntry<M>>) {
        self.own.entries_between(self.own.replica(), lo, hi, out);
    }
}

#[cfg(test)]
mod tests;
