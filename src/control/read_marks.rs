//! Read positions ("I have read room R up to message N"), kept per user in the catalog so
//! unread counts follow a person across browsers and devices.
//!
//! A page reports what its user has read with `POST /api/read-marks`. The member that
//! gets the report keeps the newest mark per (user, room) in memory and, a second later,
//! writes everything it holds as ONE catalog command ([`Command::MarkRead`]): at most one
//! Raft write per member per second, however many messages people read. Reads
//! (`GET /api/read-marks` and the badges on the dashboard and room pages) merge the
//! applied catalog with this member's unwritten marks, so a page sees its own marks at
//! once; other members see them after the flush. A flush that fails (no leader) keeps its
//! marks and is retried with the next report; a mark lost with a crashed member only
//! makes a few messages count as unread again (the browser also keeps marks locally).
//!
//! | method path | auth | body → answer |
//! |---|---|---|
//! | `GET /api/read-marks` | session | `{marks: {"ROOM": SEQ, ...}}` for the caller |
//! | `POST /api/read-marks` | session | `{marks: [{room, seq}]}` → 202 `{accepted, skipped}` |
//!
//! A mark for a room the caller is not a member of (on this member's catalog, which may
//! lag a join made through another member by a moment) is skipped, not an error for the
//! whole batch: `skipped` lists those rooms, so the page can report them again later.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Command, ReadMark, RoomId, UserId};
use super::http::error::{ApiError, ApiJson};
use super::http::rooms::current_user;
use super::raft::state_machine::read_state;
use super::write::Writer;
use super::AppState;

/// How long marks gather before they are written together.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Most marks one request may carry.
const MAX_MARKS_PER_REQUEST: usize = 500;

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

/// The two endpoints; `marks` is this member's buffer (shared with the pages).
pub fn routes(marks: Arc<ReadMarks>) -> Router<AppState> {
    Router::new().route("/api/read-marks", get(list).post(report)).layer(Extension(marks))
}

#[derive(Serialize)]
struct MarksView {
    marks: BTreeMap<RoomId, u64>,
}

/// `GET /api/read-marks`.
async fn list(
    State(app): State<AppState>,
    Extension(marks): Extension<Arc<ReadMarks>>,
    headers: HeaderMap,
) -> Result<Json<MarksView>, ApiError> {
    let user = current_user(&app, &headers)?;
    let state = read_state(&app.state);
    Ok(Json(MarksView { marks: marks.for_user(&state.catalog, user) }))
}

#[derive(Deserialize)]
struct Report {
    marks: Vec<RoomMark>,
}

#[derive(Deserialize)]
struct RoomMark {
    room: RoomId,
    seq: u64,
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    /// Rooms whose marks were not taken: the caller is not (yet, on this member) in them.
    skipped: Vec<RoomId>,
}

/// `POST /api/read-marks`: JSON only, so a cross-site form cannot post it (no CSRF token
/// needed, like the rest of the JSON API).
async fn report(
    State(app): State<AppState>,
    Extension(marks): Extension<Arc<ReadMarks>>,
    headers: HeaderMap,
    ApiJson(report): ApiJson<Report>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let user = current_user(&app, &headers)?;
    if report.marks.len() > MAX_MARKS_PER_REQUEST {
        let message = format!("at most {MAX_MARKS_PER_REQUEST} marks per request");
        return Err(ApiError::bad_request("too_many_marks", message));
    }
    let (taken, refused): (Vec<RoomMark>, Vec<RoomMark>) = {
        let state = read_state(&app.state);
        report.marks.into_iter().partition(|mark| state.catalog.is_member(mark.room, user))
    };
    let accepted = taken.len();
    let skipped = refused.into_iter().map(|mark| mark.room).collect();
    marks.record(&app.writer, taken.into_iter().map(|RoomMark { room, seq }| ReadMark { user, room, seq }));
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted, skipped })))
}
