//! The catalog state machine in RocksDB (openraft's v2 `RaftStateMachine`).
//!
//! The catalog lives in memory for reads ([`SharedCatalog`]) and is persisted row by row:
//! one column family per table (`users`, `rooms`, `members`, `nodes`, `read_marks`,
//! `ended_sessions`, `replicas_in_sync`, `room_policies`, `audit`) plus `sm_meta`
//! (catalog counters, last applied log id, last membership). Each `apply` call writes the
//! rows it touched and the new applied log id in one atomic batch. Snapshots are the
//! whole catalog in bincode, encoded from those rows without the catalog lock
//! ([`super::snapshot_rows`]) and kept as a file beside the database
//! ([`super::snapshot_file`]), so they can be sent to a member that fell behind the purged
//! log. Data directories from before keep their snapshot in `sm_meta` (`snapshot`): it is
//! moved to a file when the member opens them.

// openraft's `StorageError` is large, and its traits require it: we return it as is.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use super::catalog_lock::{self, CatalogRead, CatalogWrite};
use super::snapshot_file::SnapshotFiles;
use super::snapshot_rows::{encode_from_rows, EncodedCatalog};
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::control::catalog::{
    Catalog, CatalogMeta, ChatNode, ChatNodeId, CommandOutput, CommandResult, Room, RoomId, Touched, User, UserId,
};
use crate::control::route_changes::RouteChanges;
use crate::store;

pub const CF_USERS: &str = "users";
pub const CF_ROOMS: &str = "rooms";
pub const CF_MEMBERS: &str = "members";
pub const CF_NODES: &str = "nodes";
pub const CF_READ_MARKS: &str = "read_marks";
pub const CF_ENDED_SESSIONS: &str = "ended_sessions";
pub const CF_REPLICAS_IN_SYNC: &str = "replicas_in_sync";
pub const CF_ROOM_POLICIES: &str = "room_policies";
pub const CF_AUDIT: &str = "audit";
pub const CF_SM_META: &str = "sm_meta";

const TABLES: [&str; 9] = [
    CF_USERS,
    CF_ROOMS,
    CF_MEMBERS,
    CF_NODES,
    CF_READ_MARKS,
    CF_ENDED_SESSIONS,
    CF_REPLICAS_IN_SYNC,
    CF_ROOM_POLICIES,
    CF_AUDIT,
];
pub(super) const KEY_CATALOG_META: &[u8] = b"catalog_meta";
pub(super) const KEY_APPLIED: &[u8] = b"applied";
/// Where snapshots were kept before they became files: read when a member opens an older
/// data directory (and then removed), never written.
const KEY_LEGACY_SNAPSHOT: &[u8] = b"snapshot";

/// The applied catalog shared between the state machine (writer) and the web handlers
/// (readers). A `std` lock: it is never held across an `.await`.
pub type SharedState = Arc<RwLock<CatalogState>>;

/// The catalog and the log position it reflects, changed together under one lock so a
/// snapshot never pairs data with the wrong log id.
#[derive(Debug, Default)]
pub struct CatalogState {
    pub catalog: Catalog,
    pub applied: AppliedState,
    /// The routes each applied entry changed, since this catalog was loaded or installed:
    /// what heartbeat replies send as deltas. Memory only, never in a snapshot.
    pub route_changes: RouteChanges,
}

impl CatalogState {
    /// A catalog loaded at `applied`, with a change index that starts there.
    fn loaded(catalog: Catalog, applied: AppliedState) -> Self {
        let start = applied.last_applied.map_or(0, |log_id| log_id.index);
        Self { catalog, applied, route_changes: RouteChanges::starting_at(start) }
    }
}

/// Where the state machine is: last applied log id and membership, persisted together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A snapshot as older versions stored it under [`KEY_LEGACY_SNAPSHOT`]: its metadata and
/// the bincode catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// A raw key/value pair read from a table.
type Row = (Box<[u8]>, Box<[u8]>);

/// The state machine of one control member.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    state: SharedState,
    /// The snapshot files in the database's directory.
    files: SnapshotFiles,
    /// Makes snapshot ids unique within this process.
    snapshot_counter: u64,
}

