//! The internal API chat nodes call (JSON, cluster secret required, 401 without it):
//!
//! | method path | body → answer |
//! |---|---|
//! | `POST /internal/nodes/register` | [`RegisterNode`] → [`NodeRegistration`]; any member (a Raft write) |
//! | `POST /internal/nodes/heartbeat` | [`Heartbeat`] → [`HeartbeatReply`]; the leader only |
//! | `GET /internal/routes` | → [`RoutingTable`]; any member, from its applied catalog |
//! | `GET /internal/nodes/loads` | → [`LoadsReply`]; the leader's heartbeat memory (for followers) |
//!
//! The routing table's version is the Raft applied index of the catalog it was read from:
//! it only grows, and a heartbeat carrying an older version gets the whole table back —
//! with the connection-token key, so a key replaced by `admin after-restore` reaches
//! running nodes at their next heartbeat.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::error::{ApiError, ApiJson};
use crate::control::catalog::{ChatNodeId, Command, CommandOutput, NodeStatus, RoomId};
use crate::control::raft::state_machine::{read_state, CatalogState};
use crate::control::raft::types::MemberId;
use crate::control::secret::SECRET_HEADER;
use crate::control::AppState;
use crate::now_ms;
use crate::protocol::{
    Heartbeat, HeartbeatReply, NodeLoad, NodeRegistration, NodeRoute, RegisterNode, RoomRoute, RoutingTable,
};
use crate::token;

/// How long a follower waits for the leader's load figures before it does without.
const LOADS_TIMEOUT: Duration = Duration::from_millis(300);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/internal/nodes/register", post(register))
        .route("/internal/nodes/heartbeat", post(heartbeat))
        .route("/internal/nodes/loads", get(loads))
        .route("/internal/routes", get(routing))
}

/// `POST /internal/nodes/register`: a node announces (or re-announces) itself.
async fn register(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterNode>,
) -> Result<Json<NodeRegistration>, ApiError> {
    app.secret.require(&headers)?;
    if !valid_addr(&body.addr) {
        return Err(ApiError::bad_request("invalid_addr", "addr must be host:port"));
    }
    let ws_url = match body.public_ws_url {
        Some(url) if valid_ws_url(&url) => url,
        Some(_) => return Err(ApiError::bad_request("invalid_ws_url", "public_ws_url must be ws:// or wss://")),
        None => format!("ws://{}/ws", body.addr),
    };
    let command = Command::RegisterNode {
        name: body.name,
        ws_url,
        mesh_addr: body.addr,
        approved: !app.config.require_node_approval,
        at_ms: now_ms(),
    };
    let node = match app.writer.write(command).await? {
        CommandOutput::Node(node) => node,
        other => return Err(ApiError::internal(format!("RegisterNode returned {other:?}"))),
    };
    let signing_key = read_state(&app.state).catalog.meta.signing_key.clone();
    let signing_key =
        signing_key.ok_or_else(|| ApiError::unavailable("the cluster is still starting; retry shortly"))?;
    tracing::info!(node = node.id, name = %node.name, addr = %node.mesh_addr, status = ?node.status, "chat node registered");
    // A pending node gets the token key too: it already holds the cluster secret, so the
    // approval is an operator's gate, not a cryptographic one.
    Ok(Json(NodeRegistration {
        node_id: node.id,
        approved: node.status != NodeStatus::Pending,
        token_key: token::derive_token_key(&signing_key),
    }))
}

