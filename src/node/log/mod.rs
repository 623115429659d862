//! A node's durable room logs in RocksDB.
//!
//! Column families: `messages` (room ‖ seq, big-endian → bincode [`StoredMessage`], so a
//! range scan is history), `dedupe` (room ‖ sender ‖ client_id → seq, written with the
//! message so a replica has it too) and `fences` (room → newest epoch seen ‖ highest seq
//! stored at that epoch as a replica, so a stale owner is refused and a late `Adopt` of
//! the same epoch drops nothing stored since: docs/REPLICATION.md, I8) and `missing`
//! (room → first ‖ last seq a replica still lacks while its owner copies the older log in
//! the background: docs/REPLICATION.md, "Background copy", I9), and the indexes of message
//! events (`relations`, `mentions`, `redactions`: [`events`]). All calls block: async
//! callers use `spawn_blocking`, except [`RoomLog::write_grouped`], which hands the hot
//! path's writes to the log's writer thread ([`group`]).
//!
//! Writes that depend on a room's fence (a replica storing, an owner appending, a new
//! owner or replica taking an epoch) go through the `*_at` methods, which
//! check the fence and write under one lock per room stripe, or their `stage_*_at`
//! forms, which the log writer runs under the same lock ([`group`]). Without it a write of the
//! old epoch could pass its fence check, then land after the new owner read the last
//! seq, and the new owner would reuse that seq.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

pub mod events;
mod group;

use events::{decode_entry, CF_MENTIONS, CF_REDACTIONS, CF_RELATIONS};

pub use group::Staged;

use crate::protocol::{MessageStamp, RoomId, Seq, StoredMessage, UserId};
use crate::store::checkpoint::{CheckpointError, CheckpointFiles};
use crate::store::{self, StoreError, StoreMemory};

const CF_MESSAGES: &str = "messages";
const CF_DEDUPE: &str = "dedupe";
const CF_FENCES: &str = "fences";
const CF_MISSING: &str = "missing";
/// Rooms share this many fence locks (room id modulo), so rooms rarely wait on each other.
const FENCE_STRIPES: usize = 64;

/// The room logs of one node. Cheap to clone.
#[derive(Clone)]
pub struct RoomLog {
    db: Arc<DB>,
    fsync: bool,
    /// Serialise fence checks with the writes they guard (see the module docs). `std`
    /// mutexes: held only inside blocking calls, never across an `.await`.
    fence_locks: Arc<Vec<Mutex<()>>>,
    /// The thread of [`Self::write_grouped`]; `None` in the thread's own copy.
    writer: Option<Arc<group::Writer>>,
}

/// What a replica did with an owner's messages that passed the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    Stored,
    /// Nothing was written: this log does not hold the entry the messages follow.
    Gap,
}

/// Seqs `first..=last` a replica lacks below its last entry (docs/REPLICATION.md,
/// "Background copy").
pub type Missing = Option<(Seq, Seq)>;

/// The outcome of a write guarded by a room's fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced<T> {
    Done(T),
    /// Nothing was written: the room's fence is at a newer epoch than the writer's.
    Stale {
        fence: u64,
    },
}

impl RoomLog {
    pub fn open(dir: &Path, fsync: bool, memory: &StoreMemory) -> Result<Self, StoreError> {
        let fence_locks = Arc::new((0..FENCE_STRIPES).map(|_| Mutex::new(())).collect());
        let db = store::open(
            dir,
            &[CF_MESSAGES, CF_DEDUPE, CF_FENCES, CF_MISSING, CF_RELATIONS, CF_MENTIONS, CF_REDACTIONS],
            memory,
        )?;
        let mut log = Self { db, fsync, fence_locks, writer: None };
        log.writer = Some(Arc::new(group::Writer::start(log.clone()).map_err(StoreError::Thread)?));
        Ok(log)
    }

    /// Appends for a writer at `epoch` (an owner, or an owner's replication): refused if
    /// the fence is newer; raises the fence to `epoch` first if it is older.
    pub fn append_at(&self, room: RoomId, epoch: u64, messages: &[StoredMessage]) -> Result<Fenced<()>, StoreError> {
        self.write_alone(room, |staged| self.stage_append_at(staged, epoch, messages))
    }

