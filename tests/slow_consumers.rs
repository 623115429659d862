//! Clients that stop reading and peers that died must not hold a node's memory or its
//! sessions (issue 12): a socket whose writes stall is closed within
//! `limits.write_timeout_ms`; a flood of resumes from seq 0 by clients that never read
//! stays within a stated memory bound, because catch-up is written page by page instead
//! of gathered; an owner queues nothing more for a peer the catalog called down. Real
//! in-process controls and nodes; the node's memory is this test process's RSS.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::chat::{fill_with, history, token, ChatCluster, WsClient};
use common::{rss_bytes, wait_for, Api};
use districhat::node::mesh::Dispatch;
use districhat::protocol::MeshRequest;
use serde_json::json;

/// Two nodes that close a stalled socket after 2 s, and a room holding `messages`
/// messages of `text`, sent through a connection that is closed again.
async fn setup(user: &str, messages: u64, text: &str) -> (ChatCluster, String, u64, usize) {
    let cluster = ChatCluster::start_with(2, |node| {
        node.limits.sends_per_sec = 100_000;
        node.limits.write_timeout_ms = 2_000;
    })
    .await;
    let api = Api::logged_in(&cluster.url(), user).await;
    let room = cluster.create_room(&api, user, false).await;
    let (room, owner) = (room["id"].as_u64().expect("id"), cluster.index_of(room["owner"].as_u64().expect("owner")));
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut writer = WsClient::connect(&cluster.node(owner).ws_url(), &ws_token).await;
    fill_with(&mut writer, room, messages, text).await;
    drop(writer);
    let node = cluster.node(owner).node.clone();
    wait_for("the writer's session to end", Duration::from_secs(10), || {
        let open = node.connections.load(Ordering::SeqCst);
        async move { (open == 0).then_some(()) }
    })
    .await;
    (cluster, ws_token, room, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_within_the_write_timeout() {
    // ~9 MB of history: more than the kernel buffers of one loopback socket hold.
    let (cluster, ws_token, room, owner) = setup("stalled", 2_500, &"x".repeat(3_500)).await;
    let node = cluster.node(owner).node.clone();
    let mut stalled = WsClient::connect(&cluster.node(owner).ws_url(), &ws_token).await;
    stalled.send(json!({"type": "subscribe", "room": room, "since": 0})).await;

    // It never reads again; the node must close it (bounded: the write timeout is 2 s).
    wait_for("the stalled session to be closed", Duration::from_secs(30), || {
        let open = node.connections.load(Ordering::SeqCst);
        async move { (open == 0).then_some(()) }
    })
    .await;

    // What it reads now ends before the whole history: the node gave up on it.
    let mut received = 0;
    while let Some(frame) = stalled.next(Duration::from_secs(5)).await {
        if frame["type"] == "message" {
            received += 1;
        }
    }
    assert!(received < 2_500, "the stalled client was closed, not served everything ({received})");

    // The node serves others as before.
    let mut client = WsClient::connect(&cluster.node(owner).ws_url(), &ws_token).await;
    let (_, last) = client.subscribe(room, Some(2_500)).await;
    assert_eq!(last, 2_500);
    client.send(json!({"type": "send", "room": room, "client_id": "after", "text": "still here"})).await;
    assert_eq!(client.expect("ack").await["seq"], 2_501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_flood_of_clients_that_never_read_stays_within_a_memory_bound() {
    const CLIENTS: usize = 100;
    // ~20 MB of history; 100 full resumes gathered at once would take over 4 GB.
    let (cluster, ws_token, room, owner) = setup("flood", 10_000, &"x".repeat(2_000)).await;
    let node = cluster.node(owner).node.clone();
    let resting = rss_bytes();
    let mut clients = connect_clients(&cluster, owner, &ws_token, CLIENTS).await;
    for client in &mut clients {
        client.send(json!({"type": "subscribe", "room": room, "since": 0})).await;
    }

    // None of them reads.
    let growth = peak_growth_until_closed(&node, resting).await;
    eprintln!("resume flood: {CLIENTS} clients, peak growth {} MB", growth >> 20);
    drop(clients);
}

/// `count` clients of node `node`, each past its hello.
async fn connect_clients(cluster: &ChatCluster, node: usize, ws_token: &str, count: usize) -> Vec<WsClient> {
    let mut clients = Vec::new();
    for _ in 0..count {
        clients.push(WsClient::connect(&cluster.node(node).ws_url(), ws_token).await);
    }
    clients
}

/// Samples this process's memory until the node closed every connection; asserts the
/// growth over `resting` stays within [`BOUND`] and returns its peak.
async fn peak_growth_until_closed(node: &districhat::node::Node, resting: u64) -> u64 {
    let started = Instant::now();
    let mut peak = resting;
    loop {
        let open = node.connections.load(Ordering::SeqCst);
        peak = peak.max(rss_bytes());
        assert!(peak - resting <= BOUND, "the flood grew the process by {} MB", (peak - resting) >> 20);
        if open == 0 {
            return peak - resting;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the stalled clients were not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Most the flood may grow this process (controls, nodes and the clients' own buffers).
const BOUND: u64 = 100 << 20;

/// Clients that ask for long history pages as fast as they may and never read the
/// answers: a connection has at most `limits.reads_in_flight` answers fetched and not yet
/// written (more requests get `rate_limited`), so the node holds a few pages per client,
/// not every answer it was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flood_of_clients_that_never_read_stays_within_a_memory_bound() {
    const CLIENTS: usize = 5;
    // The reads bucket's burst: each client asks this often at once.
    const REQUESTS: usize = 100;
    // 400 messages of 4,000 two-byte characters: a page of 200 is ~1.6 MB of JSON, and
    // all the requests answered at once would be ~800 MB.
    let (cluster, ws_token, room, owner) = setup("history-flood", 400, &"é".repeat(4_000)).await;
    let node = cluster.node(owner).node.clone();
    let resting = rss_bytes();
    let mut clients = connect_clients(&cluster, owner, &ws_token, CLIENTS).await;
    for client in &mut clients {
        for _ in 0..REQUESTS {
            client.send(json!({"type": "history", "room": room, "limit": 200})).await;
        }
    }

    let growth = peak_growth_until_closed(&node, resting).await;
    eprintln!("history flood: {CLIENTS} clients x {REQUESTS} requests, peak growth {} MB", growth >> 20);
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_queues_nothing_for_a_peer_called_down() {
    let mut cluster = ChatCluster::start_with(3, |node| node.limits.sends_per_sec = 100_000).await;
    let api = Api::logged_in(&cluster.url(), "peer").await;
    let room = cluster.create_room(&api, "peer", false).await;
    let id = |field: &str| room[field].as_u64().expect("placed");
    let (room, owner, replica) = (id("id"), cluster.index_of(id("owner")), cluster.index_of(id("replica")));
    let follower = (0..3).find(|i| *i != owner && *i != replica).expect("a third node");
    let follower_id = cluster.node(follower).id();
    let (ws_token, _) = token(&api, &cluster.url()).await;

    // A user on the third node follows the room; the node dies. (Stopping it here says
    // goodbye to the owner; a killed node does not, which is played by announcing its
    // user again on its behalf.)
    let mut reader = WsClient::connect(&cluster.node(follower).ws_url(), &ws_token).await;
    reader.subscribe(room, Some(0)).await;
    let mut writer = WsClient::connect(&cluster.node(owner).ws_url(), &ws_token).await;
    fill_with(&mut writer, room, 20, "before").await;
    cluster.stop_node(follower).await;
    drop(reader);
    let node = cluster.node(owner).node.clone();
    wait_for("the owner to see the follower down", Duration::from_secs(30), || {
        let down = node.routes().nodes.get(&follower_id).is_some_and(|route| !route.up);
        async move { down.then_some(()) }
    })
    .await;
    node.handle_inline(MeshRequest::Interest { room, node: follower_id, users: vec!["peer".into()] });

    // A busy room: nothing more piles up on the dead peer's link.
    let queued = node.mesh.queued(follower_id);
    for round in 0..5 {
        for i in 0..200 {
            let client_id = format!("busy-{round}-{i}");
            writer.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "x"})).await;
        }
        for _ in 0..200 {
            writer.expect("ack").await;
        }
    }
    assert!(
        node.mesh.queued(follower_id) <= queued,
        "frames queued for the dead peer grew from {queued} to {}",
        node.mesh.queued(follower_id)
    );
}

/// Past saturation a node refuses (with `rate_limited`, unsequenced, before any work) the
/// sends of its clients beyond `limits.sends_in_flight`, so a backlog costs no seconds
/// of queueing. Whatever it refused is retried; in the end the room holds every message
/// exactly once, at the seq its ack named, and nothing it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_node_refuses_sends_past_its_bound_and_loses_or_doubles_nothing() {
    let cluster = ChatCluster::start_with(2, |node| {
        node.limits.sends_per_sec = 100_000;
        node.limits.sends_in_flight = 4;
    })
    .await;
    let api = Api::logged_in(&cluster.url(), "burst").await;
    let room = cluster.create_room(&api, "burst", false).await;
    let room = room["id"].as_u64().expect("id");
    let (ws_token, _) = token(&api, &cluster.url()).await;
    // Through the node that does not own the room: refusals cross the mesh too.
    let mut ws = WsClient::connect(&cluster.node(1).ws_url(), &ws_token).await;
    let mut waiting: BTreeSet<String> = (0..1_000).map(|i| format!("b{i}")).collect();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "{} sends still refused after 60 s", waiting.len());
        for client_id in &waiting {
            ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "burst"})).await;
        }
        let mut answers = waiting.len();
        while answers > 0 {
            let frame = ws.next(Duration::from_secs(20)).await.expect("an answer to every send");
            match frame["type"].as_str() {
                Some("ack") => {
                    let client_id = frame["client_id"].as_str().expect("client_id").to_string();
                    assert!(waiting.remove(&client_id), "one ack per send: {frame}");
                    let earlier = acked.insert(frame["seq"].as_u64().expect("seq"), client_id);
                    assert_eq!(earlier, None, "two sends acked at one seq: {frame}");
                    answers -= 1;
                }
                Some("error") => {
                    assert_eq!(frame["code"], "rate_limited", "only a send past the bound is refused: {frame}");
                    refused += 1;
                    answers -= 1;
                }
                _ => {}
            }
        }
    }
    // 1,000 sends written at once meet at most 4 permits: refusals are certain.
    assert!(refused > 0, "a burst past the bound is refused");
    let base = cluster.url();
    let stored = wait_for("the room's history", Duration::from_secs(10), || history(&api, &base, room)).await;
    assert_eq!(stored, acked, "the room holds exactly the acked sends at their seqs ({refused} refusals retried)");
    assert_eq!(acked.keys().copied().collect::<Vec<_>>(), (1..=1_000).collect::<Vec<_>>(), "no seq skipped");
}

