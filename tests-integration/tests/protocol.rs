//! The protocol node on its own: what it sends, how it batches and splits,
//! and how it refuses bad input without changing anything.

use std::time::Duration;

use attendance::protocol::{
    Config, Event, MessageKind, Node, ProtocolError, ReplicaStatus, Transmit,
};
use attendance::wire::WireError;
use attendance::{Incarnation, State};

mod mesh;
use mesh::{N, deliver, id, joins, mesh, node, period, settled_pair, view};

#[test]
fn a_join_then_leave_within_one_period_sends_no_presence() {
    let (mut nodes, mut now) = settled_pair();
    joins(&mut nodes[1]);
    let p = nodes[0]
        .track("room", "bob", "x".repeat(100))
        .expect("tracks");
    nodes[0].untrack(&p).expect("untracks");
    let sent = period(&mut nodes, &mut now);
    let interval: Vec<_> = sent
        .iter()
        .filter(|(_, t)| t.kind == MessageKind::Interval)
        .collect();
    assert_eq!(interval.len(), 1, "one interval for the period");
    assert!(
        interval[0].1.bytes.len() < 60,
        "the cancelled join is not sent"
    );
    assert_eq!(joins(&mut nodes[1]), 0);
    assert_eq!(nodes[1].state().count("room"), 1);
}

#[test]
fn large_bursts_go_out_as_consecutive_intervals_under_the_message_limit() {
    let mut config = Config::default();
    config.max_message_bytes = 64 << 10;
    let mut nodes: Vec<N> = ["a", "b"]
        .iter()
        .map(|n| Node::new(State::new(id(n, 1)), config.clone()).expect("valid"))
        .collect();
    mesh(&mut nodes);
    for i in 0..2000 {
        nodes[0]
            .track("room", &format!("user:{i}"), "m".repeat(200))
            .expect("tracks");
    }
    let mut now = Duration::ZERO;
    let sent = period(&mut nodes, &mut now);
    let intervals: Vec<_> = sent
        .iter()
        .filter(|(_, t)| t.kind == MessageKind::Interval)
        .collect();
    assert!(intervals.len() > 4, "{} intervals", intervals.len());
    assert!(
        intervals
            .iter()
            .all(|(_, t)| t.bytes.len() <= config.max_message_bytes)
    );
    assert_eq!(nodes[1].state().count("room"), 2000);
}

#[test]
fn a_catch_up_larger_than_a_message_arrives_in_pieces() {
    let mut config = Config::default();
    config.max_message_bytes = 64 << 10;
    let mut a: N = Node::new(State::new(id("a", 1)), config.clone()).expect("valid");
    for i in 0..2000 {
        a.track("room", &format!("user:{i}"), "m".repeat(200))
            .expect("tracks");
    }
    let mut now = Duration::ZERO;
    // The first intervals go nowhere: b is not connected yet.
    a.handle_timeout(now);
    while a.poll_transmit().is_some() {}
    let b: N = Node::new(State::new(id("b", 1)), config.clone()).expect("valid");
    let mut nodes = vec![a, b];
    mesh(&mut nodes);
    now += config.broadcast_period;
    let sent = period(&mut nodes, &mut now);
    let pieces = sent
        .iter()
        .filter(|(_, t)| t.kind == MessageKind::CatchUpReply)
        .count();
    assert!(pieces > 4, "{pieces} pieces");
    assert_eq!(nodes[1].state().count("room"), 2000);
    assert_eq!(nodes[0].metrics().catchups_served, 1);
    assert_eq!(nodes[1].metrics().catchups_requested, 1);
}

