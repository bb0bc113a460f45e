//! Property tests of the state layer, through the public API only.
//!
//! Each case runs a random history on 2 to 5 replicas (tracks, updates,
//! untracks, `untrack_many`, `untrack_key`, on three topics and three keys,
//! with metas in `0..4`, so keys often hold several presences and updates
//! often keep the same meta), interleaved with random deliveries between the
//! replicas. The deltas it produced are then delivered to observers (states
//! of replicas that track nothing) in random subsets and orders, with
//! duplicates, one by one, joined into batches, or inside snapshots. See
//! `tests/common/mod.rs` for the model and the checks every test shares: a
//! ground truth kept beside the history, and the replay of every diff
//! against the list after every operation.
//!
//! A state never merges data about its own name, so laws are checked on
//! observers, and "equal states" means equal lists and equal contexts of
//! every replica but the state's own.
//!
//! Every property runs at least 1,000 cases (more with `PROPTEST_CASES`).
//! Each test prints its RNG seed first; cargo shows that output when a test
//! fails, together with proptest's minimal failing input. To replay a run:
//!
//! ```text
//! PROPTEST_RNG_SEED=<seed> cargo test --release --test properties
//! ```
//!
//! Failing inputs are also saved in `tests/properties.proptest-regressions`
//! and replayed first by later runs.

mod common;

use std::collections::BTreeSet;

use attendance::{Delta, Incarnation, Limits, PurgeReason, ReplicaId, State, StateError};
use common::*;
use crdts::{CmRDT, CvRDT, Orswot};
use proptest::prelude::*;

/// A fresh observer's view of merging these deltas, in order.
fn fresh(deltas: impl IntoIterator<Item = Delta<M>>) -> Result<State<M>, TestCaseError> {
    merged(99, deltas)
}

fn join2(a: &Delta<M>, b: &Delta<M>) -> Delta<M> {
    let mut joined = a.clone();
    joined.join(b.clone());
    joined
}

