//! Listing a large topic (for `list`, `subscribe` and a subscriber that
//! lagged), or every topic of a large shard (for `events` and its reader
//! that lagged), without holding the shard's lock for long.
//!
//! A topic with more than [`SLICE`] visible presences is read a slice of
//! members per hold, from the last member down, while a place in the
//! topic's feed (made for the purpose if the topic has no subscriber)
//! collects every diff published meanwhile. Members move only when one is
//! removed (the last takes its place, and that removal is a leave in the
//! feed) and new ones go last (joins in the feed), so reading downwards
//! sees every presence that does not change meanwhile, maybe twice. The
//! diffs read from the feed up to its end are then replayed over what was
//! read: a join or an update puts that version in, a leave takes it out.
//! The result is the topic's list at the instant the feed was read to its
//! end; for a subscription, its place in the feed is right after it. The
//! states are read as `slices.rs` reads them. A reader that lagged out of
//! the feed falls back to one hold.
//!
//! Every topic of a shard with more than [`SLICE`] visible presences is
//! read the same way, [`SLICE`] entry slots of each state per hold (an
//! entry stays in its slot until removed), against a place in the shard's
//! stream of every topic's diffs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::events::ShardFeed;
use super::feed::{Position, TopicFeed};
use super::shard::{Shard, ShardReader, Subscribed, TopicPresences};
use crate::{Meta, Presence, PresenceId, Topic, TopicDiff};

/// Presences read per hold of the shard's lock; a topic with more is read
/// in slices.
pub(crate) const SLICE: usize = 2048;

impl<M: Meta> Shard<M> {
    /// `snapshot` of a large topic, from a place in its feed taken under
    /// the lock before reading began; see the module docs.
    pub(crate) fn snapshot_in_slices(
        &self,
        topic: &str,
        subscribe: bool,
        feed: Arc<TopicFeed<M>>,
        mut pos: Position,
    ) -> (Vec<Presence<M>>, Option<Subscribed<M>>) {
        let list = self.read_topic_in_slices(topic, &feed, &mut pos);
        let feed = if subscribe {
            Some((feed, pos))
        } else {
            self.unsubscribe(topic, &feed, &pos);
            None
        };
        (list, feed)
    }

    /// `resync` of a large topic: the reader's place moves to the end of
    /// its feed, then the topic is read as `snapshot` reads it.
    pub(crate) fn resync_in_slices(
        &self,
        topic: &str,
        feed: &TopicFeed<M>,
        pos: &mut Position,
    ) -> Vec<Presence<M>> {
        feed.skip_to_tail(pos);
        self.read_topic_in_slices(topic, feed, pos)
    }

    /// The topic's list as of the end of its feed, read from `pos` (taken
    /// before reading began) to that end; see the module docs.
    fn read_topic_in_slices(
        &self,
        topic: &str,
        feed: &TopicFeed<M>,
        pos: &mut Position,
    ) -> Vec<Presence<M>> {
        let read = self.read_in_slices(SLICE, |state, below, out| {
            state.presences_below(topic, below, SLICE, out)
        });
        let Some(diffs) = feed.read_to_end(pos) else {
            // More changes came than the feed keeps: one hold.
            let s = self.lock();
            feed.skip_to_tail(pos);
            return s.presences_on(topic);
        };
        if diffs.is_empty() {
            // Nothing moved: every presence was read once.
            return read;
        }
        let mut list: HashMap<PresenceId, Presence<M>> =
            read.into_iter().map(|p| (p.id().clone(), p)).collect();
        for diff in diffs {
            replay(&mut list, &diff, |p| p);
        }
        list.into_values().collect()
    }

    /// Every topic's visible presences, unsorted, and (to subscribe) a
    /// place in the shard's stream of every topic's diffs right after
    /// them; a large shard is read in slices (see the module docs).
    pub(crate) fn snapshot_all(
        &self,
        subscribe: bool,
    ) -> (Vec<TopicPresences<M>>, Option<ShardReader<M>>) {
        let mut s = self.lock();
        if !subscribe || s.visible() <= SLICE {
            let lists = s.all_presences();
            return (lists, subscribe.then(|| self.all_feed_of(&mut s)));
        }
        let (feed, mut pos) = self.all_feed_of(&mut s);
        drop(s);
        let lists = self.read_all_in_slices(&feed, &mut pos);
        (lists, Some((feed, pos)))
    }

    /// A reader of every topic's diffs that lagged: every topic's
    /// presences now, and its place moved to the diffs after them.
    pub(crate) fn resync_all(
        &self,
        feed: &ShardFeed<M>,
        pos: &mut Position,
    ) -> Vec<TopicPresences<M>> {
        let s = self.lock();
        self.common.resyncs.fetch_add(1, Ordering::Relaxed);
        feed.skip_to_tail(pos);
        if s.visible() <= SLICE {
            return s.all_presences();
        }
        drop(s);
        self.read_all_in_slices(feed, pos)
    }

    /// Every topic's list as of the end of the shard's stream, read from
    /// `pos` (taken before reading began) to that end.
    fn read_all_in_slices(
        &self,
        feed: &ShardFeed<M>,
        pos: &mut Position,
    ) -> Vec<TopicPresences<M>> {
        let read = self.read_in_slices(SLICE, |state, from, out| {
            let from = u32::try_from(from.unwrap_or(0)).unwrap_or(u32::MAX);
            let next = state.presences_in_slots(from, SLICE as u32, out);
            next.map(|slot| slot as usize)
        });
        let Some(diffs) = feed.read_to_end(pos) else {
            let s = self.lock();
            feed.skip_to_tail(pos);
            return s.all_presences();
        };
        let presences: Vec<(Topic, Presence<M>)> = if diffs.is_empty() {
            read
        } else {
            let mut list: HashMap<PresenceId, (Topic, Presence<M>)> = read
                .into_iter()
                .map(|(t, p)| (p.id().clone(), (t, p)))
                .collect();
            for (topic, diff) in diffs {
                replay(&mut list, &diff, |p| (topic.clone(), p));
            }
            list.into_values().collect()
        };
        let mut lists: HashMap<Topic, Vec<Presence<M>>> = HashMap::new();
        for (topic, p) in presences {
            lists.entry(topic).or_default().push(p);
        }
        lists.into_iter().collect()
    }
}

/// Replays one diff over a list read before it: a join or an update puts
/// that version in, a leave takes it out.
fn replay<M: Meta, T>(
    list: &mut HashMap<PresenceId, T>,
    diff: &TopicDiff<M>,
    item: impl Fn(Presence<M>) -> T,
) {
    for p in diff.leaves() {
        list.remove(p.id());
    }
    for p in diff.joins() {
        list.insert(p.id().clone(), item(p.clone()));
    }
    for u in diff.updates() {
        list.insert(u.id().clone(), item(u.presence()));
    }
}
