//! The node's log writer: one thread that writes the hot path's batches (an owner's
//! append, a replica's store) of every room waiting at that moment as one RocksDB write
//! and one fsync: group commit across rooms (docs/BENCHMARKS.md, "Group commit across
//! rooms"; docs/REPLICATION.md, "Group commit").
//!
//! A job *stages* its writes (reads the log, checks the fence, adds to the group's write
//! batch) with its room's fence lock held, and the thread keeps every lock it took until
//! the group is on disk. So the rule of the fence locks (a write passes its fence check
//! and lands before any other write of the room can check) holds for a grouped write as
//! for a direct one. A group holds each room once: a second job of a room waits for the
//! next group, so a job's reads never miss an earlier job's writes.
//!
//! The lock rule this relies on: only the writer ever holds two fence locks, and nothing
//! that holds one waits for the writer. So a stage must not call anything that takes a
//! fence lock (the `*_at` methods, `take_epoch`, `redact_committed`): the writer may hold
//! that lock already, and std mutexes do not re-enter. A `then` may, since it runs after
//! the locks are released. The cost of the rule: a job whose stripe another thread holds
//! (an owner change truncating a log) waits for it, and the group with it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, MutexGuard};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions};

use super::{RoomLog, FENCE_STRIPES};
use crate::protocol::RoomId;
use crate::store::StoreError;

/// At most this many jobs share one write: a bound on the group's batch and on how long
/// its first job waits for the others to be staged.
const MAX_GROUP: usize = 128;

/// A job's writes for one room, added to its group's batch. Only the writer makes one,
/// with the room's fence lock held: the `stage_*` methods of [`RoomLog`] take it, so they
/// cannot run without the lock.
pub struct Staged<'a> {
    pub(super) room: RoomId,
    pub(super) batch: &'a mut WriteBatch,
    /// A `stage_*` method failed. If it had staged part of its writes by then, the group
    /// is not written (a batch has no save points to undo a part).
    pub(super) spoiled: bool,
}

impl<'a> Staged<'a> {
    /// Stages `room`'s writes into `batch` (a group's, or a direct write's own).
    pub(super) fn new(room: RoomId, batch: &'a mut WriteBatch) -> Self {
        Self { room, batch, spoiled: false }
    }

    /// Notes a `stage_*` method's outcome: an error after something was staged spoils the
    /// group.
    pub(super) fn check<T>(&mut self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        self.spoiled |= outcome.is_err();
        outcome
    }
}

/// What a job does once its group's write is done (or failed): runs on the writer
/// thread after the locks are released, so it may use the log like any blocking call.
type Finish = Box<dyn FnOnce(&RoomLog, Result<(), StoreError>) + Send>;
type Stage = Box<dyn FnOnce(&RoomLog, &mut Staged<'_>) -> Finish + Send>;

struct Job {
    room: RoomId,
    stage: Stage,
}

/// The writer thread of one [`RoomLog`]; stopping it (dropping the last clone of the
/// log) waits until it has written every job queued by then.
pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread; `log` is the thread's own copy (it has no writer).
    pub(super) fn start(log: RoomLog) -> std::io::Result<Self> {
        let (jobs, waiting) = mpsc::channel();
        let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || {
            // A panic outside a job's own code (those are caught per job) would leave every
            // later write waiting forever: write on instead. The jobs of the group it hit
            // hear `WriterLost`.
            while catch_unwind(AssertUnwindSafe(|| run(&log, &waiting))).is_err() {
                tracing::error!("the log writer panicked; it goes on with the next jobs");
            }
        })?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Queues a job; `false` if the thread is gone.
    pub(super) fn submit(&self, room: RoomId, stage: Stage) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job { room, stage }).is_ok())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // The last copy of the log may go with a job on the writer thread itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl RoomLog {
    /// Runs `stage` on the log's writer thread with the room's fence lock held, then
    /// writes what it staged together with every other room's waiting writes (one
    /// write, fsynced if configured), then runs `then` with the outcome of that write,
    /// after the lock is released. What `stage` staged is on disk only if the outcome is
    /// `Ok`. Err if the writer has stopped or lost the job. `stage` must not take a fence
    /// lock (see the module docs); `then` may.
    pub async fn write_grouped<S, T>(
        &self,
        room: RoomId,
        stage: impl FnOnce(&RoomLog, &mut Staged<'_>) -> S + Send + 'static,
        then: impl FnOnce(&RoomLog, S, Result<(), StoreError>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError>
    where
        S: Send + 'static,
        T: Send + 'static,
    {
        let (reply, done) = tokio::sync::oneshot::channel();
        let submitted = self.writer.as_ref().is_some_and(|writer| {
            writer.submit(
                room,
                Box::new(move |log: &RoomLog, staged: &mut Staged<'_>| {
                    let value = stage(log, staged);
                    Box::new(move |log: &RoomLog, written| {
                        let _ = reply.send(then(log, value, written));
                    })
                }),
            )
        });
        if !submitted {
            return Err(StoreError::WriterLost);
        }
        done.await.unwrap_or(Err(StoreError::WriterLost))
    }
}

fn run(log: &RoomLog, jobs: &mpsc::Receiver<Job>) {
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut group = Group::new(log);
        group.stage(first);
        while !group.abandoned && group.finishes.len() < MAX_GROUP {
            let Ok(job) = jobs.try_recv() else { break };
            if group.rooms.contains(&job.room) {
                next = Some(job);
                break;
            }
            group.stage(job);
        }
        group.commit();
    }
}

