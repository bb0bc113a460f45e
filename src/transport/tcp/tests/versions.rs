use super::*;
use crate::protocol::Config;
use crate::transport::TransportStats;
use crate::wire::Versions;
use crate::{Tracker, TrackerMetrics};

/// This build.
const OLD: Versions = Versions::SUPPORTED;

/// The next build: it reads this build's version and its own.
fn next() -> Versions {
    Versions::new(wire::MIN_VERSION, wire::VERSION + 1).unwrap()
}

/// A build two versions on, which stopped reading this one.
fn far() -> Versions {
    Versions::new(wire::VERSION + 2, wire::VERSION + 2).unwrap()
}

/// A tracker advertising `versions`, and its address.
async fn start(
    name: &str,
    versions: Versions,
    peers: &[SocketAddr],
) -> (Tracker<String>, SocketAddr) {
    let mut addr = None;
    let tracker = Tracker::builder(name)
        .config(Config::with_broadcast_period(Duration::from_millis(50)))
        .start_with_async(|id| async {
            let config = config(id, SECRET)
                .with_versions(versions)
                .with_peers(peers.iter().copied());
            let transport = TcpTransport::bind(config).await?;
            addr = Some(transport.local_addr());
            Ok::<_, TransportError>(transport)
        })
        .await
        .unwrap();
    (tracker, addr.unwrap())
}

fn keys(tracker: &Tracker<String>) -> Vec<String> {
    let mut keys: Vec<String> = tracker
        .list("room")
        .into_iter()
        .map(|g| g.key.as_str().to_string())
        .collect();
    keys.sort();
    keys
}

fn tcp(metrics: &TrackerMetrics) -> TcpStats {
    match &metrics.transport {
        Some(TransportStats::Tcp(stats)) => stats.clone(),
        other => panic!("not the TCP mesh: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_converges_and_a_build_without_a_common_version_is_refused() {
    // Two replicas of this build.
    let (a, addr_a) = start("a", OLD, &[]).await;
    let (b, _) = start("b", OLD, &[addr_a]).await;
    let _alice = a.track("room", "alice", "web".into()).unwrap();
    eventually("b to see alice", || keys(&b) == ["alice"]).await;

    // b is upgraded: stopped, then started again as the next build.
    b.shutdown().await;
    let (b, addr_b) = start("b", next(), &[addr_a]).await;
    let _bob = b.track("room", "bob", "web".into()).unwrap();
    eventually("the old and the next build to converge", || {
        keys(&a) == ["alice", "bob"] && keys(&b) == ["alice", "bob"]
    })
    .await;

    // A build that no longer reads this one is refused by both, and
    // changes nothing for them.
    let (c, _) = start("c", far(), &[addr_a, addr_b]).await;
    let _carol = c.track("room", "carol", "web".into()).unwrap();
    eventually("both to refuse the far build", || {
        tcp(&a.metrics()).version_mismatches > 0 && tcp(&b.metrics()).version_mismatches > 0
    })
    .await;
    let _dave = a.track("room", "dave", "web".into()).unwrap();
    eventually("b to see dave", || keys(&b) == ["alice", "bob", "dave"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(keys(&a), ["alice", "bob", "dave"]);
    assert_eq!(keys(&b), ["alice", "bob", "dave"]);
    assert_eq!(keys(&c), ["carol"]);
    assert_eq!(a.metrics().peers_connected, 1);
    assert_eq!(c.metrics().peers_connected, 0);
    assert_eq!(tcp(&c.metrics()).handshakes_ok, 0);
    for t in [a, b, c] {
        t.shutdown().await;
    }
}
