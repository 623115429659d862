//! The control plane's Raft: types, RocksDB storage (log and state machine) and the HTTP
//! network. [`open_storage`] is the one place the control member's database is opened.

pub mod catalog_lock;
pub mod checkpoint;
pub mod log_store;
pub mod network;
pub mod snapshot_file;
pub mod snapshot_rows;
pub mod state_machine;
pub mod types;

use std::path::Path;

use log_store::LogStore;
use state_machine::StateMachineStore;

use crate::store::{self, StoreError};

/// Every column family of a control member's database.
pub const COLUMN_FAMILIES: [&str; 12] = [
    log_store::CF_LOG,
    log_store::CF_STATE,
    state_machine::CF_USERS,
    state_machine::CF_ROOMS,
    state_machine::CF_MEMBERS,
    state_machine::CF_NODES,
    state_machine::CF_READ_MARKS,
    state_machine::CF_ENDED_SESSIONS,
    state_machine::CF_REPLICAS_IN_SYNC,
    state_machine::CF_ROOM_POLICIES,
    state_machine::CF_AUDIT,
    state_machine::CF_SM_META,
];

/// Opens (or creates) a member's database and loads its state machine.
pub fn open_storage(
    dir: &Path,
    fsync: bool,
    memory: &store::StoreMemory,
) -> Result<(LogStore, StateMachineStore), StorageOpenError> {
    let db = store::open(dir, &COLUMN_FAMILIES, memory)?;
    let machine = StateMachineStore::open(db.clone()).map_err(|e| StorageOpenError::Load(e.to_string()))?;
    Ok((LogStore::new(db, fsync), machine))
}

/// Why a member's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load the catalog: {0}")]
    Load(String),
}
