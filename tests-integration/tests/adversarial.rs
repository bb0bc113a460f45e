//! A hostile member speaking raw protocol bytes over its own authenticated
//! link, and buggy members: none of them can speak for another replica,
//! evict a replica the victim still hears, silence liveness, or make the
//! victim hold or send more than its configured bounds.
//!
//! The cluster is three nodes: `a` (honest, tracks alice), `v` (the
//! victim) and `l` (the liar, whose link to `v` is authenticated as `l`).

use std::time::Duration;

use attendance::protocol::{
    Config, Destination, MessageKind, Node, ProtocolError, ReplicaStatus, Transmit,
};
use attendance::wire::WireError;
use attendance::{Limits, MAX_COUNTER, PurgeReason, ReplicaId, State};

mod mesh;
use mesh::{N, deliver_counting, id, mesh, node, node_with, period, view};

const A: usize = 0;
const V: usize = 1;
const L: usize = 2;

/// Settled `a`, `v`, `l`, with alice tracked on `a`.
fn cluster_with(config: Config) -> (Vec<N>, Duration) {
    let mut nodes = vec![
        node_with("a", config.clone()),
        node_with("v", config.clone()),
        node_with("l", config),
    ];
    mesh(&mut nodes);
    nodes[A]
        .track("room", "alice", "web".into())
        .expect("tracks");
    let mut now = Duration::ZERO;
    for _ in 0..4 {
        period(&mut nodes, &mut now);
    }
    assert_eq!(nodes[V].state().count("room"), 1);
    assert_eq!(nodes[V].status(&ids(&nodes)[A]), Some(ReplicaStatus::Up));
    (nodes, now)
}

fn cluster() -> (Vec<N>, Duration) {
    cluster_with(Config::default())
}

fn ids(nodes: &[N]) -> Vec<ReplicaId> {
    nodes.iter().map(|n| n.id().clone()).collect()
}

fn periods_past_down(config: &Config) -> u32 {
    (config.down_period.as_millis() / config.broadcast_period.as_millis()) as u32 + 3
}

mod raw;

fn sent_by(node: &mut N) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

#[test]
fn a_message_that_names_another_sender_is_refused_and_changes_nothing() {
    let (mut nodes, now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    // l forges a's graceful leave and sends it over its own link.
    let forged = raw::leave(&a);
    let before = view(&nodes[V]);
    let err = nodes[V]
        .handle_message(now, &l, &forged)
        .expect_err("a forged sender");
    assert_eq!(err, ProtocolError::WrongSender);
    assert_eq!(view(&nodes[V]), before);
    assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up));
    assert_eq!(nodes[V].state().count("room"), 1);
    assert_eq!(nodes[V].metrics().wrong_sender, 1);
    // A catch-up request in a's name gets no answer either.
    let request = raw::request(&a, &a, 0);
    sent_by(&mut nodes[V]);
    assert_eq!(
        nodes[V].handle_message(now, &l, &request),
        Err(ProtocolError::WrongSender)
    );
    assert!(sent_by(&mut nodes[V]).is_empty());
}

#[test]
fn hearsay_of_a_leave_never_evicts_a_replica_heard_directly() {
    let (mut nodes, mut now) = cluster();
    let [a, v, _] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    let _ = v;
    // l believes a left (a forged leave reached it as if from a) and
    // spreads a's death in its digests for down_period.
    let forged = raw::leave(&a);
    nodes[L]
        .handle_message(now, &a, &forged)
        .expect("taken as a's");
    assert_eq!(
        nodes[L].status(&a),
        Some(ReplicaStatus::Purged(PurgeReason::Left))
    );
    let config = Config::default();
    for _ in 0..periods_past_down(&config) {
        period(&mut nodes, &mut now);
        assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up), "a evicted");
        assert_eq!(nodes[V].state().count("room"), 1);
    }
}

