//! The serde forms of ids, presences, lists and diffs, for applications
//! that hand them on (as JSON to a browser, say). The wire format does not
//! use these: it has its own encoding (`crate::wire`).
//!
//! In JSON, with a meta of `{"tab": "web"}`:
//!
//! ```text
//! PresenceId  {"replica": ["node-1", 1700000000000, 3735928559], "counter": 4}
//! Presence    {"id": PresenceId, "key": "alice", "version": 7,
//!              "ref": "0389cef17f99be370000000000000007", "meta": {"tab": "web"}}
//! KeyGroup    {"key": "alice", "presences": [Presence, ...]}
//! Update      {"id": PresenceId, "key": "alice",
//!              "old_version": 7, "old_ref": "…", "old_meta": {...},
//!              "version": 9, "ref": "…", "meta": {...}}
//! TopicDiff   {"joins": [Presence, ...], "leaves": [Presence, ...], "updates": [Update, ...]}
//! Diff        {"room:lobby": TopicDiff, ...}
//! ```
//!
//! A replica id is `[name, started_ms, nonce]`; `ref` is the version's
//! [`VersionRef`], the same on every replica. Deserializing checks names
//! and sizes as construction does, and recomputes `ref` rather than trust it.

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::store::Payload;
use super::{Diff, Key, KeyGroup, Presence, PresenceId, ReplicaId, TopicDiff, Update, VersionRef};

#[derive(Serialize, Deserialize)]
struct IdForm {
    replica: ReplicaId,
    counter: u64,
}

impl Serialize for PresenceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        IdForm {
            replica: self.replica().clone(),
            counter: self.as_dot().counter(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PresenceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = IdForm::deserialize(deserializer)?;
        Ok(Self::new(form.replica, form.counter))
    }
}

#[derive(Serialize)]
struct PresenceOut<'a, M> {
    id: &'a PresenceId,
    key: &'a Key,
    version: u64,
    #[serde(rename = "ref")]
    reference: VersionRef,
    meta: &'a M,
}

#[derive(Deserialize)]
struct PresenceIn<M> {
    id: PresenceId,
    key: Key,
    version: u64,
    meta: M,
}

impl<M: Serialize> Serialize for Presence<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PresenceOut {
            id: self.id(),
            key: self.key(),
            version: self.version(),
            reference: self.version_ref(),
            meta: self.meta(),
        }
        .serialize(serializer)
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Presence<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let p = PresenceIn::deserialize(deserializer)?;
        if p.key.as_str().is_empty() {
            return Err(D::Error::custom("a presence's key is not empty"));
        }
        Ok(Self::new(p.id, p.version, Payload::new(p.key, p.meta)))
    }
}

#[derive(Serialize)]
struct KeyGroupOut<'a, M> {
    key: &'a Key,
    presences: &'a [Presence<M>],
}

#[derive(Deserialize)]
struct KeyGroupIn<M> {
    key: Key,
    presences: Vec<Presence<M>>,
}

impl<M: Serialize> Serialize for KeyGroup<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        KeyGroupOut {
            key: &self.key,
            presences: &self.presences,
        }
        .serialize(serializer)
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for KeyGroup<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let g = KeyGroupIn::deserialize(deserializer)?;
        if g.presences.iter().any(|p| p.key() != &g.key) {
            return Err(D::Error::custom(
                "a key group holds presences of its key only",
            ));
        }
        Ok(Self {
            key: g.key,
            presences: g.presences,
        })
    }
}

#[derive(Serialize)]
struct UpdateOut<'a, M> {
    id: &'a PresenceId,
    key: &'a Key,
    old_version: u64,
    old_ref: VersionRef,
    old_meta: &'a M,
    version: u64,
    #[serde(rename = "ref")]
    reference: VersionRef,
    meta: &'a M,
}

#[derive(Deserialize)]
struct UpdateIn<M> {
    id: PresenceId,
    key: Key,
    old_version: u64,
    old_meta: M,
    version: u64,
    meta: M,
}

