//! Memory of a running `Tracker` holding 1,000,000 presences, against the
//! bare state layer holding the same presences, measured in the same run.
//!
//! Prints one line per case:
//!
//! ```text
//! tracker_footprint CASE presences=1000000 block_bytes_per_presence=N state_block_bytes_per_presence=N ratio=N
//! ```
//!
//! Block bytes are counted as in `footprint` (the allocator of
//! `common/alloc.rs`): each live allocation as `max(32, round_up_16(size +
//! 8))`, what glibc malloc spends on it. The trackers run on a
//! current-thread tokio runtime with the paused clock, over a
//! `MemoryNetwork`, with a 100 ms broadcast period and the `common`
//! workload (topics `room:1`..`room:100`, keys `user:{i}`, the small meta).
//!
//! - `remote`: tracker A (`node-remote`) tracks the presences and keeps the
//!   guards; once it is quiet, the live totals are taken, tracker B
//!   (`node-local`) starts on the same network, catches up from A and lists
//!   every presence, and after three more quiet periods (A's encoded answer
//!   and B's assembled pieces are gone by then) the totals are taken again.
//!   The difference is B: its state, its protocol node, its handle, its
//!   driver task and its transport, plus what A keeps about B (its record
//!   of a peer, about 5 KB). A holds all its presences before B starts, so
//!   nothing of A that grows with the presences lands in the difference. As
//!   a check, B is then shut down and dropped, and the totals must come
//!   back to those from before it started, within 64 KiB (0.07 bytes per
//!   presence).
//! - `local`: one tracker starts, tracks the presences and keeps the
//!   `PresenceGuard`s in a `Vec`; after three periods (the pending batch is
//!   broadcast and dropped) the difference from before the start is the
//!   tracker with its guards and the `Vec`. The same check follows, the
//!   guards and the tracker dropped.
//!
//! The baselines are bare `attendance::State`s built and measured as in
//! `footprint`: for `remote`, an observer that merged a snapshot of the
//! remote replica's presences (no churn); for `local`, a state that tracked
//! them itself. The ratio is the tracker's block bytes over the state's.

mod common;

#[path = "common/alloc.rs"]
mod alloc;

use alloc::{Live, live};
use attendance::transport::MemoryNetwork;
use attendance::{PresenceGuard, State, Tracker};
use common::{Meta, Pair, key, meta, new_local, start_tracker, topic, tracker_config};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const PRESENCES: usize = 1_000_000;

/// What may stay live once a measured tracker is dropped: A's record of
/// B, the runtime's grown tables. Independent of the presences.
const RESIDUAL: usize = 64 << 10;

/// Topics of the workload: `topic(i)` for `i` in `0..TOPICS`.
const TOPICS: u64 = 100;

async fn periods(n: u32) {
    tokio::time::sleep(tracker_config().broadcast_period * n).await;
}

/// Tracks users `0..s` and returns their guards.
fn track_all(tracker: &Tracker<Meta>, s: usize) -> Vec<PresenceGuard<Meta>> {
    (0..s as u64)
        .map(|i| tracker.track(&topic(i), &key(i), meta(i)).expect("tracks"))
        .collect()
}

/// The presences `tracker` lists, over every topic of the workload.
fn visible(tracker: &Tracker<Meta>) -> usize {
    (0..TOPICS).map(|i| tracker.count(&topic(i))).sum()
}

/// Block bytes live now minus those at `before`.
fn grown(before: Live) -> isize {
    live().blocks as isize - before.blocks as isize
}

/// Checks that what was measured is gone again: the live block bytes are
/// back to `before`, within [`RESIDUAL`].
fn check_released(case: &str, before: Live) {
    let residual = grown(before);
    assert!(
        residual.unsigned_abs() <= RESIDUAL,
        "{case}: {residual} block bytes stay live after the tracker is dropped"
    );
}

/// Block bytes of tracker B holding A's `s` presences. See the module docs.
async fn tracker_remote(network: &MemoryNetwork, s: usize) -> isize {
    let a = start_tracker(network, "node-remote");
    let guards = track_all(&a, s);
    periods(3).await;

    let before = live();
    let b = start_tracker(network, "node-local");
    let mut waited = 0;
    while visible(&b) < s {
        periods(1).await;
        waited += 1;
        assert!(waited < 1_000, "B did not catch up");
    }
    assert_eq!(visible(&b), s);
    periods(3).await;
    let bytes = grown(before);

    b.shutdown().await;
    drop(b);
    periods(3).await;
    check_released("remote", before);

    a.shutdown().await;
    drop(guards);
    drop(a);
    bytes
}

/// Block bytes of a tracker holding `s` presences of its own, with their
/// guards. See the module docs.
async fn tracker_local(network: &MemoryNetwork, s: usize) -> isize {
    let before = live();
    let tracker = start_tracker(network, "node-local");
    let guards = track_all(&tracker, s);
    assert_eq!(visible(&tracker), s);
    periods(3).await;
    let bytes = grown(before);

    drop(guards);
    tracker.shutdown().await;
    drop(tracker);
    periods(3).await;
    check_released("local", before);
    bytes
}

/// Block bytes of what `build` returns.
fn state_bytes<T>(s: usize, build: impl FnOnce(usize) -> T) -> isize {
    let before = live();
    let built = build(s);
    let bytes = grown(before);
    drop(built);
    bytes
}

/// An observer state holding the remote replica's `s` presences, merged
/// from a snapshot.
fn state_remote(s: usize) -> State<Meta> {
    Pair::new(s).local
}

/// A state that tracked `s` presences of its own.
fn state_local(s: usize) -> State<Meta> {
    let mut state = new_local();
    for i in 0..s as u64 {
        drop(state.track(&topic(i), &key(i), meta(i)).expect("tracks"));
    }
    state
}

fn print(case: &str, s: usize, tracker: isize, state: isize) {
    let per = |bytes: isize| bytes as f64 / s as f64;
    println!(
        "tracker_footprint {case} presences={s} block_bytes_per_presence={:.2} \
         state_block_bytes_per_presence={:.2} ratio={:.3}",
        per(tracker),
        per(state),
        tracker as f64 / state as f64,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let network = MemoryNetwork::new();

    // Warm up whatever allocates once, lazily (the runtime's timers and
    // task storage, the network's tables), so that it does not land in a
    // measurement. (Stdout's buffer is allocated by the first line, after
    // the first measurement is taken.)
    runtime.block_on(tracker_remote(&network, 1_000));
    runtime.block_on(tracker_local(&network, 1_000));
    drop(state_remote(1_000));
    drop(state_local(1_000));

    let state = state_bytes(PRESENCES, state_remote);
    let tracker = runtime.block_on(tracker_remote(&network, PRESENCES));
    print("remote", PRESENCES, tracker, state);

    let state = state_bytes(PRESENCES, state_local);
    let tracker = runtime.block_on(tracker_local(&network, PRESENCES));
    print("local", PRESENCES, tracker, state);
}
