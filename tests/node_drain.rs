//! Draining a chat node under load (`admin drain-node`): every room it owns moves to its
//! replica and every room it replicates gets another replica, while clients on every node
//! (the drained one included) keep sending; nothing acknowledged is lost or doubled, no
//! client sees a message twice or out of order, and the node stays drained across a
//! restart until it is undrained. Also: the typed refusals (`unknown_node`, `no_capacity`)
//! change nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chat::{token, ChatCluster, WsClient};
use common::senders::{checked_history, collect, spawn_on_every_node, Collected, TailGate};
use common::{wait_for, Api, SECRET};
use districhat::cli::drain::{self, DrainError, DrainTarget};
use districhat::control::catalog::{Catalog, ChatNodeId, NodeStatus};
use districhat::node;
use serde_json::json;
use tokio::net::TcpListener;

const ROOMS: usize = 4;
const PER_CLIENT: usize = 60;
/// Drain once this many sends (of ROOMS × 3 nodes × PER_CLIENT) are acknowledged.
const DRAIN_AFTER: usize = 200;

/// The node that both owns and replicates rooms (the richest drain), with its counts.
fn node_to_drain(catalog: &Catalog) -> (ChatNodeId, u64, u64) {
    catalog
        .node_room_counts()
        .into_iter()
        .filter(|(_, (owned, replicated))| *owned > 0 && *replicated > 0)
        .map(|(id, (owned, replicated))| (id, owned, replicated))
        .next()
        .expect("a node owning and replicating rooms")
}

fn target(cluster: &ChatCluster, node: ChatNodeId) -> DrainTarget {
    DrainTarget { control: cluster.url(), secret: SECRET.into(), node }
}

/// The node ids `/api/token` offers to a browser.
async fn offered(api: &Api, base: &str) -> Vec<u64> {
    token(api, base).await.1.iter().filter_map(|n| n["id"].as_u64()).collect()
}

