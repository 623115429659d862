//! openraft's storage conformance suite run against our RocksDB log and state machine.

use districhat::control::raft::log_store::LogStore;
use districhat::control::raft::open_storage;
use districhat::control::raft::state_machine::StateMachineStore;
use districhat::control::raft::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, machine) = open_storage(dir.path(), true, &Default::default()).map_err(|e| {
            let e = std::io::Error::other(e.to_string());
            StorageIOError::write(AnyError::new(&e))
        })?;
        Ok((dir, log, machine))
    }
}

#[test]
fn rocksdb_store_passes_the_openraft_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("storage conformance failed: {e}");
    }
}
