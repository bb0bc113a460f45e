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
#[path = "properties/convergence.rs"]
mod convergence;
#[path = "properties/laws.rs"]
mod laws;
#[path = "properties/lifecycle.rs"]
mod lifecycle;
#[path = "properties/orswot.rs"]
mod orswot;

use std::collections::BTreeSet;

use attendance::{Delta, Incarnation, Limits, PurgeReason, ReplicaId, State, StateError};
use common::*;
use convergence::*;
use crdts::{CmRDT, CvRDT, Orswot};
use laws::*;
use lifecycle::*;
use orswot::*;
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

fn refused(e: StateError) -> TestCaseError {
    TestCaseError::fail(format!("refused: {e}"))
}
