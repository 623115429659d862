//! The public REST API's chat parts: connection tokens and the node list a browser needs
//! to open its WebSocket, the node registry, direct messages, and room history (proxied
//! to the node that owns the room, or its replica).
//!
//! | method path | auth | answer |
//! |---|---|---|
//! | `GET /api/token` | session | [`TokenView`] `{token, expires_ms, nodes:[{id, ws_url, load}]}` |
//! | `GET /api/nodes` | none (read-only, no secrets) | [`NodesView`] `{nodes:[NodeView]}` |
//! | `POST /api/dms` `{username}` | session | the DM room (201 created, 200 existing) |
//! | `GET /api/rooms/{id}/messages?before=&limit=` | session; members only for private rooms | `{messages, has_more}` |

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::extractor::{accessible_room, AuthUser};
use super::views::{NodeView, NodesView, RoomView};
use crate::control::catalog::{dm_name, ChatNodeId, Command, CommandOutput, NodeStatus, RoomId};
use crate::control::history;
use crate::control::loads::{node_loads, NodeSeen};
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;
use crate::protocol::{ConnectionClaims, HistoryPage};
use crate::token;

/// History page size when the client does not say, and the most it may ask for.
const HISTORY_DEFAULT_LIMIT: u32 = 50;
const HISTORY_MAX_LIMIT: u32 = 200;
/// How long a history read waits for its read barrier before it is served from this
/// member's catalog as it is.
const READ_BARRIER_WAIT: Duration = Duration::from_secs(2);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/token", get(connection_token))
        .route("/api/nodes", get(list_nodes))
        .route("/api/dms", post(open_dm))
        .route("/api/rooms/{id}/messages", get(room_messages))
}

/// What `GET /api/token` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    /// For the WebSocket's `hello` frame; checked by the node without a round trip.
    pub token: String,
    /// When the token stops being accepted for a new connection (Unix milliseconds).
    pub expires_ms: u64,
    /// The `Up` nodes, least-loaded first: try them in order.
    pub nodes: Vec<TokenNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenNode {
    pub id: ChatNodeId,
    pub ws_url: String,
    /// Open connections at the node's last heartbeat (0 when unknown).
    pub load: u64,
}

/// `GET /api/token`: a fresh connection token and where to use it.
async fn connection_token(
    AuthUser(user_id): AuthUser,
    State(app): State<AppState>,
) -> Result<Json<TokenView>, ApiError> {
    let loads = node_loads(&app).await;
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    let user = catalog.users.get(&user_id).ok_or_else(ApiError::unauthorized)?;
    let key = catalog
        .meta
        .signing_key
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("the cluster is still starting; retry shortly"))?;
    let expires_ms = now_ms() + token::CONNECTION_TOKEN_TTL_MS;
    let claims = ConnectionClaims { user_id, username: user.username.clone(), expires_ms };
    let token = token::sign(&token::derive_token_key(key), &claims);
    let mut nodes: Vec<TokenNode> = catalog
        .nodes
        .values()
        .filter(|node| node.status == NodeStatus::Up)
        .map(|node| TokenNode { id: node.id, ws_url: node.ws_url.clone(), load: connections(loads.get(&node.id)) })
        .collect();
    // Without figures from the leader every load is 0 and this is catalog (id) order.
    nodes.sort_by_key(|node| (node.load, node.id));
    Ok(Json(TokenView { token, expires_ms, nodes }))
}

fn connections(seen: Option<&NodeSeen>) -> u64 {
    seen.and_then(|seen| seen.load.as_ref()).map_or(0, |load| load.connections)
}

/// `GET /api/nodes`: the node registry with health and load. Public and read-only: it
/// holds addresses browsers get anyway and no secrets, and `districhat status` reads it.
async fn list_nodes(State(app): State<AppState>) -> Json<NodesView> {
    let loads = node_loads(&app).await;
    let state = read_state(&app.state);
    let counts = state.catalog.node_room_counts();
    let nodes = state
        .catalog
        .nodes
        .values()
        .map(|node| {
            let count = counts.get(&node.id).copied().unwrap_or_default();
            NodeView::with_counts(node, count, loads.get(&node.id))
        })
        .collect();
    Json(NodesView { nodes })
}

#[derive(Deserialize)]
struct NewDm {
    username: String,
}

/// `POST /api/dms`: the caller's DM room with `username`, created on first use.
async fn open_dm(
    AuthUser(caller): AuthUser,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewDm>,
) -> Result<Response, ApiError> {
    let peer = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let peer = catalog.user_by_name(&body.username).ok_or_else(|| ApiError::not_found("no such user"))?.id;
        // Already there: answer from this member's catalog without a Raft write.
        if let Some(room) = catalog.room_by_name(&dm_name(caller, peer)) {
            if room.is_dm() && catalog.is_banned(room.id, caller) {
                return Err(ApiError::banned());
            }
            if room.is_dm() && catalog.is_member(room.id, caller) {
                return Ok((StatusCode::OK, Json(RoomView::new(catalog, room, true))).into_response());
            }
        }
        peer
    };
    match app.writer.write(Command::CreateDm { a: caller, b: peer, at_ms: now_ms() }).await? {
        CommandOutput::Dm { room, created } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            let view = RoomView::new(&read_state(&app.state).catalog, &room, true);
            Ok((status, Json(view)).into_response())
        }
        other => Err(ApiError::internal(format!("CreateDm returned {other:?}"))),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// Messages with a lower seq than this (exclusive); the newest when absent.
    before: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/rooms/{id}/messages`: history, newest first, from the room's owner or, when
/// the owner does not answer, its replica. A room that never had an owner has no history.
/// A banned caller gets `403 banned`; a group-DM member added without the history gets
/// only the messages after their addition. Access is checked after a read barrier, so a
/// kick or ban committed before the request counts on every member.
async fn room_messages(
    State(app): State<AppState>,
    Path(room_id): Path<RoomId>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    AuthUser(user): AuthUser,
) -> Result<Json<HistoryPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(HISTORY_DEFAULT_LIMIT).clamp(1, HISTORY_MAX_LIMIT);
    // A kick or ban committed a moment ago must already count here, even on a member
    // that lags the leader (ARCHITECTURE.md, "Read-your-writes"). Without a leader (an
    // election) history is still served, from this member's catalog: no act can commit
    // then, and only one committed just before the leader died can be missed.
    match tokio::time::timeout(READ_BARRIER_WAIT, app.writer.read_barrier()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(room = room_id, error = %e, "history served without a read barrier"),
        Err(_) => tracing::debug!(room = room_id, "history served without a read barrier (timed out)"),
    }
    let from = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        accessible_room(catalog, room_id, user)?;
        catalog.history_from(room_id, user)
    };
    let mut page = history::page(&app, room_id, query.before, limit)
        .await
        .map_err(|_| ApiError::unavailable("no chat node holding this room answered; retry shortly"))?;
    if from > 0 {
        let before = page.messages.len();
        page.messages.retain(|message| message.seq > from);
        if page.messages.len() < before || page.messages.iter().any(|message| message.seq == from + 1) {
            page.has_more = false;
        }
    }
    Ok(Json(page))
}
