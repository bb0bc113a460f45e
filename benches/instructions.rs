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
//! Needs `valgrind` on the PATH (`apt-get install valgrind`). The fixtures
//! are those of `benches/merge.rs`, with removal logs full.

mod common;

use std::process::Command;

use common::{Pair, Remote, key, meta, new_local, topic};

/// Operations counted per figure (the full merge runs once).
const OPS: u64 = 1_000;
const SMALL: usize = 1_000;
const FULL: usize = 100_000;

/// Runs `f`; callgrind counts only what runs in here.
#[inline(never)]
fn measured<T>(f: impl FnOnce() -> T) -> T {
    f()
}

fn steady_pair(s: usize) -> Pair {
    let mut pair = Pair::new(s);
    pair.churn_interleaved(common::limits().removal_log());
    pair
}

/// The measured part of one figure, run inside callgrind.
fn run(figure: &str) {
    match figure {
        "delta_apply_join" | "delta_apply_leave" => {
            let join = figure == "delta_apply_join";
            let mut pair = steady_pair(SMALL);
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
            let mut owner = steady_pair(SMALL).remote;
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
            let remote = Remote::new(FULL);
            let snapshot = remote.state.snapshot();
            let mut local = new_local();
            let diff = measured(|| local.merge(snapshot)).expect("merges");
            assert_eq!(diff.joins().count(), FULL);
        }
        other => panic!("no figure {other}"),
    }
}

/// Runs `figure` under callgrind; the instructions counted.
fn count(figure: &str) -> u64 {
    let exe = std::env::current_exe().expect("this binary");
    let out = std::env::temp_dir().join(format!("attendance-callgrind-{figure}.out"));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*measured*",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--figure", figure])
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
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .expect("a summary line")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("ATTENDANCE_CALLGRIND_CHILD").is_some() {
        let figure = args
            .iter()
            .position(|a| a == "--figure")
            .and_then(|i| args.get(i + 1))
            .expect("--figure NAME");
        run(figure);
        return;
    }
    for figure in ["delta_apply_join", "delta_apply_leave", "local_track"] {
        let per_op = count(figure) / OPS;
        println!("instructions {figure}/{SMALL} per_op={per_op}");
    }
    let per_presence = count("full_merge_into_empty") / FULL as u64;
    println!("instructions full_merge_into_empty/{FULL} per_presence={per_presence}");
}
