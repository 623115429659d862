//! `POST /internal/write` (cluster secret): the leader's end of a catalog write another
//! member forwarded ([`Writer`]). Bodies are bincode: a [`Command`] in, a
//! [`ForwardReply`](crate::control::write::ForwardReply) out. The routes under
//! `/internal/` and `/raft/` take larger bodies than the public API
//! ([`http::router`](super::router)).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::control::catalog::Command;
use crate::control::write::Writer;
use crate::store;

pub fn routes(writer: Writer) -> Router {
    Router::new().route("/internal/write", post(internal_write)).with_state(writer)
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
