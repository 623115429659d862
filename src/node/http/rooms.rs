//! `/internal/rooms/{id}/…`: what the control's REST API asks a room's node for, with the
//! cluster secret, after it checked the user's access in the catalog: history, a thread,
//! a user's mentions, and posting a message or an event on one (the node checks bans and
//! mutes from its routing table, and the owner checks the event against its log).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::control::http::extractor::SecretChecked;
use crate::node::owner::read_message;
use crate::node::routing::{Page, MAX_MENTIONS};
use crate::node::{frames, Node, NodeError};
use crate::protocol::{Action, HistoryPage, LogQuery, Outgoing, PostEvent, PostedEvent, RoomId, Seq};

#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
pub struct MentionsQuery {
    user: String,
    #[serde(default)]
    after: Seq,
    limit: Option<u32>,
    /// The newest mentions, newest first (else the oldest after `after`).
    #[serde(default)]
    newest: bool,
}

/// History for the control plane's REST API, from this node's copy (the control asks the
/// room's owner).
pub async fn history(
    _: SecretChecked,
    State(node): State<Node>,
    Path(room): Path<RoomId>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    page(room, node.fetch_local(room, None, query.before, limit).await)
}

/// Message `root` and its thread's replies, oldest first.
pub async fn thread(_: SecretChecked, State(node): State<Node>, Path((room, root)): Path<(RoomId, Seq)>) -> Response {
    page(room, node.query(room, LogQuery::Thread { root }).await)
}

/// The messages after `after` that mention `user` (or `@room`): the oldest, or the newest.
pub async fn mentions(
    _: SecretChecked,
    State(node): State<Node>,
    Path(room): Path<RoomId>,
    Query(query): Query<MentionsQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(MAX_MENTIONS as u32).clamp(1, MAX_MENTIONS as u32);
    let MentionsQuery { user, after, newest, .. } = query;
    page(room, node.query(room, LogQuery::Mentions { user, after, limit, newest }).await)
}

/// Appends a message or an event for a user through the room's owner; a system line
/// (moderation) skips the sender's mute.
pub async fn post_event(
    _: SecretChecked,
    State(node): State<Node>,
    Path(room): Path<RoomId>,
    Json(event): Json<PostEvent>,
) -> Response {
    let PostEvent { user_id, username, client_id, action } = event;
    if let Err(refused) = frames::check_change(&client_id, (&action).into(), &node.config.limits) {
        let body = serde_json::json!({"code": refused.code, "message": refused.message});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let checked = match action {
        Action::System { .. } => node.check_access(room, user_id).await.or_else(|e| match e {
            // The cluster's admins moderate rooms they are not members of.
            NodeError::Forbidden | NodeError::Banned => Ok(()),
            other => Err(other),
        }),
        _ => node.check_send(room, user_id).await,
    };
    if let Err(e) = checked {
        return error(&e);
    }
    let outgoing = Outgoing { user_id, username, client_id, action };
    match node.send_message(room, outgoing).await {
        Ok(sent) => Json(PostedEvent { seq: sent.seq, duplicate: sent.duplicate }).into_response(),
        Err(e) => error(&e),
    }
}

fn page(room: RoomId, read: Result<Page, NodeError>) -> Response {
    match read {
        Ok((messages, has_more, _)) => {
            let messages = messages.iter().map(|m| read_message(room, m)).collect();
            Json(HistoryPage { messages, has_more }).into_response()
        }
        Err(e) => error(&e),
    }
}

/// A node error as the control reads it: `{code, message}` with a matching status.
fn error(e: &NodeError) -> Response {
    let status = match e {
        NodeError::Forbidden | NodeError::Banned | NodeError::Muted | NodeError::NotAllowed(_) => StatusCode::FORBIDDEN,
        NodeError::UnknownRoom | NodeError::NoSuchMessage => StatusCode::NOT_FOUND,
        NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        NodeError::Busy => StatusCode::TOO_MANY_REQUESTS,
        NodeError::Unavailable(_) | NodeError::StaleEpoch | NodeError::LogMismatch => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(serde_json::json!({"code": e.code(), "message": e.to_string()}))).into_response()
}
