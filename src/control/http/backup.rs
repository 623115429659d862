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
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use crate::control::raft::checkpoint::ControlBackup;
use crate::control::raft::types::MemberId;
use crate::control::secret::SecretChecked;
use crate::control::AppState;
use crate::store::checkpoint::{backup_target, CheckpointError};

/// The request: the name of the new backup inside the process's `backup_dir`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// 1-64 characters of `A-Za-z0-9._-`, not starting with a dot; must not exist yet.
    pub name: String,
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

/// Bad names and unusable backup directories are the operator's to fix (4xx, with the
/// reason); a failure while writing is logged here and answered without detail.
pub fn backup_error(e: CheckpointError) -> ApiError {
    match e {
        CheckpointError::InvalidName(_) | CheckpointError::RelativePath(_) => {
            ApiError::bad_request(e.code(), e.to_string())
        }
        CheckpointError::TargetExists(_) | CheckpointError::NotWritable { .. } => {
            tracing::warn!(error = %e, "a backup was refused");
            ApiError::new(StatusCode::CONFLICT, e.code(), e.to_string())
        }
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
