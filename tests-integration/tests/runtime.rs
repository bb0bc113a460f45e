//! The tracker on tokio over the in-memory network: convergence,
//! read-your-writes, guards, subscriptions (atomic, bounded), graceful
//! shutdown, partitions and one-way cuts. Time is tokio's paused clock, so
//! periods pass instantly and runs are repeatable.

use std::collections::BTreeSet;
use std::time::Duration;

use attendance::protocol::ReplicaStatus;
use attendance::transport::MemoryNetwork;
use attendance::{
    Incarnation, KeyGroup, Limits, StateError, SubscriptionEvent, TopicDiff, Tracker, TrackerError,
    TrackerEvent,
};

mod in_memory;

use in_memory::{T, config, periods, start};

/// A list as comparable rows: key, presence id, meta.
fn rows(list: &[KeyGroup<String>]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|g| {
            g.presences
                .iter()
                .map(|p| (g.key.to_string(), p.id().to_string(), p.meta().clone()))
        })
        .collect()
}

fn same_everywhere(trackers: &[&T], topic: &str) -> bool {
    let first = rows(&trackers[0].list(topic));
    trackers.iter().all(|t| rows(&t.list(topic)) == first)
}

#[tokio::test(start_paused = true)]
async fn three_trackers_converge_on_tracks_updates_and_untracks() {
    let network = MemoryNetwork::new();
    let (a, b, c) = (
        start(&network, "a"),
        start(&network, "b"),
        start(&network, "c"),
    );
    let alice = a.track("room", "alice", "web".into()).expect("tracks");
    assert_eq!(a.count("room"), 1, "read-your-writes");
    let _bob = b.track("room", "bob", "ios".into()).expect("tracks");
    let carol = c.track("room", "carol", "web".into()).expect("tracks");
    periods(3).await;
    assert_eq!(b.count("room"), 3);
    assert!(same_everywhere(&[&a, &b, &c], "room"));

    alice.update("mobile".into()).expect("updates");
    drop(carol);
    periods(3).await;
    assert!(same_everywhere(&[&a, &b, &c], "room"));
    let listed = rows(&c.list("room"));
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|r| r.0 == "alice" && r.2 == "mobile"));
    assert_eq!(c.get("room", "alice").len(), 1);
    for t in [&a, &b, &c] {
        assert_eq!(t.metrics().replicas_up, 2);
        assert_eq!(t.metrics().presences.get("room"), Some(&2));
    }
    for t in [&a, &b, &c] {
        t.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_subscription_replays_to_the_live_list() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let mut guards = vec![a.track("room", "early", "x".into()).expect("tracks")];
    periods(2).await;
    let mut sub = b.subscribe("room");
    let mut view = rows(sub.list());
    assert_eq!(view.len(), 1);
    for i in 0..30 {
        guards.push(
            a.track("room", &format!("u{i}"), "x".into())
                .expect("tracks"),
        );
        if i % 3 == 0 {
            drop(guards.swap_remove(0));
        }
        if i % 5 == 0 {
            guards[0].update(format!("v{i}")).expect("updates");
        }
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    periods(3).await;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(1), sub.next()).await {
        match event {
            SubscriptionEvent::Diff(d) => {
                for p in d.leaves() {
                    assert!(view.remove(&(
                        p.key().to_string(),
                        p.id().to_string(),
                        p.meta().clone()
                    )));
                }
                for u in d.updates() {
                    assert!(view.remove(&(
                        u.key().to_string(),
                        u.id().to_string(),
                        u.old_meta().clone()
                    )));
                    view.insert((u.key().to_string(), u.id().to_string(), u.meta().clone()));
                }
                for p in d.joins() {
                    assert!(view.insert((
                        p.key().to_string(),
                        p.id().to_string(),
                        p.meta().clone()
                    )));
                }
            }
            SubscriptionEvent::Resync(list) => view = rows(&list),
            _ => {}
        }
    }
    assert_eq!(view, rows(&b.list("room")));
    assert_eq!(view.len(), guards.len());
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_gets_a_fresh_list_instead_of_unbounded_diffs() {
    slow_subscriber(10).await;
}

/// The fresh list of a topic this large is read a slice at a time.
#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_of_a_large_topic_gets_a_fresh_list_too() {
    slow_subscriber(5_000).await;
}

