//! One subscription per topic, shared by every socket joined to it.
//!
//! A topic's hub reads the tracker's diffs once, renders each as one
//! `presence_diff` frame and hands that frame to every member's queue. It
//! also keeps the topic's list, replayed from the same diffs, so a joining
//! socket takes the list and its place in the diff sequence together,
//! under the lock the hub broadcasts under: every diff after the list
//! reaches the socket, none before it does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use attendance::{
    Key, KeyGroup, Meta, PresenceId, Subscription, SubscriptionEvent, TopicDiff, Tracker,
};
use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

use crate::policy::Enrich;
use crate::render::{self, Groups, List, MetaJson};

/// A broadcast frame waiting in a socket's queue.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) topic: Arc<str>,
    /// The membership it was queued for, so nothing queued for an earlier
    /// join of the topic reaches a later one.
    pub(crate) member: u64,
    /// The hub's number for the diff, to drop those a fresh list already
    /// holds.
    pub(crate) seq: u64,
    pub(crate) frame: Utf8Bytes,
}

/// A socket's place in a hub.
#[derive(Debug)]
struct Member {
    id: u64,
    queue: mpsc::Sender<Out>,
    /// Set when the queue was full: the hub skips the socket until it
    /// takes a fresh list.
    lagged: AtomicBool,
    /// Wakes the socket to take that list.
    wake: Arc<Notify>,
}

#[derive(Debug)]
struct Hub {
    topic: Arc<str>,
    state: Mutex<HubState>,
    task: OnceLock<AbortHandle>,
    /// Woken whenever the list changes.
    changed: Notify,
}

#[derive(Debug)]
struct HubState {
    list: List,
    seq: u64,
    members: HashMap<u64, Arc<Member>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; should it, the data is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hubs of one endpoint.
pub(crate) struct Hubs<M: Meta> {
    tracker: Tracker<M>,
    enrich: Arc<dyn Enrich>,
    map: Mutex<HashMap<String, Arc<Hub>>>,
    next_member: AtomicU64,
    pub(crate) counters: Arc<Counters>,
}

/// What an endpoint has done, counted as it goes; read by
/// [`crate::Endpoint::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) diffs_rendered: AtomicU64,
    pub(crate) diff_bytes_rendered: AtomicU64,
    pub(crate) diffs_queued: AtomicU64,
    pub(crate) sockets_lagged: AtomicU64,
}

impl<M: Meta> std::fmt::Debug for Hubs<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hubs")
            .field("topics", &lock(&self.map).len())
            .finish_non_exhaustive()
    }
}

/// A socket's membership of a topic's hub; dropping it leaves.
pub(crate) struct Membership<M: Meta> {
    hubs: Arc<Hubs<M>>,
    hub: Arc<Hub>,
    member: Arc<Member>,
}

impl<M: Meta> std::fmt::Debug for Membership<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("topic", &self.hub.topic)
            .finish_non_exhaustive()
    }
}

