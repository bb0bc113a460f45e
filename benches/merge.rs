//! Merge costs of `attendance` against `crdts::Orswot`.
//!
//! Every benchmark times only the named operation; the work that produces its
//! input, restores the presence count, and drops what it returns is untimed.
//! Every operation is checked to have succeeded (a refused merge timed by
//! mistake is not a result).
//!
//! Ids (compared across versions):
//! - `delta_apply_join/{attendance/1000, attendance/1000000, crdts_orswot/100000, crdts_orswot/1000000}`
//! - `delta_apply_leave/{attendance/1000, attendance/1000000, crdts_orswot/100000, crdts_orswot/1000000}`
//! - `local_track/{attendance/1000000, crdts_orswot/100000, crdts_orswot/1000000}`
//!
//! `crdts_orswot/1000000` is the comparison at equal size; the 100,000 ids
//! are kept so that figures stay comparable across versions.
//! - `full_merge_into_empty/{attendance/100000, crdts_orswot/100000}`
//! - `full_merge_identical/{attendance/100000, crdts_orswot/100000}`
//! - `full_merge_diff100/{attendance/100000, crdts_orswot/100000}`

mod common;

use std::time::{Duration, Instant};

use common::{OrPair, OrRemote, Pair, Remote, key, member, meta, new_local, topic};
use crdts::{CmRDT, CvRDT};
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, criterion_group,
    criterion_main, measurement::WallTime,
};

const SMALL: usize = 1_000;
const LARGE: usize = 1_000_000;
const ORSWOT: usize = 100_000;
const FULL: usize = 100_000;

/// Settings for the benchmarks of one cheap operation with untimed setup.
fn quick(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Settings for the benchmarks of one full merge (tens of milliseconds, with
/// an untimed clone of each input).
fn slow(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
}

/// The steady state: enough leave/join rounds to fill the removal logs (as
/// on a long-lived replica), then the local holds `s` presences.
fn steady_pair(s: usize) -> Pair {
    let mut pair = Pair::new(s);
    pair.churn_interleaved(common::limits().removal_log());
    pair
}

/// Delta merges, and local tracks on the owning replica. The 1,000,000
/// presence states take seconds to build, so each is built once and reused.
fn deltas(c: &mut Criterion) {
    let mut small = steady_pair(SMALL);
    let mut large = steady_pair(LARGE);
    let mut orswots = [OrPair::new(ORSWOT), OrPair::new(LARGE)];

    for (name, join) in [("delta_apply_join", true), ("delta_apply_leave", false)] {
        let mut group = c.benchmark_group(name);
        quick(&mut group);
        for (s, pair) in [(SMALL, &mut small), (LARGE, &mut large)] {
            group.bench_function(BenchmarkId::new("attendance", s), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| merge_one_delta(pair, join)).sum())
            });
            assert_eq!(pair.local.len(), s);
        }
        for pair in &mut orswots {
            let s = pair.remote.held.len();
            group.bench_function(BenchmarkId::new("crdts_orswot", s), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| apply_one_op(pair, join)).sum())
            });
        }
        group.finish();
    }
    drop(small);

    // The owning replicas of the pairs above: the 1,000,000-presence remote
    // `State` and the remote `Orswot`s. Their locals are no longer needed.
    let Pair {
        remote: mut owner,
        local,
    } = large;
    drop(local);
    let mut or_owners: Vec<OrRemote> = orswots.into_iter().map(|pair| pair.remote).collect();
    {
        let mut group = c.benchmark_group("local_track");
        quick(&mut group);
        group.bench_function(BenchmarkId::new("attendance", LARGE), |b| {
            b.iter_custom(|iters| track_on(&mut owner, iters))
        });
        for or_owner in &mut or_owners {
            let s = or_owner.held.len();
            group.bench_function(BenchmarkId::new("crdts_orswot", s), |b| {
                b.iter_custom(|iters| add_on(or_owner, iters))
            });
        }
        group.finish();
    }
    assert_eq!(owner.state.len(), LARGE);
}

/// `iters` tracks on the owning replica, each timed with the building of its
/// change; a random presence is untracked after each, untimed.
fn track_on(owner: &mut Remote, iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let i = owner.next;
        owner.next += 1;
        let (topic, key, meta) = (topic(i), key(i), meta(i));
        let start = Instant::now();
        let tracked = owner.state.track(&topic, &key, meta);
        timed += start.elapsed();
        let (id, change) = tracked.unwrap();
        assert!(!change.delta().is_empty());
        owner.held.push(id);
        drop(change);
        drop(owner.leave());
    }
    timed
}

