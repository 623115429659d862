//! The node's handle on the owner of one room it owns: the flags the heartbeat and reads
//! look at, and the owner's task with its queue, or none while the owner is parked.
//!
//! A dormant owner (docs/REPLICATION.md, "Dormant owners") that nobody follows and nobody
//! writes to ends its task and leaves only this handle: the flags of an owner that has not
//! taken the room over. A node keeps an owner for every room it owns, and most rooms of a
//! large node are idle, so a parked room costs a handle instead of a task and a queue
//! (docs/BENCHMARKS.md, "The memory of an idle room"). A send or a follower for a parked
//! room starts a task again, in the same dormant state (news it has nothing to do with is
//! dropped); see "Parked owners" in REPLICATION.md for why nothing else changes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::owner::{Owner, OwnerCommand};
use super::Node;
use crate::protocol::{RoomId, Seq};

/// Commands an owner's queue holds before a sender waits.
const QUEUE: usize = 4_096;

/// The node's handle on the owner of one room.
pub struct OwnerHandle {
    pub room: RoomId,
    pub epoch: u64,
    /// What the owner's task shares with the node.
    flags: OwnerFlags,
    /// The running task and its queue; `None` while the owner is parked.
    task: Option<OwnerTask>,
}

/// What an owner's task shares with its handle. Each change of a flag the heartbeat reads
/// counts in the node's [`ReportGeneration`], so an unchanged node reuses its last report.
#[derive(Clone)]
pub(super) struct OwnerFlags {
    /// Set once the owner took the room over (its replica adopted the epoch and holds the
    /// log's newest entry): from then on it takes sends. Heartbeats count the owners still
    /// without it.
    ready: Arc<AtomicBool>,
    /// Set once the replica holds the whole log (no background copy left): what makes the
    /// owner report it in sync (docs/REPLICATION.md, I9).
    replica_complete: Arc<AtomicBool>,
    /// Set while the owner of a room whose log is empty on both nodes waits for the
    /// room's first send to take it over (docs/REPLICATION.md, "Dormant owners"):
    /// not ready, yet nothing to sync. Also what tells a task its own handle.
    dormant: Arc<AtomicBool>,
    /// The commit point (see [`CommitPoint`]).
    pub committed: CommitPoint,
    generation: ReportGeneration,
}

