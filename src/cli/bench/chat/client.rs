//! One simulated browser of the chat bench: gets a connection token from the control,
//! holds one WebSocket to a node, subscribes to its room, sends its messages (window- or
//! rate-driven), and records every ack, delivery and error. A lost connection is resumed
//! like the browser client does: a fresh token, the next node, `subscribe` with `since`,
//! and the unacked sends again with the same `client_id`. Every wait is bounded; a client
//! that cannot (re)connect gives up and reports it instead of stalling the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::{timeout, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::tally::{self, AckedSets, Arrival, NodeInfo, RoomTracker};
use crate::cli::bench::socket::{self, Sources, Ws};
use crate::protocol::{ChatMessage, ClientFrame, NodeId, RoomId, Seq, ServerFrame};

/// Bound on each network step: a token request, a connect, a frame write, a reply.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A send without an ack for this long is sent again (same `client_id`).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends of one message (first + retries) before it is given up as unacked; with the
/// backoff of [`tally::retry_delay`] the retries span ~15 s, longer than a room failover.
const MAX_ATTEMPTS: u32 = 12;
/// Bound on asking one control for a connection token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection attempts in a row that may fail before the client gives up.
const MAX_CONNECT_FAILURES: u32 = 8;
/// Connections a client may lose over a run before it gives up.
const MAX_RECONNECTS: u64 = 20;
/// In rate mode sends do not wait for acks; this caps what one client has in flight.
const MAX_IN_FLIGHT_AT_RATE: usize = 1024;
/// How often timeouts and scheduled retries are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Where the run is; the coordinator moves it forward, clients follow.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Connect and subscribe; do not send yet.
    Setup,
    /// Send, from this instant (the rate-mode tickers are staggered from it).
    Load(Instant),
    /// Stop sending; finish once every seq of this snapshot (after our subscription point)
    /// has arrived.
    Drain(Arc<AckedSets>),
    /// Hand in the results now.
    Stop,
}

/// What every client shares: configuration, the control's HTTP client, and the few
/// cross-client records.
pub struct Shared {
    pub http: reqwest::Client,
    /// Control base URLs (no trailing slash) to ask for connection tokens: the one
    /// given first, then the other members, so reconnects survive a control's death.
    pub controls: Vec<String>,
    /// Random per run, so `client_id`s never collide with an earlier run's dedupe index.
    pub run_id: u32,
    pub clients: usize,
    pub messages: usize,
    pub window: usize,
    /// Time between two sends of one client in rate mode; `None` = as fast as the window allows.
    pub period: Option<Duration>,
    /// Caps concurrent connection setups (token + connect + hello; a subscription
    /// waiting for its room's failover holds no slot).
    pub setup_slots: Semaphore,
    /// The node every client connects to first (`bench-storm`); later connections go to
    /// the others, as a browser moves to the node after the one it lost. `None`:
    /// round-robin over all nodes.
    pub first_node: Option<NodeId>,
    /// Local addresses to connect from (several for more sockets than one address has ports).
    pub sources: Sources,
    /// First-send instant of every `client_id`, for end-to-end latency. std Mutex: never
    /// held across an await.
    pub sent_at: Mutex<HashMap<String, Instant>>,
    /// Acked seqs per room as acks arrive (the drain phase waits for them). std Mutex:
    /// never held across an await.
    pub acked: Mutex<AckedSets>,
    pub counters: Counters,
}

/// Live numbers for the coordinator's progress bar and phase changes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Clients subscribed for the first time, or given up.
    pub ready: AtomicUsize,
    /// Clients with every message acked (or given up), or given up.
    pub sending_done: AtomicUsize,
    /// Clients that received every seq of the drain snapshot, or gave up.
    pub drained: AtomicUsize,
    pub acked: AtomicU64,
    pub deliveries: AtomicU64,
}

