//! Room moderation in the REST API: acts (mute, unmute, kick, ban, unban, naming and
//! removing moderators), the room's moderation state and its audit list. Who may do what
//! is decided by the catalog ([`Catalog::may_moderate`], and again in `apply`); this
//! module answers the obvious refusals from this member's catalog without a Raft write.
//!
//! | method path | auth | body → answer |
//! |---|---|---|
//! | `POST /api/rooms/{id}/moderation` | owner, moderator or admin | `{action, username, duration_secs?}` → 204 |
//! | `GET /api/rooms/{id}/moderation` | owner, moderator or admin | [`ModerationView`] |
//! | `GET /api/rooms/{id}/audit` | owner, moderator or admin | [`AuditView`] `{room, entries}` oldest first |
//!
//! `action` is one of `mute` (with `duration_secs`, 1 s to 30 days), `unmute`, `kick`,
//! `ban`, `unban`, `add_moderator`, `remove_moderator` (the last two: owner or admin).
//!
//! [`Catalog::may_moderate`]: crate::control::catalog::Catalog::may_moderate

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use super::extractor::AuthUser;
use super::views::{AuditView, ModerationView};
use crate::control::catalog::{ModAction, RoomId, MAX_MUTE_MS};
use crate::control::moderation;
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms/{id}/moderation", post(moderate).get(state))
        .route("/api/rooms/{id}/audit", get(audit))
}

#[derive(Deserialize)]
struct Act {
    action: String,
    username: String,
    /// For `mute`: how long.
    duration_secs: Option<u64>,
}

/// `POST /api/rooms/{id}/moderation`.
async fn moderate(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    AuthUser(caller): AuthUser,
    ApiJson(act): ApiJson<Act>,
) -> Result<StatusCode, ApiError> {
    let action = parse_action(&act.action, act.duration_secs)?;
    let user = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        check_moderator(catalog, room, caller)?;
        let username = act.username.trim().trim_start_matches('@');
        catalog.user_by_name(username).map(|user| user.id).ok_or_else(|| ApiError::not_found("no such user"))?
    };
    moderation::act(&app, room, caller, user, action).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/rooms/{id}/moderation`: moderators, bans and mutes in force.
async fn state(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    AuthUser(caller): AuthUser,
) -> Result<Json<ModerationView>, ApiError> {
    let state = read_state(&app.state);
    check_moderator(&state.catalog, room, caller)?;
    let entry = state.catalog.rooms.get(&room).ok_or_else(|| ApiError::not_found("no such room"))?;
    Ok(Json(ModerationView::new(&state.catalog, entry, caller, now_ms())))
}

/// `GET /api/rooms/{id}/audit`: the room's audit list, oldest first (the newest 1,000).
async fn audit(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    AuthUser(caller): AuthUser,
) -> Result<Json<AuditView>, ApiError> {
    let state = read_state(&app.state);
    check_moderator(&state.catalog, room, caller)?;
    Ok(Json(AuditView::new(&state.catalog, room)))
}

/// The room exists (and a private one is not revealed to an outsider: 404), and the
/// caller may moderate it (else `403 forbidden`).
fn check_moderator(
    catalog: &crate::control::catalog::Catalog,
    room: RoomId,
    caller: crate::control::catalog::UserId,
) -> Result<(), ApiError> {
    let entry = catalog.rooms.get(&room).ok_or_else(|| ApiError::not_found("no such room"))?;
    if catalog.may_moderate(entry, caller) {
        return Ok(());
    }
    if entry.private && !catalog.is_member(room, caller) {
        return Err(ApiError::not_found("no such room"));
    }
    Err(ApiError::forbidden("only the room's owner, its moderators and the admin may moderate it"))
}

/// The act named `action` (`duration_secs` for a mute).
fn parse_action(action: &str, duration_secs: Option<u64>) -> Result<ModAction, ApiError> {
    Ok(match action {
        "mute" => {
            let secs = duration_secs
                .filter(|secs| (1..=MAX_MUTE_MS / 1_000).contains(secs))
                .ok_or_else(|| ApiError::bad_request("invalid_mute", "a mute needs duration_secs, 1 s to 30 days"))?;
            ModAction::Mute { until_ms: now_ms() + secs * 1_000 }
        }
        other => ModAction::named(other).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_action",
                format!("unknown action {other:?}: mute, unmute, kick, ban, unban, add_moderator, remove_moderator"),
            )
        })?,
    })
}