proptest! {
    #![proptest_config(config())]

    /// `a ⊔ b = b ⊔ a`, on whole states (observers' snapshots, merged into
    /// a fresh state or into each other) and on deltas (`Delta::join` gives
    /// equal deltas either way round, and they merge alike).
    #[test]
    fn merge_is_commutative(
        scenario in scenario(),
        a in pieces(10),
        b in pieces(10),
        x in piece(),
        y in piece(),
    ) {
        check_merge_is_commutative(&scenario, &a, &b, &x, &y)?;
    }

    /// `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`, on states and on deltas.
    #[test]
    fn merge_is_associative(
        scenario in scenario(),
        a in pieces(8),
        b in pieces(8),
        c in pieces(8),
        x in piece(),
        y in piece(),
        z in piece(),
    ) {
        check_merge_is_associative(&scenario, &a, &b, &c, &x, &y, &z)?;
    }

    /// `a ⊔ a = a`: re-merging what a state holds, or any delta it already
    /// merged, changes nothing and reports nothing; `d ⋈ d = d`.
    #[test]
    fn merge_is_idempotent(
        scenario in scenario(),
        a in pieces(10),
        x in piece(),
        y in piece(),
    ) {
        check_merge_is_idempotent(&scenario, &a, &x, &y)?;
    }

    /// `s ⊔ δ(op, s) = op(s)`: a state holding the owner's state (its
    /// snapshot, or all its deltas so far merged in order) that merges the
    /// delta of the owner's next mutation equals the owner after it.
    #[test]
    fn delta_mutator_is_correct(
        scenario in scenario(),
    ) {
        check_delta_mutator_is_correct(&scenario)?;
    }

    /// Merging `d1.join(d2)` (or a longer batch) equals merging its parts one
    /// after another, into any state.
    #[test]
    fn joined_deltas_merge_like_their_parts(
        scenario in scenario(),
        base in pieces(10),
        group in proptest::collection::vec(piece(), 1..6),
    ) {
        check_joined_deltas_merge_like_their_parts(&scenario, &base, &group)?;
    }

    /// Whenever two states (observers fed different subsets of the deltas in
    /// different orders, or the owner itself) hold equal contexts of a
    /// replica, they list exactly the same presences of it.
    #[test]
    fn equal_context_means_equal_substate(
        scenario in scenario(),
        observers in proptest::collection::vec(pieces(14), 2..5),
    ) {
        check_equal_context_means_equal_substate(&scenario, &observers)?;
    }

    /// Replicas (and observers) that receive every delta, in any order, with
    /// duplicates, one by one, in one batch, or through each other's
    /// snapshots, all list exactly the ground truth and hold every
    /// replica's whole context; two states given the same subset in
    /// different orders end identical.
    #[test]
    fn replicas_converge_to_the_ground_truth(
        scenario in scenario(),
        seed in any::<u64>(),
        subset in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        check_replicas_converge_to_the_ground_truth(&scenario, seed, &subset)?;
    }

    /// The diffs of every operation, replayed from an empty list, give the
    /// list after every step: local mutations, merges of deltas, batches and
    /// snapshots in any order (so updates whose intermediate versions never
    /// arrived, and out-of-order versions, happen), hide, unhide, purge and
    /// readmit. No join or leave is missed or invented; a leave or an
    /// update names the version and meta that were shown.
    #[test]
    fn diffs_replay_the_list(
        scenario in scenario(),
        ops in proptest::collection::vec(observer_op(), 0..16),
    ) {
        check_diffs_replay_the_list(&scenario, &ops)?;
    }

    /// Delivered the way the protocol delivers (each replica's deltas in
    /// counter order, possibly joined into batches, or a catch-up or a
    /// snapshot from the owner), an observer shows every replica's
    /// sub-state at some counter, one version per presence, and each update
    /// names the version it replaced on this observer even when the
    /// versions in between never reached it.
    #[test]
    fn in_order_delivery_shows_one_version_per_presence(
        scenario in scenario(),
        schedule in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..40),
    ) {
        check_in_order_delivery_shows_one_version_per_presence(&scenario, &schedule)?;
    }

    /// After `purge(r, Permdown)` no stale delta or snapshot brings anything
    /// of r back, while other replicas' data keeps merging; `readmit` with a
    /// whole sub-state of r restores exactly that sub-state, and refuses an
    /// incomplete one, changing nothing.
    #[test]
    fn purged_incarnation_never_returns(
        scenario in scenario(),
        first in pieces(10),
        stale in pieces(10),
        victim in victim(),
        seed in any::<u64>(),
    ) {
        check_purged_incarnation_never_returns(&scenario, &first, &stale, victim, seed)?;
    }

    /// A newer incarnation of a name purges the older one's presences on
    /// every observer, whichever arrives first; data of the older one is
    /// ignored from then on, even inside a delta that also carries the newer
    /// one; the older replica itself learns it was superseded.
    #[test]
    fn newer_incarnation_replaces_the_old_one(
        scenario in scenario(),
        first in pieces(10),
        late in pieces(10),
        victim in victim(),
        tracks in proptest::collection::vec((0..TOPICS.len(), 0..KEYS.len(), 0..METAS), 1..4),
        seed in any::<u64>(),
    ) {
        check_newer_incarnation_replaces_the_old_one(&scenario, &first, &late, victim, &tracks, seed)?;
    }

    /// A state lagging at a contiguous prefix `c` of replica r (perhaps with
    /// some later deltas too) catches up with any holder that knows at least
    /// what it knows of r: `changes_since(r, c)` when the holder's removal
    /// log reaches back to `c`, `snapshot_of(r)` otherwise. It then holds
    /// exactly the holder's sub-state of r.
    #[test]
    fn catch_up_reaches_the_holder(
        scenario in scenario(),
        log in 0..5usize,
        victim in victim(),
        prefix in any::<usize>(),
        extras in proptest::collection::vec(any::<usize>(), 0..3),
        others in pieces(8),
        more in pieces(8),
        owner_holds in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let lag = Lag { victim, prefix, extras, others };
        check_catch_up_reaches_the_holder(&scenario, log, &lag, &more, owner_holds, seed)?;
    }

    /// The same operations fed to `crdts::Orswot` (each replica an actor
    /// whose own Orswot makes the operations, delivered to an oracle in
    /// causal order per actor) give the same members as the list, at every
    /// step of the delivery and after merging everything in any order.
    /// Members are `(replica, presence, meta)`; an update removes the old
    /// member and adds the new one.
    #[test]
    fn membership_matches_crdts_orswot(
        scenario in scenario(),
        schedule in proptest::collection::vec(any::<usize>(), 0..32),
        seed in any::<u64>(),
    ) {
        check_membership_matches_crdts_orswot(&scenario, &schedule, seed)?;
    }
}

