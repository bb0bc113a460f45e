//! Presences in Phoenix's JSON shapes: `{key: {"metas": [...], ...}}` for
//! `presence_state` and `{"joins": ..., "leaves": ...}` for
//! `presence_diff`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use attendance::{Key, PresenceId, VersionRef};
use serde::Serialize;
use serde_json::{Map, Value};

use axum::extract::ws::Utf8Bytes;

use crate::frame;
use crate::policy::{Enrich, Object};

/// A meta as JSON, with its `phx_ref` (and `phx_ref_prev` after an
/// update) in it. Rendered once per version and shared by every frame
/// that shows that version.
pub(crate) type MetaJson = Arc<Value>;

/// A topic's presences as a `presence_state` shows them, by key.
pub(crate) type List = BTreeMap<Key, Vec<(PresenceId, MetaJson)>>;

/// Renders a meta. One that serializes to a JSON object gets the refs
/// added to it; any other value is put under `"meta"`, because phoenix.js
/// needs an object to hold `phx_ref`.
pub(crate) fn meta_json<M: Serialize>(
    meta: &M,
    phx_ref: VersionRef,
    phx_ref_prev: Option<VersionRef>,
) -> MetaJson {
    let mut object = match serde_json::to_value(meta) {
        Ok(Value::Object(object)) => object,
        Ok(other) => Map::from_iter([("meta".to_string(), other)]),
        Err(e) => {
            tracing::warn!(error = %e, "a meta has no JSON form; sent without fields");
            Map::new()
        }
    };
    object.insert("phx_ref".into(), Value::String(phx_ref.to_string()));
    // Set by this server only, never taken from a client's meta.
    match phx_ref_prev {
        Some(prev) => object.insert("phx_ref_prev".into(), Value::String(prev.to_string())),
        None => object.remove("phx_ref_prev"),
    };
    Arc::new(Value::Object(object))
}

/// One key's entry: its metas and the enrichment fields beside them.
#[derive(Serialize)]
struct Entry<'a> {
    metas: Vec<&'a Value>,
    #[serde(flatten)]
    extra: Option<&'a Object>,
}

/// Metas grouped by key, borrowed from a list or a diff.
pub(crate) type Groups<'a> = BTreeMap<&'a str, Vec<&'a Value>>;

fn entries<'a>(
    groups: Groups<'a>,
    extra: &'a HashMap<String, Object>,
) -> BTreeMap<&'a str, Entry<'a>> {
    groups
        .into_iter()
        .map(|(key, metas)| {
            let extra = extra.get(key);
            (key, Entry { metas, extra })
        })
        .collect()
}

/// Asks the enrichment hook once for every key of `groups`, dropping
/// any `metas` field it returns so it cannot hide the real ones.
fn enrich_all<'a>(
    enrich: &dyn Enrich,
    topic: &str,
    keys: impl Iterator<Item = &'a str>,
) -> HashMap<String, Object> {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return HashMap::new();
    }
    let mut extra = enrich.enrich(topic, &keys);
    for fields in extra.values_mut() {
        fields.remove("metas");
    }
    extra
}

/// The `presence_state` frame of `list` for the join `join_ref`: the
/// whole topic, sent with the join ref and a null ref.
pub(crate) fn state_frame(
    list: &List,
    topic: &str,
    join_ref: &str,
    enrich: &dyn Enrich,
) -> Utf8Bytes {
    let groups: Groups<'_> = list
        .iter()
        .map(|(key, metas)| (key.as_str(), metas.iter().map(|(_, m)| &**m).collect()))
        .collect();
    let extra = enrich_all(enrich, topic, groups.keys().copied());
    let payload = entries(groups, &extra);
    frame::encode(Some(join_ref), None, topic, "presence_state", &payload)
}

/// The `presence_diff` frame of one change: a broadcast, both refs null.
pub(crate) fn diff_frame(
    joins: Groups<'_>,
    leaves: Groups<'_>,
    topic: &str,
    enrich: &dyn Enrich,
) -> Utf8Bytes {
    let extra = enrich_all(enrich, topic, joins.keys().chain(leaves.keys()).copied());
    #[derive(Serialize)]
    struct Payload<'a> {
        joins: BTreeMap<&'a str, Entry<'a>>,
        leaves: BTreeMap<&'a str, Entry<'a>>,
    }
    let payload = Payload {
        joins: entries(joins, &extra),
        leaves: entries(leaves, &extra),
    };
    frame::encode(None, None, topic, "presence_diff", &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use attendance::{Incarnation, ReplicaId, ReplicaName};
    use serde_json::json;

    fn reference(version: u64) -> VersionRef {
        let id = ReplicaId::new(ReplicaName::new("a").unwrap(), Incarnation::new(1, 2));
        VersionRef::new(&id, version)
    }

    #[test]
    fn object_metas_get_their_refs_and_others_are_wrapped() {
        let m = meta_json(
            &json!({"device": "web", "phx_ref_prev": "x"}),
            reference(1),
            None,
        );
        assert_eq!(m["device"], "web");
        assert_eq!(m["phx_ref"], reference(1).to_string());
        assert!(m.get("phx_ref_prev").is_none());
        let m = meta_json(&"web".to_string(), reference(2), Some(reference(1)));
        assert_eq!(m["meta"], "web");
        assert_eq!(m["phx_ref_prev"], reference(1).to_string());
    }

    #[test]
    fn enrichment_sits_beside_metas_and_is_asked_once() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let enrich = move |_: &str, keys: &[&str]| {
            counted.fetch_add(1, Ordering::Relaxed);
            assert_eq!(keys, ["a", "b"]);
            HashMap::from([(
                "a".to_string(),
                Map::from_iter([
                    ("name".to_string(), json!("Alice")),
                    ("metas".to_string(), json!("hidden")),
                ]),
            )])
        };
        let meta = json!({"phx_ref": "1"});
        let joins = Groups::from([("a", vec![&meta]), ("b", vec![&meta])]);
        let leaves = Groups::from([("a", vec![&meta])]);
        let frame = diff_frame(joins, leaves, "t", &enrich);
        let frame: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(
            frame,
            json!([null, null, "t", "presence_diff", {
                "joins": {"a": {"metas": [meta], "name": "Alice"}, "b": {"metas": [meta]}},
                "leaves": {"a": {"metas": [meta], "name": "Alice"}},
            }])
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
