//! The wire format: round trips, canonical bytes, golden fixtures, and
//! refusal of bad input.
//!
//! Each property prints its RNG seed first; `PROPTEST_RNG_SEED=<seed>`
//! replays a run, and cargo shows the seed next to a failing case. `ATTENDANCE_BLESS=1 cargo test --test wire` rewrites the
//! golden fixtures after a deliberate format change.

mod common;

use std::collections::BTreeMap;

use attendance::wire::{self, WireError};
use attendance::{Delta, Incarnation, PurgeReason, ReplicaId, ReplicaName, State};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Meta {
    online_at: u64,
    device: String,
}

fn meta(i: u64) -> Meta {
    Meta {
        online_at: 1_764_000_000_000 + i,
        device: ["web", "ios", "android"][(i % 3) as usize].to_string(),
    }
}

fn replica(name: &str, started_ms: u64) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).unwrap(),
        Incarnation::new(started_ms, 0x5eed_1234),
    )
}

fn state(name: &str) -> State<Meta> {
    State::builder(replica(name, 1_764_000_000_000))
        .first_counter((1 << 32) + 1)
        .build()
}

/// Named deltas built the same way every time; the fixtures hold their bytes.
fn samples() -> Vec<(&'static str, Delta<Meta>)> {
    let mut a = state("node-a");
    let mut b = state("node-b");
    let (p1, join) = a.track("room:1", "user:1", meta(1)).unwrap();
    let (_, join2) = a.track("room:2", "user:2", meta(2)).unwrap();
    let update = a.update(&p1, meta(10)).unwrap();
    let (p3, _) = a.track("room:1", "user:3", meta(3)).unwrap();
    let leave = a.untrack(&p3).unwrap();
    let (q1, _) = b.track("room:1", "user:1", meta(4)).unwrap();
    let (q2, _) = b.track("room:1", "user:5", meta(5)).unwrap();
    let many = b.untrack_many(&[q1, q2]).unwrap();
    let mut batch = join.delta().clone();
    batch.join(join2.delta().clone());
    batch.join(update.delta().clone());
    let mut observer = state("node-c");
    observer.merge(a.snapshot()).unwrap();
    observer.merge(b.snapshot()).unwrap();
    let catch_up = a.changes_since(a.replica(), (1 << 32) + 1).unwrap();
    vec![
        ("join", join.into_delta()),
        ("update", update.into_delta()),
        ("leave", leave.into_delta()),
        ("untrack_many", many.into_delta()),
        ("batch", batch),
        ("catch_up", catch_up),
        ("snapshot", observer.snapshot()),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wire_v2.txt");

#[test]
fn golden_fixtures_match_and_decode() {
    let samples = samples();
    if std::env::var_os("ATTENDANCE_BLESS").is_some() {
        let text: String = samples
            .iter()
            .map(|(name, delta)| format!("{name} {}\n", hex(&wire::encode(delta).unwrap())))
            .collect();
        std::fs::write(FIXTURES, text).unwrap();
    }
    let text = std::fs::read_to_string(FIXTURES).unwrap();
    let fixtures: BTreeMap<&str, Vec<u8>> = text
        .lines()
        .map(|line| {
            let (name, bytes) = line.split_once(' ').unwrap();
            (name, unhex(bytes))
        })
        .collect();
    assert_eq!(fixtures.len(), samples.len());
    for (name, delta) in samples {
        let golden = &fixtures[name];
        assert_eq!(
            &wire::encode(&delta).unwrap(),
            golden,
            "{name} encodes differently"
        );
        assert_eq!(
            wire::decode::<Meta>(golden).unwrap(),
            delta,
            "{name} decodes differently"
        );
    }
}

#[test]
fn a_lone_join_costs_at_most_sixteen_bytes_beyond_its_payload_and_replica_id() {
    let mut a = state("node-a");
    let (_, join) = a.track("room:42", "user:123456", meta(7)).unwrap();
    let bytes = wire::encode(join.delta()).unwrap().len();
    let payload = rmp_serde::to_vec(&("room:42", "user:123456", meta(7)))
        .unwrap()
        .len();
    let replica_id = rmp_serde::to_vec(a.replica()).unwrap().len();
    assert!(
        bytes <= payload + replica_id + 16,
        "{bytes} > {payload} + {replica_id} + 16"
    );
}

#[test]
fn every_truncation_is_refused() {
    for (name, delta) in samples() {
        let bytes = wire::encode(&delta).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                wire::decode::<Meta>(&bytes[..cut]).is_err(),
                "{name} cut at {cut} decoded"
            );
        }
    }
}

#[test]
fn wrong_version_kind_size_and_trailing_bytes_are_refused() {
    let (_, delta) = samples().remove(0);
    let bytes = wire::encode(&delta).unwrap();
    let mut wrong = bytes.clone();
    wrong[0] = wire::VERSION + 1;
    assert_eq!(
        wire::decode::<Meta>(&wrong),
        Err(WireError::UnknownVersion(wire::VERSION + 1))
    );
    let mut wrong = bytes.clone();
    wrong[1] = 0xee;
    assert_eq!(
        wire::decode::<Meta>(&wrong),
        Err(WireError::UnknownKind(0xee))
    );
    assert_eq!(
        wire::decode_with_limit::<Meta>(&bytes, bytes.len() - 1),
        Err(WireError::Oversized {
            len: bytes.len(),
            max: bytes.len() - 1
        })
    );
    let mut long = bytes.clone();
    long.push(0xc0);
    assert_eq!(
        wire::decode::<Meta>(&long),
        Err(WireError::TrailingBytes(1))
    );
    assert!(wire::decode::<Meta>(&[]).is_err());
}