fn check_merge_is_commutative(
    scenario: &Scenario,
    a: &[Piece],
    b: &[Piece],
    x: &Piece,
    y: &Piece,
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let a = observe(&cluster, 0, a)?;
    let b = observe(&cluster, 1, b)?;
    let (sa, sb) = (a.state.snapshot(), b.state.snapshot());

    let ab = fresh([sa.clone(), sb.clone()])?;
    let ba = fresh([sb.clone(), sa.clone()])?;
    assert_same(&ab, &ba, "fresh ⊔ sA ⊔ sB vs fresh ⊔ sB ⊔ sA")?;
    let mut a_b = a.clone();
    a_b.merge(sb.clone())?;
    let mut b_a = b.clone();
    b_a.merge(sa.clone())?;
    assert_same(&a_b.state, &b_a.state, "A ⊔ sB vs B ⊔ sA")?;
    assert_same(&a_b.state, &ab, "A ⊔ sB vs fresh ⊔ sA ⊔ sB")?;

    for (dx, dy) in [
        (x.delta(&cluster), y.delta(&cluster)),
        (sa.clone(), sb.clone()),
        (x.delta(&cluster), sb.clone()),
    ] {
        let xy = join2(&dx, &dy);
        let yx = join2(&dy, &dx);
        prop_assert_eq!(&xy, &yx, "x.join(y) != y.join(x)");
        let by_join = fresh([xy])?;
        assert_same(&by_join, &fresh([yx])?, "fresh ⊔ (x⋈y) vs fresh ⊔ (y⋈x)")?;
        assert_same(
            &fresh([dx.clone(), dy.clone()])?,
            &fresh([dy, dx])?,
            "x then y vs y then x",
        )?;
    }
    Ok(())
}

fn check_merge_is_associative(
    scenario: &Scenario,
    a: &[Piece],
    b: &[Piece],
    c: &[Piece],
    x: &Piece,
    y: &Piece,
    z: &Piece,
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let sa = observe(&cluster, 0, a)?.state.snapshot();
    let sb = observe(&cluster, 1, b)?.state.snapshot();
    let sc = observe(&cluster, 2, c)?.state.snapshot();

    let ab = fresh([sa.clone(), sb.clone()])?.snapshot();
    let left = fresh([ab, sc.clone()])?;
    let bc = fresh([sb.clone(), sc.clone()])?.snapshot();
    let right = fresh([sa.clone(), bc])?;
    assert_same(&left, &right, "(A ⊔ B) ⊔ C vs A ⊔ (B ⊔ C)")?;
    assert_same(
        &left,
        &fresh([sa.clone(), sb.clone(), sc.clone()])?,
        "(A ⊔ B) ⊔ C vs A, B, C",
    )?;

    for (dx, dy, dz) in [
        (x.delta(&cluster), y.delta(&cluster), z.delta(&cluster)),
        (sa, sb, sc),
    ] {
        let left = join2(&join2(&dx, &dy), &dz);
        let right = join2(&dx, &join2(&dy, &dz));
        prop_assert_eq!(&left, &right, "(x⋈y)⋈z != x⋈(y⋈z)");
        let merged_left = fresh([left])?;
        assert_same(
            &merged_left,
            &fresh([right])?,
            "fresh ⊔ ((x⋈y)⋈z) vs fresh ⊔ (x⋈(y⋈z))",
        )?;
        assert_same(
            &merged_left,
            &fresh([dx, dy, dz])?,
            "fresh ⊔ ((x⋈y)⋈z) vs x, y, z",
        )?;
    }
    Ok(())
}

fn check_merge_is_idempotent(
    scenario: &Scenario,
    a: &[Piece],
    x: &Piece,
    y: &Piece,
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let a = observe(&cluster, 0, a)?;
    let sa = a.state.snapshot();

    let mut again = a.clone();
    let diff = again.merge(sa.clone())?;
    prop_assert!(diff.is_empty(), "A ⊔ sA reported {:?}", diff);
    assert_same(&again.state, &a.state, "A ⊔ sA vs A")?;

    let once = fresh([sa.clone()])?;
    let mut twice = Replayed::resume(once.clone())?;
    let diff = twice.merge(sa.clone())?;
    prop_assert!(diff.is_empty(), "merging sA twice reported {:?}", diff);
    assert_same(&twice.state, &once, "fresh ⊔ sA ⊔ sA vs fresh ⊔ sA")?;
    assert_same(&once, &a.state, "fresh ⊔ sA vs A")?;

    for d in [x.delta(&cluster), y.delta(&cluster), sa] {
        let mut state = a.clone();
        state.merge(d.clone())?;
        let before = state.state.clone();
        let diff = state.merge(d.clone())?;
        prop_assert!(diff.is_empty(), "a delta merged twice reported {:?}", diff);
        assert_same(&state.state, &before, "s ⊔ d ⊔ d vs s ⊔ d")?;

        let dd = join2(&d, &d);
        prop_assert_eq!(&dd, &d, "d.join(d) != d");
        assert_same(&fresh([dd])?, &fresh([d])?, "fresh ⊔ (d⋈d) vs fresh ⊔ d")?;
    }
    Ok(())
}

