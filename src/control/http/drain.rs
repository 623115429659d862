//! Draining a chat node, the operator's side (cluster secret required, 401 without it):
//!
//! | method path | answer |
//! |---|---|
//! | `POST /api/admin/nodes/{id}/drain` | [`DrainReport`]: the node is `drained`, its rooms moved in the catalog |
//! | `GET /api/admin/nodes/{id}/drain?since=V` | [`DrainProgress`]: have the nodes acted on it yet? |
//! | `POST /api/admin/nodes/{id}/undrain` | [`NodeView`]: the node is `up` again (rooms stay where they are) |
//!
//! The drain itself is one catalog command ([`Command::DrainNode`]): every room the node
//! owns moves to its replica and every room it replicates gets a new replica, epoch + 1
//! each, or nothing changes (`409 no_capacity`). The chat nodes learn of it through their
//! routing tables; progress compares the version each node last reported in a heartbeat
//! with the version that carries the drain.

use axum::extract::{Path, Query, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extractor::SecretChecked;
use super::views::NodeView;
use crate::control::catalog::{ChatNodeId, Command, CommandOutput, NodeStatus};
use crate::control::loads::{node_loads, nodes_behind};
use crate::control::raft::state_machine::read_state;
use crate::control::routing::version;
use crate::control::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/nodes/{id}/drain", post(drain).get(progress))
        .route("/api/admin/nodes/{id}/undrain", post(undrain))
}

/// What a drain changed in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainReport {
    pub node: NodeView,
    /// Rooms whose replica became their owner.
    pub owners_moved: u64,
    /// Rooms that got a new replica in the node's place.
    pub replicas_moved: u64,
    /// A routing-table version that includes the drain: nodes holding at least this one
    /// have acted on it (pass it to the progress call as `since`).
    pub routes_version: u64,
}

/// How far the nodes are in acting on a drain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainProgress {
    pub node: ChatNodeId,
    /// The node's catalog status (`drained` once the drain is committed).
    pub status: String,
    /// Rooms the catalog still assigns to the node.
    pub rooms_owned: u64,
    pub rooms_replicated: u64,
    /// What the node itself reported at its last heartbeat (`None`: not heard from lately,
    /// e.g. it is stopped, in which case it is not waited for).
    pub reported_owned: Option<u64>,
    pub reported_replicated: Option<u64>,
    /// The version asked about.
    pub routes_version: u64,
    /// `Up` nodes (and the drained node while alive) whose last heartbeat carried an older
    /// routing table: they have not started or stopped owning the moved rooms yet.
    pub waiting_for: Vec<ChatNodeId>,
    /// Nothing is assigned to the node, it runs no room, and every node acted on the move.
    pub done: bool,
}

#[derive(Debug, Deserialize)]
struct ProgressQuery {
    since: Option<u64>,
}

/// `POST /api/admin/nodes/{id}/drain`.
async fn drain(
    _: SecretChecked,
    State(app): State<AppState>,
    Path(id): Path<ChatNodeId>,
) -> Result<Json<DrainReport>, ApiError> {
    let (node, owners_moved, replicas_moved) = match app.writer.write(Command::DrainNode { node: id }).await? {
        CommandOutput::NodeDown { node, owners_moved, replicas_moved } => (node, owners_moved, replicas_moved),
        other => return Err(ApiError::internal(format!("DrainNode returned {other:?}"))),
    };
    tracing::info!(node = id, name = %node.name, owners_moved, replicas_moved, "chat node drained in the catalog");
    // The write returned, so this member's applied version includes the drain.
    let state = read_state(&app.state);
    let view = NodeView::new(&state.catalog, state.catalog.nodes.get(&id).unwrap_or(&node), None);
    Ok(Json(DrainReport { node: view, owners_moved, replicas_moved, routes_version: version(&state) }))
}

/// `GET /api/admin/nodes/{id}/drain?since=V` (default: this member's applied version).
async fn progress(
    _: SecretChecked,
    State(app): State<AppState>,
    Path(id): Path<ChatNodeId>,
    Query(query): Query<ProgressQuery>,
) -> Result<Json<DrainProgress>, ApiError> {
    let loads = node_loads(&app).await;
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    let node = catalog.nodes.get(&id).ok_or_else(|| ApiError::not_found(format!("no chat node with id {id}")))?;
    let since = query.since.unwrap_or_else(|| version(&state));
    let (rooms_owned, rooms_replicated) = catalog.node_room_counts().get(&id).copied().unwrap_or_default();
    let reported = loads.get(&id).and_then(|seen| seen.recent_load(app.config.node_timeout_ms)).cloned();
    let waiting_for = nodes_behind(catalog, &loads, since, |other| other.id == id && reported.is_some());
    let status = NodeView::new(catalog, node, None).status;
    let runs_nothing = reported.as_ref().is_none_or(|load| load.rooms_owned == 0 && load.rooms_replicated == 0);
    // A drained node that died since is done too: it holds nothing and serves no one.
    let done = matches!(node.status, NodeStatus::Drained | NodeStatus::DrainedDown)
        && (rooms_owned, rooms_replicated) == (0, 0)
        && runs_nothing
        && waiting_for.is_empty();
    Ok(Json(DrainProgress {
        node: id,
        status,
        rooms_owned,
        rooms_replicated,
        reported_owned: reported.as_ref().map(|load| load.rooms_owned),
        reported_replicated: reported.as_ref().map(|load| load.rooms_replicated),
        routes_version: since,
        waiting_for,
        done,
    }))
}

/// `POST /api/admin/nodes/{id}/undrain`: back in service, a candidate for new rooms.
async fn undrain(
    _: SecretChecked,
    State(app): State<AppState>,
    Path(id): Path<ChatNodeId>,
) -> Result<Json<NodeView>, ApiError> {
    match app.writer.write(Command::UndrainNode { node: id }).await? {
        CommandOutput::Node(node) => {
            tracing::info!(node = node.id, name = %node.name, "chat node back in service");
            Ok(Json(NodeView::new(&read_state(&app.state).catalog, &node, None)))
        }
        other => Err(ApiError::internal(format!("UndrainNode returned {other:?}"))),
    }
}
