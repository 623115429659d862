//! `POST /api/admin/after-restore` (cluster secret): the step that makes a control plane
//! restored from a backup safe to open again (docs/OPERATIONS.md, "Restoring the whole
//! control plane"). A restored catalog has rolled its id counters back to the backup
//! while the old token-signing key lives on, so without this step a session token of a
//! user registered after the backup would authenticate as whoever gets that id next, and
//! a new room would get the id of a lost one whose messages still sit in the chat nodes'
//! logs (keyed by room id). One [`Command::RecoverFromRestore`] replaces the key (every
//! session and connection token becomes invalid: everyone logs in again) and moves the
//! user, room and node counters forward by [`ID_GAP`]. Relayed to the leader like any
//! write; repeating it is harmless.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::catalog::{ChatNodeId, Command, CommandOutput, RoomId, UserId};
use super::http::error::ApiError;
use super::secret::SecretChecked;
use super::AppState;

/// How far the id counters jump: far more users, rooms and nodes than a cluster creates
/// between a backup and a restore, so nothing handed out in between is handed out again.
pub const ID_GAP: u64 = 1_000_000;

/// The answer: the counters after the jump (new ids start one above each).
#[derive(Debug, Serialize, Deserialize)]
pub struct AfterRestoreReply {
    pub signing_key_rotated: bool,
    pub next_user_id: UserId,
    pub next_room_id: RoomId,
    pub next_node_id: ChatNodeId,
}

pub async fn after_restore(_: SecretChecked, State(app): State<AppState>) -> Result<Json<AfterRestoreReply>, ApiError> {
    let key: [u8; 32] = rand::random();
    let command = Command::RecoverFromRestore { signing_key: key.to_vec(), id_gap: ID_GAP };
    match app.writer.write(command).await? {
        CommandOutput::Recovered { next_user_id, next_room_id, next_node_id } => {
            tracing::warn!(
                member = app.id,
                next_user_id,
                next_room_id,
                next_node_id,
                "after a restore: rotated the signing key (every session ends) and moved the id counters forward"
            );
            Ok(Json(AfterRestoreReply { signing_key_rotated: true, next_user_id, next_room_id, next_node_id }))
        }
        other => Err(ApiError::internal(format!("RecoverFromRestore returned {other:?}"))),
    }
}
