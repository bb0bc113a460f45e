//! Two linked replicas, an endpoint on loopback TCP for each, and a
//! phoenix.js-shaped client that waits with deadlines.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use attendance::Tracker;
use attendance::protocol::Config;
use attendance::transport::MemoryNetwork;
use attendance_phoenix::{Endpoint, Limits, Policy, UserParams};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type T = Tracker<Value>;

/// How long any expected thing may take.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub fn start(network: &MemoryNetwork, name: &str) -> T {
    Tracker::builder(name)
        .config(Config::with_broadcast_period(Duration::from_millis(20)))
        .start_with(|id| network.join(id))
        .expect("starts")
}

/// Two replicas on one in-memory network.
pub fn pair() -> (MemoryNetwork, T, T) {
    let network = MemoryNetwork::new();
    let a = start(&network, "a");
    let b = start(&network, "b");
    (network, a, b)
}

/// Serves `endpoint` on a loopback port.
pub async fn serve(endpoint: &Endpoint<Value>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = endpoint
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Serves `tracker` with `policy` and `limits`.
pub async fn serve_with(tracker: &T, policy: impl Policy<Value>, limits: Limits) -> SocketAddr {
    let endpoint = Endpoint::builder(tracker.clone())
        .policy(policy)
        .limits(limits)
        .build()
        .unwrap();
    serve(&endpoint).await
}

/// Serves `tracker` with [`UserParams`] and `limits`.
pub async fn serve_users(tracker: &T, limits: Limits) -> SocketAddr {
    serve_with(tracker, UserParams, limits).await
}

/// Polls `check` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < until, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
}

pub fn url(addr: SocketAddr, query: &str) -> String {
    format!("ws://{addr}/socket/websocket?{query}")
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_to(&url(addr, "vsn=2.0.0")).await
    }

    pub async fn connect_to(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
            .await
            .expect("connects");
        Client { ws, next_ref: 0 }
    }

    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client { ws, next_ref: 0 }
    }

    pub fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// The next text frame as JSON; panics on a close or the deadline.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame before the deadline")
                .expect("the socket is open")
                .expect("reads");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skips frames until one with `event`.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame[3] == event {
                return frame;
            }
        }
    }

    /// Waits for the server's close (or the end of the stream); returns
    /// the close code when one came.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("closes before the deadline");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Joins `topic` with `params`; returns the join ref and the state.
    /// Checks the reply is ok and comes right before the state (diffs of
    /// topics joined before may come first).
    pub async fn join(&mut self, topic: &str, params: Value) -> (String, Value) {
        let join_ref = self.fresh_ref();
        self.send(json!([join_ref, join_ref, topic, "phx_join", params]))
            .await;
        let reply = self.recv_event("phx_reply").await;
        assert_eq!(
            reply,
            json!([join_ref, join_ref, topic, "phx_reply", {"status": "ok", "response": {}}])
        );
        let state = self.recv().await;
        assert_eq!(state[0], json!(join_ref));
        assert_eq!(state[1], Value::Null);
        assert_eq!(state[2], json!(topic));
        assert_eq!(state[3], "presence_state");
        (join_ref, state[4].clone())
    }

    /// Applies diffs to `state`, as phoenix.js does (by `phx_ref`), until
    /// `done` holds.
    pub async fn follow(&mut self, state: &mut Value, done: impl Fn(&Value) -> bool) {
        while !done(state) {
            let diff = self.recv_event("presence_diff").await;
            apply_diff(state, &diff[4]);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The `phx_ref`s of `key` in a state payload or a diff's joins/leaves.
pub fn refs(payload: &Value, key: &str) -> Vec<String> {
    payload[key]["metas"]
        .as_array()
        .map(|metas| {
            metas
                .iter()
                .map(|m| m["phx_ref"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The references `tracker` shows for `key`.
pub fn tracker_refs(tracker: &T, topic: &str, key: &str) -> Vec<String> {
    tracker
        .get(topic, key)
        .iter()
        .map(|p| p.version_ref().to_string())
        .collect()
}

/// phoenix.js's `syncDiff`, reduced to the list: joins add metas by
/// `phx_ref`, leaves remove them, empty keys go.
pub fn apply_diff(state: &mut Value, diff: &Value) {
    let state = state.as_object_mut().unwrap();
    for (key, entry) in diff["joins"].as_object().unwrap() {
        let metas = state
            .entry(key.clone())
            .or_insert_with(|| json!({"metas": []}))["metas"]
            .as_array_mut()
            .unwrap();
        for meta in entry["metas"].as_array().unwrap() {
            if !metas.iter().any(|m| m["phx_ref"] == meta["phx_ref"]) {
                metas.push(meta.clone());
            }
        }
    }
    for (key, entry) in diff["leaves"].as_object().unwrap() {
        let Some(held) = state.get_mut(key) else {
            continue;
        };
        let metas = held["metas"].as_array_mut().unwrap();
        for meta in entry["metas"].as_array().unwrap() {
            metas.retain(|m| m["phx_ref"] != meta["phx_ref"]);
        }
        if metas.is_empty() {
            state.remove(key);
        }
    }
}
