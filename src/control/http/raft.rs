//! Raft RPC between control members, the server side: `/raft/append`, `/raft/vote`,
//! `/raft/snapshot` (bincode bodies, cluster secret; 401 without it). The client side is
//! [`raft::network`](crate::control::raft::network).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::raft::types::Raft;
use crate::control::secret::ClusterSecret;
use crate::store;

/// The server side: `/raft/append`, `/raft/vote`, `/raft/snapshot`.
pub fn routes(raft: Raft, secret: ClusterSecret) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .with_state((raft, secret))
}

type RpcState = State<(Raft, ClusterSecret)>;

async fn append(State((raft, secret)): RpcState, headers: HeaderMap, body: Bytes) -> Response {
    serve("append", &secret, &headers, &body, |request| async move { raft.append_entries(request).await }).await
}

async fn vote(State((raft, secret)): RpcState, headers: HeaderMap, body: Bytes) -> Response {
    serve("vote", &secret, &headers, &body, |request| async move { raft.vote(request).await }).await
}

async fn snapshot(State((raft, secret)): RpcState, headers: HeaderMap, body: Bytes) -> Response {
    serve("snapshot", &secret, &headers, &body, |request| async move { raft.install_snapshot(request).await }).await
}

/// Checks the secret, decodes the request, runs it and encodes the result. How long
/// running it took goes to `districhat_raft_rpc_served_seconds{rpc}`.
async fn serve<Req, Resp, Fut>(
    rpc: &'static str,
    secret: &ClusterSecret,
    headers: &HeaderMap,
    body: &[u8],
    handle: impl FnOnce(Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    if !secret.matches(headers) {
        return (StatusCode::UNAUTHORIZED, "cluster secret required").into_response();
    }
    let request: Req = match store::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable raft request: {e}")).into_response(),
    };
    let started = std::time::Instant::now();
    let result = handle(request).await;
    metrics::histogram!("districhat_raft_rpc_served_seconds", "rpc" => rpc).record(started.elapsed().as_secs_f64());
    match store::encode(&result) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a raft response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
