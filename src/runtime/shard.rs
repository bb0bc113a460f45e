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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::TrackerError;
use super::feed::{Feed, Wake};
use super::lock::{LockStats, TimedMutex};
use crate::state::{HeldEntry, Removal, encoded_meta_len};
use crate::{Delta, Diff, Limits, Meta, Presence, PresenceId, ReplicaId, State, StateError, Topic};

/// What every shard of a tracker shares.
pub(crate) struct Common {
    /// The driver task ended: calls that change something are refused.
    pub(crate) stopped: AtomicBool,
    pub(crate) locks: Arc<LockStats>,
    alloc: Line<TimedMutex<Alloc>>,
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

/// This replica's counters, spent one a change, and where the intervals
/// that broadcast them are cut.
struct Alloc {
    counter: u64,
    /// Changes with a counter above this go in the next interval.
    cut: u64,
    /// The estimated bytes of the interval being filled.
    bytes: usize,
    /// The most counters and bytes one interval may hold.
    span: u64,
    budget: usize,
}

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
            alloc: Line(TimedMutex::new(
                Alloc {
                    counter: 0,
                    cut: 0,
                    bytes: 0,
                    span: span.max(1),
                    budget: budget.max(1),
                },
                locks.clone(),
            )),
            own: Line(AtomicUsize::new(0)),
            limits,
            queue,
            first_id,
            renamed: TimedMutex::new(HashMap::new(), locks.clone()),
            any_renamed: AtomicBool::new(false),
            locks,
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The last counter spent.
    pub(crate) fn counter(&self) -> u64 {
        self.alloc.lock().counter
    }

    /// How many presences this replica holds.
    pub(crate) fn own_presences(&self) -> usize {
        self.own.load(Ordering::Relaxed)
    }

    /// Spends the next counter on a change of about `bytes` encoded
    /// bytes; returns it and the counter its interval starts after.
    fn spend(&self, bytes: usize) -> (u64, u64) {
        let mut a = self.alloc.lock();
        let counter = a.counter + 1;
        if counter - a.cut > a.span || (a.bytes > 0 && a.bytes + bytes > a.budget) {
            a.cut = counter - 1;
            a.bytes = 0;
        }
        a.bytes += bytes;
        a.counter = counter;
        (counter, a.cut)
    }

    /// Ends the interval being filled: the next change starts a new one.
    /// Returns the last counter spent. Call with every shard locked, so
    /// that every counter spent has its change recorded.
    pub(crate) fn cut(&self) -> u64 {
        let mut a = self.alloc.lock();
        a.cut = a.counter;
        a.bytes = 0;
        a.counter
    }

    /// Starts counting again from `counter` (a new incarnation).
    pub(crate) fn restart(&self, counter: u64, presences: usize) {
        let mut a = self.alloc.lock();
        a.counter = counter;
        a.cut = counter;
        a.bytes = 0;
        self.own.store(presences, Ordering::Relaxed);
    }

    fn reserve_presence(&self, id: &ReplicaId) -> Result<(), StateError> {
        let max = self.limits.presences_per_replica();
        self.own
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|n| StateError::TooManyPresences {
                replica: id.clone(),
                count: n + 1,
                max,
            })
    }

    fn release_presence(&self) {
        let _ = self
            .own
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
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
}

pub(crate) struct Inner<M> {
    /// This replica's presences on the shard's topics. Its context is this
    /// replica's, every counter up to the last change here.
    own: State<M>,
    /// The first counter spent here since the last incarnation began.
    first_own: Option<u64>,
    pub(crate) peers: BTreeMap<ReplicaId, Peer<M>>,
    feeds: HashMap<Topic, Arc<Feed<M>>>,
    /// This replica's changes here not broadcast yet, by the counter their
    /// interval starts after.
    pending: Vec<(u64, Delta<M>)>,
}

/// A subscriber's feed and its place in it.
pub(crate) type Subscribed<M> = (Arc<Feed<M>>, super::feed::Position);