fn check_delta_mutator_is_correct(scenario: &Scenario) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::new(scenario.replicas, &Limits::default());
    let mut copies: Vec<Replayed> = (0..scenario.replicas).map(Replayed::observer).collect();
    for step in &scenario.steps {
        let before = match step {
            Step::Mutate { replica, .. } => Some(cluster.owner(*replica).snapshot()),
            Step::Deliver { .. } => None,
        };
        let Some(k) = cluster.step(step)? else {
            continue;
        };
        let (i, delta) = (cluster.sent[k].from, cluster.sent[k].delta.clone());
        let me = cluster.id(i);
        let owner = cluster.owner(i);
        let expected = fresh([owner.snapshot()])?;

        let mut s = Replayed::resume(fresh(before)?)?;
        s.merge(delta.clone())?;
        assert_same(&s.state, &expected, "s ⊔ δ(op) vs op(s)")?;
        prop_assert_eq!(rows_of(&s.shown, &me), rows_of(&cluster.truth, &me));
        prop_assert_eq!(s.state.context(&me), owner.context(&me));

        copies[i].merge(delta)?;
        prop_assert_eq!(rows_of(&copies[i].shown, &me), rows_of(&cluster.truth, &me));
        prop_assert_eq!(copies[i].state.context(&me), owner.context(&me));
    }
    Ok(())
}

fn check_joined_deltas_merge_like_their_parts(
    scenario: &Scenario,
    base: &[Piece],
    group: &[Piece],
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let base = observe(&cluster, 0, base)?;
    let deltas: Vec<Delta<M>> = group.iter().flat_map(|p| p.deltas(&cluster)).collect();

    let mut one_by_one = base.clone();
    for d in deltas.clone() {
        one_by_one.merge(d)?;
    }
    let mut at_once = base.clone();
    at_once.merge(joined(deltas.clone()))?;
    assert_same(
        &at_once.state,
        &one_by_one.state,
        "s ⊔ (d1⋈…⋈dn) vs s ⊔ d1 ⊔ … ⊔ dn",
    )?;

    if let [d1, d2, ..] = deltas.as_slice() {
        let mut pair = base.clone();
        pair.merge(join2(d1, d2))?;
        let mut parts = base.clone();
        parts.merge(d1.clone())?;
        parts.merge(d2.clone())?;
        assert_same(&pair.state, &parts.state, "s ⊔ (d1⋈d2) vs s ⊔ d1 ⊔ d2")?;
    }
    Ok(())
}

fn check_equal_context_means_equal_substate(
    scenario: &Scenario,
    observers: &[Vec<Piece>],
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let mut states: Vec<State<M>> = cluster.owners.iter().map(|o| o.state.clone()).collect();
    for (i, pieces) in observers.iter().enumerate() {
        states.push(observe(&cluster, i, pieces)?.state);
    }
    let views = states.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    for r in 0..cluster.len() {
        let id = cluster.id(r);
        for (a, va) in states.iter().zip(&views) {
            if a.context(&id).is_none() {
                prop_assert!(
                    rows_of(va, &id).is_empty(),
                    "rows of {} without its context",
                    id
                );
            }
            for (b, vb) in states.iter().zip(&views) {
                if let (Some(ca), Some(cb)) = (a.context(&id), b.context(&id))
                    && ca == cb
                {
                    prop_assert_eq!(
                        rows_of(va, &id),
                        rows_of(vb, &id),
                        "{} and {} hold {:?} of {} but list different presences",
                        a.replica(),
                        b.replica(),
                        ca,
                        id
                    );
                }
            }
        }
    }
    Ok(())
}

fn check_replicas_converge_to_the_ground_truth(
    scenario: &Scenario,
    seed: u64,
    subset: &[usize],
) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::run(scenario)?;
    let n = cluster.sent.len();

    let mut some = Replayed::observer(5);
    for &k in subset {
        if let Some(s) = cluster.pick(k) {
            some.merge(s.delta.clone())?;
        }
    }
    let mut reversed = Replayed::observer(6);
    for &k in subset.iter().rev() {
        if let Some(s) = cluster.pick(k) {
            reversed.merge(s.delta.clone())?;
        }
    }
    assert_same(&some.state, &reversed.state, "one subset in two orders")?;

    for to in 0..cluster.len() {
        for k in shuffle_with_duplicates(n, seed.wrapping_add(to as u64)) {
            cluster.deliver(to, k)?;
        }
    }
    let mut one_by_one = Replayed::observer(0);
    for k in shuffle_with_duplicates(n, seed ^ 0xA5A5) {
        one_by_one.merge(cluster.sent[k].delta.clone())?;
    }
    let batch = joined(
        shuffle(n, seed ^ 0x5A5A)
            .into_iter()
            .map(|k| cluster.sent[k].delta.clone()),
    );
    let in_one_batch = merged(1, [batch])?;
    let gossip = merged(
        2,
        shuffle(cluster.len(), seed)
            .into_iter()
            .map(|i| cluster.owner(i).snapshot()),
    )?;

    let mut states: Vec<&State<M>> = cluster.owners.iter().map(|o| &o.state).collect();
    states.extend([&one_by_one.state, &in_one_batch, &gossip]);
    for state in states {
        prop_assert_eq!(
            &view(state)?,
            &cluster.truth,
            "{} differs from the ground truth",
            state.replica()
        );
        for r in 0..cluster.len() {
            let id = cluster.id(r);
            if &id == state.replica() {
                continue;
            }
            let counter = cluster.counter(r);
            let expected = (counter > 0).then(|| vec![(1, counter)]);
            prop_assert_eq!(
                state.context(&id).map(ranges),
                expected,
                "context of {} at {}",
                id,
                state.replica()
            );
        }
    }
    Ok(())
}