/// The jobs staged for one write.
struct Group<'a> {
    log: &'a RoomLog,
    batch: WriteBatch,
    rooms: Vec<RoomId>,
    finishes: Vec<Finish>,
    locks: Vec<Option<MutexGuard<'a, ()>>>,
    /// A stage panicked or failed: what it staged may be half a batch, so nothing is
    /// written.
    abandoned: bool,
}

impl<'a> Group<'a> {
    fn new(log: &'a RoomLog) -> Self {
        Self {
            log,
            batch: WriteBatch::default(),
            rooms: Vec::new(),
            finishes: Vec::new(),
            locks: (0..FENCE_STRIPES).map(|_| None).collect(),
            abandoned: false,
        }
    }

    fn stage(&mut self, job: Job) {
        let stripe = RoomLog::stripe(job.room);
        if self.locks[stripe].is_none() {
            self.locks[stripe] = Some(self.log.fence_lock(job.room));
        }
        self.rooms.push(job.room);
        let staged_before = self.batch.len();
        let mut staged = Staged::new(job.room, &mut self.batch);
        let log = self.log;
        match catch_unwind(AssertUnwindSafe(|| (job.stage)(log, &mut staged))) {
            Ok(finish) => {
                // A stage that failed before staging anything fails alone (its job hears
                // its error); one that failed halfway spoils the group.
                if staged.spoiled && self.batch.len() > staged_before {
                    tracing::warn!(room = job.room, "staging a log write failed halfway; its group is not written");
                    self.abandoned = true;
                }
                self.finishes.push(finish);
            }
            Err(_) => {
                tracing::error!(room = job.room, "staging a log write panicked; its group is not written");
                self.abandoned = true;
            }
        }
    }

