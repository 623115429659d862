//! The chat pages: home, the dashboard, a room (or DM), and the DM shortcut. They are
//! rendered from this member's applied catalog; live content (messages, unread counts,
//! presence, the connection state) is filled in by `static/chat.js` over one WebSocket.
//! Each listed room carries the user's server-side read position (`data-read-seq`, see
//! [`read_marks`](crate::control::read_marks)), so unread counts are the same on every device.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use super::visitor::{Layout, Visitor};
use super::{WebError, WebState};
use crate::control::catalog::{dm_name, Catalog, Room, RoomId, UserId};
use crate::control::raft::state_machine::read_state;
use crate::control::read_marks::ReadMarks;
use crate::control::AppState;

/// A room as the pages list it.
pub struct RoomLink {
    pub id: RoomId,
    /// `general`, `@bob` for a DM, `bob, carol` (or `trio · bob, carol`) for a group DM.
    pub label: String,
    pub private: bool,
    /// A 1:1 or group DM (listed with the direct messages).
    pub dm: bool,
    /// Whether the visitor may moderate the room (the dashboard links its moderation page).
    pub moderate: bool,
    /// The room the page shows (highlighted in the sidebar).
    pub current: bool,
    /// The newest seq the user has read here (server-side, any device); `chat.js` turns it
    /// into the unread badge once it knows the room's newest seq.
    pub read_seq: u64,
}

impl RoomLink {
    fn new(catalog: &Catalog, room: &Room, me: UserId, current: Option<RoomId>) -> Self {
        let label = if room.is_dm() {
            format!("@{}", dm_peer(catalog, room.id, me))
        } else if room.is_group_dm() {
            group_label(catalog, room.id, me)
        } else {
            room.name.clone()
        };
        let current = current == Some(room.id);
        let dm = room.is_dm() || room.is_group_dm();
        let moderate = catalog.may_moderate(room, me);
        Self { id: room.id, label, private: room.private, dm, moderate, current, read_seq: 0 }
    }
}

/// A group DM's label: the other members' names (and its name first, when it has one).
fn group_label(catalog: &Catalog, room: RoomId, me: UserId) -> String {
    let names: Vec<String> = catalog
        .room_members(room)
        .filter(|user| *user != me)
        .map(|user| catalog.users.get(&user).map_or_else(|| format!("user {user}"), |u| u.username.clone()))
        .collect();
    match catalog.group_dm(room).and_then(|group| group.title.as_deref()) {
        Some(title) => format!("{title} · {}", names.join(", ")),
        None => names.join(", "),
    }
}

/// The other member of a DM room.
fn dm_peer(catalog: &Catalog, room: RoomId, me: UserId) -> String {
    catalog
        .room_members(room)
        .find(|user| *user != me)
        .and_then(|user| catalog.users.get(&user))
        .map_or_else(|| "unknown".to_string(), |user| user.username.clone())
}

/// The rooms and DMs `me` belongs to, each sorted by label, with `me`'s read positions.
fn my_rooms(
    catalog: &Catalog,
    marks: &ReadMarks,
    me: UserId,
    current: Option<RoomId>,
) -> (Vec<RoomLink>, Vec<RoomLink>) {
    let read = marks.for_user(catalog, me);
    let (mut dms, mut rooms): (Vec<RoomLink>, Vec<RoomLink>) = catalog
        .rooms
        .values()
        .filter(|room| catalog.is_member(room.id, me))
        .map(|room| RoomLink {
            read_seq: read.get(&room.id).copied().unwrap_or(0),
            ..RoomLink::new(catalog, room, me, current)
        })
        .partition(|link| link.dm);
    rooms.sort_by(|a, b| a.label.cmp(&b.label));
    dms.sort_by(|a, b| a.label.cmp(&b.label));
    (rooms, dms)
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    layout: Layout,
}

