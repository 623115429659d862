//! `GET,POST /api/read-marks`: a user's read positions ("I have read room R up to message
//! N"), buffered per member by [`ReadMarks`] and written to the catalog once a second.
//!
//! | method path | auth | body → answer |
//! |---|---|---|
//! | `GET /api/read-marks` | session | `{marks: {"ROOM": SEQ, ...}}` for the caller |
//! | `POST /api/read-marks` | session | `{marks: [{room, seq}]}` → 202 `{accepted, skipped}` |
//!
//! A mark for a room the caller is not a member of (or is banned from) (on this member's catalog, which may
//! lag a join made through another member by a moment) is skipped, not an error for the
//! whole batch: `skipped` lists those rooms, so the page can report them again later.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::extractor::AuthUser;
use crate::control::catalog::{ReadMark, RoomId};
use crate::control::raft::state_machine::read_state;
use crate::control::read_marks::ReadMarks;
use crate::control::AppState;

/// Most marks one request may carry.
const MAX_MARKS_PER_REQUEST: usize = 500;

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
    AuthUser(user): AuthUser,
) -> Json<MarksView> {
    let state = read_state(&app.state);
    Json(MarksView { marks: marks.for_user(&state.catalog, user) })
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
    AuthUser(user): AuthUser,
    ApiJson(report): ApiJson<Report>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    if report.marks.len() > MAX_MARKS_PER_REQUEST {
        let message = format!("at most {MAX_MARKS_PER_REQUEST} marks per request");
        return Err(ApiError::bad_request("too_many_marks", message));
    }
    let (taken, refused): (Vec<RoomMark>, Vec<RoomMark>) = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        report
            .marks
            .into_iter()
            .partition(|mark| catalog.is_member(mark.room, user) && !catalog.is_banned(mark.room, user))
    };
    let accepted = taken.len();
    let skipped = refused.into_iter().map(|mark| mark.room).collect();
    marks.record(&app.writer, taken.into_iter().map(|RoomMark { room, seq }| ReadMark { user, room, seq }));
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted, skipped })))
}