/// Merges one fresh join (or leave) delta of the remote into the local and
/// returns the time of that merge alone; the presence count is restored
/// untimed.
fn merge_one_delta(pair: &mut Pair, join: bool) -> Duration {
    let delta = if join {
        pair.remote.join()
    } else {
        pair.remote.leave()
    };
    let start = Instant::now();
    let diff = pair.local.merge(delta);
    let timed = start.elapsed();
    let diff = diff.unwrap();
    if join {
        assert_eq!(diff.joins().count(), 1);
        pair.leave();
    } else {
        assert_eq!(diff.leaves().count(), 1);
        pair.join();
    }
    timed
}

/// The `crdts` counterpart of [`merge_one_delta`]: one fresh add (or
/// remove) op of the remote applied to the local.
fn apply_one_op(pair: &mut OrPair, add: bool) -> Duration {
    if add {
        let op = pair.remote.add();
        let start = Instant::now();
        pair.local.apply(op);
        let timed = start.elapsed();
        let added = pair.remote.held.last().unwrap();
        assert!(pair.local.contains(added).val);
        pair.rm();
        timed
    } else {
        let (op, removed) = pair.remote.rm();
        let start = Instant::now();
        pair.local.apply(op);
        let timed = start.elapsed();
        assert!(!pair.local.contains(&removed).val);
        pair.add();
        timed
    }
}

/// The `crdts` counterpart of [`track_on`]: derive the add context, make the
/// op and apply it.
fn add_on(owner: &mut OrRemote, iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let m = member(owner.next);
        owner.next += 1;
        let expected = m.clone();
        let start = Instant::now();
        let add_ctx = owner.set.read_ctx().derive_add_ctx(owner.actor.clone());
        let op = owner.set.add(m, add_ctx);
        owner.set.apply(op);
        timed += start.elapsed();
        assert!(owner.set.contains(&expected).val);
        owner.held.push(expected);
        drop(owner.rm());
    }
    timed
}

/// Whole-state merges of a 100,000-presence remote. Each iteration merges
/// into a fresh clone of a prepared local, and receives a fresh clone of the
/// remote state by value (`crdts` merge consumes its argument); the clones
/// are made, and the results dropped, untimed.
fn full_merges(c: &mut Criterion) {
    // attendance: the remote, its snapshot, and locals holding nothing, all
    // of it, and all of it but the last 100 joins and 100 leaves.
    let mut remote = Remote::new(FULL);
    let before = remote.state.snapshot();
    let empty = new_local();
    let mut current = new_local();
    current.merge(before.clone()).unwrap();
    let stale = current.clone();
    for _ in 0..100 {
        drop(remote.join());
        drop(remote.leave());
    }
    let after = remote.state.snapshot();
    drop(before);
    let diff = current.merge(after.clone()).unwrap();
    assert_eq!(diff.joins().count(), 100);
    assert_eq!(diff.leaves().count(), 100);
    assert!(current.merge(after.clone()).unwrap().is_empty());
    let diff = stale.clone().merge(after.clone()).unwrap();
    assert_eq!(diff.joins().count(), 100);
    assert_eq!(diff.leaves().count(), 100);
    drop(remote);

    // crdts: the same, with `Orswot`s.
    let mut or_remote = OrRemote::new(FULL);
    let mut or_current = or_remote.set.clone();
    let or_empty = common::OrSet::new();
    let or_stale = or_current.clone();
    for _ in 0..100 {
        drop(or_remote.add());
        drop(or_remote.rm());
    }
    let or_after = or_remote.set.clone();
    drop(or_remote);
    or_current.merge(or_after.clone());
    assert_eq!(or_current, or_after);
    {
        let mut check = or_stale.clone();
        check.merge(or_after.clone());
        assert_eq!(check, or_after);
        let mut check = or_empty.clone();
        check.merge(or_after.clone());
        assert_eq!(check.read().val.len(), FULL);
    }

    let cases = [
        ("full_merge_into_empty", &empty, &or_empty, true),
        ("full_merge_identical", &current, &or_current, false),
        ("full_merge_diff100", &stale, &or_stale, true),
    ];
    for (name, local, or_local, changes) in cases {
        let mut group = c.benchmark_group(name);
        slow(&mut group);
        group.bench_function(BenchmarkId::new("attendance", FULL), |b| {
            b.iter_batched(
                || (local.clone(), after.clone()),
                |(mut local, snapshot)| {
                    let diff = local.merge(snapshot).unwrap();
                    assert_eq!(diff.is_empty(), !changes);
                    (local, diff)
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(BenchmarkId::new("crdts_orswot", FULL), |b| {
            b.iter_batched(
                || (or_local.clone(), or_after.clone()),
                |(mut local, remote)| {
                    local.merge(remote);
                    local
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, deltas, full_merges);
criterion_main!(benches);