#[test]
fn a_made_up_newer_incarnation_cannot_replace_a_replica_heard() {
    let (mut nodes, mut now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    // l relays, fresh, a newer incarnation of a's name.
    let successor = ReplicaId::new(a.name().clone(), attendance::Incarnation::new(99, 9));
    for beat in 0..5u64 {
        let lie = raw::heartbeat(&l, 10_000 + beat, &[(successor.clone(), 9, 1, 0)]);
        nodes[V].handle_message(now, &l, &lie).expect("well-formed");
        period(&mut nodes, &mut now);
        assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up), "a replaced");
        assert_eq!(nodes[V].status(&successor), None);
    }
    assert_eq!(nodes[V].state().count("room"), 1);
}

#[test]
fn a_member_claiming_more_of_a_reachable_replica_is_not_asked_for_it() {
    // l claims to hold a up to counters a never advertised, hoping to be
    // asked for (and to forge) a's presences. Only l's lies reach v.
    let (mut nodes, mut now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    let period_len = Config::default().broadcast_period;
    let before = nodes[V].metrics().catchups_requested;
    for beat in 0..6u64 {
        let ahead = 1 + 5 + 2; // a's counter plus five, as a wire state
        let lie = raw::heartbeat(&l, 10_000 + beat, &[(a.clone(), ahead, 1, 0)]);
        nodes[V].handle_message(now, &l, &lie).expect("well-formed");
        for n in nodes.iter_mut() {
            n.handle_timeout(now);
        }
        deliver_counting(&mut nodes, now, true, &[(L, V)]);
        now += period_len;
    }
    assert_eq!(
        nodes[V].metrics().catchups_requested,
        before,
        "v asked for a's data from a member that is not a"
    );
    assert_eq!(nodes[V].state().count("room"), 1);
}

#[test]
fn a_made_up_successor_of_the_victims_own_name_at_the_bound_moves_nothing() {
    let (mut nodes, now) = cluster();
    let [_, v, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    let at_bound = ReplicaId::new(
        v.name().clone(),
        attendance::Incarnation::new(MAX_COUNTER, 1),
    );
    let lie = raw::heartbeat(&l, 10_000, &[(at_bound, 0, 1, 0)]);
    nodes[V].handle_message(now, &l, &lie).expect("well-formed");
    assert_eq!(nodes[V].id(), &v, "moved where no peer would hear it");
}

#[test]
fn a_member_cannot_mint_incarnations_of_itself_to_fill_tables() {
    let (mut nodes, now) = cluster();
    let l = nodes[L].id().clone();
    let before = nodes[V].replicas().count();
    let mut refused = 0;
    for k in 0..100u64 {
        let minted = ReplicaId::new(l.name().clone(), attendance::Incarnation::new(100 + k, 1));
        let beat = raw::heartbeat(&minted, 1, &[]);
        if nodes[V].handle_message(now, &l, &beat) == Err(ProtocolError::WrongSender) {
            refused += 1;
        }
    }
    // A few moves above its own incarnation are taken (a replica may have
    // to move a few times); the rest within down_period are refused.
    assert_eq!(refused, 96);
    assert!(nodes[V].replicas().count() <= before + 4);
}

#[test]
fn hearsay_of_a_death_then_of_a_successor_does_not_purge_a_live_replica() {
    // a cannot reach v for a while, but lives; l says a died, then names a
    // made-up successor of a.
    let (mut nodes, mut now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    let successor = ReplicaId::new(a.name().clone(), attendance::Incarnation::new(99, 9));
    let period_len = Config::default().broadcast_period;
    for beat in 0..6u64 {
        let lie = raw::heartbeat(
            &l,
            10_000 + beat,
            &[(a.clone(), 1, 1, 0), (successor.clone(), 9, 1, 0)],
        );
        nodes[V].handle_message(now, &l, &lie).expect("well-formed");
        for n in nodes.iter_mut() {
            n.handle_timeout(now);
        }
        deliver_counting(&mut nodes, now, true, &[(A, V), (L, V)]);
        now += period_len;
    }
    assert!(
        !matches!(nodes[V].status(&a), Some(ReplicaStatus::Purged(_))),
        "{:?}",
        nodes[V].status(&a)
    );
    assert_eq!(nodes[V].status(&successor), None);
    // a is heard again: listed again.
    for _ in 0..4 {
        period(&mut nodes, &mut now);
    }
    assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up));
    assert_eq!(nodes[V].state().count("room"), 1);
}

#[test]
fn hearsay_still_hastens_the_suspicion_of_a_silent_replica() {
    let (mut nodes, mut now) = cluster();
    let a = nodes[A].id().clone();
    // a leaves; only l hears it. v never hears from a again.
    nodes[A].leave(now);
    for t in sent_by(&mut nodes[A]) {
        if t.destination == Destination::Replica(nodes[L].id().clone()) {
            nodes[L].handle_message(now, &a, &t.bytes).expect("valid");
        }
    }
    nodes.remove(A);
    let config = Config::default();
    let started = now;
    while nodes[0].status(&a) == Some(ReplicaStatus::Up) {
        period(&mut nodes, &mut now);
        assert!(now - started < config.down_period, "not hastened");
    }
    assert!(now - started <= config.broadcast_period * 4);
    assert_eq!(
        nodes[0].status(&a),
        Some(ReplicaStatus::Down),
        "hidden, not purged"
    );
    assert_eq!(nodes[0].state().count("room"), 0);
}

#[test]
fn a_forged_heartbeat_number_cannot_silence_a_replica() {
    let (mut nodes, mut now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    let config = Config::default();
    for beat in 0..periods_past_down(&config) {
        // l claims a's heartbeat number is 2^50, fresh, every period.
        let lie = raw::heartbeat(&l, 10_000 + u64::from(beat), &[(a.clone(), 0, 1 << 50, 0)]);
        nodes[V].handle_message(now, &l, &lie).expect("well-formed");
        period(&mut nodes, &mut now);
        assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up), "a silenced");
    }
    assert_eq!(nodes[V].state().count("room"), 1);
}