    /// [`Self::append_at`] staged in a grouped write ([`Self::write_grouped`]).
    pub fn stage_append_at(
        &self,
        staged: &mut Staged<'_>,
        epoch: u64,
        messages: &[StoredMessage],
    ) -> Result<Fenced<()>, StoreError> {
        let outcome = (|| {
            if let Some(fence) = self.pass_fence(staged.room, epoch, true)? {
                return Ok(Fenced::Stale { fence });
            }
            self.stage_append(staged.batch, staged.room, messages, None)?;
            Ok(Fenced::Done(()))
        })();
        staged.check(outcome)
    }

    /// A replica stores an owner's messages at `epoch` if they follow `prev` (the entry
    /// before them, `None` when they start at seq 1) in this log exactly: refused with
    /// [`Replicated::Gap`] otherwise, so a replica's log never has a hole and never grows
    /// on a prefix that differs from its owner's (docs/REPLICATION.md, log matching).
    pub fn replicate_at(
        &self,
        room: RoomId,
        epoch: u64,
        prev: Option<&MessageStamp>,
        messages: &[StoredMessage],
    ) -> Result<Fenced<Replicated>, StoreError> {
        self.write_alone(room, |staged| self.stage_replicate_at(staged, epoch, prev, messages))
    }

    /// [`Self::replicate_at`] staged in a grouped write ([`Self::write_grouped`]).
    pub fn stage_replicate_at(
        &self,
        staged: &mut Staged<'_>,
        epoch: u64,
        prev: Option<&MessageStamp>,
        messages: &[StoredMessage],
    ) -> Result<Fenced<Replicated>, StoreError> {
        let outcome = (|| {
            let room = staged.room;
            if let Some(fence) = self.pass_fence(room, epoch, true)? {
                return Ok(Fenced::Stale { fence });
            }
            let follows = match prev {
                None => messages.first().is_none_or(|first| first.seq == 1),
                Some(prev) => {
                    messages.first().is_none_or(|first| first.seq == prev.seq + 1)
                        && self.stamp_at(room, prev.seq)?.as_ref() == Some(prev)
                }
            };
            if !follows {
                return Ok(Fenced::Done(Replicated::Gap));
            }
            // The highest seq stored at this epoch goes in the same durable write as the
            // messages, so it is on disk before the owner hears `Stored`.
            self.stage_append(staged.batch, room, messages, Some(epoch))?;
            Ok(Fenced::Done(Replicated::Stored))
        })();
        staged.check(outcome)
    }

    /// A replica that adopted `epoch` and whose log ends at `after` stores `message` (its
    /// owner's last entry, past `after + 1`) and records everything between as missing,
    /// joined to a missing range it already had, in one durable write. Refused with
    /// [`Replicated::Gap`] (nothing written) if the fence is not `epoch` yet or the log
    /// no longer ends at `after`. Returns the missing range.
    pub fn seed_at(
        &self,
        room: RoomId,
        epoch: u64,
        after: Seq,
        message: &StoredMessage,
    ) -> Result<Fenced<Result<Missing, Replicated>>, StoreError> {
        let _guard = self.fence_lock(room);
        let fence = self.fence(room)?;
        if epoch < fence {
            return Ok(Fenced::Stale { fence });
        }
        if epoch > fence || self.last_seq(room)? != after || message.seq <= after + 1 {
            return Ok(Fenced::Done(Err(Replicated::Gap)));
        }
        let first = self.missing(room)?.map_or(after + 1, |(first, _)| first);
        let missing = Some((first, message.seq - 1));
        let mut batch = WriteBatch::default();
        self.stage_append(&mut batch, room, std::slice::from_ref(message), Some(epoch))?;
        self.put_missing(&mut batch, room, missing)?;
        self.write(batch, self.fsync)?;
        Ok(Fenced::Done(Ok(missing)))
    }

