//! The Presence protocol phoenix.js speaks, against two linked replicas:
//! join, state, diffs, updates, leaves, closes, refs.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use attendance::PresenceGuard;
use attendance_phoenix::{Endpoint, Limits, Object, UserParams};
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn join_gets_its_reply_then_the_whole_topic_with_itself() {
    let (_net, a, _b) = pair();
    let _carol = a.track("doc:1", "carol", json!({"device": "cli"})).unwrap();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    let (_, state) = client
        .join("doc:1", json!({"user": "alice", "device": "web"}))
        .await;
    assert_eq!(refs(&state, "carol"), tracker_refs(&a, "doc:1", "carol"));
    assert_eq!(refs(&state, "alice"), tracker_refs(&a, "doc:1", "alice"));
    assert_eq!(state["alice"]["metas"][0]["device"], "web");
    assert_eq!(
        state["alice"]["metas"][0]["phx_ref"]
            .as_str()
            .unwrap()
            .len(),
        32
    );
}

#[tokio::test]
async fn heartbeat_is_answered_with_its_ref() {
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    client
        .send(json!([null, "7", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn a_track_on_the_other_replica_arrives_as_a_diff_with_the_same_ref() {
    let (_net, a, b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    client.join("doc:1", json!({"user": "alice"})).await;
    let _bob = b.track("doc:1", "bob", json!({"device": "phone"})).unwrap();
    let diff = client.recv_event("presence_diff").await;
    assert_eq!(diff[0], Value::Null);
    assert_eq!(diff[1], Value::Null);
    assert_eq!(diff[4]["leaves"], json!({}));
    assert_eq!(diff[4]["joins"]["bob"]["metas"][0]["device"], "phone");
    assert_eq!(
        refs(&diff[4]["joins"], "bob"),
        tracker_refs(&b, "doc:1", "bob")
    );
}

#[tokio::test]
async fn an_update_is_one_diff_joining_the_new_meta_and_leaving_the_old() {
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    let (join_ref, state) = client.join("doc:1", json!({"user": "alice", "s": 1})).await;
    let old = refs(&state, "alice");
    client
        .send(json!([join_ref, "9", "doc:1", "update", {"s": 2}]))
        .await;
    // The reply and the diff may come in either order; both must come.
    let mut reply = None;
    let mut diff = None;
    while reply.is_none() || diff.is_none() {
        let frame = client.recv().await;
        match frame[3].as_str() {
            Some("phx_reply") => reply = Some(frame),
            Some("presence_diff") => {
                assert!(diff.is_none(), "one diff for one update");
                diff = Some(frame);
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(
        reply.unwrap(),
        json!([join_ref, "9", "doc:1", "phx_reply", {"status": "ok", "response": {}}])
    );
    let diff = &diff.unwrap()[4];
    let new = tracker_refs(&a, "doc:1", "alice");
    assert_ne!(new, old);
    let joined = &diff["joins"]["alice"]["metas"][0];
    assert_eq!(joined["s"], 2);
    assert_eq!(joined["phx_ref"], json!(new[0]));
    assert_eq!(joined["phx_ref_prev"], json!(old[0]));
    assert_eq!(refs(&diff["leaves"], "alice"), old);
    assert_eq!(diff["leaves"]["alice"]["metas"][0]["s"], 1);
}

#[tokio::test]
async fn leave_untracks_replies_then_closes_with_the_join_ref() {
    let (_net, a, b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    let (join_ref, _) = client.join("doc:1", json!({"user": "alice"})).await;
    eventually("b sees alice", || b.count("doc:1") == 1).await;
    client
        .send(json!([join_ref, "5", "doc:1", "phx_leave", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        json!([join_ref, "5", "doc:1", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        client.recv().await,
        json!([join_ref, join_ref, "doc:1", "phx_close", {}])
    );
    assert_eq!(a.count("doc:1"), 0);
    eventually("b sees alice leave", || b.count("doc:1") == 0).await;
}

#[tokio::test]
async fn closing_the_socket_untracks_on_the_other_replica() {
    let (_net, a, b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    client.join("doc:1", json!({"user": "alice"})).await;
    client.join("doc:2", json!({"user": "alice"})).await;
    eventually("b sees alice twice", || {
        b.count("doc:1") == 1 && b.count("doc:2") == 1
    })
    .await;
    client.close().await;
    eventually("b sees alice leave both", || {
        b.count("doc:1") == 0 && b.count("doc:2") == 0
    })
    .await;
}

#[tokio::test]
async fn both_replicas_show_the_same_refs_for_the_same_presences() {
    let (_net, a, b) = pair();
    let (addr_a, addr_b) = (
        serve_users(&a, Limits::default()).await,
        serve_users(&b, Limits::default()).await,
    );
    let mut alice = Client::connect(addr_a).await;
    let mut bob = Client::connect(addr_b).await;
    alice.join("doc:1", json!({"user": "alice"})).await;
    bob.join("doc:1", json!({"user": "bob"})).await;
    eventually("both replicas list both", || {
        a.count("doc:1") == 2 && b.count("doc:1") == 2
    })
    .await;
    // A fresh client on each replica, following its state until it lists
    // both (the replica's hub may not have replayed the last diff yet).
    let both = |state: &Value| state.get("alice").is_some() && state.get("bob").is_some();
    let mut views = Vec::new();
    for (addr, user) in [(addr_a, "watcher-a"), (addr_b, "watcher-b")] {
        let mut watcher = Client::connect(addr).await;
        let (_, mut state) = watcher.join("doc:1", json!({"user": user})).await;
        watcher.follow(&mut state, both).await;
        views.push(state);
    }
    for key in ["alice", "bob"] {
        assert_eq!(refs(&views[0], key).len(), 1);
        assert_eq!(refs(&views[0], key), refs(&views[1], key), "{key}");
        assert_eq!(refs(&views[0], key), tracker_refs(&a, "doc:1", key));
    }
}

#[tokio::test]
async fn a_second_join_closes_the_first_and_sends_a_fresh_state() {
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    let (first, _) = client.join("doc:1", json!({"user": "alice"})).await;
    client
        .send(json!(["20", "20", "doc:1", "phx_join", {"user": "alice2"}]))
        .await;
    assert_eq!(
        client.recv().await,
        json!([first, first, "doc:1", "phx_close", {}])
    );
    assert_eq!(client.recv().await[3], "phx_reply");
    let state = client.recv_event("presence_state").await;
    assert_eq!(state[0], "20");
    assert!(state[4].get("alice").is_none());
    assert_eq!(
        refs(&state[4], "alice2"),
        tracker_refs(&a, "doc:1", "alice2")
    );
    assert_eq!(a.count("doc:1"), 1);
}

#[tokio::test]
async fn a_join_without_a_user_is_refused_with_a_reason() {
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    let mut client = Client::connect(addr).await;
    client
        .send(json!(["1", "1", "doc:1", "phx_join", {"device": "web"}]))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        reply.as_array().unwrap()[..4],
        json!(["1", "1", "doc:1", "phx_reply"]).as_array().unwrap()[..]
    );
    assert_eq!(reply[4]["status"], "error");
    assert!(reply[4]["response"]["reason"].is_string());
    assert_eq!(a.count("doc:1"), 0);
}

/// Tracks a presence the first time it is asked, which happens while a
/// joining socket's `presence_state` is rendered: after its list was
/// taken, before the state is sent.
struct TrackDuringState {
    tracker: T,
    tracked: Mutex<Option<PresenceGuard<Value>>>,
}

#[tokio::test]
async fn a_change_between_the_list_and_the_state_arrives_exactly_once() {
    let (_net, a, _b) = pair();
    let hook = Arc::new(TrackDuringState {
        tracker: a.clone(),
        tracked: Mutex::new(None),
    });
    let enrich = {
        let hook = hook.clone();
        move |topic: &str, keys: &[&str]| -> HashMap<String, Object> {
            let mut tracked = hook.tracked.lock().unwrap();
            if tracked.is_none() && keys.contains(&"alice") {
                *tracked = Some(hook.tracker.track(topic, "dave", json!({})).unwrap());
            }
            HashMap::new()
        }
    };
    let endpoint = Endpoint::builder(a.clone())
        .policy(UserParams)
        .enrich(enrich)
        .limits(Limits::default())
        .build()
        .unwrap();
    let addr = serve(&endpoint).await;
    let mut client = Client::connect(addr).await;
    let (_, state) = client.join("doc:1", json!({"user": "alice"})).await;
    assert!(
        state.get("dave").is_none(),
        "tracked after the list was taken"
    );
    let diff = client.recv_event("presence_diff").await;
    assert_eq!(
        refs(&diff[4]["joins"], "dave"),
        tracker_refs(&a, "doc:1", "dave")
    );
    // Nothing else comes: a heartbeat's reply is the next frame.
    client
        .send(json!([null, "99", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(client.recv().await[1], "99");
}

#[tokio::test]
async fn an_idle_socket_is_closed_and_untracked() {
    let (_net, a, b) = pair();
    let limits = Limits::default().idle_timeout(std::time::Duration::from_millis(300));
    let addr = serve_users(&a, limits).await;
    let mut client = Client::connect(addr).await;
    client.join("doc:1", json!({"user": "alice"})).await;
    eventually("b sees alice", || b.count("doc:1") == 1).await;
    assert_eq!(client.closed().await, Some(1000));
    assert_eq!(a.count("doc:1"), 0);
    eventually("b sees alice leave", || b.count("doc:1") == 0).await;
}

#[tokio::test]
async fn enrichment_is_asked_once_per_diff_whatever_the_number_of_sockets() {
    let (_net, a, b) = pair();
    let calls = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let enrich = {
        let calls = calls.clone();
        move |_: &str, keys: &[&str]| -> HashMap<String, Object> {
            calls
                .lock()
                .unwrap()
                .push(keys.iter().map(|k| k.to_string()).collect());
            keys.iter()
                .map(|k| {
                    (
                        k.to_string(),
                        Object::from_iter([("name".into(), json!(k.to_uppercase()))]),
                    )
                })
                .collect()
        }
    };
    let endpoint = Endpoint::builder(a.clone())
        .policy(UserParams)
        .enrich(enrich)
        .build()
        .unwrap();
    let addr = serve(&endpoint).await;
    let mut sockets = Vec::new();
    for user in ["alice", "carol", "erin"] {
        let mut client = Client::connect(addr).await;
        let (_, state) = client.join("doc:1", json!({"user": user})).await;
        for (key, entry) in state.as_object().unwrap() {
            assert_eq!(entry["name"], json!(key.to_uppercase()));
        }
        sockets.push(client);
    }
    let _bob = b.track("doc:1", "bob", json!({})).unwrap();
    for client in &mut sockets {
        loop {
            let diff = client.recv_event("presence_diff").await;
            if let Some(bob) = diff[4]["joins"].get("bob") {
                assert_eq!(bob["name"], "BOB");
                break;
            }
        }
    }
    // Three sockets, one diff: one call.
    let calls = calls.lock().unwrap();
    assert_eq!(
        calls
            .iter()
            .filter(|keys| keys.contains(&"bob".to_string()))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_diff_is_rendered_once_and_shared_by_every_socket_on_its_topic() {
    let (_net, a, b) = pair();
    let endpoint = Endpoint::builder(a.clone())
        .policy(UserParams)
        .build()
        .unwrap();
    let addr = serve(&endpoint).await;
    let mut sockets = Vec::new();
    for user in ["alice", "carol", "erin"] {
        let mut client = Client::connect(addr).await;
        let (_, state) = client.join("doc:1", json!({"user": user})).await;
        sockets.push((client, state.get("erin").is_some()));
    }
    // Every socket has seen the last join before counting starts.
    for (client, seen) in &mut sockets {
        while !*seen {
            *seen = client.recv_event("presence_diff").await[4]["joins"]
                .get("erin")
                .is_some();
        }
    }
    let before = endpoint.stats();
    assert_eq!(before.topics, 1);
    let _bob = b.track("doc:1", "bob", json!({})).unwrap();
    let mut bytes = 0;
    for (client, _) in &mut sockets {
        loop {
            let diff = client.recv_event("presence_diff").await;
            if diff[4]["joins"].get("bob").is_some() {
                bytes = serde_json::to_string(&diff).unwrap().len();
                break;
            }
        }
    }
    let after = endpoint.stats();
    assert_eq!(after.diffs_rendered - before.diffs_rendered, 1);
    assert_eq!(after.diffs_queued - before.diffs_queued, 3);
    assert_eq!(
        (after.diff_bytes_rendered - before.diff_bytes_rendered) as usize,
        bytes,
        "one rendering, of the frame each socket got"
    );
}

/// Tracks joins with a `user`; watches the others.
struct UsersOrWatchers;

impl attendance_phoenix::Policy<Value> for UsersOrWatchers {
    fn join(
        &self,
        topic: &str,
        params: &Object,
        connection: &attendance_phoenix::Connection,
    ) -> Result<attendance_phoenix::Join<Value>, attendance_phoenix::Refusal> {
        if params.contains_key("user") {
            return UserParams.join(topic, params, connection);
        }
        Ok(attendance_phoenix::Join::watch())
    }
}

#[tokio::test]
async fn a_watch_only_join_gets_the_state_and_diffs_without_being_listed() {
    let (_net, a, b) = pair();
    let _alice = b.track("doc:1", "alice", json!({})).unwrap();
    eventually("alice reaches a", || a.count("doc:1") == 1).await;
    let addr = serve_with(&a, UsersOrWatchers, Limits::default()).await;
    let mut watcher = Client::connect(addr).await;
    let (join_ref, mut state) = watcher.join("doc:1", json!({})).await;
    assert_eq!(
        state.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["alice"]
    );
    assert_eq!(a.count("doc:1"), 1, "the watcher is not listed");
    let _bob = b.track("doc:1", "bob", json!({})).unwrap();
    watcher.follow(&mut state, |s| s.get("bob").is_some()).await;

    let push = watcher.fresh_ref();
    watcher
        .send(json!([join_ref, push, "doc:1", "update", {"x": 1}]))
        .await;
    let reply = watcher.recv_event("phx_reply").await;
    assert_eq!(reply[4]["status"], "error");
    assert_eq!(a.count("doc:1"), 2);
}

#[tokio::test]
async fn every_joiners_state_lists_the_joiner_even_when_the_topic_is_busy() {
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, Limits::default()).await;
    // The topic's shared subscription exists before the joins below.
    let mut first = Client::connect(addr).await;
    first.join("doc:1", json!({"user": "first"})).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        let mut client = Client::connect(addr).await;
        let user = format!("user:{i}");
        let (_, state) = client.join("doc:1", json!({ "user": user })).await;
        assert!(
            state.get(&user).is_some(),
            "{user} is in its own state: {state}"
        );
        clients.push(client);
    }
}