impl OwnerFlags {
    fn new(generation: ReportGeneration) -> Self {
        Self {
            ready: Arc::default(),
            replica_complete: Arc::default(),
            dormant: Arc::default(),
            committed: CommitPoint::default(),
            generation,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_dormant(&self) -> bool {
        self.dormant.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.generation.advance();
    }

    pub fn set_replica_complete(&self, complete: bool) {
        self.replica_complete.store(complete, Ordering::Release);
        self.generation.advance();
    }

    pub fn set_dormant(&self, dormant: bool) {
        self.dormant.store(dormant, Ordering::Release);
        self.generation.advance();
    }

    /// Whether `other` is the same owner's flags (not a later epoch's).
    fn same_owner(&self, other: &OwnerFlags) -> bool {
        Arc::ptr_eq(&self.dormant, &other.dormant)
    }
}

/// Counts the changes to what a node's heartbeat report reads besides the routing table:
/// its owner handles (started, removed) and their flags. Advanced after each change, so a
/// report computed after reading a count saw every change counted up to it.
#[derive(Clone, Default)]
pub struct ReportGeneration(Arc<AtomicU64>);

impl ReportGeneration {
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A running owner task: its queue, and the task to stop when the handle goes.
struct OwnerTask {
    tx: mpsc::Sender<OwnerCommand>,
    /// `None` once the task ended on its own (parked).
    abort: Option<tokio::task::AbortHandle>,
}

impl Drop for OwnerTask {
    fn drop(&mut self) {
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
    }
}

impl OwnerHandle {
    /// Starts owning `room` at `epoch`: a task that takes the room over in the background,
    /// or, if its log turns out empty on both nodes (`replica_in_sync` and nothing here),
    /// waits for the first send (docs/REPLICATION.md, "Dormant owners").
    pub fn spawn(node: &Node, room: RoomId, epoch: u64, replica_in_sync: bool) -> Self {
        let mut handle = Self { room, epoch, flags: OwnerFlags::new(node.report_generation.clone()), task: None };
        handle.task = Some(handle.start_task(node, replica_in_sync));
        handle
    }

    fn start_task(&self, node: &Node, replica_in_sync: bool) -> OwnerTask {
        let (tx, rx) = mpsc::channel(QUEUE);
        let owner = Owner::new(node.clone(), self.room, self.epoch, &self.flags);
        let task = tokio::spawn(owner.run(rx, replica_in_sync));
        OwnerTask { tx, abort: Some(task.abort_handle()) }
    }

    /// The owner's queue, with a task again if it was parked: the task starts dormant,
    /// as the parked owner was (docs/REPLICATION.md, "Parked owners").
    pub fn queue(&mut self, node: &Node) -> &mpsc::Sender<OwnerCommand> {
        let task = match self.task.take() {
            Some(task) => task,
            None => self.start_task(node, false),
        };
        &self.task.insert(task).tx
    }

    /// The queue of a running task, without starting one: for news a parked owner has
    /// nothing to do with (typing, a node that stopped following or came back: it has
    /// no followers to tell and no message to show).
    pub fn running_queue(&self) -> Option<&mpsc::Sender<OwnerCommand>> {
        self.task.as_ref().map(|task| &task.tx)
    }

    /// Parks the owner whose task shares `flags` and drains `queue`, if it may: the
    /// handle is that task's (not a newer epoch's), no sender but the handle's exists, and
    /// nothing waits in the queue. Call with the owners' lock held: the handle's own
    /// sender is used only under it, and a clone is only made under it, so once the count
    /// shows no clone, none can appear. The count is read first: a clone's value may be
    /// half written while `is_empty` looks, but a clone dropped before the count was read
    /// has finished writing (the count's release and acquire order it), so `is_empty` then
    /// sees its command. The caller's task then ends.
    pub(super) fn park(&mut self, flags: &OwnerFlags, queue: &mpsc::Receiver<OwnerCommand>) -> bool {
        if !self.flags.same_owner(flags) || queue.sender_strong_count() > 1 || !queue.is_empty() {
            return false;
        }
        if let Some(mut task) = self.task.take() {
            // The task is the caller, and ends by itself.
            task.abort = None;
        }
        true
    }

    /// Whether the owner has synced its replica and takes sends.
    pub fn is_ready(&self) -> bool {
        self.flags.is_ready()
    }

    /// Whether the owner's replica holds its whole log: ready, and no background copy
    /// left.
    pub fn replica_complete(&self) -> bool {
        self.is_ready() && self.flags.replica_complete.load(Ordering::Acquire)
    }

    /// Whether the owner waits for the room's first send before it takes the room over
    /// (docs/REPLICATION.md, "Dormant owners"), parked or not.
    pub fn is_dormant(&self) -> bool {
        self.flags.is_dormant()
    }

    /// The highest seq known to be acknowledged (`None` until the owner first took the
    /// room over): what reads of this room may return (docs/REPLICATION.md, "Reads").
    pub fn committed(&self) -> Option<Seq> {
        self.flags.committed.get()
    }
}

/// An owner's commit point: every message up to it is on the owner's and (with two
/// copies) the replica's disk. It only grows within an epoch. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct CommitPoint(Arc<AtomicU64>);

impl CommitPoint {
    /// Stored as seq + 1, so 0 means "not known yet".
    pub fn get(&self) -> Option<Seq> {
        self.0.load(Ordering::Acquire).checked_sub(1)
    }

    pub fn set(&self, seq: Seq) {
        self.0.fetch_max(seq + 1, Ordering::AcqRel);
    }
}
