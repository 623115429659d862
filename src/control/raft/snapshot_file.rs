//! Catalog snapshots as files in the member's data directory, beside RocksDB's own files.
//!
//! A snapshot is the whole catalog (135 MB at a million users). Kept as one value in the
//! RocksDB that also holds the Raft log, its synced write went through the same write
//! queue and WAL as the log appends, and every append behind it waited for it
//! (docs/BENCHMARKS.md, "The control plane at scale"). So a snapshot is a file of its
//! own, written where nothing else waits for it: `catalog-snapshot-<index>-<nonce>.snap`,
//! first as `<name>.tmp`, fsynced, renamed, and the directory fsynced. Only then is it the
//! current snapshot, and only then are older files removed. RocksDB leaves files with
//! names it does not use alone, and a backup (a RocksDB checkpoint) gets a hard link of the
//! current file, so a data directory and its backups stay flat directories.
//!
//! Layout of a file: [`MAGIC`], the metadata's length (u32, big-endian), the metadata
//! (bincode [`SnapshotMeta`]), the data's length (u64, big-endian), the data (the bincode
//! catalog, see `state_machine::decode_catalog`). A file whose lengths do not add up to
//! its size is refused.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::types::SnapshotMeta;
use crate::store;

/// The first bytes of every snapshot file (format version 1).
const MAGIC: &[u8; 8] = b"DCSNAP01";
const PREFIX: &str = "catalog-snapshot-";
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";

/// The snapshot files of one data directory. Cheap to clone: clones share the directory
/// and the record of which file is current.
#[derive(Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
    /// The newest durable snapshot, if any. A `std` mutex, never held across an `.await`;
    /// held while the current file is replaced or copied, so a backup never links a file
    /// that is being removed.
    current: Arc<Mutex<Option<SnapshotFile>>>,
}

/// A durable snapshot file and the metadata in its header.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
}