/// `POST /internal/nodes/heartbeat`: the leader records the node's load (in memory) and
/// answers with the routing table when the node's copy is outdated.
async fn heartbeat(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(beat): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    app.secret.require(&headers)?;
    let leader = leader(&app);
    if leader.id != Some(app.id) {
        return Ok(Json(HeartbeatReply::NotLeader { leader: leader.addr }));
    }
    if !leader.holds_quorum {
        // Perhaps deposed without knowing it: the node should look for the leader elsewhere.
        return Ok(Json(HeartbeatReply::NotLeader { leader: None }));
    }
    let (status, newly_in_sync) = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let newly_in_sync: Vec<(RoomId, u64)> = beat
            .in_sync
            .iter()
            .copied()
            .filter(|(room, epoch)| catalog.replicas_in_sync.get(room) != Some(epoch))
            .collect();
        (catalog.nodes.get(&beat.node_id).map(|node| node.status), newly_in_sync)
    };
    let Some(status) = status else { return Ok(Json(HeartbeatReply::Unknown)) };
    app.liveness.heartbeat(leader.term, beat.node_id, beat.load, beat.routes_version, Instant::now());
    if status == NodeStatus::Down {
        match app.writer.write(Command::NodeUp { node: beat.node_id }).await {
            Ok(_) => tracing::info!(node = beat.node_id, "a chat node marked down heartbeats again: it is up"),
            Err(e) => tracing::warn!(node = beat.node_id, error = %e, "could not mark a returning node up yet"),
        }
    }
    if !newly_in_sync.is_empty() {
        let rooms = newly_in_sync.len();
        match app.writer.write(Command::ReplicasInSync { node: beat.node_id, rooms: newly_in_sync }).await {
            Ok(_) => tracing::debug!(node = beat.node_id, rooms, "replicas reported in sync"),
            Err(e) => tracing::warn!(node = beat.node_id, error = %e, "could not record replicas in sync yet"),
        }
    }
    let state = read_state(&app.state);
    let routes = (beat.routes_version != version(&state)).then(|| routing_table(&state));
    Ok(Json(HeartbeatReply::Ok { routes }))
}

/// `GET /internal/routes`: the whole routing table of this member's applied catalog.
async fn routing(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<RoutingTable>, ApiError> {
    app.secret.require(&headers)?;
    Ok(Json(routing_table(&read_state(&app.state))))
}

/// What `GET /internal/nodes/loads` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadsReply {
    /// False when the answering member does not lead: its (empty) figures mean nothing.
    pub leader: bool,
    pub nodes: Vec<NodeSeen>,
}

/// One node's last heartbeat as the leader saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSeen {
    pub id: ChatNodeId,
    /// `None` until the node's first heartbeat to this leader.
    pub load: Option<NodeLoad>,
    /// Milliseconds since that heartbeat (or since the leader started counting the node).
    pub last_seen_ms: u64,
    /// The routing-table version the node held at that heartbeat (0 when unknown).
    #[serde(default)]
    pub routes_version: u64,
}

impl NodeSeen {
    /// What the node last reported, if that was within `timeout_ms` (else it may be gone
    /// and its report says nothing about now).
    pub fn recent_load(&self, timeout_ms: u64) -> Option<&NodeLoad> {
        self.load.as_ref().filter(|_| self.last_seen_ms < timeout_ms)
    }
}

