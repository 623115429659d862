//! Local fan-out: which browser sessions on this node follow which room. The owner sends
//! one batch of pre-serialised frames per node; the hub hands the same bytes to every
//! local subscriber's queue. A subscriber whose queue is full is kicked (it reconnects and
//! resumes with `since`) instead of silently missing frames.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, Notify};

use super::NodeError;
use crate::protocol::{ReadMessage, RoomId, Seq, UserId};

pub type SessionId = u64;

/// What a session's writer receives besides the browser's own frames.
pub enum Outbound {
    /// A frame of a followed room; `seq` 0 for ephemeral frames (typing, presence).
    Room { room: RoomId, seq: Seq, text: Utf8Bytes },
    /// A finished frame for this session only (an ack or an error).
    Frame(String),
    /// The answer to a `history` request (a page or an error): counted against the
    /// session's `limits.reads_in_flight` until the session takes it off its queue.
    History(String),
    /// One page of a catch-up fetch for `room` (counted like `History`).
    CatchUp { room: RoomId, result: Result<CatchUpPage, NodeError> },
    /// The room's owner changed: fetch what may have been missed.
    Resync { room: RoomId },
    /// The user may no longer read the room (banned, or no longer a member of a private
    /// room): leave it and say why with `code`.
    Revoked { room: RoomId, code: &'static str },
}

/// One page of messages a session missed, ascending; `last_seq` is the room's readable
/// end when the page was read. A session asks for the next page only once it wrote this
/// one, so a resume holds at most one page in memory however long the history, and a
/// session has at most `limits.reads_in_flight` pages fetched and not written.
pub struct CatchUpPage {
    pub messages: Vec<ReadMessage>,
    pub has_more: bool,
    pub last_seq: Seq,
}

/// One local follower of a room.
#[derive(Clone)]
pub struct Subscriber {
    pub user_id: UserId,
    pub username: String,
    pub tx: mpsc::Sender<Outbound>,
    /// Woken when the session fell behind and must be disconnected.
    pub kick: Arc<Notify>,
}

/// The local followers of one room, and what this node was delivered for it while they
/// followed: the newest message, and the newest presence frame (for sessions that
/// subscribe later: the owner announces presence to a node when it starts following and
/// when presence changes). Both go with the room's last follower.
#[derive(Default)]
struct Followers {
    members: HashMap<SessionId, Subscriber>,
    newest: Option<(Seq, Utf8Bytes)>,
    presence: Option<Utf8Bytes>,
}

/// Rooms → local subscribers. A std lock, never held across an await.
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<RoomId, Followers>>,
}

