//! Operator endpoints, guarded by the cluster secret: bootstrap the group, change its
//! membership online (a new member joins as a learner, catches up, then becomes a voter),
//! approve chat nodes, and the step after a whole-control-plane restore
//! ([`crate::control::restore`]). Membership changes must run on the leader:
//! another member relays the request there. (Backups, drains and rebalancing have their
//! own modules.)

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::extractor::SecretChecked;
use super::views::NodeView;
use crate::control::catalog::{ChatNodeId, Command, CommandOutput};
use crate::control::raft::state_machine::read_state;
use crate::control::raft::types::MemberId;
use crate::control::restore::{self, AfterRestoreReply};
use crate::control::secret::SECRET_HEADER;
use crate::control::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/init", post(init))
        .route("/api/admin/members", post(add_member))
        .route("/api/admin/members/{id}", delete(remove_member))
        .route("/api/admin/nodes/{id}/approve", post(approve_node))
        .route("/api/admin/after-restore", post(after_restore))
}

/// `POST /api/admin/nodes/{id}/approve`: a pending chat node may serve (idempotent).
async fn approve_node(
    _: SecretChecked,
    State(app): State<AppState>,
    Path(id): Path<ChatNodeId>,
) -> Result<Json<NodeView>, ApiError> {
    match app.writer.write(Command::ApproveNode { node: id }).await? {
        CommandOutput::Node(node) => {
            tracing::info!(node = node.id, name = %node.name, "chat node approved");
            Ok(Json(NodeView::new(&read_state(&app.state).catalog, &node, None)))
        }
        other => Err(ApiError::internal(format!("ApproveNode returned {other:?}"))),
    }
}

/// `POST /api/admin/init`: bootstrap with the configured peers (idempotent).
async fn init(_: SecretChecked, State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    crate::control::initialize(&app.raft, &app.config, &app.config.peers).await.map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({"initialized": true})))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NewMember {
    pub id: MemberId,
    pub addr: String,
}

/// The membership after a change.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembershipView {
    pub voters: Vec<MemberId>,
    pub learners: Vec<MemberId>,
}

/// `POST /api/admin/members`: add a member as learner, wait for it to catch up, promote it.
async fn add_member(
    _: SecretChecked,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewMember>,
) -> Result<Response, ApiError> {
    if let Some(relayed) = relay_to_leader(&app, Method::POST, "/api/admin/members", Some(&body)).await? {
        return Ok(relayed);
    }
    app.raft.add_learner(body.id, BasicNode { addr: body.addr.clone() }, true).await.map_err(membership_error)?;
    let response = app
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([body.id])), false)
        .await
        .map_err(membership_error)?;
    tracing::info!(member = body.id, addr = %body.addr, "added a voting member");
    Ok(Json(membership_view(&response.membership)).into_response())
}

/// `DELETE /api/admin/members/{id}`: remove a member (voter or learner) from the group.
async fn remove_member(
    _: SecretChecked,
    State(app): State<AppState>,
    Path(id): Path<MemberId>,
) -> Result<Response, ApiError> {
    let path = format!("/api/admin/members/{id}");
    if let Some(relayed) = relay_to_leader::<()>(&app, Method::DELETE, &path, None).await? {
        return Ok(relayed);
    }
    let membership = app.raft.metrics().borrow().membership_config.clone();
    if !membership.nodes().any(|(member, _)| *member == id) {
        return Err(ApiError::not_found(format!("member {id} is not in the group")));
    }
    let mut latest = None;
    if membership.voter_ids().any(|voter| voter == id) {
        let changes = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
        latest = Some(app.raft.change_membership(changes, false).await.map_err(membership_error)?.membership);
    }
    let still_learner = app.raft.metrics().borrow().membership_config.nodes().any(|(member, _)| *member == id);
    if still_learner {
        let changes = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
        latest = Some(app.raft.change_membership(changes, false).await.map_err(membership_error)?.membership);
    }
    tracing::info!(member = id, "removed a member");
    let view = latest.as_ref().map(membership_view);
    Ok(Json(view).into_response())
}

/// `POST /api/admin/after-restore`: see [`restore`]. Relayed to the leader like any write.
async fn after_restore(_: SecretChecked, State(app): State<AppState>) -> Result<Json<AfterRestoreReply>, ApiError> {
    match app.writer.write(restore::command()).await? {
        CommandOutput::Recovered { next_user_id, next_room_id, next_node_id } => {
            tracing::warn!(
                member = app.id,
                next_user_id,
                next_room_id,
                next_node_id,
                "after a restore: rotated the signing key (every session ends) and moved the id counters forward"
            );
            Ok(Json(AfterRestoreReply { signing_key_rotated: true, next_user_id, next_room_id, next_node_id }))
        }
        other => Err(ApiError::internal(format!("RecoverFromRestore returned {other:?}"))),
    }
}

fn membership_view(membership: &Option<openraft::Membership<MemberId, BasicNode>>) -> MembershipView {
    match membership {
        Some(m) => MembershipView { voters: m.voter_ids().collect(), learners: m.learner_ids().collect() },
        None => MembershipView { voters: Vec::new(), learners: Vec::new() },
    }
}

fn membership_error(e: RaftError<MemberId, ClientWriteError<MemberId, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::new(StatusCode::CONFLICT, "membership_change_refused", e.to_string())
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ApiError::unavailable("leadership moved during the change; retry")
        }
        RaftError::Fatal(e) => ApiError::internal(e),
    }
}

/// If another member leads, sends it the same request and returns its answer.
async fn relay_to_leader<B: Serialize>(
    app: &AppState,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<Option<Response>, ApiError> {
    let metrics = app.raft.metrics().borrow().clone();
    let leader = metrics.current_leader.ok_or_else(|| ApiError::unavailable("no leader yet; retry shortly"))?;
    if leader == app.id {
        return Ok(None);
    }
    let addr = metrics
        .membership_config
        .nodes()
        .find(|(id, _)| **id == leader)
        .map(|(_, node)| node.addr.clone())
        .ok_or_else(|| ApiError::unavailable("the leader's address is unknown"))?;
    let mut request = app
        .client
        .request(method, format!("http://{addr}{path}"))
        .header(SECRET_HEADER, app.secret.expose())
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|e| ApiError::unavailable(format!("leader unreachable: {e}")))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| ApiError::unavailable(format!("leader reply lost: {e}")))?;
    let relayed = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response();
    Ok(Some(relayed))
}