/// A subscriber and a reader of every topic that read nothing while `n`
/// presences are tracked.
async fn slow_subscriber(n: usize) {
    let network = MemoryNetwork::new();
    let a: T = Tracker::builder("a")
        .config(config())
        .subscriber_queue(2)
        .start_with(|id| network.join(id))
        .expect("starts");
    let mut sub = a.subscribe("room");
    let mut all = a.events();
    let guards: Vec<_> = (0..n)
        .map(|i| {
            a.track("room", &format!("u{i}"), "x".into())
                .expect("tracks")
        })
        .collect();
    let mut events = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), sub.next()).await {
        events.push(e);
    }
    // The queue filled: the stale diffs in it are skipped, and the first
    // event is the fresh list.
    assert_eq!(events.len(), 1, "one resync, no stale diff first");
    match events.last() {
        Some(SubscriptionEvent::Resync(list)) => assert_eq!(rows(list), rows(&a.list("room"))),
        other => panic!("expected a resync, got {other:?}"),
    }
    // The reader of every topic gets the fresh lists of the shard.
    let mut room = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), all.next()).await {
        match e {
            TrackerEvent::Lists(lists) if lists.scope().contains("room") => {
                let list = lists.lists().iter().find(|(t, _)| t.as_str() == "room");
                room = Some(list.map_or_else(BTreeSet::new, |(_, list)| rows(list)));
            }
            TrackerEvent::Diff(topic, _) if topic.as_str() == "room" => {
                panic!("a stale diff of a topic whose queue filled")
            }
            _ => {}
        }
    }
    assert_eq!(room, Some(rows(&a.list("room"))));
    // Caught up, it gets diffs again.
    let mut guards = guards;
    drop(guards.pop());
    assert!(matches!(sub.next().await, Some(SubscriptionEvent::Diff(_))));
}

#[tokio::test(start_paused = true)]
async fn a_graceful_shutdown_drops_the_replica_everywhere_at_once() {
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let _g = a.track("room", "alice", "web".into()).expect("tracks");
    periods(3).await;
    assert_eq!(b.count("room"), 1);
    a.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.count("room"), 0, "gone without waiting for down_period");
}

/// A replica with more presences in a shard than are made visible or
/// invisible under the node's lock (2,048) goes down, comes back and
/// leaves: a subscriber's list and diffs follow it at every step.
#[tokio::test(start_paused = true)]
async fn a_large_replica_hidden_shown_and_dropped_keeps_subscribers_in_step() {
    const HELD: usize = 5_000;
    let network = MemoryNetwork::new();
    let (a, b) = (start(&network, "a"), start(&network, "b"));
    let mut sub = b.subscribe("room");
    let mut view = rows(sub.list());
    let _guards: Vec<_> = (0..HELD)
        .map(|i| {
            a.track("room", &format!("u{i}"), "x".into())
                .expect("tracks")
        })
        .collect();
    let mut follow = async |count: usize, step: &str| {
        for _ in 0..100 {
            periods(1).await;
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(1), sub.next()).await
            {
                replay(&mut view, event);
            }
            if b.count("room") == count && view == rows(&b.list("room")) {
                return;
            }
        }
        panic!(
            "{step}: {} listed, the subscriber has {}",
            b.count("room"),
            view.len()
        );
    };
    follow(HELD, "caught up").await;
    network.cut("a", "b");
    follow(0, "a is down").await;
    network.heal();
    follow(HELD, "a is back").await;
    a.shutdown().await;
    follow(0, "a left").await;
}

#[tokio::test(start_paused = true)]
async fn replicas_cut_apart_converge_through_a_third_and_partitions_heal() {
    let network = MemoryNetwork::new();
    let (a, b, c) = (
        start(&network, "a"),
        start(&network, "b"),
        start(&network, "c"),
    );
    periods(2).await;
    network.cut("a", "b");
    let _x = a.track("room", "from-a", "1".into()).expect("tracks");
    let _y = b.track("room", "from-b", "2".into()).expect("tracks");
    periods(6).await;
    assert!(same_everywhere(&[&a, &b, &c], "room"));
    assert_eq!(a.count("room"), 2, "b's presence reached a through c");
    assert!(
        a.replicas()
            .iter()
            .any(|(id, s)| *id == b.id() && *s == ReplicaStatus::Up)
    );

    // A one-way cut: c never hears a directly, but through b.
    network.heal();
    network.cut_one_way("a", "c");
    let _z = a.track("room", "from-a-2", "3".into()).expect("tracks");
    periods(8).await;
    assert_eq!(c.count("room"), 3);

    // A full partition longer than down_period, then heal.
    network.heal();
    network.partition(&[&["a"], &["b", "c"]]);
    tokio::time::sleep(config().down_period + config().broadcast_period * 4).await;
    assert_eq!(b.count("room"), 1, "a is down for b");
    let _w = b.track("room", "during", "4".into()).expect("tracks");
    network.heal();
    periods(4).await;
    assert!(same_everywhere(&[&a, &b, &c], "room"));
    assert_eq!(a.count("room"), 4);
}

