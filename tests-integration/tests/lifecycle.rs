//! Scenarios of replicas coming and going, limits, and catch-ups.

use attendance::{
    Delta, Incarnation, Limits, PurgeReason, ReplicaId, ReplicaName, State, StateError,
};

fn replica(name: &str, started_ms: u64) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).unwrap(),
        Incarnation::new(started_ms, 7),
    )
}

fn state(name: &str) -> State<u32> {
    State::new(replica(name, 1))
}

/// `(key, presence counter, meta)` of every visible presence on `topic`.
fn rows(s: &State<u32>, topic: &str) -> Vec<(String, u64, u32)> {
    s.list(topic)
        .into_iter()
        .flat_map(|group| {
            group
                .presences
                .into_iter()
                .map(move |p| (group.key.to_string(), p.id.as_dot().counter(), *p.meta))
        })
        .collect()
}

#[test]
fn a_hidden_replica_leaves_and_returns_with_what_it_holds_now() {
    let mut a = state("a");
    let mut b = state("b");
    let (alice, c1) = a.track("t", "alice", 1).unwrap();
    let (_, c2) = a.track("t", "bob", 2).unwrap();
    b.merge(c1.into_delta()).unwrap();
    b.merge(c2.into_delta()).unwrap();

    let diff = b.hide(a.replica()).unwrap();
    assert_eq!(diff.leaves().count(), 2);
    assert_eq!(b.count("t"), 0);
    assert!(b.list("t").is_empty());

    // While hidden, a's changes still merge, silently.
    let gone = a.untrack(&alice).unwrap();
    assert!(b.merge(gone.into_delta()).unwrap().is_empty());

    // Back: only bob joins; alice, dropped meanwhile, does not flash back.
    let diff = b.unhide(a.replica()).unwrap();
    let joined: Vec<_> = diff.joins().map(|(_, p)| p.key().to_string()).collect();
    assert_eq!(joined, ["bob"]);
    assert_eq!(rows(&b, "t"), rows(&a, "t"));
}

#[test]
fn a_purged_incarnation_ignores_stale_data_until_readmitted_whole() {
    let mut a = state("a");
    let mut b = state("b");
    let (_, c1) = a.track("t", "alice", 1).unwrap();
    let early = c1.into_delta();
    b.merge(early.clone()).unwrap();
    let (_, c2) = a.track("t", "bob", 2).unwrap();
    b.merge(c2.into_delta()).unwrap();

    let diff = b.purge(a.replica(), PurgeReason::Permdown).unwrap();
    assert_eq!(diff.leaves().count(), 2);
    assert_eq!(b.purged().count(), 1);

    // Stale deltas and snapshots of the purged incarnation change nothing.
    assert!(b.merge(early).unwrap().is_empty());
    assert!(b.merge(a.snapshot()).unwrap().is_empty());
    assert_eq!(b.count("t"), 0);

    // A partial catch-up cannot re-admit it; a whole sub-state can.
    let partial = a.changes_since(a.replica(), 1).unwrap();
    assert!(matches!(
        b.readmit(partial),
        Err(StateError::IncompleteSnapshot { .. })
    ));
    assert_eq!(b.count("t"), 0);
    let diff = b.readmit(a.snapshot_of(a.replica()).unwrap()).unwrap();
    assert_eq!(diff.joins().count(), 2);
    assert_eq!(rows(&b, "t"), rows(&a, "t"));
}

#[test]
fn a_replica_that_left_never_comes_back() {
    let mut a = state("a");
    let mut b = state("b");
    let (_, c1) = a.track("t", "alice", 1).unwrap();
    b.merge(c1.into_delta()).unwrap();
    b.purge(a.replica(), PurgeReason::Left).unwrap();
    let snapshot = a.snapshot_of(a.replica()).unwrap();
    assert_eq!(
        b.readmit(snapshot.clone()),
        Err(StateError::NotReadmittable(a.replica().clone()))
    );
    assert!(b.merge(snapshot).unwrap().is_empty());
    assert_eq!(b.count("t"), 0);
}

