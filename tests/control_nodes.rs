//! The control plane's side of chat nodes, with real control members and plain HTTP calls
//! standing in for nodes: registration, heartbeats, failure detection and failover, the
//! routing table, connection tokens, the node list, DMs, history proxying and approval.

mod common;

use std::time::{Duration, Instant};

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use common::{tuning, wait_for, Api, TestCluster, SECRET};
use districhat::control::catalog::{NodeStatus, Room};
use districhat::control::secret::SECRET_HEADER;
use districhat::node::routing::Routes;
use districhat::node::{self, config::NodeConfig};
use districhat::protocol::{
    ChatMessage, Heartbeat, HeartbeatReply, HistoryPage, NodeLoad, NodeRegistration, RegisterNode, RoutingDelta,
    RoutingTable,
};
use districhat::{now_ms, token};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The bound on waiting for a failover: detection (3 s) plus a grace period, with margin.
const FAILOVER_BOUND: Duration = Duration::from_secs(12);

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client")
}

async fn register(base: &str, name: &str, addr: &str) -> NodeRegistration {
    let body = RegisterNode { name: name.into(), addr: addr.into(), public_ws_url: None };
    let response = http()
        .post(format!("{base}/internal/nodes/register"))
        .header(SECRET_HEADER, SECRET)
        .json(&body)
        .send()
        .await
        .expect("register");
    assert_eq!(response.status().as_u16(), 200, "register {name}");
    response.json().await.expect("registration")
}

async fn try_heartbeat_to(
    url: &str,
    node: u64,
    connections: u64,
    routes_version: u64,
) -> reqwest::Result<HeartbeatReply> {
    let beat = Heartbeat {
        node_id: node,
        load: NodeLoad { connections, ..NodeLoad::default() },
        routes_version,
        in_sync: Vec::new(),
        deltas: false,
    };
    let request = http().post(format!("{url}/internal/nodes/heartbeat")).header(SECRET_HEADER, SECRET).json(&beat);
    request.send().await?.error_for_status()?.json().await
}

async fn heartbeat_to(url: &str, node: u64, connections: u64, routes_version: u64) -> HeartbeatReply {
    try_heartbeat_to(url, node, connections, routes_version).await.expect("heartbeat")
}

/// Heartbeats through `url`, following one `not_leader` answer, the way a node does.
async fn try_heartbeat(url: &str, node: u64, connections: u64, routes_version: u64) -> reqwest::Result<HeartbeatReply> {
    match try_heartbeat_to(url, node, connections, routes_version).await? {
        HeartbeatReply::NotLeader { leader: Some(leader) } => {
            try_heartbeat_to(&format!("http://{leader}"), node, connections, routes_version).await
        }
        reply => Ok(reply),
    }
}

async fn heartbeat(url: &str, node: u64, connections: u64, routes_version: u64) -> HeartbeatReply {
    try_heartbeat(url, node, connections, routes_version).await.expect("heartbeat")
}

