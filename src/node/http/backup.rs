//! `POST /api/admin/backup` on a chat node (cluster secret): writes a consistent copy of
//! the node's room logs (messages, dedupe index, epoch fences) into `backup_dir/NAME` on
//! the node's own filesystem. The same request and errors as a control's backup
//! ([`crate::control::http::backup`]). Ordinary node loss needs no backup (every acked message
//! is on a replica); these copies are for losing owner and replica at once.

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::control::http::error::{backup_error, ApiError, ApiJson};
use crate::control::http::extractor::SecretChecked;
use crate::control::http::views::BackupRequest;
use crate::control::secret::ClusterSecret;
use crate::node::Node;
use crate::protocol::NodeId;
use crate::store::checkpoint::backup_target;

/// What a node backup wrote.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeBackupReply {
    pub node: NodeId,
    pub name: String,
    /// Absolute directory on the node's filesystem.
    pub path: String,
    pub files: u64,
    pub bytes: u64,
}

/// Checks the secret before the body is read ([`SecretChecked`] comes first).
pub async fn create_backup(
    _: SecretChecked,
    State(node): State<Node>,
    ApiJson(request): ApiJson<BackupRequest>,
) -> Result<(StatusCode, Json<NodeBackupReply>), ApiError> {
    let dir = backup_target(&node.config.backup_dir(), &request.name).map_err(backup_error)?;
    let log = node.log.clone();
    let written = tokio::task::spawn_blocking(move || log.checkpoint(&dir))
        .await
        .map_err(|e| ApiError::internal(format!("backup task: {e}")))?
        .map_err(backup_error)?;
    tracing::info!(node = node.id, path = %written.path.display(), bytes = written.bytes, "wrote a backup of the room logs");
    Ok((
        StatusCode::CREATED,
        Json(NodeBackupReply {
            node: node.id,
            name: node.name.clone(),
            path: written.path.display().to_string(),
            files: written.files,
            bytes: written.bytes,
        }),
    ))
}

impl FromRef<Node> for ClusterSecret {
    fn from_ref(node: &Node) -> Self {
        node.secret.clone()
    }
}
