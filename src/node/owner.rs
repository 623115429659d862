//! The owner of one room: its sequencer. One task per owned room (none while the room is
//! idle and its owner parked: [`owner_handle`](super::owner_handle)) receives sends (from
//! local sessions and, over the mesh, from other nodes), gives each the next `seq`,
//! writes the batch to the room log, copies it to the replica, and only then acknowledges
//! and fans out ONE pre-serialised frame batch per subscribed node. Several sends waiting
//! at once form one batch: one fsync and one replication round trip (group commit).
//!
//! The protocol (commit point, no rollback, log matching, what reads may return) is
//! written down in docs/REPLICATION.md; the comments here point there.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;

use super::events::{self, BatchEvents};
use super::log::{stamp, Fenced, Missing, RoomLog, Staged};
use super::owner_handle::OwnerFlags;
pub use super::sequencer::Sent;
use super::sequencer::{PendingSend, Sequencer};
use super::{Node, NodeError};
use crate::now_ms;
use crate::protocol::{
    Action, ChatMessage, EntryKind, EntryKindName, MeshRequest, MeshResponse, MessageStamp, MessageState, NodeId,
    ReactionCount, ReadMessage, RoomId, Seq, ServerFrame, StoredMessage, UserId,
};

/// Most sends one batch takes; also how many of its last messages a replica shows a new
/// owner when adopting (an unacknowledged tail is at most one batch).
pub const MAX_BATCH: usize = 256;
/// How many times a new owner makes its replica adopt with a lower base before it gives
/// up on a replica whose log keeps differing from its own.
const ADOPT_ROUNDS: usize = 3;
/// How long an owner that could not take its room over waits before trying again, at
/// first and at most (doubling in between).
const START_RETRY_FIRST: Duration = Duration::from_millis(250);
const START_RETRY_LAST: Duration = Duration::from_secs(2);
/// How many owners of one node take their room over at once in the background, per
/// replica node. After a restart every owner does: a node with 50,000 rooms sent 50,000
/// `Adopt`s at once, which failed past `mesh.requests_per_link` and the replication
/// timeout and were retried, and the whole node took half a minute (docs/BENCHMARKS.md,
/// "Restarting 50,000 rooms"). An owner with a send waiting takes over at once, without
/// a turn.
pub const TAKEOVERS_IN_FLIGHT: usize = 64;
/// How long the owner waits for its replica.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(3);
/// Most entries a new owner copies to its replica before taking sends; a replica that
/// lacks more is seeded and filled in behind live sends (docs/REPLICATION.md,
/// "Background copy"). Also the size of one copy chunk.
const INLINE_COPY: usize = 1_000;
/// How long a room stays quiet after a commit before the owner tells its replica that
/// commit point in an empty `Replicate` (each `Replicate` carries the commit point before
/// its batch: docs/REPLICATION.md, "Reads").
const QUIET_COMMIT_NOTICE: Duration = Duration::from_millis(100);
/// The least time between two presence frames an owner sends its followers: changes
/// closer together are folded into one sent when the time is up, so subscribe and
/// unsubscribe churn (about 100 changes a second per connection within its read limit)
/// cannot send the whole user list to every subscriber on every change.
const PRESENCE_EVERY: Duration = Duration::from_millis(250);
/// How long the background copy waits after its replica did not answer.
const BACKFILL_RETRY: Duration = Duration::from_secs(1);
/// How long one chunk of the background copy may take: the owner's sends wait for it,
/// so shorter than [`REPLICATION_TIMEOUT`].
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(1);

/// What an owner task is asked to do.
pub enum OwnerCommand {
    /// Boxed: a command is as large as its largest kind, and every owner task's queue
    /// holds room for 32 of them from the start, sends or not.
    Send(Box<PendingSend>),
    /// Node `node` has these users following the room (empty: unfollow).
    Interest {
        node: NodeId,
        users: Vec<String>,
    },
    Typing {
        username: String,
    },
    /// Node `node` is up again in this node's routing table (deliveries to it were
    /// skipped while it was down), or the mesh may have lost frames to it: it gets the
    /// newest message if it follows the room (its sessions then fetch any gap), and its
    /// users count in the room's presence again.
    Returned {
        node: NodeId,
    },
    /// Node `node` is down in this node's routing table: its users leave the room's
    /// presence (its sessions are closed or closing: docs/REPLICATION.md, "Leases"), though
    /// its interest is kept for when it is up again.
    Down {
        node: NodeId,
    },
}

/// One room's owner task's state (started by [`OwnerHandle`](super::owner_handle)).
pub(super) struct Owner {
    node: Node,
    room: RoomId,
    epoch: u64,
    next_seq: Seq,
    /// The stamp of the message at `next_seq - 1` (`None` while the log is empty): what
    /// the next `Replicate` names as the entry it follows.
    last_stamp: Option<MessageStamp>,
    /// Subscribed nodes and their users, for fan-out and presence.
    interest: HashMap<NodeId, Vec<String>>,
    /// The users of the last presence frame the followers were sent: those of `interest`
    /// on nodes that are up.
    presence: BTreeSet<String>,
    /// When that frame went out, and when the next one is due if presence changed since
    /// ([`PRESENCE_EVERY`]).
    presence_sent: Option<tokio::time::Instant>,
    presence_due: Option<tokio::time::Instant>,
    /// Shared with the [`OwnerHandle`]: ready, dormant, the replica complete, the commit
    /// point.
    flags: OwnerFlags,
    /// The background copy still to do, if the replica was seeded.
    backfill: Option<Backfill>,
    /// The highest commit point the replica confirmed it was told at this epoch.
    replica_told: Seq,
    /// When to tell the replica a commit point it was not told yet, if the room stays
    /// quiet until then ([`QUIET_COMMIT_NOTICE`]).
    notice_due: Option<tokio::time::Instant>,
}

