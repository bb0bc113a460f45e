//! Subscriptions: a topic's list and then the diffs that change it, with no
//! gap and no overlap, and a bounded queue per subscriber.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

use super::Shared;
use crate::state::group_by_key;
use crate::{KeyGroup, Meta, TopicDiff};

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEvent<M> {
    /// The topic changed: apply these joins, leaves and updates to the list
    /// held so far.
    Diff(TopicDiff<M>),
    /// The subscriber fell behind by more than its queue holds, so diffs
    /// were skipped: this is the topic's whole list now. Replace the list
    /// held so far with it; diffs continue from there.
    Resync(Vec<KeyGroup<M>>),
}

/// A subscription to one topic: [`Subscription::list`] is the list when it
/// was taken, and the stream yields every change after it.
///
/// Replaying the list and then every event always gives the live list: the
/// list and the first diff are taken together, under the tracker's lock.
/// Each subscriber has a bounded queue; a subscriber that lets it fill is
/// never waited for: it gets [`SubscriptionEvent::Resync`] with a fresh
/// list once it reads again, so a slow reader costs a bounded amount of
/// memory and never stalls the tracker.
pub struct Subscription<M: Meta> {
    list: Vec<KeyGroup<M>>,
    topic: String,
    id: u64,
    rx: mpsc::Receiver<TopicDiff<M>>,
    shared: Arc<Shared<M>>,
}

impl<M: Meta> std::fmt::Debug for Subscription<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<M: Meta> Subscription<M> {
    pub(crate) fn new(
        list: Vec<KeyGroup<M>>,
        topic: String,
        id: u64,
        rx: mpsc::Receiver<TopicDiff<M>>,
        shared: Arc<Shared<M>>,
    ) -> Self {
        Self {
            list,
            topic,
            id,
            rx,
            shared,
        }
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
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(diff)) => return Poll::Ready(Some(SubscriptionEvent::Diff(diff))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let mut inner = this.shared.lock();
        let lagged = inner
            .subscribers
            .get_mut(&this.topic)
            .and_then(|subs| subs.iter_mut().find(|s| s.id == this.id))
            .is_some_and(|s| std::mem::take(&mut s.lagged));
        if !lagged {
            return Poll::Pending;
        }
        // Whatever is still queued is older than the list taken now, under
        // the same lock as every dispatch.
        while this.rx.try_recv().is_ok() {}
        let list = group_by_key(inner.node.state().presences(&this.topic));
        drop(inner);
        Poll::Ready(Some(SubscriptionEvent::Resync(list)))
    }
}

impl<M: Meta> Drop for Subscription<M> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if let Some(subs) = inner.subscribers.get_mut(&self.topic) {
            subs.retain(|s| s.id != self.id);
            if subs.is_empty() {
                inner.subscribers.remove(&self.topic);
            }
        }
    }
}

/// A subscriber as the dispatcher sees it.
pub(crate) struct Subscriber<M> {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<TopicDiff<M>>,
    /// Its queue filled: nothing more is queued until it resyncs.
    pub(crate) lagged: bool,
}

/// The subscribers of every topic.
pub(crate) type Subscribers<M> = HashMap<String, Vec<Subscriber<M>>>;

/// Queues a topic's diff for its subscribers, marking those whose queue is
/// full as lagged.
pub(crate) fn publish<M: Meta>(subscribers: &mut Subscribers<M>, topic: &str, diff: TopicDiff<M>) {
    let Some(subs) = subscribers.get_mut(topic) else {
        return;
    };
    for sub in subs.iter_mut().filter(|s| !s.lagged) {
        match sub.tx.try_send(diff.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                sub.lagged = true;
                tracing::debug!(topic, "a subscriber lags; it will get a fresh list");
            }
            // Dropped: its `Drop` removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