impl<M: Meta + Send + Sync + 'static> Hubs<M> {
    pub(crate) fn new(tracker: Tracker<M>, enrich: Arc<dyn Enrich>) -> Self {
        Self {
            tracker,
            enrich,
            map: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(0),
            counters: Arc::default(),
        }
    }

    /// How many topics have a hub now.
    pub(crate) fn topics(&self) -> usize {
        lock(&self.map).len()
    }

    pub(crate) fn tracker(&self) -> &Tracker<M> {
        &self.tracker
    }

    pub(crate) fn enrich(&self) -> &dyn Enrich {
        &*self.enrich
    }

    /// Joins `topic`: the membership, the topic's list now and the number
    /// of the last diff it holds. Every later diff goes to `queue`.
    pub(crate) fn join(
        self: &Arc<Self>,
        topic: &str,
        queue: mpsc::Sender<Out>,
        wake: Arc<Notify>,
    ) -> (Membership<M>, List, u64) {
        let member = Arc::new(Member {
            id: self.next_member.fetch_add(1, Ordering::Relaxed),
            queue,
            lagged: AtomicBool::new(false),
            wake,
        });
        let mut map = lock(&self.map);
        let hub = map
            .entry(topic.to_string())
            .or_insert_with(|| self.start(topic))
            .clone();
        let (list, seq) = {
            let mut state = lock(&hub.state);
            state.members.insert(member.id, member.clone());
            (state.list.clone(), state.seq)
        };
        drop(map);
        let membership = Membership {
            hubs: self.clone(),
            hub,
            member,
        };
        (membership, list, seq)
    }

    /// A hub for `topic`, reading a new subscription.
    fn start(&self, topic: &str) -> Arc<Hub> {
        let subscription = self.tracker.subscribe(topic);
        let hub = Arc::new(Hub {
            topic: Arc::from(topic),
            state: Mutex::new(HubState {
                list: list_of(subscription.list()),
                seq: 0,
                members: HashMap::new(),
            }),
            task: OnceLock::new(),
            changed: Notify::new(),
        });
        let task = tokio::spawn(run(
            hub.clone(),
            subscription,
            self.enrich.clone(),
            self.counters.clone(),
        ));
        let _ = hub.task.set(task.abort_handle());
        hub
    }
}

impl<M: Meta> Membership<M> {
    /// The id the hub queues this membership's frames under.
    pub(crate) fn id(&self) -> u64 {
        self.member.id
    }

    /// Whether the socket fell behind and needs a fresh list.
    pub(crate) fn lagged(&self) -> bool {
        self.member.lagged.load(Ordering::Acquire)
    }

    /// The topic's list once it shows the presence `id` under `key` (a
    /// join's own, tracked just before: the hub reads it from the tracker
    /// a moment later), and the number of the last diff it holds; the
    /// list as it is after `patience` in any case.
    pub(crate) async fn list_with(
        &self,
        key: &str,
        id: &PresenceId,
        patience: Duration,
    ) -> (List, u64) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before looking, so no change is missed between.
            let changed = self.hub.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = lock(&self.hub.state);
                let shows = state
                    .list
                    .get(key)
                    .is_some_and(|metas| metas.iter().any(|(i, _)| i == id));
                if shows {
                    return (state.list.clone(), state.seq);
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let state = lock(&self.hub.state);
                return (state.list.clone(), state.seq);
            }
        }
    }

    /// The topic's list now and the number of the last diff it holds;
    /// the hub sends this socket every later diff again.
    pub(crate) fn resync(&self) -> (List, u64) {
        let state = lock(&self.hub.state);
        self.member.lagged.store(false, Ordering::Release);
        (state.list.clone(), state.seq)
    }
}

impl<M: Meta> Drop for Membership<M> {
    fn drop(&mut self) {
        let mut map = lock(&self.hubs.map);
        let mut state = lock(&self.hub.state);
        state.members.remove(&self.member.id);
        if state.members.is_empty() {
            // The last socket left: stop reading the topic.
            if map
                .get(&*self.hub.topic)
                .is_some_and(|h| Arc::ptr_eq(h, &self.hub))
            {
                map.remove(&*self.hub.topic);
            }
            if let Some(task) = self.hub.task.get() {
                task.abort();
            }
        }
    }
}

fn list_of<M: Meta>(groups: &[KeyGroup<M>]) -> List {
    groups
        .iter()
        .map(|group| {
            let metas = group
                .presences
                .iter()
                .map(|p| {
                    (
                        p.id().clone(),
                        render::meta_json(p.meta(), p.version_ref(), None),
                    )
                })
                .collect();
            (group.key.clone(), metas)
        })
        .collect()
}

