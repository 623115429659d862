//! The steady load of a drill round and the checks after it. [`Load::control`] creates
//! rooms one after another through a control; [`Load::chat`] sends chat messages one after
//! another through a node, resuming on another node and retrying with the same
//! `client_id` when its connection or the room's owner fails. Both record, for every
//! acknowledged write, when it was last attempted and when it was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::process::wait;

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub seq: u64,
    pub last_attempt: Instant,
    pub done: Instant,
}

/// Everything a load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub acked: Vec<Ack>,
    /// Chat only: deliveries whose seq was not above the previous one.
    pub out_of_order: usize,
}

impl LoadReport {
    /// When the first write attempted after `t` was acknowledged.
    pub fn first_success_after(&self, t: Instant) -> Option<Instant> {
        self.acked.iter().filter(|a| a.last_attempt >= t).map(|a| a.done).min()
    }
}

/// What a load shares with its task (std locks, never held across an await).
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acked: AtomicUsize,
    report: Mutex<LoadReport>,
}

impl Shared {
    fn record(&self, ack: Ack) {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).acked.push(ack);
        self.acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// A running load.
pub struct Load {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Load {
    pub fn acked(&self) -> usize {
        self.shared.acked.load(Ordering::SeqCst)
    }

    pub async fn wait_acks(&self, count: usize) -> anyhow::Result<()> {
        wait("acknowledged writes", Duration::from_secs(60), || async { self.acked() >= count }).await
    }

    pub async fn wait_success_after(&self, t: Instant, timeout: Duration) -> anyhow::Result<()> {
        wait("a write to succeed after the kill", timeout, || async {
            self.shared.report.lock().unwrap_or_else(|p| p.into_inner()).first_success_after(t).is_some()
        })
        .await
    }

    pub async fn stop(&self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
                abort.abort();
            }
        }
        std::mem::take(&mut *self.shared.report.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn spawn(shared: Arc<Shared>, task: JoinHandle<()>) -> Self {
        Self { shared, task: Mutex::new(Some(task)) }
    }
}

impl Load {
    /// Creates rooms `{prefix}-{i}` through the `controls` (the first that answers, like a
    /// client behind a load balancer: a member that cannot be reached or answers 5xx makes
    /// it move to the next), each retried until acknowledged.
    /// A user past the room quota (`max_rooms_per_user`) is replaced by a new one.
    pub fn control(http: reqwest::Client, controls: Vec<String>, mut token: String, prefix: String) -> Self {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            let mut current = 0usize;
            while !state.stop.load(Ordering::SeqCst) {
                let name = format!("{prefix}-{i}");
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let last_attempt = Instant::now();
                    let control = controls.get(current % controls.len().max(1)).cloned().unwrap_or_default();
                    let sent = http
                        .post(format!("{control}/api/rooms"))
                        .bearer_auth(&token)
                        .json(&json!({"name": name}))
                        .send()
                        .await;
                    let (status, body) = match sent {
                        Ok(response) => {
                            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
                        }
                        Err(_) => (0, Value::Null),
                    };
                    // A `room_exists` after a failed attempt means that attempt committed.
                    if status == 201 || (status == 409 && body["code"] == "room_exists" && attempts > 1) {
                        state.record(Ack { key: name.clone(), seq: i, last_attempt, done: Instant::now() });
                        break;
                    }
                    if state.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if status == 403 && body["code"] == "quota_exceeded" {
                        if let Ok(fresh) = crate::cli::bench::control::bench_login(&http, &control).await {
                            token = fresh;
                            continue;
                        }
                    }
                    if status == 0 || status >= 500 {
                        current += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
        });
        Self::spawn(shared, task)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Load {
    /// Sends messages to `room`, preferring nodes other than `avoid` (the victim), and
    /// follows it from seq `since` on.
    pub fn chat(http: reqwest::Client, control: String, token: String, room: u64, avoid: String, since: u64) -> Self {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            let run: u32 = rand::random();
            let mut last_seen = since;
            let mut ws: Option<Ws> = None;
            let mut i = 0u64;
            while !state.stop.load(Ordering::SeqCst) {
                let client_id = format!("drill-{run:08x}-{i}");
                loop {
                    if state.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if ws.is_none() {
                        ws = connect(&http, &control, &token, room, &avoid, &mut last_seen, &state).await;
                        if ws.is_none() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                    let Some(socket) = ws.as_mut() else { continue };
                    let last_attempt = Instant::now();
                    let frame =
                        json!({"type": "send", "room": room, "client_id": client_id, "text": format!("drill {i}")});
                    if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                        ws = None;
                        continue;
                    }
                    match await_ack(socket, &client_id, &mut last_seen, &state).await {
                        Reply::Acked(seq) => {
                            state.record(Ack { key: client_id.clone(), seq, last_attempt, done: Instant::now() });
                            break;
                        }
                        Reply::Retry => tokio::time::sleep(Duration::from_millis(50)).await,
                        Reply::Reconnect => ws = None,
                    }
                }
                i += 1;
            }
        });
        Self::spawn(shared, task)
    }
}

enum Reply {
    Acked(u64),
    Retry,
    Reconnect,
}

/// Reads frames until the ack (or an error) for `client_id`, noting deliveries.
async fn await_ack(socket: &mut Ws, client_id: &str, last_seen: &mut u64, state: &Shared) -> Reply {
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            Ok(Some(Ok(_))) => continue,
            _ => return Reply::Reconnect,
        };
        match frame["type"].as_str() {
            Some("message") => note_delivery(&frame, last_seen, state),
            Some("ack") if frame["client_id"] == client_id => return Reply::Acked(frame["seq"].as_u64().unwrap_or(0)),
            Some("error") if frame["ref"] == client_id => return Reply::Retry,
            _ => {}
        }
    }
}

