//! Single faults that must not lose, change or double an acknowledged message (issue 11),
//! each on real in-process controls and nodes:
//! - a reader must never see a message its owner wrote but its replica did not confirm
//!   (scenario 4: the owner rolled such a batch back and gave its seqs to others);
//! - a failover must never promote a replica that is still receiving the room's log
//!   (scenario 2: the replica dies, a new one is copying, the owner dies);
//! - a node cut off from the control plane sends its clients elsewhere (scenario 6).
//!
//! A node that "pauses" is played by a socket on its address that accepts connections and
//! never answers, which is what a stopped process looks like to its peers.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chat::{answer, fill, history, send_acked, token, ChatCluster, WsClient};
use common::{wait_for, Api};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Holds `addr` with a listener that accepts connections and never answers, until the
/// returned task is aborted (which closes every accepted socket).
async fn play_paused(addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = wait_for("the stopped node's port to be free", Duration::from_secs(10), || async {
        TcpListener::bind(addr).await.ok()
    })
    .await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_a_batch_its_replica_did_not_store() {
    // Controls that take a minute to call a silent node down: only replication times out.
    let mut cluster = ChatCluster::start_configured(2, |control| control.node_timeout_ms = 60_000, |_| {}).await;
    let api = Api::logged_in(&cluster.url(), "reader").await;
    let room = cluster.create_room(&api, "unacked", false).await;
    let (room, owner, replica) = (
        room["id"].as_u64().unwrap(),
        cluster.index_of(room["owner"].as_u64().unwrap()),
        cluster.index_of(room["replica"].as_u64().unwrap()),
    );
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut writer = WsClient::connect(&cluster.node(owner).ws_url(), &ws_token).await;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for i in 1..=3 {
        let client_id = format!("before-{i}");
        acked.insert(client_id.clone(), send_acked(&mut writer, room, &client_id, Duration::from_secs(20)).await);
    }

    // The replica stops answering; a send now waits for it until replication times out,
    // while a reader polls the history.
    let replica_addr = cluster.node_configs[replica].advertise.clone().expect("address");
    cluster.stop_node(replica).await;
    let paused = play_paused(&replica_addr).await;
    let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let reading = {
        let (api, base, seen) = (api.clone(), cluster.url(), seen.clone());
        tokio::spawn(async move {
            loop {
                if let Some(page) = history(&api, &base, room).await {
                    seen.lock().unwrap().extend(page);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    writer.send(json!({"type": "send", "room": room, "client_id": "pending", "text": "waits for the replica"})).await;
    let first_answer = answer(&mut writer, "pending").await;
    reading.abort();
    if let Ok(seq) = first_answer {
        acked.insert("pending".into(), seq);
    }

    // The replica comes back; another message is sent first, then "pending" is retried.
    paused.abort();
    cluster.restart_node(replica).await;
    acked.insert("after".into(), send_acked(&mut writer, room, "after", Duration::from_secs(30)).await);
    let retried = send_acked(&mut writer, room, "pending", Duration::from_secs(30)).await;
    if let Some(seq) = acked.get("pending") {
        assert_eq!(*seq, retried, "a retry is answered with the first ack's seq");
    }
    acked.insert("pending".into(), retried);

    let last = *acked.values().max().expect("acked");
    let final_history = wait_for("the whole history to be readable", Duration::from_secs(20), || async {
        history(&api, &cluster.url(), room).await.filter(|h| h.keys().next_back() >= Some(&last))
    })
    .await;
    for (client_id, seq) in &acked {
        assert_eq!(final_history.get(seq), Some(client_id), "{client_id} acknowledged at seq {seq}");
    }
    assert_eq!(final_history.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>(), "gapless");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the reader read while the replica was paused");
    for (seq, client_id) in seen {
        assert_eq!(
            final_history.get(&seq),
            Some(&client_id),
            "a reader saw {client_id} at seq {seq} while the replica was paused; the final history disagrees"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_still_receiving_the_log_is_never_promoted() {
    let mut cluster = ChatCluster::start_configured(3, |_| {}, |node| node.limits.sends_per_sec = 100_000).await;
    let api = Api::logged_in(&cluster.url(), "copier").await;
    let room = cluster.create_room(&api, "copying", false).await;
    let (room, owner_id, replica_id) =
        (room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap(), room["replica"].as_u64().unwrap());
    let (owner, replica) = (cluster.index_of(owner_id), cluster.index_of(replica_id));
    let third = (0..3).find(|i| *i != owner && *i != replica).expect("a third node");

    // A history longer than one copy chunk, acknowledged on owner and replica.
    const MESSAGES: u64 = 1_500;
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut writer = WsClient::connect(&cluster.node(third).ws_url(), &ws_token).await;
    let acked = fill(&mut writer, room, MESSAGES).await;

    // The replica dies; once the catalog gives the room a new replica (which the owner
    // starts copying the log to), the owner dies too.
    cluster.stop_node(replica).await;
    let control = cluster.controls.member(0).state.clone();
    wait_for("the room's new replica", Duration::from_secs(30), || {
        let route = districhat::control::raft::state_machine::read_state(&control).catalog.rooms.get(&room).cloned();
        async move { route.filter(|r| r.replica != Some(replica_id)).map(|_| ()) }
    })
    .await;
    cluster.stop_node(owner).await;

    // The owner comes back after it has been declared down; the room must serve every
    // acknowledged message at its seq and take sends again.
    wait_for("the owner to be declared down", Duration::from_secs(30), || {
        let node = districhat::control::raft::state_machine::read_state(&control).catalog.nodes.get(&owner_id).cloned();
        async move { node.filter(|n| n.status == districhat::control::catalog::NodeStatus::Down).map(|_| ()) }
    })
    .await;
    cluster.restart_node(owner).await;
    let mut client = WsClient::connect(&cluster.node(third).ws_url(), &ws_token).await;
    let after = send_acked(&mut client, room, "after-the-faults", Duration::from_secs(30)).await;
    assert_eq!(after, MESSAGES + 1, "the next message follows every acknowledged one");
    let final_history = history(&api, &cluster.url(), room).await.expect("history");
    for (seq, client_id) in &acked {
        assert_eq!(final_history.get(seq), Some(client_id), "acknowledged {client_id} at seq {seq}");
    }
    assert_eq!(final_history.len() as u64, MESSAGES + 1);
}

/// Scenario 6: a node cut off from the control plane (here: every control stopped) stops
/// taking sends once its lease runs out and closes its browsers' connections with 4009,
/// so they move to a node the control plane can reach; it serves again once a leader
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_the_control_plane_sends_its_clients_elsewhere() {
    let mut cluster = ChatCluster::start_configured(2, |_| {}, |node| node.control_lease_ms = 1_500).await;
    let api = Api::logged_in(&cluster.url(), "leased").await;
    let room = cluster.create_room(&api, "leased", false).await;
    let (room, owner) = (room["id"].as_u64().unwrap(), cluster.index_of(room["owner"].as_u64().unwrap()));
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut client = WsClient::connect(&cluster.node(owner).ws_url(), &ws_token).await;
    send_acked(&mut client, room, "before", Duration::from_secs(20)).await;

    for i in 0..3 {
        cluster.controls.stop(i).await;
    }
    let closed_at = Instant::now();
    let mut isolated = None;
    while closed_at.elapsed() < Duration::from_secs(20) && isolated.is_none() {
        match client.next(Duration::from_millis(500)).await {
            Some(frame) if frame["type"] == "error" && frame["code"] == "isolated" => isolated = Some(frame),
            _ => {}
        }
    }
    assert!(isolated.is_some(), "the node told its client it lost the control plane");
    assert!(client.next(Duration::from_secs(5)).await.is_none(), "and closed the connection");
    let refused = tokio_tungstenite::connect_async(cluster.node(owner).ws_url()).await;
    assert!(refused.is_err(), "an isolated node takes no new connections");

    for i in 0..3 {
        cluster.controls.restart(i).await;
    }
    cluster.controls.wait_ready().await;
    let ws_url = cluster.node(owner).ws_url();
    let ws_token = wait_for("a token once the controls are back", Duration::from_secs(30), || {
        let (api, base) = (api.clone(), cluster.url());
        async move {
            let response = api.http.get(format!("{base}/api/token")).bearer_auth(api.token.as_deref()?).send().await;
            let body: Value = response.ok()?.json().await.ok()?;
            body["token"].as_str().map(str::to_string)
        }
    })
    .await;
    wait_for("the node to take connections again", Duration::from_secs(30), || {
        let url = ws_url.clone();
        async move { tokio_tungstenite::connect_async(url).await.ok().map(|_| ()) }
    })
    .await;
    let mut again = WsClient::connect(&ws_url, &ws_token).await;
    assert_eq!(send_acked(&mut again, room, "after", Duration::from_secs(30)).await, 2);
}