/// `GET /internal/nodes/loads`: the leader's heartbeat memory.
async fn loads(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<LoadsReply>, ApiError> {
    app.secret.require(&headers)?;
    let leader = leader(&app);
    if leader.id != Some(app.id) {
        return Ok(Json(LoadsReply::default()));
    }
    Ok(Json(LoadsReply { leader: true, nodes: local_loads(&app, leader.term).into_values().collect() }))
}

/// The latest heartbeat figures per node: this member's own memory when it leads, else the
/// leader's (asked with a short timeout). Empty when neither can be had.
pub async fn node_loads(app: &AppState) -> BTreeMap<ChatNodeId, NodeSeen> {
    let leader = leader(app);
    if leader.id == Some(app.id) {
        return local_loads(app, leader.term);
    }
    let Some(addr) = leader.addr else { return BTreeMap::new() };
    let asked = app
        .client
        .get(format!("http://{addr}/internal/nodes/loads"))
        .header(SECRET_HEADER, app.secret.expose())
        .timeout(LOADS_TIMEOUT)
        .send()
        .await;
    let reply = match asked {
        Ok(response) if response.status().is_success() => response.json::<LoadsReply>().await.ok(),
        _ => None,
    };
    match reply {
        Some(reply) if reply.leader => reply.nodes.into_iter().map(|seen| (seen.id, seen)).collect(),
        _ => {
            tracing::debug!(leader = %addr, "no load figures from the leader; using catalog order");
            BTreeMap::new()
        }
    }
}

fn local_loads(app: &AppState, term: u64) -> BTreeMap<ChatNodeId, NodeSeen> {
    let now = Instant::now();
    app.liveness
        .snapshot(term)
        .into_iter()
        .map(|(id, seen)| {
            let last_seen_ms = u64::try_from(now.duration_since(seen.at).as_millis()).unwrap_or(u64::MAX);
            (id, NodeSeen { id, load: seen.load, last_seen_ms, routes_version: seen.routes_version })
        })
        .collect()
}

/// Who leads, as this member knows it.
pub struct LeaderInfo {
    pub id: Option<MemberId>,
    pub term: u64,
    /// The leader's `host:port`.
    pub addr: Option<String>,
    /// Whether this member leads and a majority of the group acknowledged it within an
    /// election timeout (`election_max_ms`). openraft 0.9 has no check-quorum: a leader
    /// cut off from the other members keeps believing it leads while a majority elects
    /// another. Such a leader must not act for the group (answer nodes' heartbeats, mark
    /// nodes down): docs/REPLICATION.md, "Control decisions".
    pub holds_quorum: bool,
}

pub fn leader(app: &AppState) -> LeaderInfo {
    let metrics = app.raft.metrics();
    let metrics = metrics.borrow();
    let id = metrics.current_leader;
    let addr = id.and_then(|leader| {
        metrics.membership_config.nodes().find(|(member, _)| **member == leader).map(|(_, node)| node.addr.clone())
    });
    let heard_lately = metrics.millis_since_quorum_ack.is_some_and(|ms| ms <= app.config.raft.election_max_ms);
    LeaderInfo { id, term: metrics.current_term, addr, holds_quorum: id == Some(app.id) && heard_lately }
}

/// The routing-table version of a catalog: its Raft applied index.
pub fn version(state: &CatalogState) -> u64 {
    state.applied.last_applied.map_or(0, |log_id| log_id.index)
}

/// Every node and room of the catalog as nodes need them; members only for private rooms.
pub fn routing_table(state: &CatalogState) -> RoutingTable {
    let catalog = &state.catalog;
    let nodes = catalog
        .nodes
        .values()
        .map(|node| NodeRoute { id: node.id, addr: node.mesh_addr.clone(), up: node.status == NodeStatus::Up })
        .collect();
    let rooms = catalog
        .rooms
        .values()
        .map(|room| RoomRoute {
            id: room.id,
            owner: room.owner,
            replica: room.replica,
            epoch: room.epoch,
            replica_in_sync: catalog.replica_in_sync(room),
            private: room.private,
            members: if room.private { catalog.room_members(room.id).collect() } else { Vec::new() },
        })
        .collect();
    let token_key = catalog.meta.signing_key.as_deref().map(token::derive_token_key).unwrap_or_default();
    RoutingTable { version: version(state), nodes, rooms, token_key }
}

/// A browser WebSocket URL: ws:// or wss://, a host, printable ASCII only. Nodes check
/// their own `public_ws_url` with it at start ([`crate::node::config::NodeConfig::load`]).
pub fn valid_ws_url(url: &str) -> bool {
    let rest = url.strip_prefix("wss://").or_else(|| url.strip_prefix("ws://"));
    url.len() <= 255 && rest.is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic()))
}

/// `host:port` with a non-empty host and a numeric port, nothing else.
fn valid_addr(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    !host.is_empty()
        && addr.len() <= 255
        && port.parse::<u16>().is_ok_and(|port| port != 0)
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for good in ["127.0.0.1:7100", "node-1.internal:80", "[::1]:7100"] {
            assert!(valid_addr(good), "{good}");
        }
        for bad in ["", "127.0.0.1", ":7100", "host:0", "host:http", "a b:1", "host/x:1", "http://h:1"] {
            assert!(!valid_addr(bad), "{bad}");
        }
    }

    #[test]
    fn public_websocket_urls_are_ws_or_wss() {
        for good in ["wss://chat.example.com/n1/ws", "ws://10.0.0.5:7100/ws"] {
            assert!(valid_ws_url(good), "{good}");
        }
        for bad in ["", "wss://", "https://chat.example.com/ws", "wss://a b/ws", "javascript:alert(1)"] {
            assert!(!valid_ws_url(bad), "{bad}");
        }
    }
}