/// One topic shard; see the module docs.
pub(crate) struct Shard<M> {
    inner: TimedMutex<Inner<M>>,
    pub(crate) common: Arc<Common>,
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
                    first_own: None,
                    peers: BTreeMap::new(),
                    feeds: HashMap::new(),
                    pending: Vec::new(),
                },
                common.locks.clone(),
            ),
            common,
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
            s.own.check_track(topic, key, &meta)?;
            let bytes = topic.len() + key.len() + encoded_meta_len(&meta)? + 16;
            let id = s.own.replica().clone();
            self.common.reserve_presence(&id)?;
            let (counter, after) = self.common.spend(bytes);
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
    /// as `tracked` (its id now may differ, after a re-incarnation).
    pub(crate) fn update(&self, tracked: &PresenceId, meta: M) -> Result<(), TrackerError> {
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
            let bytes = encoded_meta_len(&meta)? + 256;
            let (counter, after) = self.common.spend(bytes);
            s.own.spend_own_counters(counter - 1);
            match s.own.update(id, meta) {
                Ok(change) => {
                    let (delta, diff) = change.into_parts();
                    s.record(after, delta);
                    s.publish(diff, &mut wake);
                    Ok(())
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
            let (counter, after) = self.common.spend(32);
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
        let mut out = s.own.presences_unsorted(topic);
        for peer in s.peers.values().filter(|p| p.shown) {
            out.extend(peer.data.presences_unsorted(topic));
        }
        let feed = if subscribe && !self.common.stopped() {
            let (queue, locks) = (self.common.queue, self.common.locks.clone());
            let feed = s
                .feeds
                .entry(Topic::from(topic))
                .or_insert_with(|| Arc::new(Feed::new(queue, locks)))
                .clone();
            let pos = feed.join();
            Some((feed, pos))
        } else {
            None
        };
        drop(s);
        (out, feed)
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
        let s = self.lock();
        let peers: usize = s
            .peers
            .values()
            .filter(|p| p.shown)
            .map(|p| p.data.count(topic))
            .sum();
        s.own.count(topic) + peers
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

    /// A subscriber of `topic` is gone; its feed goes with the last one.
    pub(crate) fn unsubscribe(&self, topic: &str, feed: &Feed<M>, pos: &super::feed::Position) {
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
        feed: &Feed<M>,
        pos: &mut super::feed::Position,
    ) -> Vec<Presence<M>> {
        let s = self.lock();
        let mut out = s.own.presences_unsorted(topic);
        for peer in s.peers.values().filter(|p| p.shown) {
            out.extend(peer.data.presences_unsorted(topic));
        }
        feed.skip_to_tail(pos);
        out
    }

    // --- this replica's data, for the store --------------------------------

    /// This replica's changes not broadcast yet, taken; call with every
    /// shard locked (see `Store::take_local`).
    pub(crate) fn take_pending(s: &mut Inner<M>) -> Vec<(u64, Delta<M>)> {
        std::mem::take(&mut s.pending)
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
        s.first_own = (last >= first).then_some(first);
        s.pending.clear();
        (moves, last)
    }
}

impl<M: Meta> Inner<M> {
    /// Queues one of this replica's changes for the interval after `after`.
    fn record(&mut self, after: u64, delta: Delta<M>) {
        match self.pending.last_mut() {
            Some((last, joined)) if *last == after => joined.join(delta),
            _ => self.pending.push((after, delta)),
        }
    }

    /// A counter was spent and the change failed after all: it is spent on
    /// nothing, so that the counters broadcast stay contiguous.
    fn spend_on_nothing(&mut self, counter: u64, after: u64) {
        self.own.spend_own_counters(counter);
        let id = self.own.replica().clone();
        self.record(after, Delta::empty_event(id, counter));
    }

    /// Hands a diff of this shard's topics to their subscribers.
    pub(crate) fn publish(&mut self, diff: Diff<M>, wake: &mut Wake<M>) {
        for (topic, changes) in diff.into_topics() {
            match self.feeds.get(topic.as_str()) {
                Some(feed) => feed.push(Arc::new(changes), wake),
                // A large diff nobody wants is freed after the lock.
                None if changes.joins().len() + changes.leaves().len() > 256 => {
                    wake.unwanted.push(changes);
                }
                None => {}
            }
        }
    }

    /// Ends every feed: the tracker stopped.
    pub(crate) fn close(&mut self, wake: &mut Wake<M>) {
        for feed in self.feeds.values() {
            feed.close(wake);
        }
        self.feeds.clear();
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