/// The REST path meets the same bound: a send past it is answered 429 `rate_limited`
/// (the code a client retries after), never `internal`, and is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_sends_past_a_nodes_bound_get_429_rate_limited_and_only_accepted_ones_are_stored() {
    let cluster = ChatCluster::start_with(2, |node| node.limits.sends_in_flight = 1).await;
    let api = Api::logged_in(&cluster.url(), "rester").await;
    let room = cluster.create_room(&api, "rester", false).await["id"].as_u64().expect("id");
    let base = cluster.url();
    let token = api.token.clone().expect("logged in");
    let posts = (0..40).map(|i| {
        let (http, url, token) = (api.http.clone(), format!("{base}/api/rooms/{room}/messages"), token.clone());
        async move {
            let body = json!({"client_id": format!("r{i}"), "text": "rest"});
            let response = http.post(url).bearer_auth(token).json(&body).send().await.expect("request");
            let status = response.status().as_u16();
            (format!("r{i}"), status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    });
    let mut accepted = BTreeMap::new();
    for (client_id, status, body) in futures_util::future::join_all(posts).await {
        match status {
            201 => {
                accepted.insert(body["seq"].as_u64().expect("seq"), client_id);
            }
            429 => assert_eq!(body["code"], "rate_limited", "{body}"),
            other => panic!("{client_id}: unexpected {other}: {body}"),
        }
    }
    assert!(!accepted.is_empty(), "some sends are accepted");
    let stored = wait_for("the room's history", Duration::from_secs(10), || history(&api, &base, room)).await;
    assert_eq!(stored, accepted, "the room holds exactly the accepted sends");
}
