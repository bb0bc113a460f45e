//! Membership against `crdts::Orswot` fed the same history.

use super::*;

pub(super) fn check_membership_matches_crdts_orswot(
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
