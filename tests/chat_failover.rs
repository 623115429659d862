//! A room's owner node dies under load: the replica takes over, clients reconnect and
//! retry with the same client_ids, and nothing acknowledged is lost or doubled. Also: a
//! replica refuses an owner whose epoch is stale.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chat::{history, mesh_client, send_acked, token, ChatCluster, WsClient};
use common::senders::{checked_history, collect, full_history, Sender, TailGate};
use common::Api;
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

    let (mesh, _stop) = mesh_client();
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

/// Each node's fence of `room` (`None`: the node is stopped).
async fn fences(cluster: &ChatCluster, room: u64) -> Vec<Option<u64>> {
    let mut fences = Vec::new();
    for node in &cluster.nodes {
        let Some(node) = node else {
            fences.push(None);
            continue;
        };
        let log = node.node.log.clone();
        let fence = tokio::task::spawn_blocking(move || log.fence(room)).await.expect("join");
        fences.push(Some(fence.expect("read the fence")));
    }
    fences
}

/// docs/REPLICATION.md, "Parked owners": the dormant owner of a room nobody follows keeps
/// no task. A follower starts one again (and gets the room's messages), so does a send (which
/// takes the room over), and the rooms nobody touched stay parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_rooms_owner_parks_and_a_follower_or_a_send_wakes_it() {
    let cluster = ChatCluster::start(3).await;
    let api = Api::logged_in(&cluster.url(), "parker").await;
    let mut rooms = Vec::new();
    for i in 0..6 {
        let room = cluster.create_room(&api, &format!("idle-{i}"), false).await;
        rooms.push((room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap()));
    }
    let owner_tasks = |cluster: &ChatCluster| cluster.nodes.iter().flatten().map(|n| n.node.owner_tasks()).sum::<u64>();
    common::wait_for("every new room's owner to park", Duration::from_secs(30), || async {
        let owned: usize = cluster.nodes.iter().flatten().map(|n| n.node.owned_rooms()).sum();
        (owned == rooms.len() && owner_tasks(&cluster) == 0).then_some(())
    })
    .await;

    // A follower on another node wakes the owner of `followed`, and gets its first message.
    let (followed, followed_owner) = rooms[0];
    let owner_index = cluster.index_of(followed_owner);
    let (token, _) = token(&api, &cluster.url()).await;
    let mut follower = WsClient::connect(&cluster.node((owner_index + 1) % 3).ws_url(), &token).await;
    let (before, _) = follower.subscribe(followed, None).await;
    assert!(before.is_empty(), "the room is empty: {before:?}");
    common::wait_for("the followed room's owner to run again", Duration::from_secs(30), || async {
        (cluster.node(owner_index).node.owner_tasks() == 1).then_some(())
    })
    .await;
    let mut sender = WsClient::connect(&cluster.node(owner_index).ws_url(), &token).await;
    assert_eq!(send_acked(&mut sender, followed, "to-the-follower", Duration::from_secs(10)).await, 1);
    let delivered = loop {
        let frame = follower.next(Duration::from_secs(10)).await.expect("the message reaches the follower");
        if frame["type"] == "message" {
            break frame;
        }
    };
    assert_eq!((delivered["seq"].as_u64(), delivered["text"].as_str()), (Some(1), Some("text of to-the-follower")));

    // A send to a parked room nobody follows wakes its owner, which takes the room over.
    let (written, _) = rooms[1];
    assert_eq!(send_acked(&mut sender, written, "to-a-parked-room", Duration::from_secs(10)).await, 1);
    let read = common::wait_for("the parked room's message to read", Duration::from_secs(30), || async {
        history(&api, &cluster.url(), written).await.filter(|read| !read.is_empty())
    })
    .await;
    assert_eq!(read.into_iter().collect::<Vec<_>>(), vec![(1, "to-a-parked-room".to_string())]);
    assert_eq!(owner_tasks(&cluster), 2, "the four rooms nobody touched stay parked");
}

/// docs/REPLICATION.md, "Dormant owners": a new room's owner does not take the room over
/// until its first send (no node's log of it is fenced, no node reports it syncing, and
/// it reads as empty); the first send takes it over and is acknowledged; and a dormant
/// room whose owner node stops fails over to its replica and takes sends there, losing
/// nothing acknowledged in the other rooms. On the code before dormant owners the fences
/// were 1 as soon as each owner started, so the first assertion failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rooms_owner_takes_it_over_at_its_first_send_and_a_dormant_room_fails_over() {
    let mut cluster = ChatCluster::start(3).await;
    let api = Api::logged_in(&cluster.url(), "creator").await;
    let mut rooms = Vec::new();
    for i in 0..6 {
        let room = cluster.create_room(&api, &format!("new-{i}"), false).await;
        rooms.push((room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap(), room["replica"].as_u64().unwrap()));
    }
    // Every node installed a table with the rooms, every owner exists, and no node reports
    // one of them syncing.
    common::wait_for("every node to hold the new rooms with none syncing", Duration::from_secs(30), || async {
        let settled = cluster.nodes.iter().flatten().all(|node| {
            let routes = node.node.routes();
            rooms.iter().all(|(room, _, _)| routes.rooms.contains_key(room))
                && node.node.room_report(&routes).syncing == 0
        });
        settled.then_some(())
    })
    .await;
    for (room, _, _) in &rooms {
        assert_eq!(fences(&cluster, *room).await, vec![Some(0); 3], "room {room}: nobody took it over before a send");
        let read = common::wait_for("the room to read", Duration::from_secs(30), || async {
            history(&api, &cluster.url(), *room).await
        })
        .await;
        assert!(read.is_empty(), "room {room} reads empty: {read:?}");
    }

    // The first send takes the room over: owner and replica take its epoch (1).
    let (first, owner, replica) = rooms[0];
    let (token, _) = token(&api, &cluster.url()).await;
    let mut ws = WsClient::connect(&cluster.node(cluster.index_of(owner)).ws_url(), &token).await;
    assert_eq!(send_acked(&mut ws, first, "first", Duration::from_secs(10)).await, 1);
    let fenced = fences(&cluster, first).await;
    assert_eq!((fenced[cluster.index_of(owner)], fenced[cluster.index_of(replica)]), (Some(1), Some(1)));
    assert_eq!(fences(&cluster, rooms[1].0).await, vec![Some(0); 3], "the other rooms still wait");

    // A dormant room of another owner: that owner stops, its replica takes the room over
    // (epoch 2) and takes sends.
    let (dormant, dead, heir) =
        *rooms.iter().find(|(_, owner_node, _)| *owner_node != owner).expect("rooms on two owners");
    drop(ws);
    cluster.stop_node(cluster.index_of(dead)).await;
    let mut ws = WsClient::connect(&cluster.node(cluster.index_of(heir)).ws_url(), &token).await;
    assert_eq!(send_acked(&mut ws, dormant, "after-failover", Duration::from_secs(30)).await, 1);
    assert_eq!(fences(&cluster, dormant).await[cluster.index_of(heir)], Some(2), "the heir owns it at epoch 2");
    let read = common::wait_for("the failed-over room to read", Duration::from_secs(30), || async {
        history(&api, &cluster.url(), dormant).await
    })
    .await;
    assert_eq!(read.into_iter().collect::<Vec<_>>(), vec![(1, "after-failover".to_string())]);
    let read = common::wait_for("the first room to read again", Duration::from_secs(30), || async {
        history(&api, &cluster.url(), first).await
    })
    .await;
    assert_eq!(read.into_iter().collect::<Vec<_>>(), vec![(1, "first".to_string())]);
}
