//! A synchronous mesh of protocol nodes for tests: every message is
//! delivered at once, in order, over the link of the node that sent it.

#![allow(dead_code)] // Each test file uses its own share of it.

use std::time::Duration;

use attendance::protocol::{Config, Destination, Event, Node, ReplicaStatus, Transmit};
use attendance::{Incarnation, ReplicaId, ReplicaName, State};

pub type N = Node<String>;

/// More messages than this in one delivery round is a storm.
const STORM: usize = 100_000;

pub fn id(name: &str, started: u64) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).expect("valid name"),
        Incarnation::new(started, 7),
    )
}

pub fn node(name: &str) -> N {
    node_with(name, Config::default())
}

pub fn node_with(name: &str, config: Config) -> N {
    Node::new(State::new(id(name, 1)), config).expect("valid config")
}

/// Connects every node to every other.
pub fn mesh(nodes: &mut [N]) {
    let ids: Vec<ReplicaId> = nodes.iter().map(|n| n.id().clone()).collect();
    for n in nodes.iter_mut() {
        for id in &ids {
            if id != n.id() {
                n.peer_connected(Duration::ZERO, id.clone());
            }
        }
    }
}

/// Everything each node sends, delivered in order to its destinations;
/// every message must be accepted.
pub fn deliver(nodes: &mut [N], now: Duration) -> Vec<(usize, Transmit)> {
    deliver_counting(nodes, now, true, &[]).0
}

/// Everything each node sends, delivered in order to its destinations
/// except over the `cut` links (both ways), and how many deliveries were
/// refused. Panics on a refusal when `strict`, and on a storm.
pub fn deliver_counting(
    nodes: &mut [N],
    now: Duration,
    strict: bool,
    cut: &[(usize, usize)],
) -> (Vec<(usize, Transmit)>, usize) {
    let mut sent = Vec::new();
    let mut refused = 0;
    loop {
        let mut any = false;
        for i in 0..nodes.len() {
            let sender = nodes[i].id().clone();
            while let Some(t) = nodes[i].poll_transmit() {
                any = true;
                for (j, to) in nodes.iter_mut().enumerate() {
                    let for_it = match &t.destination {
                        Destination::All => j != i,
                        Destination::Replica(r) => r == to.id(),
                    } && !cut.contains(&(i, j))
                        && !cut.contains(&(j, i));
                    if for_it && let Err(e) = to.handle_message(now, &sender, &t.bytes) {
                        assert!(!strict, "refused: {e}");
                        refused += 1;
                    }
                }
                sent.push((i, t));
                assert!(sent.len() < STORM, "a message storm");
            }
        }
        if !any {
            return (sent, refused);
        }
    }
}

/// One period: every node's timer, then every message.
pub fn period(nodes: &mut [N], now: &mut Duration) -> Vec<(usize, Transmit)> {
    for n in nodes.iter_mut() {
        n.handle_timeout(*now);
    }
    let sent = deliver(nodes, *now);
    *now += nodes[0].config().broadcast_period;
    sent
}

pub fn joins(node: &mut N) -> usize {
    let mut count = 0;
    while let Some(e) = node.poll_event() {
        if let Event::Diff(d) = e {
            count += d.joins().count();
        }
    }
    count
}

pub fn settled_pair() -> (Vec<N>, Duration) {
    let mut nodes = vec![node("a"), node("b")];
    mesh(&mut nodes);
    nodes[0]
        .track("room", "alice", "web".into())
        .expect("tracks");
    let mut now = Duration::ZERO;
    for _ in 0..3 {
        period(&mut nodes, &mut now);
    }
    assert_eq!(nodes[1].state().count("room"), 1);
    (nodes, now)
}

/// What a refused message must leave as it was.
pub fn view(n: &N) -> (Vec<u8>, Vec<(ReplicaId, ReplicaStatus)>) {
    let bytes = attendance::wire::encode(&n.state().snapshot()).expect("encodes");
    let replicas = n.replicas().map(|(id, s)| (id.clone(), s)).collect();
    (bytes, replicas)
}
