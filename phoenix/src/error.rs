//! The crate's one error type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What went wrong building an [`Endpoint`](crate::Endpoint) or accepting
/// a websocket. Refusals of a connection become HTTP responses (see
/// [`Error::status`]); nothing here panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`EndpointBuilder::build`](crate::EndpointBuilder::build) without a
    /// [`Policy`](crate::Policy).
    #[error("an endpoint needs a policy")]
    MissingPolicy,
    /// The client asked for a serializer other than V2 (`vsn=2.0.0`), or
    /// for none (which means V1 to Phoenix).
    #[error("unsupported serializer version {0:?}, only 2.0.0 is served")]
    UnsupportedVersion(Option<String>),
    /// The query string or the offered auth token could not be decoded.
    #[error("bad connect request: {0}")]
    BadRequest(&'static str),
    /// The policy's [`connect`](crate::Policy::connect) refused the socket.
    #[error("connection refused: {0}")]
    Refused(String),
}

impl Error {
    /// The HTTP status a refused websocket request gets: 403 for
    /// [`Error::Refused`], 400 for the rest.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Refused(_) => StatusCode::FORBIDDEN,
            Error::MissingPolicy => StatusCode::INTERNAL_SERVER_ERROR,
            Error::UnsupportedVersion(_) | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}
