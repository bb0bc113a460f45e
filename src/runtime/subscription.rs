//! Subscriptions: a topic's list and then the diffs that change it, with no
//! gap and no overlap, and a bounded backlog per subscriber.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::feed::{Position, Read, TopicFeed};
use super::keys::{KeyChange, KeyCounts};
use super::shard::Shard;
use crate::state::group_by_key;
use crate::{Key, KeyGroup, Meta, Presence, TopicDiff};

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEvent<M> {
    /// The topic changed: apply these joins, leaves and updates to the list
    /// held so far. One diff is shared by every subscriber of the topic.
    Diff(Arc<TopicDiff<M>>),
    /// The subscriber fell behind by more than its queue holds, so diffs
    /// were skipped: this is the topic's whole list now. Replace the list
    /// held so far with it; diffs continue from there.
    Resync(Vec<KeyGroup<M>>),
    /// A key's first presence joined (with
    /// [`Subscription::with_key_events`]): "alice joined" once, however
    /// many tabs she opens. Comes right after the diff or resync that
    /// made it.
    KeyJoined(Key),
    /// A key's last presence left (with
    /// [`Subscription::with_key_events`]). Comes right after the diff or
    /// resync that made it.
    KeyLeft(Key),
}

/// A subscription to one topic: [`Subscription::list`] is the list when it
/// was taken, and the stream yields every change after it.
///
/// Replaying the list and then every event always gives the live list: the
/// list and the place in the topic's diffs are taken together, under the
/// lock every change of the topic is made and published under. Each
/// subscriber may fall behind by a bounded number of diffs; one that falls
/// further is never waited for: it gets [`SubscriptionEvent::Resync`] with
/// a fresh list once it reads again, without reading the diffs it missed,
/// so a slow reader costs a bounded amount of memory and never stalls the
/// tracker.
pub struct Subscription<M: Meta> {
    list: Vec<KeyGroup<M>>,
    topic: String,
    shard: Arc<Shard<M>>,
    /// `None` when the tracker had stopped: the stream ends at once.
    feed: Option<(Arc<TopicFeed<M>>, Position)>,
    /// Presences per key, when key events were asked for.
    keys: Option<KeyCounts>,
    /// Key events of the last diff, not yet read.
    pending: VecDeque<SubscriptionEvent<M>>,
}

impl<M: Meta> std::fmt::Debug for Subscription<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// A topic's presences in list order (by key, then id), grouped by key.
pub(crate) fn sorted<M>(mut presences: Vec<Presence<M>>) -> Vec<KeyGroup<M>>
where
    M: Meta,
{
    presences.sort_unstable_by(|a, b| (a.key(), a.id()).cmp(&(b.key(), b.id())));
    group_by_key(presences)
}

impl<M: Meta> Subscription<M> {
    pub(crate) fn new(topic: &str, shard: Arc<Shard<M>>) -> Self {
        let (presences, feed) = shard.snapshot(topic, true);
        Self {
            list: sorted(presences),
            topic: topic.to_string(),
            shard,
            feed,
            keys: None,
            pending: VecDeque::new(),
        }
    }

    /// Also yields [`SubscriptionEvent::KeyJoined`] and
    /// [`SubscriptionEvent::KeyLeft`] after each diff that makes a key
    /// appear on the topic or vanish from it. The keys of
    /// [`Subscription::list`] are where it starts from. Costs a count per
    /// key, kept by this subscription.
    ///
    /// ```
    /// use attendance::{SubscriptionEvent, Tracker};
    /// use attendance::transport::MemoryNetwork;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let network = MemoryNetwork::new();
    /// let tracker: Tracker<String> = Tracker::builder("a").start_with(|id| network.join(id))?;
    /// let mut doc = tracker.subscribe("doc:1").with_key_events();
    /// let _tab1 = tracker.track("doc:1", "alice", "tab 1".into())?;
    /// let _tab2 = tracker.track("doc:1", "alice", "tab 2".into())?;
    /// assert!(matches!(doc.next().await, Some(SubscriptionEvent::Diff(_))));
    /// assert!(matches!(doc.next().await, Some(SubscriptionEvent::KeyJoined(k)) if k.as_str() == "alice"));
    /// // The second tab is a presence-level join only.
    /// assert!(matches!(doc.next().await, Some(SubscriptionEvent::Diff(_))));
    /// # tracker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_key_events(mut self) -> Self {
        self.keys = Some(KeyCounts::new(&self.list));
        self
    }

    /// The topic's list when the subscription was taken.
    pub fn list(&self) -> &[KeyGroup<M>] {
        &self.list
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next event; `None` once the tracker has stopped.
    pub async fn next(&mut self) -> Option<SubscriptionEvent<M>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<M: Meta> Stream for Subscription<M> {
    type Item = SubscriptionEvent<M>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(event) = this.pending.pop_front() {
            return Poll::Ready(Some(event));
        }
        let Some((feed, pos)) = &mut this.feed else {
            return Poll::Ready(None);
        };
        let pending = &mut this.pending;
        let mut queue = |change| {
            pending.push_back(match change {
                KeyChange::Joined(key) => SubscriptionEvent::KeyJoined(key),
                KeyChange::Left(key) => SubscriptionEvent::KeyLeft(key),
            });
        };
        match feed.read(pos, cx.waker()) {
            Read::Diff(diff) => {
                if let Some(keys) = &mut this.keys {
                    keys.apply(&diff, &mut queue);
                }
                Poll::Ready(Some(SubscriptionEvent::Diff(diff)))
            }
            Read::Empty => Poll::Pending,
            Read::Closed => Poll::Ready(None),
            // Told by the numbers alone: nothing stale is read first.
            Read::Lagged => {
                let list = sorted(this.shard.resync(&this.topic, feed, pos));
                if let Some(keys) = &mut this.keys {
                    keys.reset(&list, &mut queue);
                }
                Poll::Ready(Some(SubscriptionEvent::Resync(list)))
            }
        }
    }
}

impl<M: Meta> Drop for Subscription<M> {
    fn drop(&mut self) {
        if let Some((feed, pos)) = &self.feed {
            self.shard.unsubscribe(&self.topic, feed, pos);
        }
    }
}