fn check_diffs_replay_the_list(
    scenario: &Scenario,
    ops: &[ObserverOp],
) -> Result<(), TestCaseError> {
    // The owners' mutations and merges are checked as the history runs.
    let cluster = Cluster::run(scenario)?;
    let mut o = Replayed::observer(0);
    // Merges the same deltas, and nothing else.
    let mut reference = Replayed::observer(1);
    let mut purged = BTreeSet::new();
    for op in ops {
        match op {
            ObserverOp::Merge(piece) => {
                for d in piece.deltas(&cluster) {
                    o.merge(d.clone())?;
                    reference.merge(d)?;
                }
            }
            ObserverOp::Hide(r) => {
                let diff = o.state.hide(&cluster.id(*r)).map_err(refused)?;
                prop_assert_eq!(diff.joins().count() + diff.updates().count(), 0);
                o.check(&diff)?;
                prop_assert!(rows_of(&o.shown, &cluster.id(*r)).is_empty());
            }
            ObserverOp::Unhide(r) => {
                let diff = o.state.unhide(&cluster.id(*r)).map_err(refused)?;
                prop_assert_eq!(diff.leaves().count() + diff.updates().count(), 0);
                o.check(&diff)?;
            }
            ObserverOp::Purge(r) => {
                let diff = o
                    .state
                    .purge(&cluster.id(*r), PurgeReason::Permdown)
                    .map_err(refused)?;
                prop_assert_eq!(diff.joins().count() + diff.updates().count(), 0);
                o.check(&diff)?;
                purged.insert(cluster.id(*r));
            }
            ObserverOp::Readmit(r) => {
                let id = cluster.id(*r);
                let snapshot = cluster.owner(*r).snapshot_of(&id).unwrap_or_default();
                let diff = o.state.readmit(snapshot.clone()).map_err(refused)?;
                o.check(&diff)?;
                reference.merge(snapshot)?;
                purged.remove(&id);
            }
        }
    }
    // Hidden sub-states kept merging: once shown again, every replica not
    // left purged lists what the reference lists.
    for r in 0..cluster.len() {
        let id = cluster.id(r);
        let diff = o.state.unhide(&id).map_err(refused)?;
        o.check(&diff)?;
        if !purged.contains(&id) {
            prop_assert_eq!(rows_of(&o.shown, &id), rows_of(&reference.shown, &id));
            // Hiding a replica never heard of registers it with nothing.
            let known = |s: &State<M>| s.context(&id).filter(|c| !c.is_empty()).cloned();
            prop_assert_eq!(known(&o.state), known(&reference.state));
        }
    }
    Ok(())
}

fn check_in_order_delivery_shows_one_version_per_presence(
    scenario: &Scenario,
    schedule: &[(usize, usize)],
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let n = cluster.len();
    let mine: Vec<Vec<&Sent>> = (0..n).map(|r| cluster.sent_by(r)).collect();
    // The owner's own rows after each of its deltas.
    let mut after: Vec<Vec<View>> = vec![Vec::new(); n];
    {
        let mut replay = Cluster::new(n, &Limits::default());
        for step in &scenario.steps {
            if let Step::Mutate { .. } = step
                && let Some(k) = replay.step(step)?
            {
                let r = replay.sent[k].from;
                after[r].push(rows_of(&replay.truth, &replay.id(r)));
            }
        }
    }
    let mut next = vec![0usize; n];
    let mut o = Replayed::observer(0);
    let flush = schedule.len();
    let everything: Vec<(usize, usize)> = (0..n).map(|r| (r, 0)).collect();
    for (i, &(r, how)) in schedule.iter().chain(&everything).enumerate() {
        let r = r % n;
        let id = cluster.id(r);
        let remaining = mine[r].len() - next[r];
        if remaining == 0 {
            continue;
        }
        let at = o.state.context(&id).map_or(0, |c| c.contiguous_prefix());
        let expected_at = if next[r] == 0 {
            0
        } else {
            mine[r][next[r] - 1]
                .delta
                .context(&id)
                .map_or(0, |c| c.max())
        };
        prop_assert_eq!(at, expected_at);
        let diff = match how % 5 {
            _ if i >= flush => {
                next[r] = mine[r].len();
                o.merge(joined(mine[r].iter().map(|s| s.delta.clone())))?
            }
            0..=2 => {
                let k = 1 + (how / 5) % remaining;
                let batch = joined(
                    mine[r][next[r]..next[r] + k]
                        .iter()
                        .map(|s| s.delta.clone()),
                );
                next[r] += k;
                o.merge(batch)?
            }
            3 => {
                next[r] = mine[r].len();
                let catch_up = cluster.owner(r).changes_since(&id, at);
                prop_assert!(
                    catch_up.is_some(),
                    "the owner could not serve a catch-up from {}",
                    at
                );
                o.merge(catch_up.unwrap_or_default())?
            }
            _ => {
                next[r] = mine[r].len();
                o.merge(cluster.owner(r).snapshot_of(&id).unwrap_or_default())?
            }
        };
        let ids: BTreeSet<&Pid> = o.shown.keys().map(|(p, _)| p).collect();
        prop_assert_eq!(
            ids.len(),
            o.shown.len(),
            "a presence is shown twice after {:?}",
            diff
        );
        prop_assert_eq!(
            &rows_of(&o.shown, &id),
            &after[r][next[r] - 1],
            "not the sub-state of {} at its {}th delta",
            id,
            next[r]
        );
    }
    prop_assert_eq!(&o.shown, &cluster.truth);
    Ok(())
}

