//! The `Tracker` under load: throughput against the bare state layer, and
//! what callers wait for while the tracker is busy.
//!
//! First criterion, then one line a figure:
//!
//! ```text
//! runtime key_counts_start presences=1000000 ms=N max_lock_hold_us=N
//! runtime grow_one_topic presences=1000000 max_lock_hold_us=N
//! runtime track_latency_during_catchup p50_us=N p99_us=N max_us=N catchup_ms=N flavor=multi_thread
//! runtime track_latency_during_catchup p50_us=N p99_us=N max_us=N catchup_ms=N flavor=current_thread
//! runtime hide_replica presences=1000000 after_cut_ms=N max_lock_hold_us=N flavor=multi_thread
//! runtime hide_replica presences=1000000 after_cut_ms=N max_lock_hold_us=N flavor=current_thread
//! runtime track_latency_during_list p50_us=N p99_us=N
//! runtime track_untrack_threads threads=1 ops_per_sec=N
//! runtime track_untrack_threads threads=2 ops_per_sec=N
//! runtime machine_stalls threads=2 max_gap_us=N gaps_over_1ms=N
//! runtime fanout subscribers=10000 ns_per_subscriber=N diff_presences=1
//! runtime fanout subscribers=10000 ns_per_subscriber=N diff_presences=1000
//! runtime max_lock_hold_us=N
//! runtime max_lock_hold_us_by_run catchup_multi_thread=N catchup_current_thread=N list=N threads=N fanout=N
//! runtime lock_holds_over_1ms_by_run catchup_multi_thread=N catchup_current_thread=N list=N threads=N fanout=N
//! runtime longest_held_lock_by_run catchup_multi_thread=LOCK catchup_current_thread=LOCK list=LOCK threads=LOCK fanout=LOCK
//! ```
//!
//! - `track_untrack/{state,tracker}/1000000` (criterion): one replica
//!   holding 1,000,000 of its own presences (the `common` workload); one
//!   iteration tracks a presence and untracks it, sequentially on a
//!   current-thread runtime. The tracker runs its driver task and an
//!   in-memory transport.
//! - `track_untrack/tracker_key_counts/1000000`: the same once `topics()`
//!   was called, so that each change also counts its key; `key_counts_start`
//!   is how long that first call took on 1,000,000 presences, and the
//!   longest any lock was held meanwhile.
//! - `grow_one_topic`: the longest any lock was held while one task tracks
//!   1,000,000 presences on one topic of a fresh tracker, so that one
//!   shard's state grows from empty to a million.
//! - `track_latency_during_catchup`: replica A holds 1,000,000 presences on
//!   one topic; replica B starts on the same in-memory network, and while
//!   it catches up from A (A's answer built and encoded, sent as real
//!   messages, decoded and merged by B) one task of B's tracks a presence
//!   every millisecond, alternately on A's topic and on another. A track's
//!   latency runs from the instant it was due (a 1 ms tick) to its return,
//!   so a runtime thread kept busy shows; each is followed by a read that
//!   shows it (`get` of its key on the large topic, `list` on the other),
//!   then dropped. The window runs from B's start until 200 ms after B
//!   lists all of A's presences; `catchup_ms` is B's start to that list.
//!   On a multi-thread (2 workers) and a current-thread runtime.
//! - `hide_replica`: then A is cut off from B; `after_cut_ms` runs until B
//!   lists none of A's presences, and `max_lock_hold_us` is B's longest
//!   lock hold meanwhile. Not in `max_lock_hold_us` below, which keeps
//!   the runs it always had.
//! - `track_latency_during_list`: one replica holds 100,000 presences on
//!   topic B; a task lists B in a loop while another tracks on topic A
//!   every millisecond for 2 s, each followed by a list of A. Each track
//!   is timed over the call alone (what it waits for a lock): the 1 ms
//!   timer's own lateness is not in it. Multi-thread runtime, 2 workers.
//! - `track_untrack_threads`: a replica holding 1,000,000 presences (the
//!   `common` workload) on a multi-thread runtime; 1, then 2 OS threads
//!   each track and untrack on its own topic for 2 s. Tracks and untracks
//!   each count as an operation.
//! - `machine_stalls`: the baseline of the threads run, in the same
//!   process right after it: 2 OS threads read the clock in a loop for
//!   2 s, with no lock and no tracker. `max_gap_us` is the longest either
//!   went between two reads (time it was not running); `gaps_over_1ms`
//!   counts gaps over a millisecond. A thread stopped while it holds a
//!   lock holds it that long.
//! - `fanout`: 10,000 tasks subscribe to one topic of replica B; replica A
//!   (with small limits, so that its intervals hold thousands of changes)
//!   tracks 1 (then 1,000) presences on it within one period, which B
//!   merges as one diff; each subscriber notes when its `next()` returned
//!   it. `ns_per_subscriber` is the spread from the first subscriber to
//!   the last over the subscribers after the first.
//! - `max_lock_hold_us`: the longest any lock of any tracker was held in
//!   the runs above (after their setup), from
//!   `TrackerMetrics::longest_lock_hold`; the next lines give it per run,
//!   and how many holds passed a millisecond (holds are wall time: a
//!   holder the OS descheduled counts its time off the CPU).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attendance::transport::MemoryNetwork;
use attendance::{State, SubscriptionEvent, Tracker};
use common::{Meta, key, limits, local_id, meta, start_tracker, topic, tracker_config};
use criterion::{BenchmarkId, Criterion};
use tokio::runtime::Runtime;
use tokio::time::MissedTickBehavior;

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

    let runtime = current_thread();
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

    // The first `topics()` starts the key counts; from then on every
    // change also counts its key.
    tracker.reset_longest_lock_hold();
    let started = Instant::now();
    let topics = tracker.topics();
    let took = started.elapsed();
    assert_eq!(topics.iter().map(|t| t.keys).sum::<usize>(), HELD);
    let held = holds(&[&tracker]);
    group.bench_function(BenchmarkId::new("tracker_key_counts", HELD), |b| {
        b.to_async(&runtime).iter(|| {
            i += 1;
            let guard = tracker.track(&topic(i), &key(i), meta(i)).expect("tracks");
            async move { drop(guard) }
        })
    });
    drop(guards);
    runtime.block_on(tracker.shutdown());
    group.finish();
    println!(
        "runtime key_counts_start presences={HELD} ms={} max_lock_hold_us={}",
        took.as_millis(),
        held.0.as_micros()
    );
}

