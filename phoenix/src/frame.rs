//! Phoenix Channels serializer V2: every frame is the JSON array
//! `[join_ref, ref, topic, event, payload]`.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{Value, json};

/// An inbound frame. Refs are kept as the client sent them, because
/// phoenix.js matches replies with `===`.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) join_ref: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) topic: String,
    pub(crate) event: String,
    pub(crate) payload: Value,
}

/// Parses a text frame; `None` for anything that is not a five-element
/// array of (string or null, string or null, string, string, any).
pub(crate) fn parse(text: &str) -> Option<Inbound> {
    type Shape = (Option<String>, Option<String>, String, String, Value);
    let (join_ref, reference, topic, event, payload): Shape = serde_json::from_str(text).ok()?;
    Some(Inbound {
        join_ref,
        reference,
        topic,
        event,
        payload,
    })
}

/// Encodes an outbound frame.
pub(crate) fn encode(
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &impl Serialize,
) -> Utf8Bytes {
    // Payloads are JSON values or maps of them with string keys, which
    // always serialize.
    serde_json::to_string(&(join_ref, reference, topic, event, payload))
        .unwrap_or_default()
        .into()
}

/// A `phx_reply` with `status` ok and an empty response.
pub(crate) fn reply_ok(join_ref: Option<&str>, reference: Option<&str>, topic: &str) -> Utf8Bytes {
    let payload = json!({"status": "ok", "response": {}});
    encode(join_ref, reference, topic, "phx_reply", &payload)
}

/// A `phx_reply` with `status` error and `reason` in the response, the
/// shape phoenix.js hands to `receive("error", ...)`.
pub(crate) fn reply_error(
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    reason: &str,
) -> Utf8Bytes {
    let payload = json!({"status": "error", "response": {"reason": reason}});
    encode(join_ref, reference, topic, "phx_reply", &payload)
}

/// The `phx_close` that confirms a leave; its ref is the join ref, as
/// Phoenix sends it.
pub(crate) fn close(join_ref: &str, topic: &str) -> Utf8Bytes {
    encode(
        Some(join_ref),
        Some(join_ref),
        topic,
        "phx_close",
        &json!({}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_frame_parses_with_its_refs_verbatim() {
        let f = parse(r#"["3","3","doc:1","phx_join",{"user":"a"}]"#).unwrap();
        assert_eq!(f.join_ref.as_deref(), Some("3"));
        assert_eq!(f.reference.as_deref(), Some("3"));
        assert_eq!(f.topic, "doc:1");
        assert_eq!(f.event, "phx_join");
        assert_eq!(f.payload, json!({"user": "a"}));
    }

    #[test]
    fn null_refs_parse() {
        let f = parse(r#"[null,"4","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(f.join_ref, None);
    }

    #[test]
    fn wrong_shapes_are_refused() {
        for text in [
            "",
            "not json",
            "{}",
            r#"["1","1","t","phx_join"]"#,
            r#"["1","1","t","phx_join",{},6]"#,
            r#"[1,"1","t","phx_join",{}]"#,
            r#"["1","1",null,"phx_join",{}]"#,
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn replies_have_phoenix_shape() {
        assert_eq!(
            reply_ok(None, Some("4"), "phoenix").as_str(),
            r#"[null,"4","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
        assert_eq!(
            close("3", "doc:1").as_str(),
            r#"["3","3","doc:1","phx_close",{}]"#
        );
    }
}
