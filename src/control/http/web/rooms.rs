//! The room forms: create a room, join a public one, add someone to a private one or a
//! group DM, open a direct message and start a group DM. A banned user is refused. Each is a catalog write through the leader; on success the
//! browser is sent to the room page (after this member has applied the write, so the page
//! shows it), on a refusal back to where it came from with a flash message.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::super::error::ApiError;
use super::super::extractor::check_room_quota;
use super::csrf::{CsrfForm, EmptyForm};
use super::flash::Flash;
use super::WebError;
use crate::control::catalog::{dm_name, Command, CommandOutput, RoomId};
use crate::control::moderation;
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

#[derive(Deserialize)]
pub struct NewRoomForm {
    name: String,
    /// A checkbox: present (`"true"`) when ticked.
    #[serde(default)]
    private: Option<String>,
}

/// `POST /rooms`: creates a room; the creator is its first member.
pub async fn create(
    State(app): State<AppState>,
    CsrfForm(visitor, form): CsrfForm<NewRoomForm>,
) -> Result<Response, WebError> {
    let user = visitor.require_user("/app")?.id;
    if let Err(refused) = check_room_quota(&app, user) {
        return Ok(visitor.redirect("/app", Some(Flash::error(refused.message))));
    }
    let name = form.name.trim().to_string();
    let command =
        Command::CreateRoom { name: name.clone(), private: form.private.is_some(), created_by: user, at_ms: now_ms() };
    match app.writer.write(command).await {
        Ok(CommandOutput::Room(room)) => {
            let notice = Flash::notice(format!("Room {} created.", room.name));
            Ok(visitor.redirect(&format!("/rooms/{}", room.id), Some(notice)))
        }
        Ok(other) => Err(WebError::internal(format!("CreateRoom returned {other:?}"))),
        Err(e) => {
            let e = ApiError::from(e);
            let message = match e.code {
                "room_exists" => format!("A room named {name} exists already."),
                "invalid_room_name" => "Room names are 1 to 64 characters: a-z, 0-9, '_' and '-'.".into(),
                "reserved_room_name" => "Room names starting with dm- are kept for direct messages.".into(),
                _ => e.message,
            };
            Ok(visitor.redirect("/app", Some(Flash::error(message))))
        }
    }
}

/// `POST /rooms/{id}/join`: joins a public room.
pub async fn join(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    CsrfForm(visitor, _): CsrfForm<EmptyForm>,
) -> Result<Response, WebError> {
    let user = visitor.require_user(&format!("/rooms/{room}"))?.id;
    let (private, banned) = {
        let state = read_state(&app.state);
        (state.catalog.rooms.get(&room).map(|room| room.private), state.catalog.is_banned(room, user))
    };
    if banned {
        return Err(WebError::new(StatusCode::FORBIDDEN, "banned", "You are banned from this room."));
    }
    match private {
        None | Some(true) => return Err(WebError::not_found("There is no public room with this id.")),
        Some(false) => {}
    }
    app.writer.write(Command::AddMember { room, user }).await?;
    Ok(visitor.redirect(&format!("/rooms/{room}"), None))
}

#[derive(Deserialize)]
pub struct InviteForm {
    username: String,
}