/// `GET /`.
pub async fn home(visitor: Visitor) -> Result<Response, WebError> {
    let page = HomePage { layout: visitor.layout("Welcome", "home") };
    Ok(visitor.page(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    layout: Layout,
    rooms: Vec<RoomLink>,
    dms: Vec<RoomLink>,
    /// Public rooms the user has not joined.
    public: Vec<RoomLink>,
}

/// `GET /app`.
pub async fn dashboard(
    State(app): State<AppState>,
    Extension(web): Extension<WebState>,
    visitor: Visitor,
) -> Result<Response, WebError> {
    let me = visitor.require_user("/app")?.id;
    let page = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let (rooms, dms) = my_rooms(catalog, &web.read_marks, me, None);
        let mut public: Vec<RoomLink> = catalog
            .rooms
            .values()
            .filter(|room| !room.private && !catalog.is_member(room.id, me))
            .map(|room| RoomLink::new(catalog, room, me, None))
            .collect();
        public.sort_by(|a, b| a.label.cmp(&b.label));
        DashboardPage { layout: visitor.layout("Dashboard", "dashboard"), rooms, dms, public }
    };
    Ok(visitor.page(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "room.html")]
struct RoomPage {
    layout: Layout,
    room: RoomLink,
    /// Whether the user is a member (a public room can be looked at before joining).
    member: bool,
    /// A private room that is not a DM: members may add people.
    can_invite: bool,
    rooms: Vec<RoomLink>,
    dms: Vec<RoomLink>,
}

/// `GET /rooms/{id}`: the room page. A private room answers 403 to non-members, any room
/// `403 banned` to a user banned from it; a public room a user has not joined shows a
/// join button instead of the conversation.
pub async fn room(
    State(app): State<AppState>,
    Extension(web): Extension<WebState>,
    Path(id): Path<RoomId>,
    visitor: Visitor,
) -> Result<Response, WebError> {
    let me = visitor.require_user(&format!("/rooms/{id}"))?.id;
    let page = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let room = catalog.rooms.get(&id).ok_or_else(|| WebError::not_found("There is no room with this id."))?;
        if catalog.is_banned(id, me) {
            return Err(WebError::new(StatusCode::FORBIDDEN, "banned", "You are banned from this room."));
        }
        let member = catalog.is_member(id, me);
        if room.private && !member {
            return Err(WebError::forbidden("This room is private to its members."));
        }
        let (rooms, dms) = my_rooms(catalog, &web.read_marks, me, Some(id));
        let link = RoomLink::new(catalog, room, me, Some(id));
        let title = link.label.clone();
        RoomPage {
            layout: visitor.layout(title, "room"),
            can_invite: room.private && !room.is_dm(),
            room: link,
            member,
            rooms,
            dms,
        }
    };
    Ok(visitor.page(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "dm_start.html")]
struct DmStartPage {
    layout: Layout,
    peer: String,
}

/// `GET /dms/{username}`: the DM with `username` if it exists, else a page offering to
/// start it (a GET never creates anything).
pub async fn dm(
    State(app): State<AppState>,
    Path(username): Path<String>,
    visitor: Visitor,
) -> Result<Response, WebError> {
    let me = visitor.require_user(&format!("/dms/{username}"))?.id;
    let existing = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let peer = catalog.user_by_name(&username).ok_or_else(|| WebError::not_found("There is no such user."))?.id;
        if peer == me {
            return Err(WebError::bad_request("dm_with_self", "A direct message needs someone other than you."));
        }
        catalog
            .room_by_name(&dm_name(me, peer))
            .filter(|room| room.is_dm() && catalog.is_member(room.id, me))
            .map(|r| r.id)
    };
    if let Some(room) = existing {
        return Ok(visitor.redirect(&format!("/rooms/{room}"), None));
    }
    let page = DmStartPage { layout: visitor.layout(format!("@{username}"), "dm"), peer: username };
    Ok(visitor.page(StatusCode::OK, &page))
}
