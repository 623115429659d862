//! Group DMs in the REST API: a private conversation of 3 to 20 members (the creator
//! included), started from a list of usernames. Members are added later with
//! `POST /api/rooms/{id}/members` (in [`rooms`](super::rooms)'s table), like any private room.
//!
//! | method path | auth | body → answer |
//! |---|---|---|
//! | `POST /api/group-dms` | session | `{usernames:[...], name?, share_history?}` → 201 [`RoomView`] |
//!
//! The caller's own name in the list is ignored; an unknown name is `400 unknown_user`, a
//! repeated one `400 duplicate_member`, a list of only the caller `400 dm_with_self`, and
//! fewer than 3 or more than 20 members in all `400 group_dm_too_small` / `too_large`.
//! Group DMs count towards the caller's room quota.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use super::extractor::{check_room_quota, AuthUser};
use super::views::RoomView;
use crate::control::catalog::{Command, CommandOutput, GROUP_DM_MAX};
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/group-dms", post(create))
}

#[derive(Deserialize)]
struct NewGroupDm {
    usernames: Vec<String>,
    name: Option<String>,
    /// Whether members added later read the messages from before; false by default.
    #[serde(default)]
    share_history: bool,
}

/// `POST /api/group-dms`.
async fn create(
    AuthUser(caller): AuthUser,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewGroupDm>,
) -> Result<Response, ApiError> {
    if body.usernames.len() > 2 * GROUP_DM_MAX {
        return Err(ApiError::bad_request("group_dm_too_large", "a group DM has at most 20 members, you included"));
    }
    check_room_quota(&app, caller)?;
    let members = {
        let state = read_state(&app.state);
        let mut members = Vec::new();
        for username in &body.usernames {
            let username = username.trim().trim_start_matches('@');
            let user = state
                .catalog
                .user_by_name(username)
                .ok_or_else(|| ApiError::bad_request("unknown_user", format!("there is no user named {username:?}")))?;
            if user.id != caller {
                members.push(user.id);
            }
        }
        members
    };
    let command = Command::CreateGroupDm {
        created_by: caller,
        members,
        title: body.name,
        share_history: body.share_history,
        at_ms: now_ms(),
    };
    match app.writer.write(command).await? {
        CommandOutput::Room(room) => {
            let view = RoomView::new(&read_state(&app.state).catalog, &room, true);
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        other => Err(ApiError::internal(format!("CreateGroupDm returned {other:?}"))),
    }
}
