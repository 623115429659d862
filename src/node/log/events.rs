//! Message events in a room's log (docs/REPLICATION.md, "Message events"): the indexes an
//! entry adds (`relations`: which events and replies name a message; `mentions`: who a
//! message mentions; `redactions`: deletes whose redaction has not run yet), folding a
//! message's current state out of them for reads, and the redaction write that erases a
//! deleted message's text once its delete is committed.
//!
//! Every index key is written in the same RocksDB batch as its entry and removed with it
//! when the entry is truncated or replaced, so the indexes describe exactly the entries
//! the log holds.

use std::collections::{BTreeMap, HashSet};

use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::Deserialize;

use super::{RoomLog, CF_MESSAGES};
use crate::protocol::{EntryKind, MessageState, ReadMessage, RoomId, Seq, StoredMessage, UserId};
use crate::store::{self, StoreError};

pub(super) const CF_RELATIONS: &str = "relations";
pub(super) const CF_MENTIONS: &str = "mentions";
pub(super) const CF_REDACTIONS: &str = "redactions";

/// How an entry relates to the message it names (the value of a `relations` key).
const EDIT: u8 = 1;
const DELETE: u8 = 2;
const REACT: u8 = 3;
const REPLY: u8 = 4;

/// The mention of everyone in a room (`@room`); no username has an `@`.
pub const MENTION_ROOM: &str = "@room";

/// An entry as stored before entries had a kind: a plain message.
#[derive(Deserialize)]
struct LegacyEntry {
    seq: Seq,
    sender_id: UserId,
    sender: String,
    text: String,
    ts: u64,
    client_id: String,
}

/// Decodes a stored entry of either layout (entries written before `kind` existed read as
/// plain messages).
pub fn decode_entry(bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    match store::decode_exact::<StoredMessage>(bytes) {
        Ok(entry) => Ok(entry),
        Err(error) => match store::decode_exact::<LegacyEntry>(bytes) {
            Ok(LegacyEntry { seq, sender_id, sender, text, ts, client_id }) => {
                Ok(StoredMessage { seq, sender_id, sender, text, ts, client_id, kind: EntryKind::message() })
            }
            Err(_) => Err(error),
        },
    }
}

