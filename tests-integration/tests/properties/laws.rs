//! The join laws: commutative, associative, idempotent; deltas that
//! say what their mutation did and join like the merges of their parts;
//! equal contexts meaning equal sub-states.

use super::*;

pub(super) fn check_merge_is_commutative(
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

pub(super) fn check_merge_is_associative(
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

pub(super) fn check_merge_is_idempotent(
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

pub(super) fn check_delta_mutator_is_correct(scenario: &Scenario) -> Result<(), TestCaseError> {
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

pub(super) fn check_joined_deltas_merge_like_their_parts(
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

pub(super) fn check_equal_context_means_equal_substate(
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