/// Tracks `HELD` presences on one topic of a fresh tracker and prints the
/// longest lock hold meanwhile: the shard's state grows under its lock.
fn grow_one_topic() {
    let runtime = current_thread();
    let network = MemoryNetwork::new();
    let tracker = runtime.block_on(async { start_tracker(&network, "node-local") });
    tracker.reset_longest_lock_hold();
    let guards: Vec<_> = (0..HELD as u64)
        .map(|i| {
            tracker
                .track("room:grow", &key(i), meta(i))
                .expect("tracks")
        })
        .collect();
    let held = holds(&[&tracker]);
    assert_eq!(tracker.count("room:grow"), HELD);
    drop(guards);
    runtime.block_on(tracker.shutdown());
    println!(
        "runtime grow_one_topic presences={HELD} max_lock_hold_us={}",
        held.0.as_micros()
    );
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The longest lock hold of some trackers, how many holds passed a
/// millisecond, and which lock was held longest.
#[derive(Clone, Copy)]
struct Holds(Duration, u64, &'static str);

fn holds(trackers: &[&Tracker<Meta>]) -> Holds {
    trackers
        .iter()
        .fold(Holds(Duration::ZERO, 0, "none"), |h, t| {
            let m = t.metrics();
            let (longest, lock) = if m.longest_lock_hold > h.0 {
                (m.longest_lock_hold, m.longest_held_lock)
            } else {
                (h.0, h.2)
            };
            Holds(longest, h.1 + m.lock_holds_over_1ms, lock)
        })
}

/// Latencies in microseconds: p50, p99, max.
fn percentiles(mut latencies: Vec<Duration>) -> (u128, u128, u128) {
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).map_or(0, Duration::as_micros)
    };
    (at(0.5), at(0.99), at(1.0))
}

