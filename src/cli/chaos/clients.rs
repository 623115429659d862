//! The chaos run's chat clients: each follows one room and sends into it one change at a
//! time, like `static/chat.js` does: messages, and edits, reactions and deletes of its own
//! earlier messages (message events are log entries too, so every promise the checks
//! count holds for them: docs/PROTOCOL.md, "Message events"). Every change carries a
//! `client_id`; a change that is not
//! acknowledged (an error, a timeout, a dropped connection) is retried with the same
//! `client_id`; a dropped connection is replaced by one to any node (a fresh token from
//! any control), resuming with `since` = the last seq it showed. What they saw is
//! recorded for [`super::check`]: every ack, and every delivered (room, seq, client_id).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::seq::SliceRandom;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long a client waits for the answer to a send before it reconnects and retries.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// client_id → (room, seq) of its acknowledgement (the first one; a later, different
    /// answer to a retry is counted in `ack_changed`).
    pub acked: BTreeMap<String, (u64, u64)>,
    /// A retry answered with another seq than the first ack of the same client_id.
    pub ack_changed: usize,
    /// Per room, when its latest acknowledgement came.
    pub last_ack: BTreeMap<u64, Instant>,
    /// (room, seq) → the client_ids delivered there (to any client).
    pub delivered: BTreeMap<(u64, u64), BTreeSet<String>>,
    /// Deliveries at or below the seq a client had already shown (twice or out of order).
    pub repeated: usize,
    /// Deliveries that skipped seqs a client had not shown.
    pub skipped: usize,
    /// Error codes of refused sends, with counts.
    pub errors: BTreeMap<String, usize>,
    pub reconnects: usize,
}

/// What the clients share with their tasks (a std lock: never held across an await).
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    seen: Mutex<Seen>,
}

impl Shared {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running clients.
pub struct Clients {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where the clients connect and who they are.
#[derive(Clone)]
pub struct Target {
    pub http: reqwest::Client,
    /// `http://host:port` of every control; a client uses whichever answers.
    pub controls: Vec<String>,
    /// A session token (Bearer) of the chaos user.
    pub session: String,
}

impl Clients {
    /// Starts `count` clients over `rooms` (round robin), each sending every `interval`.
    pub fn start(target: Target, rooms: &[u64], count: usize, interval: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let tasks = (0..count)
            .map(|i| {
                let client = Client {
                    name: format!("chaos{i}-{:06x}", rand::random::<u32>() & 0xff_ffff),
                    room: rooms[i % rooms.len().max(1)],
                    target: target.clone(),
                    shared: shared.clone(),
                    last_seen: 0,
                    own: Vec::new(),
                };
                tokio::spawn(client.run(interval))
            })
            .collect();
        Self { shared, tasks }
    }

    /// When `room` was last acknowledged a send.
    pub fn last_ack(&self, room: u64) -> Option<Instant> {
        self.shared.seen().last_ack.get(&room).copied()
    }

    pub fn acked(&self) -> usize {
        self.shared.seen().acked.len()
    }