#[test]
fn a_forged_heartbeat_number_cannot_silence_a_replica_heard_through_a_relay() {
    // a and v cannot reach each other; h relays a's heartbeats to v, and
    // l claims a's heartbeat number is far ahead of them.
    let config = Config::default();
    let mut nodes = vec![node("a"), node("v"), node("l"), node("h")];
    mesh(&mut nodes);
    let [a, v, l, _] = <[ReplicaId; 4]>::try_from(ids(&nodes)).expect("four");
    nodes[A].remove_peer(&v);
    nodes[V].remove_peer(&a);
    let cut = [(A, V)];
    nodes[A]
        .track("room", "alice", "web".into())
        .expect("tracks");
    let mut now = Duration::ZERO;
    let step = |nodes: &mut Vec<N>, now: &mut Duration| {
        for n in nodes.iter_mut() {
            n.handle_timeout(*now);
        }
        deliver_counting(nodes, *now, true, &cut);
        *now += config.broadcast_period;
    };
    for _ in 0..6 {
        step(&mut nodes, &mut now);
    }
    assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up));
    for beat in 0..periods_past_down(&config) {
        let lie = raw::heartbeat(&l, 10_000 + u64::from(beat), &[(a.clone(), 0, 1 << 50, 0)]);
        nodes[V].handle_message(now, &l, &lie).expect("well-formed");
        // A stale relay, then a climb of small steps within one period.
        let stale = raw::heartbeat(&l, 20_000, &[(a.clone(), 0, 1 << 40, u64::MAX)]);
        nodes[V]
            .handle_message(now, &l, &stale)
            .expect("well-formed");
        for step in 1..=200u64 {
            let climb = raw::heartbeat(&l, 30_000 + step, &[(a.clone(), 0, step, 0)]);
            nodes[V]
                .handle_message(now, &l, &climb)
                .expect("well-formed");
        }
        step(&mut nodes, &mut now);
        assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up), "a silenced");
    }
    assert_eq!(nodes[V].state().count("room"), 1);
    assert!(nodes[V].metrics().implausible_beats > 0);
}

