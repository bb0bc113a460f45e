//! What hostile input costs a replica: heartbeats full of made-up
//! replicas, catch-up pieces nobody asked for, and a flood of idle
//! connections while a real peer connects. Prints one line a figure:
//!
//! ```text
//! adversarial dead_entries=N handle_us=.. per_entry_ns=..
//! adversarial junk_heartbeat_bytes=N entries=N handle_ms=..
//! adversarial unrequested_pieces=N piece_bytes=N peak_extra_bytes=N held_extra_bytes=N
//! adversarial flood_tasks=128 connect_ms=.. (median of 5)
//! ```
//!
//! Times are medians of repeated runs; compare them within one run.

#[path = "common/alloc.rs"]
mod alloc;
#[path = "../tests-integration/tests/raw/mod.rs"]
mod raw;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use attendance::protocol::{Config, Destination, Node};
use attendance::transport::tcp::{TcpConfig, TcpTransport};
use attendance::transport::{Transport, TransportEvent};
use attendance::{Incarnation, ReplicaId, ReplicaName, State};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "the adversarial bench secret, 32+ bytes";

fn id(name: &str) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).expect("valid"),
        Incarnation::new(1, 7),
    )
}

/// A victim `v` that knows and hears the liar `l` and an honest `a` with a
/// presence.
fn victim() -> (Node<String>, Duration) {
    let config = Config::default();
    let names = ["v", "a", "l"];
    let mut nodes: Vec<Node<String>> = names
        .iter()
        .map(|n| Node::new(State::new(id(n)), config.clone()).expect("valid"))
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, peer) in names.iter().enumerate() {
            if i != j {
                node.peer_connected(Duration::ZERO, id(peer));
            }
        }
    }
    nodes[1]
        .track("room", "alice", "web".into())
        .expect("tracks");
    let mut now = Duration::ZERO;
    for _ in 0..4 {
        for node in &mut nodes {
            node.handle_timeout(now);
        }
        // Everything sent, to everyone it is for, until nothing is left.
        loop {
            let mut sent = Vec::new();
            for (i, node) in nodes.iter_mut().enumerate() {
                while let Some(t) = node.poll_transmit() {
                    sent.push((i, t));
                }
            }
            if sent.is_empty() {
                break;
            }
            for (i, t) in sent {
                for (j, node) in nodes.iter_mut().enumerate() {
                    let to_it = match &t.destination {
                        Destination::All => j != i,
                        Destination::Replica(r) => *r == id(names[j]),
                    };
                    if to_it {
                        let _ = node.handle_message(now, &id(names[i]), &t.bytes);
                    }
                }
            }
        }
        now += config.broadcast_period;
    }
    let v = nodes.swap_remove(0);
    assert_eq!(v.state().count("room"), 1);
    (v, now)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Handles `beat` on a fresh victim, `runs` times; the median time.
fn handle_time(beat: &[u8], runs: usize) -> Duration {
    let samples = (0..runs)
        .map(|_| {
            let (mut v, now) = victim();
            let started = Instant::now();
            v.handle_message(now, &id("l"), beat).expect("well-formed");
            let took = started.elapsed();
            assert_eq!(v.state().count("room"), 1);
            took
        })
        .collect();
    median(samples)
}

fn dead_entries() {
    let mut per_entry_1000 = None;
    for n in [1_000u64, 20_000] {
        let entries: Vec<_> = (0..n)
            .map(|i| (id(&format!("ghost-{i}")), 1, 1, 0))
            .collect();
        let beat = raw::heartbeat(&id("l"), 10_000, &entries);
        let took = handle_time(&beat, 11);
        let per_entry = took.as_nanos() as f64 / n as f64;
        let ratio = per_entry_1000.map_or(String::new(), |base: f64| {
            format!(" per_entry_vs_1000={:.2}", per_entry / base)
        });
        per_entry_1000.get_or_insert(per_entry);
        println!(
            "adversarial dead_entries={n} handle_us={} per_entry_ns={per_entry:.0}{ratio}",
            took.as_micros()
        );
    }
}

