//! Catalog snapshots as files beside the control member's RocksDB (real RocksDB in temp
//! dirs): a reopened store serves and loads its snapshot file, a newer one replaces the
//! older, a leftover temporary file is removed, a data directory of an older version (its
//! snapshot kept inside RocksDB) still loads and has its snapshot moved to a file, and a
//! file durable before the rows were (a crash mid-install) wins over the rows.

use std::path::Path;

use districhat::control::catalog::{Catalog, Command};
use districhat::control::raft::state_machine::{read_state, StateMachineStore, CF_SM_META};
use districhat::control::raft::types::{Entry, LogId, SnapshotMeta, TypeConfig};
use districhat::control::raft::{open_storage, COLUMN_FAMILIES};
use districhat::store;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

/// Opens the store in `dir` (the log store is not needed here).
fn open(dir: &Path) -> StateMachineStore {
    let (_log, machine) = open_storage(dir, false, &Default::default()).expect("open the store");
    machine
}

/// Applies one `CreateUser` entry per name, from log index `first` on.
async fn add_users(machine: &mut StateMachineStore, first: u64, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let command = Command::CreateUser { username: (*name).into(), password_hash: "h".into(), at_ms: 1 };
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), first + i as u64);
        let entry = Entry { log_id, payload: EntryPayload::<TypeConfig>::Normal(command) };
        machine.apply([entry]).await.expect("apply");
    }
}

fn catalog(machine: &StateMachineStore) -> Catalog {
    read_state(&machine.state()).catalog.clone()
}

fn applied_index(machine: &StateMachineStore) -> Option<u64> {
    read_state(&machine.state()).applied.last_applied.map(|id| id.index)
}

/// The snapshot files (and temporary files) in `dir`, by name.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("catalog-snapshot-"))
        .collect();
    names.sort();
    names
}

async fn build(machine: &mut StateMachineStore) -> (SnapshotMeta, Vec<u8>) {
    let snapshot = machine.get_snapshot_builder().await.build_snapshot().await.expect("build a snapshot");
    (snapshot.meta, snapshot.snapshot.into_inner())
}

#[tokio::test]
async fn a_reopened_store_serves_its_snapshot_file_and_a_newer_one_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut machine = open(dir.path());
    add_users(&mut machine, 1, &["alice", "bob", "carol"]).await;
    let (first, _) = build(&mut machine).await;
    assert_eq!(first.last_log_id.map(|id| id.index), Some(3));
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 1, "one snapshot file: {files:?}");
    assert!(files[0].ends_with(".snap"), "{files:?}");

    add_users(&mut machine, 4, &["dave"]).await;
    let (second, data) = build(&mut machine).await;
    assert_eq!(second.last_log_id.map(|id| id.index), Some(4));
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 1, "the older file is removed once the newer is durable: {files:?}");
    let expected = catalog(&machine);
    drop(machine);

    let mut reopened = open(dir.path());
    assert_eq!(catalog(&reopened), expected, "loaded from the rows");
    let current = reopened.get_current_snapshot().await.expect("read").expect("a current snapshot");
    assert_eq!(current.meta, second, "the file's metadata");
    assert!(current.snapshot.into_inner() == data, "the file's data");
}

#[tokio::test]
async fn a_snapshot_file_newer_than_the_rows_is_loaded() {
    // Rows lost in a crash (they are not fsynced) or never written (a crash between the
    // file and the rows of an install): a data directory with the file and no rows.
    let built = tempfile::tempdir().expect("tempdir");
    let mut machine = open(built.path());
    add_users(&mut machine, 1, &["alice", "bob"]).await;
    build(&mut machine).await;
    let expected = catalog(&machine);
    drop(machine);

    let crashed = tempfile::tempdir().expect("tempdir");
    drop(open(crashed.path()));
    for name in snapshot_files(built.path()) {
        std::fs::copy(built.path().join(&name), crashed.path().join(&name)).expect("copy the file");
    }
    let machine = open(crashed.path());
    assert_eq!(applied_index(&machine), Some(2), "the snapshot's position");
    assert_eq!(catalog(&machine), expected, "the snapshot's catalog");
    drop(machine);
    let machine = open(crashed.path());
    assert_eq!(catalog(&machine), expected, "and its rows, written when it was loaded");
}

