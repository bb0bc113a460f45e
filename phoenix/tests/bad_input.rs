//! What a misbehaving client gets (an error reply, a close or an HTTP
//! refusal), and that nobody else's presence moves because of it.

mod common;

use std::time::Duration;

use attendance_phoenix::{Connection, Join, Limits, Object, Policy, Refusal};
use base64::Engine;
use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Replica `a` served with `limits`, a bystander joined there as carol
/// and one tracked on `b` as bob.
struct Setup {
    _net: attendance::transport::MemoryNetwork,
    a: T,
    b: T,
    addr: std::net::SocketAddr,
    _bob: attendance::PresenceGuard<Value>,
    carol: Client,
}

async fn setup(limits: Limits) -> Setup {
    let (net, a, b) = pair();
    let addr = serve_users(&a, limits).await;
    let bob = b.track("doc:1", "bob", json!({})).unwrap();
    let mut carol = Client::connect(addr).await;
    carol.join("doc:1", json!({"user": "carol"})).await;
    eventually("both replicas list bob and carol", || {
        a.count("doc:1") == 2 && b.count("doc:1") == 2
    })
    .await;
    Setup {
        _net: net,
        a,
        b,
        addr,
        _bob: bob,
        carol,
    }
}

impl Setup {
    /// The bystanders are still listed, and carol's socket still answers.
    async fn untouched(&mut self) {
        for t in [&self.a, &self.b] {
            assert_eq!(tracker_refs(t, "doc:1", "bob").len(), 1);
            assert_eq!(tracker_refs(t, "doc:1", "carol").len(), 1);
        }
        self.carol
            .send(json!([null, "hb", "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(self.carol.recv_event("phx_reply").await[1], "hb");
    }

    /// A client joined to doc:1 as mallory.
    async fn mallory(&self) -> (Client, String) {
        let mut client = Client::connect(self.addr).await;
        let (join_ref, _) = client.join("doc:1", json!({"user": "mallory"})).await;
        (client, join_ref)
    }
}

async fn closes_on(text: &str) -> Option<u16> {
    let mut s = setup(Limits::default()).await;
    let (mut mallory, _) = s.mallory().await;
    mallory.send_text(text).await;
    let code = mallory.closed().await;
    eventually("mallory is untracked", || s.a.count("doc:1") == 2).await;
    s.untouched().await;
    code
}

#[tokio::test]
async fn text_that_is_not_json_closes_the_socket() {
    assert_eq!(closes_on("hello").await, Some(1007));
}

#[tokio::test]
async fn a_frame_of_the_wrong_arity_closes_the_socket() {
    assert_eq!(
        closes_on(r#"["1","2","doc:1","phx_join"]"#).await,
        Some(1007)
    );
    assert_eq!(
        closes_on(r#"["1","2","doc:1","phx_join",{},{}]"#).await,
        Some(1007)
    );
}

#[tokio::test]
async fn a_binary_frame_closes_the_socket() {
    let mut s = setup(Limits::default()).await;
    let (mallory, _) = s.mallory().await;
    let mut ws = mallory;
    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(ws.closed().await, Some(1003));
    eventually("mallory is untracked", || s.a.count("doc:1") == 2).await;
    s.untouched().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_socket() {
    let mut s = setup(Limits::default().max_frame_bytes(1024)).await;
    let (mut mallory, join_ref) = s.mallory().await;
    let big = "x".repeat(4096);
    mallory
        .send(json!([join_ref, "3", "doc:1", "update", {"big": big}]))
        .await;
    let code = mallory.closed().await;
    assert!(matches!(code, None | Some(1009)), "{code:?}");
    eventually("mallory is untracked", || s.a.count("doc:1") == 2).await;
    s.untouched().await;
}

#[tokio::test]
async fn an_unknown_event_gets_an_error_reply() {
    let mut s = setup(Limits::default()).await;
    let (mut mallory, join_ref) = s.mallory().await;
    mallory
        .send(json!([join_ref, "3", "doc:1", "explode", {}]))
        .await;
    assert_eq!(
        mallory.recv_event("phx_reply").await,
        json!([join_ref, "3", "doc:1", "phx_reply",
            {"status": "error", "response": {"reason": "unknown event"}}])
    );
    assert_eq!(s.a.count("doc:1"), 3);
    s.untouched().await;
}

#[tokio::test]
async fn a_push_on_a_topic_not_joined_gets_unmatched_topic() {
    let mut s = setup(Limits::default()).await;
    let (mut mallory, join_ref) = s.mallory().await;
    for (join_ref, topic) in [(json!(join_ref), "doc:2"), (json!("old"), "doc:1")] {
        mallory
            .send(json!([join_ref, "4", topic, "update", {"x": 1}]))
            .await;
        let reply = mallory.recv_event("phx_reply").await;
        assert_eq!(reply[4]["response"]["reason"], "unmatched topic");
    }
    // An update that is not an object is refused too.
    mallory
        .send(json!([join_ref, "5", "doc:1", "update", [1]]))
        .await;
    assert_eq!(mallory.recv_event("phx_reply").await[4]["status"], "error");
    s.untouched().await;
}

#[tokio::test]
async fn a_join_past_the_topic_limit_is_refused() {
    let mut s = setup(Limits::default().max_topics(2)).await;
    let (mut mallory, _) = s.mallory().await;
    mallory.join("doc:2", json!({"user": "mallory"})).await;
    mallory
        .send(json!(["9", "9", "doc:3", "phx_join", {"user": "mallory"}]))
        .await;
    let reply = mallory.recv_event("phx_reply").await;
    assert_eq!(reply[4]["response"]["reason"], "too many topics");
    assert_eq!(s.a.count("doc:3"), 0);
    s.untouched().await;
}

#[tokio::test]
async fn pushes_past_the_rate_limit_get_an_error_reply() {
    let limits = Limits::default().max_pushes(5, Duration::from_secs(60));
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, limits).await;
    let mut other = Client::connect(addr).await;
    other.join("doc:1", json!({"user": "carol"})).await;
    let mut client = Client::connect(addr).await;
    client.join("doc:1", json!({"user": "mallory"})).await;
    for i in 0..4 {
        let r = format!("hb{i}");
        client
            .send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(client.recv_event("phx_reply").await[4]["status"], "ok");
    }
    client
        .send(json!([null, "over", "phoenix", "heartbeat", {}]))
        .await;
    let reply = client.recv_event("phx_reply").await;
    assert_eq!(reply[1], "over");
    assert_eq!(reply[4]["response"]["reason"], "rate limited");
    // The other socket counts its own pushes.
    other
        .send(json!([null, "fine", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(other.recv_event("phx_reply").await[4]["status"], "ok");
    assert_eq!(a.count("doc:1"), 2);
}

async fn http_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_serializer_other_than_v2_is_refused_with_400() {
    let s = setup(Limits::default()).await;
    assert_eq!(http_status(&url(s.addr, "vsn=1.0.0")).await, 400);
    assert_eq!(http_status(&url(s.addr, "user=x")).await, 400);
    assert_eq!(s.a.count("doc:1"), 2);
}

/// Accepts a socket only with the token `secret`, and remembers the
/// connect params in the assigns.
struct TokenPolicy;

impl Policy<Value> for TokenPolicy {
    fn connect(&self, connection: &Connection) -> Result<Object, Refusal> {
        if connection.token.as_deref() != Some("secret") {
            return Err(Refusal::new("bad token"));
        }
        assert!(connection.peer.is_some_and(|p| p.ip().is_loopback()));
        let mut assigns = Object::new();
        assigns.insert("user".into(), json!(connection.params.get("user")));
        Ok(assigns)
    }

    fn join(&self, _: &str, _: &Object, connection: &Connection) -> Result<Join<Value>, Refusal> {
        let Some(Value::String(user)) = connection.assigns.get("user") else {
            return Err(Refusal::new("no user"));
        };
        Ok(Join {
            key: user.clone(),
            meta: json!({}),
        })
    }
}

fn with_token(addr: std::net::SocketAddr, token: &str) -> tungstenite::handshake::client::Request {
    let mut request = url(addr, "user=alice&vsn=2.0.0")
        .into_client_request()
        .unwrap();
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
    let protocols = format!("phoenix, base64url.bearer.phx.{encoded}");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    request
}

#[tokio::test]
async fn an_auth_token_is_handed_to_connect_and_phoenix_is_answered() {
    let (_net, a, _b) = pair();
    let addr = serve_with(&a, TokenPolicy, Limits::default()).await;
    let (ws, response) = tokio_tungstenite::connect_async(with_token(addr, "secret"))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "phoenix");
    let mut client = Client::from_stream(ws);
    let (_, state) = client.join("doc:1", json!({})).await;
    assert_eq!(refs(&state, "alice"), tracker_refs(&a, "doc:1", "alice"));
}

#[tokio::test]
async fn a_refused_connect_gets_403_before_any_join() {
    let (_net, a, _b) = pair();
    let addr = serve_with(&a, TokenPolicy, Limits::default()).await;
    match tokio_tungstenite::connect_async(with_token(addr, "wrong")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert_eq!(http_status(&url(addr, "user=alice&vsn=2.0.0")).await, 403);
}

#[tokio::test]
async fn a_socket_that_falls_behind_gets_a_fresh_state() {
    let (_net, a, _b) = pair();
    let addr = serve_users(&a, Limits::default().outbound_queue(2)).await;
    let mut client = Client::connect(addr).await;
    let (join_ref, _) = client.join("doc:1", json!({"user": "alice"})).await;
    let busy = a.track("doc:1", "busy", json!({"n": 0})).unwrap();
    // Without an await in between, every diff reaches the hub at once and
    // overflows the socket's queue of two.
    for n in 1..=50 {
        busy.update(json!({"n": n})).unwrap();
    }
    let mut diffs = 0;
    let state = loop {
        let frame = client.recv().await;
        match frame[3].as_str() {
            Some("presence_diff") => diffs += 1,
            Some("presence_state") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    assert!(diffs <= 3, "{diffs} diffs before the fresh state");
    assert_eq!(state[0], json!(join_ref));
    assert_eq!(state[4]["busy"]["metas"][0]["n"], 50);
    assert_eq!(refs(&state[4], "busy"), tracker_refs(&a, "doc:1", "busy"));
    assert_eq!(refs(&state[4], "alice"), tracker_refs(&a, "doc:1", "alice"));
    // Diffs go on from the fresh state.
    busy.update(json!({"n": 51})).unwrap();
    let diff = client.recv_event("presence_diff").await;
    assert_eq!(diff[4]["joins"]["busy"]["metas"][0]["n"], 51);
}