    /// Stops every client once its current send is answered (or after a bound) and
    /// returns what they saw.
    pub async fn stop(self) -> Seen {
        self.shared.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(ANSWER_TIMEOUT + Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
        std::mem::take(&mut *self.shared.seen())
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    name: String,
    room: u64,
    target: Target,
    shared: Arc<Shared>,
    /// The highest seq this client has shown (what it resumes from).
    last_seen: u64,
    /// The seqs of this client's acknowledged messages not deleted: its events' targets.
    own: Vec<u64>,
}

/// What became of one attempt at a send.
enum Attempt {
    Acked(u64),
    Refused(String),
    Reconnect,
}

impl Client {
    async fn run(mut self, interval: Duration) {
        let mut socket: Option<Ws> = None;
        let mut n = 0u64;
        while !self.stopped() {
            let client_id = format!("{}-{n}", self.name);
            let change = self.change(n, &client_id);
            loop {
                if self.stopped() {
                    return;
                }
                let Some(ws) = socket.as_mut() else {
                    socket = self.connect().await;
                    if socket.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                };
                match self.attempt(ws, &change).await {
                    Attempt::Acked(seq) => {
                        self.record_ack(&client_id, seq);
                        match change["type"].as_str() {
                            Some("send") => self.own.push(seq),
                            Some("delete") => self.own.retain(|own| Some(*own) != change["target"].as_u64()),
                            _ => {}
                        }
                        break;
                    }
                    Attempt::Refused(code) => {
                        *self.shared.seen().errors.entry(code.clone()).or_default() += 1;
                        if code == "not_found" || code == "forbidden" {
                            // A refused event is an answer, not an outage: next change.
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Attempt::Reconnect => {
                        socket = None;
                        self.shared.seen().reconnects += 1;
                    }
                }
            }
            n += 1;
            tokio::time::sleep(interval).await;
        }
    }

    /// Change `n`: every tenth deletes the client's oldest message, the others in turn
    /// send, edit the newest and toggle a reaction on it (a send while it has none).
    fn change(&self, n: u64, client_id: &str) -> Value {
        let room = self.room;
        match (n % 10, n % 3, self.own.first(), self.own.last()) {
            (9, _, Some(oldest), _) => {
                json!({"type": "delete", "room": room, "client_id": client_id, "target": oldest})
            }
            (_, 1, _, Some(newest)) => {
                json!({"type": "edit", "room": room, "client_id": client_id, "target": newest, "text": client_id})
            }
            (_, 2, _, Some(newest)) => {
                json!({"type": "react", "room": room, "client_id": client_id, "target": newest, "emoji": "👍"})
            }
            _ => json!({"type": "send", "room": room, "client_id": client_id, "text": client_id}),
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Sends `change` once and reads frames until its answer.
    async fn attempt(&mut self, ws: &mut Ws, change: &Value) -> Attempt {
        let client_id = change["client_id"].as_str().unwrap_or_default();
        let frame = change;
        if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
            return Attempt::Reconnect;
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let Some(frame) = next_frame(ws, deadline).await else { return Attempt::Reconnect };
            match frame["type"].as_str() {
                Some("message") => self.delivered(&frame),
                Some("ack") if frame["client_id"] == client_id => {
                    return frame["seq"].as_u64().map_or(Attempt::Reconnect, Attempt::Acked)
                }
                Some("error") if frame["ref"] == client_id => {
                    return Attempt::Refused(frame["code"].as_str().unwrap_or("?").to_string())
                }
                _ => {}
            }
        }
    }

    /// A token from the first control that gives one, then a random node of its list,
    /// subscribed from `last_seen` (the messages missed arrive before `subscribed`).
    async fn connect(&mut self) -> Option<Ws> {
        let mut controls = self.target.controls.clone();
        controls.shuffle(&mut rand::thread_rng());
        for control in controls {
            let Some((token, mut urls)) = self.token(&control).await else { continue };
            urls.shuffle(&mut rand::thread_rng());
            for url in urls {
                if let Some(ws) = self.subscribe(&url, &token).await {
                    return Some(ws);
                }
            }
        }
        None
    }

    async fn token(&self, control: &str) -> Option<(String, Vec<String>)> {
        let request = self.target.http.get(format!("{control}/api/token")).bearer_auth(&self.target.session);
        let body: Value = request.timeout(Duration::from_secs(3)).send().await.ok()?.json().await.ok()?;
        let urls = body["nodes"].as_array()?.iter().filter_map(|n| n["ws_url"].as_str().map(str::to_string)).collect();
        Some((body["token"].as_str()?.to_string(), urls))
    }

    async fn subscribe(&mut self, url: &str, token: &str) -> Option<Ws> {
        let connected = tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url)).await;
        let (mut ws, _) = connected.ok()?.ok()?;
        let hello = json!({"type": "hello", "token": token});
        let subscribe = json!({"type": "subscribe", "room": self.room, "since": self.last_seen});
        ws.send(Message::Text(hello.to_string().into())).await.ok()?;
        ws.send(Message::Text(subscribe.to_string().into())).await.ok()?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let frame = next_frame(&mut ws, deadline).await?;
            match frame["type"].as_str() {
                Some("message") => self.delivered(&frame),
                Some("subscribed") => return Some(ws),
                Some("error") => return None,
                _ => {}
            }
        }
    }

    fn delivered(&mut self, frame: &Value) {
        let (Some(room), Some(seq)) = (frame["room"].as_u64(), frame["seq"].as_u64()) else { return };
        let client_id = frame["client_id"].as_str().unwrap_or_default().to_string();
        let mut seen = self.shared.seen();
        seen.delivered.entry((room, seq)).or_default().insert(client_id);
        if room != self.room {
            return;
        }
        if seq <= self.last_seen {
            seen.repeated += 1;
        } else if seq > self.last_seen + 1 {
            seen.skipped += 1;
        }
        self.last_seen = self.last_seen.max(seq);
    }

    fn record_ack(&self, client_id: &str, seq: u64) {
        let mut seen = self.shared.seen();
        match seen.acked.get(client_id) {
            Some((_, first)) if *first != seq => seen.ack_changed += 1,
            Some(_) => {}
            None => {
                seen.acked.insert(client_id.to_string(), (self.room, seq));
            }
        }
        seen.last_ack.insert(self.room, Instant::now());
    }
}

/// The next JSON text frame, or `None` at the deadline or when the socket closes.
async fn next_frame(ws: &mut Ws, deadline: Instant) -> Option<Value> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}
