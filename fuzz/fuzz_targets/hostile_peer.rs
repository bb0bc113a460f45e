//! A sequence of arbitrary messages from one authenticated member `l` into
//! a replica `v` that also hears an honest replica `a`, with periods
//! passing in between. Whatever `l` sends: nothing panics (the target is
//! built with overflow checks), `v` holds no more than its bounds allow,
//! `a` stays up at `v` and its presence stays listed, and `v`'s heartbeats
//! stay under the message limit.
//!
//! The input is a sequence of records: a byte `op`, then for a message
//! (`op % 4 != 0`) a little-endian `u16` length and that many bytes. A
//! record with `op % 4 == 0` lets one period pass: every node's timer runs
//! and the honest traffic (between `v` and `a`, and `l`'s own node's) is
//! delivered.
#![no_main]

use std::time::Duration;

use attendance::protocol::{Config, Destination, MessageKind, Node, ReplicaStatus};
use attendance::{Incarnation, ReplicaId, ReplicaName, State};
use libfuzzer_sys::fuzz_target;

const V: usize = 0;
const A: usize = 1;
const L: usize = 2;
const NAMES: [&str; 3] = ["v", "a", "l"];

fn id(i: usize) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(NAMES[i]).expect("valid"),
        Incarnation::new(1, 1),
    )
}

/// Small bounds, so that breaking them is within the fuzzer's reach.
fn config() -> Config {
    let mut config = Config::default();
    config.max_message_bytes = 64 << 10;
    config.max_catchup_bytes = 64 << 10;
    config.max_buffered_bytes = 256 << 10;
    config.max_buffered_intervals = 8;
    config
}

struct Cluster {
    nodes: Vec<Node<String>>,
    now: Duration,
}

impl Cluster {
    fn new() -> Self {
        let mut nodes: Vec<Node<String>> = (0..3)
            .map(|i| Node::new(State::new(id(i)), config()).expect("valid"))
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for j in (0..3).filter(|&j| j != i) {
                node.peer_connected(Duration::ZERO, id(j));
            }
        }
        nodes[A]
            .track("room", "alice", "web".into())
            .expect("tracks");
        let mut cluster = Self {
            nodes,
            now: Duration::ZERO,
        };
        for _ in 0..4 {
            cluster.period();
        }
        cluster
    }

    /// One period: timers, then every message, until none is left.
    fn period(&mut self) {
        for node in &mut self.nodes {
            node.handle_timeout(self.now);
        }
        loop {
            let mut sent = Vec::new();
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while let Some(t) = node.poll_transmit() {
                    if i == V && t.kind == MessageKind::Heartbeat {
                        assert!(t.bytes.len() <= config().max_message_bytes);
                    }
                    sent.push((i, t));
                }
            }
            if sent.is_empty() {
                break;
            }
            for (i, t) in sent {
                for (j, node) in self.nodes.iter_mut().enumerate() {
                    let to_it = match &t.destination {
                        Destination::All => j != i,
                        Destination::Replica(r) => *r == id(j),
                    };
                    if to_it {
                        let _ = node.handle_message(self.now, &id(i), &t.bytes);
                    }
                }
            }
        }
        while self.nodes.iter_mut().any(|n| n.poll_event().is_some()) {}
        self.now += config().broadcast_period;
    }

    fn check(&self) {
        let v = &self.nodes[V];
        let config = config();
        assert_eq!(v.status(&id(A)), Some(ReplicaStatus::Up), "a silenced");
        let listed = v
            .state()
            .list("room")
            .iter()
            .any(|g| g.presences.iter().any(|p| p.id.replica() == &id(A)));
        assert!(listed, "a's presence not listed");
        let replicas = v.replicas().count();
        assert!(replicas <= 2 + 64 * 1024, "{replicas} replicas");
        let bound = config.max_buffered_bytes + replicas * 2 * config.max_catchup_bytes;
        assert!(v.buffered_bytes() <= bound, "{} bytes held", v.buffered_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cluster = Cluster::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        if op % 4 == 0 {
            cluster.period();
            cluster.check();
            continue;
        }
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        let now = cluster.now;
        let _ = cluster.nodes[V].handle_message(now, &id(L), message);
    }
    cluster.period();
    cluster.check();
});