/// `POST /rooms/{id}/invite`: a member adds someone to a private room (not to a DM).
pub async fn invite(
    State(app): State<AppState>,
    Path(room): Path<RoomId>,
    CsrfForm(visitor, form): CsrfForm<InviteForm>,
) -> Result<Response, WebError> {
    let back = format!("/rooms/{room}");
    let caller = visitor.require_user(&back)?.id;
    let username = form.username.trim().to_string();
    let target = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let entry = catalog.rooms.get(&room).filter(|entry| catalog.is_member(entry.id, caller));
        let Some(entry) = entry else { return Err(WebError::forbidden("Only members may add people to a room.")) };
        if !entry.private || entry.is_dm() {
            return Ok(
                visitor.redirect(&back, Some(Flash::error("People join public rooms themselves; DMs stay two.")))
            );
        }
        let target = catalog.user_by_name(&username).map(|user| user.id);
        (target, entry.is_group_dm())
    };
    let (Some(target), group) = target else {
        return Ok(visitor.redirect(&back, Some(Flash::error(format!("No user named {username}.")))));
    };
    let added = if group {
        moderation::add_group_member(&app, room, caller, target).await.map_err(ApiError::from)
    } else {
        app.writer.write(Command::AddMember { room, user: target }).await.map(|_| ()).map_err(ApiError::from)
    };
    match added {
        Ok(()) => Ok(visitor.redirect(&back, Some(Flash::notice(format!("{username} can now read and write here."))))),
        Err(e) if e.status.is_client_error() => Ok(visitor.redirect(&back, Some(Flash::error(e.message)))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct DmForm {
    username: String,
}

/// `POST /dms`: the DM room with `username`, created on first use.
pub async fn open_dm(
    State(app): State<AppState>,
    CsrfForm(visitor, form): CsrfForm<DmForm>,
) -> Result<Response, WebError> {
    let caller = visitor.require_user("/app")?.id;
    let username = form.username.trim().trim_start_matches('@').to_string();
    let (peer, existing) = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let peer = catalog.user_by_name(&username).map(|user| user.id);
        let existing = peer
            .and_then(|peer| catalog.room_by_name(&dm_name(caller, peer)))
            .filter(|room| room.is_dm() && catalog.is_member(room.id, caller))
            .map(|room| room.id);
        if existing.is_some_and(|room| catalog.is_banned(room, caller)) {
            return Err(WebError::new(StatusCode::FORBIDDEN, "banned", "You are banned from this conversation."));
        }
        (peer, existing)
    };
    let Some(peer) = peer else {
        return Ok(visitor.redirect("/app", Some(Flash::error(format!("No user named {username}.")))));
    };
    if peer == caller {
        return Ok(visitor.redirect("/app", Some(Flash::error("A direct message needs someone other than you."))));
    }
    if let Some(room) = existing {
        return Ok(visitor.redirect(&format!("/rooms/{room}"), None));
    }
    match app.writer.write(Command::CreateDm { a: caller, b: peer, at_ms: now_ms() }).await? {
        CommandOutput::Dm { room, .. } => Ok(visitor.redirect(&format!("/rooms/{}", room.id), None)),
        other => Err(WebError::internal(format!("CreateDm returned {other:?}"))),
    }
}

#[derive(Deserialize)]
pub struct GroupDmForm {
    /// Usernames separated by commas or spaces.
    usernames: String,
    #[serde(default)]
    name: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    share_history: Option<String>,
}

/// `POST /group-dms`: starts a group DM (3 to 20 members, the visitor included).
pub async fn create_group_dm(
    State(app): State<AppState>,
    CsrfForm(visitor, form): CsrfForm<GroupDmForm>,
) -> Result<Response, WebError> {
    let caller = visitor.require_user("/app")?.id;
    if let Err(refused) = check_room_quota(&app, caller) {
        return Ok(visitor.redirect("/app", Some(Flash::error(refused.message))));
    }
    let names: Vec<&str> = form
        .usernames
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|name| name.trim().trim_start_matches('@'))
        .filter(|name| !name.is_empty())
        .collect();
    let members = {
        let state = read_state(&app.state);
        let mut members = Vec::new();
        for name in names {
            match state.catalog.user_by_name(name) {
                Some(user) if user.id == caller => {}
                Some(user) => members.push(user.id),
                None => return Ok(visitor.redirect("/app", Some(Flash::error(format!("No user named {name}."))))),
            }
        }
        members
    };
    let name = form.name.trim();
    let command = Command::CreateGroupDm {
        created_by: caller,
        members,
        title: (!name.is_empty()).then(|| name.to_string()),
        share_history: form.share_history.is_some(),
        at_ms: now_ms(),
    };
    match app.writer.write(command).await.map_err(ApiError::from) {
        Ok(CommandOutput::Room(room)) => Ok(visitor.redirect(&format!("/rooms/{}", room.id), None)),
        Ok(other) => Err(WebError::internal(format!("CreateGroupDm returned {other:?}"))),
        Err(e) if e.status.is_client_error() => Ok(visitor.redirect("/app", Some(Flash::error(e.message)))),
        Err(e) => Err(e.into()),
    }
}
