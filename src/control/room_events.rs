//! Reaching the chat node of a room from the control plane for what lives in the room's
//! log: posting a message or an event on one (edit, delete, reaction, a moderation act's
//! system line) and reading a thread or a user's mentions. The node that owns the room is
//! asked first, then its replica, then any other up node (every node forwards a post to
//! the room's owner over the mesh, and reads come from the owner or the replica).
//!
//! The caller has checked access in the catalog; nodes check bans and mutes from their
//! routing table and the owner checks the event against its log (docs/PROTOCOL.md,
//! "Message events").

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::catalog::{NodeStatus, RoomId, UserId};
use super::raft::state_machine::read_state;
use super::secret::SECRET_HEADER;
use super::AppState;
use crate::protocol::{Action, HistoryPage, PostEvent, PostedEvent, Seq};

/// How long one node may take to answer a post (its owner waits for its replica's fsync;
/// a failover in between makes the node retry once).
const POST_TIMEOUT: Duration = Duration::from_secs(12);
/// How long one node may take to answer a read.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a node did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEventError {
    /// The node refused it: its status, and the stable code and message it gave
    /// (`forbidden`, `not_found`, `muted`, `banned`, `bad_frame`, `text_too_long`, …).
    Refused { status: u16, code: String, message: String },
    /// No node holding or able to reach the room answered.
    Unavailable(String),
}

#[derive(Deserialize)]
struct NodeErrorBody {
    code: String,
    message: String,
}