fn junk_heartbeat() {
    let limit = Config::default().max_message_bytes;
    // Fresh made-up replicas, dead ones and unknown hashes, as many as fit.
    let mut entries = Vec::new();
    let mut beat = raw::heartbeat(&id("l"), 10_000, &entries);
    let mut i = 0u64;
    while beat.len() < limit - 64 {
        let state = [7, 1, 0][(i % 3) as usize];
        entries.push((id(&format!("junk-{i}")), state, 1, 0));
        i += 1;
        if i.is_multiple_of(1024) {
            beat = raw::heartbeat(&id("l"), 10_000, &entries);
        }
    }
    while beat.len() > limit {
        entries.pop();
        beat = raw::heartbeat(&id("l"), 10_000, &entries);
    }
    let took = handle_time(&beat, 11);
    println!(
        "adversarial junk_heartbeat_bytes={} entries={} handle_ms={:.1}",
        beat.len(),
        entries.len(),
        took.as_secs_f64() * 1e3
    );
}

fn unrequested_pieces() {
    let (mut v, now) = victim();
    let piece_len = Config::default().max_message_bytes - 1024;
    let junk = vec![0u8; piece_len];
    // Pieces of two answers of 60 pieces each, to requests never sent.
    let total = 60 * piece_len as u64;
    let pieces: Vec<Vec<u8>> = (0..120u64)
        .map(|i| {
            let offset = (i / 2) * piece_len as u64;
            raw::reply_piece(&id("l"), (i % 2, total, offset), &junk)
        })
        .collect();
    let before = alloc::live().requested;
    alloc::take_peak();
    for piece in &pieces {
        v.handle_message(now, &id("l"), piece).expect("well-formed");
    }
    let peak = alloc::take_peak().saturating_sub(before);
    let held = alloc::live().requested.saturating_sub(before);
    println!(
        "adversarial unrequested_pieces={} piece_bytes={} peak_extra_bytes={peak} held_extra_bytes={held}",
        pieces.len(),
        pieces[0].len()
    );
}

/// Connections from `ip`, each held open without a word until the other
/// side closes it, then opened again; until `stop`.
async fn idle_connections(ip: IpAddr, to: SocketAddr, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        if socket.bind(SocketAddr::new(ip, 0)).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(to).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut buf = [0; 256];
        tokio::select! {
            () = stop.cancelled() => return,
            _ = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
        }
    }
}

async fn flood_once() -> Duration {
    // v lists an address on a's machine where nothing answers, so the
    // link can only come from a dialing v.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let closed_addr = closed.local_addr().expect("bound");
    drop(closed);
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let v_config = TcpConfig::new(id("v"), listen, SECRET).with_peers([closed_addr]);
    let v = TcpTransport::bind(v_config).await.expect("binds");
    let stop = CancellationToken::new();
    for i in 0..128u8 {
        let ip = IpAddr::from([127, 0, 0, 2 + i]);
        tokio::spawn(idle_connections(ip, v.local_addr(), stop.clone()));
    }
    while v.stats().handshakes_busy < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let a_config = TcpConfig::new(id("a"), listen, SECRET).with_peers([v.local_addr()]);
    let mut a = TcpTransport::bind(a_config).await.expect("binds");
    let connected = tokio::time::timeout(Duration::from_secs(30), a.recv()).await;
    let took = started.elapsed();
    assert!(
        matches!(connected, Ok(Some(TransportEvent::Connected(_)))),
        "{connected:?}"
    );
    stop.cancel();
    took
}

fn flood() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let samples = (0..5).map(|_| runtime.block_on(flood_once())).collect();
    println!(
        "adversarial flood_tasks=128 connect_ms={:.1} (median of 5)",
        median(samples).as_secs_f64() * 1e3
    );
}

fn main() {
    dead_entries();
    junk_heartbeat();
    unrequested_pieces();
    flood();
}
