//! A room's presence after a node that had followers crashes (docs/PROTOCOL.md, "Typing and
//! presence"): the crashed node's sessions cannot say that they left, so the owner must
//! take its users out on its own, whether the node stays down (the catalog marks it down)
//! or comes back at once (a new incarnation dials the owner's node); and a node that was
//! only paused gets its followers back. Real processes, so the crash is a SIGKILL and
//! nobody says goodbye. On the code before this change the two crash tests failed: the
//! crashed node's user stayed present for good.

mod common;

use std::time::Duration;

use common::chat::{token, WsClient};
use common::processes::ProcessCluster;
use common::Api;
use serde_json::Value;

/// How long a presence change may take to reach the watcher.
const PRESENCE_WITHIN: Duration = Duration::from_secs(30);

/// A room owned by one node, `watcher` following it there, and `ghost` on a node that
/// is neither its owner nor its replica.
struct Haunted {
    /// Its presence lists both users.
    watcher: WsClient,
    /// Open until its node dies: a session that closed would say it left.
    ghost: WsClient,
    ghost_api: Api,
    /// The ghost's node: its name (`n1`…), id and WebSocket URL.
    ghost_node: String,
    ghost_node_id: u64,
    ghost_url: String,
    room: u64,
}

async fn room_with_a_ghost(cluster: &ProcessCluster) -> Haunted {
    let base = &cluster.control_url;
    let watcher_api = Api::logged_in(base, "watcher").await;
    let ghost_api = Api::logged_in(base, "ghost").await;
    let (status, room) = watcher_api
        .post(&format!("{base}/api/rooms"), serde_json::json!({"name": "lobby", "private": false}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{room}");
    let (room_id, owner, replica) = (room["id"].as_u64().unwrap(), room["owner"].as_u64(), room["replica"].as_u64());
    let nodes = watcher_api.get(&format!("{base}/api/nodes")).await.expect("nodes");
    let nodes: Vec<Value> = nodes["nodes"].as_array().cloned().unwrap_or_default();
    let owner_node = nodes.iter().find(|n| n["id"].as_u64() == owner).expect("the owner node");
    let ghost_node = nodes
        .iter()
        .find(|n| n["id"].as_u64() != owner && n["id"].as_u64() != replica)
        .expect("a node that holds no copy of the room");

    let (watcher_token, _) = token(&watcher_api, base).await;
    let mut watcher = WsClient::connect(owner_node["ws_url"].as_str().unwrap(), &watcher_token).await;
    watcher.subscribe(room_id, None).await;
    let (ghost_token, _) = token(&ghost_api, base).await;
    let mut ghost = WsClient::connect(ghost_node["ws_url"].as_str().unwrap(), &ghost_token).await;
    ghost.subscribe(room_id, None).await;
    watcher.presence_until("both users", PRESENCE_WITHIN, |users| users == ["ghost", "watcher"]).await;
    Haunted {
        watcher,
        ghost,
        ghost_api,
        ghost_node: ghost_node["name"].as_str().unwrap().to_string(),
        ghost_node_id: ghost_node["id"].as_u64().unwrap(),
        ghost_url: ghost_node["ws_url"].as_str().unwrap().to_string(),
        room: room_id,
    }
}

/// A node marked down that was only paused, with a lease long enough to keep its sessions
/// (docs/REPLICATION.md, "Followers on a node that crashed": down hides, it does not
/// forget): its user leaves presence while it is down and comes back with it, and its
/// session gets the room's messages live again. An owner that forgot a down node's
/// interest would never deliver to that session again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_marked_down_that_keeps_its_sessions_gets_its_followers_back() {
    let cluster = ProcessCluster::start_with("", "control_lease_ms = 600000").await;
    let mut haunted = room_with_a_ghost(&cluster).await;
    cluster.signal_node(&haunted.ghost_node, "STOP");
    haunted.watcher.presence_until("only the watcher", PRESENCE_WITHIN, |users| users == ["watcher"]).await;
    cluster.signal_node(&haunted.ghost_node, "CONT");
    haunted.watcher.presence_until("the ghost back", PRESENCE_WITHIN, |users| users == ["ghost", "watcher"]).await;

    haunted
        .watcher
        .send(serde_json::json!({"type": "send", "room": haunted.room, "client_id": "w-1", "text": "back?"}))
        .await;
    let seq = loop {
        let frame = haunted.watcher.next(Duration::from_secs(10)).await.expect("the watcher's ack");
        if frame["type"] == "ack" {
            break frame["seq"].as_u64().expect("seq");
        }
    };
    loop {
        let frame = haunted.ghost.next(Duration::from_secs(10)).await.expect("the message reaches the returned node");
        if frame["type"] == "message" && frame["seq"].as_u64() == Some(seq) {
            assert_eq!(frame["text"], "back?");
            break;
        }
    }
}

/// The crashed node stays down: once the catalog marks it down, its user leaves the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_users_leave_presence_when_it_is_marked_down() {
    let cluster = ProcessCluster::start().await;
    let mut haunted = room_with_a_ghost(&cluster).await;
    let killed = std::time::Instant::now();
    cluster.kill_node(&haunted.ghost_node).await;
    haunted.watcher.presence_until("only the watcher", PRESENCE_WITHIN, |users| users == ["watcher"]).await;
    eprintln!("the crashed node's user left presence {} ms after the kill", killed.elapsed().as_millis());
}