/// How a serialised presence frame starts (serde writes the tag first).
const PRESENCE_PREFIX: &str = "{\"type\":\"presence\"";

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Followers>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a subscriber; returns the room's local users afterwards.
    pub fn join(&self, room: RoomId, session: SessionId, subscriber: Subscriber) -> Vec<String> {
        let mut rooms = self.lock();
        let followers = rooms.entry(room).or_default();
        followers.members.insert(session, subscriber);
        users(&followers.members)
    }

    /// Removes a subscriber; returns the room's local users afterwards.
    pub fn leave(&self, room: RoomId, session: SessionId) -> Vec<String> {
        let mut rooms = self.lock();
        let Some(followers) = rooms.get_mut(&room) else { return Vec::new() };
        followers.members.remove(&session);
        let left = users(&followers.members);
        if followers.members.is_empty() {
            rooms.remove(&room);
        }
        left
    }

    /// The local users of a room.
    pub fn users(&self, room: RoomId) -> Vec<String> {
        self.lock().get(&room).map(|followers| users(&followers.members)).unwrap_or_default()
    }

    /// Rooms with at least one local subscriber.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.lock().keys().copied().collect()
    }

    /// The room's newest presence frame, if one was seen.
    pub fn presence(&self, room: RoomId) -> Option<Utf8Bytes> {
        self.lock().get(&room).and_then(|followers| followers.presence.clone())
    }

    /// The newest message frame this node was delivered for the room since it has local
    /// followers: a session starting a catch-up holds it as if it had just come live, so
    /// the catch-up ends no earlier, even when the copy it reads from knows an older commit
    /// point (docs/REPLICATION.md, "Live delivery").
    pub fn newest(&self, room: RoomId) -> Option<(Seq, Utf8Bytes)> {
        self.lock().get(&room).and_then(|followers| followers.newest.clone())
    }

    /// Hands the frames to every local subscriber of the room and records, for live
    /// messages (`sequenced_ms` > 0), the time since the owner sequenced them.
    pub fn deliver(&self, room: RoomId, frames: Vec<(Seq, String)>, sequenced_ms: u64) {
        let _span =
            tracing::debug_span!("deliver", room, first_seq = frames.first().map_or(0, |f| f.0), count = frames.len())
                .entered();
        let frames: Vec<(Seq, Utf8Bytes)> =
            frames.into_iter().map(|(seq, text)| (seq, Utf8Bytes::from(text))).collect();
        // Each follower's queue and kick, not its whole `Subscriber` (no copy of its name).
        let subscribers: Vec<(mpsc::Sender<Outbound>, Arc<Notify>)> = match self.lock().get_mut(&room) {
            Some(followers) => {
                if let Some((seq, text)) = frames.iter().rev().find(|(seq, _)| *seq > 0) {
                    if followers.newest.as_ref().is_none_or(|(newest, _)| newest < seq) {
                        followers.newest = Some((*seq, text.clone()));
                    }
                }
                let presence = frames.iter().rev().find(|(seq, text)| *seq == 0 && text.starts_with(PRESENCE_PREFIX));
                if let Some((_, presence)) = presence {
                    followers.presence = Some(presence.clone());
                }
                followers.members.values().map(|member| (member.tx.clone(), member.kick.clone())).collect()
            }
            None => Vec::new(),
        };
        for (tx, kick) in subscribers {
            for (seq, text) in &frames {
                let outbound = Outbound::Room { room, seq: *seq, text: text.clone() };
                if tx.try_send(outbound).is_err() {
                    metrics::counter!("districhat_sessions_kicked_total").increment(1);
                    kick.notify_one();
                    break;
                }
            }
        }
        metrics::counter!("districhat_frames_out_total").increment(frames.len() as u64);
        if sequenced_ms > 0 {
            let latency = crate::now_ms().saturating_sub(sequenced_ms) as f64 / 1000.0;
            metrics::histogram!("districhat_delivery_seconds").record(latency);
        }
    }

    /// Tells each local subscriber of the room whom `denied` refuses (with a code) that
    /// the room is closed to them.
    pub fn revoke(&self, room: RoomId, denied: impl Fn(UserId) -> Option<&'static str>) {
        self.tell(room, |subscriber| denied(subscriber.user_id).map(|code| Outbound::Revoked { room, code }));
    }

    /// Tells every local subscriber of the room to fetch what it may have missed.
    pub fn resync(&self, room: RoomId) {
        self.tell(room, |_| Some(Outbound::Resync { room }));
    }

    /// Queues `what` gives each local subscriber of the room (nothing when `None`); a
    /// subscriber whose queue is full is kicked instead.
    fn tell(&self, room: RoomId, what: impl Fn(&Subscriber) -> Option<Outbound>) {
        let subscribers: Vec<Subscriber> =
            self.lock().get(&room).map(|followers| followers.members.values().cloned().collect()).unwrap_or_default();
        for subscriber in subscribers {
            let Some(outbound) = what(&subscriber) else { continue };
            if subscriber.tx.try_send(outbound).is_err() {
                subscriber.kick.notify_one();
            }
        }
    }
}

fn users(members: &HashMap<SessionId, Subscriber>) -> Vec<String> {
    members.values().map(|s| s.username.clone()).collect::<BTreeSet<_>>().into_iter().collect()
}