/// room ‖ target ‖ seq.
fn relation_key(room: RoomId, target: Seq, seq: Seq) -> Vec<u8> {
    let mut key = store::pair_key(room, target).to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// room ‖ username ‖ 0 ‖ seq (usernames hold no zero byte).
fn mention_key(room: RoomId, user: &str, seq: Seq) -> Vec<u8> {
    let mut key = mention_prefix(room, user);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn mention_prefix(room: RoomId, user: &str) -> Vec<u8> {
    let mut key = store::u64_key(room).to_vec();
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key
}

/// What a `relations` key of `entry` is: (the message it names, how).
fn relation(entry: &StoredMessage) -> Option<(Seq, u8)> {
    match &entry.kind {
        EntryKind::Edit { target } => Some((*target, EDIT)),
        EntryKind::Delete { target } => Some((*target, DELETE)),
        EntryKind::React { target, .. } => Some((*target, REACT)),
        EntryKind::Message { reply_to: Some(root), .. } => Some((*root, REPLY)),
        EntryKind::Message { reply_to: None, .. } | EntryKind::System => None,
    }
}

/// A message's relations up to a read bound: (seq, how), ascending.
type Relations = Vec<(Seq, u8)>;

impl RoomLog {
    /// Adds to `batch` the index keys of `entry`.
    pub(super) fn index(&self, batch: &mut WriteBatch, room: RoomId, entry: &StoredMessage) -> Result<(), StoreError> {
        if let Some((target, how)) = relation(entry) {
            batch.put_cf(store::cf(&self.db, CF_RELATIONS)?, relation_key(room, target, entry.seq), [how]);
        }
        if let EntryKind::Message { mentions, .. } = &entry.kind {
            let cf = store::cf(&self.db, CF_MENTIONS)?;
            for user in mentions {
                batch.put_cf(cf, mention_key(room, user, entry.seq), []);
            }
        }
        if let EntryKind::Delete { target } = entry.kind {
            let key = store::pair_key(room, entry.seq);
            batch.put_cf(store::cf(&self.db, CF_REDACTIONS)?, key, target.to_be_bytes());
        }
        Ok(())
    }

    /// Adds to `batch` the removal of `entry`'s index keys (it is truncated or replaced).
    pub(super) fn unindex(
        &self,
        batch: &mut WriteBatch,
        room: RoomId,
        entry: &StoredMessage,
    ) -> Result<(), StoreError> {
        if let Some((target, _)) = relation(entry) {
            batch.delete_cf(store::cf(&self.db, CF_RELATIONS)?, relation_key(room, target, entry.seq));
        }
        if let EntryKind::Message { mentions, .. } = &entry.kind {
            let cf = store::cf(&self.db, CF_MENTIONS)?;
            for user in mentions {
                batch.delete_cf(cf, mention_key(room, user, entry.seq));
            }
        }
        if let EntryKind::Delete { .. } = entry.kind {
            batch.delete_cf(store::cf(&self.db, CF_REDACTIONS)?, store::pair_key(room, entry.seq));
        }
        Ok(())
    }

    /// Erases the text of every message whose delete is at or below `committed` (and the
    /// texts of its edits, and its mentions), in one durable write. A delete above the
    /// commit point may still be given up (docs/REPLICATION.md, "No rollback" and "Message
    /// events"), so its redaction waits: the owner runs this when its commit point moves,
    /// a replica when its owner tells it the commit point.
    pub fn redact_committed(&self, room: RoomId, committed: Seq) -> Result<usize, StoreError> {
        let _guard = self.fence_lock(room);
        let redactions_cf = store::cf(&self.db, CF_REDACTIONS)?;
        let start = store::pair_key(room, 0);
        let mut pending = Vec::new();
        for item in self.db.iterator_cf(redactions_cf, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            let (key_room, seq) = store::key_pair(&key)?;
            if key_room != room || seq > committed {
                break;
            }
            pending.push((seq, store::key_u64(&value)?));
        }
        if pending.is_empty() {
            return Ok(0);
        }
        let messages_cf = store::cf(&self.db, CF_MESSAGES)?;
        let mentions_cf = store::cf(&self.db, CF_MENTIONS)?;
        let mut batch = WriteBatch::default();
        for &(delete, target) in &pending {
            batch.delete_cf(redactions_cf, store::pair_key(room, delete));
            let edits = self.relations(room, target, Seq::MAX)?.into_iter().filter(|(_, how)| *how == EDIT);
            for seq in std::iter::once(target).chain(edits.map(|(seq, _)| seq)) {
                // A seeded replica may lack the target still: its owner's copy, already
                // redacted, comes with the background copy.
                let Some(mut entry) = self.entry(room, seq)? else { continue };
                if let EntryKind::Message { mentions, .. } = &mut entry.kind {
                    for user in mentions.drain(..) {
                        batch.delete_cf(mentions_cf, mention_key(room, &user, seq));
                    }
                }
                entry.text.clear();
                batch.put_cf(messages_cf, store::pair_key(room, seq), store::encode(&entry)?);
            }
        }
        self.write(batch, self.fsync)?;
        Ok(pending.len())
    }

    /// The entry at `seq`, if this log holds one.
    pub fn entry(&self, room: RoomId, seq: Seq) -> Result<Option<StoredMessage>, StoreError> {
        let cf = store::cf(&self.db, CF_MESSAGES)?;
        match self.db.get_cf(cf, store::pair_key(room, seq))? {
            Some(bytes) => Ok(Some(decode_entry(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The relations of message `target` with seq at most `upto`, ascending.
    fn relations(&self, room: RoomId, target: Seq, upto: Seq) -> Result<Relations, StoreError> {
        let cf = store::cf(&self.db, CF_RELATIONS)?;
        let start = relation_key(room, target, 0);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            if key.len() != 24 || key[..16] != start[..16] {
                break;
            }
            let seq = store::key_u64(&key[16..])?;
            if seq > upto {
                break;
            }
            found.push((seq, value.first().copied().unwrap_or_default()));
        }
        Ok(found)
    }

    /// Whether message `target` is deleted (by an entry at or below `upto`).
    pub fn is_deleted(&self, room: RoomId, target: Seq, upto: Seq) -> Result<bool, StoreError> {
        Ok(self.relations(room, target, upto)?.iter().any(|(_, how)| *how == DELETE))
    }

    /// Whether `user`'s reaction `emoji` on `target` is on, as of this whole log.
    pub fn reaction_on(&self, room: RoomId, target: Seq, user: UserId, emoji: &str) -> Result<bool, StoreError> {
        let mut on = false;
        for (seq, how) in self.relations(room, target, Seq::MAX)? {
            if how != REACT {
                continue;
            }
            if let Some(StoredMessage { sender_id, kind: EntryKind::React { emoji: e, on: now, .. }, .. }) =
                self.entry(room, seq)?
            {
                if sender_id == user && e == emoji {
                    on = now;
                }
            }
        }
        Ok(on)
    }

    /// Entries as reads return them, with events up to `upto` folded in: a message's
    /// current text and state, an edit of a deleted message without its text.
    pub fn fold(&self, room: RoomId, entries: Vec<StoredMessage>, upto: Seq) -> Result<Vec<ReadMessage>, StoreError> {
        entries.into_iter().map(|entry| self.fold_one(room, entry, upto)).collect()
    }

    fn fold_one(&self, room: RoomId, mut entry: StoredMessage, upto: Seq) -> Result<ReadMessage, StoreError> {
        let mut state = MessageState::default();
        match &entry.kind {
            EntryKind::Message { .. } => {
                let relations = self.relations(room, entry.seq, upto)?;
                state.deleted = relations.iter().any(|(_, how)| *how == DELETE);
                state.replies = relations.iter().filter(|(_, how)| *how == REPLY).count() as u64;
                state.last_reply = relations.iter().rev().find(|(_, how)| *how == REPLY).map(|(seq, _)| *seq);
                if state.deleted {
                    entry.text.clear();
                    if let EntryKind::Message { mentions, .. } = &mut entry.kind {
                        mentions.clear();
                    }
                    return Ok(ReadMessage { message: entry, state });
                }
                if let Some((seq, _)) = relations.iter().rev().find(|(_, how)| *how == EDIT) {
                    if let Some(edit) = self.entry(room, *seq)? {
                        entry.text = edit.text;
                        state.edited = true;
                    }
                }
                state.reactions = self.reactions(room, &relations)?;
            }
            EntryKind::Edit { target } => {
                if self.is_deleted(room, *target, upto)? {
                    entry.text.clear();
                }
            }
            EntryKind::Delete { .. } | EntryKind::React { .. } | EntryKind::System => {}
        }
        Ok(ReadMessage { message: entry, state })
    }

    /// The reactions that are on after these relations: (emoji, users) in the order
    /// each emoji was first given, users in the order they gave it.
    fn reactions(&self, room: RoomId, relations: &Relations) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut on: BTreeMap<(String, String), Seq> = BTreeMap::new();
        for (seq, how) in relations {
            if *how != REACT {
                continue;
            }
            if let Some(StoredMessage { sender, kind: EntryKind::React { emoji, on: now, .. }, .. }) =
                self.entry(room, *seq)?
            {
                if now {
                    on.entry((emoji, sender)).or_insert(*seq);
                } else {
                    on.remove(&(emoji, sender));
                }
            }
        }
        let mut given: Vec<((String, String), Seq)> = on.into_iter().collect();
        given.sort_by_key(|(_, seq)| *seq);
        let mut reactions: Vec<(String, Vec<String>)> = Vec::new();
        for ((emoji, user), _) in given {
            match reactions.iter_mut().find(|(e, _)| *e == emoji) {
                Some((_, users)) => users.push(user),
                None => reactions.push((emoji, vec![user])),
            }
        }
        Ok(reactions)
    }

    /// Message `root` and the replies in its thread, oldest first, up to `upto`.
    pub fn thread(&self, room: RoomId, root: Seq, upto: Seq) -> Result<Vec<ReadMessage>, StoreError> {
        let Some(entry) = self.entry(room, root)?.filter(|entry| entry.seq <= upto) else { return Ok(Vec::new()) };
        let mut entries = vec![entry];
        for (seq, how) in self.relations(room, root, upto)? {
            if how == REPLY {
                if let Some(reply) = self.entry(room, seq)? {
                    entries.push(reply);
                }
            }
        }
        self.fold(room, entries, upto)
    }

    /// Messages after `after` and up to `upto` that mention `user` or `@room`, at most
    /// `limit`: the oldest, ascending, or with `newest` the newest, newest first; and
    /// whether there are more.
    pub fn mentions(
        &self,
        room: RoomId,
        user: &str,
        (after, upto): (Seq, Seq),
        limit: usize,
        newest: bool,
    ) -> Result<(Vec<ReadMessage>, bool), StoreError> {
        let cf = store::cf(&self.db, CF_MENTIONS)?;
        let mut seqs = HashSet::new();
        for name in [user, MENTION_ROOM] {
            // Each name's first `limit + 1`: the merge's first `limit + 1` are among them.
            let prefix = mention_prefix(room, name);
            let (start, direction) = if newest {
                (mention_key(room, name, upto), Direction::Reverse)
            } else {
                (mention_key(room, name, after.saturating_add(1)), Direction::Forward)
            };
            for (taken, item) in self.db.iterator_cf(cf, IteratorMode::From(&start, direction)).enumerate() {
                let (key, _) = item?;
                if key.len() != prefix.len() + 8 || !key.starts_with(&prefix) {
                    break;
                }
                let seq = store::key_u64(&key[prefix.len()..])?;
                if seq <= after || seq > upto || taken > limit {
                    break;
                }
                seqs.insert(seq);
            }
        }
        let mut seqs: Vec<Seq> = seqs.into_iter().collect();
        seqs.sort_unstable();
        if newest {
            seqs.reverse();
        }
        let has_more = seqs.len() > limit;
        seqs.truncate(limit);
        let mut entries = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(entry) = self.entry(room, seq)? {
                entries.push(entry);
            }
        }
        Ok((self.fold(room, entries, upto)?, has_more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreMemory;

    fn entry(seq: Seq, sender_id: UserId, kind: EntryKind, text: &str) -> StoredMessage {
        StoredMessage {
            seq,
            sender_id,
            sender: format!("u{sender_id}"),
            text: text.into(),
            ts: seq,
            client_id: format!("c{seq}"),
            kind,
        }
    }

    fn open() -> (tempfile::TempDir, RoomLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), false, &StoreMemory::default()).unwrap();
        (dir, log)
    }

    #[test]
    fn reads_fold_edits_reactions_replies_and_deletes_up_to_their_bound() {
        let (_dir, log) = open();
        let mention = EntryKind::Message { reply_to: None, mentions: vec!["u2".into()] };
        let react = |on| EntryKind::React { target: 1, emoji: "👍".into(), on };
        let entries = vec![
            entry(1, 1, mention, "hello @u2"),
            entry(2, 1, EntryKind::Edit { target: 1 }, "hello again @u2"),
            entry(3, 2, react(true), ""),
            entry(4, 3, react(true), ""),
            entry(5, 2, react(false), ""),
            entry(6, 2, EntryKind::Message { reply_to: Some(1), mentions: vec![] }, "a reply"),
            entry(7, 1, EntryKind::Delete { target: 1 }, ""),
        ];
        super::super::tests::append(&log, 9, &entries, None).unwrap();
        let read = |upto| log.fold(9, log.after(9, 0, 10).unwrap(), upto).unwrap();
        let at_six = read(6);
        assert_eq!(at_six[0].message.text, "hello again @u2");
        assert_eq!(
            at_six[0].state,
            MessageState {
                edited: true,
                deleted: false,
                reactions: vec![("👍".into(), vec!["u3".into()])],
                replies: 1,
                last_reply: Some(6),
            }
        );
        assert_eq!(log.thread(9, 1, 6).unwrap().iter().map(|m| m.message.seq).collect::<Vec<_>>(), vec![1, 6]);
        assert_eq!(log.mentions(9, "u2", (0, 6), 10, false).unwrap().0.len(), 1);
        assert!(log.reaction_on(9, 1, 3, "👍").unwrap());
        assert!(!log.reaction_on(9, 1, 2, "👍").unwrap(), "toggled off");
        // The delete is read (its bound covers it) before it is committed: no text shows.
        let at_seven = read(7);
        assert!(at_seven[0].state.deleted);
        assert_eq!(at_seven[0].message.text, "");
        assert_eq!(at_seven[1].message.text, "", "the edit of a deleted message has no text");
        // Redaction waits for the commit point, then erases the texts on disk.
        assert_eq!(log.redact_committed(9, 6).unwrap(), 0);
        assert_eq!(log.entry(9, 1).unwrap().unwrap().text, "hello @u2");
        assert_eq!(log.redact_committed(9, 7).unwrap(), 1);
        assert_eq!(log.entry(9, 1).unwrap().unwrap().text, "");
        assert_eq!(log.entry(9, 2).unwrap().unwrap().text, "");
        assert_eq!(log.entry(9, 6).unwrap().unwrap().text, "a reply", "replies stay");
        assert!(log.mentions(9, "u2", (0, 7), 10, true).unwrap().0.is_empty(), "its mentions went");
        assert_eq!(log.redact_committed(9, 7).unwrap(), 0, "once");
    }

    #[test]
    fn truncating_an_event_removes_its_index_keys() {
        let (_dir, log) = open();
        let entries = vec![
            entry(1, 1, EntryKind::Message { reply_to: None, mentions: vec!["@room".into()] }, "hi all"),
            entry(2, 1, EntryKind::Delete { target: 1 }, ""),
        ];
        super::super::tests::append(&log, 9, &entries, None).unwrap();
        // The delete was never committed and a new owner's log lacks it: it goes, and its
        // redaction with it.
        assert_eq!(log.truncate_after(9, 1, false).unwrap(), 1);
        assert_eq!(log.redact_committed(9, 2).unwrap(), 0);
        assert_eq!(log.fold(9, log.after(9, 0, 10).unwrap(), 2).unwrap()[0].message.text, "hi all");
        assert_eq!(log.mentions(9, "anyone", (0, 2), 10, false).unwrap().0.len(), 1, "@room counts for everyone");
    }

    #[test]
    fn entries_of_the_first_layout_read_as_plain_messages() {
        #[derive(serde::Serialize)]
        struct Legacy<'a>(Seq, UserId, &'a str, &'a str, u64, &'a str);
        let bytes = store::encode(&Legacy(4, 7, "ann", "old text", 99, "c4")).unwrap();
        let expected = StoredMessage { sender: "ann".into(), ts: 99, ..entry(4, 7, EntryKind::message(), "old text") };
        assert_eq!(decode_entry(&bytes).unwrap(), expected);
        let current = store::encode(&expected).unwrap();
        assert_eq!(decode_entry(&current).unwrap(), expected);
    }
}
