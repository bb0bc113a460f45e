//! The endpoint: its builder, its router and the websocket upgrade.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use attendance::{Meta, Tracker};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::Extensions;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use crate::config::Limits;
use crate::error::Error;
use crate::hub::Hubs;
use crate::policy::{Connection, Enrich, NoEnrich, Policy};
use crate::socket;

/// The serializer phoenix.js speaks; the only one served.
const VSN: &str = "2.0.0";

/// The subprotocol phoenix.js offers with an `authToken`, and the prefix
/// of the one that carries the token.
const PHOENIX_PROTOCOL: &str = "phoenix";
const TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// What every socket of an endpoint shares.
pub(crate) struct Shared<M: Meta> {
    pub(crate) hubs: Arc<Hubs<M>>,
    pub(crate) policy: Arc<dyn Policy<M>>,
    pub(crate) limits: Limits,
}

/// Serves phoenix.js Presence clients from a [`Tracker`]; see the
/// [crate docs](crate). Cheap to clone: clones share their topics.
pub struct Endpoint<M: Meta> {
    shared: Arc<Shared<M>>,
}

impl<M: Meta> Clone for Endpoint<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Meta> std::fmt::Debug for Endpoint<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("hubs", &self.shared.hubs)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Endpoint`]; see [`Endpoint::builder`].
#[must_use]
pub struct EndpointBuilder<M: Meta> {
    tracker: Tracker<M>,
    policy: Option<Arc<dyn Policy<M>>>,
    enrich: Arc<dyn Enrich>,
    limits: Limits,
}

impl<M: Meta> std::fmt::Debug for EndpointBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointBuilder")
            .field("policy", &self.policy.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<M: Meta + Send + Sync + 'static> EndpointBuilder<M> {
    /// Who may connect and join, and as what (required).
    pub fn policy(mut self, policy: impl Policy<M>) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Extra fields per key next to `metas`; [`NoEnrich`] unless set.
    pub fn enrich(mut self, enrich: impl Enrich) -> Self {
        self.enrich = Arc::new(enrich);
        self
    }

    /// Bounds per socket; [`Limits::default`] unless set.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The endpoint.
    ///
    /// # Errors
    ///
    /// [`Error::MissingPolicy`] when no [`policy`](Self::policy) was set.
    pub fn build(self) -> Result<Endpoint<M>, Error> {
        let policy = self.policy.ok_or(Error::MissingPolicy)?;
        let shared = Shared {
            hubs: Arc::new(Hubs::new(self.tracker, self.enrich)),
            policy,
            limits: self.limits,
        };
        Ok(Endpoint {
            shared: Arc::new(shared),
        })
    }
}

impl<M: Meta + Send + Sync + 'static> Endpoint<M> {
    /// A builder serving `tracker`.
    pub fn builder(tracker: Tracker<M>) -> EndpointBuilder<M> {
        EndpointBuilder {
            tracker,
            policy: None,
            enrich: Arc::new(NoEnrich),
            limits: Limits::default(),
        }
    }

    /// The routes: the websocket at `/socket/websocket`, which is where
    /// `new Phoenix.Socket("/socket")` connects. Nest it to serve it
    /// under a prefix (`Router::new().nest("/live", endpoint.router())`
    /// answers `new Phoenix.Socket("/live/socket")`), or merge it.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/socket/websocket", get(upgrade::<M>))
            .with_state(self.shared.clone())
    }

    /// The endpoint's limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
}

async fn upgrade<M: Meta + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<M>>>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
    ws: WebSocketUpgrade,
) -> Response {
    match accept(&shared, query.as_deref(), &extensions, ws) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Phoenix's `connect`: the serializer version, the token, then the
/// policy, all before the websocket opens.
fn accept<M: Meta + Send + Sync + 'static>(
    shared: &Arc<Shared<M>>,
    query: Option<&str>,
    extensions: &Extensions,
    ws: WebSocketUpgrade,
) -> Result<Response, Error> {
    let mut params: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    match params.remove("vsn") {
        Some(vsn) if vsn == VSN => {}
        other => return Err(Error::UnsupportedVersion(other)),
    }
    let offered: Vec<&str> = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .map(str::trim)
        .collect();
    let token = offered
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_PREFIX))
        .map(decode_token)
        .transpose()?;
    let speaks_phoenix = offered.contains(&PHOENIX_PROTOCOL);
    let mut connection = Connection {
        params,
        token,
        peer: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr),
        ..Connection::default()
    };
    connection.assigns = shared
        .policy
        .connect(&connection)
        .map_err(|refusal| Error::Refused(refusal.reason))?;
    // Browsers fail the handshake unless the server picks `phoenix` when
    // the client offered it.
    let ws = if speaks_phoenix {
        ws.protocols([PHOENIX_PROTOCOL])
    } else {
        ws
    };
    let max = shared.limits.max_frame_bytes;
    let shared = shared.clone();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| socket::serve(socket, shared, connection)))
}

/// phoenix.js sends `btoa(token)` with the padding stripped; the URL-safe
/// alphabet is taken too.
fn decode_token(encoded: &str) -> Result<String, Error> {
    let trimmed = encoded.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|_| Error::BadRequest("the auth token is not base64"))?;
    String::from_utf8(bytes).map_err(|_| Error::BadRequest("the auth token is not utf-8"))
}

#[cfg(test)]
mod tests {
    use super::decode_token;

    #[test]
    fn tokens_decode_with_or_without_padding_and_in_either_alphabet() {
        assert_eq!(decode_token("c2VjcmV0").unwrap(), "secret");
        assert_eq!(decode_token("YWI").unwrap(), "ab");
        assert_eq!(decode_token("YWI=").unwrap(), "ab");
        assert_eq!(decode_token("Pz8_").unwrap(), "???");
        assert_eq!(decode_token("Pz8/").unwrap(), "???");
        assert!(decode_token("!!").is_err());
    }
}