/// Sleeps until `due`, or for ever without one.
async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.node.owner_task_ended();
    }
}

/// What the replica still lacks of the older log, and when the next chunk may go.
#[derive(Debug, Clone, Copy)]
struct Backfill {
    first: Seq,
    last: Seq,
    due: tokio::time::Instant,
    started: tokio::time::Instant,
}

impl Owner {
    /// The state of a task that has not taken `room` over yet, sharing `flags` with its
    /// handle.
    pub(super) fn new(node: Node, room: RoomId, epoch: u64, flags: &OwnerFlags) -> Self {
        node.owner_task_started();
        Self {
            node,
            room,
            epoch,
            next_seq: 1,
            last_stamp: None,
            interest: HashMap::new(),
            presence: BTreeSet::new(),
            presence_sent: None,
            presence_due: None,
            flags: flags.clone(),
            backfill: None,
            replica_told: 0,
            notice_due: None,
        }
    }

    /// Continues the sequence from the local log and makes the replica adopt this epoch:
    /// it drops entries this owner never had and receives the ones it lacks.
    ///
    /// This node's log is authoritative as it stands. A node becomes owner only as the
    /// room's first owner (empty log) or as its replica (failover, drain). An owner
    /// acknowledges nothing before its replica adopted it (`start` succeeds before the
    /// first commit), and adopting removed every entry of the replica's that differed
    /// from the owner's log (see [`Self::sync_replica`]); after that the replica stored
    /// every batch before it was acknowledged. So this log holds every acknowledged
    /// message at its seq. Anything past them was never acknowledged (a batch the old
    /// owner sent but did not confirm, or a tail this node wrote itself while no owner
    /// acknowledged anything over it): no acknowledged message claims those seqs, so
    /// keeping them is consistent (a retry of one is answered as a duplicate), and the
    /// replica adopted below loses whatever it holds that differs.
    ///
    /// With `min_copies = 1` an owner without a replica acknowledges on its own disk
    /// alone; if it dies before a replica was synced, those messages are lost by
    /// configuration, and the replica's own tail may take their seqs.
    async fn start(&mut self) -> Result<(), NodeError> {
        let (room, epoch) = (self.room, self.epoch);
        let log = self.node.log.clone();
        let last = match blocking(move || log.take_epoch(room, epoch, None)).await? {
            Fenced::Done((last, _)) => last,
            Fenced::Stale { .. } => return Err(self.moved()),
        };
        let log = self.node.log.clone();
        if let Some((first, to)) = blocking(move || log.missing(room)).await? {
            // Only a complete (in-sync) replica is promoted, so this cannot happen; if it
            // did, owning the room would serve and build on a log with a hole.
            tracing::error!(room, epoch, first, last = to, "this node's copy of the room lacks older messages");
            return Err(NodeError::Internal(format!(
                "this node's copy of room {room} lacks seqs {first}..={to}; it cannot own the room"
            )));
        }
        let log = self.node.log.clone();
        self.last_stamp = blocking(move || log.stamp_at(room, last)).await?;
        self.next_seq = last + 1;
        let missing = self.sync_replica(last).await?;
        // A newer owner may have adopted this node as its replica meanwhile: this task is
        // stale, and its log no longer its own to vouch for.
        let log = self.node.log.clone();
        if blocking(move || log.fence(room)).await? > epoch {
            return Err(self.moved());
        }
        // The replica now holds this log's newest entry and everything it lacks is on its
        // way: all of it is committed, including a batch a failed round left unacknowledged
        // (docs/REPLICATION.md, "No rollback", "Background copy").
        let before = self.flags.committed.get();
        self.flags.committed.set(last);
        if before.is_none_or(|before| before < last) {
            // What this commits was never fanned out (a kept batch), and nodes that
            // announced themselves while this task was not ready were shown nothing (it had
            // no commit point yet): show every following node the newest message, so their
            // sessions fetch what they lack (docs/REPLICATION.md, "Live delivery"). Without
            // it a room whose last messages were such a batch kept them from every follower
            // until a next message showed the gap (`bench-storm` lost 323 acked messages).
            let nodes: Vec<NodeId> = self.interest.keys().copied().collect();
            self.show_newest(&nodes).await;
        }
        self.redact().await;
        let now = tokio::time::Instant::now();
        self.backfill = missing.map(|(first, last)| Backfill { first, last, due: now, started: now });
        self.flags.set_replica_complete(missing.is_none());
        self.flags.set_ready(true);
        self.notice_due = Some(tokio::time::Instant::now() + QUIET_COMMIT_NOTICE);
        metrics::counter!("districhat_owner_takeovers_total").increment(1);
        tracing::info!(room, epoch, last_seq = last, replica_lacks = ?missing, "owning the room");
        Ok(())
    }

    /// Whether this node's log of the room is empty, whole and not fenced past this
    /// owner's epoch: with a replica in sync, an owner with nothing to take over
    /// (docs/REPLICATION.md, "Dormant owners"). A failed read says no.
    async fn log_is_empty(&self) -> bool {
        let (log, room, epoch) = (self.node.log.clone(), self.room, self.epoch);
        let empty =
            blocking(move || Ok(log.last_seq(room)? == 0 && log.missing(room)?.is_none() && log.fence(room)? <= epoch));
        empty.await.unwrap_or(false)
    }