#[test]
fn a_newer_incarnation_replaces_the_older_one() {
    let mut old = State::<u32>::new(replica("a", 1));
    let mut new = State::<u32>::new(replica("a", 2));
    let mut b = state("b");
    let (_, c1) = old.track("t", "alice", 1).unwrap();
    let stale = c1.into_delta();
    b.merge(stale.clone()).unwrap();
    let (_, c2) = new.track("t", "bob", 2).unwrap();

    let diff = b.merge(c2.into_delta()).unwrap();
    assert_eq!(
        diff.leaves().count(),
        1,
        "the old incarnation's alice leaves"
    );
    assert_eq!(diff.joins().count(), 1, "the new incarnation's bob joins");
    assert!(b.merge(stale).unwrap().is_empty());
    assert_eq!(rows(&b, "t"), [("bob".to_string(), 1, 2)]);
}

#[test]
fn a_replica_that_sees_its_name_reborn_reincarnates_above_it() {
    let mut me = State::<u32>::new(replica("a", 5));
    let (alice, _) = me.track("t", "alice", 1).unwrap();
    let mut twin = State::<u32>::new(replica("a", 9));
    let (_, c) = twin.track("t", "zed", 9).unwrap();
    assert!(me.merge(c.into_delta()).unwrap().is_empty());
    let seen = me.superseded_by().unwrap();
    assert_eq!(seen, Incarnation::new(9, 7));

    assert!(matches!(
        me.reincarnate(Incarnation::new(9, 7)),
        Err(StateError::StaleIncarnation { .. })
    ));
    let before = rows(&me, "t");
    let moved = me.reincarnate(Incarnation::new(10, 1)).unwrap();
    assert_eq!(moved.renamed.len(), 1);
    assert_eq!(moved.renamed[0].0, alice);
    assert_eq!(me.replica().incarnation(), Incarnation::new(10, 1));
    assert_eq!(me.superseded_by(), None);
    // Local lists keep their content; only the ids moved.
    let after: Vec<_> = rows(&me, "t").into_iter().map(|(k, _, m)| (k, m)).collect();
    let before: Vec<_> = before.into_iter().map(|(k, _, m)| (k, m)).collect();
    assert_eq!(after, before);

    // Peers take the new incarnation's whole sub-state.
    let mut b = state("b");
    b.merge(moved.delta).unwrap();
    assert_eq!(b.count("t"), 1);
}

#[test]
fn limits_refuse_with_typed_errors_and_change_nothing() {
    let limits = Limits::default()
        .max_presences_per_replica(2)
        .max_topic_len(8)
        .max_key_len(8)
        .max_meta_bytes(4);
    let mut a: State<String> = State::builder(replica("a", 1))
        .limits(limits.clone())
        .build();
    assert!(matches!(
        a.track("", "k", String::new()),
        Err(StateError::InvalidTopic { .. })
    ));
    assert!(matches!(
        a.track("a-long-topic", "k", String::new()),
        Err(StateError::InvalidTopic { .. })
    ));
    assert!(matches!(
        a.track("t", "a-long-key", String::new()),
        Err(StateError::InvalidKey { .. })
    ));
    assert!(matches!(
        a.track("t", "k", "too long".into()),
        Err(StateError::MetaTooLarge { .. })
    ));
    a.track("t", "k1", "x".into()).unwrap();
    a.track("t", "k2", "y".into()).unwrap();
    assert!(matches!(
        a.track("t", "k3", "z".into()),
        Err(StateError::TooManyPresences { .. })
    ));
    assert_eq!(a.count("t"), 2);
    assert_eq!(a.counter(), 2);

    // A peer's delta that would break the receiver's limit is refused whole.
    let mut big: State<String> = State::new(replica("big", 1));
    let mut batch = Delta::default();
    for i in 0..3 {
        let (_, c) = big.track("t", &format!("k{i}"), "v".into()).unwrap();
        batch.join(c.into_delta());
    }
    let mut b: State<String> = State::builder(replica("b", 1)).limits(limits).build();
    let before = b.context(big.replica()).cloned();
    assert!(matches!(
        b.merge(batch),
        Err(StateError::TooManyPresences { .. })
    ));
    assert_eq!(b.count("t"), 0);
    assert_eq!(b.context(big.replica()).cloned(), before);
}

