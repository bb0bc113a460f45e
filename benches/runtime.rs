//! Local throughput through the public `Tracker` API against the bare state
//! layer, in the same run.
//!
//! Each holds 1,000,000 presences of its own replica (the `common`
//! workload); one iteration is a track followed by the untrack of that
//! presence (the guard dropped), sequentially on a current-thread tokio
//! runtime. The tracker runs its driver task and an in-memory transport, so
//! every operation also joins the pending interval it broadcasts.
//!
//! Ids (compared across versions):
//! - `track_untrack/{state/1000000, tracker/1000000}`

mod common;

use std::time::Duration;

use attendance::transport::MemoryNetwork;
use attendance::{State, Tracker};
use common::{Meta, key, limits, local_id, meta, topic};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const HELD: usize = 1_000_000;

fn track_untrack(c: &mut Criterion) {
    let mut group = c.benchmark_group("track_untrack");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let mut state: State<Meta> = State::builder(local_id()).limits(limits()).build();
    for i in 0..HELD as u64 {
        state.track(&topic(i), &key(i), meta(i)).expect("tracks");
    }
    let mut i = HELD as u64;
    group.bench_function(BenchmarkId::new("state", HELD), |b| {
        b.iter(|| {
            i += 1;
            let (id, _) = state.track(&topic(i), &key(i), meta(i)).expect("tracks");
            state.untrack(&id).expect("untracks");
        })
    });
    drop(state);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let network = MemoryNetwork::new();
    let tracker: Tracker<Meta> = runtime.block_on(async {
        Tracker::builder("node-local")
            .limits(limits())
            .start_with(|id| network.join(id))
            .expect("starts")
    });
    let guards: Vec<_> = (0..HELD as u64)
        .map(|i| tracker.track(&topic(i), &key(i), meta(i)).expect("tracks"))
        .collect();
    let mut i = HELD as u64;
    group.bench_function(BenchmarkId::new("tracker", HELD), |b| {
        b.to_async(&runtime).iter(|| {
            i += 1;
            let guard = tracker.track(&topic(i), &key(i), meta(i)).expect("tracks");
            async move { drop(guard) }
        })
    });
    drop(guards);
    runtime.block_on(tracker.shutdown());
    group.finish();
}

criterion_group!(benches, track_untrack);
criterion_main!(benches);