impl StateMachineStore {
    /// Loads the catalog from disk: from its rows, or from the stored snapshot when that is
    /// newer (rows written after the last fsync can be lost in a crash; the snapshot cannot).
    /// A leftover temporary snapshot file (a crash mid-write) is removed, and a snapshot an
    /// older version kept in the database is moved to a file first.
    pub fn open(db: Arc<DB>) -> Result<Self, StorageError> {
        let files = SnapshotFiles::open(db.path()).map_err(snap_read)?;
        let mut machine = Self { db, state: Arc::default(), files, snapshot_counter: 0 };
        machine.move_legacy_snapshot_to_file()?;
        let (catalog, applied) = machine.load_rows()?;
        let newer = machine.files.current_meta().filter(|meta| meta.last_log_id > applied.last_applied);
        match newer.and_then(|_| machine.files.read_current().transpose()) {
            Some(snapshot) => {
                let (meta, data) = snapshot.map_err(snap_read)?;
                machine.install_rows(&meta, &data)?;
            }
            None => *machine.write_state() = CatalogState::loaded(catalog, applied),
        }
        Ok(machine)
    }

    /// The catalog stored in `db`, read without writing anything (to describe a backup):
    /// the same choice between rows and snapshot as [`Self::open`], the snapshot being the
    /// newer of the file and an older version's one in the database.
    pub fn read_stored(db: Arc<DB>) -> Result<CatalogState, StorageError> {
        let files = SnapshotFiles::read_only(db.path()).map_err(snap_read)?;
        let reader = Self { db, state: Arc::default(), files, snapshot_counter: 0 };
        let (catalog, applied) = reader.load_rows()?;
        let file = reader.files.current_meta().map(|meta| meta.last_log_id);
        if let Some(legacy) = reader.legacy_snapshot()? {
            if file.is_none_or(|file| legacy.meta.last_log_id > file) {
                if legacy.meta.last_log_id > applied.last_applied {
                    return decode_snapshot(&legacy.meta, &legacy.data);
                }
                return Ok(CatalogState::loaded(catalog, applied));
            }
        }
        if file.is_some_and(|file| file > applied.last_applied) {
            if let Some((meta, data)) = reader.files.read_current().map_err(snap_read)? {
                return decode_snapshot(&meta, &data);
            }
        }
        Ok(CatalogState::loaded(catalog, applied))
    }

    /// A handle that copies this member's database and current snapshot file for a backup.
    pub fn checkpointer(&self) -> super::checkpoint::Checkpointer {
        super::checkpoint::Checkpointer::new(self.db.clone(), self.files.clone())
    }

