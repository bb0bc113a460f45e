//! Listing a large topic (for `list`, `subscribe` and a subscriber that
//! lagged) without holding its shard's lock for long.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Waker;

use super::feed::{Position, Read, TopicFeed};
use super::shard::{Shard, Subscribed};
use crate::{Meta, Presence, PresenceId, TopicDiff};

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
        let mut diffs: Vec<Arc<TopicDiff<M>>> = Vec::new();
        loop {
            match feed.read(pos, Waker::noop()) {
                Read::Diff(diff) => diffs.push(diff),
                Read::Empty | Read::Closed => break,
                Read::Lagged => {
                    // More changes came than the feed keeps: one hold.
                    let s = self.lock();
                    feed.skip_to_tail(pos);
                    return s.presences_on(topic);
                }
            }
        }
        if diffs.is_empty() {
            // Nothing moved: every presence was read once.
            return read;
        }
        let mut list: HashMap<PresenceId, Presence<M>> =
            read.into_iter().map(|p| (p.id().clone(), p)).collect();
        for diff in diffs {
            for p in diff.leaves() {
                list.remove(p.id());
            }
            for p in diff.joins() {
                list.insert(p.id().clone(), p.clone());
            }
            for u in diff.updates() {
                list.insert(u.id().clone(), u.presence());
            }
        }
        list.into_values().collect()
    }
}