/// Locks a std mutex, also after a panic elsewhere (the data stays usable for the report).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one client hands in at the end.
#[derive(Debug, Default)]
pub struct ClientOutcome {
    pub room: RoomId,
    pub tracker: RoomTracker,
    /// Connected and subscribed when the run ended: only these are checked for losses.
    pub alive: bool,
    /// Messages sent (distinct `client_id`s).
    pub sent: u64,
    pub acked: u64,
    /// Sent but never acked (timed out after every retry, or still in flight at the end).
    pub unacked: u64,
    /// Refused with an error that is not worth a retry.
    pub rejected: u64,
    /// Sends repeated with the same `client_id` (after an error, a timeout or a reconnect).
    pub retries: u64,
    pub reconnects: u64,
    /// New (non-duplicate) `message` frames received.
    pub deliveries: u64,
    pub last_ack: Option<Instant>,
    pub last_delivery: Option<Instant>,
    pub ack_latencies: Vec<Duration>,
    /// From the attempt that was acknowledged (the last one sent) to its ack: what the
    /// cluster took once it accepted the send, without retries after `rate_limited`.
    pub accepted_ack_latencies: Vec<Duration>,
    pub delivery_latencies: Vec<Duration>,
    /// `error` frames from the node, by code.
    pub errors: BTreeMap<String, u64>,
    /// Problems seen by the bench itself (connect failures, lost connections, bad frames).
    pub failures: BTreeMap<String, u64>,
    /// The first failure's detail, to explain a run where nothing worked.
    pub first_failure: Option<String>,
    /// Nodes this client was connected to (from `welcome`).
    pub nodes: BTreeSet<NodeId>,
    /// The node of its first `welcome`.
    pub first_node: Option<NodeId>,
    /// When the client was subscribed again after each lost connection (`bench-storm`
    /// measures the time from a node's death to this).
    pub resumed_at: Vec<Instant>,
}

/// Runs client `index` (room `room`, logged in with `bearer`) until the coordinator says stop.
pub async fn run(
    shared: Arc<Shared>,
    index: usize,
    room: RoomId,
    bearer: String,
    phase: watch::Receiver<Phase>,
) -> ClientOutcome {
    let mut client = Client {
        shared,
        index,
        bearer,
        phase,
        next_message: 0,
        pending: HashMap::new(),
        acked_ids: HashMap::new(),
        connections: 0,
        resubscribe_at: None,
        paused_until: None,
        drain_missing: None,
        reported: Reported::default(),
        outcome: ClientOutcome { room, ..ClientOutcome::default() },
    };
    client.run().await;
    client.finish()
}

/// A send waiting for its ack.
#[derive(Debug)]
struct Pending {
    text: String,
    first_sent: Instant,
    last_sent: Instant,
    attempts: u32,
    /// A retry scheduled after a retryable error.
    retry_at: Option<Instant>,
    /// Out of attempts: no longer in flight, but a late ack still counts.
    abandoned: bool,
    /// The scheduled retry follows `rate_limited`: it does not use up an attempt.
    free_retry: bool,
}

/// Which one-time counters this client has already bumped.
#[derive(Debug, Default)]
struct Reported {
    ready: bool,
    sending_done: bool,
    drained: bool,
}

/// Why a session or a connection attempt ended.
enum End {
    /// The run is over (stop, or drained).
    Finished,
    /// The connection broke; reconnect and resume.
    Lost(Failure),
}

/// A problem the bench itself saw, by a stable code, with detail for the first one.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    detail: String,
}

impl Failure {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }
}

/// What a received frame meant, for the steps that wait for a particular one.
enum Event {
    Other,
    Welcome,
    Subscribed,
    /// An `error` frame not about one of our pending sends.
    Error {
        code: String,
        about: About,
    },
}

/// What an `error` frame's `ref` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum About {
    /// Our room.
    Room,
    /// No `ref`: the frame that caused it.
    Nothing,
    /// Something else (a send already acked or given up).
    Other,
}