/// Sends one message on a fresh connection to `ws_url` and returns its acked seq.
async fn send_once(api: &Api, base: &str, ws_url: &str, room: u64, client_id: &str) -> u64 {
    let (token, _) = token(api, base).await;
    let mut ws = WsClient::connect(ws_url, &token).await;
    ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": client_id})).await;
    let ack = ws.expect("ack").await;
    assert_eq!(ack["client_id"], client_id);
    ack["seq"].as_u64().expect("seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_under_load_moves_all_its_rooms_and_loses_nothing() {
    let mut cluster = ChatCluster::start(3).await;
    let api = Api::logged_in(&cluster.url(), "drainer").await;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        rooms.push(cluster.create_room(&api, &format!("load-{i}"), false).await["id"].as_u64().expect("id"));
    }
    cluster.controls.wait_converged().await;
    let before = cluster.controls.catalog(0);
    let (drained, owned, replicated) = node_to_drain(&before);
    let drained_index = cluster.index_of(drained);

    let acked_total = Arc::new(AtomicUsize::new(0));
    // Each client's last 5 sends wait for the drain to end.
    let gate = TailGate::new(5);
    let clients = spawn_on_every_node(&cluster, &api, &rooms, PER_CLIENT, &acked_total, &gate);
    wait_for("load before the drain", Duration::from_secs(60), || async {
        (acked_total.load(Ordering::SeqCst) >= DRAIN_AFTER).then_some(())
    })
    .await;
    let mut steps = Vec::new();
    let summary = drain::drain(&target(&cluster, drained), Duration::from_secs(60), |progress| {
        steps.push(drain::describe(progress))
    })
    .await
    .expect("drain");
    let acked_at_drain_end = acked_total.load(Ordering::SeqCst);
    gate.open();
    assert_eq!((summary.owners_moved, summary.replicas_moved), (owned, replicated), "{steps:#?}");
    assert!(cluster.node(drained_index).node.owned_rooms() == 0, "the drained node runs no owner");

    let Collected { acked, retryable_errors, reconnects } = collect(clients).await;
    let total = ROOMS * 3 * PER_CLIENT;
    assert_eq!(acked.len(), total);
    assert!(acked_at_drain_end < total, "the load outlasted the drain, so sends after it were tested");
    eprintln!(
        "drain of node {drained}: {owned} owned + {replicated} replicated rooms in {:.2} s; \
         {acked_at_drain_end}/{total} acked by then; clients saw retryable errors {retryable_errors:?}, \
         {reconnects} reconnects; steps:\n  {}",
        summary.elapsed.as_secs_f64(),
        steps.join("\n  ")
    );
    assert_eq!(reconnects, 0, "nobody had to reconnect: the drained node keeps its sessions");
    assert!(retryable_errors.is_empty(), "sends met by the move were retried at the new owner, not refused");

    // The catalog: nothing left on the drained node, every room on two other nodes, and
    // exactly the rooms it held got a new epoch.
    cluster.controls.wait_converged().await;
    let after = cluster.controls.catalog(0);
    assert_eq!(after.nodes[&drained].status, NodeStatus::Drained);
    assert_eq!(after.node_room_counts()[&drained], (0, 0));
    for room in after.rooms.values() {
        let old = &before.rooms[&room.id];
        let (owner, replica) = (room.owner.expect("owner"), room.replica.expect("replica"));
        assert!(owner != drained && replica != drained && owner != replica, "{room:?}");
        let held = old.owner == Some(drained) || old.replica == Some(drained);
        assert_eq!(room.epoch, old.epoch + u64::from(held), "epoch of {room:?} (was {old:?})");
        if old.owner == Some(drained) {
            assert_eq!(Some(owner), old.replica, "the replica, holding every acked message, took over");
        }
    }

    // History: gapless, every acknowledged client_id once, at its acknowledged seq.
    let base = cluster.url();
    for room in &rooms {
        let history = checked_history(&api, &base, *room, &acked, &format!("r{room}-")).await;
        assert_eq!(history.len(), 3 * PER_CLIENT, "room {room}: exactly the acknowledged messages");

        // The second copy: the room's (possibly new) replica holds the same log on disk,
        // the history from before the move included.
        let replica = after.rooms[room].replica.expect("replica");
        let copy = cluster.room_log(replica, *room).await;
        assert_eq!(copy, history, "room {room}: replica {replica} holds every message");
    }

    // Sends after the drain, through the drained node and through another one.
    let other_index = (drained_index + 1) % 3;
    let last = send_once(&api, &base, &cluster.node(drained_index).ws_url(), rooms[0], "after-1").await;
    assert_eq!(last, 3 * PER_CLIENT as u64 + 1);
    assert_eq!(send_once(&api, &base, &cluster.node(other_index).ws_url(), rooms[0], "after-2").await, last + 1);
    assert!(!offered(&api, &base).await.contains(&drained), "browsers are not sent to a drained node");

    // A restart (re-registration) keeps it drained; an undrain brings it back.
    cluster.stop_node(drained_index).await;
    let mut config = cluster.node_configs[drained_index].clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    config.advertise = Some(listener.local_addr().expect("addr").to_string());
    cluster.nodes[drained_index] = Some(node::start(config, listener).await.expect("restart the drained node"));
    cluster.controls.wait_converged().await;
    assert_eq!(cluster.controls.catalog(0).nodes[&drained].status, NodeStatus::Drained, "still drained");
    assert!(!offered(&api, &base).await.contains(&drained));
    let view = drain::undrain(&target(&cluster, drained)).await.expect("undrain");
    assert_eq!(view.status, "up");
    let room = cluster.create_room(&api, "after-undrain", false).await;
    assert_eq!(room["owner"].as_u64(), Some(drained), "the undrained node, owning nothing, gets the new room");
    wait_for("the undrained node to be offered", Duration::from_secs(10), || async {
        offered(&api, &base).await.contains(&drained).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_move_every_room_is_refused_and_changes_nothing() {
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "refused").await;
    cluster.create_room(&api, "only-two-nodes", false).await;
    cluster.controls.wait_converged().await;
    let before = cluster.controls.catalog(0);

    let refusal = |result: Result<drain::DrainSummary, DrainError>| match result {
        Err(DrainError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let timeout = Duration::from_secs(10);
    let unknown = drain::drain(&target(&cluster, 99), timeout, |_| {}).await;
    assert_eq!(refusal(unknown), (404, "unknown_node".to_string()));
    let node = cluster.node(0).id();
    let full = drain::drain(&target(&cluster, node), timeout, |_| {}).await;
    assert_eq!(refusal(full), (409, "no_capacity".to_string()), "the other node would hold the only copy");
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/api/admin/nodes/{node}/drain", cluster.url()))
        .send()
        .await
        .expect("post");
    assert_eq!(unauthenticated.status().as_u16(), 401);

    cluster.controls.wait_converged().await;
    let after = cluster.controls.catalog(0);
    assert_eq!(after.rooms, before.rooms, "no room moved");
    assert_eq!(after.nodes, before.nodes, "no node changed status");
}

/// docs/DRAINING.md: browsers still connected to a drained node keep chatting through it.
/// A session there keeps getting its room's live messages, and its user stays in the
/// room's presence. Failed before the routing table counted a drained node as serving:
/// it was "down" to every owner, which skipped its deliveries (no live message within
/// 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_sessions_keep_getting_live_messages_and_stay_present() {
    let cluster = ChatCluster::start(3).await;
    let base = cluster.url();
    let api = Api::logged_in(&base, "stayer").await;
    let watcher_api = Api::logged_in(&base, "watcher").await;
    let room = cluster.create_room(&api, "kept", false).await;
    let (room, owner, replica) = (room["id"].as_u64().unwrap(), room["owner"].as_u64(), room["replica"].as_u64());
    // A node with no copy of the room: draining it moves nothing of this room.
    let drained = (0..3)
        .map(|i| cluster.node(i).node.id)
        .find(|id| Some(*id) != owner && Some(*id) != replica)
        .expect("a third node");
    let owner_url = cluster.node(cluster.index_of(owner.expect("owner"))).ws_url();

    let (stayer_token, _) = token(&api, &base).await;
    let mut stayer = WsClient::connect(&cluster.node(cluster.index_of(drained)).ws_url(), &stayer_token).await;
    stayer.subscribe(room, None).await;
    let (watcher_token, _) = token(&watcher_api, &base).await;
    let mut watcher = WsClient::connect(&owner_url, &watcher_token).await;
    watcher.subscribe(room, None).await;
    let presence = |frame: &serde_json::Value| {
        let users = frame["users"].as_array().into_iter().flatten().filter_map(|u| u.as_str());
        users.map(str::to_string).collect::<Vec<_>>()
    };
    watcher.presence_until("both users", Duration::from_secs(10), |users| users == ["stayer", "watcher"]).await;

    drain::drain(&target(&cluster, drained), Duration::from_secs(60), |_| {}).await.expect("drain");
    let seq = send_once(&watcher_api, &base, &owner_url, room, "after-the-drain").await;
    loop {
        let frame = stayer.next(Duration::from_secs(10)).await.expect("the message reaches the drained node's session");
        if frame["type"] == "message" {
            assert_eq!((frame["seq"].as_u64(), frame["text"].as_str()), (Some(seq), Some("after-the-drain")));
            break;
        }
    }
    // The watcher's presence never lost the stayer: a frame that dropped it would come
    // before the one with the third user, who joins after the drain. (A frame with the
    // same two users may come again first: a change within the owner's presence interval
    // reaches a newcomer at once and everyone when the interval is up.)
    let late_api = Api::logged_in(&base, "zed").await;
    let (late_token, _) = token(&late_api, &base).await;
    let mut late = WsClient::connect(&owner_url, &late_token).await;
    late.subscribe(room, None).await;
    loop {
        let frame = watcher.next(Duration::from_secs(10)).await.expect("presence with the third user");
        if frame["type"] == "presence" {
            let users = presence(&frame);
            assert!(users.iter().any(|user| user == "stayer"), "the stayer stays present: {users:?}");
            if users == ["stayer", "watcher", "zed"] {
                break;
            }
        }
    }
}
