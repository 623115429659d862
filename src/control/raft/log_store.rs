//! The Raft log and vote in RocksDB (openraft's v2 `RaftLogStorage`).
//!
//! Column families: `raft_log` (index, big-endian → bincode entry) and `raft_state`
//! (vote, committed, last purged). Appends are written to RocksDB at once (so readers see
//! them when `append` returns) and made durable by a dedicated sync thread that fsyncs the
//! WAL and only then completes openraft's callbacks: several appends waiting at once share
//! one fsync (group commit). `save_vote` writes with a synchronous WAL write before it
//! returns. With `fsync = false` the callback completes right after the write.

// openraft's `StorageError` is large, and its traits require it: we return it as is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::store;

pub const CF_LOG: &str = "raft_log";
pub const CF_STATE: &str = "raft_state";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log of one control member. Cheap to clone: clones share the database and
/// the sync thread.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Callbacks waiting for the next WAL fsync; `None` when fsync is off.
    syncer: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
}

impl LogStore {
    /// Wraps an opened database (with [`CF_LOG`] and [`CF_STATE`]).
    pub fn new(db: Arc<DB>, fsync: bool) -> Self {
        let syncer = fsync.then(|| spawn_syncer(db.clone()));
        Self { db, syncer }
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let cf = store::cf(&self.db, CF_STATE).map_err(read_err)?;
        match self.db.get_cf(cf, key).map_err(read_err)? {
            Some(bytes) => Ok(Some(store::decode(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageError> {
        let cf = store::cf(&self.db, CF_STATE).map_err(write_err)?;
        let bytes = store::encode(value).map_err(write_err)?;
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.put_cf_opt(cf, key, bytes, &options).map_err(write_err)?;
        Ok(())
    }
}

/// One thread per store that fsyncs the WAL for every batch of waiting callbacks. It holds
/// the database weakly, so the database closes when the stores are dropped, not whenever
/// this thread happens to notice.
fn spawn_syncer(db: Arc<DB>) -> mpsc::Sender<LogFlushed<TypeConfig>> {
    let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
    let db = Arc::downgrade(&db);
    let spawned = std::thread::Builder::new().name("raft-wal-sync".into()).spawn(move || {
        // Ends when every LogStore clone (every sender) is dropped.
        while let Ok(first) = rx.recv() {
            let mut waiting = vec![first];
            waiting.extend(rx.try_iter());
            let outcome = match db.upgrade() {
                Some(db) => db.flush_wal(true).map_err(|e| std::io::Error::other(e.to_string())),
                None => Err(std::io::Error::other("the database is closed")),
            };
            metrics::counter!("districhat_raft_wal_syncs_total").increment(1);
            for callback in waiting {
                let result = match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                callback.log_io_completed(result);
            }
        }
    });
    if let Err(e) = spawned {
        // Start-up invariant: without this thread no write would ever be acknowledged.
        panic!("cannot start the WAL sync thread: {e}");
    }
    tx
}

/// The first and last log ids stored in `db` (also used to describe a backup).
pub fn read_log_state(db: &DB) -> Result<LogState<TypeConfig>, StorageError> {
    let cf = store::cf(db, CF_LOG).map_err(read_err)?;
    let last = match db.iterator_cf(cf, IteratorMode::End).next() {
        Some(item) => {
            let (_, value) = item.map_err(read_err)?;
            Some(store::decode::<Entry>(&value).map_err(read_err)?.log_id)
        }
        None => None,
    };
    let state_cf = store::cf(db, CF_STATE).map_err(read_err)?;
    let last_purged_log_id: Option<LogId> = match db.get_cf(state_cf, KEY_LAST_PURGED).map_err(read_err)? {
        Some(bytes) => Some(store::decode::<LogId>(&bytes).map_err(read_err)?),
        None => None,
    };
    Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = store::cf(&self.db, CF_LOG).map_err(read_err)?;
        let start_key = store::u64_key(start);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&start_key, Direction::Forward)) {
            let (key, value) = item.map_err(read_err)?;
            let index = store::key_u64(&key).map_err(read_err)?;
            if !range.contains(&index) {
                break;
            }
            entries.push(store::decode::<Entry>(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        read_log_state(&self.db)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must be on disk before we answer for it: synchronous WAL write.
        self.put_state(KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_state(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only a hint for faster restarts; losing it is harmless.
        self.put_state(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_state::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = store::cf(&self.db, CF_LOG).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = store::encode(&entry).map_err(write_err)?;
            batch.put_cf(cf, store::u64_key(entry.log_id.index), bytes);
        }
        self.db.write(batch).map_err(write_err)?;
        match &self.syncer {
            Some(syncer) => {
                if let Err(mpsc::SendError(callback)) = syncer.send(callback) {
                    let e = std::io::Error::other("the WAL sync thread stopped");
                    callback.log_io_completed(Err(e));
                }
            }
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = store::cf(&self.db, CF_LOG).map_err(write_err)?;
        self.db.delete_range_cf(cf, store::u64_key(log_id.index), store::u64_key(u64::MAX)).map_err(write_err)?;
        // delete_range's end is exclusive: remove a possible entry at u64::MAX as well.
        self.db.delete_cf(cf, store::u64_key(u64::MAX)).map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_state(KEY_LAST_PURGED, &log_id, false)?;
        let cf = store::cf(&self.db, CF_LOG).map_err(write_err)?;
        self.db
            .delete_range_cf(cf, store::u64_key(0), store::u64_key(log_id.index.saturating_add(1)))
            .map_err(write_err)?;
        Ok(())
    }
}