impl SnapshotFiles {
    /// The snapshots in `dir`, tidied: leftover temporary files (a write cut short by a
    /// crash) and snapshots older than the newest are removed.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let (newest, stale) = scan(dir)?;
        for path in stale {
            remove_if_present(&path)?;
        }
        Ok(Self { dir: dir.to_path_buf(), current: Arc::new(Mutex::new(newest)) })
    }

    /// The snapshots in `dir`, without changing anything there (to describe a backup).
    pub fn read_only(dir: &Path) -> io::Result<Self> {
        let (newest, _) = scan(dir)?;
        Ok(Self { dir: dir.to_path_buf(), current: Arc::new(Mutex::new(newest)) })
    }

    /// The current snapshot's metadata.
    pub fn current_meta(&self) -> Option<SnapshotMeta> {
        self.lock().as_ref().map(|file| file.meta.clone())
    }

    /// The current snapshot, read whole. Blocks on disk.
    pub fn read_current(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        // Opened under the lock, read outside it: an open file stays readable on Unix even
        // if a newer snapshot replaces it meanwhile.
        let opened = {
            let current = self.lock();
            match current.as_ref() {
                Some(file) => Some(File::open(&file.path)?),
                None => None,
            }
        };
        match opened {
            Some(mut file) => read_snapshot(&mut file).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a snapshot durably and makes it current unless a newer one already is (a
    /// snapshot installed from the leader while this one was being built); the older of
    /// the two files is removed. Returns whether it became current. Blocks on disk: the
    /// fsyncs are of this file and this directory only, nothing the Raft log waits for.
    pub fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<bool> {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let name = format!("{PREFIX}{index:020}-{:016x}{SUFFIX}", rand::random::<u64>());
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        write_snapshot(&temp, meta, data)?;
        fs::rename(&temp, &path)?;
        sync_dir(&self.dir)?;
        let mut current = self.lock();
        let newer = current.as_ref().is_none_or(|old| meta.last_log_id >= old.meta.last_log_id);
        let replaced =
            if newer { current.replace(SnapshotFile { meta: meta.clone(), path: path.clone() }) } else { None };
        match (newer, replaced) {
            (true, Some(old)) if old.path != path => remove_if_present(&old.path)?,
            (true, _) => {}
            (false, _) => remove_if_present(&path)?,
        }
        Ok(newer)
    }

    /// Runs `f` with the current snapshot file held in place (not replaced nor removed
    /// until `f` returns): how a backup copies the file that matches its checkpoint.
    pub fn with_current<T>(&self, f: impl FnOnce(Option<&SnapshotFile>) -> T) -> T {
        let current = self.lock();
        f(current.as_ref())
    }

    fn lock(&self) -> MutexGuard<'_, Option<SnapshotFile>> {
        // Poisoning cannot leave the record inconsistent: it is replaced in one assignment.
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Puts a snapshot file into `dir` (a backup being written): a hard link when both are on
/// one filesystem (the file is never changed once written), a copy otherwise; then
/// fsyncs `dir`.
pub fn copy_into(file: &SnapshotFile, dir: &Path) -> io::Result<()> {
    let name = file.path.file_name().ok_or_else(|| io::Error::other("a snapshot file without a name"))?;
    let target = dir.join(name);
    if fs::hard_link(&file.path, &target).is_err() {
        fs::copy(&file.path, &target)?;
        File::open(&target)?.sync_all()?;
    }
    sync_dir(dir)
}

/// The newest readable snapshot file in `dir`, and every other file of ours there (older
/// snapshots and temporary files).
fn scan(dir: &Path) -> io::Result<(Option<SnapshotFile>, Vec<PathBuf>)> {
    let mut newest: Option<SnapshotFile> = None;
    let mut stale = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
        if !name.starts_with(PREFIX) {
            continue;
        }
        if !name.ends_with(SUFFIX) {
            if name.ends_with(TEMP_SUFFIX) {
                stale.push(path);
            }
            continue;
        }
        let meta = read_meta(&mut File::open(&path)?)
            .map_err(|e| io::Error::new(e.kind(), format!("snapshot file {}: {e}", path.display())))?;
        let found = SnapshotFile { meta, path };
        match newest.take() {
            Some(old) if old.meta.last_log_id > found.meta.last_log_id => {
                stale.push(found.path);
                newest = Some(old);
            }
            Some(old) => {
                stale.push(old.path);
                newest = Some(found);
            }
            None => newest = Some(found),
        }
    }
    Ok((newest, stale))
}

fn write_snapshot(path: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let meta_bytes = store::encode(meta).map_err(io::Error::other)?;
    let meta_len = u32::try_from(meta_bytes.len()).map_err(io::Error::other)?;
    let file = File::create(path)?;
    let mut out = BufWriter::new(file);
    out.write_all(MAGIC)?;
    out.write_all(&meta_len.to_be_bytes())?;
    out.write_all(&meta_bytes)?;
    out.write_all(&(data.len() as u64).to_be_bytes())?;
    out.write_all(data)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Reads the header of a snapshot file: the metadata. Leaves the reader at the data's
/// length.
fn read_meta(file: &mut File) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a catalog snapshot file (wrong magic bytes)"));
    }
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    let meta_len = u32::from_be_bytes(len) as u64;
    let size = file.metadata()?.len();
    if meta_len > size {
        return Err(invalid("the metadata's length is past the end of the file"));
    }
    let mut meta_bytes = vec![0u8; meta_len as usize];
    file.read_exact(&mut meta_bytes)?;
    store::decode_exact(&meta_bytes).map_err(|e| invalid(&e.to_string()))
}

fn read_snapshot(file: &mut File) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    let meta = read_meta(file)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let data_len = u64::from_be_bytes(len);
    let size = file.metadata()?.len();
    let position = io::Seek::stream_position(file)?;
    if position.checked_add(data_len) != Some(size) {
        return Err(invalid("the data's length does not match the file's size"));
    }
    let mut data = vec![0u8; data_len as usize];
    file.read_exact(&mut data)?;
    Ok((meta, data))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// fsyncs a directory, so the names created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
