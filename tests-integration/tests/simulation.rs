//! The protocol in a simulated cluster: convergence, diffs, prefix views,
//! down detection, partitions, restarts, leaks and efficiency.
//!
//! Every schedule is derived from a seed, printed when a check fails; set
//! `ATTENDANCE_SIM_SEED=<seed>` to run that one schedule alone.

mod sim;

use std::time::Duration;

use attendance::ReplicaId;
use attendance::protocol::{Config, ReplicaStatus};
use sim::{Network, Sim};

/// The seeds a check runs: `count` of them from `base`, or the one in
/// `ATTENDANCE_SIM_SEED`.
fn seeds(base: u64, count: u64) -> Vec<u64> {
    match std::env::var("ATTENDANCE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("ATTENDANCE_SIM_SEED is a number")],
        Err(_) => (base..base + count).collect(),
    }
}

/// Runs `check` for every seed, naming the seed that fails.
fn for_seeds(base: u64, count: u64, check: impl Fn(u64) -> Result<(), String>) {
    for seed in seeds(base, count) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(seed)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("seed {seed} failed (ATTENDANCE_SIM_SEED={seed}): {e}"),
            Err(_) => panic!("seed {seed} panicked (ATTENDANCE_SIM_SEED={seed})"),
        }
    }
}

/// A random schedule of mutations and faults, then quiet; returns the
/// simulator when every fault has healed and every crashed host has been
/// gone for `down_period` + one period.
fn random_schedule(seed: u64) -> (Sim, Duration) {
    let hosts = 3 + (seed % 3) as usize;
    let mut sim = Sim::new(seed, hosts, Config::default(), Network::lossy());
    sim.check_prefixes = true;
    sim.run_for(sim.periods(2));
    for _ in 0..100 {
        match sim.rng.below(100) {
            0..=69 => sim.random_mutation(),
            70..=74 => {
                let a = sim.rng.below(hosts as u64) as usize;
                let b = (a + 1 + sim.rng.below(hosts as u64 - 1) as usize) % hosts;
                sim.cut(a, b);
            }
            75..=77 => {
                let a = sim.rng.below(hosts as u64) as usize;
                let b = (a + 1 + sim.rng.below(hosts as u64 - 1) as usize) % hosts;
                sim.cut_one_way(a, b);
            }
            78..=82 => {
                let split = 1 + sim.rng.below(hosts as u64 - 1) as usize;
                let groups = vec![(0..split).collect(), (split..hosts).collect()];
                sim.partition(&groups);
            }
            83..=88 => sim.heal(),
            89..=91 => {
                let h = sim.rng.below(hosts as u64) as usize;
                sim.crash(h);
            }
            _ => {
                let h = sim.rng.below(hosts as u64) as usize;
                sim.restart(h);
            }
        }
        let pause = sim.rng.between(Duration::ZERO, Duration::from_millis(1000));
        sim.run_for(pause);
    }
    // Most crashed hosts come back; at least two run.
    for h in 0..hosts {
        if !sim.is_up(h) && (h < 2 || sim.rng.chance(0.5)) {
            sim.restart(h);
        }
    }
    sim.heal();
    sim.network = Network::reliable();
    let healed = sim.now;
    let last_crash = sim.hosts.iter().filter_map(|h| h.crashed_at).max();
    let mut until = healed + sim.periods(3);
    if let Some(c) = last_crash {
        until = until.max(c + sim.config.down_period + sim.periods(1));
    }
    sim.run_until(until);
    (sim, healed)
}

#[test]
fn random_schedules_converge_to_the_ground_truth() {
    for_seeds(0, 200, |seed| {
        let (sim, _) = random_schedule(seed);
        sim.converged()?;
        sim.diffs_replay()
    });
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for_seeds(1000, 5, |seed| {
        let (a, _) = random_schedule(seed);
        let (b, _) = random_schedule(seed);
        if a.trace() != b.trace() {
            return Err("two runs of one seed differ".into());
        }
        Ok(())
    });
}