/// A node's heartbeat loop, every 200 ms, until dropped.
struct Beating(JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn beat(url: String, node: u64, connections: u64) -> Beating {
    Beating(tokio::spawn(async move {
        let mut version = 0;
        loop {
            let sent = tokio::time::timeout(Duration::from_secs(2), try_heartbeat(&url, node, connections, version));
            if let Ok(Ok(HeartbeatReply::Ok { routes: Some(table), .. })) = sent.await {
                version = table.version;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

/// GET with the client's session; the status and the JSON body (Null if none).
async fn get_json(api: &Api, url: &str) -> (u16, Value) {
    let mut request = api.http.get(url);
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn room_named(cluster: &TestCluster, member: usize, name: &str) -> Option<Room> {
    cluster.catalog(member).rooms.values().find(|room| room.name == name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_owner_fails_over_to_its_replica_and_returns_as_replica() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let follower = cluster.url((leader + 1) % 3);
    let n1 = register(&follower, "n1", "127.0.0.1:7101").await;
    let n2 = register(&follower, "n2", "127.0.0.1:7102").await;
    assert!(n1.approved && n2.approved);
    let _n2_beats = beat(follower.clone(), n2.node_id, 0);
    let n1_beats = beat(follower.clone(), n1.node_id, 0);

    let api = Api::logged_in(&follower, "alice").await;
    let (status, room) = api.post(&format!("{follower}/api/rooms"), json!({"name": "general"})).await.unwrap();
    assert_eq!(status, 201, "{room}");
    assert_eq!(
        (room["owner"].as_u64(), room["replica"].as_u64(), room["epoch"].as_u64()),
        (Some(n1.node_id), Some(n2.node_id), Some(1))
    );

    drop(n1_beats);
    let silent_since = Instant::now();
    let moved = wait_for("the room to fail over to its replica", FAILOVER_BOUND, || async {
        room_named(&cluster, leader, "general").filter(|room| room.owner == Some(n2.node_id))
    })
    .await;
    let took = silent_since.elapsed();
    assert!(took >= Duration::from_millis(2_500), "marked down after only {took:?}");
    assert_eq!((moved.replica, moved.epoch), (None, 2), "no third node for a new replica");
    assert_eq!(cluster.catalog(leader).nodes[&n1.node_id].status, NodeStatus::Down);

    let (room_route, routes) = wait_for("the follower to apply the failover", Duration::from_secs(5), || async {
        let routes: RoutingTable = http()
            .get(format!("{follower}/internal/routes"))
            .header(SECRET_HEADER, SECRET)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let room = routes.rooms.iter().find(|room| room.id == moved.id)?.clone();
        (room.epoch == 2).then_some((room, routes))
    })
    .await;
    assert!(routes.version > 0);
    assert_eq!((room_route.owner, room_route.replica), (Some(n2.node_id), None));
    assert!(routes.nodes.iter().any(|node| node.id == n1.node_id && !node.up && node.addr == "127.0.0.1:7101"));
    assert!(room_route.members.is_empty(), "members are listed for private rooms only");

    let metrics = reqwest::get(format!("{}/metrics", cluster.url(leader))).await.unwrap().text().await.unwrap();
    for name in ["districhat_node_failovers_total", "districhat_nodes", "districhat_node_rooms_owned"] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }

    // n1 speaks again: it is up, and the replica of the room that has none.
    let _n1_again = beat(follower.clone(), n1.node_id, 0);
    let back = wait_for("n1 to become the room's replica", Duration::from_secs(10), || async {
        room_named(&cluster, leader, "general").filter(|room| room.replica == Some(n1.node_id))
    })
    .await;
    assert_eq!((back.owner, back.epoch), (Some(n2.node_id), 3));
    assert_eq!(cluster.catalog(leader).nodes[&n1.node_id].status, NodeStatus::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_api_wants_the_secret_and_heartbeats_want_the_leader() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let follower = cluster.url((leader + 1) % 3);
    let base = cluster.url(leader);
    let client = http();

    let beat_body = json!({"node_id": 1, "load": NodeLoad::default(), "routes_version": 0});
    let anonymous = [
        client.post(format!("{base}/internal/nodes/heartbeat")).json(&beat_body),
        client.post(format!("{base}/internal/nodes/register")).json(&json!({"name": "n1", "addr": "h:1"})),
        client.get(format!("{base}/internal/routes")),
        client.get(format!("{base}/internal/nodes/loads")),
        client.post(format!("{base}/api/admin/nodes/1/approve")),
    ];
    for request in anonymous {
        let response = request.header(SECRET_HEADER, "wrong").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }

    let n1 = register(&follower, "n1", "127.0.0.1:7101").await;
    let token_key = n1.token_key.clone();
    let again = register(&base, "n1", "127.0.0.1:7201").await;
    assert_eq!(again.node_id, n1.node_id, "re-registering a name keeps its id");
    assert_eq!(again.token_key, token_key);
    let node = wait_for("the follower to see the new address", Duration::from_secs(5), || async {
        let node = cluster.catalog((leader + 1) % 3).nodes.get(&n1.node_id).cloned()?;
        (node.mesh_addr == "127.0.0.1:7201").then_some(node)
    })
    .await;
    assert_eq!((node.ws_url.as_str(), node.status), ("ws://127.0.0.1:7201/ws", NodeStatus::Up));
    assert_eq!(cluster.catalog(leader).nodes.len(), 1);

    for (body, code) in [
        (json!({"name": "n2", "addr": "no-port"}), "invalid_addr"),
        (json!({"name": "Bad Name", "addr": "h:1"}), "invalid_node_name"),
        (json!({"name": "n2"}), "invalid_request"),
    ] {
        let response = client
            .post(format!("{follower}/internal/nodes/register"))
            .header(SECRET_HEADER, SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["code"], code);
    }

    let reply = heartbeat_to(&follower, n1.node_id, 0, 0).await;
    let leader_addr = cluster.configs[leader].advertise.clone();
    assert_eq!(reply, HeartbeatReply::NotLeader { leader: leader_addr });
    assert_eq!(heartbeat_to(&base, 99, 0, 0).await, HeartbeatReply::Unknown);

    let HeartbeatReply::Ok { routes: Some(table), .. } = heartbeat_to(&base, n1.node_id, 0, 0).await else {
        panic!("the first heartbeat gets the routing table")
    };
    assert_eq!(table.nodes.len(), 1);
    assert!(table.nodes[0].up);
    assert!(table.version > 0);
    let current = heartbeat_to(&base, n1.node_id, 0, table.version).await;
    assert_eq!(
        current,
        HeartbeatReply::Ok { routes: None, delta: None, fetch: false },
        "an up-to-date node gets no table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_with_the_node_key_and_the_least_loaded_node_comes_first() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let follower = cluster.url((leader + 1) % 3);
    let n1 = register(&follower, "n1", "127.0.0.1:7101").await;
    let n2 = register(&follower, "n2", "127.0.0.1:7102").await;
    let _beats = [beat(follower.clone(), n1.node_id, 10), beat(follower.clone(), n2.node_id, 2)];

    let api = Api::logged_in(&follower, "alice").await;
    let (status, _) = get_json(&Api::new(), &format!("{follower}/api/token")).await;
    assert_eq!(status, 401, "a token needs a session");
    let view = wait_for("the loads to reach the token's node list", Duration::from_secs(10), || async {
        let (status, view) = get_json(&api, &format!("{follower}/api/token")).await;
        assert_eq!(status, 200, "{view}");
        (view["nodes"][0]["load"] == 2 && view["nodes"][1]["load"] == 10).then_some(view)
    })
    .await;
    assert_eq!(view["nodes"][0]["id"].as_u64(), Some(n2.node_id), "least-loaded first: {view}");
    assert_eq!(view["nodes"][0]["ws_url"], "ws://127.0.0.1:7102/ws");
    let token = view["token"].as_str().expect("token");
    let claims = token::verify(&n1.token_key, token, now_ms()).expect("the node's key verifies the token");
    assert_eq!(claims.username, "alice");
    assert_eq!(claims.user_id, cluster.catalog(leader).user_by_name("alice").unwrap().id);
    assert_eq!(view["expires_ms"].as_u64(), Some(claims.expires_ms));

    let (status, nodes) = get_json(&Api::new(), &format!("{follower}/api/nodes")).await;
    assert_eq!(status, 200, "the node list is public");
    assert_eq!(nodes["nodes"][0]["name"], "n1");
    assert_eq!(nodes["nodes"][0]["status"], "up");
    assert_eq!(nodes["nodes"][0]["load"]["connections"], 10);

    let status = districhat::cli::status::fetch(&follower).await.expect("status");
    assert_eq!(status.nodes.len(), 2);
    let table = districhat::cli::status::render(&status);
    assert!(table.contains("n1") && table.contains("127.0.0.1:7102") && table.contains("rooms owned"), "{table}");
}

/// A stand-in for a node's history endpoint: one message per page, saying what it was asked.
async fn fake_history(
    Path(room): Path<u64>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Json<HistoryPage>), StatusCode> {
    if headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()) != Some(SECRET) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let mut asked: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    asked.sort();
    let message = ChatMessage {
        room,
        seq: 1,
        id: format!("{room}:1"),
        sender: "alice".into(),
        sender_id: 1,
        text: asked.join("&"),
        ts: 0,
        ..ChatMessage::default()
    };
    // No keep-alive: once the test stops this server, the control must find it gone
    // (a pooled connection would outlive the listener).
    Ok(([(axum::http::header::CONNECTION, "close")], Json(HistoryPage { messages: vec![message], has_more: false })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_are_for_their_two_members_and_history_falls_back_to_the_replica() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let base = cluster.url((leader + 1) % 3);

    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let alive = listener.local_addr().unwrap().to_string();
    let router = Router::new().route("/internal/rooms/{id}/messages", get(fake_history));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let owner = register(&base, "dead", &dead).await;
    let replica = register(&base, "alive", &alive).await;
    let _beats = [beat(base.clone(), owner.node_id, 0), beat(base.clone(), replica.node_id, 0)];

    let alice = Api::logged_in(&base, "alice").await;
    let bob = Api::logged_in(&base, "bob").await;
    let carol = Api::logged_in(&base, "carol").await;
    let (status, dm) = alice.post(&format!("{base}/api/dms"), json!({"username": "bob"})).await.unwrap();
    assert_eq!(status, 201, "{dm}");
    assert_eq!((dm["private"].as_bool(), dm["dm"].as_bool()), (Some(true), Some(true)));
    assert_eq!((dm["owner"].as_u64(), dm["replica"].as_u64()), (Some(owner.node_id), Some(replica.node_id)));
    let id = dm["id"].as_u64().unwrap();
    let (status, again) = alice.post(&format!("{base}/api/dms"), json!({"username": "bob"})).await.unwrap();
    assert_eq!((status, again["id"].as_u64()), (200, Some(id)));
    let (status, theirs) = bob.post(&format!("{base}/api/dms"), json!({"username": "alice"})).await.unwrap();
    assert_eq!((status, theirs["id"].as_u64()), (200, Some(id)), "the same room from both sides");
    let (status, body) = alice.post(&format!("{base}/api/dms"), json!({"username": "alice"})).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (400, Some("dm_with_self")));
    let (status, body) = alice.post(&format!("{base}/api/dms"), json!({"username": "nobody"})).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let visible = |rooms: Value| rooms["rooms"].as_array().unwrap().iter().any(|room| room["id"].as_u64() == Some(id));
    assert!(visible(get_json(&bob, &format!("{base}/api/rooms")).await.1), "bob sees the dm");
    assert!(!visible(get_json(&carol, &format!("{base}/api/rooms")).await.1), "carol does not");
    let (status, body) =
        carol.post(&format!("{base}/api/rooms/{id}/members"), json!({"username": "carol"})).await.unwrap();
    assert_eq!(status, 404, "a non-member cannot join a dm: {body}");

    let history = format!("{base}/api/rooms/{id}/messages?before=10&limit=5");
    let (status, body) = get_json(&carol, &history).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = get_json(&Api::new(), &history).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = get_json(&alice, &format!("{base}/api/rooms/999/messages")).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, page) = get_json(&bob, &history).await;
    assert_eq!(status, 200, "the dead owner is skipped for the replica: {page}");
    assert_eq!(page["has_more"], false);
    assert_eq!(page["messages"][0]["text"], "before=10&limit=5");

    server.abort();
    let _ = server.await;
    let (status, body) = get_json(&alice, &history).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gate_holds_new_nodes_until_an_admin_approves() {
    let mut cluster = TestCluster::start(1, tuning()).await;
    cluster.configs[0].require_node_approval = true;
    cluster.stop(0).await;
    cluster.restart(0).await;
    cluster.wait_ready().await;
    let base = cluster.url(0);

    let api = Api::logged_in(&base, "alice").await;
    let (status, room) = api.post(&format!("{base}/api/rooms"), json!({"name": "early"})).await.unwrap();
    assert_eq!((status, room["owner"].as_u64(), room["epoch"].as_u64()), (201, None, Some(0)));
    let pending = register(&base, "n1", "127.0.0.1:7101").await;
    assert!(!pending.approved);
    assert!(!pending.token_key.is_empty());
    let HeartbeatReply::Ok { routes: Some(table), .. } = heartbeat(&base, pending.node_id, 0, 0).await else {
        panic!("a pending node heartbeats and gets the routing table")
    };
    assert!(!table.nodes[0].up, "a pending node is not up");
    let (_, view) = get_json(&api, &format!("{base}/api/token")).await;
    assert_eq!(view["nodes"], json!([]), "no node may serve yet");

    let approve = format!("{base}/api/admin/nodes/{}/approve", pending.node_id);
    let response = http().post(&approve).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = http().post(&approve).header(SECRET_HEADER, SECRET).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let node: Value = response.json().await.unwrap();
    assert_eq!((node["status"].as_str(), node["rooms_owned"].as_u64()), (Some("up"), Some(1)));
    let early = room_named(&cluster, 0, "early").unwrap();
    assert_eq!((early.owner, early.epoch), (Some(pending.node_id), 1), "the ownerless room found a home");
    assert!(register(&base, "n1", "127.0.0.1:7101").await.approved);
    let missing = http().post(format!("{base}/api/admin/nodes/42/approve")).header(SECRET_HEADER, SECRET).send().await;
    assert_eq!(missing.unwrap().status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_tls_proxy_is_listed_with_its_public_websocket_url() {
    let cluster = TestCluster::start(1, tuning()).await;
    let base = cluster.url(0);
    let public = "wss://chat.example.com/n1/ws";
    let send = |url: &'static str| {
        let body = RegisterNode { name: "n1".into(), addr: "127.0.0.1:7100".into(), public_ws_url: Some(url.into()) };
        http().post(format!("{base}/internal/nodes/register")).header(SECRET_HEADER, SECRET).json(&body).send()
    };
    let refused = send("https://chat.example.com/n1/ws").await.expect("register");
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(refused.json::<Value>().await.expect("error body")["code"], "invalid_ws_url");
    assert_eq!(send(public).await.expect("register").status().as_u16(), 200);
    let listed: Value =
        http().get(format!("{base}/api/nodes")).send().await.expect("nodes").json().await.expect("json");
    let list = listed.get("nodes").cloned().unwrap_or(listed);
    let urls: Vec<&str> = list.as_array().expect("node list").iter().filter_map(|n| n["ws_url"].as_str()).collect();
    assert_eq!(urls, vec![public]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_registration_is_refused_with_a_4xx_stops_and_says_why() {
    let cluster = TestCluster::start(1, tuning()).await;
    let dir = cluster.dir.path().join("n1");
    // Built in code, so `NodeConfig::load`'s own check of the URL is bypassed: this is
    // the control plane's refusal reaching the node.
    let mut config = NodeConfig::new("n1", "127.0.0.1:0", dir, vec![cluster.url(0)], SECRET);
    config.public_ws_url = Some("https://chat.example.com/n1/ws".into());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
    let started = tokio::time::timeout(Duration::from_secs(10), node::start(config, listener))
        .await
        .expect("the node gives up instead of retrying forever");
    let Err(error) = started else { panic!("a node with a refused registration started") };
    let error = format!("{error:#}");
    assert!(error.contains("400") && error.contains("invalid_ws_url"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_far_behind_is_told_to_fetch_and_gets_the_delta_beside_its_heartbeat() {
    let cluster = TestCluster::start_with(3, tuning(), |config| config.max_rooms_per_user = 0).await;
    let leader = cluster.wait_ready().await;
    let base = cluster.url(leader);
    let n1 = register(&base, "n1", "127.0.0.1:7101").await;
    let api = Api::logged_in(&base, "alice").await;
    let beat = |routes_version, deltas| {
        let body =
            Heartbeat { node_id: n1.node_id, load: NodeLoad::default(), routes_version, in_sync: Vec::new(), deltas };
        let request = http().post(format!("{base}/internal/nodes/heartbeat")).header(SECRET_HEADER, SECRET).json(&body);
        async move { request.send().await.expect("heartbeat").json::<HeartbeatReply>().await.expect("reply") }
    };
    let HeartbeatReply::Ok { routes: Some(table), .. } = beat(0, true).await else {
        panic!("version 0: the whole table")
    };
    let statuses = api.create_rooms(&base, "r", 1_001, 32).await;
    assert!(statuses.iter().all(|status| *status == 201));
    let reply = beat(table.version, true).await;
    assert!(
        matches!(reply, HeartbeatReply::Ok { routes: None, delta: None, fetch: true }),
        "1,001 rooms behind: too much for a heartbeat"
    );
    let delta_from = |from: &str| {
        let request = http().get(format!("{base}/internal/routes/delta?from={from}")).header(SECRET_HEADER, SECRET);
        async move {
            let response = request.send().await.expect("delta");
            (response.status(), response.text().await.expect("body"))
        }
    };
    let (status, body) = delta_from(&table.version.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delta: RoutingDelta = serde_json::from_str(&body).expect("a delta");
    assert_eq!((delta.from, delta.rooms.len()), (table.version, 1_001), "every new room, from the node's version");
    let fetched_version = delta.version;
    assert!(Routes::from(table.clone()).with_delta(delta).is_some(), "it fits the node's table");
    // Applied to the node's table, the delta gives the whole table of its version. The
    // catalog may move meanwhile (the leader marks the silent n1 down): compare a delta and
    // a whole table taken at one version.
    let (caught_up, whole_now) =
        wait_for("a delta and the whole table at one version", Duration::from_secs(10), || {
            let (delta, whole) = (delta_from(&table.version.to_string()), whole_table(&base));
            let table = table.clone();
            async move {
                let delta: RoutingDelta = serde_json::from_str(&delta.await.1).ok()?;
                let whole = whole.await;
                (delta.version == whole.version).then(|| (Routes::from(table).with_delta(delta), Routes::from(whole)))
            }
        })
        .await;
    assert_eq!(caught_up, Some(whole_now), "the delta applied gives the whole table");
    for (version, what) in [(0, "a node with no table"), (fetched_version + 1_000, "a version from the future")] {
        let (status, body) = delta_from(&version.to_string()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["code"], "no_delta", "{what}");
    }
    let (status, body) = delta_from("soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["code"], "invalid_query");
    let unsigned = http().get(format!("{base}/internal/routes/delta?from=1")).send().await.expect("delta");
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED, "the cluster secret is required");
    let HeartbeatReply::Ok { routes: Some(whole), .. } = beat(table.version, false).await else {
        panic!("a node that takes no deltas gets the whole table")
    };
    assert_eq!(whole.rooms.len(), 1_001);
    let (status, body) = api.post(&format!("{base}/api/rooms"), json!({"name": "one-more"})).await.expect("room");
    assert_eq!(status, 201, "{body}");
    let HeartbeatReply::Ok { delta: Some(delta), .. } = beat(whole.version, true).await else {
        panic!("one room behind: a delta")
    };
    assert_eq!(delta.from, whole.version);
    assert!(delta.rooms.iter().any(|room| room.id == body["id"].as_u64().expect("id")), "the new room is in it");
}

/// The whole routing table of the member at `base`.
async fn whole_table(base: &str) -> RoutingTable {
    let request = http().get(format!("{base}/internal/routes")).header(SECRET_HEADER, SECRET);
    request.send().await.expect("routes").json().await.expect("a table")
}
