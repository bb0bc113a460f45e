//! The tracker over a real `nats-server` (Debian's, started here on
//! loopback with random ports): convergence through one server and through
//! a cluster, failover, a server restart, a route partition, catch-ups
//! larger than `max_payload`, "no responders" (and a requester whose
//! holder is killed asking another), a slow consumer, wrong
//! credentials and per-replica permissions. A missing `nats-server` fails
//! these tests (the README's test command installs it).

#[path = "nats/holder.rs"]
mod holder;
#[path = "nats/proxy.rs"]
mod proxy;
#[path = "nats/server.rs"]
mod server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attendance::protocol::{Config, Destination, MessageKind, Node, ReplicaStatus, Transmit};
use attendance::transport::nats::{
    NatsAuth, NatsConfig, NatsError, NatsStats, NatsTls, NatsTransport, subject_token,
};
use attendance::transport::{Transport, TransportError, TransportEvent, TransportStats};
use attendance::{
    Incarnation, PresenceGuard, ReplicaId, ReplicaName, StartError, State, SubscriptionEvent,
    Tracker,
};
use proxy::Proxy;
use server::NatsServer;

type T = Tracker<String>;

const SECRET: &str = "the cluster secret of the NATS tests, 32+ bytes";
const PERIOD: Duration = Duration::from_millis(100);

fn config(down: Duration) -> Config {
    let mut config = Config::with_broadcast_period(PERIOD);
    config.down_period = down;
    config
}

fn nats(urls: &[String]) -> NatsConfig {
    let mut nats = NatsConfig::new(urls.iter().cloned()).with_secret(SECRET);
    nats.cluster = "test".into();
    nats.reconnect_backoff_min = Duration::from_millis(10);
    nats.reconnect_backoff_max = Duration::from_millis(100);
    nats.connect_timeout = Duration::from_secs(5);
    nats
}