/// Tracks a presence every millisecond until `stop`, alternately on each
/// of `topics`; each is timed from the tick it was due at to its return
/// (`from_tick`), or over the call alone, then shown by a read and
/// dropped.
async fn timed_tracks(
    tracker: Tracker<Meta>,
    topics: [&'static str; 2],
    large: Option<&'static str>,
    stop: Arc<AtomicBool>,
    from_tick: bool,
) -> Vec<Duration> {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = tick.tick().await;
        let topic = topics[(i % 2) as usize];
        let name = format!("timed:{i}");
        let called = tokio::time::Instant::now();
        let guard = tracker.track(topic, &name, meta(i)).expect("tracks");
        latencies.push(if from_tick { due } else { called }.elapsed());
        let shown = if Some(topic) == large {
            tracker.get(topic, &name).len() == 1
        } else {
            tracker.list(topic).iter().any(|g| g.key.as_str() == name)
        };
        assert!(shown, "a track shows in the next read");
        drop(guard);
        i += 1;
    }
    latencies
}

/// B's tracks while B catches up 1,000,000 presences from A; returns the
/// longest lock hold of either.
fn during_catchup(runtime: &Runtime, flavor: &str) -> Holds {
    const BIG: &str = "room:big";
    runtime.block_on(async {
        let network = MemoryNetwork::new();
        let a = start_tracker(&network, "node-remote");
        let guards: Vec<_> = (0..HELD as u64)
            .map(|i| a.track(BIG, &key(i), meta(i)).expect("tracks"))
            .collect();
        tokio::time::sleep(tracker_config().broadcast_period * 3).await;
        a.reset_longest_lock_hold();

        let started = Instant::now();
        let b = start_tracker(&network, "node-local");
        let stop = Arc::new(AtomicBool::new(false));
        let timing = tokio::spawn(timed_tracks(
            b.clone(),
            [BIG, "room:other"],
            Some(BIG),
            stop.clone(),
            true,
        ));
        while b.count(BIG) < HELD {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(started.elapsed() < Duration::from_secs(120), "B caught up");
        }
        let catchup = started.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Release);
        let latencies = timing.await.expect("the timing task");
        let (p50, p99, max) = percentiles(latencies);
        println!(
            "runtime track_latency_during_catchup p50_us={p50} p99_us={p99} max_us={max} \
             catchup_ms={} flavor={flavor}",
            catchup.as_millis()
        );
        let held = holds(&[&a, &b]);

        // A goes silent: B hides its presences once A is down.
        b.reset_longest_lock_hold();
        network.cut("node-local", "node-remote");
        let cut = Instant::now();
        while b.count(BIG) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(cut.elapsed() < Duration::from_secs(60), "B hid A");
        }
        println!(
            "runtime hide_replica presences={HELD} after_cut_ms={} max_lock_hold_us={} flavor={flavor}",
            cut.elapsed().as_millis(),
            holds(&[&b]).0.as_micros()
        );
        b.shutdown().await;
        a.shutdown().await;
        drop(guards);
        held
    })
}