#[tokio::test]
async fn a_leftover_temporary_file_is_removed_and_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut machine = open(dir.path());
    add_users(&mut machine, 1, &["alice"]).await;
    let (meta, _) = build(&mut machine).await;
    drop(machine);
    // A write cut short by a crash: a partial file under a temporary name, with a higher
    // index than the real snapshot.
    let leftover = dir.path().join("catalog-snapshot-00000000000000000099-00000000000000ff.snap.tmp");
    std::fs::write(&leftover, b"DCSNAP01 and then nothing").expect("write the leftover");

    let mut machine = open(dir.path());
    assert!(!leftover.exists(), "the temporary file is removed at open");
    let current = machine.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(current.meta, meta, "the durable snapshot is still the current one");
    assert_eq!(snapshot_files(dir.path()).len(), 1);
    assert!(catalog(&machine).user_by_name("alice").is_some());
}

/// How versions before snapshot files kept a snapshot: `bincode((meta, data))` under
/// `snapshot` in the `sm_meta` column family.
#[derive(serde::Serialize)]
struct LegacySnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[tokio::test]
async fn an_older_data_directory_with_its_snapshot_in_rocksdb_still_loads() {
    let built = tempfile::tempdir().expect("tempdir");
    let mut machine = open(built.path());
    add_users(&mut machine, 1, &["alice", "bob", "carol"]).await;
    let (meta, data) = build(&mut machine).await;
    let expected = catalog(&machine);
    drop(machine);

    // An older version's data directory after a crash that lost the unsynced rows: its
    // snapshot in RocksDB, no rows, no snapshot file.
    let old = tempfile::tempdir().expect("tempdir");
    write_legacy_snapshot(old.path(), &LegacySnapshot { meta: meta.clone(), data: data.clone() });
    assert!(read_stored(old.path()).catalog == expected, "a backup of it reads the same catalog");

    let mut machine = open(old.path());
    assert_eq!(catalog(&machine), expected, "loaded from the snapshot in RocksDB");
    assert_eq!(applied_index(&machine), Some(3));
    assert_eq!(snapshot_files(old.path()).len(), 1, "the snapshot moved to a file");
    let current = machine.get_current_snapshot().await.expect("read").expect("a current snapshot");
    assert_eq!(current.meta, meta);
    assert!(current.snapshot.into_inner() == data);
    drop(machine);
    assert!(!legacy_key_present(old.path()), "and out of RocksDB");

    let machine = open(old.path());
    assert_eq!(catalog(&machine), expected, "a second start loads it the new way");
}

fn write_legacy_snapshot(dir: &Path, snapshot: &LegacySnapshot) {
    let db = store::open(dir, &COLUMN_FAMILIES, &Default::default()).expect("open rocksdb");
    let cf = store::cf(&db, CF_SM_META).expect("sm_meta");
    db.put_cf(cf, b"snapshot", store::encode(snapshot).expect("encode")).expect("put");
    db.flush_wal(true).expect("sync");
}

fn legacy_key_present(dir: &Path) -> bool {
    let db = store::open(dir, &COLUMN_FAMILIES, &Default::default()).expect("open rocksdb");
    let cf = store::cf(&db, CF_SM_META).expect("sm_meta");
    db.get_cf(cf, b"snapshot").expect("get").is_some()
}

fn read_stored(dir: &Path) -> districhat::control::raft::state_machine::CatalogState {
    let db = store::open(dir, &COLUMN_FAMILIES, &Default::default()).expect("open rocksdb");
    StateMachineStore::read_stored(db).expect("read the stored catalog")
}