    /// The applied catalog, for readers.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    #[track_caller]
    fn write_state(&self) -> CatalogWrite<'_> {
        write_state(&self.state)
    }

    fn load_rows(&self) -> Result<(Catalog, AppliedState), StorageError> {
        let mut catalog = Catalog::default();
        let meta_cf = store::cf(&self.db, CF_SM_META).map_err(sm_read)?;
        if let Some(bytes) = self.db.get_cf(meta_cf, KEY_CATALOG_META).map_err(sm_read)? {
            catalog.meta = store::decode(&bytes).map_err(sm_read)?;
        }
        let applied = match self.db.get_cf(meta_cf, KEY_APPLIED).map_err(sm_read)? {
            Some(bytes) => store::decode(&bytes).map_err(sm_read)?,
            None => AppliedState::default(),
        };
        for (key, value) in self.scan(CF_USERS)? {
            catalog.users.insert(store::key_u64(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
        }
        for (key, value) in self.scan(CF_ROOMS)? {
            catalog.rooms.insert(store::key_u64(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
        }
        for (key, _) in self.scan(CF_MEMBERS)? {
            catalog.members.insert(store::key_pair(&key).map_err(sm_read)?);
        }
        for (key, value) in self.scan(CF_NODES)? {
            catalog.nodes.insert(store::key_u64(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
        }
        for (key, value) in self.scan(CF_READ_MARKS)? {
            catalog.read_marks.insert(store::key_pair(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
        }
        for (key, _) in self.scan(CF_ENDED_SESSIONS)? {
            catalog.ended_sessions.insert(store::key_pair(&key).map_err(sm_read)?);
        }
        for (key, value) in self.scan(CF_REPLICAS_IN_SYNC)? {
            let (room, epoch) = (store::key_u64(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
            catalog.replicas_in_sync.insert(room, epoch);
        }
        for (key, value) in self.scan(CF_ROOM_POLICIES)? {
            catalog.policies.insert(store::key_u64(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
        }
        for (key, value) in self.scan(CF_AUDIT)? {
            catalog.audit.insert(store::key_pair(&key).map_err(sm_read)?, store::decode(&value).map_err(sm_read)?);
        }
        catalog.rebuild_indexes();
        Ok((catalog, applied))
    }

    fn scan(&self, table: &'static str) -> Result<Vec<Row>, StorageError> {
        let cf = store::cf(&self.db, table).map_err(sm_read)?;
        self.db.iterator_cf(cf, IteratorMode::Start).map(|item| item.map_err(sm_read)).collect()
    }

    /// The snapshot an older version kept in the database, if it is still there.
    fn legacy_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let cf = store::cf(&self.db, CF_SM_META).map_err(sm_read)?;
        match self.db.get_cf(cf, KEY_LEGACY_SNAPSHOT).map_err(sm_read)? {
            Some(bytes) => Ok(Some(store::decode(&bytes).map_err(sm_read)?)),
            None => Ok(None),
        }
    }

    /// Moves a snapshot an older version kept in the database into a file (unless a file
    /// already holds a newer one), then removes it from the database. A crash in between
    /// only repeats the move at the next start.
    fn move_legacy_snapshot_to_file(&self) -> Result<(), StorageError> {
        let Some(legacy) = self.legacy_snapshot()? else { return Ok(()) };
        let file_is_newer = self.files.current_meta().is_some_and(|file| file.last_log_id > legacy.meta.last_log_id);
        if !file_is_newer {
            self.files.store(&legacy.meta, &legacy.data).map_err(snap_write)?;
        }
        let cf = store::cf(&self.db, CF_SM_META).map_err(sm_write)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, KEY_LEGACY_SNAPSHOT);
        self.write_synced(batch)?;
        tracing::info!(index = ?legacy.meta.last_log_id, "moved the stored catalog snapshot to a file");
        Ok(())
    }

    /// Adds the current value (or the deletion) of every touched row to `batch`.
    fn persist_rows(&self, catalog: &Catalog, touched: &[Touched], batch: &mut WriteBatch) -> Result<(), StorageError> {
        for row in touched {
            let (table, key, value) = match *row {
                Touched::Meta => (CF_SM_META, KEY_CATALOG_META.to_vec(), Some(store::encode(&catalog.meta))),
                Touched::User(id) => (CF_USERS, store::u64_key(id).to_vec(), catalog.users.get(&id).map(store::encode)),
                Touched::Room(id) => (CF_ROOMS, store::u64_key(id).to_vec(), catalog.rooms.get(&id).map(store::encode)),
                Touched::Node(id) => (CF_NODES, store::u64_key(id).to_vec(), catalog.nodes.get(&id).map(store::encode)),
                Touched::ReadMark(user, room) => {
                    let seq = catalog.read_marks.get(&(user, room)).map(store::encode);
                    (CF_READ_MARKS, store::pair_key(user, room).to_vec(), seq)
                }
                Touched::EndedSession(user, expires_ms) => {
                    let present = catalog.session_ended(user, expires_ms).then(|| Ok(Vec::new()));
                    (CF_ENDED_SESSIONS, store::pair_key(user, expires_ms).to_vec(), present)
                }
                Touched::ReplicaInSync(room) => {
                    let epoch = catalog.replicas_in_sync.get(&room).map(store::encode);
                    (CF_REPLICAS_IN_SYNC, store::u64_key(room).to_vec(), epoch)
                }
                Touched::Member(room, user) => {
                    let present = catalog.is_member(room, user).then(|| Ok(Vec::new()));
                    (CF_MEMBERS, store::pair_key(room, user).to_vec(), present)
                }
                Touched::Policy(room) => {
                    let policy = catalog.policies.get(&room).map(store::encode);
                    (CF_ROOM_POLICIES, store::u64_key(room).to_vec(), policy)
                }
                Touched::Audit(room, number) => {
                    let entry = catalog.audit.get(&(room, number)).map(store::encode);
                    (CF_AUDIT, store::pair_key(room, number).to_vec(), entry)
                }
            };
            let cf = store::cf(&self.db, table).map_err(sm_write)?;
            match value {
                Some(bytes) => batch.put_cf(cf, key, bytes.map_err(sm_write)?),
                None => batch.delete_cf(cf, key),
            }
        }
        Ok(())
    }

    /// Replaces the in-memory catalog and its rows with a snapshot's (already durable as the
    /// current snapshot file, so a crash before the rows are written loads it again).
    pub(super) fn install_rows(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let CatalogState { catalog, applied, .. } = decode_snapshot(meta, data)?;
        let mut batch = WriteBatch::default();
        for table in TABLES {
            let cf = store::cf(&self.db, table).map_err(sm_write)?;
            for (key, _) in self.scan(table)? {
                batch.delete_cf(cf, key);
            }
        }
        let mut touched = vec![Touched::Meta];
        touched.extend(catalog.users.keys().map(|id| Touched::User(*id)));
        touched.extend(catalog.rooms.keys().map(|id| Touched::Room(*id)));
        touched.extend(catalog.nodes.keys().map(|id| Touched::Node(*id)));
        touched.extend(catalog.members.iter().map(|(room, user)| Touched::Member(*room, *user)));
        touched.extend(catalog.read_marks.keys().map(|(user, room)| Touched::ReadMark(*user, *room)));
        touched.extend(catalog.ended_sessions.iter().map(|(user, expires)| Touched::EndedSession(*user, *expires)));
        touched.extend(catalog.replicas_in_sync.keys().map(|room| Touched::ReplicaInSync(*room)));
        touched.extend(catalog.policies.keys().map(|room| Touched::Policy(*room)));
        touched.extend(catalog.audit.keys().map(|(room, number)| Touched::Audit(*room, *number)));
        self.persist_rows(&catalog, &touched, &mut batch)?;
        let meta_cf = store::cf(&self.db, CF_SM_META).map_err(sm_write)?;
        batch.put_cf(meta_cf, KEY_APPLIED, store::encode(&applied).map_err(sm_write)?);
        self.write_synced(batch)?;
        *self.write_state() = CatalogState::loaded(catalog, applied);
        Ok(())
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options).map_err(sm_write)
    }
}

/// The catalog and position a snapshot holds. Snapshots of older formats still load:
/// before read marks (no marks), before ended sessions (none ended), before in-sync
/// replicas (none in sync: owners report theirs again within a heartbeat) and before
/// moderation (no room policies, no audit). Each format
/// must use every byte, so an older one never half-reads a newer one.
fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<CatalogState, StorageError> {
    let catalog = decode_catalog(data).map_err(snap_read)?;
    let applied = AppliedState { last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
    Ok(CatalogState::loaded(catalog, applied))
}

/// The catalog in a snapshot's data, in the newest format that uses every byte, with its
/// indexes rebuilt. (The snapshot fuzz target's entry: `crate::fuzzing::snapshot`.)
pub(crate) fn decode_catalog(data: &[u8]) -> Result<Catalog, store::StoreError> {
    let decoded = store::decode_exact::<Catalog>(data)
        .or_else(|e| store::decode_exact::<CatalogBeforeModeration>(data).map(Catalog::from).map_err(|_| e))
        .or_else(|e| store::decode_exact::<CatalogBeforeInSync>(data).map(Catalog::from).map_err(|_| e))
        .or_else(|e| store::decode_exact::<CatalogBeforeEndedSessions>(data).map(Catalog::from).map_err(|_| e))
        .or_else(|e| store::decode_exact::<CatalogBeforeReadMarks>(data).map(Catalog::from).map_err(|_| e));
    let mut catalog = decoded?;
    catalog.rebuild_indexes();
    Ok(catalog)
}

/// The snapshot format of the catalog before `read_marks` was added.
#[derive(Serialize, Deserialize)]
struct CatalogBeforeReadMarks {
    meta: CatalogMeta,
    users: BTreeMap<UserId, User>,
    rooms: BTreeMap<RoomId, Room>,
    members: BTreeSet<(RoomId, UserId)>,
    nodes: BTreeMap<ChatNodeId, ChatNode>,
}

/// The snapshot format of the catalog before `ended_sessions` was added: the older
/// format's fields, then the read marks (bincode writes a nested struct's fields in place).
#[derive(Serialize, Deserialize)]
struct CatalogBeforeEndedSessions {
    older: CatalogBeforeReadMarks,
    read_marks: BTreeMap<(UserId, RoomId), u64>,
}

/// The snapshot format of the catalog before `replicas_in_sync` was added.
#[derive(Serialize, Deserialize)]
struct CatalogBeforeInSync {
    older: CatalogBeforeEndedSessions,
    ended_sessions: BTreeSet<(UserId, u64)>,
}

/// The snapshot format of the catalog before `policies` and `audit` were added.
#[derive(Serialize, Deserialize)]
struct CatalogBeforeModeration {
    older: CatalogBeforeInSync,
    replicas_in_sync: BTreeMap<RoomId, u64>,
}

impl From<CatalogBeforeModeration> for Catalog {
    fn from(before: CatalogBeforeModeration) -> Self {
        let mut catalog: Catalog = before.older.into();
        catalog.replicas_in_sync = before.replicas_in_sync;
        catalog
    }
}

impl From<CatalogBeforeInSync> for Catalog {
    fn from(before: CatalogBeforeInSync) -> Self {
        let mut catalog: Catalog = before.older.into();
        catalog.ended_sessions = before.ended_sessions;
        catalog
    }
}

impl From<CatalogBeforeEndedSessions> for Catalog {
    fn from(before: CatalogBeforeEndedSessions) -> Self {
        let mut catalog: Catalog = before.older.into();
        catalog.read_marks = before.read_marks;
        catalog
    }
}

impl From<CatalogBeforeReadMarks> for Catalog {
    fn from(older: CatalogBeforeReadMarks) -> Self {
        let mut catalog = Catalog::default();
        (catalog.meta, catalog.users, catalog.rooms) = (older.meta, older.users, older.rooms);
        (catalog.members, catalog.nodes) = (older.members, older.nodes);
        catalog
    }
}

/// Locks the state for reading, timed and with the caller's place ([`super::catalog_lock`]).
#[track_caller]
pub fn read_state(state: &SharedState) -> CatalogRead<'_> {
    catalog_lock::read(state)
}

#[track_caller]
fn write_state(state: &SharedState) -> CatalogWrite<'_> {
    catalog_lock::write(state)
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, ErrorVerb::Read, AnyError::new(&e)).into()
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, ErrorVerb::Write, AnyError::new(&e)).into()
}

fn snap_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), ErrorVerb::Read, AnyError::new(&e)).into()
}

fn snap_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), ErrorVerb::Write, AnyError::new(&e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.snapshot_counter += 1;
        let (machine, counter) = (self.clone(), self.snapshot_counter);
        // Seconds of encoding and writing with a large catalog (a million users): off the
        // async runtime, which may have a single thread that Raft heartbeats need too.
        tokio::task::spawn_blocking(move || machine.build_blocking(counter)).await.map_err(snap_read)?
    }
}

