//! Memory held per presence by a state holding one remote replica's
//! presences, `attendance` against `crdts::Orswot`.
//!
//! Prints one line per measurement:
//!
//! ```text
//! footprint IMPL presences=S requested_bytes_per_presence=N block_bytes_per_presence=N allocs_per_presence=N
//! ```
//!
//! for IMPL `attendance` and `crdts_orswot` and S in 600,000, 800,000 and
//! 1,000,000, each after S/10 churn (S/10 leaves of random held presences,
//! then S/10 new joins). Requested bytes sum the sizes of the live
//! allocations; block bytes count each as `max(32, round_up_16(size + 8))`,
//! what glibc malloc spends on it; allocs count the live allocations (the
//! allocator of `common/alloc.rs`).
//!
//! Each structure is built in a function that returns only it: the remote
//! state, the deltas and every other temporary are dropped before the
//! measurement, so the live totals minus those from before the build are the
//! measured structure alone.

mod common;

#[path = "common/alloc.rs"]
mod alloc;

use alloc::live;
use common::{OrRemote, OrSet, Pair};
use crdts::CmRDT;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// Measures what the value `build` returns keeps alive, and prints it.
fn measure<T>(name: &str, s: usize, build: impl FnOnce(usize) -> T) {
    let before = live();
    let built = build(s);
    let after = live();
    let per = |a: usize, b: usize| (a as f64 - b as f64) / s as f64;
    println!(
        "footprint {name} presences={s} requested_bytes_per_presence={:.2} \
         block_bytes_per_presence={:.2} allocs_per_presence={:.2}",
        per(after.requested, before.requested),
        per(after.blocks, before.blocks),
        per(after.count, before.count),
    );
    drop(built);
}

/// The local (observer) state holding the remote's `s` presences: a
/// snapshot of the remote merged, then `s / 10` leaves and `s / 10` joins
/// merged one delta at a time. Only the local state is returned.
fn attendance(s: usize) -> attendance::State<common::Meta> {
    let mut pair = Pair::new(s);
    pair.churn(s / 10);
    assert_eq!(pair.local.len(), s);
    pair.local
}

/// An `Orswot` holding `s` members, with the same churn: `s / 10` removals
/// of random members, then `s / 10` new adds. The ops are applied to a
/// second set, which is the one returned (the local).
fn crdts_orswot(s: usize) -> OrSet {
    let mut remote = OrRemote::new(s);
    let mut local = remote.set.clone();
    for _ in 0..s / 10 {
        let (op, _) = remote.rm();
        local.apply(op);
    }
    for _ in 0..s / 10 {
        let op = remote.add();
        local.apply(op);
    }
    assert_eq!(local, remote.set);
    local
}

const SIZES: [usize; 3] = [600_000, 800_000, 1_000_000];

fn main() {
    // Warm up whatever allocates once, lazily, so that it does not land in
    // a measurement. (Stdout's buffer is allocated by the first line, after
    // the first measurement is taken.)
    drop(attendance(1_000));
    drop(crdts_orswot(1_000));

    for s in SIZES {
        measure("attendance", s, attendance);
    }
    for s in SIZES {
        measure("crdts_orswot", s, crdts_orswot);
    }

    wire_sizes();
}

// --- wire sizes -------------------------------------------------------------

/// Bytes on the wire: a lone join, and a whole state of 100,000 presences,
/// each against its payload, `rmp_serde::to_vec(&(topic, key, meta))`.
fn wire_sizes() {
    const STATE: usize = 100_000;
    let mut remote = common::Remote::new(STATE);
    let bytes = attendance::wire::encode(&remote.state.snapshot())
        .unwrap()
        .len();
    let payload: usize = (0..STATE as u64).map(payload_len).sum();
    println!(
        "wire state_{STATE} bytes_per_presence={:.2} payload_per_presence={:.2}",
        bytes as f64 / STATE as f64,
        payload as f64 / STATE as f64
    );

    let i = remote.next;
    let join = remote.join();
    let bytes = attendance::wire::encode(&join).unwrap().len();
    let replica_id = rmp_serde::to_vec(&common::remote_id()).unwrap().len();
    println!(
        "wire delta_one_join bytes={bytes} payload={} replica_id={replica_id}",
        payload_len(i)
    );
}

fn payload_len(i: u64) -> usize {
    rmp_serde::to_vec(&(common::topic(i), common::key(i), common::meta(i)))
        .unwrap()
        .len()
}
