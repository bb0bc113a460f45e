//! What the application decides: who connects, who joins as what, which
//! updates go through, and what extra fields each key carries.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::{Map, Value};

/// A JSON object: join and push payloads, assigns, enrichment fields.
pub type Object = Map<String, Value>;

/// One websocket's connect request, as Phoenix's `connect/3` sees it.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Connection {
    /// The query parameters (phoenix.js's `params`), without `vsn`.
    pub params: HashMap<String, String>,
    /// The token phoenix.js's `authToken` sent in the
    /// `base64url.bearer.phx.` subprotocol, decoded.
    pub token: Option<String>,
    /// The peer's address, when the server was started with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    pub peer: Option<SocketAddr>,
    /// What [`Policy::connect`] returned, for the later hooks (Phoenix's
    /// socket assigns).
    pub assigns: Object,
}

/// A refusal with the reason the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Sent as `{"status":"error","response":{"reason": ...}}` (or as the
    /// body of a 403 for a refused connection).
    pub reason: String,
}

impl Refusal {
    /// A refusal for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A presence to track for an accepted join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join<M> {
    /// The key it is listed under (a user, a device).
    pub key: String,
    /// Its meta.
    pub meta: M,
}

/// The application's decisions, like Phoenix's `connect/3` in the socket
/// and `join/3` and `handle_in/3` in the channel.
///
/// Every method runs on the socket's task, so it should be quick: look
/// things up in memory, not over the network.
pub trait Policy<M>: Send + Sync + 'static {
    /// Accepts or refuses a websocket before it opens (refused: HTTP 403).
    /// What it returns becomes [`Connection::assigns`]. Accepts every
    /// connection unless overridden.
    fn connect(&self, connection: &Connection) -> Result<Object, Refusal> {
        let _ = connection;
        Ok(Object::new())
    }

    /// Accepts a `phx_join` on `topic` with the join `params` by naming
    /// the presence to track, or refuses it.
    fn join(
        &self,
        topic: &str,
        params: &Object,
        connection: &Connection,
    ) -> Result<Join<M>, Refusal>;

    /// Answers a push of event `"update"` on a joined topic with the
    /// presence's new meta, or refuses it. Refuses every update unless
    /// overridden.
    fn update(
        &self,
        topic: &str,
        key: &str,
        current: &M,
        payload: &Object,
        connection: &Connection,
    ) -> Result<M, Refusal> {
        let _ = (topic, key, current, payload, connection);
        Err(Refusal::new("updates are not allowed"))
    }
}

/// The ready-made policy for `Tracker<serde_json::Value>`: a join's params
/// `{"user": "<key>", ...rest}` track one presence under that key with the
/// rest as its meta; a join without a string `user` is refused; a push of
/// `"update"` with an object replaces the meta with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserParams;

impl Policy<Value> for UserParams {
    fn join(&self, _topic: &str, params: &Object, _: &Connection) -> Result<Join<Value>, Refusal> {
        let Some(Value::String(user)) = params.get("user") else {
            return Err(Refusal::new("a join needs a \"user\" string"));
        };
        let mut meta = params.clone();
        meta.remove("user");
        Ok(Join {
            key: user.clone(),
            meta: Value::Object(meta),
        })
    }

    fn update(
        &self,
        _topic: &str,
        _key: &str,
        _current: &Value,
        payload: &Object,
        _: &Connection,
    ) -> Result<Value, Refusal> {
        Ok(Value::Object(payload.clone()))
    }
}

/// Extra top-level fields per key, next to `metas`, like Phoenix's
/// `fetch/2`: called once per broadcast diff and once per
/// `presence_state`, with every key in it, never once per key.
pub trait Enrich: Send + Sync + 'static {
    /// The fields to add for some of `keys` on `topic`; keys left out get
    /// none. A field named `metas` is ignored.
    fn enrich(&self, topic: &str, keys: &[&str]) -> HashMap<String, Object>;
}

/// No enrichment: every key carries `metas` alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEnrich;

impl Enrich for NoEnrich {
    fn enrich(&self, _topic: &str, _keys: &[&str]) -> HashMap<String, Object> {
        HashMap::new()
    }
}

impl<F> Enrich for F
where
    F: Fn(&str, &[&str]) -> HashMap<String, Object> + Send + Sync + 'static,
{
    fn enrich(&self, topic: &str, keys: &[&str]) -> HashMap<String, Object> {
        self(topic, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Object {
        match v {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn user_params_key_by_user_and_keep_the_rest() {
        let join = UserParams
            .join(
                "doc:1",
                &object(json!({"user": "alice", "device": "web"})),
                &Connection::default(),
            )
            .unwrap();
        assert_eq!(join.key, "alice");
        assert_eq!(join.meta, json!({"device": "web"}));
    }

    #[test]
    fn user_params_refuse_a_join_without_user() {
        for params in [json!({}), json!({"user": 7})] {
            assert!(
                UserParams
                    .join("doc:1", &object(params), &Connection::default())
                    .is_err()
            );
        }
    }
}
