//! Arbitrary bytes as protocol messages to a node that holds presences of
//! its own and of a peer: nothing panics, and a refused message changes
//! neither the lists nor what the node knows of other replicas.
#![no_main]

use std::time::Duration;

use attendance::protocol::{Config, Node};
use attendance::{Incarnation, ReplicaId, ReplicaName, State, wire};
use libfuzzer_sys::fuzz_target;

fn id(name: &str) -> ReplicaId {
    ReplicaId::new(ReplicaName::new(name).expect("valid"), Incarnation::new(1, 1))
}

/// A node "a" that holds two presences of its own and one of "b".
fn node() -> Node<u8> {
    let mut b: Node<u8> = Node::new(State::new(id("b")), Config::default()).expect("valid");
    let mut a: Node<u8> = Node::new(State::new(id("a")), Config::default()).expect("valid");
    a.peer_connected(Duration::ZERO, id("b"));
    b.peer_connected(Duration::ZERO, id("a"));
    a.track("room", "alice", 1).expect("tracks");
    a.track("room", "bob", 2).expect("tracks");
    b.track("room", "carol", 3).expect("tracks");
    for step in 0..3u64 {
        let now = Duration::from_millis(1500 * step);
        a.handle_timeout(now);
        b.handle_timeout(now);
        while let Some(t) = b.poll_transmit() {
            let _ = a.handle_message(now, &id("b"), &t.bytes);
        }
        while let Some(t) = a.poll_transmit() {
            let _ = b.handle_message(now, &id("a"), &t.bytes);
        }
    }
    a
}

fn view(node: &Node<u8>) -> (Vec<u8>, Vec<String>) {
    let snapshot = wire::encode(&node.state().snapshot()).expect("encodes");
    let replicas = node
        .replicas()
        .map(|(id, status)| format!("{id} {status:?}"))
        .collect();
    (snapshot, replicas)
}

fuzz_target!(|data: &[u8]| {
    let mut a = node();
    let before = view(&a);
    let now = Duration::from_secs(5);
    if a.handle_message(now, &id("b"), data).is_err() {
        assert_eq!(view(&a), before, "a refused message changed the node");
    }
    a.handle_timeout(now + Duration::from_secs(2));
    while a.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
});
