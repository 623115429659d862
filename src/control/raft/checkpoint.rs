//! Backups of a control member: a RocksDB checkpoint of its one database (Raft log, vote
//! and catalog live in column families of the same database, so one checkpoint is one
//! consistent copy of all three) plus a hard link of its current snapshot file (taken
//! while that file cannot be replaced), read back to report the Raft position it holds.
//! The backup is a flat directory laid out like a data directory: restoring is copying it.

use std::path::Path;
use std::sync::Arc;

use rocksdb::DB;
use serde::{Deserialize, Serialize};

use super::log_store::read_log_state;
use super::snapshot_file::{self, SnapshotFiles};
use super::state_machine::StateMachineStore;
use super::COLUMN_FAMILIES;
use crate::store::checkpoint::{self, CheckpointError};

/// Copies a running member's database. Cheap to clone.
#[derive(Clone)]
pub struct Checkpointer {
    db: Arc<DB>,
    /// The snapshot that goes with the database: a member whose log is purged behind it
    /// needs it to catch up a follower.
    snapshots: SnapshotFiles,
}

/// What a control backup holds, read back from the written copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlBackup {
    /// Absolute directory on the member's filesystem.
    pub path: String,
    pub files: u64,
    pub bytes: u64,
    /// Last log entry applied to the catalog in the copy.
    pub applied_index: Option<u64>,
    /// Last entry in the copy's Raft log. It may be past `applied_index` (appended, not
    /// yet applied when the copy was taken): a group restored from the copy commits and
    /// applies those entries too.
    pub last_log_index: Option<u64>,
    pub last_log_term: Option<u64>,
    pub users: usize,
    pub rooms: usize,
    pub chat_nodes: usize,
}

impl Checkpointer {
    pub(super) fn new(db: Arc<DB>, snapshots: SnapshotFiles) -> Self {
        Self { db, snapshots }
    }

    /// Writes a checkpoint into `target` (absolute, not existing) and reads it back.
    /// Blocks: call it from `spawn_blocking`.
    pub fn create(&self, target: &Path) -> Result<ControlBackup, CheckpointError> {
        let written = self.snapshots.with_current(|snapshot| {
            let written = checkpoint::create(&self.db, target)?;
            if let Some(snapshot) = snapshot {
                let io = |source| CheckpointError::Io { path: target.into(), source };
                snapshot_file::copy_into(snapshot, target).map_err(io)?;
            }
            Ok::<_, CheckpointError>(written)
        })?;
        let (files, bytes) =
            checkpoint::directory_size(target).map_err(|source| CheckpointError::Io { path: target.into(), source })?;
        let copy = Arc::new(checkpoint::open_read_only(target, &COLUMN_FAMILIES)?);
        let unreadable = |e: super::types::StorageError| CheckpointError::Unreadable(e.to_string());
        let log = read_log_state(&copy).map_err(unreadable)?;
        let stored = StateMachineStore::read_stored(copy).map_err(unreadable)?;
        Ok(ControlBackup {
            path: written.path.display().to_string(),
            files,
            bytes,
            applied_index: stored.applied.last_applied.map(|id| id.index),
            last_log_index: log.last_log_id.map(|id| id.index),
            last_log_term: log.last_log_id.map(|id| id.leader_id.term),
            users: stored.catalog.users.len(),
            rooms: stored.catalog.rooms.len(),
            chat_nodes: stored.catalog.nodes.len(),
        })
    }
}