    /// Makes the replica adopt this epoch with this owner's log up to `base`: it drops what
    /// lies past `base`, then shows the stamps of its last messages. A stamp that differs
    /// from this log at the same seq `d` is a stale tail (a batch the replica wrote as an
    /// owner but never got acknowledged, while this log gave those seqs to others): the
    /// replica adopts again with base `d - 1`, which drops it with its dedupe keys. Then
    /// it receives what it lacks up to `base`: at once if that is at most [`INLINE_COPY`]
    /// entries, else only the entry at `base` (a seed). Returns what the replica still
    /// lacks below its end, for the background copy.
    async fn sync_replica(&mut self, base: Seq) -> Result<Missing, NodeError> {
        let Some(replica) = self.node.replica_of(self.room) else { return Ok(None) };
        let mut adopt_base = base;
        let mut replica_last = None;
        for _ in 0..ADOPT_ROUNDS {
            let adopt = MeshRequest::Adopt { room: self.room, epoch: self.epoch, base: adopt_base };
            let (last_seq, tail, missing) = match self.node.mesh_request(replica, adopt, REPLICATION_TIMEOUT).await? {
                MeshResponse::Adopted { last_seq, tail, missing } => (last_seq, tail, missing),
                other => return Err(NodeError::from_response(other)),
            };
            match self.first_difference(&tail).await? {
                None => {
                    replica_last = Some((last_seq, missing));
                    break;
                }
                Some(seq) => {
                    tracing::info!(
                        room = self.room,
                        epoch = self.epoch,
                        replica,
                        seq,
                        "the replica's log differs from seq on; dropping its tail"
                    );
                    adopt_base = seq.saturating_sub(1);
                }
            }
        }
        let Some((mut replica_last, missing)) = replica_last else {
            return Err(NodeError::Internal(format!(
                "the log of replica {replica} still differs from this owner's after {ADOPT_ROUNDS} adoptions"
            )));
        };
        if missing.is_some_and(|(_, last)| last >= replica_last) {
            return Err(NodeError::Internal(format!("replica {replica} reports a missing range past its last entry")));
        }
        if base.saturating_sub(replica_last) > INLINE_COPY as Seq {
            return self.seed(replica, replica_last, base).await;
        }
        while replica_last < base {
            let (log, room, from) = (self.node.log.clone(), self.room, replica_last);
            let (prev, messages) =
                blocking(move || Ok((log.stamp_at(room, from)?, log.after(room, from, INLINE_COPY)?))).await?;
            let Some(last) = messages.last().map(|m| m.seq) else { break };
            let committed = self.flags.committed.get().unwrap_or(0);
            let copy = MeshRequest::Replicate { room: self.room, epoch: self.epoch, prev, committed, messages };
            match self.node.mesh_request(replica, copy, REPLICATION_TIMEOUT).await? {
                MeshResponse::Stored { .. } => replica_last = last,
                other => return Err(NodeError::from_response(other)),
            }
        }
        Ok(missing)
    }

    /// Gives a replica whose log ends at `after` this log's entry at `base`, and has it
    /// record everything between as missing (docs/REPLICATION.md, "Background copy").
    async fn seed(&self, replica: NodeId, after: Seq, base: Seq) -> Result<Missing, NodeError> {
        let (log, room) = (self.node.log.clone(), self.room);
        let newest = blocking(move || log.after(room, base.saturating_sub(1), 1)).await?;
        let message = newest
            .into_iter()
            .find(|m| m.seq == base)
            .ok_or_else(|| NodeError::Internal(format!("this log lacks its own last entry {base}")))?;
        let seed = MeshRequest::Seed { room, epoch: self.epoch, after, message };
        match self.node.mesh_request(replica, seed, REPLICATION_TIMEOUT).await? {
            MeshResponse::Copied { missing } => {
                tracing::info!(
                    room,
                    epoch = self.epoch,
                    replica,
                    ?missing,
                    "seeded the replica; the older log follows"
                );
                Ok(missing)
            }
            other => Err(NodeError::from_response(other)),
        }
    }