impl<M: Serialize> Serialize for Update<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        UpdateOut {
            id: self.id(),
            key: self.key(),
            old_version: self.old_version(),
            old_ref: self.old_version_ref(),
            old_meta: self.old_meta(),
            version: self.version(),
            reference: self.version_ref(),
            meta: self.meta(),
        }
        .serialize(serializer)
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Update<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let u = UpdateIn::deserialize(deserializer)?;
        let old = Payload::new(u.key.clone(), u.old_meta);
        let new = Payload::new(u.key, u.meta);
        Ok(Self::new(u.id, (u.old_version, old), (u.version, new)))
    }
}

#[derive(Serialize)]
struct TopicDiffOut<'a, M> {
    joins: &'a [Presence<M>],
    leaves: &'a [Presence<M>],
    updates: &'a [Update<M>],
}

#[derive(Deserialize)]
struct TopicDiffIn<M> {
    #[serde(default = "Vec::new")]
    joins: Vec<Presence<M>>,
    #[serde(default = "Vec::new")]
    leaves: Vec<Presence<M>>,
    #[serde(default = "Vec::new")]
    updates: Vec<Update<M>>,
}

impl<M: Serialize> Serialize for TopicDiff<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TopicDiffOut {
            joins: self.joins(),
            leaves: self.leaves(),
            updates: self.updates(),
        }
        .serialize(serializer)
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for TopicDiff<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let d = TopicDiffIn::deserialize(deserializer)?;
        Ok(Self::from_parts(d.joins, d.leaves, d.updates))
    }
}

impl<M: Serialize> Serialize for Diff<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (topic, changes) in self.iter() {
            map.serialize_entry(topic, changes)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{Incarnation, KeyGroup, ReplicaId, ReplicaName, State, TopicDiff};

    fn state() -> State<serde_json::Value> {
        let name = ReplicaName::new("node-1").unwrap();
        State::new(ReplicaId::new(
            name,
            Incarnation::new(1_700_000_000_000, 0xdead_beef),
        ))
    }

    #[test]
    fn a_diff_has_the_documented_json_shape() {
        let mut s = state();
        let (id, change) = s.track("room", "alice", json!({"tab": "web"})).unwrap();
        let json = serde_json::to_value(change.diff()).unwrap();
        let join = &json["room"]["joins"][0];
        assert_eq!(
            join["id"],
            json!({"replica": ["node-1", 1_700_000_000_000u64, 0xdead_beefu32], "counter": 1})
        );
        assert_eq!(join["key"], "alice");
        assert_eq!(join["version"], 1);
        assert_eq!(join["ref"], "0389cef17f99be370000000000000001");
        assert_eq!(join["meta"], json!({"tab": "web"}));
        assert_eq!(json["room"]["leaves"], json!([]));

        let change = s.update(&id, json!({"tab": "mobile"})).unwrap();
        let update = &serde_json::to_value(change.diff()).unwrap()["room"]["updates"][0];
        assert_eq!(update["old_ref"], join["ref"]);
        assert_eq!(update["ref"], "0389cef17f99be370000000000000002");
        assert_eq!(update["old_meta"], json!({"tab": "web"}));
        assert_eq!(update["meta"], json!({"tab": "mobile"}));
    }

    #[test]
    fn lists_and_diffs_come_back_as_they_went() {
        let mut s = state();
        let (id, _) = s.track("room", "alice", json!(1)).unwrap();
        s.track("room", "alice", json!(2)).unwrap();
        let change = s.update(&id, json!(3)).unwrap();
        let diff = change.diff().topic("room").unwrap();
        let back: TopicDiff<serde_json::Value> =
            serde_json::from_str(&serde_json::to_string(diff).unwrap()).unwrap();
        assert_eq!(&back, diff);

        let list = vec![KeyGroup {
            key: "alice".into(),
            presences: s.presences("room"),
        }];
        let text = serde_json::to_string(&list).unwrap();
        let back: Vec<KeyGroup<serde_json::Value>> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn malformed_forms_are_refused() {
        let group = json!({"key": "bob", "presences": [{
            "id": {"replica": ["a", 1, 2], "counter": 1}, "key": "alice", "version": 1, "meta": 0
        }]});
        assert!(
            serde_json::from_value::<KeyGroup<u8>>(group).is_err(),
            "a key's group holds its key only"
        );
        let bad_name = json!({"replica": ["", 1, 2], "counter": 1});
        assert!(serde_json::from_value::<crate::PresenceId>(bad_name).is_err());
    }
}
