//! Room history as the control reads it: a page from the node that owns the room or,
//! when the owner does not answer, its replica (`GET /internal/rooms/{id}/messages` with
//! the cluster secret), and the room's newest seq (what a group-DM member added without
//! the history may not read). A client of the nodes' internal API: no HTTP server code;
//! the callers check access first.

use std::collections::BTreeMap;
use std::time::Duration;

use super::catalog::{ChatNode, ChatNodeId, NodeStatus, RoomId};
use super::raft::state_machine::read_state;
use super::secret::SECRET_HEADER;
use super::AppState;
use crate::protocol::HistoryPage;

/// How long the control waits for a node's history page before it tries the next node.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(2);

/// No node holding the room answered.
#[derive(Debug, thiserror::Error)]
#[error("no chat node holding room {0} answered")]
pub struct Unavailable(pub RoomId);

/// Up to `limit` messages of `room` with a seq below `before` (the newest when `None`),
/// newest first. A room that never had an owner (or does not exist) has no history.
pub async fn page(app: &AppState, room: RoomId, before: Option<u64>, limit: u32) -> Result<HistoryPage, Unavailable> {
    let targets: Vec<(ChatNodeId, String)> = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let Some(entry) = catalog.rooms.get(&room).filter(|entry| entry.owner.is_some()) else {
            return Ok(HistoryPage { messages: Vec::new(), has_more: false });
        };
        let up: BTreeMap<ChatNodeId, &ChatNode> =
            catalog.nodes.iter().filter(|(_, node)| node.status == NodeStatus::Up).map(|(id, n)| (*id, n)).collect();
        [entry.owner, entry.replica]
            .into_iter()
            .flatten()
            .filter_map(|id| up.get(&id).map(|node| (id, node.mesh_addr.clone())))
            .collect()
    };
    for (node, addr) in targets {
        match fetch(app, &addr, room, before, limit).await {
            Ok(page) => return Ok(page),
            Err(reason) => tracing::warn!(room, node, %addr, %reason, "a node did not serve history"),
        }
    }
    Err(Unavailable(room))
}

/// The room's newest seq (0 when it has no message yet).
pub async fn last_seq(app: &AppState, room: RoomId) -> Result<u64, Unavailable> {
    let page = page(app, room, None, 1).await?;
    Ok(page.messages.iter().map(|message| message.seq).max().unwrap_or(0))
}

/// One node's `GET /internal/rooms/{id}/messages`.
async fn fetch(
    app: &AppState,
    addr: &str,
    room: RoomId,
    before: Option<u64>,
    limit: u32,
) -> Result<HistoryPage, String> {
    let mut request = app
        .client
        .get(format!("http://{addr}/internal/rooms/{room}/messages"))
        .header(SECRET_HEADER, app.secret.expose())
        .query(&[("limit", limit)])
        .timeout(HISTORY_TIMEOUT);
    if let Some(before) = before {
        request = request.query(&[("before", before)]);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    response.json::<HistoryPage>().await.map_err(|e| e.to_string())
}