#[test]
fn catch_ups_reach_back_as_far_as_the_removal_log() {
    let limits = Limits::default().removal_log_len(2);
    let mut a: State<u32> = State::builder(replica("a", 1)).limits(limits).build();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(a.track("t", &format!("k{i}"), i).unwrap().0);
    }
    let mut behind = state("b");
    behind.merge(a.snapshot_of(a.replica()).unwrap()).unwrap();
    a.untrack(&ids[0]).unwrap();
    a.untrack(&ids[1]).unwrap();
    let mut recent = state("c");
    recent.merge(a.snapshot_of(a.replica()).unwrap()).unwrap();
    a.untrack(&ids[2]).unwrap();
    a.untrack(&ids[3]).unwrap();

    // Four removals, two kept: counter 6 is out of reach, counter 8 is not.
    assert!(a.changes_since(a.replica(), 6).is_none());
    let catch_up = a.changes_since(a.replica(), 8).unwrap();
    let diff = recent.merge(catch_up).unwrap();
    assert_eq!(diff.leaves().count(), 2);
    assert_eq!(rows(&recent, "t"), rows(&a, "t"));
    assert_eq!(recent.context(a.replica()), a.context(a.replica()));

    // Whoever is behind the log gets the whole sub-state instead.
    behind.merge(a.snapshot_of(a.replica()).unwrap()).unwrap();
    assert_eq!(rows(&behind, "t"), rows(&a, "t"));
    // And a holder that caught up serves catch-ups in turn.
    assert!(recent.changes_since(a.replica(), 8).is_some());
}

#[test]
fn purging_a_newer_incarnation_not_held_replaces_the_older_one() {
    let mut old = State::<u32>::new(replica("a", 1));
    let mut b = state("b");
    let (alice, c1) = old.track("t", "alice", 1).unwrap();
    b.merge(c1.into_delta()).unwrap();
    let diff = b.purge(&replica("a", 2), PurgeReason::Left).unwrap();
    assert_eq!(diff.leaves().count(), 1, "a@1 is replaced by the gone a@2");
    assert_eq!(b.count("t"), 0);
    // Later data of the older incarnation changes nothing.
    assert!(
        b.merge(old.untrack(&alice).unwrap().into_delta())
            .unwrap()
            .is_empty()
    );
    assert!(b.merge(old.snapshot()).unwrap().is_empty());
    assert_eq!(b.count("t"), 0);
}

#[test]
fn a_replaced_incarnation_cannot_be_readmitted() {
    let mut old = State::<u32>::new(replica("a", 1));
    let mut new = State::<u32>::new(replica("a", 2));
    let mut b = state("b");
    let (_, c1) = old.track("t", "alice", 1).unwrap();
    b.merge(c1.into_delta()).unwrap();
    b.purge(old.replica(), PurgeReason::Permdown).unwrap();
    let (_, c2) = new.track("t", "bob", 2).unwrap();
    b.merge(c2.into_delta()).unwrap();
    let snapshot = old.snapshot_of(old.replica()).unwrap();
    assert_eq!(
        b.readmit(snapshot),
        Err(StateError::NotReadmittable(old.replica().clone()))
    );
    assert_eq!(b.purged().count(), 1, "the purge record stays");
    assert_eq!(rows(&b, "t"), [("bob".to_string(), 1, 2)]);
}

#[test]
fn a_new_incarnation_fits_under_the_replica_limit_it_replaces_within() {
    let limits = Limits::default().max_replicas(2);
    let mut b: State<u32> = State::builder(replica("b", 1)).limits(limits).build();
    let mut old = State::<u32>::new(replica("a", 1));
    let mut new = State::<u32>::new(replica("a", 2));
    b.merge(old.track("t", "alice", 1).unwrap().1.into_delta())
        .unwrap();
    let diff = b
        .merge(new.track("t", "bob", 2).unwrap().1.into_delta())
        .unwrap();
    assert_eq!(diff.joins().count(), 1);
    assert_eq!(diff.leaves().count(), 1);
    assert_eq!(b.replicas().count(), 2);
}
