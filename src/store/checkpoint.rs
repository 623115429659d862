//! Backups of a live database as RocksDB checkpoints.
//!
//! A checkpoint is a consistent copy of every column family at one instant, taken while
//! the database keeps serving: RocksDB flushes the memtables, hard-links the immutable
//! SST files (copies them when the target is on another filesystem) and writes a fresh
//! MANIFEST. The copy is itself a database: restoring means pointing a process's
//! `data_dir` at (a copy of) it. [`create`] refuses targets that could destroy data or
//! depend on the server's working directory; [`open_read_only`] opens a finished copy to
//! check what it holds.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Options, DB};

/// Why a checkpoint was not taken. `code()` is the stable string clients see.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("the backup directory must be an absolute path on the server, got {0:?}")]
    RelativePath(PathBuf),
    #[error("{0:?} already exists; backups never overwrite, choose a new directory")]
    TargetExists(PathBuf),
    #[error("cannot prepare {path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("rocksdb could not write the checkpoint: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("the checkpoint was written but cannot be read back: {0}")]
    Unreadable(String),
}

impl CheckpointError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::RelativePath(_) => "backup_path_relative",
            Self::TargetExists(_) => "backup_target_exists",
            Self::Io { .. } | Self::Rocks(_) | Self::Unreadable(_) => "backup_failed",
        }
    }
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    pub path: PathBuf,
    /// Files in the checkpoint directory.
    pub files: u64,
    /// Their total size. Hard-linked SST files count in full, although on the same
    /// filesystem they share their blocks with the live database until it compacts them.
    pub bytes: u64,
}

/// Writes a checkpoint of `db` into `target`, which must be absolute and must not exist
/// (its parent directories are created). Blocks: call it from `spawn_blocking`.
pub fn create(db: &DB, target: &Path) -> Result<CheckpointFiles, CheckpointError> {
    if !target.is_absolute() {
        return Err(CheckpointError::RelativePath(target.to_path_buf()));
    }
    // `symlink_metadata` also catches a dangling symlink, which RocksDB would follow.
    if target.symlink_metadata().is_ok() {
        return Err(CheckpointError::TargetExists(target.to_path_buf()));
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|source| CheckpointError::Io { path: parent.into(), source })?;
    }
    Checkpoint::new(db)?.create_checkpoint(target)?;
    let (files, bytes) =
        directory_size(target).map_err(|source| CheckpointError::Io { path: target.into(), source })?;
    Ok(CheckpointFiles { path: target.to_path_buf(), files, bytes })
}

/// Opens a database (a checkpoint, typically) without writing to it.
pub fn open_read_only(path: &Path, column_families: &[&'static str]) -> Result<DB, rocksdb::Error> {
    DB::open_cf_for_read_only(&Options::default(), path, column_families, false)
}

/// Number and total size of the regular files directly in `dir` (checkpoints are flat).
fn directory_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let metadata = entry?.metadata()?;
        if metadata.is_file() {
            files += 1;
            bytes += metadata.len();
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_copy_the_data_and_refuse_unsafe_targets() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(&dir.path().join("live"), &["rows"]).unwrap();
        let rows = crate::store::cf(&db, "rows").unwrap();
        db.put_cf(rows, b"k", b"v").unwrap();

        let target = dir.path().join("backups").join("one");
        let written = create(&db, &target).unwrap();
        assert_eq!(written.path, target);
        assert!(written.files > 0 && written.bytes > 0, "{written:?}");
        let copy = open_read_only(&target, &["rows"]).unwrap();
        assert_eq!(copy.get_cf(crate::store::cf(&copy, "rows").unwrap(), b"k").unwrap().as_deref(), Some(&b"v"[..]));

        assert_eq!(create(&db, &target).unwrap_err().code(), "backup_target_exists");
        assert_eq!(create(&db, Path::new("relative/dir")).unwrap_err().code(), "backup_path_relative");
    }
}