struct Client {
    shared: Arc<Shared>,
    index: usize,
    bearer: String,
    phase: watch::Receiver<Phase>,
    /// Index of the next message to send (0..messages).
    next_message: usize,
    /// Unacked sends by `client_id`.
    pending: HashMap<String, Pending>,
    /// Acked `client_id`s and their seq, to notice a retry acked under another seq.
    acked_ids: HashMap<String, Seq>,
    /// Connections opened so far; also picks the node to try next.
    connections: usize,
    /// A resubscription scheduled after the node refused or lost our subscription.
    resubscribe_at: Option<Instant>,
    /// After `rate_limited`: no new sends before this instant.
    paused_until: Option<Instant>,
    /// In the drain phase: owed seqs not received yet.
    drain_missing: Option<BTreeSet<Seq>>,
    reported: Reported,
    outcome: ClientOutcome,
}

impl Client {
    async fn run(&mut self) {
        let mut failures_in_a_row = 0u32;
        loop {
            if self.stopping() {
                return;
            }
            let mut stop = self.phase.clone();
            let connected = tokio::select! {
                connected = self.connect() => connected,
                _ = stop.wait_for(|phase| matches!(phase, Phase::Stop)) => return,
            };
            let failure = match connected {
                Ok(mut ws) => {
                    failures_in_a_row = 0;
                    if self.outcome.reconnects > 0 {
                        self.outcome.resumed_at.push(Instant::now());
                    }
                    self.report_ready();
                    self.outcome.alive = true;
                    let end = self.session(&mut ws).await;
                    self.outcome.alive = matches!(end, End::Finished);
                    // Best effort: the run is over or the connection is already broken.
                    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                    match end {
                        End::Finished => return,
                        End::Lost(failure) => {
                            self.outcome.reconnects += 1;
                            failure
                        }
                    }
                }
                Err(failure) => {
                    failures_in_a_row += 1;
                    failure
                }
            };
            self.fail(failure);
            if failures_in_a_row >= MAX_CONNECT_FAILURES || self.outcome.reconnects > MAX_RECONNECTS {
                tracing::debug!(client = self.index, "giving up on connecting");
                return;
            }
            let backoff = tally::retry_delay("", failures_in_a_row.max(1));
            let mut stop = self.phase.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|phase| matches!(phase, Phase::Stop)) => return,
            }
        }
    }

    /// Token, node, hello → welcome, subscribe (resuming after our last seq) → subscribed.
    async fn connect(&mut self) -> Result<Ws, Failure> {
        let shared = self.shared.clone();
        let slot = shared.setup_slots.acquire().await.map_err(|e| Failure::new("setup", e.to_string()))?;
        let (token, nodes) = self.fetch_token().await?;
        let attempt = self.connections;
        self.connections += 1;
        let node = tally::pick_node_first(&nodes, shared.first_node, self.index, attempt)
            .ok_or_else(|| Failure::new("no_nodes", "GET /api/token listed no node"))?;
        // No Origin header: nodes accept non-browser clients without one (they still need
        // a valid token), while a browser Origin must match the node's configured controls.
        let connecting = socket::open(&node.ws_url, shared.sources.for_client(self.index), Some(socket::chat_config()));
        let mut ws = timeout(STEP_TIMEOUT, connecting)
            .await
            .map_err(|_| Failure::new("connect", format!("{}: timed out", node.ws_url)))?
            .map_err(|e| Failure::new("connect", e))?;

        send_frame(&mut ws, &ClientFrame::Hello { token }).await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.next_event(&mut ws, deadline, "welcome").await? {
                Event::Welcome => break,
                Event::Error { code, about: About::Room | About::Nothing } => {
                    return Err(Failure::new("hello_refused", code))
                }
                Event::Subscribed | Event::Error { about: About::Other, .. } | Event::Other => {}
            }
        }
        drop(slot);

        // Not the first subscription: resume after the last seq seen (or the first
        // subscription point), so missed messages arrive before live ones.
        let room = self.outcome.room;
        let subscribe = ClientFrame::Subscribe { room, since: self.outcome.tracker.resume_from() };
        send_frame(&mut ws, &subscribe).await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.next_event(&mut ws, deadline, "subscribed").await? {
                Event::Subscribed => return Ok(ws),
                // The node may not know a new room yet (routing lag) or its owner is moving.
                Event::Error { code, about: About::Room | About::Nothing }
                    if matches!(code.as_str(), "unknown_room" | "unavailable" | "rate_limited") =>
                {
                    tokio::time::sleep(tally::retry_delay(&code, 2)).await;
                    let subscribe = ClientFrame::Subscribe { room, since: self.outcome.tracker.resume_from() };
                    send_frame(&mut ws, &subscribe).await?;
                }
                Event::Error { code, about: About::Room | About::Nothing } => {
                    return Err(Failure::new("subscribe_refused", code))
                }
                Event::Welcome | Event::Error { .. } | Event::Other => {}
            }
        }
    }

    /// `GET /api/token` with our Bearer token — a connection token and the node list —
    /// from the first control that answers.
    async fn fetch_token(&self) -> Result<(String, Vec<NodeInfo>), Failure> {
        let mut last = Failure::new("token", "no control to ask");
        for control in &self.shared.controls {
            match timeout(TOKEN_TIMEOUT, self.fetch_token_from(control)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(failure)) => last = failure,
                Err(_) => last = Failure::new("token", format!("{control}: timed out")),
            }
        }
        Err(last)
    }

    async fn fetch_token_from(&self, control: &str) -> Result<(String, Vec<NodeInfo>), Failure> {
        connection_token(&self.shared.http, control, &self.bearer).await.map_err(|e| Failure::new("token", e))
    }

    /// The next frame, handled, as an [`Event`]; fails at `deadline` or if the connection ends.
    async fn next_event(&mut self, ws: &mut Ws, deadline: Instant, waiting_for: &str) -> Result<Event, Failure> {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Failure::new("timeout", format!("no {waiting_for} within {STEP_TIMEOUT:?}")))?;
        match frame {
            Some(Ok(message)) => self.handle(message),
            Some(Err(e)) => Err(Failure::new("disconnected", e.to_string())),
            None => Err(Failure::new("disconnected", "the node closed the connection")),
        }
    }

    /// Subscribed and connected: sends, receives, retries, until the run is over or the
    /// connection breaks.
    async fn session(&mut self, ws: &mut Ws) -> End {
        if let Err(failure) = self.resend_after_reconnect(ws).await {
            return End::Lost(failure);
        }
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ticker: Option<Interval> = None;
        loop {
            let phase = self.phase.borrow_and_update().clone();
            match &phase {
                Phase::Stop => return End::Finished,
                Phase::Setup => {}
                Phase::Load(started) => {
                    if let (Some(period), None) = (self.shared.period, &ticker) {
                        let first = *started + tally::send_offset(period, self.index, self.shared.clients);
                        ticker = Some(tokio::time::interval_at(first.max(Instant::now()), period));
                    }
                    if self.shared.period.is_none() {
                        while self.may_send() && self.in_flight() < self.shared.window.max(1) {
                            if let Err(failure) = self.send_next(ws).await {
                                return End::Lost(failure);
                            }
                        }
                    }
                    self.report_sending_done_if_so();
                }
                Phase::Drain(acked) => {
                    ticker = None;
                    self.report_sending_done();
                    if self.drained(acked) {
                        return End::Finished;
                    }
                }
            }
            tokio::select! {
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return End::Finished;
                    }
                }
                frame = ws.next() => {
                    let event = match frame {
                        Some(Ok(message)) => self.handle(message),
                        Some(Err(e)) => Err(Failure::new("disconnected", e.to_string())),
                        None => Err(Failure::new("disconnected", "the node closed the connection")),
                    };
                    match event {
                        Ok(Event::Error { code, about: About::Room }) if code != "rate_limited" => {
                            // The node dropped or refused our subscription: resubscribe from
                            // the last seq seen, shortly.
                            self.resubscribe_at = Some(Instant::now() + Duration::from_millis(250));
                        }
                        Ok(_) => {}
                        Err(failure) => return End::Lost(failure),
                    }
                }
                _ = tick(&mut ticker), if ticker.is_some() => {
                    if self.may_send() && self.in_flight() < MAX_IN_FLIGHT_AT_RATE {
                        if let Err(failure) = self.send_next(ws).await {
                            return End::Lost(failure);
                        }
                    }
                }
                _ = check.tick() => {
                    if let Err(failure) = self.check_timers(ws).await {
                        return End::Lost(failure);
                    }
                }
            }
        }
    }

    /// Interprets one WebSocket message from the node.
    fn handle(&mut self, message: Message) -> Result<Event, Failure> {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return Err(Failure::new("disconnected", "the node closed the connection")),
            Message::Binary(_) => {
                self.fail(Failure::new("bad_server_frame", "a binary frame"));
                return Ok(Event::Other);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(Event::Other),
        };
        let frame = match serde_json::from_str::<ServerFrame>(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                self.fail(Failure::new("bad_server_frame", format!("{e}: {}", truncate(text.as_str(), 200))));
                return Ok(Event::Other);
            }
        };
        Ok(match frame {
            ServerFrame::Welcome { node, .. } => {
                self.outcome.nodes.insert(node);
                self.outcome.first_node.get_or_insert(node);
                Event::Welcome
            }
            ServerFrame::Subscribed { room, seq } if room == self.outcome.room => {
                self.outcome.tracker.subscribed(seq);
                Event::Subscribed
            }
            ServerFrame::Message(message) => {
                self.on_message(message);
                Event::Other
            }
            ServerFrame::Ack { client_id, room, seq } => {
                self.on_ack(client_id, room, seq);
                Event::Other
            }
            ServerFrame::Error { code, message, r#ref } => self.on_error(code, message, r#ref),
            ServerFrame::Subscribed { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::History { .. }
            | ServerFrame::Thread { .. }
            | ServerFrame::Mentions { .. } => Event::Other,
        })
    }

    fn on_message(&mut self, message: ChatMessage) {
        if message.room != self.outcome.room {
            self.fail(Failure::new("foreign_room", format!("a message of room {}", message.room)));
            return;
        }
        let arrival = self.outcome.tracker.observe(message.seq, message.client_id.as_deref());
        if arrival == Arrival::Duplicate {
            return;
        }
        let now = Instant::now();
        self.outcome.deliveries += 1;
        self.outcome.last_delivery = Some(now);
        self.shared.counters.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(missing) = &mut self.drain_missing {
            missing.remove(&message.seq);
        }
        if let Some(client_id) = &message.client_id {
            let sent = lock(&self.shared.sent_at).get(client_id).copied();
            if let Some(sent) = sent {
                self.outcome.delivery_latencies.push(now.saturating_duration_since(sent));
            }
        }
    }

    fn on_ack(&mut self, client_id: String, room: RoomId, seq: Seq) {
        if let Some(pending) = self.pending.remove(&client_id) {
            let now = Instant::now();
            self.outcome.ack_latencies.push(now.saturating_duration_since(pending.first_sent));
            self.outcome.accepted_ack_latencies.push(now.saturating_duration_since(pending.last_sent));
            self.outcome.acked += 1;
            self.outcome.last_ack = Some(now);
            if room != self.outcome.room {
                self.fail(Failure::new("ack_wrong_room", format!("{client_id} acked in room {room}")));
            }
            lock(&self.shared.acked).entry(room).or_default().insert(seq);
            self.shared.counters.acked.fetch_add(1, Ordering::Relaxed);
            self.acked_ids.insert(client_id, seq);
        } else if let Some(first) = self.acked_ids.get(&client_id) {
            // A retry's ack: idempotency means the original seq again.
            if *first != seq {
                self.fail(Failure::new("ack_seq_changed", format!("{client_id} acked as {first}, then {seq}")));
            }
        } else {
            self.fail(Failure::new("unexpected_ack", client_id));
        }
    }

    fn on_error(&mut self, code: String, message: String, about: Option<String>) -> Event {
        tally::bump(&mut self.outcome.errors, &code, 1);
        tracing::debug!(client = self.index, %code, %message, ?about, "error frame");
        if let Some(pending) = about.as_deref().and_then(|client_id| self.pending.get_mut(client_id)) {
            let rate_limited = code == "rate_limited";
            if rate_limited || (tally::retryable(&code) && pending.attempts < MAX_ATTEMPTS) {
                let retry_at = Instant::now() + tally::retry_delay(&code, pending.attempts);
                pending.retry_at = Some(retry_at);
                pending.free_retry = rate_limited;
                if rate_limited {
                    // The node limits sends per connection: slow down, as a browser would.
                    self.paused_until = Some(self.paused_until.map_or(retry_at, |until| until.max(retry_at)));
                }
            } else if tally::retryable(&code) {
                pending.abandoned = true;
            } else if let Some(client_id) = about {
                self.pending.remove(&client_id);
                self.outcome.rejected += 1;
            }
            return Event::Other;
        }
        let about = match about {
            None => About::Nothing,
            Some(about) if about == self.outcome.room.to_string() => About::Room,
            Some(_) => About::Other,
        };
        Event::Error { code, about }
    }

    /// Whether a new message may be sent (load phase, messages left, not paused).
    fn may_send(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Load(_))
            && self.next_message < self.shared.messages
            && self.paused_until.is_none_or(|until| until <= Instant::now())
    }

    /// Sends awaiting an ack that are still being tried.
    fn in_flight(&self) -> usize {
        self.pending.values().filter(|pending| !pending.abandoned).count()
    }

    async fn send_next(&mut self, ws: &mut Ws) -> Result<(), Failure> {
        let message = self.next_message;
        self.next_message += 1;
        let client_id = format!("b{:08x}-{}-{message}", self.shared.run_id, self.index);
        let text = format!("bench message {message} from client {}", self.index);
        let now = Instant::now();
        lock(&self.shared.sent_at).insert(client_id.clone(), now);
        let frame = ClientFrame::Send {
            room: self.outcome.room,
            client_id: client_id.clone(),
            text: text.clone(),
            reply_to: None,
        };
        self.pending.insert(
            client_id,
            Pending {
                text,
                first_sent: now,
                last_sent: now,
                attempts: 1,
                retry_at: None,
                abandoned: false,
                free_retry: false,
            },
        );
        self.outcome.sent += 1;
        send_frame(ws, &frame).await
    }

    /// After a reconnect, every send still being tried goes out again (same `client_id`):
    /// its ack may have been lost with the old connection.
    async fn resend_after_reconnect(&mut self, ws: &mut Ws) -> Result<(), Failure> {
        let again: Vec<String> =
            self.pending.iter().filter(|(_, pending)| !pending.abandoned).map(|(id, _)| id.clone()).collect();
        for client_id in again {
            self.resend(ws, client_id, false).await?;
        }
        Ok(())
    }

    /// Due retries, ack timeouts and a scheduled resubscription.
    async fn check_timers(&mut self, ws: &mut Ws) -> Result<(), Failure> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (client_id, pending) in &mut self.pending {
            if pending.abandoned {
                continue;
            }
            let retry_due = pending.retry_at.is_some_and(|at| at <= now);
            let timed_out =
                pending.retry_at.is_none() && now.saturating_duration_since(pending.last_sent) >= ACK_TIMEOUT;
            if (retry_due || timed_out) && pending.attempts >= MAX_ATTEMPTS && !pending.free_retry {
                pending.abandoned = true;
            } else if retry_due || timed_out {
                due.push(client_id.clone());
            }
        }
        for client_id in due {
            self.resend(ws, client_id, true).await?;
        }
        if self.resubscribe_at.is_some_and(|at| at <= now) {
            self.resubscribe_at = None;
            let since = self.outcome.tracker.resume_from();
            send_frame(ws, &ClientFrame::Subscribe { room: self.outcome.room, since }).await?;
        }
        Ok(())
    }

    /// Sends a pending message again with its `client_id`; `counts` = it uses up an attempt.
    async fn resend(&mut self, ws: &mut Ws, client_id: String, counts: bool) -> Result<(), Failure> {
        let Some(pending) = self.pending.get_mut(&client_id) else { return Ok(()) };
        pending.retry_at = None;
        pending.last_sent = Instant::now();
        if counts && !pending.free_retry {
            pending.attempts += 1;
        }
        pending.free_retry = false;
        self.outcome.retries += 1;
        let frame =
            ClientFrame::Send { room: self.outcome.room, client_id, text: pending.text.clone(), reply_to: None };
        send_frame(ws, &frame).await
    }

    /// In the drain phase: whether every owed seq of the snapshot has arrived.
    fn drained(&mut self, acked: &AckedSets) -> bool {
        if self.drain_missing.is_none() {
            let owed = acked.get(&self.outcome.room).map(|seqs| self.outcome.tracker.missing(seqs).collect());
            self.drain_missing = Some(owed.unwrap_or_default());
        }
        let done = self.drain_missing.as_ref().is_some_and(BTreeSet::is_empty);
        if done && !self.reported.drained {
            self.reported.drained = true;
            self.shared.counters.drained.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    fn stopping(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Stop)
    }

    fn report_ready(&mut self) {
        if !self.reported.ready {
            self.reported.ready = true;
            self.shared.counters.ready.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report_sending_done_if_so(&mut self) {
        if self.next_message >= self.shared.messages && self.in_flight() == 0 {
            self.report_sending_done();
        }
    }

    fn report_sending_done(&mut self) {
        if !self.reported.sending_done {
            self.reported.sending_done = true;
            self.shared.counters.sending_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failure by code and keeps the first one's detail.
    fn fail(&mut self, failure: Failure) {
        tracing::debug!(client = self.index, code = failure.code, detail = %failure.detail, "bench client failure");
        tally::bump(&mut self.outcome.failures, failure.code, 1);
        if self.outcome.first_failure.is_none() {
            self.outcome.first_failure = Some(format!("{}: {}", failure.code, failure.detail));
        }
    }

    /// Reports whatever this client has not reported yet (so the coordinator never waits
    /// for a client that gave up) and hands in the outcome.
    fn finish(mut self) -> ClientOutcome {
        self.report_ready();
        self.report_sending_done();
        if !self.reported.drained {
            self.reported.drained = true;
            self.shared.counters.drained.fetch_add(1, Ordering::Relaxed);
        }
        self.outcome.unacked = self.pending.len() as u64;
        self.outcome
    }
}

/// `GET /api/token` of `control` with a Bearer token: a connection token and the node list.
pub async fn connection_token(
    http: &reqwest::Client,
    control: &str,
    bearer: &str,
) -> Result<(String, Vec<NodeInfo>), String> {
    #[derive(serde::Deserialize)]
    struct TokenReply {
        token: String,
        nodes: Vec<NodeInfo>,
    }
    let url = format!("{control}/api/token");
    let response = http.get(&url).bearer_auth(bearer).send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {body}"));
    }
    let reply: TokenReply = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((reply.token, reply.nodes))
}

/// Writes one frame, bounded by [`STEP_TIMEOUT`].
async fn send_frame(ws: &mut Ws, frame: &ClientFrame) -> Result<(), Failure> {
    let json = serde_json::to_string(frame).map_err(|e| Failure::new("encode", e.to_string()))?;
    timeout(STEP_TIMEOUT, ws.send(Message::text(json)))
        .await
        .map_err(|_| Failure::new("disconnected", "a write timed out"))?
        .map_err(|e| Failure::new("disconnected", e.to_string()))
}

/// The next tick of an optional interval (never, without one).
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}