/// The crashed node comes back before the catalog could notice (its timeout is long
/// here): the new process dials its peers, and the owner forgets what the old one
/// followed. The ghost then follows again from the new process and is present again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodes_old_followers_leave_presence_and_its_new_ones_join() {
    let mut cluster = ProcessCluster::start_with("node_timeout_ms = 600000", "").await;
    let mut haunted = room_with_a_ghost(&cluster).await;
    let killed = std::time::Instant::now();
    cluster.kill_node(&haunted.ghost_node).await;
    cluster.restart_node(&haunted.ghost_node);
    haunted.watcher.presence_until("only the watcher", PRESENCE_WITHIN, |users| users == ["watcher"]).await;
    eprintln!("the restarted node's old user left presence {} ms after the kill", killed.elapsed().as_millis());

    let (ghost_token, _) = token(&haunted.ghost_api, &cluster.control_url).await;
    let url = haunted.ghost_url.clone();
    let mut ghost = common::wait_for("the restarted node to take connections", Duration::from_secs(30), || async {
        let (socket, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
        Some(WsClient::from_socket(socket))
    })
    .await;
    ghost.send(serde_json::json!({"type": "hello", "token": ghost_token})).await;
    ghost.expect("welcome").await;
    ghost.subscribe(haunted.room, None).await;
    haunted.watcher.presence_until("the ghost back", PRESENCE_WITHIN, |users| users == ["ghost", "watcher"]).await;
}

/// A drained node crashes (docs/DRAINING.md: its sessions kept chatting, so its users were
/// present): the failure detector watches drained nodes too, so its users leave presence
/// as a crashed `Up` node's do; the catalog says `drained_down`, and the node is drained
/// again, not back in service, when it returns. On the code before this change the user
/// stayed present for good (the detector ignored drained nodes, the tables said up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_that_crashes_loses_its_users_and_stays_drained_when_it_returns() {
    let mut cluster = ProcessCluster::start().await;
    let mut haunted = room_with_a_ghost(&cluster).await;
    let id = haunted.ghost_node_id.to_string();
    let drained = cluster.run(&["admin", "drain-node", &id, "--timeout", "60"]);
    assert!(drained.status.success(), "drain-node: {}", String::from_utf8_lossy(&drained.stderr));
    let ghost_id = haunted.ghost_node_id;
    let status_of = async |cluster: &ProcessCluster| {
        let nodes: Value = reqwest::get(format!("{}/api/nodes", cluster.control_url))
            .await
            .expect("nodes")
            .json()
            .await
            .expect("nodes json");
        let node =
            nodes["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"].as_u64() == Some(ghost_id)).cloned());
        node.map(|n| n["status"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
    };
    assert_eq!(status_of(&cluster).await, "drained");

    let killed = std::time::Instant::now();
    cluster.kill_node(&haunted.ghost_node).await;
    haunted.watcher.presence_until("only the watcher", PRESENCE_WITHIN, |users| users == ["watcher"]).await;
    eprintln!("the crashed drained node's user left presence {} ms after the kill", killed.elapsed().as_millis());
    assert_eq!(status_of(&cluster).await, "drained_down");

    cluster.restart_node(&haunted.ghost_node);
    common::wait_for("the node drained again", PRESENCE_WITHIN, || async {
        (status_of(&cluster).await == "drained").then_some(())
    })
    .await;
}
