use super::*;
use crate::{Incarnation, ReplicaName};

fn shard() -> Shard<String> {
    let name = ReplicaName::new("r").expect("a valid name");
    let id = ReplicaId::new(name, Incarnation::new(1, 1));
    let common = Common::new(
        id.clone(),
        Limits::default(),
        16,
        (1_000, 64 * 1024),
        Arc::new(LockStats::default()),
    );
    Shard::new(id, Arc::new(common))
}

/// The counters the changes of `list` carry.
fn counters(list: &Pending<String>) -> Vec<u64> {
    let mut all: Vec<u64> = list
        .iter()
        .flat_map(|(_, delta)| delta.parts.iter().flat_map(|p| p.context.iter()))
        .collect();
    all.sort_unstable();
    all
}

#[test]
fn a_broadcast_takes_its_changes_and_hands_the_shard_the_spare_list() {
    let shard = shard();
    for key in ["a", "b", "c"] {
        shard.track("doc", key, String::new()).expect("tracks");
    }
    let (ended, _) = shard.common.cut();
    for key in ["d", "e"] {
        shard.track("doc", key, String::new()).expect("tracks");
    }
    let spare: Pending<String> = Vec::with_capacity(100);
    let taken = Shard::take_pending(&mut shard.lock(), ended, spare);
    assert_eq!(counters(&taken), [1, 2, 3], "the ended broadcast's changes");
    let s = shard.lock();
    assert_eq!(counters(&s.pending), [4, 5], "the next one's stay");
    assert!(
        s.pending.capacity() >= 100,
        "the shard records into the spare list, grown as it was"
    );
}
