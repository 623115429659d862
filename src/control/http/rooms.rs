//! Rooms in the REST API: the rooms a user sees, creating one (within the per-user
//! quota), joining a public room or adding someone to a private one or a group DM (which
//! records, without shared history, what the newcomer may read). A banned user is refused
//! with `403 banned`. Direct messages and history are in [`chat`](super::chat). Reads are answered from this member's applied
//! catalog; writes go through [`Writer`](crate::control::write::Writer), which forwards to
//! the leader.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::extractor::{check_room_quota, AuthUser};
use super::views::RoomView;
use crate::control::catalog::{Command, CommandOutput};
use crate::control::moderation;
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms", get(list_rooms).post(create_room))
        .route("/api/rooms/{id}/members", post(join_room))
}

#[derive(Serialize)]
struct RoomList {
    rooms: Vec<RoomView>,
}

/// `GET /api/rooms`: public rooms and the private rooms the caller belongs to.
async fn list_rooms(AuthUser(user): AuthUser, State(app): State<AppState>) -> Result<Json<RoomList>, ApiError> {
    let state = read_state(&app.state);
    let rooms = state
        .catalog
        .visible_rooms(user)
        .map(|room| RoomView::new(&state.catalog, room, state.catalog.is_member(room.id, user)))
        .collect();
    Ok(Json(RoomList { rooms }))
}

#[derive(Deserialize)]
struct NewRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

/// `POST /api/rooms`: create a room; the creator is its first member.
async fn create_room(
    AuthUser(user): AuthUser,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewRoom>,
) -> Result<Response, ApiError> {
    check_room_quota(&app, user)?;
    let command = Command::CreateRoom { name: body.name, private: body.private, created_by: user, at_ms: now_ms() };
    match app.writer.write(command).await? {
        CommandOutput::Room(room) => {
            let view = RoomView::new(&read_state(&app.state).catalog, &room, true);
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        other => Err(ApiError::internal(format!("CreateRoom returned {other:?}"))),
    }
}

#[derive(Deserialize)]
struct NewMember {
    /// Who to add; the caller when absent.
    username: Option<String>,
}

/// `POST /api/rooms/{id}/members`: join a public room, or add someone to a private room
/// or group DM the caller belongs to. Banned callers or targets: `403 banned`.
async fn join_room(
    State(app): State<AppState>,
    Path(room_id): Path<u64>,
    AuthUser(caller): AuthUser,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let target = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<NewMember>(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .username
    };
    let (user, group) = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let room = catalog.rooms.get(&room_id).ok_or_else(|| ApiError::not_found("no such room"))?;
        if catalog.is_banned(room_id, caller) {
            return Err(ApiError::banned());
        }
        if room.private && !catalog.is_member(room_id, caller) {
            // Same answer as for a room that does not exist: do not reveal private rooms.
            return Err(ApiError::not_found("no such room"));
        }
        let user = match target {
            Some(username) => catalog
                .user_by_name(&username)
                .map(|user| user.id)
                .ok_or_else(|| ApiError::not_found("no such user"))?,
            None => caller,
        };
        if user != caller && !room.private {
            return Err(ApiError::forbidden("people join public rooms themselves"));
        }
        (user, room.is_group_dm() && !catalog.is_member(room_id, user))
    };
    if group {
        moderation::add_group_member(&app, room_id, caller, user).await?;
    } else {
        app.writer.write(Command::AddMember { room: room_id, user }).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
