//! `POST /internal/write` (cluster secret): the leader's end of a catalog write another
//! member forwarded ([`Writer`]). Bodies are bincode: a [`Command`] in, a
//! [`ForwardReply`](crate::control::write::ForwardReply) out. `GET /internal/read-index`
//! (cluster secret): the leader's read index for a follower's read barrier, a bincode
//! [`ReadIndexReply`](crate::control::write::ReadIndexReply). The routes under
//! `/internal/` and `/raft/` take larger bodies than the public API
//! ([`http::router`](super::router)).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::control::catalog::Command;
use crate::control::write::Writer;
use crate::store;

pub fn routes(writer: Writer) -> Router {
    Router::new()
        .route("/internal/write", post(internal_write))
        .route("/internal/read-index", get(read_index))
        .with_state(writer)
}

/// `POST /internal/write`: a follower forwarding a command to this (leading) member.
pub async fn internal_write(State(writer): State<Writer>, headers: HeaderMap, body: Bytes) -> Response {
    if !writer.secret.matches(&headers) {
        return (StatusCode::UNAUTHORIZED, "cluster secret required").into_response();
    }
    let command: Command = match store::decode(&body) {
        Ok(command) => command,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable command: {e}")).into_response(),
    };
    let reply = writer.serve_forwarded(command).await;
    match store::encode(&reply) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a forwarded write's reply");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /internal/read-index`: this (leading) member's read index, for a follower.
pub async fn read_index(State(writer): State<Writer>, headers: HeaderMap) -> Response {
    if !writer.secret.matches(&headers) {
        return (StatusCode::UNAUTHORIZED, "cluster secret required").into_response();
    }
    match store::encode(&writer.serve_read_index().await) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a read index");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
