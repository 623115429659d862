//! A node that comes back with an unacknowledged tail in its log (a batch it wrote as
//! owner but whose replication never finished) must lose that tail when it is made the
//! room's replica again: otherwise, once it owns the room again, it serves the stale
//! message in place of an acknowledged one and answers a retry of the stale client_id
//! with "duplicate".

mod common;

use std::time::{Duration, Instant};

use common::chat::{token, ChatCluster, WsClient};
use common::{wait_for, Api};
use districhat::node::log::{Fenced, RoomLog};
use districhat::protocol::StoredMessage;
use serde_json::{json, Value};

/// Sends and waits for the ack, retrying while the room's owner is moving.
async fn send_acked(ws: &mut WsClient, room: u64, client_id: &str) -> u64 {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "{client_id} never acknowledged");
        let text = format!("text of {client_id}");
        ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": text})).await;
        loop {
            let frame = ws.next(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no answer to {client_id}"));
            match frame["type"].as_str() {
                Some("ack") if frame["client_id"] == client_id => return frame["seq"].as_u64().expect("seq"),
                Some("error") if frame["ref"] == client_id => {
                    assert_eq!(frame["code"], "unavailable", "only a moving owner may refuse: {frame}");
                    // Back off before retrying: the failover takes a few heartbeats.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                _ => {}
            }
        }
    }
}

/// The room's newest 50 messages, asked again while the new owner's copy is not readable
/// yet (`unavailable`, until it has taken the room over; clients retry it).
async fn history_when_readable(ws: &mut WsClient, room: u64) -> Value {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "the history never became readable");
        ws.send(json!({"type": "history", "room": room, "limit": 50})).await;
        let frame = ws.next(Duration::from_secs(10)).await.expect("an answer to history");
        match frame["type"].as_str() {
            Some("history") => return frame,
            Some("error") => {
                assert_eq!(frame["code"], "unavailable", "only a copy not readable yet may refuse: {frame}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {}
        }
    }
}

/// Waits until node `index` of the cluster routes `room` to owner `owner` with replica
/// `replica`.
async fn wait_route(cluster: &ChatCluster, index: usize, room: u64, owner: u64, replica: Option<u64>) {
    let node = cluster.node(index).node.clone();
    wait_for("the room's new route", Duration::from_secs(30), || {
        let route = node.room(room);
        async move { route.filter(|r| r.owner == Some(owner) && r.replica == replica).map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_nodes_unacknowledged_tail_is_dropped() {
    let mut cluster = ChatCluster::start_with(2, |config| config.replication.min_copies = 1).await;
    let api = Api::logged_in(&cluster.url(), "tailer").await;
    let room = cluster.create_room(&api, "tails", false).await;
    let (room, a_id, b_id) =
        (room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap(), room["replica"].as_u64().unwrap());
    let (a, b) = (cluster.index_of(a_id), cluster.index_of(b_id));

    // Five acked messages, owned by A and replicated to B; the client sits on B.
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut on_b = WsClient::connect(&cluster.node(b).ws_url(), &ws_token).await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    for i in 1..=5 {
        let client_id = format!("first-{i}");
        acked.push((send_acked(&mut on_b, room, &client_id).await, client_id));
    }
    assert_eq!(acked.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    // A stops; while it is down, its log gets what an unreplicated batch leaves behind.
    cluster.stop_node(a).await;
    let a_dir = cluster.node_configs[a].data_dir.clone();
    let planted = wait_for("A's log to be free to open", Duration::from_secs(10), || {
        let dir = a_dir.clone();
        async move { RoomLog::open(&dir, true, &Default::default()).ok() }
    })
    .await;
    let ghost = StoredMessage {
        seq: 6,
        sender_id: on_b.user_id,
        sender: on_b.user.clone(),
        text: "never acknowledged".into(),
        ts: 1,
        client_id: "ghost".into(),
        kind: districhat::protocol::EntryKind::message(),
    };
    let epoch = planted.fence(room).expect("fence");
    let planted_tail = planted.append_at(room, epoch, &[ghost]).expect("plant the stale tail");
    assert_eq!(planted_tail, Fenced::Done(()), "planted as A's own, unreplicated batch");
    assert_eq!(planted.dedupe(room, on_b.user_id, "ghost").unwrap(), Some(6));
    drop(planted);

    // B takes the room over and gives seqs 6..=10 to other messages.
    wait_route(&cluster, b, room, b_id, None).await;
    for i in 6..=10 {
        let client_id = format!("second-{i}");
        acked.push((send_acked(&mut on_b, room, &client_id).await, client_id));
    }
    assert_eq!(acked.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());

    // A comes back, becomes B's replica and is synced.
    cluster.restart_node(a).await;
    let a_log = cluster.node(a).node.log.clone();
    wait_for("A to hold B's log up to seq 10", Duration::from_secs(30), || {
        let last = a_log.last_seq(room).ok();
        async move { (last == Some(10)).then_some(()) }
    })
    .await;
    let held: Vec<(u64, String)> =
        a_log.after(room, 0, 100).unwrap().into_iter().map(|m| (m.seq, m.client_id)).collect();
    assert_eq!(held, acked, "A's log is exactly the acknowledged messages");
    assert_eq!(a_log.dedupe(room, on_b.user_id, "ghost").unwrap(), None, "the stale dedupe entry is gone");
    for (seq, client_id) in &acked {
        assert_eq!(a_log.dedupe(room, on_b.user_id, client_id).unwrap(), Some(*seq), "dedupe of {client_id}");
    }

    // B has told the catalog that A holds the whole log (only then may A be promoted:
    // docs/REPLICATION.md, "In-sync replicas"); B stops; A owns the room again and serves
    // only acknowledged messages.
    let a_node = cluster.node(a).node.clone();
    wait_for("A to count as in sync", Duration::from_secs(30), || {
        let in_sync = a_node.room(room).is_some_and(|route| route.replica == Some(a_id) && route.replica_in_sync);
        async move { in_sync.then_some(()) }
    })
    .await;
    cluster.stop_node(b).await;
    wait_route(&cluster, a, room, a_id, None).await;
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut on_a = WsClient::connect(&cluster.node(a).ws_url(), &ws_token).await;
    let page = history_when_readable(&mut on_a, room).await;
    let mut history: Vec<(u64, String)> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m: &Value| (m["seq"].as_u64().unwrap(), m["client_id"].as_str().unwrap().to_string()))
        .collect();
    history.reverse();
    assert_eq!(history, acked, "history 1..=10 is exactly the acknowledged messages");
    assert_eq!(send_acked(&mut on_a, room, "first-3").await, 3, "a retry of an acked message is a duplicate");
    assert_eq!(send_acked(&mut on_a, room, "ghost").await, 11, "the stale client_id gets a new seq");
}