/// Appends `action` to `room`'s log for `user`. Retrying with the same `client_id` gives
/// the same seq.
pub async fn post(
    app: &AppState,
    room: RoomId,
    (user_id, username): (UserId, &str),
    client_id: &str,
    action: Action,
) -> Result<PostedEvent, RoomEventError> {
    let event = PostEvent { user_id, username: username.to_string(), client_id: client_id.to_string(), action };
    let mut last = RoomEventError::Unavailable("no chat node is up".into());
    for addr in nodes_for(app, room) {
        let request = app
            .client
            .post(format!("http://{addr}/internal/rooms/{room}/events"))
            .header(SECRET_HEADER, app.secret.expose())
            .json(&event)
            .timeout(POST_TIMEOUT);
        match answer::<PostedEvent>(request).await {
            Ok(posted) => return Ok(posted),
            // A refusal is the room's answer; only an unreachable or unready node is
            // worth asking another about.
            Err(RoomEventError::Refused { status, code, message }) if status != 503 => {
                return Err(RoomEventError::Refused { status, code, message })
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Message `root` of `room` and its thread's replies, oldest first.
pub async fn thread(app: &AppState, room: RoomId, root: Seq) -> Result<HistoryPage, RoomEventError> {
    read(app, room, &format!("threads/{root}"), &[]).await
}

/// The newest messages of `room` mentioning `username` (or `@room`), newest first.
pub async fn newest_mentions(
    app: &AppState,
    room: RoomId,
    username: &str,
    limit: u32,
) -> Result<HistoryPage, RoomEventError> {
    let query = [("user", username.to_string()), ("limit", limit.to_string()), ("newest", "true".into())];
    read(app, room, "mentions", &query).await
}

async fn read(
    app: &AppState,
    room: RoomId,
    path: &str,
    query: &[(&str, String)],
) -> Result<HistoryPage, RoomEventError> {
    let mut last = RoomEventError::Unavailable("no chat node holding this room is up".into());
    for addr in nodes_for(app, room).into_iter().take(2) {
        let request = app
            .client
            .get(format!("http://{addr}/internal/rooms/{room}/{path}"))
            .header(SECRET_HEADER, app.secret.expose())
            .query(query)
            .timeout(READ_TIMEOUT);
        match answer::<HistoryPage>(request).await {
            Ok(page) => return Ok(page),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The addresses of the up nodes to ask about `room`: its owner, its replica, then the
/// others.
fn nodes_for(app: &AppState, room: RoomId) -> Vec<String> {
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    let (owner, replica) = catalog.rooms.get(&room).map_or((None, None), |room| (room.owner, room.replica));
    let mut up: Vec<_> = catalog.nodes.values().filter(|node| node.status == NodeStatus::Up).collect();
    up.sort_by_key(|node| (Some(node.id) != owner, Some(node.id) != replica, node.id));
    up.into_iter().map(|node| node.mesh_addr.clone()).collect()
}

async fn answer<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, RoomEventError> {
    let response = request.send().await.map_err(|e| RoomEventError::Unavailable(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return response.json::<T>().await.map_err(|e| RoomEventError::Unavailable(e.to_string()));
    }
    match response.json::<NodeErrorBody>().await {
        Ok(NodeErrorBody { code, message }) if status != StatusCode::SERVICE_UNAVAILABLE => {
            Err(RoomEventError::Refused { status: status.as_u16(), code, message })
        }
        Ok(NodeErrorBody { message, .. }) => Err(RoomEventError::Unavailable(message)),
        Err(_) => Err(RoomEventError::Unavailable(format!("the node answered {status}"))),
    }
}

/// One mention of a user, for the mentions view.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mention {
    pub room: RoomId,
    pub room_name: String,
    pub message: crate::protocol::ChatMessage,
}

/// Rooms whose mentions one [`recent_mentions`] call reads at once.
const MENTION_READS_AT_ONCE: usize = 8;

/// The newest mentions of `user` over every room they belong to, newest first, at most
/// `limit`. A room whose nodes do not answer is left out (the view says how many).
pub async fn recent_mentions(app: &AppState, user: UserId, limit: u32) -> (Vec<Mention>, usize) {
    use futures_util::StreamExt;
    // Rooms the user belongs to (a ban or a kick removed the membership), each with the
    // seq their reading starts after (a group-DM member added without history).
    let (username, rooms): (String, Vec<(RoomId, String, Seq)>) = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let Some(me) = catalog.users.get(&user) else { return (Vec::new(), 0) };
        let rooms = catalog
            .rooms
            .values()
            .filter(|room| room.owner.is_some() && catalog.is_member(room.id, user))
            .map(|room| (room.id, room.name.clone(), catalog.history_from(room.id, user)))
            .collect();
        (me.username.clone(), rooms)
    };
    let username = &username;
    let answers: Vec<_> = futures_util::stream::iter(rooms)
        .map(|(room, name, from)| async move { (room, name, from, newest_mentions(app, room, username, limit).await) })
        .buffer_unordered(MENTION_READS_AT_ONCE)
        .collect()
        .await;
    let mut unreachable = 0;
    let mut mentions = Vec::new();
    for (room, room_name, from, answer) in answers {
        match answer {
            Ok(page) => {
                mentions.extend(page.messages.into_iter().filter(|message| message.seq > from).map(|message| Mention {
                    room,
                    room_name: room_name.clone(),
                    message,
                }))
            }
            Err(_) => unreachable += 1,
        }
    }
    mentions.sort_by(|a, b| b.message.ts.cmp(&a.message.ts).then(b.message.seq.cmp(&a.message.seq)));
    mentions.truncate(limit as usize);
    (mentions, unreachable)
}

/// Posts a system line (a moderation act: "ann muted bob for 10 min") to `room` as
/// `moderator`, shown in the room like a message (`kind: system`). `act_id` names the act
/// uniquely (say, the Raft log index of its catalog command), so posting it twice writes
/// it once. A line that cannot be posted is logged and dropped: the act itself is in the
/// catalog and its audit list either way.
pub async fn post_system_line(app: &AppState, room: RoomId, moderator: (UserId, &str), act_id: &str, text: String) {
    let client_id = format!("system-{act_id}");
    if let Err(e) = post(app, room, moderator, &client_id, Action::System { text }).await {
        tracing::warn!(room, act_id, error = ?e, "the moderation act's system line was not posted");
    }
}
