//! Rotating the cluster secret on a live three-replica cluster over the
//! TCP mesh: install the new secret everywhere, switch to it everywhere,
//! remove the old one everywhere. The links the old secret authenticated
//! close and are dialed again with the new one, and no replica ever hides
//! another's presences.

use std::time::Duration;

use attendance::protocol::Config;
use attendance::transport::TransportStats;
use attendance::transport::tcp::Keyring;
use attendance::{SubscriptionEvent, Tracker};

const OLD: &str = "the old cluster secret, 32 bytes or more";
const NEW: &str = "the new cluster secret, 32 bytes or more";

type T = Tracker<String>;

async fn start(name: &str, peers: &[&T]) -> T {
    Tracker::builder(name)
        .config(Config::with_broadcast_period(Duration::from_millis(100)))
        .listen("127.0.0.1:0".parse().expect("address"))
        .peers(peers.iter().filter_map(|t| t.local_addr()))
        .secret(OLD)
        .start()
        .await
        .expect("starts")
}

async fn settle(until: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !until() {
        assert!(tokio::time::Instant::now() < deadline, "did not settle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn handshakes(t: &T) -> u64 {
    match t.metrics().transport {
        Some(TransportStats::Tcp(stats)) => stats.handshakes_ok,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotates_on_a_live_cluster_with_no_presence_hidden() {
    let a = start("a", &[]).await;
    let b = start("b", &[&a]).await;
    let c = start("c", &[&a, &b]).await;
    let trackers = [&a, &b, &c];
    let _guards: Vec<_> = trackers
        .iter()
        .zip(["alice", "bob", "carol"])
        .map(|(t, user)| t.track("room", user, "web".into()).expect("tracks"))
        .collect();
    settle(|| trackers.iter().all(|t| t.count("room") == 3)).await;
    let mut rooms: Vec<_> = trackers.iter().map(|t| t.subscribe("room")).collect();
    let before: u64 = trackers.iter().map(|t| handshakes(t)).sum();

    let rings: Vec<&Keyring> = trackers
        .iter()
        .map(|t| t.keyring().expect("a TCP tracker has a keyring"))
        .collect();
    for ring in &rings {
        ring.install(NEW).expect("installs");
    }
    for ring in &rings {
        ring.use_secret(Keyring::key_id(NEW)).expect("switches");
    }
    for ring in &rings {
        ring.remove(Keyring::key_id(OLD)).expect("removes");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every link was dialed again, with the new secret.
    settle(|| trackers.iter().map(|t| handshakes(t)).sum::<u64>() >= before + 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (t, room) in trackers.iter().zip(rooms.iter_mut()) {
        assert_eq!(t.count("room"), 3, "{} lists {:?}", t.id(), t.list("room"));
        // Nothing left or joined in between.
        let event = tokio::time::timeout(Duration::from_millis(10), room.next()).await;
        assert!(
            !matches!(event, Ok(Some(SubscriptionEvent::Diff(_)))),
            "{}: {event:?}",
            t.id()
        );
    }

    // A replica that holds only the old secret is kept out now.
    let late = start("late", &[&a]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(late.count("room"), 0);
    for t in [&a, &b, &c, &late] {
        t.shutdown().await;
    }
}
