//! Many connections on one node, at small scale: `districhat bench-idle` holds
//! authenticated idle sockets on one node of a cluster of real processes and reads its
//! RSS; `districhat bench-storm` kills the node holding every client, and every client
//! is back on the other nodes with nothing lost, doubled or reordered. Also: a node
//! holding `limits.max_connections` sockets refuses one more before the upgrade, and
//! takes it once one has left.

mod common;

use std::time::Duration;

use common::chat::{answer, send_acked, token, ChatCluster, WsClient};
use common::processes::ProcessCluster;
use common::Api;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

/// `districhat ARGS --control URL` on `cluster`, which must succeed; its JSON report.
fn run_json(cluster: &ProcessCluster, args: &[&str]) -> Value {
    let output = cluster.run(args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_held_on_one_node_and_a_storm_brings_every_client_back() {
    let cluster = ProcessCluster::start().await;

    let node = format!("ws://{}/ws", cluster.node_addrs[0]);
    let idle = run_json(
        &cluster,
        &[
            "bench-idle",
            "--node",
            &node,
            "--connections",
            "300",
            "--users",
            "3",
            "--sources",
            "2",
            "--hold",
            "0.2",
            "--json",
        ],
    );
    assert_eq!((idle["wanted"].as_u64(), idle["held"].as_u64()), (Some(300), Some(300)), "{idle}");
    assert_eq!((idle["sources"].as_u64(), idle["failures"].as_object().map(|f| f.len())), (Some(2), Some(0)), "{idle}");
    assert!(idle["rss_before_bytes"].as_u64().is_some_and(|rss| rss > 0), "the node's RSS was read: {idle}");
    assert!(idle["rss_per_connection_bytes"].as_f64().is_some(), "{idle}");

    let (data, configs) = (cluster.data.display().to_string(), cluster.configs.display().to_string());
    #[rustfmt::skip]
    let storm = run_json(&cluster, &[
        "bench-storm", "--clients", "60", "--rooms", "6", "--users", "6", "--messages", "4", "--rate", "60",
        "--kill-after", "1", "--cluster-dir", &data, "--configs", &configs, "--json",
    ]);
    let count = |key: &str| storm[key].as_u64();
    assert_eq!(
        (count("clients"), count("on_killed_node"), count("back"), count("not_back")),
        (Some(60), Some(60), Some(60), Some(0)),
        "{storm}"
    );
    assert_eq!(storm["time_back"]["samples"].as_u64(), Some(60), "every client timed: {storm}");
    assert!(storm["time_back"]["max_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{storm}");
    let chat = &storm["chat"];
    let counts = ["lost", "duplicated", "out_of_order", "duplicate_ids", "unacked"].map(|key| chat[key].as_u64());
    assert_eq!(counts, [Some(0); 5], "nothing lost, doubled or reordered: {chat}");
    assert_eq!((chat["sent"].as_u64(), chat["acked"].as_u64()), (Some(240), Some(240)), "{chat}");
    assert!(chat["reconnects"].as_u64().is_some_and(|n| n >= 60), "{chat}");
    assert_eq!(chat["drain_complete"], true, "{chat}");
    // The killed node was started again and comes up.
    let (killed, nodes_url) = (storm["killed_node"].clone(), format!("{}/api/nodes", cluster.control_url));
    common::wait_for("the killed node to be up again", Duration::from_secs(30), || async {
        let nodes: Value = reqwest::get(&nodes_url).await.ok()?.json().await.ok()?;
        nodes["nodes"].as_array()?.iter().any(|n| n["id"] == killed && n["status"] == "up").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_one_more_socket_before_the_upgrade() {
    let cluster = ChatCluster::start_with(1, |config| config.limits.max_connections = 2).await;
    let api = Api::logged_in(&cluster.url(), "crowd").await;
    let (token, _) = token(&api, &cluster.url()).await;
    let url = cluster.node(0).ws_url();
    let first = WsClient::connect(&url, &token).await;
    let _second = WsClient::connect(&url, &token).await;
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a third socket was not refused: {:?}", other.map(|(_, response)| response.status())),
    }
    drop(first);
    common::wait_for("a slot to be free again", Duration::from_secs(10), || async {
        tokio_tungstenite::connect_async(url.as_str()).await.ok().map(drop)
    })
    .await;
}

/// `limits.sends_in_flight` bounds a node's sends per owner node: while one owner is
/// paused (SIGSTOP: its sockets stay open, nothing answers) and the sends to its rooms
/// hold every permit they may take, the same node's sends to another owner's room are
/// still acknowledged, not refused busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_takes_only_its_own_rooms_send_permits() {
    // Controls that take a minute to call a silent node down: the paused owner keeps its
    // rooms for the whole test.
    let cluster = ProcessCluster::start_with("node_timeout_ms = 60000", "[limits]\nsends_in_flight = 2").await;
    let base = cluster.control_url.clone();
    let api = Api::logged_in(&base, "permits").await;
    let (ws_token, _) = token(&api, &base).await;
    let listed = api.get(&format!("{base}/api/nodes")).await.expect("nodes");
    let nodes = listed["nodes"].as_array().expect("nodes").clone();
    let node = |name: &str| nodes.iter().find(|n| n["name"] == name).cloned().unwrap_or_else(|| panic!("{name}"));
    let (paused, sender) =
        (node("n1")["id"].as_u64().expect("id"), node("n3")["addr"].as_str().expect("addr").to_string());
    // A room n1 owns, and one on the other two nodes alone (owner and replica).
    let (mut paused_room, mut other_room) = (None, None);
    for i in 0..60 {
        let (status, room) =
            api.post(&format!("{base}/api/rooms"), json!({"name": format!("permits-{i}")})).await.expect("create");
        assert_eq!(status, 201, "{room}");
        let (id, owner, replica) = (room["id"].as_u64(), room["owner"].as_u64(), room["replica"].as_u64());
        if owner == Some(paused) {
            paused_room = paused_room.or(id);
        } else if replica != Some(paused) {
            other_room = other_room.or(id);
        }
        if paused_room.is_some() && other_room.is_some() {
            break;
        }
    }
    let (paused_room, other_room) = (paused_room.expect("a room on n1"), other_room.expect("a room off n1"));

    let pid = std::fs::read_to_string(cluster.data.join("n1.pid")).expect("n1's pid file");
    let signal = |name: &str| std::process::Command::new("kill").args([name, pid.trim()]).status().expect("kill");
    let mut client = WsClient::connect(&format!("ws://{sender}/ws"), &ws_token).await;
    // A first message opens n3's mesh link to n1, so the paused owner's sends wait on an
    // open link (as with a process that stopped mid-run) instead of failing to connect.
    send_acked(&mut client, paused_room, "first", Duration::from_secs(20)).await;
    assert!(signal("-STOP").success());
    for i in 0..3 {
        client
            .send(json!({"type": "send", "room": paused_room, "client_id": format!("stuck{i}"), "text": "waits"}))
            .await;
    }
    // Two of the three take the paused owner's two permits and wait for it; the third
    // (whichever ran last) is refused busy at once.
    let refused = loop {
        let frame = client.next(Duration::from_secs(5)).await.expect("one send refused at once");
        if frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    client.send(json!({"type": "send", "room": other_room, "client_id": "elsewhere", "text": "goes on"})).await;
    let acked = answer(&mut client, "elsewhere").await;
    assert!(signal("-CONT").success());
    assert!(acked.is_ok(), "a healthy owner's room is not refused: {acked:?}");
}
