#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms)]
//! Serves the unmodified phoenix.js `Presence` client from an
//! [`attendance`] tracker: Phoenix Channels (serializer V2, JSON) over
//! axum websockets. A browser connected to any replica sees the same
//! list, with the same `phx_ref`s, so reconnecting to another replica
//! makes nothing flicker.
//!
//! # The entry point
//!
//! [`Endpoint::builder`] takes the tracker, a [`Policy`] (who connects,
//! who joins as what, which updates go through), optionally an
//! [`Enrich`] hook and [`Limits`]; [`Endpoint::router`] gives an
//! [`axum::Router`] with the websocket at `/socket/websocket`, where
//! `new Phoenix.Socket("/socket")` connects. [`UserParams`] is a ready
//! policy for `Tracker<serde_json::Value>`: `channel("doc:1", {user:
//! "alice", device: "web"})` tracks `alice` with meta `{"device": "web"}`.
//!
//! ```
//! use attendance::Tracker;
//! use attendance::transport::MemoryNetwork;
//! use attendance_phoenix::{Endpoint, Limits, UserParams};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let network = MemoryNetwork::new();
//! let tracker: Tracker<serde_json::Value> =
//!     Tracker::builder("a").start_with(|id| network.join(id))?;
//! let endpoint = Endpoint::builder(tracker.clone())
//!     .policy(UserParams)
//!     .limits(Limits::default().max_topics(10))
//!     .build()?;
//! let app = axum::Router::new().merge(endpoint.router());
//! // Serve with the peer's address, which the policy then sees:
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! );
//! # drop(server);
//! # tracker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # What the client sees
//!
//! - `phx_join` gets an ok reply (or `{"status":"error","response":
//!   {"reason": ...}}` when the policy refuses), then `presence_state`
//!   with the whole topic, on every join and rejoin.
//! - Every change of the topic on this replica, local or replicated,
//!   comes as one `presence_diff` broadcast, `{"joins": {key: {"metas":
//!   [...]}}, "leaves": {...}}`; each meta carries `phx_ref`, the
//!   [`attendance::VersionRef`] of its version, the same on every replica.
//!   An update is one diff: the new meta (with `phx_ref_prev`) in `joins`,
//!   the old one in `leaves`.
//! - `phx_leave` untracks and is answered by an ok reply and `phx_close`;
//!   a closed or idle socket untracks everything it tracked.
//! - A push of event `"update"` asks [`Policy::update`] for a new meta.
//!
//! Malformed frames, oversized frames, binary frames and over-limit
//! sockets get an error reply or a close, never a panic, and no other
//! presence is touched. `docs/phoenix.md` in the repository has the
//! protocol subset and the defaults.

mod config;
mod endpoint;
mod error;
mod frame;
mod hub;
mod policy;
mod render;
mod socket;

pub use config::Limits;
pub use endpoint::{Endpoint, EndpointBuilder};
pub use error::Error;
pub use policy::{Connection, Enrich, Join, NoEnrich, Object, Policy, Refusal, UserParams};
