//! The internal API chat nodes call (JSON, cluster secret required, 401 without it):
//!
//! | method path | body → answer |
//! |---|---|
//! | `POST /internal/nodes/register` | [`RegisterNode`] → [`NodeRegistration`]; any member (a Raft write) |
//! | `POST /internal/nodes/heartbeat` | [`Heartbeat`] → [`HeartbeatReply`]; the leader only |
//! | `GET /internal/routes` | → [`RoutingTable`]; any member, from its applied catalog |
//! | `GET /internal/routes/delta?from=V` | → [`RoutingDelta`] since version `V`; any member, `404 no_delta` when it cannot say |
//! | `GET /internal/nodes/loads` | → [`LoadsReply`]; the leader's heartbeat memory (for followers) |
//!
//! The routing table's version is the Raft applied index of the catalog it was read from:
//! it only grows, and a heartbeat carrying another version gets what changed since its
//! version (a delta, when the node takes them and the leader's change index reaches back
//! that far) or else the whole table — either with the connection-token key, so a key
//! replaced by `admin after-restore` reaches running nodes at their next heartbeat. A delta
//! too large for a heartbeat is fetched beside it with `GET /internal/routes/delta`
//! (docs/PROTOCOL.md, "Routing-table deltas").

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::time::Instant;

use super::error::{ApiError, ApiJson};
use super::extractor::SecretChecked;
use crate::control::catalog::{Command, CommandOutput, NodeStatus, RoomId};
use crate::control::loads::{leader, local_loads, LoadsReply};
use crate::control::raft::state_machine::read_state;
use crate::control::routing::{routing_delta, routing_table, valid_addr, valid_ws_url, version};
use crate::control::AppState;
use crate::now_ms;
use crate::protocol::{Heartbeat, HeartbeatReply, NodeRegistration, RegisterNode, RoutingDelta, RoutingTable};
use crate::token;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/internal/nodes/register", post(register))
        .route("/internal/nodes/heartbeat", post(heartbeat))
        .route("/internal/nodes/loads", get(loads))
        .route("/internal/routes", get(routing))
        .route("/internal/routes/delta", get(delta_since))
}

/// `POST /internal/nodes/register`: a node announces (or re-announces) itself.
async fn register(
    _: SecretChecked,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<RegisterNode>,
) -> Result<Json<NodeRegistration>, ApiError> {
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
    _: SecretChecked,
    State(app): State<AppState>,
    ApiJson(beat): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
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
    if matches!(status, NodeStatus::Down | NodeStatus::DrainedDown) {
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
    if beat.routes_version == version(&state) {
        return Ok(Json(HeartbeatReply::Ok { routes: None, delta: None, fetch: false }));
    }
    let (routes, delta, fetch) = if beat.deltas {
        // Counted before it is built: a delta too large for a heartbeat is not built here
        // (under the catalog lock) only to be dropped.
        // The limit is `heartbeat_routes`: a node that needs more (rooms are created fast,
        // it was cut off, or its version is older than this member's change index) is told
        // to fetch beside its heartbeats, the delta when a member can give it, else the
        // whole table.
        let limit = app.config.heartbeat_routes;
        let fits = (state.route_changes.changed_since(beat.routes_version))
            .is_some_and(|changed| changed.take(limit + 1).count() <= limit);
        match fits.then(|| routing_delta(&state, beat.routes_version)).flatten() {
            Some(delta) => (None, Some(Box::new(delta)), false),
            // Too much for a heartbeat: liveness must not wait on megabytes of routes.
            _ if state.catalog.rooms.len() > limit => (None, None, true),
            _ => (Some(routing_table(&state)), None, false),
        }
    } else {
        (Some(routing_table(&state)), None, false)
    };
    drop(state);
    let kind = match (&routes, &delta) {
        (Some(_), _) => "full",
        (None, Some(_)) => "delta",
        (None, None) => "fetch",
    };
    metrics::counter!("districhat_routes_sent_total", "kind" => kind).increment(1);
    Ok(Json(HeartbeatReply::Ok { routes, delta, fetch }))
}

/// `GET /internal/routes`: the whole routing table of this member's applied catalog.
async fn routing(_: SecretChecked, State(app): State<AppState>) -> Json<RoutingTable> {
    metrics::counter!("districhat_routes_sent_total", "kind" => "table").increment(1);
    Json(routing_table(&read_state(&app.state)))
}

#[derive(Debug, serde::Deserialize)]
struct DeltaQuery {
    from: u64,
}

/// `GET /internal/routes/delta?from=V`: what changed in the routing table since version
/// `V`, for a node whose heartbeat said `fetch` (its delta was too large for a heartbeat).
/// Its cost follows the rooms that changed, where the whole table's follows every room.
/// An empty delta when `V` is this member's own version (a node whose lookup missed asks
/// whether anything changed). `404 no_delta` when this member cannot say (its change index
/// starts after `V`, or `V` is 0 or newer than its own version): the node then fetches the
/// whole table.
async fn delta_since(
    _: SecretChecked,
    State(app): State<AppState>,
    query: Result<Query<DeltaQuery>, QueryRejection>,
) -> Result<Json<RoutingDelta>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let delta = routing_delta(&read_state(&app.state), query.from).ok_or_else(|| {
        let message = format!("no delta from version {}: fetch the whole table", query.from);
        ApiError::new(StatusCode::NOT_FOUND, "no_delta", message)
    })?;
    metrics::counter!("districhat_routes_sent_total", "kind" => "delta_fetch").increment(1);
    Ok(Json(delta))
}

/// `GET /internal/nodes/loads`: the leader's heartbeat memory.
async fn loads(_: SecretChecked, State(app): State<AppState>) -> Json<LoadsReply> {
    let leader = leader(&app);
    if leader.id != Some(app.id) {
        return Json(LoadsReply::default());
    }
    Json(LoadsReply { leader: true, nodes: local_loads(&app, leader.term).into_values().collect() })
}
