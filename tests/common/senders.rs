//! Chat clients that send under load and keep what they saw: each message is retried
//! with its client_id until acknowledged, a dead connection is replaced by one to any
//! node the control offers (resuming with `since`), and every received seq is recorded,
//! so a test can check "acked once, at its seq" and "never twice, in order". Plus the
//! checks every load test makes afterwards: per client ([`collect`]) and per room
//! ([`checked_history`], through the REST API).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::chat::{token, ChatCluster, WsClient};
use super::{wait_for, Api};

/// What one sender saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// client_id → acked seq.
    pub acked: BTreeMap<String, u64>,
    /// Every seq received, in arrival order.
    pub received: Vec<u64>,
    /// `unavailable` answers to a send (a room on the move); `rate_limited` ones are not
    /// kept (they are the client's own pace).
    pub retryable_errors: Vec<String>,
    /// Connections replaced after one closed or fell silent.
    pub reconnects: usize,
}

/// Who sends what: `count` messages `{label}-{i}` to `room`, first through `ws_url`.
pub struct Sender {
    pub api: Api,
    pub base: String,
    pub ws_url: String,
    pub room: u64,
    pub label: String,
    pub count: usize,
    /// Bumped on every ack (tests wait on it to act mid-load).
    pub acked: Arc<AtomicUsize>,
    /// The last `.0` messages wait until `.1` says true: a test that acts mid-load opens
    /// it when it is done, so some sends surely come after, however fast the machine.
    pub tail: (usize, watch::Receiver<bool>),
}

/// Holds back the last sends of every sender until [`TailGate::open`].
pub struct TailGate {
    open: watch::Sender<bool>,
    held: usize,
}

impl TailGate {
    /// Holds back each sender's last `held` messages.
    pub fn new(held: usize) -> Self {
        Self { open: watch::Sender::new(false), held }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// What a [`Sender`] holds back, and the gate it waits on.
    pub fn tail(&self) -> (usize, watch::Receiver<bool>) {
        (self.held, self.open.subscribe())
    }
}

impl Sender {
    /// Sends every message, each retried with the same client_id until acknowledged
    /// (at most 60 s each). Only `unavailable` and `rate_limited` errors are expected.
    pub async fn run(self) -> Outcome {
        let Sender { api, base, ws_url, room, label, count, acked, tail: (held, mut gate) } = self;
        let mut outcome = Outcome::default();
        let mut ws = connect_any(&api, &base, &ws_url).await;
        ws.subscribe(room, None).await;
        let mut last_seen = 0u64;
        for i in 0..count {
            if i + held >= count {
                let _ = gate.wait_for(|open| *open).await;
            }
            let client_id = format!("{label}-{i}");
            let started = Instant::now();
            'retry: loop {
                assert!(started.elapsed() < Duration::from_secs(60), "{client_id} never acknowledged");
                ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": client_id})).await;
                loop {
                    let Some(frame) = ws.next(Duration::from_secs(5)).await else {
                        // Closed or silent: reconnect (to any node) and resume from what we saw.
                        outcome.reconnects += 1;
                        ws = connect_any(&api, &base, &ws_url).await;
                        let (missed, _) = ws.subscribe(room, Some(last_seen)).await;
                        for message in missed {
                            outcome.record(&mut last_seen, &message);
                        }
                        continue 'retry;
                    };
                    match frame["type"].as_str() {
                        Some("message") => outcome.record(&mut last_seen, &frame),
                        Some("ack") if frame["client_id"] == client_id.as_str() => {
                            outcome.acked.insert(client_id.clone(), frame["seq"].as_u64().expect("seq"));
                            acked.fetch_add(1, Ordering::SeqCst);
                            break 'retry;
                        }
                        Some("error") if frame["ref"] == client_id.as_str() => {
                            let code = frame["code"].as_str().unwrap_or_default();
                            assert!(matches!(code, "unavailable" | "rate_limited"), "{frame}");
                            if code == "unavailable" {
                                outcome.retryable_errors.push(frame["message"].to_string());
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue 'retry;
                        }
                        _ => {}
                    }
                }
            }
        }
        outcome
    }
}

impl Outcome {
    fn record(&mut self, last_seen: &mut u64, message: &Value) {
        let seq = message["seq"].as_u64().expect("seq");
        self.received.push(seq);
        *last_seen = (*last_seen).max(seq);
    }
}

/// Connects to `preferred`, or any node the control offers when it does not answer.
pub async fn connect_any(api: &Api, base: &str, preferred: &str) -> WsClient {
    wait_for("a node to accept the client", Duration::from_secs(30), || async {
        let (token, nodes) = token(api, base).await;
        let mut urls = vec![preferred.to_string()];
        urls.extend(nodes.iter().filter_map(|n| n["ws_url"].as_str().map(str::to_string)));
        for url in urls {
            let attempt =
                tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url.as_str())).await;
            if let Ok(Ok(_)) = attempt {
                return Some(WsClient::connect(&url, &token).await);
            }
        }
        None
    })
    .await
}