async fn start_with(name: &str, nats: NatsConfig, down: Duration) -> T {
    Tracker::builder(name)
        .config(config(down))
        .nats(nats)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

async fn start(name: &str, url: &str) -> T {
    start_with(name, nats(&[url.to_string()]), Duration::from_secs(2)).await
}

fn keys(t: &T, topic: &str) -> BTreeSet<String> {
    t.list(topic)
        .into_iter()
        .map(|g| g.key.to_string())
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn stats(t: &T) -> NatsStats {
    match t.metrics().transport {
        Some(TransportStats::Nats(s)) => s,
        other => panic!("not NATS stats: {other:?}"),
    }
}

/// Polls `done` every 10 ms until it holds; fails after `within`.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Waits until every tracker lists exactly `expected` under "room";
/// fails after `within`.
async fn until_all_list(
    what: &str,
    within: Duration,
    trackers: &[&T],
    expected: &[&str],
) -> Duration {
    let expected = set(expected);
    until(what, within, || {
        trackers.iter().all(|t| keys(t, "room") == expected)
    })
    .await
}

fn track(t: &T, key: &str) -> PresenceGuard<String> {
    t.track("room", key, "web".into()).expect("tracks")
}

async fn shutdown(trackers: &[&T]) {
    for t in trackers {
        t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_through_one_server() {
    let server = NatsServer::start(&[]);
    let (a, b, c) = (
        start("a", &server.url()).await,
        start("b", &server.url()).await,
        start("c", &server.url()).await,
    );
    let alice = track(&a, "alice");
    let _bob = track(&b, "bob");
    let _carol = track(&c, "carol");
    let took = until_all_list(
        "all three list every presence",
        Duration::from_secs(10),
        &[&a, &b, &c],
        &["alice", "bob", "carol"],
    )
    .await;
    eprintln!("3 replicas, one server: converged in {took:?}");
    drop(alice);
    until(
        "the untrack reaches everyone",
        Duration::from_secs(10),
        || {
            [&a, &b, &c]
                .iter()
                .all(|t| keys(t, "room") == set(&["bob", "carol"]))
        },
    )
    .await;
    for t in [&a, &b, &c] {
        let s = stats(t);
        assert!(s.connected && s.messages_sent > 0 && s.messages_received > 0);
        assert_eq!(s.frames_unauthenticated + s.frames_wrong_subject, 0);
        assert_eq!(t.metrics().peers_connected, 2);
    }
    shutdown(&[&a, &b, &c]).await;
}

/// Three nodes meshed by gossip from one seed, with monitoring.
fn cluster() -> Vec<NatsServer> {
    let node = |name: &str, seed: Option<&str>| {
        let mut args = vec![
            "-n",
            name,
            "-m",
            "-1",
            "--cluster",
            "nats://127.0.0.1:-1",
            "--cluster_name",
            "t",
        ];
        if let Some(seed) = seed {
            args.extend(["--routes", seed]);
        }
        NatsServer::start(&args)
    };
    let n1 = node("n1", None);
    let seed = n1.cluster_url();
    let nodes = vec![n1, node("n2", Some(&seed)), node("n3", Some(&seed))];
    let started = Instant::now();
    while !nodes.iter().all(|n| n.routes() == 2) {
        assert!(started.elapsed() < Duration::from_secs(10), "no full mesh");
        std::thread::sleep(Duration::from_millis(10));
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_through_a_cluster_one_node_each() {
    let nodes = cluster();
    let (a, b, c) = (
        start("a", &nodes[0].url()).await,
        start("b", &nodes[1].url()).await,
        start("c", &nodes[2].url()).await,
    );
    let _g = [track(&a, "alice"), track(&b, "bob"), track(&c, "carol")];
    let took = until_all_list(
        "all three list every presence",
        Duration::from_secs(10),
        &[&a, &b, &c],
        &["alice", "bob", "carol"],
    )
    .await;
    eprintln!("3 replicas on 3 NATS nodes: converged in {took:?}");
    shutdown(&[&a, &b, &c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_node_dies_fails_over_and_the_cluster_converges() {
    let mut nodes = cluster();
    let (a, b, c) = (
        start("a", &nodes[0].url()).await,
        start("b", &nodes[1].url()).await,
        start("c", &nodes[2].url()).await,
    );
    let mut guards = vec![track(&a, "alice"), track(&b, "bob"), track(&c, "carol")];
    until_all_list(
        "all three converge",
        Duration::from_secs(10),
        &[&a, &b, &c],
        &["alice", "bob", "carol"],
    )
    .await;

    nodes[0].kill();
    guards.push(track(&a, "dave"));
    guards.push(track(&b, "erin"));
    let took = until_all_list(
        "the cluster converges after a's node died",
        Duration::from_secs(10),
        &[&a, &b, &c],
        &["alice", "bob", "carol", "dave", "erin"],
    )
    .await;
    eprintln!("a's NATS node killed: converged again {took:?} later");
    let s = stats(&a);
    assert!(
        s.connected && s.connects >= 2 && s.disconnects >= 1,
        "{s:?}"
    );
    for t in [&a, &b, &c] {
        assert!(t.replicas().iter().all(|(_, s)| *s == ReplicaStatus::Up));
    }
    drop(guards);
    shutdown(&[&a, &b, &c]).await;
}

/// Counts the leaves a tracker's subscription to `room` reports.
fn count_leaves(t: &T) -> Arc<AtomicUsize> {
    let leaves = Arc::new(AtomicUsize::new(0));
    let mut sub = t.subscribe("room");
    let counted = Arc::clone(&leaves);
    tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            if let SubscriptionEvent::Diff(d) = event {
                counted.fetch_add(d.leaves().len(), Ordering::Relaxed);
            }
        }
    });
    leaves
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reconverge_when_the_only_server_returns_and_none_is_marked_down() {
    let mut server = NatsServer::start(&[]);
    let url = [server.url()];
    let down = Duration::from_secs(4);
    let (a, b, c) = (
        start_with("a", nats(&url), down).await,
        start_with("b", nats(&url), down).await,
        start_with("c", nats(&url), down).await,
    );
    let mut guards = vec![track(&a, "alice"), track(&b, "bob"), track(&c, "carol")];
    until("all three converge", Duration::from_secs(10), || {
        [&a, &b, &c].iter().all(|t| keys(t, "room").len() == 3)
    })
    .await;
    let leaves: Vec<_> = [&a, &b, &c].iter().map(|t| count_leaves(t)).collect();

    server.kill();
    let outage = Instant::now();
    until(
        "every replica sees its link down",
        Duration::from_secs(5),
        || [&a, &b, &c].iter().all(|t| !stats(t).connected),
    )
    .await;
    // Changes while the broker is away: queued, lost, or both.
    guards.push(track(&a, "dave"));
    guards.push(track(&c, "erin"));
    drop(guards.remove(1)); // bob leaves
    // The outage: well under down_period.
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart();
    let took = until_all_list(
        "all three converge again",
        Duration::from_secs(10),
        &[&a, &b, &c],
        &["alice", "carol", "dave", "erin"],
    )
    .await;
    eprintln!(
        "server down {:?}: converged {took:?} after it returned",
        outage.elapsed() - took
    );
    for (t, leaves) in [&a, &b, &c].iter().zip(&leaves) {
        assert_eq!(
            leaves.load(Ordering::Relaxed),
            1,
            "only bob left, nobody was marked down"
        );
        assert!(t.replicas().iter().all(|(_, s)| *s == ReplicaStatus::Up));
        let s = stats(t);
        assert!(s.connects >= 2 && s.disconnects >= 1, "{s:?}");
    }
    drop(guards);
    shutdown(&[&a, &b, &c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_partition_hides_each_side_after_down_period_and_heals() {
    // Two nodes whose only route runs through proxies the test can cut:
    // each advertises its proxy's address for routes and no cluster
    // addresses to clients, so neither routes nor clients go around it.
    let (to_n1, to_n2) = (Proxy::start().await, Proxy::start().await);
    let node = |name: &str, own: &Proxy, other: &Proxy| {
        NatsServer::start(&[
            "-n",
            name,
            "-m",
            "-1",
            "--cluster",
            "nats://127.0.0.1:-1",
            "--cluster_name",
            "t",
            "--cluster_advertise",
            &own.addr.to_string(),
            "--no_advertise=true",
            "--routes",
            &other.url(),
        ])
    };
    let n1 = node("n1", &to_n1, &to_n2);
    to_n1.forward_to(&n1.cluster_url());
    let n2 = node("n2", &to_n2, &to_n1);
    to_n2.forward_to(&n2.cluster_url());
    let routed = |want: usize| [&n1, &n2].iter().all(|n| n.routes() == want);
    until("the route is up", Duration::from_secs(10), || routed(1)).await;

    let down = Duration::from_secs(2);
    let (a, b, c) = (
        start_with("a", nats(&[n1.url()]), down).await,
        start_with("b", nats(&[n1.url()]), down).await,
        start_with("c", nats(&[n2.url()]), down).await,
    );
    let mut guards = vec![track(&a, "alice"), track(&b, "bob"), track(&c, "carol")];
    until_all_list(
        "all three converge",
        Duration::from_secs(10),
        &[&a, &b, &c],
        &["alice", "bob", "carol"],
    )
    .await;

    to_n1.cut();
    to_n2.cut();
    until(
        "no route is left around the cut",
        Duration::from_secs(5),
        || routed(0),
    )
    .await;
    let cut = Instant::now();
    guards.push(track(&a, "dave"));
    let took = until(
        "each side hides the other side's presences",
        down + Duration::from_secs(5),
        || {
            keys(&a, "room") == set(&["alice", "bob", "dave"])
                && keys(&b, "room") == set(&["alice", "bob", "dave"])
                && keys(&c, "room") == set(&["carol"])
        },
    )
    .await;
    eprintln!("route cut: sides hidden from each other after {took:?}");
    for t in [&a, &b, &c] {
        assert!(stats(t).connected, "the clients stay connected");
    }
    assert!(
        cut.elapsed() >= Duration::from_millis(250),
        "hidden only after heartbeats stopped crossing"
    );

    to_n1.heal();
    to_n2.heal();
    let took = until_all_list(
        "the sides converge after the heal",
        Duration::from_secs(15),
        &[&a, &b, &c],
        &["alice", "bob", "carol", "dave"],
    )
    .await;
    eprintln!("route healed: converged {took:?} later");
    assert!(routed(1));
    drop(guards);
    shutdown(&[&a, &b, &c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_max_payload_arrives_in_pieces() {
    let server = NatsServer::with_config("max_payload: 16384\n", &[]);
    let a = start("a", &server.url()).await;
    let meta = "m".repeat(100);
    let guards: Vec<_> = (0..400)
        .map(|i| {
            a.track("big", &format!("user:{i}"), meta.clone())
                .expect("tracks")
        })
        .collect();
    // With no peer linked, a's next period drops these changes instead of
    // broadcasting them (peers that come later catch up): b, started three
    // periods later, can only get them by catch-up. The wait orders the two
    // starts; nothing is timed by it.
    tokio::time::sleep(PERIOD * 3).await;
    let b = start("b", &server.url()).await;
    until("b caught up a's presences", Duration::from_secs(10), || {
        b.count("big") == 400
    })
    .await;
    let (sa, sb) = (stats(&a), stats(&b));
    assert_eq!(sa.max_payload, 16384);
    assert!(sa.messages_split >= 1, "the catch-up answer: {sa:?}");
    assert!(sb.messages_joined >= 1, "{sb:?}");
    assert!(b.metrics().protocol.catchups_requested >= 1);
    assert_eq!(sb.pieces_dropped, 0);
    drop(guards);
    shutdown(&[&a, &b]).await;
}

fn id(name: &str) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).expect("a name"),
        Incarnation::new(1_764_000_000_000, 1),
    )
}

/// The second byte of a protocol message is its kind; 4 is a catch-up
/// request, 3 an interval. The transport reads no more of it.
const INTERVAL: &[u8] = &[2, 3, 0, 0, 0];
const REQUEST: &[u8] = &[2, 4, 0, 0, 0];

async fn next_event(t: &mut NatsTransport, within: Duration) -> Option<TransportEvent> {
    tokio::time::timeout(within, t.recv()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_vanished_holder_reports_its_link_lost_within_a_period() {
    let server = NatsServer::start(&[]);
    let url = [server.url()];
    let mut requester = NatsTransport::connect(nats(&url), id("requester"))
        .await
        .expect("connects");
    let mut holder = NatsTransport::connect(nats(&url), id("holder"))
        .await
        .expect("connects");
    holder.send(&Destination::All, INTERVAL.into());
    let mut heard = false;
    while !heard {
        match next_event(&mut requester, Duration::from_secs(5)).await {
            Some(TransportEvent::Message { from, .. }) => heard = from == id("holder"),
            Some(_) => {}
            None => panic!("the holder's message never came"),
        }
    }
    holder.close().await;
    drop(holder);
    // Until the server has dropped the holder's subscriptions, a request
    // still finds them: ask again each period.
    let started = Instant::now();
    let lost_after = loop {
        assert!(started.elapsed() < Duration::from_secs(5), "no LinkLost");
        let asked = Instant::now();
        requester.send(&Destination::Replica(id("holder")), REQUEST.into());
        match next_event(&mut requester, PERIOD).await {
            Some(TransportEvent::LinkLost(peer)) => {
                assert_eq!(peer, id("holder"));
                break asked.elapsed();
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    };
    eprintln!("no responders: the holder was reported lost {lost_after:?} after the request");
    assert!(lost_after < PERIOD);
    assert!(requester.stats().no_responders >= 1);
    requester.close().await;
}

/// Runs a tracker on a runtime and thread of its own, so that blocking it
/// leaves the others running.
struct Isolated {
    tracker: T,
    handle: tokio::runtime::Handle,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Isolated {
    fn start(name: &str, nats: NatsConfig) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let tracker = rt.block_on(start_with(&name, nats, Duration::from_secs(4)));
            let _ = tx.send((tracker.clone(), rt.handle().clone()));
            rt.block_on(async {
                while let Err(std::sync::mpsc::TryRecvError::Empty) = stopped.try_recv() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tracker.shutdown().await;
            });
        });
        let (tracker, handle) = rx.recv().expect("started");
        Self {
            tracker,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

#[test]
fn a_slow_consumer_blocks_no_one_and_catches_up() {
    let server = NatsServer::start(&[]);
    let url = [server.url()];
    let a = Isolated::start("a", nats(&url));
    let mut slow = nats(&url);
    // A small buffer, so the burst after the block overflows it.
    slow.subscription_capacity = 8;
    let b = Isolated::start("b", slow);
    let c = Isolated::start("c", nats(&url));
    let (ta, tb, tc) = (&a.tracker, &b.tracker, &c.tracker);
    let mut guards = vec![track(ta, "alice"), track(tb, "bob"), track(tc, "carol")];
    wait("all three converge", Duration::from_secs(10), || {
        [ta, tb, tc].iter().all(|t| t.count("room") == 3)
    });

    let blocked = Instant::now();
    b.handle
        .spawn(async { std::thread::sleep(Duration::from_secs(2)) });
    for i in 0..200 {
        guards.push(track(ta, &format!("user:{i}")));
        if i % 20 == 0 {
            std::thread::sleep(PERIOD / 2);
        }
    }
    let took = wait(
        "c sees a's changes while b is blocked",
        Duration::from_secs(2),
        || tc.count("room") == 203,
    );
    assert!(
        blocked.elapsed() < Duration::from_secs(2),
        "a and c kept up while b was blocked ({took:?})"
    );
    assert_eq!(tb.count("room"), 3, "b was blocked meanwhile");
    let took = wait("b catches up", Duration::from_secs(10), || {
        tb.count("room") == 203
    });
    eprintln!("slow consumer: caught up {took:?} after a 2 s block");
    let s = stats(tb);
    assert!(s.slow_consumer_events > 0, "its buffer overflowed: {s:?}");
    assert!(tb.metrics().protocol.catchups_requested > 0);
    assert!(
        [ta, tb, tc]
            .iter()
            .all(|t| t.replicas().iter().all(|(_, s)| *s == ReplicaStatus::Up))
    );
    drop(guards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_or_no_server_fail_at_start() {
    let server = NatsServer::start(&["--user", "a", "--pass", "right"]);
    let mut wrong = nats(&[server.url()]);
    wrong.auth = NatsAuth::UserPassword {
        user: "a".into(),
        password: "wrong".into(),
    };
    let started = Instant::now();
    let refused = Tracker::<String>::builder("a")
        .config(config(Duration::from_secs(2)))
        .nats(wrong)
        .start()
        .await
        .expect_err("wrong credentials fail");
    assert!(
        matches!(
            refused,
            StartError::Transport(TransportError::Nats(NatsError::Auth(_)))
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("credentials"), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(2), "at once");

    let mut right = nats(&[server.url()]);
    right.auth = NatsAuth::UserPassword {
        user: "a".into(),
        password: "right".into(),
    };
    let a = start_with("a", right, Duration::from_secs(2)).await;
    a.shutdown().await;

    let mut nowhere = nats(&["nats://127.0.0.1:1".to_string()]);
    nowhere.connect_timeout = Duration::from_millis(300);
    let refused = Tracker::<String>::builder("b")
        .nats(nowhere)
        .secret(SECRET)
        .start()
        .await
        .expect_err("no server");
    assert!(
        matches!(
            refused,
            StartError::Transport(TransportError::Nats(NatsError::Unreachable { .. }))
        ),
        "{refused}"
    );

    // TLS the server does not speak: a clean error, not a panic.
    let mut tls = nats(&[server.url()]).with_tls(NatsTls::new());
    tls.connect_timeout = Duration::from_millis(500);
    let refused = Tracker::<String>::builder("d")
        .nats(tls)
        .start()
        .await
        .expect_err("no TLS on the server");
    assert!(
        matches!(
            refused,
            StartError::Transport(TransportError::Nats(
                NatsError::Tls(_) | NatsError::Unreachable { .. }
            ))
        ),
        "{refused}"
    );

    let no_secret = NatsConfig::new([server.url()]);
    let refused = Tracker::<String>::builder("c")
        .nats(no_secret)
        .start()
        .await
        .expect_err("no secret");
    assert!(
        matches!(refused, StartError::Missing("secret")),
        "{refused}"
    );
}

/// Users that may publish only on their own replica's subjects.
fn permissions(prefix: &str, names: &[&str]) -> String {
    let users: Vec<String> = names
        .iter()
        .map(|x| {
            format!(
                "{{ user: {x}, password: pw-{x}, permissions: {{ \
                 publish: [\"{prefix}.bcast.{x}\", \"{prefix}.rpc.*.{x}\", \"{prefix}.inbox.*.{x}\"], \
                 subscribe: [\"{prefix}.bcast.*\", \"{prefix}.rpc.{x}.*\", \"{prefix}.inbox.{x}.*\"] }} }}"
            )
        })
        .collect();
    format!(
        "authorization {{\n users = [\n  {}\n ]\n}}\n",
        users.join("\n  ")
    )
}

fn as_user(url: &str, user: &str) -> NatsConfig {
    let mut config = nats(&[url.to_string()]).without_message_auth();
    config.prefix = "t".into();
    config.cluster = "perm".into();
    config.auth = NatsAuth::UserPassword {
        user: user.into(),
        password: format!("pw-{user}"),
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_limited_to_its_own_subjects_cannot_speak_as_another() {
    let server = NatsServer::with_config(&permissions("t.perm", &["a", "b", "mallory"]), &[]);
    let url = server.url();
    let down = Duration::from_secs(2);
    let a = start_with("a", as_user(&url, "a"), down).await;
    let b = start_with("b", as_user(&url, "b"), down).await;
    let _g = [track(&a, "alice"), track(&b, "bob")];
    until("a and b converge", Duration::from_secs(10), || {
        [&a, &b]
            .iter()
            .all(|t| keys(t, "room") == set(&["alice", "bob"]))
    })
    .await;

    // Mallory's user runs a replica named "a": the server refuses its
    // subjects, and it does not start.
    let refused = Tracker::<String>::builder("a")
        .config(config(down))
        .nats(as_user(&url, "mallory"))
        .start()
        .await
        .expect_err("a replica of another name does not start");
    match &refused {
        StartError::Transport(TransportError::Nats(NatsError::Permissions { subject, .. })) => {
            // One of a's subjects, as the server named it.
            assert!(subject.starts_with("t.perm."), "{subject}");
            assert!(
                subject.split('.').skip(3).all(|t| t == "a" || t == "*"),
                "{subject}"
            );
        }
        other => panic!("{other}"),
    }

    // Mallory copies a frame of a's and republishes it: on a's subject
    // the server refuses it, on its own b refuses it.
    let violations = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&violations);
    let mallory =
        async_nats::ConnectOptions::with_user_and_password("mallory".into(), "pw-mallory".into())
            .event_callback(move |event| {
                let seen = Arc::clone(&seen);
                async move {
                    if let async_nats::Event::ServerError(e) = event
                        && e.to_string().contains("Permissions Violation")
                    {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .connect(url.as_str())
            .await
            .expect("mallory connects");
    let mut from_a = mallory.subscribe("t.perm.bcast.a").await.expect("may read");
    let frame = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut from_a))
        .await
        .expect("a frame of a's")
        .payload;
    let refused_before = stats(&b).frames_wrong_subject;
    mallory
        .publish("t.perm.bcast.a", frame.clone())
        .await
        .expect("queued");
    mallory
        .publish("t.perm.bcast.mallory", frame)
        .await
        .expect("queued");
    mallory.flush().await.expect("flushed");
    until(
        "the server refuses mallory's publish as a",
        Duration::from_secs(5),
        || violations.load(Ordering::Relaxed) >= 1,
    )
    .await;
    until(
        "b refuses a's frame on mallory's subject",
        Duration::from_secs(5),
        || stats(&b).frames_wrong_subject > refused_before,
    )
    .await;
    assert_eq!(keys(&b, "room"), set(&["alice", "bob"]));
    assert!(b.replicas().iter().all(|(r, _)| r.name().as_str() == "a"));
    shutdown(&[&a, &b]).await;
}

async fn futures_next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    use futures_util::StreamExt;
    sub.next().await.expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_secret_a_client_can_neither_forge_alter_nor_replay() {
    let server = NatsServer::start(&[]);
    let (a, b) = (
        start("a", &server.url()).await,
        start("b", &server.url()).await,
    );
    let _g = [track(&a, "alice"), track(&b, "bob")];
    until("a and b converge", Duration::from_secs(10), || {
        [&a, &b]
            .iter()
            .all(|t| keys(t, "room") == set(&["alice", "bob"]))
    })
    .await;
    let spy = async_nats::connect(server.url()).await.expect("connects");
    let mut from_a = spy
        .subscribe("attendance.test.bcast.a")
        .await
        .expect("subscribes");
    let frame = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut from_a))
        .await
        .expect("a frame of a's")
        .payload;
    let before = stats(&b);
    // The same frame again: a replay.
    spy.publish("attendance.test.bcast.a", frame.clone())
        .await
        .expect("queued");
    // Altered.
    let mut altered = frame.to_vec();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    spy.publish("attendance.test.bcast.a", altered.into())
        .await
        .expect("queued");
    // Forged: an untagged frame claiming to be a.
    let mut forged = vec![1, 0, 1, b'a'];
    forged.extend_from_slice(&1_764_000_000_000u64.to_be_bytes());
    forged.extend_from_slice(&1u32.to_be_bytes());
    forged.extend_from_slice(&u64::MAX.to_be_bytes());
    forged.extend_from_slice(INTERVAL);
    spy.publish("attendance.test.bcast.a", forged.into())
        .await
        .expect("queued");
    spy.flush().await.expect("flushed");
    until("b refuses all three", Duration::from_secs(5), || {
        let s = stats(&b);
        s.frames_stale > before.frames_stale
            && s.frames_unauthenticated >= before.frames_unauthenticated + 2
    })
    .await;
    assert_eq!(keys(&b, "room"), set(&["alice", "bob"]));
    assert_eq!(
        b.metrics().protocol.rejected,
        0,
        "nothing reached the protocol"
    );
    shutdown(&[&a, &b]).await;
}
