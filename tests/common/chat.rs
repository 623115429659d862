//! Chat-node helpers for integration tests: a cluster of real controls and real nodes on
//! port 0, and a small WebSocket client that speaks the browser protocol.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use districhat::config::ControlConfig;
use districhat::node::config::NodeConfig;
use districhat::node::{self, NodeHandle};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{tuning, wait_for, Api, TestCluster, SECRET};

/// Controls plus chat nodes, all in this process.
pub struct ChatCluster {
    pub controls: TestCluster,
    pub nodes: Vec<Option<NodeHandle>>,
    pub node_configs: Vec<NodeConfig>,
}

impl ChatCluster {
    /// Starts 3 controls and `nodes` chat nodes with default settings, and waits until
    /// every node is up in the catalog (so new rooms get an owner and a replica).
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(nodes, |_| {}).await
    }

    /// [`Self::start`], with each node's config adjusted by `configure` before it starts
    /// (say, `replication.min_copies = 1`).
    pub async fn start_with(nodes: usize, configure: impl Fn(&mut NodeConfig)) -> Self {
        Self::start_configured(nodes, |_| {}, configure).await
    }

    /// [`Self::start_with`], with each control member's config adjusted by `control`.
    pub async fn start_configured(
        nodes: usize,
        control: impl Fn(&mut ControlConfig),
        configure: impl Fn(&mut NodeConfig),
    ) -> Self {
        let controls = TestCluster::start_with(3, tuning(), control).await;
        let urls: Vec<String> = (0..3).map(|i| controls.url(i)).collect();
        let mut cluster = Self { controls, nodes: Vec::new(), node_configs: Vec::new() };
        for i in 0..nodes {
            let dir = cluster.controls.dir.path().join(format!("n{}", i + 1));
            let config = NodeConfig::new(&format!("n{}", i + 1), "127.0.0.1:0", dir, urls.clone(), SECRET);
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
            let mut config = config;
            config.advertise = Some(listener.local_addr().expect("addr").to_string());
            configure(&mut config);
            cluster.nodes.push(Some(node::start(config.clone(), listener).await.expect("start node")));
            cluster.node_configs.push(config);
        }
        cluster.wait_nodes_up(nodes).await;
        cluster
    }

    pub fn url(&self) -> String {
        self.controls.url(0)
    }

    pub fn node(&self, i: usize) -> &NodeHandle {
        self.nodes[i].as_ref().expect("node running")
    }

    /// Index of the running node with this id.
    /// Node `node`'s own copy of `room`'s log on disk, as (seq, client_id) ascending.
    pub async fn room_log(&self, node: u64, room: u64) -> Vec<(u64, String)> {
        let log = self.node(self.index_of(node)).node.log.clone();
        let copy = tokio::task::spawn_blocking(move || log.after(room, 0, usize::MAX)).await.expect("join");
        copy.expect("room log").into_iter().map(|m| (m.seq, m.client_id)).collect()
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.id() == id)).expect("node with that id")
    }

    pub async fn wait_nodes_up(&self, count: usize) {
        let url = self.url();
        wait_for("chat nodes to be up in the catalog", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let nodes: Value = reqwest::get(format!("{url}/api/nodes")).await.ok()?.json().await.ok()?;
                let list =
                    nodes.get("nodes").and_then(Value::as_array).cloned().or_else(|| nodes.as_array().cloned())?;
                let up =
                    list.iter().filter(|n| n["status"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("up"))).count();
                (up >= count).then_some(())
            }
        })
        .await;
    }

    /// Stops node `i` (listener, sessions, links and tasks dropped).
    pub async fn stop_node(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node running");
        node.shutdown().await;
    }

    /// Starts node `i` again on its old address with its old data dir (after
    /// [`Self::stop_node`]).
    pub async fn restart_node(&mut self, i: usize) {
        let config = self.node_configs[i].clone();
        let addr = config.advertise.clone().expect("advertised address");
        let listener = wait_for("the node's old port to be free", Duration::from_secs(10), || async {
            TcpListener::bind(&addr).await.ok()
        })
        .await;
        self.nodes[i] = Some(node::start(config, listener).await.expect("restart node"));
    }

    /// Creates a room as `api`'s user; it is placed on two nodes when two are running.
    pub async fn create_room(&self, api: &Api, name: &str, private: bool) -> Value {
        let (status, room) = api
            .post(&format!("{}/api/rooms", self.url()), json!({"name": name, "private": private}))
            .await
            .expect("create");
        assert_eq!(status, 201, "create room: {room}");
        assert!(room["owner"].is_u64(), "room placed on a node: {room}");
        if self.nodes.iter().flatten().count() >= 2 {
            assert!(room["replica"].is_u64(), "room placed on two nodes: {room}");
        }
        room
    }
}

/// A mesh client that speaks for another node (it holds the cluster secret), for tests
/// that send nodes requests by hand. Keep the sender alive while the client is used.
pub fn mesh_client() -> (node::mesh::Mesh, tokio::sync::watch::Sender<bool>) {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let secret = districhat::control::secret::ClusterSecret::new(SECRET);
    (node::mesh::Mesh::new(secret, None, stop_rx, node::config::MeshLimits::default().link_queue), stop)
}

