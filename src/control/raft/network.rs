//! Raft RPC between control members over HTTP, the client side: openraft's
//! `RaftNetworkFactory`/`RaftNetwork`, with reqwest. Bodies are bincode. Every request
//! carries the cluster secret; a member answers 401 to a caller without it (the server
//! side, `/raft/*`, is `control/http/raft.rs`).

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{MemberId, RaftError, TypeConfig};
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