    /// Copies the next chunk of the older log to a seeded replica (`fill`, which is due):
    /// at most `replication.backfill_per_sec` messages a second, one chunk per turn of the
    /// owner loop so sends keep their turns (docs/REPLICATION.md, "Background copy").
    #[tracing::instrument(level = "debug", skip_all, fields(room = self.room, epoch = self.epoch))]
    async fn backfill_step(&mut self, fill: Backfill) {
        let now = tokio::time::Instant::now();
        let retry = |fill: Backfill| Some(Backfill { due: tokio::time::Instant::now() + BACKFILL_RETRY, ..fill });
        let Some(replica) = self.node.replica_of(self.room) else {
            // The room lost its replica (this task ends with the new epoch); do not spin.
            self.backfill = retry(fill);
            return;
        };
        let rate = self.node.config.replication.backfill_per_sec as usize;
        let chunk = if rate == 0 { INLINE_COPY } else { INLINE_COPY.min(rate) };
        let count = (fill.last.saturating_sub(fill.first) as usize + 1).min(chunk);
        let (log, room, epoch, from) = (self.node.log.clone(), self.room, self.epoch, fill.first.saturating_sub(1));
        let answer = match blocking(move || log.after(room, from, count)).await {
            Ok(messages) => {
                let request = MeshRequest::Backfill { room, epoch, messages };
                self.node.mesh_request(replica, request, BACKFILL_TIMEOUT).await
            }
            Err(e) => Err(e),
        };
        self.backfill = match answer {
            Ok(MeshResponse::Copied { missing: None }) => {
                metrics::counter!("districhat_backfill_messages_total").increment(fill.last - fill.first + 1);
                let seconds = fill.started.elapsed().as_secs_f64();
                tracing::info!(room, epoch, replica, seconds, "the replica holds the room's whole log");
                self.flags.set_replica_complete(true);
                None
            }
            Ok(MeshResponse::Copied { missing: Some((first, last)) }) => {
                let copied = first.saturating_sub(fill.first);
                metrics::counter!("districhat_backfill_messages_total").increment(copied);
                let pause = match (copied, rate) {
                    // Refused (the range had moved): go on from the replica's, after a pause.
                    (0, _) => BACKFILL_RETRY,
                    (_, 0) => Duration::ZERO,
                    (copied, rate) => Duration::from_secs_f64(copied as f64 / rate as f64),
                };
                Some(Backfill { first, last, due: now + pause, ..fill })
            }
            Ok(other) => match NodeError::from_response(other) {
                NodeError::StaleEpoch => {
                    // A newer owner holds the room: learn it now; this task is replaced.
                    let _ = self.moved();
                    None
                }
                error => {
                    tracing::debug!(room, epoch, replica, %error, "background copy refused");
                    retry(fill)
                }
            },
            Err(e) => {
                tracing::debug!(room, epoch, replica, error = %e, "background copy failed; retrying");
                retry(fill)
            }
        };
    }

    /// The first seq where a replica's `tail` (ascending stamps) differs from this log,
    /// if any. A seq this log lacks counts as different.
    async fn first_difference(&self, tail: &[MessageStamp]) -> Result<Option<Seq>, NodeError> {
        // Only the seqs the tail names: a replica still receiving the older log has a
        // tail that spans its missing range, and reading everything between would grow
        // with the room's history.
        let (log, room, seqs) = (self.node.log.clone(), self.room, tail.iter().map(|t| t.seq).collect::<Vec<_>>());
        let ours = blocking(move || log.stamps_at(room, &seqs)).await?;
        Ok(tail.iter().zip(ours).find(|(theirs, ours)| ours.as_ref() != Some(*theirs)).map(|(theirs, _)| theirs.seq))
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<OwnerCommand>, replica_in_sync: bool) {
        // A room whose log is empty here, with a replica the catalog shows in sync (so its
        // log is empty too), has nothing to sync: its owner takes it over on its first
        // send, not in the background (docs/REPLICATION.md, "Dormant owners"). Creating
        // rooms by the thousand no longer costs every owner an adoption round. Whether the
        // log is empty is read with the first background turn, so a restart that starts
        // 100,000 owners reads at the pace of the takeovers, not all at once.
        let mut may_be_dormant = replica_in_sync;
        // Grown on demand: a quiet room's owner should not hold room for a whole batch.
        let mut commands = Vec::new();
        let mut ready = false;
        let mut tries = 0u32;
        let mut retry_in = START_RETRY_FIRST;
        // The next background takeover: after `retry_at`, with one of the node's turns. One
        // future across loop turns: typing and presence traffic must not push the attempt
        // back, nor lose its place in the queue for a turn.
        let mut retry_at = tokio::time::Instant::now();
        let mut turn = None;
        loop {
            // The calls below that do real work are boxed: a task waiting for commands
            // then holds this loop's state, not room for the largest call's (an owner
            // task per room the node owns, most of them idle; docs/BENCHMARKS.md, "The
            // memory of an idle room").
            self.presence_if_due();
            // Every wait below also ends when a presence frame that waited is due.
            let presence_due = self.presence_due;
            if ready {
                let now = tokio::time::Instant::now();
                if let Some(fill) = self.backfill.filter(|fill| fill.due <= now) {
                    Box::pin(self.backfill_step(fill)).await;
                }
                if self.notice_due.is_some_and(|due| due <= now) {
                    Box::pin(self.tell_quiet_commit()).await;
                }
            }
            let received = if ready {
                let due = self.backfill.map(|fill| fill.due).into_iter().chain(self.notice_due).chain(presence_due);
                tokio::select! {
                    received = rx.recv_many(&mut commands, MAX_BATCH) => received,
                    _ = until(due.min()) => continue,
                }
            } else if self.flags.is_dormant() {
                // Nobody follows the room and nothing waits: end the task and leave the
                // handle parked (docs/REPLICATION.md, "Parked owners").
                if self.interest.is_empty() && self.node.park_owner(self.room, &self.flags, &rx) {
                    return;
                }
                tokio::select! {
                    received = rx.recv_many(&mut commands, MAX_BATCH) => received,
                    _ = until(presence_due) => continue,
                }
            } else {
                // Not owning the room yet (just started, or taking over failed: replica
                // unreachable?): take it over in the background too, so the replica is
                // synced even when no send comes (it may have a stale tail to lose, and it
                // must hold the log before it can take over).
                // Turns are per replica node: rooms whose replica does not answer (3 s per
                // try) hold up only each other.
                let takeovers = self.node.takeover_turns(self.node.replica_of(self.room).unwrap_or(self.node.id));
                let next_turn = turn.get_or_insert_with(|| {
                    Box::pin(async move {
                        tokio::time::sleep_until(retry_at).await;
                        takeovers.acquire_owned().await.ok()
                    })
                });
                tokio::select! {
                    received = rx.recv_many(&mut commands, MAX_BATCH) => received,
                    _ = until(presence_due) => continue,
                    // Bound to a name (not `_`): the permit is held through `start`.
                    _permit = next_turn => {
                        turn = None;
                        if std::mem::take(&mut may_be_dormant) && self.log_is_empty().await {
                            self.flags.set_dormant(true);
                            continue;
                        }
                        tries += 1;
                        ready = match Box::pin(self.start()).await {
                            Ok(()) => true,
                            Err(e) if tries == 1 => {
                                tracing::warn!(room = self.room, epoch = self.epoch, error = %e, "cannot take ownership of the room yet");
                                false
                            }
                            Err(e) => {
                                tracing::debug!(room = self.room, epoch = self.epoch, error = %e, "still cannot take ownership");
                                false
                            }
                        };
                        if tries > 1 {
                            retry_in = (retry_in * 2).min(START_RETRY_LAST);
                        }
                        retry_at = tokio::time::Instant::now() + retry_in;
                        continue;
                    }
                }
            };
            if received == 0 {
                return;
            }
            let mut sends = Vec::new();
            for command in commands.drain(..) {
                match command {
                    OwnerCommand::Send(send) => sends.push(*send),
                    OwnerCommand::Interest { node, users } => Box::pin(self.set_interest(node, users)).await,
                    OwnerCommand::Returned { node } => {
                        if self.interest.contains_key(&node) {
                            self.show_newest(&[node]).await;
                            // It may have missed presence changes too: it gets presence
                            // even when the list did not change.
                            self.announce_presence(Some(node));
                        }
                    }
                    OwnerCommand::Down { node } => {
                        if self.interest.contains_key(&node) {
                            self.announce_presence(None);
                        }
                    }
                    OwnerCommand::Typing { username } => {
                        let frame = ServerFrame::Typing { room: self.room, user: username };
                        self.fan_out(vec![(0, frame_json(&frame))], 0);
                    }
                }
            }
            if sends.is_empty() {
                continue;
            }
            if !ready {
                // Not owning the room yet: take it over now, without waiting for a turn (a
                // send waits), before taking sends. A turn still queued is given up first: a
                // permit granted to it meanwhile would be held by nobody. A dormant owner
                // wakes here; if this start fails, it retries in the background like any.
                turn = None;
                may_be_dormant = false;
                self.flags.set_dormant(false);
                ready = Box::pin(self.start()).await.is_ok();
                if !ready {
                    retry_at = tokio::time::Instant::now() + retry_in;
                    fail_all(sends, NodeError::Unavailable("the room's replica is not reachable yet".into()));
                    continue;
                }
            }
            ready = Box::pin(self.commit(sends)).await;
        }
    }

