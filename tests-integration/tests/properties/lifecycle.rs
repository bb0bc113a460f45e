//! Incarnations and catch-ups: a purged incarnation never returns, a
//! newer one replaces the old, a catch-up reaches what its holder has.

use super::*;

pub(super) fn check_purged_incarnation_never_returns(
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

pub(super) fn check_newer_incarnation_replaces_the_old_one(
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
pub(super) struct Lag {
    /// The replica it lags on.
    pub(super) victim: usize,
    /// How many of the replica's deltas it merged, in order.
    pub(super) prefix: usize,
    /// Later deltas of the replica it merged too, out of order.
    pub(super) extras: Vec<usize>,
    /// Anything else it merged first.
    pub(super) others: Vec<Piece>,
}

pub(super) fn check_catch_up_reaches_the_holder(
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
