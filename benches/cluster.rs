//! What the protocol costs on the wire and how fast it sees changes,
//! measured on the deterministic simulator with the default periods (1.5 s
//! broadcast, 30 s down).
//!
//! For N = 3, 16, 64, 256 and 1,000 replicas, each holding 1,000 presences
//! up to N = 64, 100 at N = 256 and 10 at N = 1,000 (so that a thousand
//! full replicas fit in memory and time):
//! - idle traffic per node and messages per period, nothing changing;
//! - bytes per join and per leave per peer, 1,000 of them batched in one
//!   period on one replica, against the payload (topic + key + meta);
//! - up to N = 256, broadcast periods until every replica lists the truth
//!   after a partition heals, for a partition shorter than `down_period`
//!   and one longer, with churn on both sides;
//! - periods until one new presence is listed everywhere;
//! - replicas wrongly hidden over 100 periods of 5% message loss;
//! - periods until a crashed replica is hidden everywhere, from the lost
//!   links' report, and with no report at all;
//! - a new replica joining a settled cluster of 10 presences per replica:
//!   the catch-up requests it sends until it lists everything, and the
//!   bytes of the answers against one transfer of the whole state.
//!
//! Bytes are the protocol's plus the TCP mesh's framing of each message
//! ([`FRAME_OVERHEAD`]). `cargo bench --bench cluster` prints one line per
//! figure, up to N = 256; `-- --max-n 1000` (or
//! `ATTENDANCE_CLUSTER_MAX_N=1000`) runs the largest cluster too, a
//! smaller bound stops earlier, and `--min-n 1000` (or
//! `ATTENDANCE_CLUSTER_MIN_N`) skips the smaller ones. The numbers are counts of bytes and
//! virtual time, not wall time: the same on every machine.

#[path = "../tests-integration/tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use attendance::ReplicaId;
use attendance::protocol::{MessageKind, ReplicaStatus};
use attendance::transport::tcp::FRAME_OVERHEAD;
use sim::{Network, Sim, Traffic};

/// The cluster sizes, smallest first.
const SIZES: [usize; 5] = [3, 16, 64, 256, 1000];

/// Joins (then leaves) in the burst on one replica.
const BURST: usize = 1000;

/// Presences per replica of the cluster a new replica joins.
const REJOIN_PRESENCES: usize = 10;

/// The largest cluster the heal rows run on: the partitions poll every
/// replica's whole lists, which grows as N² presences.
const MAX_HEAL_N: usize = 256;

/// How often the conditions are polled, in virtual time.
const STEP: Duration = Duration::from_millis(10);

/// Presences each replica holds in the cluster of `hosts`: fewer in the
/// large clusters, where every replica holds N times as many.
fn presences_per_replica(hosts: usize) -> usize {
    match hosts {
        0..=64 => 1000,
        65..=256 => 100,
        _ => 10,
    }
}

/// The largest N run unless asked for more: a period of N = 1,000 is a
/// million heartbeat deliveries, several seconds of wall time here.
const DEFAULT_MAX_N: usize = 256;

/// The largest N to run: `--max-n N`, else `ATTENDANCE_CLUSTER_MAX_N`,
/// else [`DEFAULT_MAX_N`].
fn max_n(args: &[String]) -> usize {
    size_arg(args, "--max-n", "ATTENDANCE_CLUSTER_MAX_N").unwrap_or(DEFAULT_MAX_N)
}

/// The smallest N to run: `--min-n N`, else `ATTENDANCE_CLUSTER_MIN_N`,
/// else all of them (to run N = 1,000 alone).
fn min_n(args: &[String]) -> usize {
    size_arg(args, "--min-n", "ATTENDANCE_CLUSTER_MIN_N").unwrap_or(0)
}

fn size_arg(args: &[String], flag: &str, env: &str) -> Option<usize> {
    let with_eq = format!("{flag}=");
    let arg = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(with_eq.as_str())
            .map(str::to_owned)
            .or_else(|| (a == flag).then(|| args.get(i + 1).cloned().unwrap_or_default()))
    });
    let value = arg.or_else(|| std::env::var(env).ok())?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{flag} takes a number, not {value:?}")),
    )
}

/// Bytes on the wire: each message's bytes and its frame.
fn wire_bytes(messages: u64, bytes: u64) -> u64 {
    bytes + messages * FRAME_OVERHEAD as u64
}

