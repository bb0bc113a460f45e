//! Subscriptions: a topic's list and then the diffs that change it, with no
//! gap and no overlap, and a bounded queue per subscriber.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// held so far. One diff is shared by every subscriber of the topic.
    Diff(Arc<TopicDiff<M>>),
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
    rx: mpsc::Receiver<Arc<TopicDiff<M>>>,
    /// Set by the dispatcher when the queue filled.
    lagged: Arc<AtomicBool>,
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
        (rx, lagged): (mpsc::Receiver<Arc<TopicDiff<M>>>, Arc<AtomicBool>),
        shared: Arc<Shared<M>>,
    ) -> Self {
        Self {
            list,
            topic,
            id,
            rx,
            lagged,
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
        // A subscriber that fell behind skips what is queued at once
        // rather than reading stale diffs first.
        if this.lagged.load(Ordering::Acquire) {
            let inner = this.shared.lock();
            this.lagged.store(false, Ordering::Release);
            // Whatever is still queued is older than the list taken now,
            // under the same lock as every dispatch.
            while this.rx.try_recv().is_ok() {}
            let list = group_by_key(inner.node.state().presences(&this.topic));
            drop(inner);
            return Poll::Ready(Some(SubscriptionEvent::Resync(list)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(diff)) => Poll::Ready(Some(SubscriptionEvent::Diff(diff))),
            Poll::Ready(None) => Poll::Ready(None),
            // Waiting on an empty queue, it cannot be lagged: that takes a
            // full one, whose first diff already woke it.
            Poll::Pending => Poll::Pending,
        }
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
    pub(crate) tx: mpsc::Sender<Arc<TopicDiff<M>>>,
    /// Its queue filled: nothing more is queued until it resyncs.
    pub(crate) lagged: Arc<AtomicBool>,
}

/// The subscribers of every topic.
pub(crate) type Subscribers<M> = HashMap<String, Vec<Subscriber<M>>>;

/// Queues a topic's diff for its subscribers, one shared copy for all
/// (each costs a reference count), marking those whose queue is full as
/// lagged.
pub(crate) fn publish<M: Meta>(subscribers: &mut Subscribers<M>, topic: &str, diff: TopicDiff<M>) {
    let Some(subs) = subscribers.get_mut(topic) else {
        return;
    };
    let diff = Arc::new(diff);
    for sub in subs
        .iter_mut()
        .filter(|s| !s.lagged.load(Ordering::Acquire))
    {
        match sub.tx.try_send(Arc::clone(&diff)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                sub.lagged.store(true, Ordering::Release);
                tracing::debug!(topic, "a subscriber lags; it will get a fresh list");
            }
            // Dropped: its `Drop` removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