fn check_purged_incarnation_never_returns(
    scenario: &Scenario,
    first: &[Piece],
    stale: &[Piece],
    victim: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let r = cluster.id(victim);
    let mut o = observe(&cluster, 0, first)?;
    let mut reference = o.clone();
    let held = o.state.context(&r).map_or(0, |c| c.max());
    let diff = o.state.purge(&r, PurgeReason::Permdown).map_err(refused)?;
    o.check(&diff)?;
    prop_assert!(rows_of(&o.shown, &r).is_empty());
    prop_assert!(o.state.context(&r).is_none());
    let record = o
        .state
        .purged()
        .find(|(id, _)| **id == r)
        .map(|(_, rec)| *rec);
    prop_assert_eq!(
        record.map(|rec| (rec.counter, rec.reason)),
        Some((held, PurgeReason::Permdown))
    );

    let others = |s: &Replayed| -> Result<(View, Contexts), TestCaseError> {
        let mut contexts = contexts(&s.state);
        contexts.remove(&r);
        Ok((rows_without(&view(&s.state)?, &r), contexts))
    };
    let mut deltas: Vec<Delta<M>> = stale.iter().flat_map(|p| p.deltas(&cluster)).collect();
    deltas.push(cluster.owner(victim).snapshot());
    deltas.push(Piece::All(seed).delta(&cluster));
    for d in deltas {
        o.merge(d.clone())?;
        reference.merge(d)?;
        prop_assert!(rows_of(&o.shown, &r).is_empty(), "{} came back", r);
        prop_assert!(o.state.context(&r).is_none(), "{} came back", r);
        prop_assert_eq!(others(&o)?, others(&reference)?);
    }
    // The reference now holds everything, r included.
    o.merge(reference.state.snapshot())?;
    prop_assert!(rows_of(&o.shown, &r).is_empty(), "{} came back", r);

    // Readmission from a sub-state that is not whole is refused.
    let owner = cluster.owner(victim);
    let partial = observe(&cluster, 3, first)?.state.snapshot_of(&r);
    if let Some(partial) = partial {
        let context = partial.context(&r).cloned().unwrap_or_default();
        let whole =
            context.ranges().len() == 1 && context.min() == Some(1) && context.max() >= held;
        let mut attempt = o.clone();
        match attempt.state.readmit(partial) {
            Ok(diff) => {
                prop_assert!(whole, "readmitted from {:?}", context);
                attempt.check(&diff)?;
            }
            Err(e) => {
                prop_assert!(!whole, "refused a whole sub-state: {}", e);
                let is_incomplete = matches!(e, StateError::IncompleteSnapshot { .. });
                prop_assert!(is_incomplete, "{}", e);
                assert_same(
                    &attempt.state,
                    &o.state,
                    "a refused readmit changed the state",
                )?;
            }
        }
    }

    // The owner's sub-state is whole and reaches the purge counter.
    let snapshot = owner.snapshot_of(&r).expect("an owner holds itself");
    let diff = o.state.readmit(snapshot).map_err(refused)?;
    o.check(&diff)?;
    if cluster.counter(victim) > 0 {
        prop_assert_eq!(rows_of(&o.shown, &r), rows_of(&cluster.truth, &r));
        prop_assert_eq!(o.state.context(&r), owner.context(&r));
        prop_assert!(o.state.purged().all(|(id, _)| *id != r));
        // And from then on everything merges as usual.
        for s in &cluster.sent {
            o.merge(s.delta.clone())?;
        }
        prop_assert_eq!(&o.shown, &cluster.truth);
    }
    Ok(())
}

