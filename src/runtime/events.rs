//! One stream of everything that happens on a replica: every topic's
//! diffs and the other replicas coming and going (what Phoenix's
//! `handle_diff` gets).
//!
//! The stream starts with the lists of every topic, taken shard by shard:
//! each topic's list and its place in that topic's diffs are taken
//! together, under the lock its changes are made under, so each topic's
//! list plus its diffs is exactly its live list. Lists of topics of
//! different shards are taken at different instants: there is no global
//! cut, and none is needed to follow each topic.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::Shared;
use super::feed::{Feed, Position, Read};
use super::shard::{Shard, ShardReader, TopicPresences, shard_of};
use super::subscription::sorted;
use crate::protocol::ReplicaStatus;
use crate::{KeyGroup, Meta, PurgeReason, ReplicaId, Topic, TopicDiff};

/// What happened to another replica (or, for
/// [`ReplicaEvent::Reincarnated`], to this one).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// A replica is listed: alive and caught up.
    Up(ReplicaId),
    /// A replica went silent: its presences are no longer listed.
    Down(ReplicaId),
    /// A replica's presences were dropped, for good or until it returns.
    Purged(ReplicaId, PurgeReason),
    /// A newer incarnation of this replica's name appeared elsewhere, so
    /// this replica moved above it, to this id. Its presences got new ids;
    /// the lists did not change.
    Reincarnated(ReplicaId),
    /// Another process keeps running under this replica's name; this
    /// replica stopped re-incarnating and its presences are no longer
    /// believed by peers.
    NameConflict(ReplicaId),
}

/// Which topics a [`TopicLists`] covers: those of one topic shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicScope {
    shard: usize,
    shards: usize,
}

impl TopicScope {
    /// Whether `topic` is covered.
    pub fn contains(&self, topic: &str) -> bool {
        shard_of(topic, self.shards) == self.shard
    }
}

/// The lists of every topic of a [`TopicScope`], at one instant: a covered
/// topic that is not here has no presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicLists<M> {
    scope: TopicScope,
    lists: Vec<(Topic, Vec<KeyGroup<M>>)>,
}

impl<M> TopicLists<M> {
    /// The topics covered.
    pub fn scope(&self) -> TopicScope {
        self.scope
    }

    /// The covered topics with presences, in topic order, with their lists.
    pub fn lists(&self) -> &[(Topic, Vec<KeyGroup<M>>)] {
        &self.lists
    }

    /// The lists, by value.
    pub fn into_lists(self) -> Vec<(Topic, Vec<KeyGroup<M>>)> {
        self.lists
    }
}

/// What [`Events`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackerEvent<M> {
    /// Every topic in the scope has exactly these lists now: replace what
    /// is held for the topics the scope covers. The stream starts with one
    /// per shard, and sends one again for a shard whose diffs it could not
    /// keep for a slow reader.
    Lists(TopicLists<M>),
    /// One topic changed; a topic's diffs come in the order they were
    /// made. One diff is shared with every subscriber of the topic.
    Diff(Topic, Arc<TopicDiff<M>>),
    /// The other replicas and where they stand: first, and again after
    /// replica events were skipped for a slow reader.
    Replicas(Vec<(ReplicaId, ReplicaStatus)>),
    /// A replica came, went or changed.
    Replica(ReplicaEvent),
}

/// One topic's diff in a shard's stream of every topic's diffs.
pub(crate) type TopicChange<M> = (Topic, Arc<TopicDiff<M>>);

/// Every topic's diffs of one shard.
pub(crate) type ShardFeed<M> = Feed<TopicChange<M>>;

/// Everything that happens on a replica, as one stream; see
/// [`Tracker::events`](super::Tracker::events).
pub struct Events<M: Meta> {
    shared: Arc<Shared<M>>,
    /// Per shard, the feed and the place in it; `None` once it ended.
    shards: Vec<Option<ShardReader<M>>>,
    replicas: Option<(Arc<Feed<ReplicaEvent>>, Position)>,
    pending: VecDeque<TrackerEvent<M>>,
    /// The shard read first next time, so that none starves the others.
    next: usize,
}

impl<M: Meta> std::fmt::Debug for Events<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<M: Meta> Events<M> {
    pub(crate) fn new(shared: Arc<Shared<M>>) -> Self {
        let mut pending = VecDeque::new();
        let stopped = shared.common.stopped();
        let replicas = (!stopped).then(|| {
            let feed = shared.common.replica_events.clone();
            let pos = feed.join();
            (feed, pos)
        });
        pending.push_back(TrackerEvent::Replicas(shared.replicas()));
        let count = shared.shards.len();
        let mut shards = Vec::with_capacity(count);
        for (i, shard) in shared.shards.iter().enumerate() {
            let (lists, feed) = shard.snapshot_all(!stopped);
            pending.push_back(TrackerEvent::Lists(lists_of(i, count, lists)));
            shards.push(feed);
        }
        Self {
            shared,
            shards,
            replicas,
            pending,
            next: 0,
        }
    }

    /// The next event; `None` once the tracker has stopped.
    pub async fn next(&mut self) -> Option<TrackerEvent<M>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

fn lists_of<M: Meta>(shard: usize, shards: usize, lists: Vec<TopicPresences<M>>) -> TopicLists<M> {
    let mut lists: Vec<(Topic, Vec<KeyGroup<M>>)> =
        lists.into_iter().map(|(t, p)| (t, sorted(p))).collect();
    lists.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    TopicLists {
        scope: TopicScope { shard, shards },
        lists,
    }
}

impl<M: Meta> Stream for Events<M> {
    type Item = TrackerEvent<M>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(event) = this.pending.pop_front() {
            return Poll::Ready(Some(event));
        }
        if let Some((feed, pos)) = &mut this.replicas {
            match feed.read(pos, cx.waker()) {
                Read::Diff(event) => return Poll::Ready(Some(TrackerEvent::Replica(event))),
                Read::Lagged => {
                    feed.skip_to_tail(pos);
                    let statuses = this.shared.replicas();
                    return Poll::Ready(Some(TrackerEvent::Replicas(statuses)));
                }
                Read::Closed => this.replicas = None,
                Read::Empty => {}
            }
        }
        let count = this.shards.len();
        for step in 0..count {
            let i = (this.next + step) % count;
            let Some((feed, pos)) = &mut this.shards[i] else {
                continue;
            };
            match feed.read(pos, cx.waker()) {
                Read::Diff((topic, diff)) => {
                    this.next = (i + 1) % count;
                    return Poll::Ready(Some(TrackerEvent::Diff(topic, diff)));
                }
                Read::Lagged => {
                    this.next = (i + 1) % count;
                    let lists = this.shared.shards[i].resync_all(feed, pos);
                    return Poll::Ready(Some(TrackerEvent::Lists(lists_of(i, count, lists))));
                }
                Read::Closed => this.shards[i] = None,
                Read::Empty => {}
            }
        }
        if this.replicas.is_none() && this.shards.iter().all(Option::is_none) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl<M: Meta> Drop for Events<M> {
    fn drop(&mut self) {
        if let Some((feed, pos)) = &self.replicas {
            feed.leave(pos);
        }
        for (shard, feed) in self.shared.shards.iter().zip(&self.shards) {
            if let Some((feed, pos)) = feed {
                Shard::unsubscribe_all(shard, feed, pos);
            }
        }
    }
}
