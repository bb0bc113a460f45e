//! What must hold in every state the checker reaches, and the fingerprint
//! that tells states apart.

use super::*;

/// A fingerprint of a node's state: its whole replicated state (hidden
/// sub-states and contexts included), how it sees each replica, its next
/// deadline, some counters, and what it would say to each peer now (a
/// probe on a clone: pending changes, and a digest with every beat number,
/// age and counter it knows).
///
/// Some private state (outstanding requests, holders, the time a link was
/// reported lost) shows only indirectly. Two nodes that differ only there
/// share a fingerprint and the checker explores only the first one reached:
/// this prunes exploration, it never reports a false counterexample.
pub(super) fn print(node: &Node<M>, now: Duration) -> Arc<[u8]> {
    let state = node.state();
    let mut out = attendance::wire::encode(&state.snapshot()).expect("a snapshot encodes");
    let mut text = String::new();
    for info in state.replicas() {
        let _ = write!(
            text,
            "{:?}{:?}{}{}{};",
            info.id, info.context, info.hidden, info.presences, info.removals_kept
        );
    }
    for (id, record) in state.purged() {
        let _ = write!(text, "{id:?}{record:?};");
    }
    for (id, status) in node.replicas() {
        let _ = write!(text, "{id:?}{status:?};");
    }
    let m = node.metrics();
    let _ = write!(
        text,
        "{}|{:?}|{}|{}|{}|{}|{}",
        state.counter(),
        node.poll_timeout(),
        node.buffered(),
        m.catchups_requested,
        m.catchups_served,
        m.rejected,
        m.intervals_dropped,
    );
    out.extend_from_slice(text.as_bytes());
    let mut probe = node.clone();
    probe.leave(now);
    while let Some(t) = probe.poll_transmit() {
        out.extend_from_slice(format!("{:?}", t.destination).as_bytes());
        out.extend_from_slice(&t.bytes);
    }
    out.into()
}

/// Property 1: a replica whose context covers the counter at which an
/// owner untracked a presence does not list that presence.
pub(super) fn no_untracked_listed(model: &Protocol, w: &World) -> bool {
    for node in w.slots.iter().filter_map(|s| s.node.as_ref()) {
        let state = node.state();
        let covered =
            |id: &PresenceId, at: u64| state.context(id.replica()).is_some_and(|c| c.contains(at));
        if w.untracked
            .iter()
            .any(|(id, at)| id.replica() != node.id() && covered(id, *at))
        {
            model
                .coverage
                .untracks_known
                .fetch_add(1, Ordering::Relaxed);
        }
        for (_, _, id, _) in rows(state) {
            if w.untracked
                .iter()
                .any(|(gone, at)| *gone == id && covered(gone, *at))
            {
                return false;
            }
        }
    }
    true
}

/// Property 2: once nothing is in flight and every live replica has used
/// its firings, two live replicas that see the same replicas up (counting
/// themselves) list the same presences.
pub(super) fn quiet_agreeing_replicas_converge(model: &Protocol, w: &World) -> bool {
    let quiet = w.net.is_empty()
        && w.slots
            .iter()
            .all(|s| s.node.is_none() || s.fires_left == 0);
    if !quiet {
        return true;
    }
    let views: Vec<(BTreeSet<ReplicaId>, BTreeSet<Row>)> = w
        .slots
        .iter()
        .filter_map(|s| s.node.as_ref())
        .map(|node| {
            let mut up: BTreeSet<ReplicaId> = node
                .replicas()
                .filter(|(_, s)| *s == ReplicaStatus::Up)
                .map(|(id, _)| id.clone())
                .collect();
            up.insert(node.id().clone());
            (up, rows(node.state()))
        })
        .collect();
    for (i, (up_a, rows_a)) in views.iter().enumerate() {
        for (up_b, rows_b) in &views[i + 1..] {
            if up_a == up_b {
                model.coverage.quiet_pairs.fetch_add(1, Ordering::Relaxed);
                if rows_a != rows_b {
                    return false;
                }
            }
        }
    }
    true
}
