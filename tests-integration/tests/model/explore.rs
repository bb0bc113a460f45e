//! Walking the state graph: breadth or depth first, with progress reports
//! and the coverage every run must reach.

use super::*;

/// How to walk the state graph.
#[derive(Clone, Copy)]
pub(super) enum Search {
    /// Breadth first on one thread: the same walk every run, and shortest
    /// counterexamples.
    Bfs,
    /// Depth first on every core: memory for the current path only, where
    /// breadth first would hold millions of states.
    Dfs,
}

/// Prints the states explored every minute, for runs that take long.
pub(super) struct Progress;

impl Reporter<Protocol> for Progress {
    fn report_checking(&mut self, data: ReportData) {
        eprintln!(
            "{:?}: {} unique states, depth {}",
            data.duration, data.unique_states, data.max_depth
        );
    }

    /// [`check`] reports what it found.
    fn report_discoveries(
        &mut self,
        _: &Protocol,
        _: BTreeMap<&'static str, ReportDiscovery<Protocol>>,
    ) {
    }

    fn delay(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// What a run found.
pub(super) struct Explored {
    pub(super) states: usize,
    /// A path to a state breaking it, by property.
    pub(super) found: HashMap<&'static str, Path<World, Action>>,
    pub(super) coverage: Arc<Coverage>,
}

/// Explores `setup` exhaustively and prints what it explored.
pub(super) fn explore(setup: Setup, search: Search) -> Explored {
    let name = format!("{setup:?}");
    let model = Protocol::new(setup);
    let coverage = model.coverage.clone();
    let started = Instant::now();
    let (threads, (states, generated, depth, found)) = match search {
        Search::Bfs => (1, summary(model.checker().spawn_bfs().join())),
        Search::Dfs => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let checker = model.checker().threads(threads).spawn_dfs();
            (threads, summary(checker.join_and_report(&mut Progress)))
        }
    };
    eprintln!(
        "{name}: {states} unique states ({generated} generated), depth {depth}, \
         {:.1?} on {threads} thread(s); {} quiet agreeing pairs compared, \
         {} replicas checked knowing another's untrack",
        started.elapsed(),
        coverage.quiet_pairs.load(Ordering::Relaxed),
        coverage.untracks_known.load(Ordering::Relaxed),
    );
    Explored {
        states,
        found,
        coverage,
    }
}

pub(super) type Summary = (
    usize,
    usize,
    usize,
    HashMap<&'static str, Path<World, Action>>,
);

pub(super) fn summary(checker: impl Checker<Protocol>) -> Summary {
    (
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        checker.discoveries(),
    )
}

/// Explores `setup`, fails on any counterexample (printing its path) or
/// when either property's premise never held, and returns the number of
/// unique states.
pub(super) fn check(setup: Setup, search: Search) -> usize {
    let explored = explore(setup, search);
    if let Some((name, path)) = explored.found.iter().next() {
        panic!(
            "counterexample to \"{name}\":\n{path}last state: {:?}",
            path.last_state()
        );
    }
    let coverage = &explored.coverage;
    assert!(
        coverage.quiet_pairs.load(Ordering::Relaxed) > 0,
        "no quiet state had two replicas to compare"
    );
    assert!(
        coverage.untracks_known.load(Ordering::Relaxed) > 0,
        "no replica ever learnt of another's untrack"
    );
    explored.states
}
