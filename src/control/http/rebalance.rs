//! Rebalancing rooms over the chat nodes, the operator's side (cluster secret required,
//! 401 without it):
//!
//! | method path | answer |
//! |---|---|
//! | `POST /api/admin/rebalance?max_moves=N` | [`RebalanceReport`]: one batch of moves, committed |
//! | `GET /api/admin/rebalance?since=V` | [`RebalanceProgress`]: have the nodes acted on it yet? |
//!
//! One batch is one catalog command ([`Command::Rebalance`]), computed inside `apply`
//! (`catalog/balance.rs`). A batch may prepare a swap (make a node the replica of a room
//! it will own later); the swap is only safe once the owner has copied that node the
//! room's log. So a batch starts only when the nodes have **settled**: every `Up` node
//! has heartbeated with a routing table at least as new as this member's catalog was
//! when the request came, and reports no owner still syncing its replica. The request
//! waits up to [`SETTLE_WAIT`] for that, then answers `409 not_settled` (nothing changed).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extractor::SecretChecked;
use crate::control::catalog::{Catalog, ChatNodeId, Command, CommandOutput, RoomMove};
use crate::control::loads::{node_loads, nodes_behind};
use crate::control::raft::state_machine::read_state;
use crate::control::routing::version;
use crate::control::AppState;

/// How long a batch request waits for the nodes to settle before it refuses.
pub const SETTLE_WAIT: Duration = Duration::from_secs(15);
/// Moves per batch when the request does not say.
pub const DEFAULT_BATCH: u64 = 50;
const POLL_EVERY: Duration = Duration::from_millis(100);

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/admin/rebalance", post(rebalance).get(progress))
}

/// What one batch changed in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceReport {
    /// The rooms moved (empty: balanced already, or nothing safe left to move).
    pub moves: Vec<RoomMove>,
    /// 0 when every `Up` node owns and replicates within one room of every other.
    pub remaining_imbalance: u64,
    /// A routing-table version that includes the batch (pass it to progress as `since`).
    pub routes_version: u64,
    /// Rooms per node after the batch.
    pub nodes: Vec<NodeBalance>,
}

/// Where a rebalance stands: the nodes' routing tables and owners, and the spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceProgress {
    /// The version asked about.
    pub routes_version: u64,
    /// `Up` nodes whose last heartbeat carried an older routing table (or none yet).
    pub waiting_for: Vec<ChatNodeId>,
    /// `Up` nodes with owners still copying the log to a new replica, and how many.
    pub syncing: BTreeMap<ChatNodeId, u64>,
    pub nodes: Vec<NodeBalance>,
    pub remaining_imbalance: u64,
    /// Every `Up` node acted on the version and no owner is syncing: the next batch may go.
    pub done: bool,
}

/// Rooms a node owns and replicates in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBalance {
    pub id: ChatNodeId,
    pub name: String,
    /// `up`, `down`, `pending` or `drained`.
    pub status: String,
    pub owned: u64,
    pub replicated: u64,
}

#[derive(Debug, Deserialize)]
struct BatchQuery {
    max_moves: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ProgressQuery {
    since: Option<u64>,
}

/// `POST /api/admin/rebalance?max_moves=N`: waits for the nodes to settle, then one batch.
async fn rebalance(
    _: SecretChecked,
    State(app): State<AppState>,
    Query(query): Query<BatchQuery>,
) -> Result<Json<RebalanceReport>, ApiError> {
    let max_moves = query.max_moves.unwrap_or(DEFAULT_BATCH);
    // The placement the settle check below vouches for; the catalog refuses the batch if
    // it changed by the time the command applies (see `Command::Rebalance`).
    let (since, placement) = {
        let state = read_state(&app.state);
        (version(&state), state.catalog.placement_digest())
    };
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let progress = progress_since(&app, since).await;
        if progress.done {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_settled",
                format!(
                    "the nodes have not acted on the last room moves yet (waiting for {:?} to take routes v{since}, \
                     owners syncing a replica: {:?}); nothing moved, retry shortly",
                    progress.waiting_for, progress.syncing
                ),
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let (moves, remaining_imbalance) = match app.writer.write(Command::Rebalance { max_moves, placement }).await? {
        CommandOutput::Rebalanced { moves, remaining_imbalance } => (moves, remaining_imbalance),
        other => return Err(ApiError::internal(format!("Rebalance returned {other:?}"))),
    };
    tracing::info!(moves = moves.len(), remaining_imbalance, "rooms rebalanced in the catalog");
    // The write returned, so this member's applied version includes the batch (else it
    // answered `not_applied`): the version below is never older than the batch, which
    // would make the caller think the nodes acted on it before they saw it.
    let state = read_state(&app.state);
    Ok(Json(RebalanceReport {
        nodes: balance(&state.catalog),
        moves,
        remaining_imbalance,
        routes_version: version(&state),
    }))
}

/// `GET /api/admin/rebalance?since=V` (default: this member's applied version).
async fn progress(
    _: SecretChecked,
    State(app): State<AppState>,
    Query(query): Query<ProgressQuery>,
) -> Result<Json<RebalanceProgress>, ApiError> {
    let since = query.since.unwrap_or_else(|| version(&read_state(&app.state)));
    Ok(Json(progress_since(&app, since).await))
}

async fn progress_since(app: &AppState, since: u64) -> RebalanceProgress {
    let loads = node_loads(app).await;
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    let mut waiting_for = nodes_behind(catalog, &loads, since, |_| false);
    // Owners whose replica the catalog does not count as in sync yet: a swap must wait for
    // them (docs/REPLICATION.md, "In-sync replicas"); the heartbeats' own count below
    // also covers owners that have not started syncing yet.
    let mut syncing: BTreeMap<ChatNodeId, u64> = BTreeMap::new();
    let up = |node: Option<ChatNodeId>| {
        node.and_then(|id| catalog.nodes.get(&id)).is_some_and(|n| n.status == crate::control::catalog::NodeStatus::Up)
    };
    for room in catalog.rooms.values() {
        if up(room.owner) && up(room.replica) && !catalog.replica_in_sync(room) {
            *syncing.entry(room.owner.unwrap_or_default()).or_default() += 1;
        }
    }
    for node in catalog.nodes.values().filter(|node| node.status == crate::control::catalog::NodeStatus::Up) {
        let seen = loads.get(&node.id);
        match seen.and_then(|seen| seen.recent_load(app.config.node_timeout_ms)) {
            Some(load) if load.rooms_syncing > 0 => {
                let count = syncing.entry(node.id).or_default();
                *count = (*count).max(load.rooms_syncing);
            }
            Some(_) => {}
            // Silent lately: whatever it last said, it has not shown it acted on anything.
            None if !waiting_for.contains(&node.id) => waiting_for.push(node.id),
            None => {}
        }
    }
    RebalanceProgress {
        routes_version: since,
        done: waiting_for.is_empty() && syncing.is_empty(),
        waiting_for,
        syncing,
        nodes: balance(catalog),
        remaining_imbalance: catalog.imbalance(),
    }
}

/// Rooms owned and replicated per registered node, in id order.
pub fn balance(catalog: &Catalog) -> Vec<NodeBalance> {
    let counts = catalog.node_room_counts();
    catalog
        .nodes
        .values()
        .map(|node| {
            let (owned, replicated) = counts.get(&node.id).copied().unwrap_or_default();
            let status = format!("{:?}", node.status).to_lowercase();
            NodeBalance { id: node.id, name: node.name.clone(), status, owned, replicated }
        })
        .collect()
}