#[test]
fn counters_above_2_pow_53_are_refused_where_they_enter() {
    let (mut nodes, now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    let huge = MAX_COUNTER + 1;
    let mut far_future = l.clone();
    far_future = ReplicaId::new(
        far_future.name().clone(),
        attendance::Incarnation::new(u64::MAX, 1),
    );
    let cases = [
        ("interval", raw::empty_interval(&l, huge - 1, huge)),
        ("interval end", raw::empty_interval(&l, 1, u64::MAX)),
        ("heartbeat number", raw::heartbeat(&l, huge, &[])),
        (
            "relayed counter",
            raw::heartbeat(&l, 1, &[(a.clone(), huge + 2, 1, 0)]),
        ),
        (
            "relayed number",
            raw::heartbeat(&l, 1, &[(a.clone(), 0, u64::MAX, 0)]),
        ),
        ("request", raw::request(&l, &a, u64::MAX)),
        ("start time", raw::heartbeat(&far_future, 1, &[])),
    ];
    let before = view(&nodes[V]);
    for (what, bytes) in cases {
        let err = nodes[V].handle_message(now, &l, &bytes).expect_err(what);
        assert!(
            matches!(err, ProtocolError::Wire(WireError::Malformed(_))),
            "{what}: {err:?}"
        );
        assert_eq!(view(&nodes[V]), before, "{what} changed the node");
    }
    // The victim still heartbeats to everyone.
    nodes[V].handle_timeout(now + Config::default().broadcast_period);
    let beats = sent_by(&mut nodes[V])
        .into_iter()
        .filter(|t| t.kind == MessageKind::Heartbeat)
        .count();
    assert_eq!(beats, 2);
}

#[test]
fn an_interval_wider_than_the_span_limit_is_refused() {
    let (mut nodes, now) = cluster();
    let l = nodes[L].id().clone();
    let span = Config::default().max_interval_span;
    let before = view(&nodes[V]);
    let err = nodes[V]
        .handle_message(now, &l, &raw::empty_interval(&l, 0, span + 1))
        .expect_err("too wide");
    assert!(matches!(err, ProtocolError::Invalid(_)), "{err:?}");
    assert_eq!(view(&nodes[V]), before);
}

#[test]
fn intervals_far_ahead_are_not_held() {
    let (mut nodes, now) = cluster();
    let l = nodes[L].id().clone();
    let config = Config::default();
    let reach = config.max_interval_span * config.max_buffered_intervals as u64;
    let far = raw::empty_interval(&l, reach + 1, reach + 2);
    nodes[V].handle_message(now, &l, &far).expect("well-formed");
    assert_eq!(nodes[V].buffered(), 0);
    assert_eq!(nodes[V].metrics().intervals_dropped, 1);
    let near = raw::empty_interval(&l, reach, reach + 1);
    nodes[V]
        .handle_message(now, &l, &near)
        .expect("well-formed");
    assert_eq!(nodes[V].buffered(), 1, "within reach is held");
}

#[test]
fn held_intervals_share_one_byte_budget() {
    let mut config = Config::default();
    // A quarter of it, 10,000 bytes, for any one replica.
    config.max_buffered_bytes = 40_000;
    let (mut nodes, mut now) = cluster_with(config.clone());
    let l = nodes[L].id().clone();
    // l sends eight intervals of about 4 KB; the first never arrives.
    let mut intervals = Vec::new();
    for i in 0..8 {
        nodes[L]
            .track("room", &format!("u{i}"), "x".repeat(4000))
            .expect("tracks");
        nodes[L].handle_timeout(now);
        for t in sent_by(&mut nodes[L]) {
            if t.kind == MessageKind::Interval {
                intervals.push(t.bytes);
            }
        }
        now += config.broadcast_period;
    }
    assert_eq!(intervals.len(), 8);
    for bytes in &intervals[1..] {
        nodes[V].handle_message(now, &l, bytes).expect("valid");
    }
    assert_eq!(nodes[V].buffered(), 2, "only what fits l's 10,000 bytes");
    assert_eq!(nodes[V].metrics().intervals_dropped, 5);
}

#[test]
fn catch_up_pieces_nobody_asked_for_are_dropped() {
    let (mut nodes, now) = cluster();
    let l = nodes[L].id().clone();
    let junk = vec![0u8; 1000];
    for i in 0..50 {
        let piece = raw::reply_piece(&l, (1 << 40, 60_000, i * 1000), &junk);
        nodes[V]
            .handle_message(now, &l, &piece)
            .expect("well-formed");
    }
    assert_eq!(nodes[V].buffered(), 0, "nothing kept");
    assert_eq!(nodes[V].metrics().unrequested_pieces, 50);
}

#[test]
fn a_catch_up_request_is_answered_once_and_only_to_its_sender() {
    let (mut nodes, now) = cluster();
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    sent_by(&mut nodes[V]);
    let request = raw::request(&l, &a, 0);
    nodes[V].handle_message(now, &l, &request).expect("valid");
    let answers = sent_by(&mut nodes[V]);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].kind, MessageKind::CatchUpReply);
    assert_eq!(answers[0].destination, Destination::Replica(l.clone()));
    // The same request again, at once: nothing more.
    nodes[V].handle_message(now, &l, &request).expect("valid");
    assert!(sent_by(&mut nodes[V]).is_empty());
    assert_eq!(nodes[V].metrics().catchups_declined, 1);
    // After a catch-up timeout, a retry is answered.
    let later = now + Config::default().catchup_timeout;
    nodes[V].handle_message(later, &l, &request).expect("valid");
    assert_eq!(sent_by(&mut nodes[V]).len(), 1);
}