fn check_newer_incarnation_replaces_the_old_one(
    scenario: &Scenario,
    first: &[Piece],
    late: &[Piece],
    victim: usize,
    tracks: &[(usize, usize, M)],
    seed: u64,
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let old = cluster.id(victim);
    let new = ReplicaId::new(old.name().clone(), Incarnation::new(2, 3));
    let mut newer = Replayed::new(State::new(new.clone()));
    let mut born = Vec::new();
    for &(t, k, m) in tracks {
        let (_, change) = newer.state.track(TOPICS[t], KEYS[k], m).map_err(refused)?;
        let (delta, diff) = change.into_parts();
        newer.check(&diff)?;
        born.push(delta);
    }
    let new_rows = newer.shown.clone();

    let mut o = observe(&cluster, 0, first)?;
    let held = o.state.context(&old).is_some();
    for d in &born {
        o.merge(d.clone())?;
    }
    prop_assert!(rows_of(&o.shown, &old).is_empty());
    prop_assert!(o.state.context(&old).is_none());
    if held {
        let reason = o
            .state
            .purged()
            .find(|(id, _)| **id == old)
            .map(|(_, rec)| rec.reason);
        prop_assert_eq!(reason, Some(PurgeReason::Superseded));
    }
    prop_assert_eq!(rows_of(&o.shown, &new), new_rows.clone());

    let mut reverse = Replayed::observer(1);
    for d in &born {
        reverse.merge(d.clone())?;
    }
    for piece in first.iter().chain(late) {
        for d in piece.deltas(&cluster) {
            reverse.merge(d)?;
            prop_assert!(
                rows_of(&reverse.shown, &old).is_empty(),
                "{} shown after {}",
                old,
                new
            );
        }
    }
    for piece in late {
        for d in piece.deltas(&cluster) {
            o.merge(d)?;
            prop_assert!(rows_of(&o.shown, &old).is_empty(), "{} came back", old);
        }
    }
    prop_assert!(reverse.state.context(&old).is_none());
    assert_same(&o.state, &reverse.state, "new incarnation first or last")?;

    let mut both = Piece::All(seed).delta(&cluster);
    both.join(joined(born.clone()));
    let together = merged(2, [both])?;
    let together = view(&together)?;
    prop_assert!(rows_of(&together, &old).is_empty());
    prop_assert_eq!(rows_of(&together, &new), new_rows);

    let mut stale_self = cluster.owners[victim % cluster.len()].clone();
    let own = rows_of(&stale_self.shown, &old);
    for d in born {
        stale_self.merge(d)?;
    }
    prop_assert_eq!(stale_self.state.superseded_by(), Some(new.incarnation()));
    prop_assert_eq!(rows_of(&stale_self.shown, &old), own);
    prop_assert!(rows_of(&stale_self.shown, &new).is_empty());
    Ok(())
}

/// How far behind the lagging state of `catch_up_reaches_the_holder` is.
struct Lag {
    /// The replica it lags on.
    victim: usize,
    /// How many of the replica's deltas it merged, in order.
    prefix: usize,
    /// Later deltas of the replica it merged too, out of order.
    extras: Vec<usize>,
    /// Anything else it merged first.
    others: Vec<Piece>,
}

fn check_catch_up_reaches_the_holder(
    scenario: &Scenario,
    log: usize,
    lag: &Lag,
    more: &[Piece],
    owner_holds: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Lag {
        victim,
        prefix,
        extras,
        others,
    } = lag;
    let (victim, prefix) = (*victim, *prefix);
    let limits = match log {
        0 => Limits::default(),
        n => Limits::default().removal_log_len(n),
    };
    let cluster = Cluster::run_with(scenario, &limits)?;
    let r = victim % cluster.len();
    let id = cluster.id(r);
    let mine = cluster.sent_by(r);
    let j = prefix % (mine.len() + 1);

    let mut given: Vec<Delta<M>> = others.iter().flat_map(|p| p.deltas(&cluster)).collect();
    given.extend(mine[..j].iter().map(|s| s.delta.clone()));
    if mine.len() > j + 1 {
        let later = &mine[j + 1..];
        given.extend(extras.iter().map(|&e| later[e % later.len()].delta.clone()));
    }
    let observer = |name: usize| {
        Replayed::new(
            State::builder(observer_id(name))
                .limits(limits.clone())
                .build(),
        )
    };
    let mut o = observer(0);
    for d in &given {
        o.merge(d.clone())?;
    }
    let holder = if owner_holds {
        cluster.owner(r).clone()
    } else {
        let mut h = observer(1);
        let mut all = given.clone();
        all.extend(more.iter().flat_map(|p| p.deltas(&cluster)));
        for k in shuffle(all.len(), seed) {
            h.merge(all[k].clone())?;
        }
        h.state
    };
    let Some(target) = known(&holder, &id) else {
        prop_assert!(known(&o.state, &id).is_none());
        prop_assert!(holder.changes_since(&id, 0).is_none_or(|d| d.is_empty()));
        return Ok(());
    };
    let c = o.state.context(&id).map_or(0, |c| c.contiguous_prefix());
    match holder.changes_since(&id, c) {
        Some(d) => {
            o.merge(d)?;
        }
        None => {
            prop_assert!(
                log != 0,
                "with an unbounded log a holder can always serve a catch-up"
            );
            o.merge(holder.snapshot_of(&id).expect("the holder holds r"))?;
        }
    }
    prop_assert_eq!(known(&o.state, &id), Some(target));
    prop_assert_eq!(rows_of(&o.shown, &id), rows_of(&view(&holder)?, &id));
    Ok(())
}

