//! The moderation page of a room (`GET /rooms/{id}/moderation`) and its one form
//! (`POST /rooms/{id}/moderation`): the room's owner, moderators, bans and mutes in force,
//! a form for every act, one-click undo buttons, and the audit list. Only the room's
//! moderators (its owner included) and the admin may open it or post to it; the catalog
//! checks the act again when it applies it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::super::error::ApiError;
use super::super::views::{AuditView, ModerationView};
use super::csrf::CsrfForm;
use super::flash::Flash;
use super::visitor::{Layout, Visitor};
use super::WebError;
use crate::control::catalog::{Catalog, ModAction, RoomId, UserId, MAX_MUTE_MS};
use crate::control::moderation;
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

/// One audit line as the page shows it.
pub struct AuditLine {
    pub when: String,
    pub by: String,
    pub action: &'static str,
    pub username: String,
    pub until: Option<String>,
}

#[derive(Template)]
#[template(path = "moderation.html")]
struct ModerationPage {
    layout: Layout,
    room: RoomId,
    label: String,
    state: ModerationView,
    /// The mutes in force, with readable end times.
    mutes: Vec<(String, String)>,
    /// Newest first.
    audit: Vec<AuditLine>,
}

/// `GET /rooms/{id}/moderation`.
pub async fn page(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    visitor: Visitor,
) -> Result<Response, WebError> {
    let back = format!("/rooms/{room}/moderation");
    let me = visitor.require_user(&back)?.id;
    let page = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let label = check(catalog, room, me)?;
        let entry = catalog.rooms.get(&room).ok_or_else(|| WebError::not_found("There is no room with this id."))?;
        let view = ModerationView::new(catalog, entry, me, now_ms());
        let mutes = view.muted.iter().map(|mute| (mute.username.clone(), utc(mute.until_ms))).collect();
        let audit = AuditView::new(catalog, room)
            .entries
            .into_iter()
            .rev()
            .map(|entry| AuditLine {
                when: utc(entry.at_ms),
                by: entry.by,
                action: entry.action,
                username: entry.username,
                until: entry.until_ms.map(utc),
            })
            .collect();
        ModerationPage {
            layout: visitor.layout(format!("Moderation · {label}"), "moderation"),
            room,
            label,
            state: view,
            mutes,
            audit,
        }
    };
    Ok(visitor.page(StatusCode::OK, &page))
}

#[derive(Deserialize)]
pub struct ActForm {
    action: String,
    username: String,
    /// For a mute, in minutes.
    #[serde(default)]
    minutes: String,
}

/// `POST /rooms/{id}/moderation`: one act; back to the page with what happened.
pub async fn act(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    CsrfForm(visitor, form): CsrfForm<ActForm>,
) -> Result<Response, WebError> {
    let back = format!("/rooms/{room}/moderation");
    let me = visitor.require_user(&back)?.id;
    let username = form.username.trim().trim_start_matches('@').to_string();
    let target = {
        let state = read_state(&app.state);
        check(&state.catalog, room, me)?;
        state.catalog.user_by_name(&username).map(|user| user.id)
    };
    let Some(target) = target else {
        return Ok(visitor.redirect(&back, Some(Flash::error(format!("No user named {username}.")))));
    };
    let action = match form.action.as_str() {
        "mute" => match form.minutes.trim().parse::<u64>() {
            Ok(minutes) if (1..=MAX_MUTE_MS / 60_000).contains(&minutes) => {
                ModAction::Mute { until_ms: now_ms() + minutes * 60_000 }
            }
            _ => return Ok(visitor.redirect(&back, Some(Flash::error("A mute lasts 1 to 43200 minutes (30 days).")))),
        },
        other => match ModAction::named(other) {
            Some(action) => action,
            None => return Ok(visitor.redirect(&back, Some(Flash::error("Choose an action.")))),
        },
    };
    match moderation::act(&app, room, me, target, action).await.map_err(ApiError::from) {
        Ok(sentence) => Ok(visitor.redirect(&back, Some(Flash::notice(format!("Done: {sentence}."))))),
        Err(e) if e.status.is_client_error() => Ok(visitor.redirect(&back, Some(Flash::error(e.message)))),
        Err(e) => Err(e.into()),
    }
}

/// The room's label when `me` may moderate it; else 404 (a private room `me` is not in)
/// or 403.
fn check(catalog: &Catalog, room: RoomId, me: UserId) -> Result<String, WebError> {
    let entry = catalog.rooms.get(&room).ok_or_else(|| WebError::not_found("There is no room with this id."))?;
    if !catalog.may_moderate(entry, me) {
        if entry.private && !catalog.is_member(room, me) {
            return Err(WebError::not_found("There is no room with this id."));
        }
        return Err(WebError::forbidden("Only the room's owner, its moderators and the admin may moderate it."));
    }
    Ok(if entry.is_group_dm() {
        "group conversation".to_string()
    } else if entry.is_dm() {
        "direct message".to_string()
    } else {
        format!("#{}", entry.name)
    })
}

/// `2026-11-30 21:05 UTC` for milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let rest = ms / 1_000 % 86_400;
    let (year, month, day) = crate::utc_date(ms);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3_600, rest % 3_600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_080_000_000), "2026-11-30 23:06:40 UTC");
    }
}