    fn commit(mut self) {
        let jobs = self.finishes.len();
        let written = if self.abandoned {
            Err(None)
        } else if self.batch.is_empty() {
            Ok(())
        } else {
            let mut options = WriteOptions::default();
            options.set_sync(self.log.fsync);
            let batch = std::mem::take(&mut self.batch);
            self.log.db.write_opt(batch, &options).map_err(Some)
        };
        metrics::counter!("districhat_log_group_writes_total").increment(1);
        metrics::counter!("districhat_log_grouped_jobs_total").increment(jobs as u64);
        // Release the fence locks before anything else runs: a finish may take one.
        self.locks.clear();
        for finish in self.finishes {
            let outcome = match &written {
                Ok(()) => Ok(()),
                Err(Some(error)) => Err(StoreError::Rocks(error.clone())),
                Err(None) => Err(StoreError::WriteAbandoned),
            };
            if catch_unwind(AssertUnwindSafe(|| finish(self.log, outcome))).is_err() {
                tracing::error!("finishing a grouped log write panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Sender};

    use super::super::tests::message;
    use super::super::{stamp, Fenced, Replicated};
    use super::*;
    use crate::store::StoreMemory;

    fn open() -> (tempfile::TempDir, RoomLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), true, &StoreMemory::default()).unwrap();
        (dir, log)
    }

    /// Holds the writer inside the stage of a job of room 99 until the returned gate is
    /// opened (sent to or dropped): every job submitted meanwhile is drained into that
    /// job's group. Returns once the writer is inside the stage.
    async fn hold_writer(log: &RoomLog) -> (tokio::task::JoinHandle<()>, Sender<()>) {
        let (inside, entered) = channel();
        let (gate, opened) = channel::<()>();
        let log = log.clone();
        let held = tokio::spawn(async move {
            let stage = move |_: &RoomLog, _: &mut Staged<'_>| {
                let _ = inside.send(());
                let _ = opened.recv();
            };
            // Its outcome is its group's, which the tests assert on their own jobs.
            let _ = log.write_grouped(99, stage, |_, (), written| written).await;
        });
        tokio::task::spawn_blocking(move || entered.recv()).await.unwrap().unwrap();
        (held, gate)
    }

    #[tokio::test]
    async fn a_group_writes_many_rooms_and_a_rooms_second_job_reads_the_first() {
        let (_dir, log) = open();
        let (held, gate) = hold_writer(&log).await;
        // Room 1's second store follows its first: it passes log matching only if it
        // reads the first one's write, so the two must not share a group.
        let first = log.write_grouped(
            1,
            |log, staged| log.stage_replicate_at(staged, 1, None, &[message(1), message(2)]),
            |_, stored, written| written.and(stored),
        );
        let second = log.write_grouped(
            1,
            |log, staged| log.stage_replicate_at(staged, 1, Some(&stamp(&message(2))), &[message(3)]),
            |_, stored, written| written.and(stored),
        );
        // Rooms 65 and 129 share room 1's fence lock stripe; 2..=40 do not.
        let rooms: Vec<RoomId> = (2..=40).chain([65, 129]).collect();
        let others = rooms.iter().map(|&room| {
            log.write_grouped(room, |log, staged| log.stage_append_at(staged, 1, &[message(1)]), |_, a, w| w.and(a))
        });
        // `join!` polls (and so submits) the jobs in order before it opens the gate.
        let open = async move { drop(gate) };
        let (first, second, others, ()) = tokio::join!(first, second, futures_util::future::join_all(others), open);
        held.await.unwrap();
        assert_eq!(first.unwrap(), Fenced::Done(Replicated::Stored));
        assert_eq!(second.unwrap(), Fenced::Done(Replicated::Stored));
        assert!(others.into_iter().all(|appended| appended.unwrap() == Fenced::Done(())));
        assert_eq!(log.last_seq(1).unwrap(), 3);
        assert!(rooms.iter().all(|&room| log.last_seq(room).unwrap() == 1));
    }

    #[tokio::test]
    async fn a_stage_that_fails_halfway_or_panics_keeps_its_whole_group_off_the_disk() {
        let (_dir, log) = open();
        for (good_room, bad_room, spoil) in [(1, 2, true), (3, 4, false)] {
            let (held, gate) = hold_writer(&log).await;
            let good = log.write_grouped(
                good_room,
                |log, staged| log.stage_append_at(staged, 1, &[message(1)]),
                |_, a, w| w.and(a),
            );
            let bad = log.write_grouped(
                bad_room,
                move |log, staged| {
                    let staged_part = log.stage_append_at(staged, 1, &[message(1)]);
                    if !spoil {
                        panic!("a bug while staging");
                    }
                    staged.spoiled = true;
                    staged_part
                },
                |_, a, w| w.and(a),
            );
            let (good, bad, ()) = tokio::join!(good, bad, async move { drop(gate) });
            held.await.unwrap();
            assert!(good.is_err() && bad.is_err(), "every job of the group hears an error");
            assert_eq!(log.last_seq(good_room).unwrap(), 0);
            assert_eq!(log.last_seq(bad_room).unwrap(), 0);
        }
        // The writer still works.
        let appended =
            log.write_grouped(5, |log, staged| log.stage_append_at(staged, 1, &[message(1)]), |_, a, w| w.and(a));
        assert_eq!(appended.await.unwrap(), Fenced::Done(()));
        assert_eq!(log.last_seq(5).unwrap(), 1);
    }

    #[tokio::test]
    async fn a_stage_that_fails_before_staging_anything_fails_alone() {
        let (_dir, log) = open();
        let (held, gate) = hold_writer(&log).await;
        let good =
            log.write_grouped(1, |log, staged| log.stage_append_at(staged, 1, &[message(1)]), |_, a, w| w.and(a));
        let bad = log.write_grouped(
            2,
            |_, staged| staged.check::<()>(Err(StoreError::MissingColumnFamily("a read failed"))),
            |_, failed, written| written.and(failed),
        );
        let (good, bad, ()) = tokio::join!(good, bad, async move { drop(gate) });
        held.await.unwrap();
        assert!(bad.is_err());
        assert_eq!(good.unwrap(), Fenced::Done(()));
        assert_eq!(log.last_seq(1).unwrap(), 1);
    }

    #[tokio::test]
    async fn a_then_may_take_its_rooms_fence_lock() {
        let (_dir, log) = open();
        let redacted = log.write_grouped(
            1,
            |log, staged| log.stage_append_at(staged, 1, &[message(1)]),
            |log, appended, written| {
                written?;
                appended?;
                log.redact_committed(1, 1)
            },
        );
        assert_eq!(redacted.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_dropped_log_stops_its_writer_and_frees_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let log = RoomLog::open(dir.path(), true, &StoreMemory::default()).unwrap();
        let appended =
            log.write_grouped(1, |log, staged| log.stage_append_at(staged, 1, &[message(1)]), |_, a, w| w.and(a));
        assert_eq!(appended.await.unwrap(), Fenced::Done(()));
        drop(log);
        // RocksDB's lock is free again only once the writer's copy is gone too.
        let reopened = RoomLog::open(dir.path(), true, &StoreMemory::default()).unwrap();
        assert_eq!(reopened.last_seq(1).unwrap(), 1);
    }
}
