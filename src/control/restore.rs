//! After a restore (`POST /api/admin/after-restore`, cluster secret, in
//! `control/http/admin.rs`): the step that makes a control plane
//! restored from a backup safe to open again (docs/OPERATIONS.md, "Restoring the whole
//! control plane"). A restored catalog has rolled its id counters back to the backup
//! while the old token-signing key lives on, so without this step a session token of a
//! user registered after the backup would authenticate as whoever gets that id next, and
//! a new room would get the id of a lost one whose messages still sit in the chat nodes'
//! logs (keyed by room id). One [`Command::RecoverFromRestore`] replaces the key (every
//! session and connection token becomes invalid: everyone logs in again) and moves the
//! user, room and node counters forward by [`ID_GAP`]. Relayed to the leader like any
//! write; repeating it is harmless.

use serde::{Deserialize, Serialize};

use super::catalog::{ChatNodeId, Command, RoomId, UserId};

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

/// The catalog command of the step: a fresh signing key and the counters' jump.
pub fn command() -> Command {
    let key: [u8; 32] = rand::random();
    Command::RecoverFromRestore { signing_key: key.to_vec(), id_gap: ID_GAP }
}
