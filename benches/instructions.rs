//! Instruction counts of the core operations: deterministic where times on
//! a shared machine drift. Runs itself under valgrind's callgrind, once per
//! operation, with collection on only inside [`measured`], and prints one
//! line per figure:
//!
//! ```text
//! instructions delta_apply_join/1000 per_op=N
//! instructions delta_apply_leave/1000 per_op=N
//! instructions local_track/1000 per_op=N
//! instructions full_merge_into_empty/100000 per_presence=N
//! ```
//!
//! With `--misses` it counts cache misses instead, for the same delta and
//! track operations at 1,000,000 presences (callgrind's cache simulation,
//! first level and last level, reads and writes), and measures the latency
//! of one dependent load by a pointer chase over regions of growing size:
//! together they bound what a random access costs on this machine.
//!
//! ```text
//! misses delta_apply_join/1000000 d1_per_op=N ll_per_op=N
//! latency pointer_chase mib=N ns_per_load=N
//! ```
//!
//! Needs `valgrind` on the PATH (`apt-get install valgrind`). The fixtures
//! are those of `benches/merge.rs`, with removal logs full.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{Pair, Remote, key, meta, new_local, topic};

/// Operations counted per figure (the full merge runs once).
const OPS: u64 = 1_000;
const SMALL: usize = 1_000;
const LARGE: usize = 1_000_000;
const FULL: usize = 100_000;

/// Runs `f`; callgrind counts only what runs in here.
#[inline(never)]
fn measured<T>(f: impl FnOnce() -> T) -> T {
    f()
}

fn steady_pair(s: usize) -> Pair {
    let mut pair = Pair::new(s);
    pair.churn_interleaved(common::limits().removal_log());
    // One more join than leave, and back: the entry table has then grown
    // to its steady size, and no one-off growth is counted as per-op cost.
    pair.join();
    pair.leave();
    pair
}

/// The measured part of one figure at `size` presences, run inside
/// callgrind.
fn run(figure: &str, size: usize) {
    match figure {
        "delta_apply_join" | "delta_apply_leave" => {
            let join = figure == "delta_apply_join";
            let mut pair = steady_pair(size);
            for _ in 0..OPS {
                let delta = if join {
                    pair.remote.join()
                } else {
                    pair.remote.leave()
                };
                let diff = measured(|| pair.local.merge(delta)).expect("merges");
                drop(diff);
                if join {
                    pair.leave();
                } else {
                    pair.join();
                }
            }
        }
        "local_track" => {
            let mut owner = steady_pair(size).remote;
            for _ in 0..OPS {
                let i = owner.next;
                owner.next += 1;
                let (topic, key, meta) = (topic(i), key(i), meta(i));
                let (id, change) =
                    measured(|| owner.state.track(&topic, &key, meta)).expect("tracks");
                drop(change);
                owner.held.push(id);
                drop(owner.leave());
            }
        }
        "full_merge_into_empty" => {
            let remote = Remote::new(size);
            let snapshot = remote.state.snapshot();
            let mut local = new_local();
            let diff = measured(|| local.merge(snapshot)).expect("merges");
            assert_eq!(diff.joins().count(), size);
        }
        other => panic!("no figure {other}"),
    }
}

/// What callgrind counted inside [`measured`].
struct Counts {
    instructions: u64,
    /// First-level data misses, reads and writes.
    d1: u64,
    /// Last-level data misses, reads and writes.
    ll: u64,
}

/// Runs `figure` at `size` under callgrind, with the cache simulation when
/// `cache` is set.
fn count(figure: &str, size: usize, cache: bool) -> Counts {
    let exe = std::env::current_exe().expect("this binary");
    let out = std::env::temp_dir().join(format!("attendance-callgrind-{figure}-{size}.out"));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*measured*",
        ])
        .arg(format!("--cache-sim={}", if cache { "yes" } else { "no" }))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--figure", figure, "--size", &size.to_string()])
        .env("ATTENDANCE_CALLGRIND_CHILD", "1")
        .output()
        .expect("valgrind runs (apt-get install valgrind)");
    assert!(
        status.status.success(),
        "{figure}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("callgrind output");
    let _ = std::fs::remove_file(&out);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .expect("a callgrind header line")
    };
    let events: Vec<&str> = field("events: ").split_whitespace().collect();
    let totals: Vec<u64> = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .expect("a summary line")
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    let event = |name: &str| {
        events
            .iter()
            .position(|e| *e == name)
            .and_then(|i| totals.get(i).copied())
            .unwrap_or(0)
    };
    Counts {
        instructions: event("Ir"),
        d1: event("D1mr") + event("D1mw"),
        ll: event("DLmr") + event("DLmw"),
    }
}

/// Nanoseconds per load of a chain of dependent loads through a random
/// cycle over `mib` MiB: what one cache miss costs when the data is that
/// large (page-table walks included).
fn pointer_chase(mib: usize) -> f64 {
    let n = mib * 1024 * 1024 / std::mem::size_of::<usize>();
    // Sattolo's algorithm: one cycle through every element.
    let mut next: Vec<usize> = (0..n).collect();
    let mut rng = common::Rng::new(0x5eed_c4a5e);
    for i in (1..n).rev() {
        next.swap(i, rng.index(i));
    }
    let loads = 10_000_000;
    let mut at = 0;
    let start = Instant::now();
    for _ in 0..loads {
        at = next[at];
    }
    let elapsed = start.elapsed();
    std::hint::black_box(at);
    elapsed.as_nanos() as f64 / loads as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    if std::env::var_os("ATTENDANCE_CALLGRIND_CHILD").is_some() {
        let figure = arg("--figure").expect("--figure NAME");
        let size = arg("--size")
            .and_then(|s| s.parse().ok())
            .expect("--size N");
        run(figure, size);
        return;
    }
    let deltas = ["delta_apply_join", "delta_apply_leave", "local_track"];
    if args.iter().any(|a| a == "--misses") {
        for figure in deltas {
            let counts = count(figure, LARGE, true);
            let per_op = |n: u64| n as f64 / OPS as f64;
            println!(
                "misses {figure}/{LARGE} d1_per_op={:.2} ll_per_op={:.2}",
                per_op(counts.d1),
                per_op(counts.ll)
            );
        }
        for mib in [1, 4, 16, 64, 256, 1024] {
            println!(
                "latency pointer_chase mib={mib} ns_per_load={:.1}",
                pointer_chase(mib)
            );
        }
        return;
    }
    for figure in deltas {
        let per_op = count(figure, SMALL, false).instructions / OPS;
        println!("instructions {figure}/{SMALL} per_op={per_op}");
    }
    let per_presence = count("full_merge_into_empty", FULL, false).instructions / FULL as u64;
    println!("instructions full_merge_into_empty/{FULL} per_presence={per_presence}");
}
