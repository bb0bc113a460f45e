//! Convergence: replicas reach the ground truth, diffs replay the list,
//! in-order delivery shows one version per presence.

use super::*;

pub(super) fn check_replicas_converge_to_the_ground_truth(
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

pub(super) fn check_diffs_replay_the_list(
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

pub(super) fn check_in_order_delivery_shows_one_version_per_presence(
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

/// What an observer does in `diffs_replay_the_list`.
#[derive(Clone, Debug)]
pub(super) enum ObserverOp {
    Merge(Piece),
    Hide(usize),
    Unhide(usize),
    Purge(usize),
    Readmit(usize),
}

pub(super) fn observer_op() -> impl Strategy<Value = ObserverOp> {
    prop_oneof![
        12 => piece().prop_map(ObserverOp::Merge),
        1 => any::<usize>().prop_map(ObserverOp::Hide),
        1 => any::<usize>().prop_map(ObserverOp::Unhide),
        1 => any::<usize>().prop_map(ObserverOp::Purge),
        1 => any::<usize>().prop_map(ObserverOp::Readmit),
    ]
}