/// Every message of the room via the REST history, oldest first.
pub async fn full_history(api: &Api, base: &str, room: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{base}/api/rooms/{room}/messages?limit=200");
        if let Some(before) = before {
            url.push_str(&format!("&before={before}"));
        }
        let response = api.http.get(url).bearer_auth(api.token.as_deref().expect("token")).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 200);
        let page: Value = response.json().await.expect("json");
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        before = messages.last().and_then(|m| m["seq"].as_u64());
        all.extend(messages);
        if page["has_more"] != true {
            break;
        }
    }
    all.reverse();
    all
}

/// One sender per room on every running node of `cluster`, labelled `r{room}-n{index}`,
/// each sending `count` messages, the last ones once `gate` is open; `acked` counts the
/// acks of all of them.
pub fn spawn_on_every_node(
    cluster: &ChatCluster,
    api: &Api,
    rooms: &[u64],
    count: usize,
    acked: &Arc<AtomicUsize>,
    gate: &TailGate,
) -> Vec<JoinHandle<Outcome>> {
    let mut clients = Vec::new();
    for room in rooms {
        for index in (0..cluster.nodes.len()).filter(|i| cluster.nodes[*i].is_some()) {
            let sender = Sender {
                api: api.clone(),
                base: cluster.url(),
                ws_url: cluster.node(index).ws_url(),
                room: *room,
                label: format!("r{room}-n{index}"),
                count,
                acked: acked.clone(),
                tail: gate.tail(),
            };
            clients.push(tokio::spawn(sender.run()));
        }
    }
    clients
}

/// What all senders saw together.
pub struct Collected {
    /// client_id → acked seq, over every sender.
    pub acked: BTreeMap<String, u64>,
    pub retryable_errors: Vec<String>,
    pub reconnects: usize,
}

/// Waits for every sender and checks each one's receipts: no message twice, none out of
/// order.
pub async fn collect(clients: Vec<JoinHandle<Outcome>>) -> Collected {
    let mut collected = Collected { acked: BTreeMap::new(), retryable_errors: Vec::new(), reconnects: 0 };
    for client in clients {
        let outcome = client.await.expect("client task");
        let unique: BTreeSet<u64> = outcome.received.iter().copied().collect();
        assert_eq!(unique.len(), outcome.received.len(), "a client saw a message twice");
        assert!(outcome.received.windows(2).all(|w| w[0] < w[1]), "a client saw messages out of order");
        collected.retryable_errors.extend(outcome.retryable_errors);
        collected.reconnects += outcome.reconnects;
        collected.acked.extend(outcome.acked);
    }
    collected
}

/// The room's history, checked: seqs 1..=n without a gap, no client_id stored twice, and
/// every acked client_id starting with `prefix` at its acked seq. Returns the history as
/// (seq, client_id), ascending.
pub async fn checked_history(
    api: &Api,
    base: &str,
    room: u64,
    acked: &BTreeMap<String, u64>,
    prefix: &str,
) -> Vec<(u64, String)> {
    let history = full_history(api, base, room).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "room {room}: gapless and in order");
    let by_client_id: BTreeMap<String, u64> = history
        .iter()
        .map(|m| (m["client_id"].as_str().expect("client_id").to_string(), m["seq"].as_u64().expect("seq")))
        .collect();
    assert_eq!(by_client_id.len(), history.len(), "room {room}: no message stored twice");
    for (client_id, seq) in acked.iter().filter(|(id, _)| id.starts_with(prefix)) {
        assert_eq!(by_client_id.get(client_id), Some(seq), "acked {client_id} is in history at seq {seq}");
    }
    let mut log: Vec<(u64, String)> = by_client_id.into_iter().map(|(id, seq)| (seq, id)).collect();
    log.sort();
    log
}
