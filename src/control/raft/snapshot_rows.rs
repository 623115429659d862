//! A catalog snapshot encoded straight from the catalog's rows, read at one RocksDB
//! snapshot (a consistent view), so building it takes no catalog lock.
//!
//! Encoding the in-memory catalog held its read lock for 0.8-2.3 s at a million users,
//! and `apply` (which takes the write lock) waited that long: no commit in the meantime
//! (docs/BENCHMARKS.md, "The control plane at scale"). The rows hold the same catalog:
//! every `apply` writes the rows it touched together with the applied log id in one
//! atomic batch, so a RocksDB snapshot sees rows and position that match.
//!
//! The bytes are those of `store::encode(&Catalog)`, which the test below checks against
//! a catalog with every table filled: bincode writes a struct as its fields in order, a map
//! or set as a varint length and then its entries in key order. RocksDB returns keys in
//! that order (big-endian ids), and a row's value is `store::encode` of the map's value
//! (`persist_rows` writes nothing else), so values are copied as they are.

use rocksdb::{IteratorMode, ReadOptions, DB};

use super::state_machine::{
    AppliedState, CF_AUDIT, CF_ENDED_SESSIONS, CF_MEMBERS, CF_NODES, CF_READ_MARKS, CF_REPLICAS_IN_SYNC, CF_ROOMS,
    CF_ROOM_POLICIES, CF_SM_META, CF_USERS, KEY_APPLIED, KEY_CATALOG_META,
};
use crate::control::catalog::CatalogMeta;
use crate::store::{self, StoreError};

/// A catalog encoded from its rows, and the log position those rows reflect.
pub struct EncodedCatalog {
    pub applied: AppliedState,
    /// `store::encode(&catalog)`: a snapshot's data.
    pub data: Vec<u8>,
}

/// How a table's rows map to a field of `Catalog`.
enum Row {
    /// `BTreeMap<u64, V>`: key `u64_key(id)`, value the encoded `V`.
    IdToValue,
    /// `BTreeMap<(u64, u64), V>`: key `pair_key(a, b)`, value the encoded `V`.
    PairToValue,
    /// `BTreeSet<(u64, u64)>`: key `pair_key(a, b)`, empty value.
    Pair,
}

/// The tables in the order of `Catalog`'s fields (after `meta`).
const FIELDS: [(&str, Row); 9] = [
    (CF_USERS, Row::IdToValue),
    (CF_ROOMS, Row::IdToValue),
    (CF_MEMBERS, Row::Pair),
    (CF_NODES, Row::IdToValue),
    (CF_READ_MARKS, Row::PairToValue),
    (CF_ENDED_SESSIONS, Row::Pair),
    (CF_REPLICAS_IN_SYNC, Row::IdToValue),
    (CF_ROOM_POLICIES, Row::IdToValue),
    (CF_AUDIT, Row::PairToValue),
];

/// Encodes the catalog held in `db`'s rows. Blocks on disk and takes seconds for a large
/// catalog: run it off the async runtime.
pub fn encode_from_rows(db: &DB) -> Result<EncodedCatalog, StoreError> {
    let view = db.snapshot();
    let meta_cf = store::cf(db, CF_SM_META)?;
    let applied = match view.get_cf(meta_cf, KEY_APPLIED)? {
        Some(bytes) => store::decode(&bytes)?,
        None => AppliedState::default(),
    };
    let mut data = Vec::new();
    match view.get_cf(meta_cf, KEY_CATALOG_META)? {
        Some(bytes) => data.extend_from_slice(&bytes),
        None => store::encode_into(&CatalogMeta::default(), &mut data)?,
    }
    for (table, row) in FIELDS {
        let cf = store::cf(db, table)?;
        // A scan of every row: keep it out of the block cache the rest of the member reads.
        let mut options = ReadOptions::default();
        options.fill_cache(false);
        let start = data.len();
        let mut count: u64 = 0;
        for item in view.iterator_cf_opt(cf, options, IteratorMode::Start) {
            let (key, value) = item?;
            match row {
                Row::IdToValue => store::encode_into(&store::key_u64(&key)?, &mut data)?,
                Row::PairToValue | Row::Pair => store::encode_into(&store::key_pair(&key)?, &mut data)?,
            }
            if !matches!(row, Row::Pair) {
                data.extend_from_slice(&value);
            }
            count += 1;
        }
        // The length comes first: put it in front of the entries just written.
        let length = store::encode(&count)?;
        data.splice(start..start, length);
    }
    Ok(EncodedCatalog { applied, data })
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::StateMachineStore;
    use super::*;
    use crate::control::catalog::{AuditEntry, Catalog, ChatNode, ModAction, NodeStatus, Room, RoomPolicy, User};

    /// A catalog with every table filled, with ids small and large (varints of each size).
    fn full_catalog() -> Catalog {
        let mut catalog = Catalog::default();
        for id in [1, 250, 70_000, 1 << 40] {
            let (username, password_hash) = (format!("user-{id}"), "hash".to_string());
            catalog.users.insert(id, User { id, username, password_hash, created_at_ms: id });
        }
        catalog.nodes.insert(
            3,
            ChatNode {
                id: 3,
                name: "n3".into(),
                ws_url: "ws://n3".into(),
                mesh_addr: "n3:1".into(),
                status: NodeStatus::Up,
                registered_at_ms: 5,
            },
        );
        for id in [2, 300] {
            let room = Room {
                id,
                name: format!("room-{id}"),
                private: id == 2,
                created_by: 1,
                created_at_ms: 9,
                owner: Some(3),
                replica: None,
                epoch: 4,
            };
            catalog.rooms.insert(id, room);
        }
        catalog.members.extend([(2, 1), (300, 70_000), (300, u64::MAX)]);
        catalog.read_marks.insert((1, 300), 7);
        catalog.ended_sessions.insert((1, 1_000));
        catalog.replicas_in_sync.insert(300, 2);
        catalog.policies.insert(300, RoomPolicy::default());
        catalog.audit.insert((300, 0), AuditEntry { at_ms: 1, by: 1, user: 250, action: ModAction::Ban });
        catalog.meta.next_user_id = 1 << 40;
        catalog.meta.signing_key = Some(vec![9; 32]);
        catalog.rebuild_indexes();
        catalog
    }

    #[test]
    fn rows_encode_to_the_same_bytes_as_the_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = store::open(dir.path(), &super::super::COLUMN_FAMILIES, &Default::default()).expect("open");
        let mut machine = StateMachineStore::open(db.clone()).expect("load");
        let empty = encode_from_rows(&db).expect("encode");
        assert_eq!(empty.data, store::encode(&Catalog::default()).expect("encode"), "an empty catalog");

        let catalog = full_catalog();
        let data = store::encode(&catalog).expect("encode");
        machine.install_rows(&Default::default(), &data).expect("write the rows");
        let encoded = encode_from_rows(&db).expect("encode");
        assert!(encoded.data == data, "every table, ids of every varint size: the catalog's own bytes");
    }
}