#[tokio::test(start_paused = true)]
async fn limits_give_typed_errors() {
    let network = MemoryNetwork::new();
    let a: T = Tracker::builder("a")
        .config(config())
        .limits(Limits::default().max_key_len(8))
        .start_with(|id| network.join(id))
        .expect("starts");
    let err = a.track("room", "a-key-that-is-too-long", "x".into()).err();
    assert!(
        matches!(
            err,
            Some(TrackerError::State(StateError::InvalidKey { .. }))
        ),
        "{err:?}"
    );
    assert_eq!(a.count("room"), 0);
    let bad = Tracker::<String>::builder("").start_with(|id| network.join(id));
    assert!(bad.is_err());
}

fn start_as(network: &MemoryNetwork, name: &str, started_ms: u64) -> T {
    Tracker::builder(name)
        .config(config())
        .incarnation(Incarnation::new(started_ms, 1))
        .start_with(|id| network.join(id))
        .expect("starts")
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_streams_end_and_changes_are_refused() {
    let network = MemoryNetwork::new();
    let a = start(&network, "a");
    let mut room = a.subscribe("room");
    let guard = a.track("room", "alice", "web".into()).expect("tracks");
    assert!(matches!(
        room.next().await,
        Some(SubscriptionEvent::Diff(_))
    ));
    a.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(1), room.next()).await;
    assert_eq!(ended.expect("the stream ends at once"), None);
    assert_eq!(
        a.track("room", "bob", "web".into()).err(),
        Some(TrackerError::Stopped)
    );
    assert_eq!(guard.update("ios".into()), Err(TrackerError::Stopped));
    let mut late = a.subscribe("room");
    assert_eq!(late.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_a_clock_behind_moves_above_and_is_listed() {
    // a ran with a start time of 2000 ms and stopped; it restarts with a
    // clock behind (1000 ms), so its new incarnation orders before the old.
    let network = MemoryNetwork::new();
    let b = start_as(&network, "b", 1500);
    let old = start_as(&network, "a", 2000);
    let _alice = old.track("room", "alice", "web".into()).expect("tracks");
    periods(3).await;
    assert_eq!(b.count("room"), 1);
    old.shutdown().await;
    periods(1).await;
    assert_eq!(b.count("room"), 0);

    let new = start_as(&network, "a", 1000);
    let _bob = new.track("room", "bob", "web".into()).expect("tracks");
    periods(5).await;
    assert!(
        new.id().incarnation() > Incarnation::new(2000, 1),
        "moved above the old incarnation: {}",
        new.id()
    );
    let listed = rows(&b.list("room"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed.iter().all(|r| r.0 == "bob"));
    assert_eq!(
        b.replicas()
            .iter()
            .find(|(id, _)| *id == new.id())
            .map(|(_, s)| *s),
        Some(ReplicaStatus::Up)
    );
    new.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_moves_to_a_newer_incarnation_is_still_reached() {
    // Another process starts under a's name with a later clock, says
    // hello, and goes away: a moves above it, while its link keeps the id
    // it joined with.
    let network = MemoryNetwork::new();
    let a = start_as(&network, "a", 1000);
    let b = start_as(&network, "b", 1000);
    let _alice = a.track("room", "alice", "web".into()).expect("tracks");
    periods(3).await;
    let impostor = start_as(&network, "a", 5000);
    periods(2).await;
    impostor.shutdown().await;
    assert!(
        a.id().incarnation() > Incarnation::new(5000, 1),
        "{}",
        a.id()
    );
    let _bob = a.track("room", "bob", "web".into()).expect("tracks");
    periods(5).await;
    let listed = rows(&b.list("room"));
    assert_eq!(listed.len(), 2, "{listed:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A list as rows, replayed with one subscription event: joins must be
/// new, leaves and updates must find what they name.
fn replay(view: &mut BTreeSet<(String, String, String)>, event: SubscriptionEvent<String>) {
    match event {
        SubscriptionEvent::Diff(d) => apply(view, &d),
        SubscriptionEvent::Resync(list) => *view = rows(&list),
        other => panic!("unexpected event {other:?}"),
    }
}

/// Applies one diff to a list, which must hold what it removes and not
/// what it adds.
fn apply(view: &mut BTreeSet<(String, String, String)>, d: &TopicDiff<String>) {
    for p in d.leaves() {
        let row = (p.key().to_string(), p.id().to_string(), p.meta().clone());
        assert!(
            view.remove(&row),
            "a leave of a presence not listed: {row:?}"
        );
    }
    for u in d.updates() {
        let old = (
            u.key().to_string(),
            u.id().to_string(),
            u.old_meta().clone(),
        );
        assert!(
            view.remove(&old),
            "an update of a presence not listed: {old:?}"
        );
        view.insert((u.key().to_string(), u.id().to_string(), u.meta().clone()));
    }
    for p in d.joins() {
        let row = (p.key().to_string(), p.id().to_string(), p.meta().clone());
        assert!(
            view.insert(row.clone()),
            "a join of a presence listed: {row:?}"
        );
    }
}

/// Starts a tracker on real time, for tests that race OS threads.
fn start_live(network: &MemoryNetwork, name: &str) -> T {
    start(network, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_list_ever_shows_part_of_a_catch_up() {
    // Large enough that the catch-up is decoded and merged off the locks,
    // and takes long enough to be listed many times meanwhile.
    const HELD: usize = 60_000;
    let network = MemoryNetwork::new();
    let a = start_live(&network, "a");
    let guards: Vec<_> = (0..HELD)
        .map(|i| {
            a.track("big", &format!("user:{i}"), "web".into())
                .expect("tracks")
        })
        .collect();
    let b = start_live(&network, "b");
    let lister = {
        let b = b.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let listed: usize = b.list("big").iter().map(|g| g.presences.len()).sum();
                let counted = b.count("big");
                seen.push((listed, counted));
                if listed == HELD && counted == HELD {
                    return seen;
                }
                std::thread::yield_now();
            }
        })
    };
    let seen = tokio::task::spawn_blocking(move || lister.join().expect("the lister"))
        .await
        .expect("joins");
    assert!(
        seen.iter().any(|&(listed, _)| listed == 0),
        "listed before the catch-up ended"
    );
    for (listed, counted) in seen {
        assert!(
            listed == 0 || listed == HELD,
            "a list showed {listed} of {HELD} presences"
        );
        assert!(
            counted == 0 || counted == HELD,
            "a count showed {counted} of {HELD} presences"
        );
    }
    b.shutdown().await;
    a.shutdown().await;
    drop(guards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diff_stream_is_atomic_with_lists_per_topic() {
    // Subscriptions taken on two topics while a peer's large catch-up
    // lands on one, and local tracks, updates and untracks go on on both
    // from another thread: each list replayed with its diffs is the live
    // list, with no join seen twice and no leave of a presence not listed.
    const HELD: usize = 20_000;
    let network = MemoryNetwork::new();
    let a = start_live(&network, "a");
    let remote: Vec<_> = (0..HELD)
        .map(|i| {
            a.track("shared", &format!("remote:{i}"), "web".into())
                .expect("tracks")
        })
        .collect();
    let b = start_live(&network, "b");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let topic = if i.is_multiple_of(2) {
                    "shared"
                } else {
                    "other"
                };
                held.push(
                    b.track(topic, &format!("local:{i}"), "x".into())
                        .expect("tracks"),
                );
                if i.is_multiple_of(3) {
                    held[0].update(format!("v{i}")).expect("updates");
                }
                if held.len() > 50 {
                    drop(held.swap_remove(7));
                }
                i += 1;
            }
            held
        })
    };
    let mut subscriptions = Vec::new();
    for round in 0..40 {
        for topic in ["shared", "other"] {
            let sub = b.subscribe(topic);
            let view = rows(sub.list());
            subscriptions.push((sub, view));
        }
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::task::yield_now().await;
    }
    while b.count("shared") < HELD {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let local = tokio::task::spawn_blocking(move || writer.join().expect("the writer"))
        .await
        .expect("joins");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (mut sub, mut view) in subscriptions {
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(50), sub.next()).await
        {
            replay(&mut view, event);
        }
        assert_eq!(view, rows(&b.list(sub.topic())), "topic {}", sub.topic());
    }
    b.shutdown().await;
    a.shutdown().await;
    drop((local, remote));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_other_threads_write_misses_and_repeats_nothing() {
    subscribe_amid_writes(0).await;
}

/// A topic this large is listed a slice at a time, the diffs published
/// meanwhile replayed over what was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_large_topic_while_other_threads_write_misses_and_repeats_nothing() {
    subscribe_amid_writes(20_000).await;
}

/// Subscribes to a topic with `stable` presences that stay (two threads
/// update them) and more that the threads track, update and untrack
/// meanwhile, and every other round starts the stream of every topic
/// too. Each is then checked with the writers paused: its list and diffs
/// replay to the list now, and no list misses a presence that stays or
/// shows one twice.
async fn subscribe_amid_writes(stable: usize) {
    use std::sync::Arc;
    use tokio::sync::RwLock;
    let network = MemoryNetwork::new();
    // Room for every diff written while a list is sorted, so that a
    // subscriber is checked against its diffs rather than a fresh list.
    let a: T = Tracker::builder("a")
        .config(config())
        .subscriber_queue(1 << 16)
        .start_with(|id| network.join(id))
        .expect("starts");
    let stable_guards: Arc<Vec<_>> = Arc::new(
        (0..stable)
            .map(|i| {
                a.track("room", &format!("s:{i}"), "s".into())
                    .expect("tracks")
            })
            .collect(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writers write under the read side; the check pauses them.
    let pause = Arc::new(RwLock::new(()));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (a, stop, stable) = (a.clone(), stop.clone(), stable_guards.clone());
            let pause = pause.clone();
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _writing = pause.blocking_read();
                    held.push_back(
                        a.track("room", &format!("w{w}:{i}"), format!("{i}"))
                            .expect("tracks"),
                    );
                    if i % 4 == 1 {
                        held.back().map(|g| g.update(format!("u{i}")));
                    }
                    if !stable.is_empty() {
                        let g = &stable[(i as usize * 7919 + w) % stable.len()];
                        g.update(format!("w{w}:{i}")).expect("updates");
                    }
                    if held.len() > 20 {
                        held.pop_front();
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let no_repeats = |list: &[KeyGroup<String>]| {
        let listed: usize = list.iter().map(|g| g.presences.len()).sum();
        assert_eq!(listed, rows(list).len(), "a presence listed twice");
        let stable_listed = list.iter().filter(|g| g.key.as_str().starts_with("s:"));
        assert_eq!(
            stable_listed.count(),
            stable,
            "a presence that stays is missing"
        );
    };
    for round in 0..if stable > 0 { 40 } else { 200 } {
        if round % 4 == 0 {
            no_repeats(&a.list("room"));
        }
        let mut sub = a.subscribe("room");
        // The stream of every topic, started beside it every other round.
        let mut events = (round % 2 == 0).then(|| a.events());
        let paused = pause.write().await;
        no_repeats(sub.list());
        let mut view = rows(sub.list());
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(20), sub.next()).await
        {
            if let SubscriptionEvent::Resync(_) = event {
                panic!("fell behind in round {round}");
            }
            replay(&mut view, event);
        }
        let live = rows(&a.list("room"));
        assert_eq!(view, live, "round {round}");
        if let Some(events) = &mut events {
            let mut view = BTreeSet::new();
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(20), events.next()).await
            {
                match event {
                    TrackerEvent::Lists(lists) if lists.scope().contains("room") => {
                        let room = lists.lists().iter().find(|(t, _)| t.as_str() == "room");
                        let list = room.map_or(&[][..], |(_, list)| list);
                        no_repeats(list);
                        view = rows(list);
                    }
                    TrackerEvent::Diff(topic, d) if topic.as_str() == "room" => {
                        apply(&mut view, &d)
                    }
                    _ => {}
                }
            }
            assert_eq!(view, live, "events, round {round}");
        }
        drop(paused);
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        tokio::task::spawn_blocking(move || w.join().expect("a writer"))
            .await
            .expect("joins");
    }
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lagging_subscriber_is_told_at_once_and_skips_what_it_missed() {
    let network = MemoryNetwork::new();
    let a: T = Tracker::builder("a")
        .config(config())
        .subscriber_queue(4)
        .start_with(|id| network.join(id))
        .expect("starts");
    let mut sub = a.subscribe("room");
    let mut guards: Vec<_> = (0..1_000)
        .map(|i| {
            a.track("room", &format!("u{i}"), "x".into())
                .expect("tracks")
        })
        .collect();
    // A thousand diffs came while it held four: the first event is the
    // whole list now, not one of the diffs it missed.
    match sub.next().await {
        Some(SubscriptionEvent::Resync(list)) => assert_eq!(rows(&list), rows(&a.list("room"))),
        other => panic!("expected a resync, got {other:?}"),
    }
    // Then only what changed after it.
    drop(guards.pop());
    match sub.next().await {
        Some(SubscriptionEvent::Diff(d)) => {
            assert_eq!(d.leaves().len(), 1);
            assert_eq!(d.leaves()[0].key().as_str(), "u999");
        }
        other => panic!("expected the leave, got {other:?}"),
    }
    let nothing = tokio::time::timeout(Duration::from_millis(10), sub.next()).await;
    assert!(nothing.is_err(), "nothing stale follows: {nothing:?}");
    a.shutdown().await;
}
