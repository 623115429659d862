//! RocksDB helpers shared by the control plane and (later) the chat nodes.
//!
//! Everything that opens a database goes through [`open`], so every store gets the same
//! options (column families created on demand, WAL on, bounded memory) and the same
//! encoding rules: values are bincode (serde, standard config), integer keys are
//! big-endian so that a key range is an ordered scan.

pub mod checkpoint;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBufferManager, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Errors of the storage layer. Callers wrap them into their own area's error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("encoding a value failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding a stored value failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("stored key has {0} bytes, expected 8")]
    BadKey(usize),
    #[error("a stored value used {used} of its {total} bytes (a different format)")]
    TrailingBytes { used: usize, total: usize },
    /// A grouped write was not made: another job of its group failed while staging.
    #[error("the write was abandoned with its group")]
    WriteAbandoned,
    /// A thread could not be started.
    #[error("starting a thread failed: {0}")]
    Thread(std::io::Error),
    /// The node's log writer dropped the write: it has stopped (the node is shutting
    /// down), or staging the write panicked.
    #[error("the log writer lost the write (it stopped, or staging the write panicked)")]
    WriterLost,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How much memory RocksDB may take for one database (`[storage]` in the control and
/// node configs): a block cache shared by its column families, and memtables (write
/// buffers) whose total is capped across them. Outside these, RocksDB keeps index and
/// filter blocks of open files and its own small structures.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreMemory {
    /// The LRU cache of uncompressed blocks read from disk, in MiB.
    pub block_cache_mb: usize,
    /// All memtables together, in MiB; past it RocksDB flushes the largest.
    pub write_buffer_mb: usize,
}

impl Default for StoreMemory {
    fn default() -> Self {
        Self { block_cache_mb: 32, write_buffer_mb: 32 }
    }
}

/// Opens (creating if needed) the database at `path` with the given column families and
/// memory bounds.
pub fn open(path: &Path, column_families: &[&'static str], memory: &StoreMemory) -> Result<Arc<DB>> {
    let cache = Cache::new_lru_cache(memory.block_cache_mb.max(1) << 20);
    let write_buffers = memory.write_buffer_mb.max(1) << 20;
    // Each column family may hold one active and one immutable memtable of this size.
    let per_family = (write_buffers / (2 * column_families.len().max(1))).max(1 << 20);
    let bounded = || {
        let mut options = Options::default();
        options.set_write_buffer_size(per_family);
        options.set_max_write_buffer_number(2);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        options.set_block_based_table_factory(&table);
        options
    };
    let mut options = bounded();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_max_background_jobs(2);
    options.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(write_buffers, false));
    let descriptors = column_families.iter().map(|name| ColumnFamilyDescriptor::new(*name, bounded()));
    let db = DB::open_cf_descriptors(&options, path, descriptors)?;
    Ok(Arc::new(db))
}

/// Looks up a column family that [`open`] created.
pub fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or(StoreError::MissingColumnFamily(name))
}

/// Encodes a value with bincode (serde, standard configuration).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    Ok(bincode::serde::encode_to_vec(value, bincode::config::standard())?)
}

/// Appends a value's [`encode`] bytes to `out` (no allocation of its own).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
    Ok(())
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, _) = decode_bounded(bytes)?;
    Ok(value)
}

/// Like [`decode`], but the value must use every byte: telling apart formats that are
/// prefixes of each other (an older struct would otherwise decode from a newer one's
/// bytes, silently dropping its last fields).
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = decode_bounded(bytes)?;
    if used != bytes.len() {
        return Err(StoreError::TrailingBytes { used, total: bytes.len() });
    }
    Ok(value)
}

/// Decodes with a limit that follows the input's size. bincode reserves a string's or a
/// byte vector's declared length before it reads the bytes, so without a limit a
/// corrupt or hostile length (a few bytes saying "4 GB") made it allocate that much, or
/// abort the process when the allocation failed (found by the `snapshot` fuzz target;
/// docs/RELIABILITY.md, "Fuzzing"). The lengths it claims add up to at most the input's
/// size for every value [`encode`] writes, so a limit of four to sixteen times that size
/// (at least 256 KiB) refuses only lies. The limit is a type parameter, hence the steps.
fn decode_bounded<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize)> {
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    const GIB: usize = 1 << 30;
    let decoded = match bytes.len() {
        n if n <= 64 * KIB => decode_within::<T, { 256 * KIB }>(bytes),
        n if n <= 256 * KIB => decode_within::<T, { MIB }>(bytes),
        n if n <= MIB => decode_within::<T, { 4 * MIB }>(bytes),
        n if n <= 4 * MIB => decode_within::<T, { 16 * MIB }>(bytes),
        n if n <= 16 * MIB => decode_within::<T, { 64 * MIB }>(bytes),
        n if n <= 64 * MIB => decode_within::<T, { 256 * MIB }>(bytes),
        n if n <= 256 * MIB => decode_within::<T, { GIB }>(bytes),
        n if n <= GIB => decode_within::<T, { 4 * GIB }>(bytes),
        _ => decode_within::<T, { usize::MAX / 2 }>(bytes),
    };
    Ok(decoded?)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

/// A big-endian key, so that numeric order is byte order.
pub fn u64_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Two big-endian ids, for composite keys such as room ‖ user.
pub fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

/// Reads a key written by [`u64_key`].
pub fn key_u64(bytes: &[u8]) -> Result<u64> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| StoreError::BadKey(bytes.len()))?;
    Ok(u64::from_be_bytes(raw))
}

/// Reads a key written by [`pair_key`].
pub fn key_pair(bytes: &[u8]) -> Result<(u64, u64)> {
    if bytes.len() != 16 {
        return Err(StoreError::BadKey(bytes.len()));
    }
    Ok((key_u64(&bytes[..8])?, key_u64(&bytes[8..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(u64_key(2) < u64_key(256));
        assert!(pair_key(1, u64::MAX) < pair_key(2, 0));
        assert_eq!(key_pair(&pair_key(7, 9)).ok(), Some((7, 9)));
        assert!(key_u64(&[1, 2]).is_err());
    }

    #[test]
    fn a_database_keeps_to_its_memory_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let memory = StoreMemory { block_cache_mb: 4, write_buffer_mb: 4 };
        let db = open(dir.path(), &["a", "b"], &memory).unwrap();
        // 40 MiB written to one column family: its memtables stay within the bound
        // (one active and one immutable of 1 MiB each), the rest is flushed to disk.
        let cf = cf(&db, "a").unwrap();
        assert_eq!(db.property_int_value_cf(cf, "rocksdb.block-cache-capacity").unwrap(), Some(4 << 20));
        let value = vec![7u8; 4096];
        for i in 0..10_240u64 {
            db.put_cf(cf, u64_key(i), &value).unwrap();
        }
        let held = db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables").unwrap().unwrap();
        assert!(held <= 3 << 20, "memtables hold {held} bytes");
    }
}
