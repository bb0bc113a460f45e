//! What the protocol costs on the wire, measured on the deterministic
//! simulator with the default periods (1.5 s broadcast, 30 s down).
//!
//! For N = 3, 16 and 64 replicas each holding 1,000 presences:
//! - idle traffic per node and messages per period, nothing changing;
//! - bytes per join and per leave per peer, 1,000 of them batched in one
//!   period on one replica, against the payload (topic + key + meta);
//! - broadcast periods until every replica lists the truth after a
//!   partition heals, for a partition shorter than `down_period` and one
//!   longer, with churn on both sides.
//!
//! `cargo bench --bench cluster` prints one line per figure. The numbers
//! are counts of bytes and virtual time, not wall time: the same on every
//! machine.

#[path = "../tests-integration/tests/sim/mod.rs"]
mod sim;

use std::time::Duration;

use attendance::protocol::MessageKind;
use sim::Sim;

const PRESENCES: usize = 1000;

fn cluster(hosts: usize, seed: u64) -> Sim {
    Sim::settled(seed, hosts, PRESENCES).expect("the cluster settles")
}

/// Periods from the heal until every host lists the truth.
fn periods_to_heal(sim: &mut Sim) -> f64 {
    let healed = sim.now;
    while sim.converged().is_err() {
        assert!(
            sim.now < healed + sim.periods(40),
            "no convergence after a heal"
        );
        sim.run_for(Duration::from_millis(10));
    }
    (sim.now - healed).as_secs_f64() / sim.config.broadcast_period.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for hosts in [3usize, 16, 64] {
        let mut sim = cluster(hosts, hosts as u64);
        let period = sim.periods(1);
        let name = format!("cluster/N={hosts}");

        // Idle.
        let before = sim.traffic.clone();
        let span = period * 20;
        sim.run_for(span);
        let bytes = sim.traffic.total_bytes() - before.total_bytes();
        let messages = sim.traffic.total_messages() - before.total_messages();
        println!(
            "{name} idle_bytes_per_sec_per_node {:.0}",
            bytes as f64 / span.as_secs_f64() / hosts as f64
        );
        println!("{name} messages_per_period {:.1}", messages as f64 / 20.0);

        // A burst of joins, then of leaves, on host 0.
        let peers = (hosts - 1) as f64;
        let mut payload = 0usize;
        let interval_bytes = |sim: &Sim| {
            sim.traffic
                .bytes
                .get(&MessageKind::Interval)
                .copied()
                .unwrap_or(0)
        };
        let before = interval_bytes(&sim);
        let mut ids = Vec::new();
        for _ in 0..PRESENCES {
            let id = sim.track(0).expect("running");
            let (topic, key, meta) = &sim.truth[&id];
            payload += topic.len() + key.len() + rmp_serde::to_vec(meta).expect("encodes").len();
            ids.push(id);
        }
        sim.run_for(period * 3);
        let join = (interval_bytes(&sim) - before) as f64 / PRESENCES as f64 / peers;
        println!("{name} bytes_per_join_per_peer {join:.1}");
        println!(
            "{name} payload_per_join {:.1}",
            payload as f64 / PRESENCES as f64
        );
        let before = interval_bytes(&sim);
        for _ in 0..PRESENCES {
            sim.untrack(0);
        }
        sim.run_for(period * 3);
        let leave = (interval_bytes(&sim) - before) as f64 / PRESENCES as f64 / peers;
        println!("{name} bytes_per_leave_per_peer {leave:.1}");

        // Partitions with churn on both sides, then heal.
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
            let periods = periods_to_heal(&mut sim);
            println!("{name} heal_{label}_partition_periods {periods:.2}");
            sim.run_for(period * 4);
        }
    }
}
