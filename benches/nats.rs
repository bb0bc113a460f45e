//! The NATS transport against the TCP mesh, in-process trackers on one
//! `nats-server` (Debian's, on loopback): convergence time and bytes per
//! join per replica for the same workload at 3 and 16 replicas, and what
//! an idle cluster costs the broker per period at 16 and 256 replicas.
//!
//! `cargo bench --bench nats` (needs `nats-server`; about 2 minutes) prints:
//! - `converge/{mesh,nats}/{3,16} ms`: every replica tracks 100 presences
//!   at once (broadcast period 100 ms); the time until every replica lists
//!   all of them;
//! - `converge/{mesh,nats}/{3,16} bytes_per_join_per_replica`: the bytes
//!   every replica's transport received meanwhile (frames with their
//!   headers and MACs, heartbeats included), divided by the joins it
//!   learned; `broker_bytes_per_join_per_replica` is the server's own count
//!   of bytes it delivered (NATS protocol lines excluded);
//! - `idle/nats/{16,256} broker_messages_per_period` and
//!   `broker_bytes_per_period` (in and out of the server), with the
//!   default 1.5 s period, once every replica shows every other.

#[path = "../tests-integration/tests/nats/server.rs"]
mod server;

use std::time::{Duration, Instant};

use attendance::protocol::Config;
use attendance::transport::TransportStats;
use attendance::transport::nats::NatsConfig;
use attendance::{PresenceGuard, Tracker};
use server::NatsServer;

type T = Tracker<String>;

const SECRET: &str = "the bench cluster secret, 32+ bytes long";
const PER_REPLICA: usize = 100;

fn bytes_received(t: &T) -> u64 {
    match t.metrics().transport {
        Some(TransportStats::Tcp(s)) => s.bytes_received,
        Some(TransportStats::Nats(s)) => s.bytes_received,
        _ => 0,
    }
}

fn nats_config(url: &str) -> NatsConfig {
    let mut nats = NatsConfig::new([url]);
    // Hundreds of replicas start at once on two cores.
    nats.connect_timeout = Duration::from_secs(60);
    nats
}

async fn start_nats(n: usize, url: &str, config: &Config) -> Vec<T> {
    let mut trackers = Vec::new();
    for i in 0..n {
        let t = Tracker::builder(&format!("n{i}"))
            .config(config.clone())
            .secret(SECRET)
            .nats(nats_config(url))
            .start()
            .await
            .expect("starts");
        trackers.push(t);
    }
    trackers
}

async fn start_mesh(n: usize, config: &Config) -> Vec<T> {
    let mut trackers: Vec<T> = Vec::new();
    for i in 0..n {
        let t = Tracker::builder(&format!("n{i}"))
            .config(config.clone())
            .secret(SECRET)
            .listen("127.0.0.1:0".parse().expect("an address"))
            .start()
            .await
            .expect("starts");
        for earlier in &trackers {
            let address = earlier.local_addr().expect("listens");
            t.add_peer(address).await.expect("dials");
        }
        trackers.push(t);
    }
    trackers
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn all_up(trackers: &[T]) {
    let n = trackers.len();
    until(
        "every replica shows every other",
        Duration::from_secs(120),
        || trackers.iter().all(|t| t.metrics().replicas_up == n - 1),
    )
    .await;
}

async fn converge(transport: &str, n: usize, server: &NatsServer) {
    let config = Config::with_broadcast_period(Duration::from_millis(100));
    let trackers = match transport {
        "nats" => start_nats(n, &server.url(), &config).await,
        _ => start_mesh(n, &config).await,
    };
    all_up(&trackers).await;
    let before: Vec<u64> = trackers.iter().map(bytes_received).collect();
    let broker_before = server.monitored("/varz", "out_bytes");
    let started = Instant::now();
    let guards: Vec<PresenceGuard<String>> = trackers
        .iter()
        .enumerate()
        .flat_map(|(r, t)| {
            (0..PER_REPLICA).map(move |i| {
                t.track("room", &format!("user:{r}:{i}"), "web".into())
                    .expect("tracks")
            })
        })
        .collect();
    let total = n * PER_REPLICA;
    until(
        "every replica lists every join",
        Duration::from_secs(60),
        || trackers.iter().all(|t| t.count("room") == total),
    )
    .await;
    let took = started.elapsed();
    let received: u64 = trackers
        .iter()
        .zip(&before)
        .map(|(t, b)| bytes_received(t) - b)
        .sum();
    let joins_learned = (n * (n - 1) * PER_REPLICA) as f64;
    println!(
        "converge/{transport}/{n} ms {:.0}",
        took.as_secs_f64() * 1000.0
    );
    println!(
        "converge/{transport}/{n} bytes_per_join_per_replica {:.1}",
        received as f64 / joins_learned
    );
    if transport == "nats" {
        let broker = server.monitored("/varz", "out_bytes") - broker_before;
        println!(
            "converge/{transport}/{n} broker_bytes_per_join_per_replica {:.1}",
            broker as f64 / joins_learned
        );
    }
    drop(guards);
    for t in &trackers {
        t.shutdown().await;
    }
}

async fn idle(n: usize) {
    let server = NatsServer::start(&["-m", "-1"]);
    let config = Config::default();
    let trackers = start_nats(n, &server.url(), &config).await;
    all_up(&trackers).await;
    // Past the joins' catch-ups: a few quiet periods first.
    tokio::time::sleep(config.broadcast_period * 4).await;
    let fields = ["in_msgs", "out_msgs", "in_bytes", "out_bytes"];
    let before: Vec<u64> = fields
        .iter()
        .map(|f| server.monitored("/varz", f))
        .collect();
    let periods = 10;
    let started = Instant::now();
    tokio::time::sleep(config.broadcast_period * periods).await;
    let elapsed = started.elapsed().as_secs_f64() / config.broadcast_period.as_secs_f64();
    let after: Vec<u64> = fields
        .iter()
        .map(|f| server.monitored("/varz", f))
        .collect();
    let per_period = |i: usize| (after[i] - before[i]) as f64 / elapsed;
    println!(
        "idle/nats/{n} broker_messages_per_period in {:.0} out {:.0}",
        per_period(0),
        per_period(1)
    );
    println!(
        "idle/nats/{n} broker_bytes_per_period in {:.0} out {:.0}",
        per_period(2),
        per_period(3)
    );
    println!(
        "idle/nats/{n} per_replica_per_period messages_in {:.2} bytes_in {:.1}",
        per_period(0) / n as f64,
        per_period(2) / n as f64
    );
    for t in &trackers {
        t.shutdown().await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` lists.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = NatsServer::start(&["-m", "-1"]);
        for n in [3, 16] {
            for transport in ["mesh", "nats"] {
                converge(transport, n, &server).await;
            }
        }
        drop(server);
        for n in [16, 256] {
            idle(n).await;
        }
    });
}
