//! The demo served with `--phoenix`: the Phoenix Channels endpoint and the
//! page of a document, on one router.

use attendance::Tracker;
use attendance_phoenix::{Endpoint, UserParams};
use axum::Router;
use serde_json::Value;

use crate::page::page_router;

/// The routes of `--phoenix`: the websocket phoenix.js connects to
/// (`/socket/websocket`), under the ready-made policy (join params
/// `{"user": key, ...meta}`, push `"update"` to replace the meta), and
/// [`page_router`]'s page and script, naming `tracker`'s replica.
///
/// # Errors
///
/// When the endpoint cannot be built.
pub fn demo_router(tracker: Tracker<Value>) -> Result<Router, attendance_phoenix::Error> {
    let replica = tracker.id().name().as_str().to_string();
    let endpoint = Endpoint::builder(tracker).policy(UserParams).build()?;
    Ok(endpoint.router().merge(page_router(&replica)))
}