/// A connection token and the node list, as the browser gets them.
pub async fn token(api: &Api, base: &str) -> (String, Vec<Value>) {
    let response = api
        .http
        .get(format!("{base}/api/token"))
        .bearer_auth(api.token.as_deref().expect("logged in"))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("token json");
    let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
    (body["token"].as_str().expect("token").to_string(), nodes)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A browser-protocol client.
pub struct WsClient {
    socket: Socket,
    pub user: String,
    pub user_id: u64,
}

impl WsClient {
    /// Connects to `ws_url` and says hello with `token`.
    pub async fn connect(ws_url: &str, token: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("ws connect");
        let mut client = Self { socket, user: String::new(), user_id: 0 };
        client.send(json!({"type": "hello", "token": token})).await;
        let welcome = client.expect("welcome").await;
        client.user = welcome["user"].as_str().unwrap_or_default().to_string();
        client.user_id = welcome["user_id"].as_u64().unwrap_or_default();
        client
    }

    /// A client on an open socket that has not said hello yet.
    pub fn from_socket(socket: Socket) -> Self {
        Self { socket, user: String::new(), user_id: 0 }
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket.send(Message::Text(frame.to_string().into())).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, text: String) {
        self.socket.send(Message::Text(text.into())).await.expect("ws send");
    }

    /// The next JSON frame, or `None` after `timeout` or when the socket closes.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Reads frames until one of type `kind` (others are dropped); panics after 15 s.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(frame) = self.next(Duration::from_millis(200)).await {
                if frame["type"] == kind {
                    return frame;
                }
            }
        }
        panic!("no {kind} frame within 15 s");
    }

    /// Reads frames until a presence frame whose users satisfy `wanted` (`what` names it
    /// in the failure); panics after `within`.
    pub async fn presence_until(&mut self, what: &str, within: Duration, wanted: impl Fn(&[&str]) -> bool) {
        let deadline = Instant::now() + within;
        let mut last = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(frame) = self.next(left).await else { break };
            if frame["type"] == "presence" {
                let users: Vec<&str> =
                    frame["users"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                if wanted(&users) {
                    return;
                }
                last = Some(frame.clone());
            }
        }
        panic!("no presence frame with {what} within {within:?}; the last was {last:?}");
    }

    /// Subscribes and returns the messages sent before `subscribed`, plus its seq.
    pub async fn subscribe(&mut self, room: u64, since: Option<u64>) -> (Vec<Value>, u64) {
        let mut frame = json!({"type": "subscribe", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Some(frame) = self.next(Duration::from_millis(200)).await else { continue };
            match frame["type"].as_str() {
                Some("message") => messages.push(frame),
                Some("subscribed") => return (messages, frame["seq"].as_u64().unwrap_or(0)),
                Some("error") => panic!("subscribe failed: {frame}"),
                _ => {}
            }
        }
        panic!("not subscribed within 15 s");
    }
}

/// Sends and waits for the ack, retrying (same client_id) while the room is unavailable.
pub async fn send_acked(ws: &mut WsClient, room: u64, client_id: &str, within: Duration) -> u64 {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < within, "{client_id} not acknowledged within {within:?}");
        ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": format!("text of {client_id}")}))
            .await;
        match answer(ws, client_id).await {
            Ok(seq) => return seq,
            Err(frame) => {
                assert_eq!(frame["code"], "unavailable", "only an unavailable room may refuse: {frame}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The ack (its seq) or the error frame answering `client_id`.
pub async fn answer(ws: &mut WsClient, client_id: &str) -> Result<u64, Value> {
    loop {
        let frame = ws.next(Duration::from_secs(20)).await.unwrap_or_else(|| panic!("no answer to {client_id}"));
        match frame["type"].as_str() {
            Some("ack") if frame["client_id"] == client_id => return Ok(frame["seq"].as_u64().expect("seq")),
            Some("error") if frame["ref"] == client_id => return Err(frame),
            _ => {}
        }
    }
}

/// The room's whole history through the control's REST API (pages of the newest first),
/// as seq → client_id, or `None` when it cannot be read right now.
pub async fn history(api: &Api, base: &str, room: u64) -> Option<BTreeMap<u64, String>> {
    let mut all = BTreeMap::new();
    let mut before = String::new();
    loop {
        let page: Value = api
            .http
            .get(format!("{base}/api/rooms/{room}/messages?limit=100{before}"))
            .bearer_auth(api.token.as_deref()?)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        let messages = page["messages"].as_array()?;
        for message in messages {
            all.insert(message["seq"].as_u64()?, message["client_id"].as_str()?.to_string());
        }
        match messages.iter().filter_map(|m| m["seq"].as_u64()).min() {
            Some(first) if page["has_more"].as_bool() == Some(true) => before = format!("&before={first}"),
            _ => return Some(all),
        }
    }
}

/// Sends `count` messages (client_ids `m0`, `m1`, ...) without waiting between them and
/// collects their acks, as seq -> client_id; panics on any error (no fault is expected).
pub async fn fill(ws: &mut WsClient, room: u64, count: u64) -> BTreeMap<u64, String> {
    fill_with(ws, room, count, "x").await
}

/// Sends [`fill_with`] has in flight at most.
const FILL_WINDOW: u64 = 128;

/// [`fill`] with `text` as every message's text. At most [`FILL_WINDOW`] sends are in
/// flight at once, below a node's `limits.sends_in_flight`, so none is refused busy.
pub async fn fill_with(ws: &mut WsClient, room: u64, count: u64, text: &str) -> BTreeMap<u64, String> {
    let mut acked = BTreeMap::new();
    let mut sent = 0;
    while (acked.len() as u64) < count {
        while sent < count && sent - (acked.len() as u64) < FILL_WINDOW {
            ws.send(json!({"type": "send", "room": room, "client_id": format!("m{sent}"), "text": text})).await;
            sent += 1;
        }
        let frame = ws.next(Duration::from_secs(20)).await.expect("an answer to every send");
        match frame["type"].as_str() {
            Some("ack") => {
                let client_id = frame["client_id"].as_str().expect("client_id").to_string();
                acked.insert(frame["seq"].as_u64().expect("seq"), client_id);
            }
            Some("error") => panic!("a send failed before any fault: {frame}"),
            _ => {}
        }
    }
    acked
}