#[test]
fn an_answer_too_large_to_send_is_encoded_once() {
    let mut config = Config::default();
    config.max_message_bytes = 64 << 10;
    config.max_catchup_bytes = 64 << 10;
    let (mut nodes, mut now) = cluster_with(config.clone());
    let [a, _, l] = <[ReplicaId; 3]>::try_from(ids(&nodes)).expect("three");
    for i in 0..2_000 {
        nodes[A]
            .track("room", &format!("user-{i}"), "m".repeat(60))
            .expect("tracks");
    }
    for _ in 0..3 {
        period(&mut nodes, &mut now);
    }
    assert_eq!(nodes[V].state().count("room"), 2_001);
    sent_by(&mut nodes[V]);
    let request = raw::request(&l, &a, 0);
    for _ in 0..3 {
        nodes[V].handle_message(now, &l, &request).expect("valid");
        assert!(sent_by(&mut nodes[V]).is_empty(), "too large to send");
    }
    assert_eq!(nodes[V].metrics().catchups_too_large, 1);
    assert_eq!(nodes[V].metrics().catchups_declined, 2);
}

/// `a` and a node `v` with other limits, meshed, after `periods` periods
/// of `a` tracking what `track` does; deliveries may be refused.
fn mismatched(limits: Limits, track: impl FnOnce(&mut N), periods: u32) -> Vec<N> {
    let config = Config::default();
    let strict = State::builder(id("v", 1)).limits(limits).build();
    let mut nodes = vec![node("a"), Node::new(strict, config.clone()).expect("valid")];
    mesh(&mut nodes);
    track(&mut nodes[A]);
    let mut now = Duration::ZERO;
    for _ in 0..periods {
        for n in nodes.iter_mut() {
            n.handle_timeout(now);
        }
        deliver_counting(&mut nodes, now, false, &[]);
        now += config.broadcast_period;
    }
    nodes
}

#[test]
fn presences_over_a_peers_smaller_limits_are_refused_one_by_one() {
    // v allows 16-byte topics; a tracks on a longer one and a short one.
    let nodes = mismatched(
        Limits::default().max_topic_len(16),
        |a| {
            a.track("a-topic-longer-than-sixteen-bytes", "alice", "web".into())
                .expect("tracks");
            a.track("room", "bob", "web".into()).expect("tracks");
        },
        10,
    );
    let a = nodes[A].id().clone();
    assert_eq!(nodes[V].state().count("room"), 1, "the rest arrived");
    assert_eq!(nodes[V].status(&a), Some(ReplicaStatus::Up));
    let metrics = nodes[V].metrics();
    assert!(metrics.refused_entries >= 1, "{metrics:?}");
    assert!(
        metrics.catchups_requested <= 2,
        "no catch-up storm: {metrics:?}"
    );
}

#[test]
fn a_refused_catch_up_backs_off_and_is_counted() {
    // v allows one presence per replica; a tracks two.
    let periods: u32 = 40;
    let nodes = mismatched(
        Limits::default().max_presences_per_replica(1),
        |a| {
            a.track("room", "alice", "web".into()).expect("tracks");
            a.track("room", "bob", "web".into()).expect("tracks");
        },
        periods,
    );
    let metrics = nodes[V].metrics();
    assert!(metrics.catchups_refused >= 1, "{metrics:?}");
    assert!(
        metrics.catchups_requested <= u64::from(periods) / 2 + 1,
        "at most one request per catch-up timeout: {metrics:?}"
    );
}