#[test]
fn intervals_out_of_order_wait_for_the_missing_one() {
    let (mut nodes, mut now) = settled_pair();
    let mut held = Vec::new();
    for i in 0..3 {
        nodes[0]
            .track("room", &format!("u{i}"), "m".into())
            .expect("tracks");
        nodes[0].handle_timeout(now);
        while let Some(t) = nodes[0].poll_transmit() {
            if t.kind == MessageKind::Interval {
                held.push(t.bytes);
            }
        }
        now += Config::default().broadcast_period;
    }
    assert_eq!(held.len(), 3);
    let a = nodes[0].id().clone();
    let before = nodes[1].state().count("room");
    nodes[1].handle_message(now, &a, &held[2]).expect("valid");
    nodes[1].handle_message(now, &a, &held[1]).expect("valid");
    assert_eq!(
        nodes[1].state().count("room"),
        before,
        "nothing shown out of order"
    );
    assert_eq!(nodes[1].buffered(), 2);
    nodes[1].handle_message(now, &a, &held[0]).expect("valid");
    assert_eq!(nodes[1].state().count("room"), before + 3);
    assert_eq!(nodes[1].buffered(), 0);
    // A duplicate changes nothing.
    nodes[1].handle_message(now, &a, &held[1]).expect("valid");
    assert_eq!(nodes[1].state().count("room"), before + 3);
}

#[test]
fn a_graceful_leave_drops_the_replica_at_once() {
    let (mut nodes, now) = settled_pair();
    nodes[0].leave(now);
    deliver(&mut nodes, now);
    assert_eq!(nodes[1].state().count("room"), 0);
    let a = nodes[0].id().clone();
    assert_eq!(
        nodes[1].status(&a),
        Some(ReplicaStatus::Purged(attendance::PurgeReason::Left))
    );
}

#[test]
fn a_link_lost_before_the_peer_was_heard_of_still_counts_once_it_is() {
    // b tracks alice and is known to c; then a joins, and its link to b is
    // reported lost before a heard anything from b. b is dead from then on.
    let mut bc = vec![node("b"), node("c")];
    mesh(&mut bc);
    bc[0].track("room", "alice", "web".into()).expect("tracks");
    let mut now = Duration::ZERO;
    for _ in 0..3 {
        period(&mut bc, &mut now);
    }
    let [b, c]: [N; 2] = bc.try_into().expect("two nodes");
    let b = b.id().clone();
    let mut nodes = vec![node("a"), c];
    mesh(&mut nodes);
    nodes[0].peer_connected(now, b.clone());
    nodes[0].link_lost(now, &b);
    let lost = now;

    // a hears of b through c, with b's last heartbeat from before the
    // report: b is down three periods after the report, not after
    // down_period.
    let three = Config::default().broadcast_period * 3;
    while now <= lost + three {
        period(&mut nodes, &mut now);
        assert!(nodes[0].status(&b).is_some(), "a hears of b through c");
    }
    period(&mut nodes, &mut now);
    assert_eq!(nodes[0].status(&b), Some(ReplicaStatus::Down));
    assert_eq!(nodes[0].state().count("room"), 0);
    assert!(now < lost + Config::default().down_period);
}

#[test]
fn a_newer_incarnation_of_its_own_name_makes_a_node_move_above_it() {
    let (mut nodes, mut now) = settled_pair();
    // A process started later under the name "a" says hello to b.
    let mut impostor: N = Node::new(State::new(id("a", 5)), Config::default()).expect("valid");
    impostor.peer_connected(now, nodes[1].id().clone());
    impostor.handle_timeout(now);
    while let Some(t) = impostor.poll_transmit() {
        nodes[1]
            .handle_message(now, impostor.id(), &t.bytes)
            .expect("valid");
    }
    while nodes[0].poll_event().is_some() {}
    for _ in 0..2 {
        period(&mut nodes, &mut now);
    }
    let moved = std::iter::from_fn(|| nodes[0].poll_event())
        .any(|e| matches!(e, Event::Reincarnated { .. }));
    assert!(moved, "a re-incarnated");
    assert!(nodes[0].id().incarnation() > Incarnation::new(5, 7));
    assert_eq!(
        nodes[0].state().count("room"),
        1,
        "its lists did not change"
    );
}

