//! `POST /api/admin/backup` (cluster secret): writes a consistent copy of THIS member's
//! database (Raft log, vote and catalog) into a new directory on the member's own
//! filesystem and answers with what the copy holds. Not relayed to the leader: the
//! operator picks the member (and so the disk) the backup lands on. The copy is what a
//! whole-control-plane restore starts from (docs/OPERATIONS.md); replacing one member
//! needs no backup, Raft ships it a snapshot.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api_error::{ApiError, ApiJson};
use super::raft::checkpoint::ControlBackup;
use super::raft::types::MemberId;
use super::AppState;
use crate::store::checkpoint::CheckpointError;

/// The request: where to write the copy, on the member's filesystem.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Absolute path that must not exist yet; missing parents are created.
    pub dir: PathBuf,
}

/// The answer: which member wrote the copy, and what it holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupReply {
    pub member: MemberId,
    #[serde(flatten)]
    pub backup: ControlBackup,
}

/// Takes the checkpoint on a blocking thread (RocksDB flushes and links files).
pub async fn create_backup(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BackupRequest>,
) -> Result<(StatusCode, Json<BackupReply>), ApiError> {
    app.secret.require(&headers)?;
    let checkpointer = app.checkpointer.clone();
    let dir = request.dir.clone();
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

/// Bad targets are the operator's to fix (4xx, with the reason); a failure while writing
/// is logged here and answered without detail.
pub fn backup_error(e: CheckpointError) -> ApiError {
    match e {
        CheckpointError::RelativePath(_) => ApiError::bad_request(e.code(), e.to_string()),
        CheckpointError::TargetExists(_) => ApiError::new(StatusCode::CONFLICT, e.code(), e.to_string()),
        CheckpointError::Io { .. } | CheckpointError::Rocks(_) | CheckpointError::Unreadable(_) => {
            tracing::error!(error = %e, "a backup failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.code(),
                "the backup failed; the server log has the details",
            )
        }
    }
}