fn note_delivery(frame: &Value, last_seen: &mut u64, state: &Shared) {
    let seq = frame["seq"].as_u64().unwrap_or(0);
    if seq <= *last_seen {
        state.report.lock().unwrap_or_else(|p| p.into_inner()).out_of_order += 1;
    }
    *last_seen = (*last_seen).max(seq);
}

/// A token from the control, then the first node (other than `avoid`) that takes us;
/// subscribes with `since` so nothing in between is missed.
async fn connect(
    http: &reqwest::Client,
    control: &str,
    token: &str,
    room: u64,
    avoid: &str,
    last_seen: &mut u64,
    state: &Shared,
) -> Option<Ws> {
    let body: Value =
        http.get(format!("{control}/api/token")).bearer_auth(token).send().await.ok()?.json().await.ok()?;
    let ws_token = body["token"].as_str()?.to_string();
    let mut urls: Vec<String> =
        body["nodes"].as_array()?.iter().filter_map(|n| n["ws_url"].as_str().map(str::to_string)).collect();
    urls.sort_by_key(|url| url.contains(avoid));
    for url in urls {
        let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url.as_str())).await
        else {
            continue;
        };
        let hello = json!({"type": "hello", "token": ws_token});
        let subscribe = json!({"type": "subscribe", "room": room, "since": *last_seen});
        if socket.send(Message::Text(hello.to_string().into())).await.is_err()
            || socket.send(Message::Text(subscribe.to_string().into())).await.is_err()
        {
            continue;
        }
        // Wait for `subscribed`, taking the missed messages on the way.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await
            else {
                break;
            };
            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match frame["type"].as_str() {
                Some("message") => note_delivery(&frame, last_seen, state),
                Some("subscribed") => return Some(socket),
                Some("error") => break,
                _ => {}
            }
        }
    }
    None
}

/// What a check found.
pub struct Check {
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
}

/// Every acknowledged room exists exactly once. Ask the leader: it has applied every
/// write it acknowledged (a member that just restarted may still be catching up).
pub async fn check_rooms(
    http: &reqwest::Client,
    control: &str,
    token: &str,
    report: &LoadReport,
) -> anyhow::Result<Check> {
    let rooms: Value = http.get(format!("{control}/api/rooms")).bearer_auth(token).send().await?.json().await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for room in rooms["rooms"].as_array().into_iter().flatten() {
        if let Some(name) = room["name"].as_str() {
            *counts.entry(name.to_string()).or_default() += 1;
        }
    }
    let lost = report.acked.iter().filter(|a| !counts.contains_key(&a.key)).count();
    let duplicated = report.acked.iter().filter(|a| counts.get(&a.key).is_some_and(|c| *c > 1)).count();
    Ok(Check { lost, duplicated, out_of_order: 0 })
}

/// A room's whole history through the REST API (pages of the newest first), as seq →
/// client_id, from the first of `controls` that serves every page.
pub async fn fetch_history(
    http: &reqwest::Client,
    controls: &[String],
    token: &str,
    room: u64,
) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut last = anyhow::anyhow!("no control configured");
    for control in controls {
        match history_from(http, control, token, room).await {
            Ok(history) => return Ok(history),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn history_from(
    http: &reqwest::Client,
    control: &str,
    token: &str,
    room: u64,
) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut history = BTreeMap::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{control}/api/rooms/{room}/messages?limit=200");
        if let Some(before) = before {
            url.push_str(&format!("&before={before}"));
        }
        let page: Value = http.get(url).bearer_auth(token).send().await?.error_for_status()?.json().await?;
        let batch = page["messages"].as_array().cloned().unwrap_or_default();
        before = batch.last().and_then(|m| m["seq"].as_u64());
        for m in &batch {
            if let (Some(seq), Some(id)) = (m["seq"].as_u64(), m["client_id"].as_str()) {
                history.insert(seq, id.to_string());
            }
        }
        if page["has_more"] != true || before.is_none() {
            return Ok(history);
        }
    }
}

/// History holds every acknowledged message once, at its acknowledged seq, gap-free.
pub async fn check_history(
    http: &reqwest::Client,
    control: &str,
    token: &str,
    room: u64,
    report: &LoadReport,
) -> anyhow::Result<Check> {
    let history = fetch_history(http, &[control.to_string()], token, room).await?;
    let gaps = history.keys().enumerate().filter(|(i, seq)| **seq != *i as u64 + 1).count();
    let mut by_id: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (seq, id) in &history {
        by_id.entry(id.clone()).or_default().push(*seq);
    }
    let acked: BTreeSet<&str> = report.acked.iter().map(|a| a.key.as_str()).collect();
    let lost = report.acked.iter().filter(|a| by_id.get(&a.key).is_none_or(|seqs| !seqs.contains(&a.seq))).count();
    let duplicated = by_id.iter().filter(|(id, seqs)| acked.contains(id.as_str()) && seqs.len() > 1).count();
    Ok(Check { lost, duplicated, out_of_order: gaps + report.out_of_order })
}