    /// A replica at `epoch` stores older entries of its owner's log into its missing range
    /// if they start exactly at the range's first seq, follow each other and end inside
    /// it, and shrinks the range in the same durable write. Otherwise nothing is written.
    /// Returns what is still missing.
    pub fn backfill_at(
        &self,
        room: RoomId,
        epoch: u64,
        messages: &[StoredMessage],
    ) -> Result<Fenced<Missing>, StoreError> {
        let _guard = self.fence_lock(room);
        let fence = self.fence(room)?;
        if epoch < fence {
            return Ok(Fenced::Stale { fence });
        }
        let missing = self.missing(room)?;
        let (Some((first, last)), Some(end)) = (missing, messages.last().map(|m| m.seq)) else {
            return Ok(Fenced::Done(missing));
        };
        let fits = epoch == fence && messages.iter().enumerate().all(|(i, m)| m.seq == first + i as Seq) && end <= last;
        if !fits {
            return Ok(Fenced::Done(missing));
        }
        let rest = (end < last).then_some((end + 1, last));
        let mut batch = WriteBatch::default();
        self.stage_append(&mut batch, room, messages, None)?;
        self.put_missing(&mut batch, room, rest)?;
        self.write(batch, self.fsync)?;
        Ok(Fenced::Done(rest))
    }

