use attendance::{Incarnation, ReplicaId, ReplicaName, State};

fn id(name: &str) -> ReplicaId {
    ReplicaId::new(ReplicaName::new(name).unwrap(), Incarnation::new(1, 1))
}

#[test]
fn smoke() {
    let mut a: State<u32> = State::new(id("a"));
    let mut b: State<u32> = State::new(id("b"));
    let (p1, c1) = a.track("t", "k1", 1).unwrap();
    let (_p2, c2) = a.track("t", "k2", 2).unwrap();
    let c3 = a.update(&p1, 10).unwrap();
    let c4 = a.untrack(&p1).unwrap();
    // out of order
    let d = b.merge(c3.into_delta()).unwrap();
    println!("{d:?}");
    assert_eq!(b.count("t"), 1);
    let d = b.merge(c1.into_delta()).unwrap();
    assert!(d.is_empty(), "{d:?}");
    let d = b.merge(c4.into_delta()).unwrap();
    assert_eq!(d.leaves().count(), 1);
    let d = b.merge(c2.into_delta()).unwrap();
    assert_eq!(d.joins().count(), 1);
    assert_eq!(b.count("t"), 1);
    assert_eq!(a.count("t"), 1);
    let snap = a.snapshot();
    let mut c: State<u32> = State::new(id("c"));
    c.merge(snap.clone()).unwrap();
    assert_eq!(c.count("t"), 1);
    assert!(b.merge(snap).unwrap().is_empty());
    let since = a.changes_since(&id("a"), 1).unwrap();
    println!("{since:?}");
}
