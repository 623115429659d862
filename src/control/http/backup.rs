//! `POST /api/admin/backup` (cluster secret): writes a consistent copy of THIS member's
//! database (Raft log, vote and catalog) into `backup_dir/NAME` on the member's own
//! filesystem and answers with what the copy holds. The caller names the copy; the
//! directory comes from the member's config (`backup_dir`), so even a caller with the
//! secret cannot make the server write elsewhere. Not relayed to the leader: the operator
//! picks the member (and so the disk) the backup lands on. The copy is what a
//! whole-control-plane restore starts from (docs/OPERATIONS.md); replacing one member
//! needs no backup, Raft ships it a snapshot.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{backup_error, ApiError, ApiJson};
use super::extractor::SecretChecked;
use super::views::BackupRequest;
use crate::control::raft::checkpoint::ControlBackup;
use crate::control::raft::types::MemberId;
use crate::control::AppState;
use crate::store::checkpoint::backup_target;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/admin/backup", post(create_backup))
}

/// The answer: which member wrote the copy, and what it holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupReply {
    pub member: MemberId,
    #[serde(flatten)]
    pub backup: ControlBackup,
}

/// Takes the checkpoint on a blocking thread (RocksDB flushes and links files). The
/// secret is checked before the body is read ([`SecretChecked`] comes first).
pub async fn create_backup(
    _: SecretChecked,
    State(app): State<AppState>,
    ApiJson(request): ApiJson<BackupRequest>,
) -> Result<(StatusCode, Json<BackupReply>), ApiError> {
    let dir = backup_target(&app.config.backup_dir(), &request.name).map_err(backup_error)?;
    let checkpointer = app.checkpointer.clone();
    let started = std::time::Instant::now();
    let backup = tokio::task::spawn_blocking(move || checkpointer.create(&dir))
        .await
        .map_err(|e| ApiError::internal(format!("backup task: {e}")))?
        .map_err(backup_error)?;
    tracing::info!(
        member = app.id,
        path = %backup.path,
        bytes = backup.bytes,
        applied_index = ?backup.applied_index,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote a backup of this member's database"
    );
    Ok((StatusCode::CREATED, Json(BackupReply { member: app.id, backup })))
}