fn check_membership_matches_crdts_orswot(
    scenario: &Scenario,
    schedule: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let cluster = Cluster::run(scenario)?;
    let n = cluster.len();
    let mut locals: Vec<Set> = vec![Set::new(); n];
    // Per actor, in order: (index in `sent`, the operations it made).
    let mut queues: Vec<Vec<(usize, Vec<SetOp>)>> = vec![Vec::new(); n];
    for (k, sent) in cluster.sent.iter().enumerate() {
        let actor = cluster.id(sent.from).name().to_string();
        let local = &mut locals[sent.from];
        let mut ops = Vec::new();
        for (p, _, meta) in &sent.removed {
            let member = (actor.clone(), p.1, *meta);
            let op = local.rm(member.clone(), local.contains(&member).derive_rm_ctx());
            local.apply(op.clone());
            ops.push(op);
        }
        for (p, _, meta) in &sent.added {
            let member = (actor.clone(), p.1, *meta);
            let op = local.add(member, local.read_ctx().derive_add_ctx(actor.clone()));
            local.apply(op.clone());
            ops.push(op);
        }
        queues[sent.from].push((k, ops));
    }
    let project = |view: &View| -> Result<BTreeSet<Member>, TestCaseError> {
        let members: BTreeSet<Member> = view
            .iter()
            .map(|(((r, c), _), shown)| (r.name().to_string(), *c, shown.meta))
            .collect();
        prop_assert_eq!(members.len(), view.len());
        Ok(members)
    };
    let members = |set: &Set| -> BTreeSet<Member> { set.read().val.into_iter().collect() };

    let mut oracle = Set::new();
    let mut o = Replayed::observer(0);
    let mut next = vec![0usize; n];
    let flush: Vec<usize> = (0..cluster.sent.len()).collect();
    for &pick in schedule.iter().chain(&flush) {
        let ready: Vec<usize> = (0..n).filter(|&a| next[a] < queues[a].len()).collect();
        if ready.is_empty() {
            break;
        }
        let actor = ready[pick % ready.len()];
        let (k, ops) = &queues[actor][next[actor]];
        next[actor] += 1;
        for op in ops {
            oracle.apply(op.clone());
        }
        o.merge(cluster.sent[*k].delta.clone())?;
        prop_assert_eq!(project(&o.shown)?, members(&oracle));
    }
    prop_assert_eq!(members(&oracle), project(&cluster.truth)?);

    let any_order = merged(
        1,
        shuffle_with_duplicates(cluster.sent.len(), seed)
            .into_iter()
            .map(|k| cluster.sent[k].delta.clone()),
    )?;
    prop_assert_eq!(project(&view(&any_order)?)?, members(&oracle));

    let mut by_state = Set::new();
    for a in shuffle(n, seed) {
        by_state.merge(locals[a].clone());
    }
    prop_assert_eq!(members(&by_state), members(&oracle));
    Ok(())
}

/// An Orswot member: (replica name, presence counter, meta).
type Member = (String, u64, M);
type Set = Orswot<Member, String>;
type SetOp = crdts::orswot::Op<Member, String>;

fn refused(e: StateError) -> TestCaseError {
    TestCaseError::fail(format!("refused: {e}"))
}

/// What an observer does in `diffs_replay_the_list`.
#[derive(Clone, Debug)]
enum ObserverOp {
    Merge(Piece),
    Hide(usize),
    Unhide(usize),
    Purge(usize),
    Readmit(usize),
}

fn observer_op() -> impl Strategy<Value = ObserverOp> {
    prop_oneof![
        12 => piece().prop_map(ObserverOp::Merge),
        1 => any::<usize>().prop_map(ObserverOp::Hide),
        1 => any::<usize>().prop_map(ObserverOp::Unhide),
        1 => any::<usize>().prop_map(ObserverOp::Purge),
        1 => any::<usize>().prop_map(ObserverOp::Readmit),
    ]
}
