//! End to end on loopback: three `attendance-node` processes, 100,000
//! presences tracked on one, and the time until the other two list them
//! all, with the bytes that crossed the wire per presence (frames, MACs and
//! heartbeats included) against the payload.
//!
//! `cargo bench -p attendance-node --bench e2e` prints:
//! - `e2e/100000 visible_everywhere_ms`
//! - `e2e/100000 wire_bytes_per_presence_per_peer`
//! - `e2e/100000 payload_bytes_per_presence`

use std::thread;
use std::time::{Duration, Instant};

const N: usize = 100_000;
/// A frame's length prefix and MAC.
const FRAME_OVERHEAD: u64 = 20;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Replica, addresses};

fn count(r: &mut Replica) -> usize {
    let line = r.ask("count room", "count room");
    line.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Bytes on the wire a replica received so far: payloads plus frame
/// overhead.
fn wire_bytes(r: &mut Replica) -> u64 {
    let line = r.ask("metrics", "metrics");
    let field = |name: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    field("received_bytes=") + FRAME_OVERHEAD * field("received_messages=")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let addrs = addresses(3);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| {
            let mut args: Vec<String> = vec![
                "--name".into(),
                format!("n{i}"),
                "--listen".into(),
                addrs[i].to_string(),
                "--secret".into(),
                "the bench cluster secret, 32+ bytes".into(),
            ];
            for peer in &addrs[..i] {
                args.extend(["--peer".into(), peer.to_string()]);
            }
            Replica::start(&args)
        })
        .collect();
    thread::sleep(Duration::from_secs(4));
    let before: Vec<u64> = replicas[1..].iter_mut().map(wire_bytes).collect();
    let start = Instant::now();
    replicas[0].ask(&format!("bulk room {N} web"), "bulk");
    let mut seen = [false; 2];
    while !seen.iter().all(|s| *s) {
        for (i, r) in replicas[1..].iter_mut().enumerate() {
            if !seen[i] && count(r) == N {
                seen[i] = true;
            }
        }
        thread::sleep(Duration::from_millis(5));
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never converged"
        );
    }
    let took = start.elapsed();
    let after: Vec<u64> = replicas[1..].iter_mut().map(wire_bytes).collect();
    let per_peer: f64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) as f64)
        .sum::<f64>()
        / 2.0
        / N as f64;
    // Topic, key and meta as MessagePack: "room", "user:<i>", "web".
    let payload: usize = (0..N).map(|i| 4 + format!("user:{i}").len() + 4).sum();
    println!("e2e/{N} visible_everywhere_ms {}", took.as_millis());
    println!("e2e/{N} wire_bytes_per_presence_per_peer {per_peer:.1}");
    println!(
        "e2e/{N} payload_bytes_per_presence {:.1}",
        payload as f64 / N as f64
    );
}