/// A cluster of `hosts` with a few presences everywhere, settled.
fn settled(seed: u64, hosts: usize, network: Network) -> Sim {
    let mut sim = Sim::new(seed, hosts, Config::default(), network);
    sim.run_for(sim.periods(2));
    for h in 0..hosts {
        sim.track(h);
        sim.track(h);
    }
    for _ in 0..10 {
        sim.random_mutation();
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(sim.periods(4));
    sim
}

/// Whether a running host other than `except` lists a presence of `replica`.
fn listed_somewhere(sim: &Sim, replica: &ReplicaId) -> Option<usize> {
    (0..sim.hosts.len()).filter(|&h| sim.is_up(h)).find(|&h| {
        sim::rows(sim.node(h).state())
            .iter()
            .any(|row| row.2.replica() == replica)
    })
}

#[test]
fn a_crashed_replica_leaves_within_three_periods_of_the_lost_link_report() {
    for_seeds(2000, 200, |seed| {
        let hosts = 3 + (seed % 3) as usize;
        let mut sim = settled(seed, hosts, Network::lossy());
        let victim = sim.rng.below(hosts as u64) as usize;
        sim.track(victim);
        sim.run_for(sim.periods(3));
        let id = sim.id(victim).expect("running");
        if listed_somewhere(&sim, &id).is_none() {
            return Err("the victim's presences never spread".into());
        }
        sim.crash(victim);
        let reported = sim.last_report.expect("reported");
        sim.run_until(reported + sim.periods(3));
        if let Some(h) = listed_somewhere(&sim, &id) {
            return Err(format!("host {h} still lists the crashed replica"));
        }
        sim.diffs_replay()
    });
}

#[test]
fn a_crashed_replica_leaves_within_down_period_when_nothing_is_reported() {
    for_seeds(3000, 200, |seed| {
        let hosts = 3 + (seed % 3) as usize;
        let mut network = Network::lossy();
        network.report_losses = false;
        let mut sim = settled(seed, hosts, network);
        let victim = sim.rng.below(hosts as u64) as usize;
        sim.track(victim);
        sim.run_for(sim.periods(3));
        let id = sim.id(victim).expect("running");
        sim.crash(victim);
        let crashed = sim.now;
        sim.run_until(crashed + sim.config.down_period - sim.periods(2));
        if listed_somewhere(&sim, &id).is_none() {
            return Err("the crashed replica was dropped before down_period".into());
        }
        sim.run_until(crashed + sim.config.down_period + sim.periods(1));
        if let Some(h) = listed_somewhere(&sim, &id) {
            return Err(format!("host {h} still lists the crashed replica"));
        }
        sim.diffs_replay()
    });
}

#[test]
fn replicas_cut_apart_but_linked_through_a_third_stay_up_and_converge() {
    for_seeds(4000, 200, |seed| {
        let hosts = 3 + (seed % 3) as usize;
        // Reordered, duplicated and delayed, but nothing lost: three lost
        // relayed heartbeats in a row look like a dead peer.
        let mut network = Network::lossy();
        network.drop = 0.0;
        let mut sim = settled(seed, hosts, network);
        let (a, b) = (0, 1);
        let (a_id, b_id) = (sim.id(a).expect("up"), sim.id(b).expect("up"));
        sim.cut(a, b);
        let until = sim.now + sim.config.down_period * 3;
        while sim.now < until {
            for h in [a, b] {
                match sim.rng.below(3) {
                    0 => {
                        sim.track(h);
                    }
                    1 => {
                        sim.untrack(h);
                    }
                    _ => sim.update(h),
                }
            }
            sim.run_for(sim.periods(1));
            let a_sees_b = sim.node(a).status(&b_id);
            let b_sees_a = sim.node(b).status(&a_id);
            if a_sees_b != Some(ReplicaStatus::Up) || b_sees_a != Some(ReplicaStatus::Up) {
                return Err(format!(
                    "at {:?}: a sees b {a_sees_b:?}, b sees a {b_sees_a:?}",
                    sim.now
                ));
            }
        }
        sim.network = Network::reliable();
        sim.run_for(sim.periods(4));
        sim.converged()?;
        sim.diffs_replay()
    });
}

/// Mutations on random running hosts, spread over `span`.
fn churn_for(sim: &mut Sim, span: Duration, mutations: u32) {
    let step = span / mutations;
    for _ in 0..mutations {
        sim.random_mutation();
        sim.run_for(step);
    }
}

#[test]
fn partitions_shorter_and_longer_than_down_and_permdown_converge() {
    for_seeds(5000, 200, |seed| {
        let hosts = 3 + (seed % 3) as usize;
        let mut sim = settled(seed, hosts, Network::lossy());
        let config = sim.config.clone();
        let length = match seed % 3 {
            0 => config.down_period / 3,
            1 => config.down_period * 2,
            _ => config.permdown_period + config.down_period,
        };
        let split = 1 + sim.rng.below(hosts as u64 - 1) as usize;
        sim.partition(&[(0..split).collect(), (split..hosts).collect()]);
        churn_for(&mut sim, length.min(Duration::from_secs(60)), 20);
        if sim.rng.chance(0.5) {
            let h = sim.rng.below(hosts as u64) as usize;
            sim.crash(h);
            if sim.rng.chance(0.5) {
                sim.run_for(sim.periods(2));
                sim.restart(h);
            }
        }
        let started = sim.now;
        sim.run_until(started + length.saturating_sub(Duration::from_secs(60)));
        sim.heal();
        sim.network = Network::reliable();
        let healed = sim.now;
        let mut until = healed + sim.periods(3);
        if let Some(c) = sim.hosts.iter().filter_map(|h| h.crashed_at).max() {
            until = until.max(c + config.down_period + sim.periods(1));
        }
        sim.run_until(until);
        sim.converged()?;
        sim.diffs_replay()
    });
}

#[test]
fn a_purged_incarnation_never_comes_back_through_a_stale_holder() {
    for_seeds(6000, 200, |seed| {
        let hosts = 4 + (seed % 2) as usize;
        let mut sim = settled(seed, hosts, Network::lossy());
        let config = sim.config.clone();
        // Hosts 0 and 1 are cut off; 1 dies there after a while, so 0
        // still holds it when the others have long purged it.
        sim.partition(&[vec![0, 1], (2..hosts).collect()]);
        sim.track(1);
        sim.run_for(config.permdown_period / 2);
        let dead = sim.id(1).expect("running");
        sim.crash(1);
        sim.run_for(config.permdown_period / 2 + config.down_period);
        for h in 2..hosts {
            if sim.node(h).status(&dead)
                != Some(ReplicaStatus::Purged(attendance::PurgeReason::Permdown))
            {
                return Err(format!("host {h} did not purge the dead replica"));
            }
        }
        sim.heal();
        sim.network = Network::reliable();
        sim.record_joins = true;
        let until = sim.now + config.down_period * 2;
        while sim.now < until {
            sim.run_for(sim.periods(1));
            if let Some(h) = (2..hosts).find(|&h| {
                sim::rows(sim.node(h).state())
                    .iter()
                    .any(|r| r.2.replica() == &dead)
            }) {
                return Err(format!(
                    "host {h} lists the purged replica again at {:?}",
                    sim.now
                ));
            }
        }
        if sim.joined.iter().any(|(_, id)| id.replica() == &dead) {
            return Err("a presence of the purged replica joined again".into());
        }
        sim.converged()?;
        sim.diffs_replay()
    });
}

#[test]
fn a_replica_back_from_a_partition_shows_no_presence_it_dropped_meanwhile() {
    for_seeds(7000, 200, |seed| {
        let hosts = 3 + (seed % 3) as usize;
        let mut sim = settled(seed, hosts, Network::lossy());
        for _ in 0..4 {
            sim.track(1);
        }
        sim.run_for(sim.periods(3));
        // Longer than down_period when the seed is odd.
        let length = sim.config.down_period * (1 + (seed % 2) as u32) + sim.periods(2);
        sim.partition(&[vec![0], (1..hosts).collect()]);
        sim.run_for(sim.periods(1));
        let mut dropped = Vec::new();
        for _ in 0..3 {
            dropped.extend(sim.untrack(1));
        }
        sim.run_for(length);
        sim.record_joins = true;
        sim.heal();
        sim.network = Network::reliable();
        sim.run_for(sim.periods(3));
        if let Some((h, id)) = sim.joined.iter().find(|(_, id)| dropped.contains(id)) {
            return Err(format!("host {h} showed dropped presence {id:?} again"));
        }
        sim.converged()?;
        sim.diffs_replay()
    });
}

#[test]
fn a_replica_replaced_under_its_name_during_a_partition_converges_without_a_request_loop() {
    for_seeds(8000, 200, |seed| {
        let hosts = 3 + (seed % 3) as usize;
        let mut sim = settled(seed, hosts, Network::reliable());
        let period = sim.periods(1);
        // Heartbeats only, every host to every other once a period.
        let before = sim.traffic.total_messages();
        sim.run_for(period * 4);
        let steady = sim.traffic.total_messages() - before;
        sim.network = Network::lossy();
        sim.partition(&[vec![0], (1..hosts).collect()]);
        sim.run_for(period * 2);
        sim.crash(1);
        sim.run_for(period);
        sim.restart(1);
        churn_for(&mut sim, period * 4, 8);
        let length = sim
            .rng
            .between(Duration::from_secs(5), Duration::from_secs(60));
        sim.run_for(length);
        sim.heal();
        sim.network = Network::reliable();
        sim.run_for(period * 3);
        sim.converged()?;
        sim.diffs_replay()?;
        // Within 3 periods of the heal, traffic is back to heartbeats: the
        // same count over as many periods, give or take one period's
        // worth where a window boundary falls between two ticks.
        let before = sim.traffic.total_messages();
        sim.run_for(period * 4);
        let after = sim.traffic.total_messages() - before;
        let slack = (hosts * (hosts - 1)) as u64;
        if after > steady + slack {
            return Err(format!(
                "{after} messages in 4 periods after healing, {steady} before"
            ));
        }
        Ok(())
    });
}

#[test]
fn long_churn_leaves_nothing_behind() {
    for_seeds(9000, 3, |seed| {
        let hosts = 3;
        let mut sim = settled(seed, hosts, Network::lossy());
        sim.check_prefixes = false;
        sim.keys = 1000;
        for _ in 0..100_000 {
            sim.random_mutation();
            if sim.rng.chance(0.5) {
                let h = sim.rng.below(hosts as u64) as usize;
                sim.untrack(h);
            }
            sim.run_for(Duration::from_millis(10));
        }
        sim.network = Network::reliable();
        sim.run_for(sim.periods(6));
        sim.converged()?;
        sim.diffs_replay()?;
        for h in 0..hosts {
            let node = sim.node(h);
            let state = node.state();
            if state.len() != sim.truth.len() {
                return Err(format!(
                    "host {h} holds {} entries for {} live",
                    state.len(),
                    sim.truth.len()
                ));
            }
            if node.buffered() != 0 {
                return Err(format!("host {h} still buffers {}", node.buffered()));
            }
            if node.replicas().count() != hosts - 1 {
                return Err(format!(
                    "host {h} knows {} replicas",
                    node.replicas().count()
                ));
            }
            for info in state.replicas() {
                if info.context.ranges().len() != 1 {
                    return Err(format!("host {h}: context of {:?} has gaps", info.id));
                }
                if info.removals_kept > state.limits().removal_log() {
                    return Err(format!(
                        "host {h}: removal log of {:?} over its bound",
                        info.id
                    ));
                }
            }
        }
        Ok(())
    });
}

/// Heals a partition during which `changes` presences changed, in a
/// cluster of `hosts` holding `per_host` presences each; the bytes from the
/// heal until every host lists the truth, and the size of one transfer of
/// the whole state.
fn heal_traffic(
    seed: u64,
    hosts: usize,
    per_host: usize,
    changes: usize,
) -> Result<(u64, usize), String> {
    let mut sim = Sim::settled(seed, hosts, per_host)?;
    sim.partition(&[(0..hosts / 2).collect(), (hosts / 2..hosts).collect()]);
    sim.run_for(sim.periods(2));
    for _ in 0..changes {
        sim.random_mutation();
    }
    sim.run_for(sim.periods(2));
    sim.heal();
    let before = sim.traffic.total_bytes();
    let healed = sim.now;
    while sim.converged().is_err() {
        if sim.now > healed + sim.periods(3) {
            return Err("not converged within 3 periods of the heal".into());
        }
        sim.run_for(Duration::from_millis(50));
    }
    Ok((sim.traffic.total_bytes() - before, sim.whole_state_bytes()))
}

#[test]
fn healing_costs_under_five_percent_of_a_whole_state_transfer() {
    for (hosts, seed) in [(3, 10_000), (16, 10_001)] {
        for_seeds(seed, 1, |seed| {
            let (bytes, whole) = heal_traffic(seed, hosts, 10_000, 100)?;
            eprintln!("{hosts} hosts: {bytes} bytes to heal, whole state {whole} bytes");
            if bytes * 20 >= whole as u64 {
                return Err(format!("{bytes} bytes to heal, whole state {whole}"));
            }
            Ok(())
        });
    }
}

/// The rows `host` lists of replicas still running.
fn listed_of_running(sim: &Sim, host: usize) -> std::collections::BTreeSet<sim::Row> {
    let running: Vec<ReplicaId> = (0..sim.hosts.len()).filter_map(|h| sim.id(h)).collect();
    sim::rows(sim.node(host).state())
        .into_iter()
        .filter(|row| running.contains(row.2.replica()))
        .collect()
}

/// A replica that joins asks the peer it first hears from for its view,
/// then that peer for everything it lacks. When that holder dies before
/// answering, the joiner asks another: one period after the lost link is
/// reported, it lists every presence of the replicas still running, even
/// those of a replica it cannot hear (cut from it), which only the holders
/// could tell it about.
#[test]
fn a_joiner_whose_holder_dies_before_answering_asks_another_within_a_period() {
    for_seeds(3000, 100, |seed| {
        let hosts = 4 + (seed % 2) as usize;
        let mut sim = settled(seed, hosts, Network::reliable());
        sim.converged()?;
        let joiner = sim.hosts.len();
        sim.fatal_requests_from = Some(joiner);
        sim.add_host();
        // Host 1 and the joiner cannot hear each other.
        sim.cut(joiner, 1);
        let started = sim.now;
        while sim.killed_by_request.is_none() {
            if sim.now > started + sim.periods(10) {
                return Err("the joiner asked no holder".into());
            }
            sim.run_for(Duration::from_millis(5));
        }
        let reported = sim.last_report.expect("the crash is reported");
        sim.run_until(reported + sim.periods(1));
        let listed = listed_of_running(&sim, joiner);
        let truth = sim.truth_rows();
        if listed != truth {
            return Err(format!(
                "{:?} after the report, the joiner lists {} of the {} presences of running replicas",
                sim.now - reported,
                listed.intersection(&truth).count(),
                truth.len()
            ));
        }
        sim.diffs_replay()
    });
}