    /// Sequences, persists, replicates, acknowledges and fans out one batch. Returns
    /// whether the owner still takes sends: a batch the replica did not confirm stays in
    /// this log unacknowledged, and the replica must be synced again (which commits it)
    /// before the next batch (docs/REPLICATION.md, "No rollback").
    #[tracing::instrument(skip_all, fields(room = self.room, epoch = self.epoch, batch = sends.len(), first_seq, last_seq))]
    async fn commit(&mut self, sends: Vec<PendingSend>) -> bool {
        if self.node.replica_of(self.room).is_none() && self.node.config.replication.min_copies >= 2 {
            fail_all(sends, NodeError::Unavailable("no second node holds this room; retry shortly".into()));
            return true;
        }
        let started = std::time::Instant::now();
        for send in &sends {
            metrics::histogram!("districhat_hop_seconds", "hop" => "owner_queue")
                .record(started.saturating_duration_since(send.queued).as_secs_f64());
        }
        let ts = now_ms();
        let plain = sends.iter().all(|send| matches!(send.message.action, Action::Message { reply_to: None, .. }));
        let batch =
            if plain { self.sequence_plain(sends, ts, started).await } else { self.sequence(sends, ts, started).await };
        // No batch: the dedupe read failed (still ready) or the log writer lost the batch
        // (not).
        let Some(Batch { sequenced, appended, deletes }) = batch else { return self.flags.is_ready() };
        self.next_seq = sequenced.next_seq;
        let (messages, outcomes) = (sequenced.messages, sequenced.outcomes);
        if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
            let span = tracing::Span::current();
            span.record("first_seq", first.seq);
            span.record("last_seq", last.seq);
            for message in &messages {
                tracing::debug!(seq = message.seq, client_id = %message.client_id, "sequenced");
            }
            let committed_before = self.flags.committed.get().unwrap_or(0);
            let stored = match appended {
                Some(appended) => appended,
                None => self.persist(&messages).await,
            };
            let replicated = match stored {
                Ok(()) => self.replicate(&messages).await,
                Err(e) => Err(e),
            };
            if let Err(e) = replicated {
                tracing::warn!(
                    room = self.room,
                    error = %e,
                    "batch not acknowledged; keeping it and syncing the replica again before the next"
                );
                self.flags.set_ready(false);
                for (send, _) in outcomes {
                    let _ = send.reply.send(Err(e.clone()));
                }
                return false;
            }
            // The replica stored the batch with the commit point before it.
            self.replica_told = self.replica_told.max(committed_before);
            self.flags.committed.set(self.next_seq - 1);
            self.notice_due = Some(tokio::time::Instant::now() + QUIET_COMMIT_NOTICE);
            self.last_stamp = messages.last().map(stamp);
            if deletes {
                self.redact().await;
            }
        }
        metrics::counter!("districhat_messages_acked_total").increment(messages.len() as u64);
        self.node.count_messages(messages.len() as u64);
        for (send, sent) in outcomes {
            record_hop("owner_total", send.queued);
            let _ = send.reply.send(Ok(sent));
        }
        let fresh = MessageState::default();
        let frames: Vec<(Seq, String)> = messages
            .iter()
            .map(|m| (m.seq, frame_json(&ServerFrame::Message(chat_message(self.room, m, &fresh)))))
            .collect();
        if let Some(first) = messages.first() {
            self.fan_out(frames, first.ts);
        }
        true
    }

    /// Gives each send of a batch that has events in it its seq (or its duplicate's),
    /// checking each event against the log and the entries before it in the batch.
    /// `None` when the dedupe read failed (every send was answered with the error).
    async fn sequence(&self, sends: Vec<PendingSend>, ts: u64, started: std::time::Instant) -> Option<Batch> {
        // Every send's dedupe key in one read, off the runtime.
        let keys: Vec<(UserId, String)> = sends.iter().map(PendingSend::dedupe_key).collect();
        let (log, room) = (self.node.log.clone(), self.room);
        let stored = match blocking(move || log.dedupe_many(room, &keys)).await {
            Ok(stored) => stored,
            Err(e) => {
                fail_all(sends, e);
                return None;
            }
        };
        let mut sequenced = Sequencer::new(self.next_seq, ts);
        let mut events = BatchEvents::default();
        for (send, stored) in sends.into_iter().zip(stored) {
            let Some(send) = sequenced.duplicate(send, stored) else { continue };
            match events::entry_for(&self.node, self.room, &send.message, &events).await {
                Ok((kind, text)) => {
                    events.note(send.message.user_id, &kind);
                    sequenced.append(send, kind, text);
                }
                Err(e) => {
                    let _ = send.reply.send(Err(e));
                }
            }
        }
        record_hop("sequence", started);
        Some(Batch { sequenced, appended: None, deletes: !events.deleted.is_empty() })
    }

    /// [`Self::sequence`] for a batch of plain messages, which need nothing of the log but
    /// their dedupe keys: the dedupe read, the sequencing and the append to the log are
    /// one job of the log writer (docs/BENCHMARKS.md, "Levers at 2,000 sends/s", "Group
    /// commit across rooms").
    async fn sequence_plain(&self, sends: Vec<PendingSend>, ts: u64, started: std::time::Instant) -> Option<Batch> {
        let entries: Vec<(EntryKind, String)> =
            sends.iter().map(|send| events::plain_entry(&self.node, self.room, &send.message)).collect();
        let (room, epoch, next_seq) = (self.room, self.epoch, self.next_seq);
        let stage = move |log: &RoomLog, staged: &mut Staged<'_>| {
            let keys: Vec<(UserId, String)> = sends.iter().map(PendingSend::dedupe_key).collect();
            let stored = match log.dedupe_many(room, &keys) {
                Ok(stored) => stored,
                Err(e) => return Err((sends, e)),
            };
            let mut sequenced = Sequencer::new(next_seq, ts);
            for ((send, (kind, text)), stored) in sends.into_iter().zip(entries).zip(stored) {
                if let Some(send) = sequenced.duplicate(send, stored) {
                    sequenced.append(send, kind, text);
                }
            }
            record_hop("sequence", started);
            let appended = if sequenced.messages.is_empty() {
                Ok(Fenced::Done(()))
            } else {
                log.stage_append_at(staged, epoch, &sequenced.messages)
            };
            Ok((sequenced, appended, std::time::Instant::now()))
        };
        // The append is on disk only if the group's write succeeded.
        let outcome = self
            .node
            .log
            .write_grouped(room, stage, |_, staged, written| {
                Ok(staged.map(|(sequenced, appended, writing)| {
                    record_hop("fsync", writing);
                    (sequenced, appended.and_then(|fenced| written.map(|()| fenced)))
                }))
            })
            .await;
        let (sequenced, appended) = match outcome {
            Ok(Ok(done)) => done,
            Ok(Err((sends, e))) => {
                fail_all(sends, NodeError::Internal(e.to_string()));
                return None;
            }
            Err(e) => {
                // The writer lost the job (it stopped, or staging this batch panicked):
                // treat what the log holds as unknown and sync the replica from it again
                // before the next batch (as after a failed persist). Its sends went with
                // it; their senders hear that the room moved, and retry.
                tracing::warn!(room, error = %e, "the log writer lost a batch; syncing again");
                self.flags.set_ready(false);
                return None;
            }
        };
        let appended = match appended {
            Ok(Fenced::Done(())) => Ok(()),
            Ok(Fenced::Stale { .. }) => Err(self.moved()),
            Err(e) => Err(NodeError::Internal(e.to_string())),
        };
        Some(Batch { sequenced, appended: Some(appended), deletes: false })
    }

    /// Writes a sequenced batch to this node's log.
    async fn persist(&self, messages: &[StoredMessage]) -> Result<(), NodeError> {
        let (epoch, batch) = (self.epoch, messages.to_vec());
        let writing = std::time::Instant::now();
        let appended = self
            .node
            .log
            .write_grouped(
                self.room,
                move |log, staged| log.stage_append_at(staged, epoch, &batch),
                |_, appended, written| appended.and_then(|fenced| written.map(|()| fenced)),
            )
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        if let Fenced::Stale { .. } = appended {
            return Err(self.moved());
        }
        record_hop("fsync", writing);
        Ok(())
    }

    /// Copies a batch this log holds to the replica and waits until it is on its disk.
    async fn replicate(&self, messages: &[StoredMessage]) -> Result<(), NodeError> {
        let Some(replica) = self.node.replica_of(self.room) else { return Ok(()) };
        let request = MeshRequest::Replicate {
            room: self.room,
            epoch: self.epoch,
            prev: self.last_stamp.clone(),
            committed: self.flags.committed.get().unwrap_or(0),
            messages: messages.to_vec(),
        };
        let replicating = std::time::Instant::now();
        match self.node.mesh_request(replica, request, REPLICATION_TIMEOUT).await? {
            MeshResponse::Stored { .. } => {
                record_hop("replicate", replicating);
                Ok(())
            }
            other => match NodeError::from_response(other) {
                NodeError::StaleEpoch => Err(self.moved()),
                error => Err(error),
            },
        }
    }

    /// Erases the text of messages whose delete is committed now, here and (by telling it
    /// the new commit point in an empty `Replicate`) on the replica (docs/REPLICATION.md,
    /// "Message events"). A replica that misses this learns the commit point with the
    /// next batch.
    async fn redact(&self) {
        let Some(committed) = self.flags.committed.get() else { return };
        let (log, room) = (self.node.log.clone(), self.room);
        match blocking(move || log.redact_committed(room, committed)).await {
            Ok(0) => return,
            Ok(redacted) => tracing::debug!(room, redacted, "erased deleted messages"),
            Err(e) => {
                tracing::warn!(room, error = %e, "cannot erase deleted messages yet; retrying with the next commit");
                return;
            }
        }
        let Some(replica) = self.node.replica_of(room) else { return };
        let request = MeshRequest::Replicate {
            room,
            epoch: self.epoch,
            prev: self.last_stamp.clone(),
            committed,
            messages: vec![],
        };
        if let Err(e) = self.node.mesh_request(replica, request, REPLICATION_TIMEOUT).await {
            tracing::debug!(room, replica, error = %e, "the replica erases with the next batch");
        }
    }

    /// Tells the replica the commit point in an empty `Replicate` once the room has been
    /// quiet for [`QUIET_COMMIT_NOTICE`] since a commit it was not told of: each batch's
    /// `Replicate` carries the commit point before that batch, so without this the replica
    /// of a quiet room would serve reads one batch short for good (docs/REPLICATION.md,
    /// "Reads"). A replica that misses it learns the commit point with the next batch.
    /// Called once `notice_due` has passed.
    async fn tell_quiet_commit(&mut self) {
        self.notice_due = None;
        let Some(committed) = self.flags.committed.get().filter(|committed| *committed > self.replica_told) else {
            return;
        };
        let Some(replica) = self.node.replica_of(self.room) else { return };
        let request = MeshRequest::Replicate {
            room: self.room,
            epoch: self.epoch,
            prev: self.last_stamp.clone(),
            committed,
            messages: vec![],
        };
        match self.node.mesh_request(replica, request, BACKFILL_TIMEOUT).await {
            Ok(MeshResponse::Stored { .. }) => self.replica_told = committed,
            Ok(other) => match NodeError::from_response(other) {
                NodeError::StaleEpoch => {
                    let _ = self.moved();
                }
                error => {
                    tracing::debug!(room = self.room, replica, %error, "the replica learns the commit point later")
                }
            },
            Err(e) => {
                tracing::debug!(room = self.room, replica, error = %e, "the replica learns the commit point later")
            }
        }
    }

    /// A newer epoch holds the room (a drain or a failover this node has not heard of
    /// yet): learn the new routing table now and tell the sender to retry, which sends to
    /// the new owner.
    fn moved(&self) -> NodeError {
        let node = self.node.clone();
        tokio::spawn(async move { node.refresh_routes().await });
        NodeError::Unavailable("the room moved to another node; retry".into())
    }

    /// Records which users of `node` follow the room. A node that just started following
    /// gets the room's newest message, so its sessions notice anything they missed while
    /// the owner moved, and the room's presence (a node keeps presence only while it has
    /// followers); the other nodes get presence again only when it changed.
    async fn set_interest(&mut self, node: NodeId, users: Vec<String>) {
        let newcomer = !users.is_empty() && !self.interest.contains_key(&node);
        if users.is_empty() {
            self.interest.remove(&node);
        } else {
            self.interest.insert(node, users);
        }
        if newcomer {
            self.show_newest(&[node]).await;
        }
        self.announce_presence(newcomer.then_some(node));
    }

    /// Sends every follower the room's presence if it changed: the users of the following
    /// nodes that are up in this node's routing table (a node the catalog calls down has
    /// closed its sessions, or is closing them, and cannot say so). When it did not
    /// change, a `newcomer` node still gets it (a node keeps presence only while it has
    /// followers). A change within [`PRESENCE_EVERY`] of the last frame waits for the
    /// time to be up (`presence_due`, then this again): the followers get the list as it
    /// is then, or nothing if it came back to what they have; a newcomer gets it at once.
    fn announce_presence(&mut self, newcomer: Option<NodeId>) {
        let routes = self.node.routes();
        let is_up = |node: &NodeId| *node == self.node.id || routes.nodes.get(node).is_none_or(|route| route.up);
        let everyone: BTreeSet<String> =
            self.interest.iter().filter(|(node, _)| is_up(node)).flat_map(|(_, users)| users.iter().cloned()).collect();
        let changed = everyone != self.presence;
        if !changed && newcomer.is_none() {
            self.presence_due = None;
            return;
        }
        let frame = ServerFrame::Presence { room: self.room, users: everyone.iter().cloned().collect() };
        let frames = vec![(0, frame_json(&frame))];
        let now = tokio::time::Instant::now();
        let too_soon = self.presence_sent.map(|sent| sent + PRESENCE_EVERY).filter(|next| *next > now);
        match (newcomer, too_soon) {
            (Some(node), _) if !changed => self.node.deliver_to(node, self.room, frames, 0),
            (newcomer, Some(next)) => {
                self.presence_due = Some(next);
                if let Some(node) = newcomer {
                    self.node.deliver_to(node, self.room, frames, 0);
                }
            }
            (_, None) => {
                self.fan_out(frames, 0);
                self.presence = everyone;
                self.presence_sent = Some(now);
                self.presence_due = None;
            }
        }
    }

    /// Sends the presence that waited for [`PRESENCE_EVERY`], once `presence_due` passed.
    fn presence_if_due(&mut self) {
        if self.presence_due.is_some_and(|due| due <= tokio::time::Instant::now()) {
            self.presence_due = None;
            self.announce_presence(None);
        }
    }

    /// Delivers the room's newest committed message (read once) to each of `nodes`: their
    /// sessions notice any message they missed (a gap) and fetch it. Only an acknowledged
    /// message is shown (docs/REPLICATION.md, "Reads").
    async fn show_newest(&self, nodes: &[NodeId]) {
        if nodes.is_empty() {
            return;
        }
        let Some(last) = self.flags.committed.get().filter(|last| *last > 0) else { return };
        let (log, room) = (self.node.log.clone(), self.room);
        if let Ok(newest) = blocking(move || log.after(room, last - 1, 1)).await {
            let fresh = MessageState::default();
            let frames: Vec<(Seq, String)> = newest
                .iter()
                .map(|m| (m.seq, frame_json(&ServerFrame::Message(chat_message(room, m, &fresh)))))
                .collect();
            for node in nodes {
                self.node.deliver_to(*node, room, frames.clone(), 0);
            }
        }
    }

    /// One delivery per subscribed node, carrying the same serialised frames;
    /// `sequenced_ms` as in [`MeshRequest::Deliver`](crate::protocol::MeshRequest::Deliver).
    fn fan_out(&self, frames: Vec<(Seq, String)>, sequenced_ms: u64) {
        for node in self.interest.keys() {
            self.node.deliver_to(*node, self.room, frames.clone(), sequenced_ms);
        }
    }
}

