//! One browser WebSocket: authentication (`hello` with a connection token checked
//! locally), subscriptions with resume (`since`), sends with idempotent retries, typing,
//! history, and limits. Everything a session owns lives in this one task; fetches and
//! sends run in spawned tasks that post their results back to the session's queue, so
//! per-room order and "never twice" are decided in one place.
//!
//! Memory per session is bounded: a resume is fetched and written one page at a time,
//! at most `limits.reads_in_flight` catch-up pages and as many history answers are
//! fetched and not yet written (more catch-ups wait their turn, more history requests get
//! `rate_limited`), live frames held back during a catch-up are capped over all rooms
//! (`limits.held_frames`; past it they are fetched from the log afterwards), and a write
//! that does not finish within `limits.write_timeout_ms` closes the connection as
//! `lagging`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use super::frames;
use super::hub::{CatchUpPage, Outbound, Subscriber};
use super::owner::{frame_json, read_message};
use super::routing::MAX_MENTIONS;
use super::subscription::{AfterPage, Subscription};
use super::{Node, NodeError};
use crate::now_ms;
use crate::protocol::{
    Action, ChatMessage, ClientFrame, ConnectionClaims, LogQuery, Outgoing, ReadMessage, RoomId, Seq, ServerFrame,
};

/// Messages fetched per catch-up page: what one resuming session holds at most (with
/// their frames, ~2 × 100 × the text size).
const CATCH_UP_PAGE: u32 = 100;

/// Most queued items a session turns into frames for one write (one flush): enough to
/// batch a busy room's deliveries, few enough that the browser's own frames keep their
/// turn.
const WRITE_BATCH: usize = 64;

/// How long the last words to a stalled socket (`lagging` and a close frame) may take.
const LAST_WORDS: Duration = Duration::from_millis(100);

/// `typing` frames a connection may have forwarded a second (bursts of twice that): a
/// browser sends one every 2 s while its user types. Each forwarded one is a frame to
/// every subscriber of the room, so the rest are dropped, without an answer (typing is
/// ephemeral; docs/PROTOCOL.md, "Typing and presence").
const TYPING_PER_SEC: u32 = 2;

struct Session {
    node: Node,
    id: u64,
    user: Option<ConnectionClaims>,
    rooms: HashMap<RoomId, Subscription<Message>>,
    tx: mpsc::Sender<Outbound>,
    kick: Arc<Notify>,
    sends: Bucket,
    /// History and subscribe requests: each costs the node a read of the room log.
    reads: Bucket,
    /// Typing frames forwarded to rooms ([`TYPING_PER_SEC`]).
    typing: Bucket,
    /// Catch-up pages being fetched or queued for this session and not yet taken off its
    /// queue: at most `limits.reads_in_flight`.
    catch_ups_in_flight: usize,
    /// Catch-ups waiting for a slot, oldest first; at most one per room.
    waiting: VecDeque<CatchUp>,
    /// History answers being fetched or queued and not yet taken off the queue: at most
    /// `limits.reads_in_flight`.
    histories_in_flight: usize,
}

/// A catch-up to start: one page of `room` after `after` (only its last seq when
/// `None`), fetched after `delay`.
struct CatchUp {
    room: RoomId,
    after: Option<Seq>,
    delay: Duration,
}

/// A read a session answers with one frame.
enum Read {
    History { before: Option<Seq>, limit: Option<u32> },
    Thread { root: Seq },
    Mentions { after: Seq },
}

