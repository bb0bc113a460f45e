//! The protocol in a simulated cluster: convergence, diffs, prefix views,
//! down detection, partitions, restarts, leaks and efficiency.
//!
//! Every schedule is derived from a seed, printed when a check fails; set
//! `ATTENDANCE_SIM_SEED=<seed>` to run that one schedule alone.

mod sim;

use std::time::Duration;

use attendance::protocol::Config;
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

#[test]
fn debug_print() {
    let seed = std::env::var("DEBUG_SEED").map_or(3, |s| s.parse().unwrap());
    let (sim, healed) = random_schedule(seed);
    eprintln!(
        "truth {} now {:?} healed {:?} traffic {:?}",
        sim.truth.len(),
        sim.now,
        healed,
        sim.traffic
    );
    for h in 0..sim.hosts.len() {
        if let Some(n) = sim.hosts[h].node.as_ref() {
            eprintln!(
                "host {h} {:?} rows {} replicas {:?} metrics {:?}",
                n.id(),
                sim::rows(n.state()).len(),
                n.replicas().collect::<Vec<_>>(),
                n.metrics()
            );
        } else {
            eprintln!("host {h} down");
        }
    }
}