/// Records one hop of the message path in `districhat_hop_seconds{hop}` (docs/BENCHMARKS.md,
/// "Where the time goes").
pub fn record_hop(hop: &'static str, since: std::time::Instant) {
    metrics::histogram!("districhat_hop_seconds", "hop" => hop).record(since.elapsed().as_secs_f64());
}

/// One batch, sequenced: its entries and answers, whether it was written to the log
/// already (and how that went), whether it deletes messages.
struct Batch {
    sequenced: Sequencer,
    appended: Option<Result<(), NodeError>>,
    deletes: bool,
}

fn fail_all(sends: Vec<PendingSend>, error: NodeError) {
    for send in sends {
        let _ = send.reply.send(Err(error.clone()));
    }
}

/// The browser view of a log entry with its folded state (a live entry: the default).
pub fn chat_message(room: RoomId, m: &StoredMessage, state: &MessageState) -> ChatMessage {
    let (kind, target, emoji, on, reply_to, mentions) = match &m.kind {
        EntryKind::Message { reply_to, mentions } => {
            (EntryKindName::Message, None, None, None, *reply_to, mentions.clone())
        }
        EntryKind::Edit { target } => (EntryKindName::Edit, Some(*target), None, None, None, Vec::new()),
        EntryKind::Delete { target } => (EntryKindName::Delete, Some(*target), None, None, None, Vec::new()),
        EntryKind::React { target, emoji, on } => {
            (EntryKindName::Reaction, Some(*target), Some(emoji.clone()), Some(*on), None, Vec::new())
        }
        EntryKind::System => (EntryKindName::System, None, None, None, None, Vec::new()),
    };
    ChatMessage {
        room,
        seq: m.seq,
        id: format!("{room}:{}", m.seq),
        sender: m.sender.clone(),
        sender_id: m.sender_id,
        text: m.text.clone(),
        ts: m.ts,
        client_id: Some(m.client_id.clone()),
        kind,
        target,
        emoji,
        on,
        reply_to,
        mentions,
        edited: state.edited,
        deleted: state.deleted,
        reactions: state
            .reactions
            .iter()
            .map(|(emoji, users)| ReactionCount { emoji: emoji.clone(), users: users.clone() })
            .collect(),
        replies: state.replies,
        last_reply: state.last_reply,
    }
}

/// The browser view of an entry a read returned.
pub fn read_message(room: RoomId, read: &ReadMessage) -> ChatMessage {
    chat_message(room, &read.message, &read.state)
}

/// Serialises a server frame (our own types cannot fail to serialise).
pub fn frame_json(frame: &ServerFrame) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

/// Runs a blocking RocksDB call off the async runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, NodeError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| NodeError::Internal(e.to_string())),
        Err(e) => Err(NodeError::Internal(format!("storage task failed: {e}"))),
    }
}