fn total_wire_bytes(traffic: &Traffic) -> u64 {
    wire_bytes(traffic.total_messages(), traffic.total_bytes())
}

fn kind_wire_bytes(traffic: &Traffic, kind: MessageKind) -> u64 {
    wire_bytes(traffic.messages_of(kind), traffic.bytes_of(kind))
}

fn periods(sim: &Sim, span: Duration) -> f64 {
    span.as_secs_f64() / sim.config.broadcast_period.as_secs_f64()
}

/// Runs until `done` holds, polled every [`STEP`], for at most `limit`
/// periods; returns the periods from `since`.
fn periods_until(
    sim: &mut Sim,
    since: Duration,
    limit: u32,
    what: &str,
    done: impl Fn(&Sim) -> bool,
) -> f64 {
    let deadline = sim.now + sim.periods(limit);
    while !done(sim) {
        assert!(sim.now < deadline, "{what}: not within {limit} periods");
        sim.run_for(STEP);
    }
    periods(sim, sim.now.saturating_sub(since))
}

fn running(sim: &Sim) -> impl Iterator<Item = usize> + '_ {
    (0..sim.hosts.len()).filter(|&h| sim.is_up(h))
}

/// No running replica shows `replica`'s presences.
fn hidden_everywhere(sim: &Sim, replica: &ReplicaId) -> bool {
    running(sim).all(|h| sim.node(h).status(replica) != Some(ReplicaStatus::Up))
}

/// Every running replica shows every other.
fn all_up(sim: &Sim) -> bool {
    let ids: Vec<(usize, ReplicaId)> = running(sim)
        .map(|h| (h, sim.id(h).expect("running")))
        .collect();
    ids.iter().all(|(h, _)| {
        let node = sim.node(*h);
        ids.iter()
            .all(|(g, id)| g == h || node.status(id) == Some(ReplicaStatus::Up))
    })
}

/// Runs until every replica shows every other.
fn settle(sim: &mut Sim) {
    let since = sim.now;
    periods_until(sim, since, 40, "every replica up", all_up);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let (min_n, max_n) = (min_n(&args), max_n(&args));
    for hosts in SIZES.into_iter().filter(|&n| (min_n..=max_n).contains(&n)) {
        let started = Instant::now();
        cluster(hosts);
        eprintln!(
            "cluster/N={hosts}: {} presences per replica, {:.1?} of wall time",
            presences_per_replica(hosts),
            started.elapsed()
        );
    }
}

/// Every figure of one cluster size.
fn cluster(hosts: usize) {
    let name = format!("cluster/N={hosts}");
    let per_replica = presences_per_replica(hosts);
    let mut sim = Sim::settled(hosts as u64, hosts, per_replica).expect("the cluster settles");
    idle(&mut sim, &name);
    bursts(&mut sim, &name);
    if hosts <= MAX_HEAL_N {
        heal(&mut sim, &name);
    }
    join_visible(&mut sim, &name);
    if per_replica == REJOIN_PRESENCES {
        // Before the crashes, so that the new replica finds every replica
        // up, as in a fresh cluster of this size; the long lossy run last.
        rejoin(&mut sim, &name);
        crashes(&mut sim, &name, hosts);
        false_downs(&mut sim, &name);
    } else {
        false_downs(&mut sim, &name);
        crashes(&mut sim, &name, hosts);
        drop(sim);
        let mut sim =
            Sim::settled(hosts as u64 + 1, hosts, REJOIN_PRESENCES).expect("the cluster settles");
        rejoin(&mut sim, &name);
    }
}

/// 20 periods with nothing changing.
fn idle(sim: &mut Sim, name: &str) {
    let hosts = sim.hosts.len();
    let before = sim.traffic.clone();
    let span = sim.periods(20);
    sim.run_for(span);
    let bytes = total_wire_bytes(&sim.traffic) - total_wire_bytes(&before);
    let messages = sim.traffic.total_messages() - before.total_messages();
    println!(
        "{name} idle_bytes_per_sec_per_node {:.0}",
        bytes as f64 / span.as_secs_f64() / hosts as f64
    );
    println!("{name} messages_per_period {:.1}", messages as f64 / 20.0);
}

