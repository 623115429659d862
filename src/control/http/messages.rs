//! The REST API for what happens to messages in a room, beside the WebSocket frames of
//! the same names (docs/PROTOCOL.md, "Message events"): post, edit, delete, react, read a
//! thread, and list one's recent mentions. Each change carries a `client_id`, so a retry
//! applies once.
//!
//! | method path | body | answer |
//! |---|---|---|
//! | `POST /api/rooms/{id}/messages` | `{client_id, text, reply_to?}` | 201 `{seq, duplicate}` (200 when a retry) |
//! | `PATCH /api/rooms/{id}/messages/{seq}` | `{client_id, text}` | same |
//! | `DELETE /api/rooms/{id}/messages/{seq}` | `{client_id}` | same |
//! | `POST /api/rooms/{id}/messages/{seq}/reactions` | `{client_id, emoji}` | same (toggles) |
//! | `GET /api/rooms/{id}/threads/{root}` | | `{messages, has_more}`: the root, then its replies |
//! | `GET /api/mentions?limit=` | | `{mentions: [{room, room_name, message}], unreachable_rooms}` |

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use super::extractor::{accessible_room, AuthUser};
use crate::control::catalog::{RoomId, UserId};
use crate::control::raft::state_machine::read_state;
use crate::control::room_events::{self, RoomEventError};
use crate::control::AppState;
use crate::protocol::{Action, HistoryPage, Seq};

/// Mentions listed when the client does not say, and the most it may ask for.
const MENTIONS_DEFAULT: u32 = 50;
const MENTIONS_MAX: u32 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms/{id}/messages", post(post_message))
        .route("/api/rooms/{id}/messages/{seq}", patch(edit_message).delete(delete_message))
        .route("/api/rooms/{id}/messages/{seq}/reactions", post(react))
        .route("/api/rooms/{id}/threads/{root}", get(thread))
        .route("/api/mentions", get(mentions))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    client_id: String,
    text: String,
    #[serde(default)]
    reply_to: Option<Seq>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    client_id: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    client_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reaction {
    client_id: String,
    emoji: String,
}

async fn post_message(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<Response, ApiError> {
    let action = Action::Message { text: body.text, reply_to: body.reply_to };
    change(&app, room, user, &body.client_id, action).await
}

async fn edit_message(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    Path((room, target)): Path<(RoomId, Seq)>,
    ApiJson(body): ApiJson<Edit>,
) -> Result<Response, ApiError> {
    change(&app, room, user, &body.client_id, Action::Edit { target, text: body.text }).await
}

async fn delete_message(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    Path((room, target)): Path<(RoomId, Seq)>,
    ApiJson(body): ApiJson<Delete>,
) -> Result<Response, ApiError> {
    change(&app, room, user, &body.client_id, Action::Delete { target }).await
}

async fn react(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    Path((room, target)): Path<(RoomId, Seq)>,
    ApiJson(body): ApiJson<Reaction>,
) -> Result<Response, ApiError> {
    change(&app, room, user, &body.client_id, Action::React { target, emoji: body.emoji }).await
}

/// Checks access in the catalog and has the room's node append the change.
async fn change(
    app: &AppState,
    room: RoomId,
    user: UserId,
    client_id: &str,
    action: Action,
) -> Result<Response, ApiError> {
    let username = readable_by(app, room, user)?;
    let posted = room_events::post(app, room, (user, &username), client_id, action).await.map_err(api_error)?;
    let status = if posted.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(posted)).into_response())
}

/// `GET /api/rooms/{id}/threads/{root}`.
async fn thread(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    Path((room, root)): Path<(RoomId, Seq)>,
) -> Result<Json<HistoryPage>, ApiError> {
    readable_by(&app, room, user)?;
    let from = read_state(&app.state).catalog.history_from(room, user);
    let mut page = room_events::thread(&app, room, root).await.map_err(api_error)?;
    // A group-DM member added without the history reads only what followed.
    page.messages.retain(|message| message.seq > from);
    Ok(Json(page))
}

#[derive(Deserialize)]
struct MentionsQuery {
    limit: Option<u32>,
}

/// `GET /api/mentions`: the caller's newest mentions over all their rooms.
async fn mentions(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    query: Result<Query<MentionsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(MENTIONS_DEFAULT).clamp(1, MENTIONS_MAX);
    let (mentions, unreachable) = room_events::recent_mentions(&app, user, limit).await;
    Ok(Json(serde_json::json!({ "mentions": mentions, "unreachable_rooms": unreachable })))
}

/// The caller's username if they may read and write `room` (members only for private
/// rooms, nobody banned from it: `403 banned`), else the REST error.
fn readable_by(app: &AppState, room: RoomId, user: UserId) -> Result<String, ApiError> {
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    accessible_room(catalog, room, user)?;
    catalog.users.get(&user).map(|me| me.username.clone()).ok_or_else(ApiError::unauthorized)
}

/// A node's answer as a REST error with the same stable code.
fn api_error(error: RoomEventError) -> ApiError {
    match error {
        RoomEventError::Unavailable(message) => ApiError::unavailable(message),
        RoomEventError::Refused { status, code, message } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            ApiError::new(status, stable_code(&code), message)
        }
    }
}

/// The codes a node gives for a change, as `'static` strings (anything else is
/// `internal`).
fn stable_code(code: &str) -> &'static str {
    const CODES: [&str; 10] = [
        "forbidden",
        "not_found",
        "muted",
        "banned",
        "bad_frame",
        "text_too_long",
        "unknown_room",
        "unavailable",
        "rate_limited",
        "internal",
    ];
    CODES.into_iter().find(|known| *known == code).unwrap_or("internal")
}
