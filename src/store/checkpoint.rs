//! Backups of a live database as RocksDB checkpoints.
//!
//! A checkpoint is a consistent copy of every column family at one instant, taken while
//! the database keeps serving: RocksDB flushes the memtables, hard-links the immutable
//! SST files (copies them when the target is on another filesystem) and writes a fresh
//! MANIFEST. The copy is itself a database: restoring means pointing a process's
//! `data_dir` at (a copy of) it. Callers never pass a path: they pass a `name`, and
//! [`backup_target`] places it in the process's configured `backup_dir`, so a caller with
//! the cluster secret still cannot make the server write anywhere else. [`create`]
//! refuses to overwrite anything; [`open_read_only`] opens a finished copy to check what
//! it holds.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Options, DB};

/// Longest backup name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Why a checkpoint was not taken. `code()` is the stable string clients see.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("invalid backup name {0:?}: use 1-64 of A-Z a-z 0-9 . _ - and do not start with a dot")]
    InvalidName(String),
    #[error("the backup directory must be an absolute path on the server, got {0:?}")]
    RelativePath(PathBuf),
    #[error("{0:?} already exists; backups never overwrite, choose a new name")]
    TargetExists(PathBuf),
    #[error("cannot write into the backup directory {path:?}: {reason}")]
    NotWritable { path: PathBuf, reason: String },
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
            Self::InvalidName(_) => "backup_name_invalid",
            Self::RelativePath(_) => "backup_path_relative",
            Self::TargetExists(_) => "backup_target_exists",
            Self::NotWritable { .. } => "backup_dir_not_writable",
            Self::Io { .. } | Self::Rocks(_) | Self::Unreadable(_) => "backup_failed",
        }
    }
}

/// The backup directory of a process whose config sets none: `backups` next to its
/// `data_dir` (`/var/lib/districhat/c1` → `/var/lib/districhat/backups`), made absolute
/// against the working directory when `data_dir` is relative.
pub fn default_backup_dir(data_dir: &Path) -> PathBuf {
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    data_dir.parent().unwrap_or(&data_dir).join("backups")
}

/// Where the backup called `name` goes: `backup_dir/name`. `name` must be 1 to
/// [`MAX_NAME_LEN`] characters of `A-Za-z0-9._-` and must not start with a dot (so no
/// `..`, no hidden directories, no path separators).
pub fn backup_target(backup_dir: &Path, name: &str) -> Result<PathBuf, CheckpointError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(CheckpointError::InvalidName(name.to_string()));
    }
    if !backup_dir.is_absolute() {
        return Err(CheckpointError::RelativePath(backup_dir.to_path_buf()));
    }
    Ok(backup_dir.join(name))
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
        // Whatever stops us creating the backup directory (permissions, a read-only
        // mount, a file in the way) is the operator's to fix.
        std::fs::create_dir_all(parent)
            .map_err(|e| CheckpointError::NotWritable { path: parent.into(), reason: e.to_string() })?;
    }
    Checkpoint::new(db)?.create_checkpoint(target).map_err(|e| not_writable(e, target))?;
    let (files, bytes) =
        directory_size(target).map_err(|source| CheckpointError::Io { path: target.into(), source })?;
    Ok(CheckpointFiles { path: target.to_path_buf(), files, bytes })
}

/// Opens a database (a checkpoint, typically) without writing to it.
pub fn open_read_only(path: &Path, column_families: &[&'static str]) -> Result<DB, rocksdb::Error> {
    DB::open_cf_for_read_only(&Options::default(), path, column_families, false)
}

/// Number and total size of the regular files directly in `dir` (RocksDB databases and
/// their checkpoints are flat directories).
pub fn directory_size(dir: &Path) -> std::io::Result<(u64, u64)> {
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

/// RocksDB reports I/O failures as text only: permission and read-only failures while
/// writing the checkpoint are the operator's to fix, anything else is a server failure.
fn not_writable(e: rocksdb::Error, target: &Path) -> CheckpointError {
    let text = e.to_string();
    if text.contains("Permission denied") || text.contains("Read-only file system") {
        let path = target.parent().unwrap_or(target).to_path_buf();
        CheckpointError::NotWritable { path, reason: text }
    } else {
        CheckpointError::Rocks(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_copy_the_data_and_refuse_unsafe_targets() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(&dir.path().join("live"), &["rows"], &Default::default()).unwrap();
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

        // A file where the backup directory should be: refused as not writable.
        std::fs::write(dir.path().join("a-file"), b"x").unwrap();
        let blocked = dir.path().join("a-file").join("backups").join("two");
        assert_eq!(create(&db, &blocked).unwrap_err().code(), "backup_dir_not_writable");
    }

    #[test]
    fn backup_names_are_single_plain_path_components() {
        let dir = Path::new("/var/backups/districhat");
        let long = "a".repeat(MAX_NAME_LEN);
        for good in ["c1-2026-11-25T0300Z", "a", "n1_nightly.2", long.as_str()] {
            assert_eq!(backup_target(dir, good).unwrap(), dir.join(good), "{good}");
        }
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", ".", "..", ".hidden", "../etc", "a/b", "/abs", "a b", "é", "a\\b", too_long.as_str()] {
            assert_eq!(backup_target(dir, bad).unwrap_err().code(), "backup_name_invalid", "{bad:?}");
        }
        assert_eq!(backup_target(Path::new("rel"), "ok").unwrap_err().code(), "backup_path_relative");
        assert_eq!(default_backup_dir(Path::new("/var/lib/districhat/c1")), Path::new("/var/lib/districhat/backups"));
        assert!(default_backup_dir(Path::new("data/c1")).is_absolute());
    }
}
