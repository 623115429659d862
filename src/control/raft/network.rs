//! Raft RPC between control members over HTTP: the client side (openraft's
//! `RaftNetworkFactory`/`RaftNetwork`, with reqwest) and the server side (axum routes
//! under `/raft/`). Bodies are bincode. Every request carries the cluster secret; a
//! member answers 401 to a caller without it.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{MemberId, Raft, RaftError, TypeConfig};
use crate::control::secret::{ClusterSecret, SECRET_HEADER};
use crate::store;

/// Creates one [`Peer`] per target member; all share one connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    pub client: reqwest::Client,
    pub secret: ClusterSecret,
}

/// The RPC client for one target member.
pub struct Peer {
    client: reqwest::Client,
    secret: ClusterSecret,
    target: MemberId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: MemberId, node: &BasicNode) -> Peer {
        Peer { client: self.client.clone(), secret: self.secret.clone(), target, addr: node.addr.clone() }
    }
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<MemberId, BasicNode, RaftError<E>>>;

impl Peer {
    async fn call<Req, Resp, E>(&self, path: &str, request: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = store::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let response = self
            .client
            .post(format!("http://{}/raft/{path}", self.addr))
            .header(SECRET_HEADER, self.secret.expose())
            .timeout(ttl)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        if !response.status().is_success() {
            let e = std::io::Error::other(format!("raft rpc {path} answered {}", response.status()));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let bytes = response.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<Resp, RaftError<E>> =
            store::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MemberId>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<MemberId>, option: RPCOption) -> RpcResult<VoteResponse<MemberId>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

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
    serve(&secret, &headers, &body, |request| async move { raft.append_entries(request).await }).await
}

async fn vote(State((raft, secret)): RpcState, headers: HeaderMap, body: Bytes) -> Response {
    serve(&secret, &headers, &body, |request| async move { raft.vote(request).await }).await
}

async fn snapshot(State((raft, secret)): RpcState, headers: HeaderMap, body: Bytes) -> Response {
    serve(&secret, &headers, &body, |request| async move { raft.install_snapshot(request).await }).await
}

/// Checks the secret, decodes the request, runs it and encodes the result.
async fn serve<Req, Resp, Fut>(
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
    let result = handle(request).await;
    match store::encode(&result) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a raft response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
