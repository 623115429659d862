//! The replica side of replication: storing an owner's batches (refusing a stale epoch
//! or a batch that does not follow this log), adopting a new owner's epoch (dropping an
//! unacknowledged tail), and the background copy's seed and backfill. Every write here is
//! fenced by the room's epoch in [`RoomLog`](super::log::RoomLog) (docs/REPLICATION.md).

use super::log::{Fenced, Replicated};
use super::owner::{self, blocking};
use super::{Node, NodeError};
use crate::protocol::{MeshResponse, MessageStamp, RoomId, Seq, StoredMessage};

impl Node {
    /// Replica side of replication: refuse a stale epoch or messages that do not follow
    /// this log (docs/REPLICATION.md, "Log matching"), else store durably and remember
    /// the owner's commit point for reads.
    #[tracing::instrument(skip(self, prev, messages), fields(
        node = self.id,
        count = messages.len(),
        first_seq = messages.first().map_or(0, |m| m.seq),
        last_seq = messages.last().map_or(0, |m| m.seq),
    ))]
    pub(super) async fn store_replica(
        &self,
        room: RoomId,
        epoch: u64,
        prev: Option<MessageStamp>,
        committed: Seq,
        messages: Vec<StoredMessage>,
    ) -> Result<MeshResponse, NodeError> {
        let last = messages.last().map_or(0, |m| m.seq);
        let stored = self.log.write_grouped(
            room,
            move |log, staged| log.stage_replicate_at(staged, epoch, prev.as_ref(), &messages),
            move |log, stored, written| {
                let stored = stored?;
                written?;
                if stored == Fenced::Done(Replicated::Stored) {
                    // This log matches the owner's up to `committed`, all of it
                    // acknowledged: the deletes there may erase their messages' text now
                    // (docs/REPLICATION.md, "Message events").
                    log.redact_committed(room, committed)?;
                }
                Ok(stored)
            },
        );
        match stored.await.map_err(|e| NodeError::Internal(e.to_string()))? {
            Fenced::Done(Replicated::Stored) => {
                let mut commits = self.replica_commits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let known = commits.entry(room).or_insert(0);
                *known = (*known).max(committed);
                Ok(MeshResponse::Stored { seq: last })
            }
            Fenced::Done(Replicated::Gap) => Err(NodeError::LogMismatch),
            Fenced::Stale { .. } => Err(NodeError::StaleEpoch),
        }
    }

    /// A new owner makes this node its replica at `epoch`: drop what lies past `base` and
    /// show the owner the stamps of what is left at the end, so it can spot a stale tail.
    pub(super) async fn adopt(&self, room: RoomId, epoch: u64, base: Seq) -> Result<MeshResponse, NodeError> {
        // What a new owner may make a replica drop is at most one unacknowledged batch (an
        // owner commits one batch at a time). More means the new owner lacks messages this
        // node holds (it was promoted before it had the log): refuse rather than delete
        // what may have been acknowledged; the owner stays unready and says so.
        let log = self.log.clone();
        let held = blocking(move || log.last_seq(room)).await?;
        if held > base.saturating_add(owner::MAX_BATCH as Seq) {
            tracing::error!(room, epoch, base, held, "refusing to adopt an owner whose log is behind this replica's");
            return Err(NodeError::Internal(format!(
                "this replica holds room {room} up to seq {held}; the new owner's log ends at {base}:                  refusing to drop {} messages",
                held - base
            )));
        }
        let log = self.log.clone();
        let (last_seq, dropped) = match blocking(move || log.take_epoch(room, epoch, Some(base))).await? {
            Fenced::Done(taken) => taken,
            Fenced::Stale { .. } => return Err(NodeError::StaleEpoch),
        };
        if dropped > 0 {
            tracing::info!(room, epoch, dropped, "dropped unacknowledged messages past the new owner's log");
        }
        // Only the owner at `epoch` (busy waiting for this answer) or a newer one writes
        // the room now, so this read belongs with the truncation above.
        let log = self.log.clone();
        let (tail, missing) =
            blocking(move || Ok((log.tail_stamps(room, owner::MAX_BATCH)?, log.missing(room)?))).await?;
        Ok(MeshResponse::Adopted { last_seq, tail, missing })
    }

    /// A seeded replica: store the owner's newest entry and record what lies between as
    /// missing (docs/REPLICATION.md, "Background copy").
    pub(super) async fn store_seed(
        &self,
        room: RoomId,
        epoch: u64,
        after: Seq,
        message: StoredMessage,
    ) -> Result<MeshResponse, NodeError> {
        let log = self.log.clone();
        match blocking(move || log.seed_at(room, epoch, after, &message)).await? {
            Fenced::Done(Ok(missing)) => {
                tracing::info!(room, epoch, ?missing, "seeded by the owner; receiving the older log in the background");
                Ok(MeshResponse::Copied { missing })
            }
            Fenced::Done(Err(_)) => Err(NodeError::LogMismatch),
            Fenced::Stale { .. } => Err(NodeError::StaleEpoch),
        }
    }

    /// A chunk of the older log for this replica's missing range.
    pub(super) async fn store_backfill(
        &self,
        room: RoomId,
        epoch: u64,
        messages: Vec<StoredMessage>,
    ) -> Result<MeshResponse, NodeError> {
        let log = self.log.clone();
        match blocking(move || log.backfill_at(room, epoch, &messages)).await? {
            Fenced::Done(missing) => Ok(MeshResponse::Copied { missing }),
            Fenced::Stale { .. } => Err(NodeError::StaleEpoch),
        }
    }
}
