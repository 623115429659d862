//! A room's owner node dies under load: the replica takes over, clients reconnect and
//! retry with the same client_ids, and nothing acknowledged is lost or doubled. Also: a
//! replica refuses an owner whose epoch is stale.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chat::{token, ChatCluster, WsClient};
use common::senders::{checked_history, collect, full_history, Sender, TailGate};
use common::{Api, SECRET};
use districhat::control::secret::ClusterSecret;
use districhat::node::mesh::Mesh;
use districhat::protocol::{MeshRequest, MeshResponse, StoredMessage};
use serde_json::json;

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 250;
const KILL_AFTER: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_under_load_loses_and_doubles_nothing() {
    let mut cluster = ChatCluster::start(3).await;
    let api = Api::logged_in(&cluster.url(), "loadgen").await;
    let room = cluster.create_room(&api, "busy", false).await;
    let (room, owner, replica) =
        (room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap(), room["replica"].as_u64().unwrap());
    let owner_index = cluster.index_of(owner);
    let replica_index = cluster.index_of(replica);
    let acked_total = Arc::new(AtomicUsize::new(0));
    // Each client's last 5 sends wait for the kill, so some surely come after it.
    let gate = TailGate::new(5);
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        let node = if index % 2 == 0 { owner_index } else { replica_index };
        let ws_url = cluster.node(node).ws_url();
        let label = format!("c{index}");
        let sender = Sender {
            api: api.clone(),
            base: cluster.url(),
            ws_url,
            room,
            label,
            count: PER_CLIENT,
            acked: acked_total.clone(),
            tail: gate.tail(),
        };
        clients.push(tokio::spawn(sender.run()));
    }
    common::wait_for("load before the kill", Duration::from_secs(60), || async {
        (acked_total.load(Ordering::SeqCst) >= KILL_AFTER).then_some(())
    })
    .await;
    cluster.stop_node(owner_index).await;
    gate.open();
    let acked = collect(clients).await.acked;
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    checked_history(&api, &cluster.url(), room, &acked, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_an_owner_with_a_stale_epoch() {
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "fencer").await;
    let room = cluster.create_room(&api, "fenced", false).await;
    let (room_id, replica, epoch) =
        (room["id"].as_u64().unwrap(), room["replica"].as_u64().unwrap(), room["epoch"].as_u64().unwrap());
    // One acknowledged message proves the owner has made the replica adopt its epoch.
    let (token, _) = token(&api, &cluster.url()).await;
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &token).await;
    ws.send(json!({"type": "send", "room": room_id, "client_id": "real", "text": "real"})).await;
    ws.expect("ack").await;

    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let mesh =
        Mesh::new(ClusterSecret::new(SECRET), stop_rx, districhat::node::config::MeshLimits::default().link_queue);
    let replica_addr = cluster.node(cluster.index_of(replica)).node.addr.clone();
    let forged = StoredMessage {
        seq: 2,
        sender_id: 1,
        sender: "ghost".into(),
        text: "forged".into(),
        ts: 0,
        client_id: "forged".into(),
        kind: districhat::protocol::EntryKind::message(),
    };
    // It even names the replica's real predecessor: the fence alone refuses it.
    let prev = cluster.node(cluster.index_of(replica)).node.log.stamp_at(room_id, 1).expect("read the replica's log");
    let request =
        MeshRequest::Replicate { room: room_id, epoch: epoch - 1, prev, committed: 1, messages: vec![forged] };
    let answer = mesh.request(replica, &replica_addr, request, Duration::from_secs(5)).await.expect("replica answers");
    match answer {
        MeshResponse::Error { code, .. } => assert_eq!(code, "stale_epoch"),
        other => panic!("a stale owner was accepted: {other:?}"),
    }
    let history = full_history(&api, &cluster.url(), room_id).await;
    assert!(history.iter().all(|m| m["text"] != "forged"), "the forged message is nowhere");
}