impl StateMachineStore {
    /// The snapshot of the applied catalog, stored (fsynced) as the current snapshot file.
    /// It is encoded from the rows at one RocksDB snapshot, not from the in-memory catalog:
    /// `apply` goes on meanwhile. Written to its own file, it holds up no log append.
    fn build_blocking(&self, counter: u64) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let EncodedCatalog { applied, data } = encode_from_rows(&self.db).map_err(snap_read)?;
        let encoded_ms = started.elapsed().as_millis() as u64;
        let snapshot_id = match applied.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, counter),
            None => format!("empty-{counter}"),
        };
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership, snapshot_id };
        let current = self.files.store(&meta, &data).map_err(snap_write)?;
        metrics::counter!("districhat_raft_snapshots_built_total").increment(1);
        metrics::gauge!("districhat_raft_snapshot_bytes").set(data.len() as f64);
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            bytes = data.len(),
            encoded_ms,
            took_ms,
            index = ?meta.last_log_id,
            current,
            "built a catalog snapshot"
        );
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = read_state(&self.state);
        Ok((state.applied.last_applied, state.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut touched = Vec::new();
        let mut state = write_state(&self.state);
        for entry in entries {
            state.applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(Ok(CommandOutput::Done)),
                EntryPayload::Normal(command) => {
                    let term = entry.log_id.leader_id.term;
                    let (result, rows) = state.catalog.apply_in_term(command, Some(term));
                    state.route_changes.record(entry.log_id.index, &rows);
                    touched.extend(rows);
                    results.push(result);
                }
                EntryPayload::Membership(membership) => {
                    state.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    results.push(Ok(CommandOutput::Done));
                }
            }
        }
        let mut batch = WriteBatch::default();
        self.persist_rows(&state.catalog, &touched, &mut batch)?;
        let meta_cf = store::cf(&self.db, CF_SM_META).map_err(sm_write)?;
        batch.put_cf(meta_cf, KEY_APPLIED, store::encode(&state.applied).map_err(sm_write)?);
        drop(state);
        // Not fsynced: the log is durable, and a lost row batch is re-applied from it on
        // restart (or the newer stored snapshot is loaded; see `open`).
        self.db.write(batch).map_err(sm_write)?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let data = snapshot.into_inner();
        let bytes = data.len();
        // Off the async runtime, like building one: seconds for a large catalog. The file
        // first: once it is durable, a crash before the rows are written loads it again.
        let (mut machine, meta_owned) = (self.clone(), meta.clone());
        let install = move || -> Result<(), StorageError> {
            machine.files.store(&meta_owned, &data).map_err(snap_write)?;
            machine.install_rows(&meta_owned, &data)
        };
        tokio::task::spawn_blocking(install).await.map_err(sm_write)??;
        metrics::counter!("districhat_raft_snapshots_installed_total").increment(1);
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(bytes, took_ms, index = ?meta.last_log_id, "installed a catalog snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Reading 135 MB at a million users: off the async runtime.
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || files.read_current()).await.map_err(snap_read)?;
        let current = current.map_err(snap_read)?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
fn decode_stored(snapshot: &StoredSnapshot) -> Result<CatalogState, StorageError> {
    decode_snapshot(&snapshot.meta, &snapshot.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_from_before_read_marks_still_load() {
        let user = User { id: 1, username: "alice".into(), password_hash: "hash".into(), created_at_ms: 1 };
        let older = CatalogBeforeReadMarks {
            meta: CatalogMeta { next_user_id: 2, ..CatalogMeta::default() },
            users: BTreeMap::from([(1, user)]),
            rooms: BTreeMap::new(),
            members: BTreeSet::new(),
            nodes: BTreeMap::new(),
        };
        let meta = SnapshotMeta::default();
        let snapshot = StoredSnapshot { meta, data: store::encode(&older).expect("encode") };
        let state = decode_stored(&snapshot).expect("an older snapshot loads");
        assert_eq!(state.catalog.users[&1].username, "alice");
        assert!(state.catalog.read_marks.is_empty());
        assert_eq!(state.catalog.meta.next_user_id, 2);

        let garbage = StoredSnapshot { meta: SnapshotMeta::default(), data: vec![1, 2, 3] };
        assert!(decode_stored(&garbage).is_err(), "anything else is still refused");
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    fn stored(data: Vec<u8>) -> StoredSnapshot {
        StoredSnapshot { meta: SnapshotMeta::default(), data }
    }

    #[test]
    fn each_snapshot_format_keeps_all_its_fields() {
        let older = CatalogBeforeReadMarks {
            meta: CatalogMeta::default(),
            users: BTreeMap::new(),
            rooms: BTreeMap::new(),
            members: BTreeSet::new(),
            nodes: BTreeMap::new(),
        };
        let before_sessions = CatalogBeforeEndedSessions { older, read_marks: BTreeMap::from([((1, 2), 7)]) };
        // The legacy layout is the real one's prefix: the current catalog with the same
        // read marks is those bytes plus an empty `ended_sessions` (one length byte).
        let mut same = Catalog::default();
        same.read_marks.insert((1, 2), 7);
        let mut legacy = store::encode(&before_sessions).expect("encode");
        legacy.extend([0, 0, 0, 0]);
        assert_eq!(
            store::encode(&same).expect("encode"),
            legacy,
            "plus empty ended sessions, in-sync replicas, policies and audit"
        );
        let state = decode_stored(&stored(store::encode(&before_sessions).expect("encode"))).expect("loads");
        assert_eq!(state.catalog.read_marks[&(1, 2)], 7, "read marks of the intermediate format are kept");
        assert!(state.catalog.ended_sessions.is_empty());

        let before_in_sync = CatalogBeforeInSync {
            older: CatalogBeforeEndedSessions {
                older: CatalogBeforeReadMarks {
                    meta: CatalogMeta::default(),
                    users: BTreeMap::new(),
                    rooms: BTreeMap::new(),
                    members: BTreeSet::new(),
                    nodes: BTreeMap::new(),
                },
                read_marks: BTreeMap::new(),
            },
            ended_sessions: BTreeSet::from([(5, 2_000)]),
        };
        let mut same = Catalog::default();
        same.ended_sessions.insert((5, 2_000));
        let mut legacy = store::encode(&before_in_sync).expect("encode");
        legacy.extend([0, 0, 0]);
        assert_eq!(store::encode(&same).expect("encode"), legacy, "plus empty in-sync replicas, policies and audit");
        let state = decode_stored(&stored(store::encode(&before_in_sync).expect("encode"))).expect("loads");
        assert!(state.catalog.session_ended(5, 2_000), "ended sessions of the format before in-sync are kept");
        assert!(state.catalog.replicas_in_sync.is_empty());

        let before_moderation = CatalogBeforeModeration {
            older: CatalogBeforeInSync {
                older: CatalogBeforeEndedSessions {
                    older: CatalogBeforeReadMarks {
                        meta: CatalogMeta::default(),
                        users: BTreeMap::new(),
                        rooms: BTreeMap::new(),
                        members: BTreeSet::new(),
                        nodes: BTreeMap::new(),
                    },
                    read_marks: BTreeMap::new(),
                },
                ended_sessions: BTreeSet::from([(6, 3_000)]),
            },
            replicas_in_sync: BTreeMap::from([(4, 2)]),
        };
        let mut same = Catalog::default();
        same.ended_sessions.insert((6, 3_000));
        same.replicas_in_sync.insert(4, 2);
        let mut legacy = store::encode(&before_moderation).expect("encode");
        legacy.extend([0, 0]);
        assert_eq!(store::encode(&same).expect("encode"), legacy, "plus empty policies and audit");
        let state = decode_stored(&stored(store::encode(&before_moderation).expect("encode"))).expect("loads");
        assert_eq!(state.catalog.replicas_in_sync[&4], 2, "in-sync replicas of the format before moderation are kept");
        assert!(state.catalog.session_ended(6, 3_000));
        assert!(state.catalog.policies.is_empty() && state.catalog.audit.is_empty());

        let mut current = Catalog::default();
        current.read_marks.insert((3, 4), 9);
        current.policies.insert(8, crate::control::catalog::RoomPolicy::default());
        current.audit.insert(
            (8, 0),
            crate::control::catalog::AuditEntry {
                at_ms: 1,
                by: 1,
                user: 2,
                action: crate::control::catalog::ModAction::Ban,
            },
        );
        current.ended_sessions.insert((3, 1_000));
        current.replicas_in_sync.insert(8, 3);
        let state = decode_stored(&stored(store::encode(&current).expect("encode"))).expect("loads");
        assert_eq!(state.catalog.read_marks[&(3, 4)], 9);
        assert!(state.catalog.session_ended(3, 1_000), "the newest format is read whole");
        assert_eq!(state.catalog.replicas_in_sync[&8], 3);
        assert_eq!(state.catalog.audit.len(), 1, "policies and audit are read back");
        assert!(state.catalog.policies.contains_key(&8));

        let mut longer = store::encode(&current).expect("encode");
        longer.push(0);
        assert!(decode_stored(&stored(longer)).is_err(), "bytes no format uses are refused");
    }
}