    /// The seqs this replica still lacks below its last entry, if any.
    pub fn missing(&self, room: RoomId) -> Result<Missing, StoreError> {
        let cf = store::cf(&self.db, CF_MISSING)?;
        match self.db.get_cf(cf, store::u64_key(room))? {
            Some(bytes) => Ok(Some(store::key_pair(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_missing(&self, batch: &mut WriteBatch, room: RoomId, missing: Missing) -> Result<(), StoreError> {
        let cf = store::cf(&self.db, CF_MISSING)?;
        match missing {
            Some((first, last)) => batch.put_cf(cf, store::u64_key(room), store::pair_key(first, last)),
            None => batch.delete_cf(cf, store::u64_key(room)),
        }
        Ok(())
    }

    /// Takes the room at `epoch` (a new owner, or a replica adopting a new owner): raises
    /// the fence, drops entries past `truncate_past` if given — never one this node stored
    /// as a replica at `epoch` itself (a late `Adopt` of the current owner must not undo
    /// what it replicated since) — and returns the last seq.
    pub fn take_epoch(
        &self,
        room: RoomId,
        epoch: u64,
        truncate_past: Option<Seq>,
    ) -> Result<Fenced<(Seq, usize)>, StoreError> {
        let _guard = self.fence_lock(room);
        if let Some(fence) = self.pass_fence(room, epoch, true)? {
            return Ok(Fenced::Stale { fence });
        }
        let dropped = match truncate_past {
            Some(base) => {
                let (fence, stored) = self.fence_record(room)?;
                let base = if fence == epoch { base.max(stored) } else { base };
                match self.missing(room)? {
                    // Cutting into or below a missing range leaves nothing above it worth
                    // keeping: the log becomes the plain prefix below the range.
                    Some((first, last)) if base <= last => self.truncate_after(room, base.min(first - 1), true)?,
                    _ => self.truncate_after(room, base, false)?,
                }
            }
            None => 0,
        };
        Ok(Fenced::Done((self.last_seq(room)?, dropped)))
    }

    /// The fence check of a writer at `epoch`, under the room's fence lock: `Some(fence)`
    /// when a newer epoch holds the room; else `None`, after raising the fence to `epoch`
    /// if `raise` and it was older.
    fn pass_fence(&self, room: RoomId, epoch: u64, raise: bool) -> Result<Option<u64>, StoreError> {
        let fence = self.fence(room)?;
        if epoch < fence {
            return Ok(Some(fence));
        }
        if raise && epoch > fence {
            self.set_fence(room, epoch)?;
        }
        Ok(None)
    }

    fn fence_lock(&self, room: RoomId) -> MutexGuard<'_, ()> {
        let lock = &self.fence_locks[Self::stripe(room)];
        // The guarded data lives in RocksDB, so a poisoned lock protects nothing broken.
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stripe(room: RoomId) -> usize {
        (room % FENCE_STRIPES as u64) as usize
    }

    /// Writes a consistent copy of every room log into `target` (a backup; see
    /// [`store::checkpoint`]).
    pub fn checkpoint(&self, target: &Path) -> Result<CheckpointFiles, CheckpointError> {
        store::checkpoint::create(&self.db, target)
    }

    /// Adds to `batch` the writes that append messages and their dedupe keys. A message that replaces a different one at the same
    /// seq (a replica receiving a batch its owner rolled back and sequenced anew, or an
    /// older entry copied over a stale one) also drops the replaced one's dedupe key, so a
    /// retry of the replaced message is not answered with a seq that now holds another
    /// message.
    /// `replica_epoch`: written by a replica at that (current) epoch, which records the
    /// highest seq stored at it with the fence.
    fn stage_append(
        &self,
        batch: &mut WriteBatch,
        room: RoomId,
        messages: &[StoredMessage],
        replica_epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let messages_cf = store::cf(&self.db, CF_MESSAGES)?;
        let dedupe_cf = store::cf(&self.db, CF_DEDUPE)?;
        let keys = messages.iter().map(|message| (messages_cf, store::pair_key(room, message.seq)));
        for (message, replaced) in messages.iter().zip(self.db.multi_get_cf(keys)) {
            let Some(bytes) = replaced? else { continue };
            let replaced = decode_entry(&bytes)?;
            if stamp(&replaced) != stamp(message) {
                self.forget_dedupe(batch, room, &replaced)?;
            }
            // Its index keys go either way: the same entry adds them again below.
            self.unindex(batch, room, &replaced)?;
        }
        for message in messages {
            self.index(batch, room, message)?;
            batch.put_cf(messages_cf, store::pair_key(room, message.seq), store::encode(message)?);
            batch.put_cf(dedupe_cf, dedupe_key(room, message.sender_id, &message.client_id), message.seq.to_be_bytes());
        }
        if let (Some(epoch), Some(last)) = (replica_epoch, messages.last().map(|m| m.seq)) {
            let (_, stored) = self.fence_record(room)?;
            if last > stored {
                batch.put_cf(store::cf(&self.db, CF_FENCES)?, store::u64_key(room), store::pair_key(epoch, last));
            }
        }
        Ok(())
    }

    /// A `stage_*_at` write made alone (not grouped): staged under the room's fence lock,
    /// then written (fsynced if configured) if it staged anything.
    fn write_alone<T>(
        &self,
        room: RoomId,
        stage: impl FnOnce(&mut Staged<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _guard = self.fence_lock(room);
        let mut batch = WriteBatch::default();
        let staged = stage(&mut Staged::new(room, &mut batch))?;
        if !batch.is_empty() {
            self.write(batch, self.fsync)?;
        }
        Ok(staged)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// The seq already given to (room, sender, client_id), if any.
    pub fn dedupe(&self, room: RoomId, sender: UserId, client_id: &str) -> Result<Option<Seq>, StoreError> {
        let cf = store::cf(&self.db, CF_DEDUPE)?;
        match self.db.get_cf(cf, dedupe_key(room, sender, client_id))? {
            Some(bytes) => Ok(Some(store::key_u64(&bytes)?)),
            None => Ok(None),
        }
    }

    /// [`Self::dedupe`] for many keys in one read (an owner's whole batch).
    pub fn dedupe_many(&self, room: RoomId, keys: &[(UserId, String)]) -> Result<Vec<Option<Seq>>, StoreError> {
        let cf = store::cf(&self.db, CF_DEDUPE)?;
        let keys = keys.iter().map(|(sender, client_id)| (cf, dedupe_key(room, *sender, client_id)));
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|found| match found? {
                Some(bytes) => Ok(Some(store::key_u64(&bytes)?)),
                None => Ok(None),
            })
            .collect()
    }

    /// The stamp of the message at `seq`, if this log holds one.
    pub fn stamp_at(&self, room: RoomId, seq: Seq) -> Result<Option<MessageStamp>, StoreError> {
        let cf = store::cf(&self.db, CF_MESSAGES)?;
        match self.db.get_cf(cf, store::pair_key(room, seq))? {
            Some(bytes) => Ok(Some(stamp(&decode_entry(&bytes)?))),
            None => Ok(None),
        }
    }

    /// The stamps of the messages at `seqs` (`None` where this log holds none), in order.
    pub fn stamps_at(&self, room: RoomId, seqs: &[Seq]) -> Result<Vec<Option<MessageStamp>>, StoreError> {
        let cf = store::cf(&self.db, CF_MESSAGES)?;
        let keys = seqs.iter().map(|seq| (cf, store::pair_key(room, *seq)));
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|found| match found? {
                Some(bytes) => Ok(Some(stamp(&decode_entry(&bytes)?))),
                None => Ok(None),
            })
            .collect()
    }

    /// The highest seq stored for the room (0 when empty).
    pub fn last_seq(&self, room: RoomId) -> Result<Seq, StoreError> {
        let cf = store::cf(&self.db, CF_MESSAGES)?;
        let upper = store::pair_key(room, u64::MAX);
        let mut iter = self.db.iterator_cf(cf, IteratorMode::From(&upper, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                let (key_room, seq) = store::key_pair(&key)?;
                Ok(if key_room == room { seq } else { 0 })
            }
            None => Ok(0),
        }
    }

    /// Up to `limit` messages with seq > `after`, ascending.
    pub fn after(&self, room: RoomId, after: Seq, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let cf = store::cf(&self.db, CF_MESSAGES)?;
        let start = store::pair_key(room, after.saturating_add(1));
        let mut messages = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            if store::key_pair(&key)?.0 != room || messages.len() >= limit {
                break;
            }
            messages.push(decode_entry(&value)?);
        }
        Ok(messages)
    }

    /// Up to `limit` messages with seq < `before`, newest first.
    pub fn before(&self, room: RoomId, before: Seq, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        if before == 0 {
            return Ok(Vec::new());
        }
        let cf = store::cf(&self.db, CF_MESSAGES)?;
        let start = store::pair_key(room, before - 1);
        let mut messages = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Reverse)) {
            let (key, value) = item?;
            if store::key_pair(&key)?.0 != room || messages.len() >= limit {
                break;
            }
            messages.push(decode_entry(&value)?);
        }
        Ok(messages)
    }

    /// Deletes every message of the room with seq > `base` (and their dedupe keys), and
    /// the missing range with them if `clear_missing`.
    fn truncate_after(&self, room: RoomId, base: Seq, clear_missing: bool) -> Result<usize, StoreError> {
        let doomed = self.after(room, base, usize::MAX)?;
        if doomed.is_empty() && !clear_missing {
            return Ok(0);
        }
        let messages_cf = store::cf(&self.db, CF_MESSAGES)?;
        let mut batch = WriteBatch::default();
        for message in &doomed {
            batch.delete_cf(messages_cf, store::pair_key(room, message.seq));
            self.forget_dedupe(&mut batch, room, message)?;
            self.unindex(&mut batch, room, message)?;
        }
        if clear_missing {
            self.put_missing(&mut batch, room, None)?;
        }
        self.write(batch, true)?;
        Ok(doomed.len())
    }

    /// Adds to `batch` the removal of `message`'s dedupe key, if it still points at
    /// `message` (the same client_id may since have been stored at another seq).
    fn forget_dedupe(&self, batch: &mut WriteBatch, room: RoomId, message: &StoredMessage) -> Result<(), StoreError> {
        if self.dedupe(room, message.sender_id, &message.client_id)? == Some(message.seq) {
            let dedupe_cf = store::cf(&self.db, CF_DEDUPE)?;
            batch.delete_cf(dedupe_cf, dedupe_key(room, message.sender_id, &message.client_id));
        }
        Ok(())
    }

    /// The stamps of the room's last `limit` messages, ascending: what a replica shows a
    /// new owner so it can find entries that differ from its own log.
    pub fn tail_stamps(&self, room: RoomId, limit: usize) -> Result<Vec<MessageStamp>, StoreError> {
        let mut stamps: Vec<MessageStamp> = self.before(room, u64::MAX, limit)?.iter().map(stamp).collect();
        stamps.reverse();
        Ok(stamps)
    }

    /// The newest epoch this node has accepted for the room (0: none).
    pub fn fence(&self, room: RoomId) -> Result<u64, StoreError> {
        Ok(self.fence_record(room)?.0)
    }

    /// (newest epoch accepted, highest seq stored at it as a replica). A record of the
    /// older format holds the epoch alone.
    fn fence_record(&self, room: RoomId) -> Result<(u64, Seq), StoreError> {
        let cf = store::cf(&self.db, CF_FENCES)?;
        match self.db.get_cf(cf, store::u64_key(room))? {
            Some(bytes) if bytes.len() == 8 => Ok((store::key_u64(&bytes)?, 0)),
            Some(bytes) => store::key_pair(&bytes),
            None => Ok((0, 0)),
        }
    }

    /// Raises the room's fence to `epoch` (durably); nothing is stored at it yet.
    fn set_fence(&self, room: RoomId, epoch: u64) -> Result<(), StoreError> {
        self.write_fence(room, epoch, 0)
    }

    fn write_fence(&self, room: RoomId, epoch: u64, stored: Seq) -> Result<(), StoreError> {
        let cf = store::cf(&self.db, CF_FENCES)?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.put_cf_opt(cf, store::u64_key(room), store::pair_key(epoch, stored), &options)?;
        Ok(())
    }
}

/// What identifies a stored message (see [`MessageStamp`]).
pub fn stamp(message: &StoredMessage) -> MessageStamp {
    MessageStamp {
        seq: message.seq,
        sender_id: message.sender_id,
        client_id: message.client_id.clone(),
        ts: message.ts,
    }
}

/// room ‖ sender ‖ client_id.
fn dedupe_key(room: RoomId, sender: UserId, client_id: &str) -> Vec<u8> {
    let mut key = store::pair_key(room, sender).to_vec();
    key.extend_from_slice(client_id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends messages to `log` in one direct write (`replica_epoch`: see
    /// [`RoomLog::stage_append`]).
    pub(super) fn append(
        log: &RoomLog,
        room: RoomId,
        messages: &[StoredMessage],
        replica_epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        log.stage_append(&mut batch, room, messages, replica_epoch)?;
        log.write(batch, log.fsync)
    }

    pub(super) fn message(seq: Seq) -> StoredMessage {
        StoredMessage {
            seq,
            sender_id: 1,
            sender: "a".into(),
            text: format!("m{seq}"),
            ts: 0,
            client_id: format!("c{seq}"),
            kind: crate::protocol::EntryKind::message(),
        }
    }

    #[test]
    fn log_scans_ranges_per_room_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        append(&log, 1, &(1..=5).map(message).collect::<Vec<_>>(), None).unwrap();
        append(&log, 2, &[message(1)], None).unwrap();
        assert_eq!(log.last_seq(1).unwrap(), 5);
        assert_eq!(log.last_seq(3).unwrap(), 0);
        let seqs = |m: Vec<StoredMessage>| m.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.after(1, 2, 10).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(log.before(1, 4, 2).unwrap()), vec![3, 2]);
        assert_eq!(log.dedupe(1, 1, "c3").unwrap(), Some(3));
        assert_eq!(log.truncate_after(1, 3, false).unwrap(), 2);
        assert_eq!(log.last_seq(1).unwrap(), 3);
        assert_eq!(log.dedupe(1, 1, "c4").unwrap(), None);
        assert_eq!(log.last_seq(2).unwrap(), 1);
        log.set_fence(1, 4).unwrap();
        assert_eq!(log.fence(1).unwrap(), 4);
    }

    #[test]
    fn tail_stamps_are_the_last_messages_ascending() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        assert!(log.tail_stamps(1, 3).unwrap().is_empty());
        append(&log, 1, &(1..=5).map(message).collect::<Vec<_>>(), None).unwrap();
        append(&log, 2, &[message(9)], None).unwrap();
        assert_eq!(log.stamps_at(1, &[2, 7]).unwrap(), vec![Some(stamp(&message(2))), None]);
        let stamps = log.tail_stamps(1, 3).unwrap();
        assert_eq!(stamps.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(stamps[0], stamp(&message(3)));
    }

    #[test]
    fn dedupe_keys_follow_the_message_that_holds_the_seq() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        append(&log, 1, &[message(1), message(2)], None).unwrap();
        // A replica gets seq 2 again with another message (its owner rolled back and
        // sequenced anew): the replaced message's dedupe key goes.
        let other = StoredMessage { client_id: "other".into(), ..message(2) };
        append(&log, 1, std::slice::from_ref(&other), None).unwrap();
        assert_eq!(log.dedupe(1, 1, "c2").unwrap(), None);
        assert_eq!(log.dedupe(1, 1, "other").unwrap(), Some(2));
        // The same message again changes nothing.
        append(&log, 1, &[other], None).unwrap();
        assert_eq!(log.dedupe(1, 1, "other").unwrap(), Some(2));
        let retried = StoredMessage { client_id: "c1".into(), ..message(3) };
        append(&log, 1, &[retried], None).unwrap();
        assert_eq!(log.truncate_after(1, 0, false).unwrap(), 3);
        assert_eq!(log.dedupe(1, 1, "c1").unwrap(), None, "all three went");
        // A client_id stored again at another seq keeps that key when the old seq goes.
        append(&log, 1, &[StoredMessage { client_id: "c1".into(), ..message(2) }], None).unwrap();
        append(&log, 1, &[message(1)], None).unwrap();
        assert_eq!(log.truncate_after(1, 1, false).unwrap(), 1);
        assert_eq!(log.dedupe(1, 1, "c1").unwrap(), Some(1), "seq 1 still holds c1");
    }

    #[test]
    fn fenced_writes_refuse_older_epochs_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        assert_eq!(log.append_at(1, 2, &[message(1), message(2)]).unwrap(), Fenced::Done(()));
        assert_eq!(log.fence(1).unwrap(), 2, "a newer writer raises the fence");
        assert_eq!(log.take_epoch(1, 3, None).unwrap(), Fenced::Done((2, 0)));
        assert_eq!(log.append_at(1, 2, &[message(3)]).unwrap(), Fenced::Stale { fence: 3 });
        assert_eq!(log.take_epoch(1, 2, Some(0)).unwrap(), Fenced::Stale { fence: 3 });
        assert_eq!(log.last_seq(1).unwrap(), 2, "stale writers changed nothing");
        assert_eq!(log.take_epoch(1, 4, Some(1)).unwrap(), Fenced::Done((1, 1)), "adopting truncates");
    }