#[test]
fn a_hostile_count_does_not_allocate() {
    // A part list that claims four billion parts in a few bytes.
    let bytes = [wire::VERSION, 1, 0xdd, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(wire::decode::<Meta>(&bytes), Err(WireError::Truncated));
}

/// Metas of another application version: the entry is dropped and counted,
/// its counter still advances the context, so it is not asked for again.
#[test]
fn undecodable_metas_advance_the_context_and_are_counted() {
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct OtherMeta(String, String, String);

    let mut a = state("node-a");
    let (_, join) = a.track("room:1", "user:1", meta(1)).unwrap();
    let bytes = wire::encode(join.delta()).unwrap();
    let delta = wire::decode::<OtherMeta>(&bytes).unwrap();
    assert_eq!(delta.entry_count(), 0);
    let mut other: State<OtherMeta> = State::new(replica("node-b", 1));
    let diff = other.merge(delta).unwrap();
    assert_eq!(diff.undecodable(), 1);
    assert!(diff.is_empty());
    assert_eq!(other.context(a.replica()).unwrap().max(), a.counter());
}

#[derive(Clone, Debug)]
enum Op {
    Track(u8, u8),
    Update(usize, u8),
    Untrack(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..6).prop_map(|(t, k)| Op::Track(t, k)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, m)| Op::Update(i, m)),
        any::<usize>().prop_map(Op::Untrack),
    ]
}

/// Runs `ops` on replica `name` and returns its state and the deltas made.
fn history(name: &str, ops: &[Op]) -> (State<Meta>, Vec<Delta<Meta>>) {
    let mut s = state(name);
    let mut live = Vec::new();
    let mut deltas = Vec::new();
    for op in ops {
        let change = match *op {
            Op::Track(t, k) => {
                let (id, change) = s
                    .track(
                        &format!("room:{t}"),
                        &format!("user:{k}"),
                        meta(u64::from(k)),
                    )
                    .unwrap();
                live.push(id);
                change
            }
            Op::Update(i, m) if !live.is_empty() => {
                s.update(&live[i % live.len()], meta(u64::from(m))).unwrap()
            }
            Op::Untrack(i) if !live.is_empty() => s.untrack(&live.remove(i % live.len())).unwrap(),
            _ => continue,
        };
        deltas.push(change.into_delta());
    }
    (s, deltas)
}

proptest! {
    #![proptest_config(common::config())]

    #[test]
    fn wire_round_trip_is_identity(
        a in prop::collection::vec(op(), 0..24),
        b in prop::collection::vec(op(), 0..24),
        since in 0u64..30,
    ) {
        let (sa, da) = history("node-a", &a);
        let (sb, db) = history("node-b", &b);
        let mut all: Vec<Delta<Meta>> = da.into_iter().chain(db).collect();
        all.push(sa.snapshot());
        let mut observer = state("node-c");
        observer.merge(sa.snapshot()).unwrap();
        observer.merge(sb.snapshot()).unwrap();
        observer.purge(sb.replica(), PurgeReason::Permdown).unwrap();
        all.push(observer.snapshot());
        if let Some(d) = sa.changes_since(sa.replica(), (1 << 32) + since) {
            all.push(d);
        }
        let mut joined = Delta::default();
        for d in &all {
            joined.join(d.clone());
        }
        all.push(joined);
        for d in all {
            let bytes = wire::encode(&d).unwrap();
            prop_assert_eq!(wire::decode::<Meta>(&bytes).unwrap(), d);
        }
    }

    #[test]
    fn equal_states_encode_to_equal_bytes(
        a in prop::collection::vec(op(), 0..24),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..48),
    ) {
        let (sa, deltas) = history("node-a", &a);
        let mut first = state("node-x");
        let mut second = state("node-y");
        for d in &deltas {
            first.merge(d.clone()).unwrap();
        }
        // The same deltas in another order, some twice.
        for i in &order {
            if !deltas.is_empty() {
                second.merge(deltas[i.index(deltas.len())].clone()).unwrap();
            }
        }
        for d in deltas.iter().rev() {
            second.merge(d.clone()).unwrap();
        }
        prop_assert_eq!(first.context(sa.replica()), second.context(sa.replica()));
        // The observers differ only in their own (empty) sub-states.
        let bytes = |s: &State<Meta>| s.snapshot_of(sa.replica()).map(|d| wire::encode(&d).unwrap());
        prop_assert_eq!(bytes(&first), bytes(&second));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = wire::decode::<Meta>(&bytes);
        let mut framed = vec![wire::VERSION, 1];
        framed.extend_from_slice(&bytes);
        let _ = wire::decode::<Meta>(&framed);
    }
}
