//! End to end on loopback: three `attendance-node` processes, 100,000
//! presences tracked on one, and the time until the other two list them
//! all, with the bytes that crossed the wire per presence (frames, MACs and
//! heartbeats included) against the payload.
//!
//! `cargo bench -p attendance-node --bench e2e` prints:
//! - `e2e/100000 visible_everywhere_ms`
//! - `e2e/100000 wire_bytes_per_presence_per_peer`
//! - `e2e/100000 payload_bytes_per_presence`

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const N: usize = 100_000;
/// A frame's length prefix and MAC.
const FRAME_OVERHEAD: u64 = 20;

struct Replica {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Replica {
    fn start(name: &str, listen: SocketAddr, peers: &[SocketAddr]) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_attendance-node"));
        command
            .args([
                "--name",
                name,
                "--listen",
                &listen.to_string(),
                "--secret",
                "bench",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for p in peers {
            command.args(["--peer", &p.to_string()]);
        }
        let mut child = command.spawn().expect("the node binary starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let r = Replica {
            child,
            stdin,
            lines,
        };
        r.ask_nothing("ready");
        r
    }

    fn ask_nothing(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the replica answers");
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn ask(&mut self, command: &str, prefix: &str) -> String {
        writeln!(self.stdin, "{command}").expect("the replica reads");
        self.ask_nothing(prefix)
    }

    fn count(&mut self) -> usize {
        let line = self.ask("count room", "count room");
        line.rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Bytes on the wire received so far: payloads plus frame overhead.
    fn wire_bytes(&mut self) -> u64 {
        let line = self.ask("metrics", "metrics");
        let field = |name: &str| -> u64 {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        field("received_bytes=") + FRAME_OVERHEAD * field("received_messages=")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a port"))
        .collect();
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound"))
        .collect();
    drop(listeners);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| {
            let peers: Vec<SocketAddr> = (0..i).map(|j| addrs[j]).collect();
            Replica::start(&format!("n{i}"), addrs[i], &peers)
        })
        .collect();
    thread::sleep(Duration::from_secs(4));
    let before: Vec<u64> = replicas[1..].iter_mut().map(Replica::wire_bytes).collect();
    let start = Instant::now();
    replicas[0].ask(&format!("bulk room {N} web"), "bulk");
    let mut seen = [false; 2];
    while !seen.iter().all(|s| *s) {
        for (i, r) in replicas[1..].iter_mut().enumerate() {
            if !seen[i] && r.count() == N {
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
    let after: Vec<u64> = replicas[1..].iter_mut().map(Replica::wire_bytes).collect();
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