#[test]
fn bad_bytes_are_refused_with_a_typed_error_and_change_nothing() {
    let (mut nodes, mut now) = settled_pair();
    nodes[0].track("room", "bob", "m".into()).expect("tracks");
    nodes[0].handle_timeout(now);
    let mut valid = Vec::new();
    while let Some(t) = nodes[0].poll_transmit() {
        valid.push(t.bytes);
    }
    now += Duration::from_millis(10);
    let a = nodes[0].id().clone();
    let b = &mut nodes[1];
    let before = view(b);
    let mut wrong_version = valid[0].clone();
    wrong_version[0] = 99;
    let mut unknown_kind = valid[0].clone();
    unknown_kind[1] = 99;
    let mut trailing = valid[0].clone();
    trailing.push(0);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        (vec![0xff; 40], "garbage"),
        (wrong_version, "wrong version"),
        (unknown_kind, "unknown kind"),
        (trailing, "trailing bytes"),
        (
            vec![1; Config::default().max_message_bytes + 1],
            "oversized",
        ),
    ];
    for (bytes, what) in &cases {
        let err = b.handle_message(now, &a, bytes).expect_err(what);
        assert!(matches!(err, ProtocolError::Wire(_)), "{what}: {err:?}");
        assert_eq!(view(b), before, "{what} changed the node");
    }
    for message in &valid {
        for cut in 0..message.len() {
            assert!(b.handle_message(now, &a, &message[..cut]).is_err());
            assert_eq!(view(b), before, "a truncated message changed the node");
        }
    }
    assert!(matches!(
        b.handle_message(now, &a, &cases[2].0),
        Err(ProtocolError::Wire(WireError::UnknownVersion(99)))
    ));
    assert!(b.metrics().rejected >= cases.len() as u64);
    // The valid ones still apply.
    for message in &valid {
        b.handle_message(now, &a, message).expect("valid");
    }
    assert_eq!(b.state().count("room"), 2);
}

#[test]
fn an_invalid_configuration_is_refused() {
    let mut config = Config::default();
    config.down_period = config.broadcast_period;
    assert!(config.validate().is_err());
    let built: Result<N, _> = Node::new(State::new(id("a", 1)), config);
    assert!(built.is_err());
    let mut config = Config::default();
    config.max_message_bytes = 10;
    assert!(config.validate().is_err());
}

/// Named protocol messages from a scripted run, the same every time; the
/// fixtures hold their bytes, so a change of the message format shows.
fn message_samples() -> Vec<(String, Vec<u8>)> {
    let mut nodes = vec![node("a"), node("b"), node("c")];
    let mut now = Duration::ZERO;
    let p = nodes[0]
        .track("room:1", "alice", "web".into())
        .expect("tracks");
    // The first broadcast goes nowhere: the others ask for a catch-up.
    nodes[0].handle_timeout(now);
    while nodes[0].poll_transmit().is_some() {}
    mesh(&mut nodes);
    let mut out = Vec::new();
    let record = |out: &mut Vec<(String, Vec<u8>)>, sent: Vec<(usize, Transmit)>| {
        for (i, t) in sent {
            let name = format!("{}_{:?}_{}", ["a", "b", "c"][i], t.kind, out.len());
            out.push((name.to_lowercase(), t.bytes));
        }
    };
    for _ in 0..2 {
        let sent = period(&mut nodes, &mut now);
        record(&mut out, sent);
    }
    nodes[0].update(&p, "mobile".into()).expect("updates");
    let sent = period(&mut nodes, &mut now);
    record(&mut out, sent);
    nodes[0].leave(now);
    let sent = deliver(&mut nodes, now);
    record(&mut out, sent);
    out
}

const MESSAGE_FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/messages_v2.txt"
);

#[test]
fn protocol_messages_match_their_golden_bytes() {
    let samples = message_samples();
    let kinds: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter_map(|(n, _)| {
            ["heartbeat", "interval", "catchuprequest", "catchupreply"]
                .into_iter()
                .find(|k| n.contains(k))
        })
        .collect();
    assert_eq!(kinds.len(), 4, "every kind is sampled: {kinds:?}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let text: String = samples
        .iter()
        .map(|(n, b)| format!("{n} {}\n", hex(b)))
        .collect();
    if std::env::var_os("ATTENDANCE_BLESS").is_some() {
        std::fs::write(MESSAGE_FIXTURES, &text).expect("fixtures are writable");
    }
    let golden = std::fs::read_to_string(MESSAGE_FIXTURES).expect("fixtures exist");
    for (line, expected) in text.lines().zip(golden.lines()) {
        assert_eq!(line, expected, "a message changed: bless it only if meant");
    }
    assert_eq!(text.lines().count(), golden.lines().count());
}