    #[test]
    fn a_replica_stores_only_what_follows_its_log_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        let stored = Fenced::Done(Replicated::Stored);
        let gap = Fenced::Done(Replicated::Gap);
        assert_eq!(log.replicate_at(1, 1, None, &[message(2)]).unwrap(), gap, "seq 1 has no predecessor");
        assert_eq!(log.replicate_at(1, 1, None, &[message(1), message(2)]).unwrap(), stored);
        let at_two = stamp(&message(2));
        assert_eq!(log.replicate_at(1, 1, Some(&at_two), &[message(4)]).unwrap(), gap, "a hole at 3");
        let other = MessageStamp { client_id: "rolled back".into(), ..at_two.clone() };
        assert_eq!(log.replicate_at(1, 1, Some(&other), &[message(3)]).unwrap(), gap, "differs at 2");
        assert_eq!(log.replicate_at(1, 1, Some(&at_two), &[message(3)]).unwrap(), stored);
        assert_eq!(log.last_seq(1).unwrap(), 3);
        assert_eq!(log.stamp_at(1, 3).unwrap(), Some(stamp(&message(3))));
        assert_eq!(log.stamp_at(1, 4).unwrap(), None);
        assert_eq!(log.replicate_at(1, 0, Some(&at_two), &[message(3)]).unwrap(), Fenced::Stale { fence: 1 });
    }

    #[test]
    fn a_late_adopt_never_drops_what_was_stored_at_its_epoch() {
        // The model check's counterexample (tests/replication_model.rs): an owner's first
        // Adopt at epoch 2 times out, a second one succeeds, a batch is stored and
        // acknowledged; then the first Adopt arrives, with the older base.
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        assert_eq!(log.take_epoch(1, 2, Some(0)).unwrap(), Fenced::Done((0, 0)), "the second Adopt");
        let stored = log.replicate_at(1, 2, None, &[message(1), message(2)]).unwrap();
        assert_eq!(stored, Fenced::Done(Replicated::Stored));
        assert_eq!(log.take_epoch(1, 2, Some(0)).unwrap(), Fenced::Done((2, 0)), "the late Adopt drops nothing");
        assert_eq!(log.last_seq(1).unwrap(), 2);
        // A newer epoch's Adopt may still drop what the newer owner lacks.
        assert_eq!(log.take_epoch(1, 3, Some(1)).unwrap(), Fenced::Done((1, 1)));
    }

    #[test]
    fn a_seeded_replica_records_what_it_lacks_until_the_owner_filled_it_in() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        append(&log, 1, &(1..=2).map(message).collect::<Vec<_>>(), None).unwrap();
        // Not adopted at epoch 3 yet, or the log no longer ends where the owner thinks.
        assert_eq!(log.seed_at(1, 3, 2, &message(10)).unwrap(), Fenced::Done(Err(Replicated::Gap)));
        assert_eq!(log.take_epoch(1, 3, Some(2)).unwrap(), Fenced::Done((2, 0)));
        assert_eq!(log.seed_at(1, 3, 1, &message(10)).unwrap(), Fenced::Done(Err(Replicated::Gap)));
        assert_eq!(log.seed_at(1, 3, 2, &message(10)).unwrap(), Fenced::Done(Ok(Some((3, 9)))));
        assert_eq!(log.missing(1).unwrap(), Some((3, 9)));
        assert_eq!(log.last_seq(1).unwrap(), 10);
        // Live replication follows the seed.
        let at_ten = stamp(&message(10));
        assert_eq!(log.replicate_at(1, 3, Some(&at_ten), &[message(11)]).unwrap(), Fenced::Done(Replicated::Stored));
        // Chunks that do not start at the range, skip a seq or overrun it store nothing.
        let range = |seqs: std::ops::RangeInclusive<Seq>| seqs.map(message).collect::<Vec<_>>();
        assert_eq!(log.backfill_at(1, 3, &range(4..=5)).unwrap(), Fenced::Done(Some((3, 9))));
        assert_eq!(log.backfill_at(1, 3, &[message(3), message(5)]).unwrap(), Fenced::Done(Some((3, 9))));
        assert_eq!(log.backfill_at(1, 3, &range(3..=10)).unwrap(), Fenced::Done(Some((3, 9))));
        assert_eq!(log.backfill_at(1, 2, &range(3..=4)).unwrap(), Fenced::Stale { fence: 3 });
        assert_eq!(log.stamp_at(1, 4).unwrap(), None, "nothing stored by the refusals");
        assert_eq!(log.backfill_at(1, 3, &range(3..=6)).unwrap(), Fenced::Done(Some((7, 9))));
        assert_eq!(log.dedupe(1, 1, "c5").unwrap(), Some(5), "back-filled entries carry their dedupe keys");
        // The range survives a late Adopt of the same epoch and a reopen.
        assert_eq!(log.take_epoch(1, 3, Some(2)).unwrap(), Fenced::Done((11, 0)));
        drop(log);
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        assert_eq!(log.missing(1).unwrap(), Some((7, 9)));
        assert_eq!(log.backfill_at(1, 3, &range(7..=9)).unwrap(), Fenced::Done(None));
        assert_eq!(log.missing(1).unwrap(), None);
        assert_eq!(log.after(1, 0, 100).unwrap().len(), 11, "the whole log, no hole");
    }

    #[test]
    fn adopting_below_a_missing_range_leaves_the_plain_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        append(&log, 1, &(1..=2).map(message).collect::<Vec<_>>(), None).unwrap();
        assert_eq!(log.take_epoch(1, 2, Some(2)).unwrap(), Fenced::Done((2, 0)));
        assert_eq!(log.seed_at(1, 2, 2, &message(9)).unwrap(), Fenced::Done(Ok(Some((3, 8)))));
        assert_eq!(log.backfill_at(1, 2, &[message(3), message(4)]).unwrap(), Fenced::Done(Some((5, 8))));
        // A newer owner whose log ends above the range keeps it as it is.
        assert_eq!(log.take_epoch(1, 3, Some(9)).unwrap(), Fenced::Done((9, 0)));
        assert_eq!(log.missing(1).unwrap(), Some((5, 8)));
        // One whose log ends inside it: what lies above the range's start goes with it.
        assert_eq!(log.take_epoch(1, 4, Some(6)).unwrap(), Fenced::Done((4, 1)));
        assert_eq!(log.missing(1).unwrap(), None);
        assert_eq!(log.after(1, 0, 100).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }
}
