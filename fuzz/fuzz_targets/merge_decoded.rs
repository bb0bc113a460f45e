//! Two arbitrary inputs, decoded and merged into a state: nothing panics, a
//! refused merge changes nothing, merging twice changes nothing the second
//! time, and the diffs replay to the list.
#![no_main]

use std::collections::BTreeSet;

use attendance::{Diff, Incarnation, Key, PresenceId, ReplicaId, ReplicaName, State, Topic, wire};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Meta {
    online_at: u64,
    device: String,
}

type Row = (String, String, String, u64, Meta);

fn rows(state: &State<Meta>) -> BTreeSet<Row> {
    let mut rows = BTreeSet::new();
    for (topic, count) in state.topics() {
        let listed = state.list(topic.as_str());
        assert_eq!(
            listed.iter().map(|k| k.presences.len()).sum::<usize>(),
            count
        );
        for group in listed {
            for p in group.presences {
                rows.insert((
                    topic.to_string(),
                    group.key.to_string(),
                    p.id.to_string(),
                    p.version,
                    p.meta.clone(),
                ));
            }
        }
    }
    assert_eq!(rows.len(), state.len());
    rows
}

fn row(topic: &Topic, key: &Key, id: &PresenceId, version: u64, meta: &Meta) -> Row {
    (
        topic.to_string(),
        key.to_string(),
        id.to_string(),
        version,
        meta.clone(),
    )
}

fn replay(model: &mut BTreeSet<Row>, diff: &Diff<Meta>) {
    for (topic, d) in diff.iter() {
        for p in d.leaves() {
            let gone = row(topic, p.key(), p.id(), p.version(), p.meta());
            assert!(model.remove(&gone), "leave of a presence not listed");
        }
        for u in d.updates() {
            let old = row(topic, u.key(), u.id(), u.old_version(), u.old_meta());
            assert!(model.remove(&old), "update of a presence not listed");
            model.insert(row(topic, u.key(), u.id(), u.version(), u.meta()));
        }
        for p in d.joins() {
            let new = row(topic, p.key(), p.id(), p.version(), p.meta());
            assert!(model.insert(new), "join of a presence already listed");
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&split, rest)) = bytes.split_first() else {
        return;
    };
    let split = (split as usize * rest.len()) / 255;
    let (a, b) = rest.split_at(split.min(rest.len()));
    let id = ReplicaId::new(ReplicaName::new("fuzz").unwrap(), Incarnation::new(1, 1));
    let mut state: State<Meta> = State::new(id);
    let mut model = BTreeSet::new();
    for input in [a, b, a] {
        let Ok(delta) = wire::decode::<Meta>(input) else {
            continue;
        };
        let before = rows(&state);
        match state.merge(delta.clone()) {
            Ok(diff) => {
                replay(&mut model, &diff);
                assert_eq!(model, rows(&state));
                let again = state.merge(delta).expect("a merged delta merges again");
                assert!(again.is_empty(), "merging twice changed something");
            }
            Err(_) => assert_eq!(before, rows(&state), "a refused merge changed the state"),
        }
    }
});