/// A token bucket: `rate` a second, bursts of twice that.
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self { rate, tokens: rate * 2.0, refilled: Instant::now() }
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        self.tokens = (self.tokens + self.refilled.elapsed().as_secs_f64() * self.rate).min(self.rate * 2.0);
        self.refilled = Instant::now();
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Runs a browser session until the socket closes, it lags, or the node stops.
pub async fn run(node: Node, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel(node.config.limits.queued_frames);
    let kick = Arc::new(Notify::new());
    let mut session = Session {
        id: node.next_session_id(),
        node: node.clone(),
        user: None,
        rooms: HashMap::new(),
        tx,
        kick: kick.clone(),
        sends: Bucket::new(node.config.limits.sends_per_sec),
        reads: Bucket::new(node.config.limits.reads_per_sec),
        typing: Bucket::new(TYPING_PER_SEC),
        catch_ups_in_flight: 0,
        waiting: VecDeque::new(),
        histories_in_flight: 0,
    };
    node.connections.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("districhat_connections").increment(1.0);
    let mut shutdown = node.shutdown.clone();
    let mut isolation = node.isolation();
    let write_timeout = Duration::from_millis(node.config.limits.write_timeout_ms);
    let hello_due = tokio::time::sleep(Duration::from_millis(node.config.limits.hello_timeout_ms));
    // Made once, not once per turn of the loop: each would register with its notifier
    // when polled and unregister when dropped, for every frame in or out.
    let kicked = kick.notified();
    let isolated = async { drop(isolation.wait_for(|isolated| *isolated).await) };
    let stopping = crate::stopped(&mut shutdown);
    tokio::pin!(kicked, isolated, stopping, hello_due);
    loop {
        let outgoing: Vec<Message> = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => session.on_text(&text).await,
                Some(Ok(Message::Binary(_))) => vec![error("bad_frame", "frames are JSON text", None)],
                Some(Err(e)) if too_long(&e) => {
                    // Past the socket's message limit the frame cannot be read to its end,
                    // so the connection cannot go on; say why (docs/PROTOCOL.md).
                    close(&mut socket, "frame_too_large", "the frame exceeds the size limit", 1009).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
            outbound = rx.recv() => match outbound {
                Some(outbound) => {
                    // What else is queued already goes out with it, under one flush.
                    let mut out = session.on_outbound(outbound);
                    for _ in 1..WRITE_BATCH {
                        let Ok(more) = rx.try_recv() else { break };
                        out.extend(session.on_outbound(more));
                    }
                    out
                }
                None => break,
            },
            _ = &mut kicked => {
                close(&mut socket, "lagging", "this connection fell behind; reconnect and resume", 4008).await;
                break;
            }
            _ = &mut isolated => {
                close(&mut socket, "isolated", "this node lost the control plane; reconnect to another", 4009).await;
                break;
            }
            _ = &mut stopping => break,
            _ = &mut hello_due, if session.user.is_none() => {
                metrics::counter!("districhat_sessions_without_hello_total").increment(1);
                let reason = "no hello within limits.hello_timeout_ms";
                close(&mut socket, "hello_timeout", reason, 4010).await;
                break;
            }
        };
        metrics::counter!("districhat_frames_out_total").increment(outgoing.len() as u64);
        match write_all(&mut socket, outgoing, write_timeout).await {
            Ok(()) => {}
            Err(Stalled::Gone) => break,
            Err(Stalled::Timeout) => {
                metrics::counter!("districhat_sessions_kicked_total").increment(1);
                tracing::debug!(session = session.id, "a write did not finish in time; closing as lagging");
                close(&mut socket, "lagging", "this connection stopped reading; reconnect and resume", 4008).await;
                break;
            }
        }
    }
    session.leave_all();
    node.connections.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!("districhat_connections").decrement(1.0);
}

/// Why writing to a socket ended early.
enum Stalled {
    /// The connection is closed.
    Gone,
    /// The browser did not take the frames within the write timeout.
    Timeout,
}

/// Writes `messages` in order with one flush at the end (one system call for a batch of
/// frames rather than one per frame); all of them must be written within `timeout`.
async fn write_all(socket: &mut WebSocket, messages: Vec<Message>, timeout: Duration) -> Result<(), Stalled> {
    if messages.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let writing = async {
        for message in messages {
            socket.feed(message).await.map_err(|_| Stalled::Gone)?;
        }
        socket.flush().await.map_err(|_| Stalled::Gone)?;
        super::owner::record_hop("socket_write", started);
        Ok(())
    };
    tokio::time::timeout(timeout, writing).await.unwrap_or(Err(Stalled::Timeout))
}

