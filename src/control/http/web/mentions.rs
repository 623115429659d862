//! `GET /mentions`: the newest messages that mention the user (by `@name`, or `@room` from
//! a moderator) over every room they belong to, newest first, each linking into its room
//! at the message (`/rooms/{id}#m-{seq}`; `chat.js` loads history back to it and
//! highlights it). The list is read when the page is asked for, from the rooms' nodes
//! through [`recent_mentions`]; a room whose nodes do not answer is counted, not hidden.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::visitor::{Layout, Visitor};
use super::WebError;
use crate::control::catalog::{Catalog, RoomId, UserId};
use crate::control::raft::state_machine::read_state;
use crate::control::room_events::recent_mentions;
use crate::control::AppState;

/// How many mentions the page lists.
const LIMIT: u32 = 50;

/// One mention as the page lists it.
pub struct MentionRow {
    pub room: RoomId,
    pub seq: u64,
    /// `#general`, or `@bob` for a DM.
    pub room_label: String,
    pub sender: String,
    pub text: String,
    /// The message's time, machine-readable (`<time datetime>`), and as shown (UTC;
    /// the page's script shows it in the reader's own time zone).
    pub iso: String,
    pub shown: String,
}

#[derive(Template)]
#[template(path = "mentions.html")]
struct MentionsPage {
    layout: Layout,
    mentions: Vec<MentionRow>,
    /// Rooms whose nodes did not answer: their mentions are missing from the list.
    unreachable: usize,
}

/// `GET /mentions`.
pub async fn mentions(State(app): State<AppState>, visitor: Visitor) -> Result<Response, WebError> {
    let me = visitor.require_user("/mentions")?.id;
    let (found, unreachable) = recent_mentions(&app, me, LIMIT).await;
    let mentions = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        found
            .into_iter()
            .map(|mention| {
                let (iso, shown) = timestamps(mention.message.ts);
                MentionRow {
                    room: mention.room,
                    seq: mention.message.seq,
                    room_label: room_label(catalog, mention.room, me).unwrap_or(format!("#{}", mention.room_name)),
                    sender: mention.message.sender,
                    text: mention.message.text,
                    iso,
                    shown,
                }
            })
            .collect()
    };
    let page = MentionsPage { layout: visitor.layout("Mentions", "mentions"), mentions, unreachable };
    Ok(visitor.page(StatusCode::OK, &page))
}

/// `#name` for a room, `@peer` for a DM (its catalog name is internal).
fn room_label(catalog: &Catalog, room: RoomId, me: UserId) -> Option<String> {
    let room = catalog.rooms.get(&room)?;
    if !room.is_dm() {
        return Some(format!("#{}", room.name));
    }
    let peer = catalog.room_members(room.id).find(|user| *user != me)?;
    catalog.users.get(&peer).map(|user| format!("@{}", user.username))
}

/// `ms` since the epoch as RFC 3339 (`2026-11-30T21:47:13Z`) and as `2026-11-30 21:47 UTC`.
fn timestamps(ms: u64) -> (String, String) {
    let rest = ms / 1000 % 86_400;
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let (year, month, day) = crate::utc_date(ms);
    (
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
        format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC"),
    )
}

#[cfg(test)]
mod tests {
    use super::timestamps;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamps(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(timestamps(951_782_400_000).1, "2000-02-29 00:00 UTC");
        assert_eq!(timestamps(1_764_028_212_345).0, "2025-11-24T23:50:12Z");
    }
}