/// Tracks on one topic while another task lists a topic of 100,000.
fn during_list(runtime: &Runtime) -> Holds {
    const LISTED: &str = "room:b";
    const LISTED_LEN: usize = 100_000;
    runtime.block_on(async {
        let network = MemoryNetwork::new();
        let t = start_tracker(&network, "node-local");
        let guards: Vec<_> = (0..LISTED_LEN as u64)
            .map(|i| t.track(LISTED, &key(i), meta(i)).expect("tracks"))
            .collect();
        tokio::time::sleep(tracker_config().broadcast_period * 3).await;
        t.reset_longest_lock_hold();

        let stop = Arc::new(AtomicBool::new(false));
        let lists = Arc::new(AtomicUsize::new(0));
        let lister = {
            let (t, stop, lists) = (t.clone(), stop.clone(), lists.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    assert_eq!(t.list(LISTED).len(), LISTED_LEN);
                    lists.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let timing = tokio::spawn(timed_tracks(
            t.clone(),
            ["room:a", "room:a"],
            None,
            stop.clone(),
            false,
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Release);
        let latencies = timing.await.expect("the timing task");
        lister.await.expect("the listing task");
        assert!(lists.load(Ordering::Relaxed) > 10, "the topic was listed");
        let (p50, p99, _) = percentiles(latencies);
        println!("runtime track_latency_during_list p50_us={p50} p99_us={p99}");
        let held = holds(&[&t]);
        t.shutdown().await;
        drop(guards);
        held
    })
}

/// Track + untrack pairs from 1, then 2 OS threads on different topics.
fn threads(runtime: &Runtime) -> Holds {
    let network = MemoryNetwork::new();
    let _entered = runtime.enter();
    let t = start_tracker(&network, "node-local");
    let guards: Vec<_> = (0..HELD as u64)
        .map(|i| t.track(&topic(i), &key(i), meta(i)).expect("tracks"))
        .collect();
    runtime.block_on(tokio::time::sleep(tracker_config().broadcast_period * 3));
    t.reset_longest_lock_hold();
    for n in [1usize, 2] {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..n)
            .map(|w| {
                let (t, stop) = (t.clone(), stop.clone());
                std::thread::spawn(move || {
                    let topic = ["thread:0", "thread:1"][w];
                    let mut pairs = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let guard = t.track(topic, &key(pairs), meta(pairs)).expect("tracks");
                        drop(guard);
                        pairs += 1;
                    }
                    pairs
                })
            })
            .collect();
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let pairs: u64 = workers
            .into_iter()
            .map(|w| w.join().expect("a worker"))
            .sum();
        let ops = (pairs * 2) as f64 / started.elapsed().as_secs_f64();
        println!("runtime track_untrack_threads threads={n} ops_per_sec={ops:.0}");
    }
    let held = holds(&[&t]);
    runtime.block_on(t.shutdown());
    drop(guards);
    held
}

/// What the machine itself does to two busy threads, the in-run baseline
/// of the threads run: 2 OS threads each read the clock in a loop for 2 s,
/// touching no lock; a gap between two reads is time the thread did not
/// run. A lock holder stopped so long holds its lock that long, whatever
/// the code under the lock.
fn machine_stalls() {
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let end = Instant::now() + Duration::from_secs(2);
                let (mut last, mut longest, mut over) = (Instant::now(), Duration::ZERO, 0u64);
                while last < end {
                    let now = Instant::now();
                    let gap = now - last;
                    longest = longest.max(gap);
                    over += u64::from(gap > Duration::from_millis(1));
                    last = now;
                }
                (longest, over)
            })
        })
        .collect();
    let (longest, over) = workers
        .into_iter()
        .map(|w| w.join().expect("a thread"))
        .fold((Duration::ZERO, 0), |(l, o), (wl, wo)| (l.max(wl), o + wo));
    println!(
        "runtime machine_stalls threads=2 max_gap_us={} gaps_over_1ms={over}",
        longest.as_micros()
    );
}