#[test]
fn made_up_replicas_cost_little_and_fill_nothing() {
    let (mut nodes, now) = cluster();
    let l = nodes[L].id().clone();
    let made_up = |i: u64| id(&format!("ghost-{i}"), 1);
    // 20,000 fresh replicas the victim has never heard of, then 20,000
    // dead ones.
    let fresh: Vec<_> = (0..20_000).map(|i| (made_up(i), 7, 1, 0)).collect();
    let beat = raw::heartbeat(&l, 10_000, &fresh);
    nodes[V]
        .handle_message(now, &l, &beat)
        .expect("well-formed");
    let dead: Vec<_> = (20_000..40_000).map(|i| (made_up(i), 1, 1, 0)).collect();
    let beat = raw::heartbeat(&l, 10_001, &dead);
    nodes[V]
        .handle_message(now, &l, &beat)
        .expect("well-formed");
    // Many heartbeats within one period bring no more.
    for round in 0..10u64 {
        let more: Vec<_> = (0..64)
            .map(|i| (made_up(100_000 + round * 64 + i), 7, 1, 0))
            .collect();
        let beat = raw::heartbeat(&l, 10_002 + round, &more);
        nodes[V]
            .handle_message(now, &l, &beat)
            .expect("well-formed");
    }
    let known = nodes[V].replicas().count();
    assert!(known <= 2 + 64, "{known} replicas known");
    assert_eq!(nodes[V].state().purged().count(), 0);
    assert_eq!(nodes[V].state().count("room"), 1);
}

#[test]
fn heartbeats_stay_under_the_message_limit_however_many_replicas_are_known() {
    let mut config = Config::default();
    config.max_message_bytes = 64 << 10;
    config.max_catchup_bytes = 64 << 10;
    let (mut nodes, now) = cluster_with(config.clone());
    let l = nodes[L].id().clone();
    // 3,000 replicas introduced, 64 a period (the most one link may
    // bring), each with a 40-byte name.
    for round in 0..47u64 {
        let entries: Vec<_> = (0..64)
            .map(|i| (id(&format!("{:040}", round * 64 + i), 1), 0, 1, 0))
            .collect();
        let beat = raw::heartbeat(&l, 10_000 + round, &entries);
        let at = now + config.broadcast_period * round as u32;
        nodes[V].handle_message(at, &l, &beat).expect("well-formed");
    }
    let now = now + config.broadcast_period * 47;
    assert!(nodes[V].replicas().count() >= 3_000);
    // v's view now differs from both peers': within a few periods it
    // sends one of them its whole view, cut to the limit.
    let mut beats = Vec::new();
    for round in 1..=4 {
        let at = now + config.broadcast_period * round;
        for peer in [A, L] {
            nodes[peer].handle_timeout(at);
            let from = nodes[peer].id().clone();
            for t in sent_by(&mut nodes[peer]) {
                if t.destination == Destination::Replica(nodes[V].id().clone()) {
                    nodes[V]
                        .handle_message(at, &from, &t.bytes)
                        .expect("well-formed");
                }
            }
        }
        nodes[V].handle_timeout(at);
        beats.extend(
            sent_by(&mut nodes[V])
                .into_iter()
                .filter(|t| t.kind == MessageKind::Heartbeat),
        );
    }
    assert_eq!(beats.len(), 8, "one heartbeat a peer a period");
    let largest = beats.iter().map(|t| t.bytes.len()).max().unwrap_or(0);
    assert!(
        largest > config.max_message_bytes / 2,
        "a digest: {largest} bytes"
    );
    let v = nodes[V].id().clone();
    for t in beats {
        assert!(
            t.bytes.len() <= config.max_message_bytes,
            "{} bytes",
            t.bytes.len()
        );
        nodes[A]
            .handle_message(now, &v, &t.bytes)
            .expect("a peer reads it");
    }
}
