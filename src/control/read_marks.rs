//! Read positions ("I have read room R up to message N"), kept per user in the catalog so
//! unread counts follow a person across browsers and devices.
//!
//! A page reports what its user has read with `POST /api/read-marks`
//! (`control/http/read_marks.rs`). The member that gets the report keeps the newest mark
//! per (user, room) in memory and, a second later, writes everything it holds as ONE
//! catalog command ([`Command::MarkRead`]): at most one Raft write per member per
//! second, however many messages people read. Reads
//! (`GET /api/read-marks` and the badges on the dashboard and room pages) merge the
//! applied catalog with this member's unwritten marks, so a page sees its own marks at
//! once; other members see them after the flush. A flush that fails (no leader) keeps its
//! marks and is retried with the next report; a mark lost with a crashed member only
//! makes a few messages count as unread again (the browser also keeps marks locally).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::catalog::{Catalog, Command, ReadMark, RoomId, UserId};
use super::write::Writer;

/// How long marks gather before they are written together.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// This member's marks that are not in the catalog yet.
#[derive(Default)]
pub struct ReadMarks {
    /// Newest unwritten seq per (user, room). Entries stay until a flush has written
    /// them, so reads never miss a mark that is in flight. A `std` lock: never held
    /// across an `.await`.
    pending: Mutex<HashMap<(UserId, RoomId), u64>>,
    /// A flush is scheduled and has not started yet: reports arriving meanwhile ride on
    /// it. (A slow flush may overlap the next one; marks only move forward, so writing
    /// one twice is harmless.)
    flush_scheduled: AtomicBool,
}

impl ReadMarks {
    /// Buffers `marks` and makes sure a flush is coming.
    pub fn record(self: &Arc<Self>, writer: &Writer, marks: impl IntoIterator<Item = ReadMark>) {
        {
            let mut pending = self.pending();
            for ReadMark { user, room, seq } in marks {
                let newest = pending.entry((user, room)).or_insert(0);
                *newest = (*newest).max(seq);
            }
        }
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (marks, writer) = (Arc::clone(self), writer.clone());
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_EVERY).await;
            marks.flush_scheduled.store(false, Ordering::Release);
            marks.flush(&writer).await;
        });
    }

    /// Writes every pending mark in one command; forgets the ones that were written.
    async fn flush(&self, writer: &Writer) {
        let batch: Vec<ReadMark> =
            self.pending().iter().map(|(&(user, room), &seq)| ReadMark { user, room, seq }).collect();
        if batch.is_empty() {
            return;
        }
        let count = batch.len();
        match writer.write(Command::MarkRead { marks: batch.clone() }).await {
            Ok(_) => {
                let mut pending = self.pending();
                for mark in batch {
                    // A newer mark that arrived during the write stays for the next flush.
                    if pending.get(&(mark.user, mark.room)).is_some_and(|seq| *seq <= mark.seq) {
                        pending.remove(&(mark.user, mark.room));
                    }
                }
                metrics::counter!("districhat_read_marks_written_total").increment(count as u64);
            }
            Err(e) => tracing::warn!(marks = count, error = %e, "read marks not written; kept for the next flush"),
        }
    }

    /// `user`'s marks: the catalog's, raised by this member's unwritten ones.
    pub fn for_user(&self, catalog: &Catalog, user: UserId) -> BTreeMap<RoomId, u64> {
        let mut marks: BTreeMap<RoomId, u64> =
            catalog.read_marks.range((user, 0)..=(user, RoomId::MAX)).map(|(&(_, room), &seq)| (room, seq)).collect();
        for (&(owner, room), &seq) in self.pending().iter() {
            if owner == user {
                let newest = marks.entry(room).or_insert(0);
                *newest = (*newest).max(seq);
            }
        }
        marks
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<(UserId, RoomId), u64>> {
        // A poisoned map is still a valid map of marks.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