/// A burst of joins, then of leaves, on host 0.
fn bursts(sim: &mut Sim, name: &str) {
    let period = sim.periods(1);
    let peers = (sim.hosts.len() - 1) as f64;
    let interval_bytes = |sim: &Sim| kind_wire_bytes(&sim.traffic, MessageKind::Interval);
    let mut payload = 0usize;
    let before = interval_bytes(sim);
    for _ in 0..BURST {
        let id = sim.track(0).expect("running");
        let (topic, key, meta) = &sim.truth[&id];
        payload += topic.len() + key.len() + rmp_serde::to_vec(meta).expect("encodes").len();
    }
    sim.run_for(period * 3);
    let join = (interval_bytes(sim) - before) as f64 / BURST as f64 / peers;
    println!("{name} bytes_per_join_per_peer {join:.1}");
    println!(
        "{name} payload_per_join {:.1}",
        payload as f64 / BURST as f64
    );
    let before = interval_bytes(sim);
    for _ in 0..BURST {
        sim.untrack(0);
    }
    sim.run_for(period * 3);
    let leave = (interval_bytes(sim) - before) as f64 / BURST as f64 / peers;
    println!("{name} bytes_per_leave_per_peer {leave:.1}");
}

/// Partitions with churn on both sides, then heal.
fn heal(sim: &mut Sim, name: &str) {
    let hosts = sim.hosts.len();
    for (label, length) in [
        ("short", sim.config.down_period / 3),
        ("long", sim.config.down_period * 2),
    ] {
        sim.partition(&[(0..hosts / 2).collect(), (hosts / 2..hosts).collect()]);
        let step = length / 100;
        for _ in 0..100 {
            sim.random_mutation();
            sim.run_for(step);
        }
        sim.heal();
        let healed = sim.now;
        let periods = periods_until(sim, healed, 40, "heal", Sim::is_converged);
        println!("{name} heal_{label}_partition_periods {periods:.2}");
        sim.run_for(sim.periods(4));
    }
}

/// One presence tracked on host 0, until every replica lists it.
fn join_visible(sim: &mut Sim, name: &str) {
    let id = sim.track(0).expect("running");
    let (topic, key, _) = sim.truth[&id].clone();
    let tracked = sim.now;
    let periods = periods_until(sim, tracked, 20, "a join seen everywhere", |s| {
        running(s).all(|h| {
            s.node(h)
                .state()
                .get(&topic, &key)
                .iter()
                .any(|p| p.id == id)
        })
    });
    println!("{name} join_visible_everywhere_periods {periods:.2}");
}

/// 100 periods of 5% message loss, nothing crashing.
fn false_downs(sim: &mut Sim, name: &str) {
    let before = sim.downs_of_running;
    sim.network = Network {
        drop: 0.05,
        ..Network::reliable()
    };
    sim.run_for(sim.periods(100));
    sim.network = Network::reliable();
    println!("{name} false_down_events {}", sim.downs_of_running - before);
    settle(sim);
}

/// A crash with the lost links reported, then one without, of the last
/// two of the cluster's first `hosts`.
fn crashes(sim: &mut Sim, name: &str, hosts: usize) {
    let last = hosts - 1;
    let victim = sim.id(last).expect("running");
    sim.crash(last);
    let reported = sim.last_report.expect("losses are reported");
    let periods = periods_until(sim, reported, 20, "a reported crash seen", |s| {
        hidden_everywhere(s, &victim)
    });
    println!("{name} down_after_lost_link_periods {periods:.2}");

    sim.network.report_losses = false;
    let silent = last - 1;
    let victim = sim.id(silent).expect("running");
    sim.crash(silent);
    let crashed = sim.now;
    let limit = 2 * (sim.config.down_period.as_millis() / sim.periods(1).as_millis()) as u32;
    let periods = periods_until(sim, crashed, limit, "a silent crash seen", |s| {
        hidden_everywhere(s, &victim)
    });
    println!("{name} crash_detected_everywhere_periods {periods:.2}");
    sim.network.report_losses = true;
}

/// A replica under a new name joins; until it lists every presence.
fn rejoin(sim: &mut Sim, name: &str) {
    let host = sim.add_host();
    let started = sim.now;
    periods_until(sim, started, 40, "a new replica caught up", |s| {
        s.node(host).state().len() == s.truth.len()
    });
    let requests = sim
        .node(host)
        .metrics()
        .sent(MessageKind::CatchUpRequest)
        .messages;
    let replies = kind_wire_bytes(&sim.hosts[host].received, MessageKind::CatchUpReply);
    println!("{name} rejoin_requests {requests}");
    println!(
        "{name} rejoin_bytes_over_full_state {:.3}",
        replies as f64 / sim.whole_state_bytes() as f64
    );
}