/// Whether a read failed because the frame is over the socket's message limit (the
/// WebSocket library reports it as a capacity error, "Message too long").
fn too_long(error: &axum::Error) -> bool {
    error.to_string().contains("Message too long")
}

/// Tells the browser why it is disconnected and closes with `code`, if the socket takes
/// that within [`LAST_WORDS`] (a stalled one does not: it is just dropped).
async fn close(socket: &mut WebSocket, code: &str, message: &str, close_code: u16) {
    let last_words = vec![
        error(code, message, None),
        Message::Close(Some(CloseFrame { code: close_code, reason: code.to_string().into() })),
    ];
    let _ = write_all(socket, last_words, LAST_WORDS).await;
}

fn text(frame: &ServerFrame) -> Message {
    Message::Text(frame_json(frame).into())
}

fn error(code: &str, message: &str, reference: Option<String>) -> Message {
    text(&ServerFrame::Error { code: code.into(), message: message.into(), r#ref: reference })
}

fn node_error(e: &NodeError, reference: Option<String>) -> Message {
    error(e.code(), &e.to_string(), reference)
}

impl Session {
    /// Parses and handles one browser frame; returns the frames to write back now.
    async fn on_text(&mut self, raw: &str) -> Vec<Message> {
        metrics::counter!("districhat_frames_in_total").increment(1);
        let frame = match frames::parse(raw, &self.node.config.limits) {
            Ok(frame) => frame,
            Err(refused) => return vec![error(refused.code, &refused.message, refused.reference)],
        };
        if let ClientFrame::Hello { token } = frame {
            return vec![self.hello(&token)];
        }
        let Some(user) = self.user.clone() else {
            return vec![error("unauthorized", "say hello with a connection token first", None)];
        };
        match frame {
            ClientFrame::Hello { .. } => Vec::new(),
            ClientFrame::Subscribe { room, since } => self.subscribe(&user, room, since).await,
            ClientFrame::Unsubscribe { room } => {
                self.leave(room);
                Vec::new()
            }
            ClientFrame::Send { room, client_id, text, reply_to } => {
                self.send(&user, room, client_id, Action::Message { text, reply_to }).await
            }
            ClientFrame::Edit { room, client_id, target, text } => {
                self.send(&user, room, client_id, Action::Edit { target, text }).await
            }
            ClientFrame::Delete { room, client_id, target } => {
                self.send(&user, room, client_id, Action::Delete { target }).await
            }
            ClientFrame::React { room, client_id, target, emoji } => {
                self.send(&user, room, client_id, Action::React { target, emoji }).await
            }
            ClientFrame::Thread { room, root } => self.read(&user, room, Read::Thread { root }).await,
            ClientFrame::Mentions { room, after } => self.read(&user, room, Read::Mentions { after }).await,
            ClientFrame::Typing { room } => {
                if self.rooms.contains_key(&room) {
                    if self.typing.take() {
                        self.node.send_typing(room, user.username.clone());
                    } else {
                        metrics::counter!("districhat_typing_dropped_total").increment(1);
                    }
                    Vec::new()
                } else {
                    vec![error("not_subscribed", "subscribe to the room first", Some(room.to_string()))]
                }
            }
            ClientFrame::History { room, before, limit } => {
                self.read(&user, room, Read::History { before, limit }).await
            }
        }
    }

    /// A `rate_limited` error when this connection's subscribe and history requests are
    /// over `limits.reads_per_sec`; else takes one.
    fn read_refused(&mut self, room: RoomId) -> Option<Message> {
        let message = "too many subscribe and history requests; slow down";
        (!self.reads.take()).then(|| error("rate_limited", message, Some(room.to_string())))
    }

    fn hello(&mut self, token: &str) -> Message {
        let key = self.node.token_key.read().unwrap_or_else(|p| p.into_inner()).clone();
        match crate::token::verify(&key, token, now_ms()) {
            Some(claims) => {
                let welcome =
                    ServerFrame::Welcome { user: claims.username.clone(), user_id: claims.user_id, node: self.node.id };
                self.user = Some(claims);
                text(&welcome)
            }
            None => error("unauthorized", "the connection token is invalid or expired; get a new one", None),
        }
    }

    async fn subscribe(&mut self, user: &ConnectionClaims, room: RoomId, since: Option<Seq>) -> Vec<Message> {
        if let Some(refused) = self.read_refused(room) {
            return vec![refused];
        }
        if let Err(e) = self.node.check_access(room, user.user_id).await {
            return vec![node_error(&e, Some(room.to_string()))];
        }
        if !self.rooms.contains_key(&room) && self.rooms.len() >= self.node.config.limits.max_subscriptions {
            return vec![error("too_many_subscriptions", "unsubscribe from a room first", Some(room.to_string()))];
        }
        let subscriber = Subscriber {
            user_id: user.user_id,
            username: user.username.clone(),
            tx: self.tx.clone(),
            kick: self.kick.clone(),
        };
        let users = self.node.hub.join(room, self.id, subscriber);
        self.node.send_interest(room, users);
        // A group-DM member added without its history resumes no earlier than their join.
        let floor = self.node.history_floor(room, user.user_id);
        let after = self.rooms.entry(room).or_default().subscribe(since, floor);
        self.hold_newest(room, floor);
        self.catch_up(room, after, Duration::ZERO, "subscribe");
        Vec::new()
    }

    /// Holds the newest message this node was delivered for the room as if it had just
    /// come live, for a catch-up that starts: the catch-up then ends no earlier, even when
    /// the copy it reads from (a replica) knows only an older commit point and the room
    /// stays quiet (docs/REPLICATION.md, "Live delivery", L1). Never one at or below the
    /// user's history `floor`.
    fn hold_newest(&mut self, room: RoomId, floor: Seq) {
        let Some((seq, text)) = self.node.hub.newest(room) else { return };
        if seq <= floor {
            return;
        }
        if let Some(subscription) = self.rooms.get_mut(&room) {
            subscription.live(seq, Message::Text(text), true);
        }
    }

    /// Fetches one page of the messages after `after`, or only the room's last seq when
    /// `after` is `None`, after `delay`, and posts it back to this session; the session
    /// asks for the next page once it wrote this one. With `limits.reads_in_flight`
    /// pages already under way it waits its turn (a newer request for the same room
    /// replaces a waiting one).
    /// `cause` labels `districhat_catch_ups_total`: `subscribe`, `gap` (a live frame
    /// skipped a seq), `resync` (the room's owner changed), `next_page`, or `retry` (the
    /// copy read was behind the live frames held).
    fn catch_up(&mut self, room: RoomId, after: Option<Seq>, delay: Duration, cause: &'static str) {
        metrics::counter!("districhat_catch_ups_total", "cause" => cause).increment(1);
        let next = CatchUp { room, after, delay };
        match self.waiting.iter_mut().find(|waiting| waiting.room == room) {
            Some(waiting) => *waiting = next,
            None => self.waiting.push_back(next),
        }
        self.start_waiting();
    }

    /// Starts catch-ups that wait, while there are slots.
    fn start_waiting(&mut self) {
        while self.catch_ups_in_flight < self.node.config.limits.reads_in_flight {
            let Some(next) = self.waiting.pop_front() else { return };
            self.start_catch_up(next);
        }
    }

    fn start_catch_up(&mut self, CatchUp { room, after, delay }: CatchUp) {
        self.catch_ups_in_flight += 1;
        let (node, tx) = (self.node.clone(), self.tx.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = match after {
                None => node.fetch(room, Some(u64::MAX - 1), None, 0).await,
                Some(after) => node.fetch(room, Some(after), None, CATCH_UP_PAGE).await,
            };
            let result = result.map(|(messages, has_more, last_seq)| CatchUpPage { messages, has_more, last_seq });
            let _ = tx.send(Outbound::CatchUp { room, result }).await;
        });
    }

    fn leave(&mut self, room: RoomId) {
        self.waiting.retain(|waiting| waiting.room != room);
        if self.rooms.remove(&room).is_some() {
            let users = self.node.hub.leave(room, self.id);
            self.node.send_interest(room, users);
        }
    }

    fn leave_all(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        for room in rooms {
            self.leave(room);
        }
    }

    /// A message or an event on one: checked here (rate, access, mute), sequenced by the
    /// room's owner, answered with `ack` or `error` (ref: the `client_id`).
    async fn send(&mut self, user: &ConnectionClaims, room: RoomId, client_id: String, action: Action) -> Vec<Message> {
        let reference = Some(client_id.clone());
        if !self.sends.take() {
            return vec![error("rate_limited", "too many messages; slow down", reference)];
        }
        if let Err(e) = self.node.check_send(room, user.user_id).await {
            return vec![node_error(&e, reference)];
        }
        let (node, tx, user) = (self.node.clone(), self.tx.clone(), user.clone());
        let span =
            tracing::info_span!("send", session = self.id, room, client_id = %client_id, seq = tracing::field::Empty);
        let received = Instant::now();
        let sending = async move {
            let message =
                Outgoing { user_id: user.user_id, username: user.username, client_id: client_id.clone(), action };
            let result = node.send_message(room, message).await;
            let frame = match result {
                Ok(sent) => {
                    tracing::Span::current().record("seq", sent.seq);
                    metrics::histogram!("districhat_ack_seconds").record(received.elapsed().as_secs_f64());
                    frame_json(&ServerFrame::Ack { client_id, room, seq: sent.seq })
                }
                Err(e) => frame_json(&ServerFrame::Error {
                    code: e.code().into(),
                    message: e.to_string(),
                    r#ref: Some(client_id),
                }),
            };
            let _ = tx.send(Outbound::Frame(frame)).await;
        };
        tokio::spawn(sending.instrument(span));
        Vec::new()
    }

    /// A read that is not a resume: older history, a thread, this user's mentions. At most
    /// `limits.reads_in_flight` answers are fetched and not yet written.
    async fn read(&mut self, user: &ConnectionClaims, room: RoomId, read: Read) -> Vec<Message> {
        if let Some(refused) = self.read_refused(room) {
            return vec![refused];
        }
        if self.histories_in_flight >= self.node.config.limits.reads_in_flight {
            let message = "too many history answers not read yet; read them first";
            return vec![error("rate_limited", message, Some(room.to_string()))];
        }
        if let Err(e) = self.node.check_access(room, user.user_id).await {
            return vec![node_error(&e, Some(room.to_string()))];
        }
        self.histories_in_flight += 1;
        let (node, tx, username) = (self.node.clone(), self.tx.clone(), user.username.clone());
        let floor = self.node.history_floor(room, user.user_id);
        tokio::spawn(async move {
            let visible = |messages: Vec<ReadMessage>| -> Vec<ChatMessage> {
                messages.iter().filter(|m| m.message.seq > floor).map(|m| read_message(room, m)).collect()
            };
            let answer = match read {
                Read::History { before, limit } => {
                    let limit = limit.unwrap_or(50).clamp(1, 200);
                    node.fetch(room, None, before, limit).await.map(|(messages, has_more, _)| {
                        let all = messages.len();
                        let messages = visible(messages);
                        let has_more = has_more && messages.len() == all;
                        ServerFrame::History { room, messages, has_more }
                    })
                }
                Read::Thread { root } => node
                    .query(room, LogQuery::Thread { root })
                    .await
                    .map(|(messages, _, _)| ServerFrame::Thread { room, root, messages: visible(messages) }),
                Read::Mentions { after } => {
                    let (after, limit) = (after.max(floor), MAX_MENTIONS as u32);
                    node.query(room, LogQuery::Mentions { user: username, after, limit, newest: false }).await.map(
                        |(messages, has_more, _)| ServerFrame::Mentions {
                            room,
                            after,
                            messages: visible(messages),
                            has_more,
                        },
                    )
                }
            };
            let frame = match answer {
                Ok(frame) => frame_json(&frame),
                Err(e) => frame_json(&ServerFrame::Error {
                    code: e.code().into(),
                    message: e.to_string(),
                    r#ref: Some(room.to_string()),
                }),
            };
            let _ = tx.send(Outbound::History(frame)).await;
        });
        Vec::new()
    }

    /// Handles something queued for this session; returns the frames to write.
    fn on_outbound(&mut self, outbound: Outbound) -> Vec<Message> {
        match outbound {
            Outbound::Frame(frame) => vec![Message::Text(frame.into())],
            Outbound::History(frame) => {
                self.histories_in_flight = self.histories_in_flight.saturating_sub(1);
                vec![Message::Text(frame.into())]
            }
            Outbound::Room { room, seq, text } => self.on_room_frame(room, seq, text),
            Outbound::CatchUp { room, result } => {
                self.catch_ups_in_flight = self.catch_ups_in_flight.saturating_sub(1);
                let out = self.on_catch_up(room, result);
                self.start_waiting();
                out
            }
            Outbound::Revoked { room, code } => {
                self.leave(room);
                let message = match code {
                    "banned" => "you were banned from this room",
                    _ => "you are no longer a member of this room",
                };
                vec![error(code, message, Some(room.to_string()))]
            }
            Outbound::Resync { room } => {
                if let Some(after) = self.rooms.get_mut(&room).and_then(Subscription::resync) {
                    if let Some(user) = self.user.as_ref().map(|user| user.user_id) {
                        self.hold_newest(room, self.node.history_floor(room, user));
                    }
                    self.catch_up(room, Some(after), Duration::ZERO, "resync");
                }
                Vec::new()
            }
        }
    }

    fn on_room_frame(&mut self, room: RoomId, seq: Seq, text: Utf8Bytes) -> Vec<Message> {
        let cap = self.node.config.limits.held_frames;
        let may_hold = self.rooms.get(&room).is_some_and(Subscription::catching_up) && self.held_frames() < cap;
        let Some(subscription) = self.rooms.get_mut(&room) else { return Vec::new() };
        let (out, gap) = subscription.live(seq, Message::Text(text), may_hold);
        if let Some(after) = gap {
            self.catch_up(room, Some(after), Duration::ZERO, "gap");
        }
        out
    }

    /// Live frames held back over all rooms (`limits.held_frames` caps them).
    fn held_frames(&self) -> usize {
        self.rooms.values().map(Subscription::held).sum()
    }

    /// Writes one catch-up page; then asks for the next, or, after the last, says
    /// `subscribed` and writes the held live frames that follow. Live frames it could not
    /// hold, or a gap the page did not fill, are fetched again instead of dropped.
    fn on_catch_up(&mut self, room: RoomId, result: Result<CatchUpPage, NodeError>) -> Vec<Message> {
        let Some(subscription) = self.rooms.get_mut(&room) else { return Vec::new() };
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                // Stay subscribed; the next owner change or gap retries the catch-up.
                let mut out = vec![node_error(&e, Some(room.to_string()))];
                out.extend(subscription.page_failed());
                return out;
            }
        };
        let messages =
            page.messages.iter().map(|m| (m.message.seq, text(&ServerFrame::Message(read_message(room, m))))).collect();
        let (mut out, next) = subscription.page(messages, page.has_more, page.last_seq);
        match next {
            AfterPage::Fetch { after, delay } => {
                let cause = if delay.is_zero() { "next_page" } else { "retry" };
                self.catch_up(room, Some(after), delay, cause);
            }
            AfterPage::Subscribed(seq) => {
                out.push(text(&ServerFrame::Subscribed { room, seq }));
                if let Some(presence) = self.node.hub.presence(room) {
                    out.push(Message::Text(presence));
                }
            }
        }
        out
    }
}