/// One diff of `presences` joins to 10,000 subscribers.
fn fanout(runtime: &Runtime, presences: usize) -> Holds {
    const SUBSCRIBERS: usize = 10_000;
    const TOPIC: &str = "room:fanout";
    runtime.block_on(async {
        let network = MemoryNetwork::new();
        // Small limits: intervals are cut every so many counters as the
        // largest change fits half a message, so A's thousand changes go
        // out in one interval, which B merges as one diff.
        let small = limits()
            .max_topic_len(32)
            .max_key_len(32)
            .max_meta_bytes(64);
        let a: Tracker<Meta> = Tracker::builder("node-remote")
            .config(tracker_config())
            .limits(small)
            .start_with(|id| network.join(id))
            .expect("starts");
        let b = start_tracker(&network, "node-local");
        tokio::time::sleep(tracker_config().broadcast_period * 5).await;
        let waiting = Arc::new(AtomicUsize::new(0));
        let subscribers: Vec<_> = (0..SUBSCRIBERS)
            .map(|_| {
                let mut sub = b.subscribe(TOPIC);
                let waiting = waiting.clone();
                tokio::spawn(async move {
                    waiting.fetch_add(1, Ordering::AcqRel);
                    // One diff, unless a period's broadcast fell among A's
                    // changes: then until every join came.
                    let (mut joins, mut diffs) = (0, 0);
                    loop {
                        match sub.next().await {
                            Some(SubscriptionEvent::Diff(diff)) => joins += diff.joins().len(),
                            other => panic!("expected a diff, got {other:?}"),
                        }
                        diffs += 1;
                        if joins >= presences {
                            return (Instant::now(), joins, diffs);
                        }
                    }
                })
            })
            .collect();
        while waiting.load(Ordering::Acquire) < SUBSCRIBERS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.reset_longest_lock_hold();
        b.reset_longest_lock_hold();
        let guards: Vec<_> = (0..presences as u64)
            .map(|i| a.track(TOPIC, &key(i), meta(i)).expect("tracks"))
            .collect();
        let mut times = Vec::with_capacity(SUBSCRIBERS);
        let mut diffs = 0;
        for s in subscribers {
            let (at, joins, n) = s.await.expect("a subscriber");
            assert_eq!(joins, presences, "every join");
            times.push(at);
            diffs = diffs.max(n);
        }
        if diffs > 1 {
            println!("(the {presences} joins came in {diffs} diffs)");
        }
        times.sort_unstable();
        let spread = times[times.len() - 1] - times[0];
        let per = spread.as_nanos() / (SUBSCRIBERS as u128 - 1);
        println!(
            "runtime fanout subscribers={SUBSCRIBERS} ns_per_subscriber={per} diff_presences={presences}"
        );
        let held = holds(&[&a, &b]);
        drop(guards);
        b.shutdown().await;
        a.shutdown().await;
        held
    })
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    track_untrack(&mut criterion);
    criterion.final_summary();

    grow_one_topic();
    let catchup_multi = during_catchup(&multi_thread(), "multi_thread");
    let catchup_current = during_catchup(&current_thread(), "current_thread");
    let list = during_list(&multi_thread());
    let threads = threads(&multi_thread());
    machine_stalls();
    let fanout_runtime = multi_thread();
    let (one, many) = (fanout(&fanout_runtime, 1), fanout(&fanout_runtime, 1000));
    let fanout = if one.0 >= many.0 {
        Holds(one.0, one.1 + many.1, one.2)
    } else {
        Holds(many.0, one.1 + many.1, many.2)
    };
    let runs = [catchup_multi, catchup_current, list, threads, fanout];
    let max = runs.iter().map(|h| h.0).max().unwrap_or_default();
    println!("runtime max_lock_hold_us={}", max.as_micros());
    let by_run = |f: fn(&Holds) -> String| {
        let [a, b, c, d, e] = runs.each_ref().map(f);
        format!(
            "catchup_multi_thread={a} catchup_current_thread={b} list={c} threads={d} fanout={e}"
        )
    };
    println!(
        "runtime max_lock_hold_us_by_run {}",
        by_run(|h| h.0.as_micros().to_string())
    );
    println!(
        "runtime lock_holds_over_1ms_by_run {}",
        by_run(|h| h.1.to_string())
    );
    println!(
        "runtime longest_held_lock_by_run {}",
        by_run(|h| h.2.to_string())
    );
}
