//! What an application built on the tracker needs beyond lists and guards:
//! one stream of every topic's changes and of replicas coming and going,
//! key-level events, topic and key counts, untracking a user's presences,
//! atomic updates, and references to versions that are the same on every
//! replica. Time is tokio's paused clock over the in-memory network.

use std::collections::{BTreeMap, BTreeSet};

use attendance::transport::MemoryNetwork;
use attendance::{
    KeyGroup, ReplicaEvent, StateError, SubscriptionEvent, Tracker, TrackerError, TrackerEvent,
    VersionRef,
};

mod in_memory;

use in_memory::{T, config, periods, start};

/// The next event, or a failure after ten periods.
async fn next<E>(stream: impl std::future::Future<Output = Option<E>>) -> E {
    tokio::time::timeout(config().broadcast_period * 10, stream)
        .await
        .expect("an event within ten periods")
        .expect("the stream goes on")
}

/// What a reader of the event stream holds: per topic, key → metas.
#[derive(Default)]
struct Replayed {
    topics: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    replicas: Vec<ReplicaEvent>,
}

impl Replayed {
    fn apply(&mut self, event: TrackerEvent<String>) {
        match event {
            TrackerEvent::Lists(lists) => {
                let scope = lists.scope();
                self.topics.retain(|topic, _| !scope.contains(topic));
                for (topic, list) in lists.into_lists() {
                    self.topics.insert(topic.to_string(), groups(&list));
                }
            }
            TrackerEvent::Diff(topic, diff) => {
                let list = self.topics.entry(topic.to_string()).or_default();
                for p in diff.leaves() {
                    let metas = list.entry(p.key().to_string()).or_default();
                    metas.remove(p.meta());
                }
                for u in diff.updates() {
                    let metas = list.entry(u.key().to_string()).or_default();
                    metas.remove(u.old_meta());
                    metas.insert(u.meta().clone());
                }
                for p in diff.joins() {
                    let metas = list.entry(p.key().to_string()).or_default();
                    metas.insert(p.meta().clone());
                }
                list.retain(|_, metas| !metas.is_empty());
                if list.is_empty() {
                    self.topics.remove(topic.as_str());
                }
            }
            TrackerEvent::Replica(event) => self.replicas.push(event),
            TrackerEvent::Replicas(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

fn groups(list: &[KeyGroup<String>]) -> BTreeMap<String, BTreeSet<String>> {
    list.iter()
        .map(|g| {
            let metas = g.presences.iter().map(|p| p.meta().clone()).collect();
            (g.key.to_string(), metas)
        })
        .collect()
}

fn live(tracker: &T) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    tracker
        .topics()
        .into_iter()
        .map(|t| (t.topic.to_string(), groups(&tracker.list(t.topic.as_str()))))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_replays_to_every_topics_live_list_and_tells_of_replicas() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let _before = a.track("doc:1", "alice", "web".into()).expect("tracks");
    periods(3).await;
    let mut events = a.events();
    let mut replayed = Replayed::default();
    // The lists of every shard come first.
    let first = next(events.next()).await;
    assert!(
        matches!(first, TrackerEvent::Replicas(ref r) if r.len() == 1),
        "{first:?}"
    );
    let mut guards = Vec::new();
    for i in 0..20 {
        let (tracker, key) = if i % 2 == 0 {
            (&a, "alice")
        } else {
            (&b, "bob")
        };
        guards.push(
            tracker
                .track(&format!("doc:{}", i % 7), key, format!("tab {i}"))
                .expect("tracks"),
        );
    }
    guards[3].update("moved".into()).expect("updates");
    guards.truncate(12);
    periods(3).await;
    while replayed.topics != live(&a) {
        let event = next(events.next()).await;
        replayed.apply(event);
    }
    assert_eq!(live(&a).len(), 7, "every topic is there");

    // b stops answering: a tells of it going down, and its presences leave.
    network.cut("a", "b");
    let down = loop {
        match next(events.next()).await {
            TrackerEvent::Replica(event) => break event,
            event => replayed.apply(event),
        }
    };
    assert_eq!(down, ReplicaEvent::Down(b.id()));
    periods(2).await;
    while replayed.topics != live(&a) {
        let event = next(events.next()).await;
        replayed.apply(event);
    }
    assert!(replayed.topics.values().all(|l| !l.contains_key("bob")));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_joins_once_for_its_first_presence_and_leaves_with_its_last() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let mut doc = b.subscribe("doc").with_key_events();
    let tab1 = a.track("doc", "alice", "tab 1".into()).expect("tracks");
    let tab2 = a.track("doc", "alice", "tab 2".into()).expect("tracks");
    periods(3).await;
    let mut keys = Vec::new();
    let mut collect = async |keys: &mut Vec<String>, until: usize| {
        while keys.len() < until {
            match next(doc.next()).await {
                SubscriptionEvent::KeyJoined(k) => keys.push(format!("+{k}")),
                SubscriptionEvent::KeyLeft(k) => keys.push(format!("-{k}")),
                _ => {}
            }
        }
    };
    collect(&mut keys, 1).await;
    // One period apart, so that b sees each step (changes within one
    // period reach it as their sum).
    drop(tab1);
    periods(3).await;
    let bob = a.track("doc", "bob", "web".into()).expect("tracks");
    periods(3).await;
    drop(bob);
    periods(3).await;
    drop(tab2);
    collect(&mut keys, 4).await;
    assert_eq!(keys, ["+alice", "+bob", "-bob", "-alice"]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn topics_count_presences_and_keys_across_replicas() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let _g = [
        a.track("doc:1", "alice", "laptop".into()).expect("tracks"),
        a.track("doc:1", "alice", "phone".into()).expect("tracks"),
        b.track("doc:1", "alice", "tablet".into()).expect("tracks"),
        b.track("doc:1", "bob", "web".into()).expect("tracks"),
        b.track("doc:2", "carol", "web".into()).expect("tracks"),
    ];
    periods(3).await;
    for t in [&a, &b] {
        let counts: Vec<(String, usize, usize)> = t
            .topics()
            .into_iter()
            .map(|c| (c.topic.to_string(), c.presences, c.keys))
            .collect();
        assert_eq!(counts, [("doc:1".into(), 4, 2), ("doc:2".into(), 1, 1)]);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Topics with their presence and key counts.
type Counts = Vec<(String, usize, usize)>;

/// Every topic's presence and key counts, as `topics()` gives them and as
/// counted from the lists.
fn counts_both_ways(t: &T) -> (Counts, Counts) {
    let told = t
        .topics()
        .into_iter()
        .map(|c| (c.topic.to_string(), c.presences, c.keys))
        .collect();
    let listed = live(t)
        .into_iter()
        .map(|(topic, keys)| {
            let presences = keys.values().map(BTreeSet::len).sum();
            (topic, presences, keys.len())
        })
        .collect();
    (told, listed)
}

#[tokio::test(start_paused = true)]
async fn key_counts_follow_a_catch_up_a_partition_and_a_replica_leaving() {
    let network = MemoryNetwork::new();
    let a = start(&network, "a");
    // More changes in one topic than the counts take in one hold, with
    // keys held twice on `a` and once more on `b`.
    let guards_a: Vec<_> = (0..6_000)
        .map(|i| {
            let key = format!("user:{}", i % 4_000);
            a.track("doc:big", &key, format!("a{i}")).expect("tracks")
        })
        .collect();
    let b = start(&network, "b");
    let guards_b: Vec<_> = (0..10)
        .map(|i| b.track("doc:big", &format!("user:{i}"), format!("b{i}")))
        .chain([b.track("doc:big", "user:9000", "b".into())])
        .chain([b.track("doc:small", "user:1", "b".into())])
        .collect::<Result<_, _>>()
        .expect("tracks");
    periods(5).await;
    let (told, listed) = counts_both_ways(&b);
    assert_eq!(told, listed);
    assert_eq!(
        told,
        [("doc:big".into(), 6_011, 4_001), ("doc:small".into(), 1, 1)]
    );
    // Cut off, `a` is hidden on `b` (its presences leave in one diff),
    // then shown again once healed (they join in one diff).
    network.cut("a", "b");
    periods(30).await;
    let (told, listed) = counts_both_ways(&b);
    assert_eq!(told, listed);
    assert_eq!(told[0], ("doc:big".into(), 11, 11));
    network.heal();
    periods(30).await;
    let (told, listed) = counts_both_ways(&b);
    assert_eq!(told, listed);
    assert_eq!(told[0], ("doc:big".into(), 6_011, 4_001));
    a.shutdown().await;
    drop(guards_a);
    periods(30).await;
    let (told, listed) = counts_both_ways(&b);
    assert_eq!(told, listed);
    assert_eq!(
        told,
        [("doc:big".into(), 11, 11), ("doc:small".into(), 1, 1)]
    );
    drop(guards_b);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_counts_start_right_while_other_threads_track_and_untrack() {
    let network = MemoryNetwork::new();
    let t = start(&network, "a");
    // Several slices of entries per shard, so that the counts are read
    // over several holds of each lock while the churn goes on.
    let _held: Vec<_> = (0..40_000)
        .map(|i| {
            let key = format!("user:{}", i % 25_000);
            t.track(&format!("doc:{}", i % 4), &key, format!("{i}"))
                .expect("tracks")
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn: Vec<_> = (0..2)
        .map(|w| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut kept = std::collections::VecDeque::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("user:{}", (i * 7 + w) % 30_000);
                    let topic = format!("doc:{}", i % 4);
                    kept.push_back(t.track(&topic, &key, format!("c{w}-{i}")).expect("tracks"));
                    if kept.len() > 500 {
                        kept.pop_front();
                    }
                    i += 1;
                }
                kept
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let first = t.topics();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _kept: Vec<_> = churn
        .into_iter()
        .map(|c| c.join().expect("churns"))
        .collect();
    assert_eq!(first.len(), 4);
    let (told, listed) = counts_both_ways(&t);
    assert_eq!(told, listed);
    t.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn untracking_a_key_removes_its_local_presences_only_and_its_guards_go_quiet() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let tab1 = a.track("doc", "alice", "tab 1".into()).expect("tracks");
    let tab2 = a.track("doc", "alice", "tab 2".into()).expect("tracks");
    let _remote = b.track("doc", "alice", "phone".into()).expect("tracks");
    let _bob = a.track("doc", "bob", "web".into()).expect("tracks");
    periods(3).await;
    assert_eq!(a.untrack_key("doc", "alice"), 2);
    assert_eq!(a.untrack_key("doc", "alice"), 0, "nothing left here");
    let err = tab1.update_with(|m| m.clone()).expect_err("untracked");
    assert!(
        matches!(err, TrackerError::State(StateError::UnknownPresence(_))),
        "{err}"
    );
    drop(tab1);
    drop(tab2);
    periods(3).await;
    for t in [&a, &b] {
        let alice: Vec<String> = t
            .get("doc", "alice")
            .iter()
            .map(|p| p.meta().clone())
            .collect();
        assert_eq!(alice, ["phone"]);
        assert_eq!(t.get("doc", "bob").len(), 1);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn concurrent_updates_from_closures_lose_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let network = MemoryNetwork::new();
        let a: Tracker<u64> = Tracker::builder("a")
            .start_with(|id| network.join(id))
            .expect("starts");
        let guard = std::sync::Arc::new(a.track("counter", "clicks", 0).expect("tracks"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let guard = guard.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        guard.update_with(|n| n + 1).expect("updates");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(*a.get("counter", "clicks")[0].meta(), 2000);
        a.shutdown().await;
    });
}

#[tokio::test(start_paused = true)]
async fn a_version_has_the_same_reference_on_every_replica_and_updates_name_the_previous() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let mut doc = b.subscribe("doc");
    let guard = a.track("doc", "alice", "web".into()).expect("tracks");
    periods(3).await;
    let refs = |t: &T| -> Vec<VersionRef> {
        t.get("doc", "alice")
            .iter()
            .map(|p| p.version_ref())
            .collect()
    };
    assert_eq!(refs(&a), refs(&b));
    let first = refs(&a)[0];
    guard.update("mobile".into()).expect("updates");
    periods(3).await;
    assert_eq!(refs(&a), refs(&b));
    assert_ne!(refs(&a)[0], first);
    let update = loop {
        if let SubscriptionEvent::Diff(diff) = next(doc.next()).await
            && let Some(u) = diff.updates().first()
        {
            break u.clone();
        }
    };
    assert_eq!(update.old_version_ref(), first);
    assert_eq!(update.version_ref(), refs(&b)[0]);
    a.shutdown().await;
    b.shutdown().await;
}