/// Reads the topic's diffs until the tracker stops or the last member
/// leaves (which aborts this task).
async fn run<M: Meta>(
    hub: Arc<Hub>,
    mut subscription: Subscription<M>,
    enrich: Arc<dyn Enrich>,
    counters: Arc<Counters>,
) {
    while let Some(event) = subscription.next().await {
        match event {
            SubscriptionEvent::Diff(diff) => {
                broadcast(&hub, &diff, &*enrich, &counters);
                hub.changed.notify_waiters();
            }
            SubscriptionEvent::Resync(groups) => {
                // The hub missed diffs, so every member's view may be off:
                // each takes the fresh list.
                let mut state = lock(&hub.state);
                state.list = list_of(&groups);
                state.seq += 1;
                for member in state.members.values() {
                    member.lagged.store(true, Ordering::Release);
                    member.wake.notify_one();
                }
                drop(state);
                hub.changed.notify_waiters();
            }
            _ => {}
        }
    }
}

/// A presence in a diff being broadcast.
type Row = (Key, PresenceId, MetaJson);

fn group(rows: &[Row]) -> Groups<'_> {
    let mut groups = Groups::new();
    for (key, _, meta) in rows {
        groups.entry(key.as_str()).or_default().push(&**meta);
    }
    groups
}

/// Renders one diff once and queues it for every member.
fn broadcast<M: Meta>(hub: &Hub, diff: &TopicDiff<M>, enrich: &dyn Enrich, counters: &Counters) {
    // Only this task changes the list, so what is read here still holds
    // when the lock is taken again; the enrichment runs without it.
    let held = |state: &HubState, key: &Key, id| -> Option<MetaJson> {
        let metas = state.list.get(key)?;
        metas.iter().find(|(i, _)| i == id).map(|(_, m)| m.clone())
    };
    let mut joins: Vec<Row> = Vec::new();
    let mut leaves: Vec<Row> = Vec::new();
    {
        let state = lock(&hub.state);
        for p in diff.joins() {
            let meta = render::meta_json(p.meta(), p.version_ref(), None);
            joins.push((p.key().clone(), p.id().clone(), meta));
        }
        for p in diff.leaves() {
            let meta = held(&state, p.key(), p.id())
                .unwrap_or_else(|| render::meta_json(p.meta(), p.version_ref(), None));
            leaves.push((p.key().clone(), p.id().clone(), meta));
        }
        for u in diff.updates() {
            let new = render::meta_json(u.meta(), u.version_ref(), Some(u.old_version_ref()));
            joins.push((u.key().clone(), u.id().clone(), new));
            let old = held(&state, u.key(), u.id())
                .unwrap_or_else(|| render::meta_json(u.old_meta(), u.old_version_ref(), None));
            leaves.push((u.key().clone(), u.id().clone(), old));
        }
    }
    let frame = render::diff_frame(group(&joins), group(&leaves), &hub.topic, enrich);
    counters.diffs_rendered.fetch_add(1, Ordering::Relaxed);
    let bytes = frame.len() as u64;
    counters
        .diff_bytes_rendered
        .fetch_add(bytes, Ordering::Relaxed);

    let mut state = lock(&hub.state);
    // Leaves first: an update leaves its old version and joins the new.
    for (key, id, _) in &leaves {
        if let Some(metas) = state.list.get_mut(key) {
            metas.retain(|(i, _)| i != id);
            if metas.is_empty() {
                state.list.remove(key);
            }
        }
    }
    for (key, id, meta) in joins {
        let metas = state.list.entry(key).or_default();
        let at = metas.partition_point(|(i, _)| *i < id);
        metas.insert(at, (id, meta));
    }
    state.seq += 1;
    let seq = state.seq;
    let mut queued = 0;
    for member in state.members.values() {
        if member.lagged.load(Ordering::Acquire) {
            continue;
        }
        queued += 1;
        let out = Out {
            topic: hub.topic.clone(),
            member: member.id,
            seq,
            frame: frame.clone(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = member.queue.try_send(out) {
            member.lagged.store(true, Ordering::Release);
            member.wake.notify_one();
            counters.sockets_lagged.fetch_add(1, Ordering::Relaxed);
        }
    }
    counters.diffs_queued.fetch_add(queued, Ordering::Relaxed);
}
