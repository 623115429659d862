//! Rebalancing rooms onto a node added late (`admin rebalance`): with every room on two
//! nodes, a third joins and the rebalance moves replica roles to it and swaps owners with
//! replicas, in small batches, while clients on every node keep sending. Afterwards every
//! node owns and replicates its share, every moved room has a new epoch and a replica
//! that holds the room's whole log on disk, nothing acknowledged is lost or doubled, and
//! no client saw a message twice or out of order. A second rebalance moves nothing; the
//! API answers nobody without the cluster secret.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chat::ChatCluster;
use common::senders::{checked_history, collect, spawn_on_every_node, Collected, TailGate};
use common::{wait_for, Api, SECRET};
use districhat::cli::rebalance::{self, RebalanceEvent, RebalanceTarget};
use districhat::control::catalog::{Catalog, NodeStatus};
use districhat::node::{self, config::NodeConfig};
use tokio::net::TcpListener;

const ROOMS: usize = 12;
const PER_CLIENT: usize = 150;
/// Rebalance once this many sends (of ROOMS × 3 nodes × PER_CLIENT) are acknowledged.
const REBALANCE_AFTER: usize = 100;
/// Moves per batch: small, so the rebalance takes several batches under the load.
const BATCH: u64 = 3;

/// Starts one more chat node (`n{count + 1}`) on port 0 and waits until it is up.
async fn add_node(cluster: &mut ChatCluster) -> u64 {
    let name = format!("n{}", cluster.nodes.len() + 1);
    let urls: Vec<String> = (0..3).map(|i| cluster.controls.url(i)).collect();
    let dir = cluster.controls.dir.path().join(&name);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
    let mut config = NodeConfig::new(&name, "127.0.0.1:0", dir, urls, SECRET);
    config.advertise = Some(listener.local_addr().expect("addr").to_string());
    let handle = node::start(config.clone(), listener).await.expect("start node");
    let id = handle.id();
    cluster.nodes.push(Some(handle));
    cluster.node_configs.push(config);
    cluster.wait_nodes_up(cluster.nodes.len()).await;
    id
}

/// (owned, replicated) per Up node.
fn up_counts(catalog: &Catalog) -> BTreeMap<u64, (u64, u64)> {
    catalog.node_room_counts().into_iter().filter(|(id, _)| catalog.nodes[id].status == NodeStatus::Up).collect()
}

/// Every count within one room of the mean.
fn even(counts: &[u64]) -> bool {
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts.iter().all(|count| (*count as f64 - mean).abs() < 1.0 + f64::EPSILON)
}

fn target(cluster: &ChatCluster) -> RebalanceTarget {
    RebalanceTarget { control: cluster.url(), secret: SECRET.into(), batch: BATCH }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_gets_its_share_under_load_and_nothing_is_lost() {
    let mut cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "balancer").await;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        rooms.push(cluster.create_room(&api, &format!("load-{i}"), false).await["id"].as_u64().expect("id"));
    }
    let late = add_node(&mut cluster).await;
    cluster.controls.wait_converged().await;
    let before = cluster.controls.catalog(0);
    assert_eq!(up_counts(&before)[&late], (0, 0), "the late node starts with nothing");

    let acked_total = Arc::new(AtomicUsize::new(0));
    // Each client's last 5 sends wait for the rebalance to end.
    let gate = TailGate::new(5);
    let clients = spawn_on_every_node(&cluster, &api, &rooms, PER_CLIENT, &acked_total, &gate);
    wait_for("load before the rebalance", Duration::from_secs(60), || async {
        (acked_total.load(Ordering::SeqCst) >= REBALANCE_AFTER).then_some(())
    })
    .await;
    let acked_at_start = acked_total.load(Ordering::SeqCst);
    let (mut batches, mut acked_at_batches, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    let summary = rebalance::rebalance(&target(&cluster), Duration::from_secs(120), |event| match event {
        RebalanceEvent::Batch(report) => {
            batches.push(report.moves.len());
            acked_at_batches.push(acked_total.load(Ordering::SeqCst));
        }
        RebalanceEvent::Progress(progress) => steps.push(rebalance::describe(progress)),
    })
    .await
    .expect("rebalance");
    let acked_at_end = acked_total.load(Ordering::SeqCst);
    gate.open();
    assert!(summary.moves() > 0 && summary.swaps > 0 && summary.replica_moves > 0, "{summary:?}");
    assert_eq!(summary.remaining_imbalance, 0, "{summary:?}");
    assert!(batches.len() >= 3, "small batches, several of them: {batches:?}");
    assert!(batches.iter().all(|moves| *moves as u64 <= BATCH), "{batches:?}");
    assert_eq!(batches.last(), Some(&0), "the last batch found nothing to move");

    let Collected { acked, retryable_errors, reconnects } = collect(clients).await;
    let total = ROOMS * 3 * PER_CLIENT;
    assert_eq!(acked.len(), total);
    eprintln!(
        "rebalance: {} moves ({} swaps, {} replica moves) in {} batches {batches:?}, {:.2} s; \
         {acked_at_start}..{acked_at_end}/{total} acked during it (at each batch: {acked_at_batches:?}); retryable errors {}, reconnects {reconnects}\n  {}\n  {}",
        summary.moves(),
        summary.swaps,
        summary.replica_moves,
        summary.batches,
        summary.elapsed.as_secs_f64(),
        retryable_errors.len(),
        rebalance::render_counts(&summary.before, &summary.after).join("\n  "),
        steps.join("\n  ")
    );
    // Every client's last sends wait for the rebalance to end (the gate), so each batch
    // is committed under load whatever the machine's speed (`acked_at_batches`, above).
    assert!(acked_at_batches[0] < total, "the rebalance ran under load: {acked_at_batches:?} of {total}");
    // Reconnects are allowed (a send answered after 5 s of silence counts as one) and
    // printed; what matters is checked below: nothing lost, doubled or reordered.

    // The catalog: every Up node owns and replicates within one of the mean, two different
    // nodes per room, and exactly the rooms that moved got a newer epoch.
    cluster.controls.wait_converged().await;
    let after = cluster.controls.catalog(0);
    let counts = up_counts(&after);
    assert_eq!(counts.len(), 3);
    let owned: Vec<u64> = counts.values().map(|c| c.0).collect();
    let replicated: Vec<u64> = counts.values().map(|c| c.1).collect();
    assert!(even(&owned) && even(&replicated), "{counts:?}");
    let mut moved = 0;
    for room in after.rooms.values() {
        let old = &before.rooms[&room.id];
        let (owner, replica) = (room.owner.expect("owner"), room.replica.expect("replica"));
        assert_ne!(owner, replica, "{room:?}");
        if (room.owner, room.replica) == (old.owner, old.replica) {
            assert_eq!(room.epoch, old.epoch, "an unmoved room keeps its epoch: {room:?}");
        } else {
            moved += 1;
            assert!(room.epoch > old.epoch, "a moved room has a newer epoch: {room:?} (was {old:?})");
        }
    }
    assert!(moved > 0);

    // History: gapless, every acknowledged client_id once at its seq; and the room's
    // replica (for most rooms a new one) holds exactly that log on its own disk.
    let base = cluster.url();
    for room in &rooms {
        let history = checked_history(&api, &base, *room, &acked, &format!("r{room}-")).await;
        assert_eq!(history.len(), 3 * PER_CLIENT, "room {room}: exactly the acknowledged messages");

        let placed = &after.rooms[room];
        for (role, node) in [("owner", placed.owner), ("replica", placed.replica)] {
            let node = node.expect("placed");
            let copy = cluster.room_log(node, *room).await;
            assert_eq!(copy, history, "room {room}: {role} {node} holds every message on disk");
        }
    }

    // Balanced now: a second rebalance moves nothing.
    let again = rebalance::rebalance(&target(&cluster), Duration::from_secs(60), |_| {}).await.expect("again");
    assert_eq!((again.moves(), again.batches, again.remaining_imbalance), (0, 0, 0), "{again:?}");
    cluster.controls.wait_converged().await;
    assert_eq!(cluster.controls.catalog(0).rooms, after.rooms, "nothing moved the second time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebalance_api_answers_nobody_without_the_secret() {
    let cluster = ChatCluster::start(2).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/admin/rebalance", cluster.url());
    let post = http.post(&url).send().await.expect("post");
    assert_eq!(post.status().as_u16(), 401);
    let body: serde_json::Value = post.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");
    let get = http.get(&url).header("x-districhat-secret", "wrong").send().await.expect("get");
    assert_eq!(get.status().as_u16(), 401);

    let wrong = RebalanceTarget { control: cluster.url(), secret: "wrong".into(), batch: BATCH };
    match rebalance::rebalance(&wrong, Duration::from_secs(10), |_| {}).await {
        Err(rebalance::RebalanceError::Refused { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (401, "unauthorized"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let right =
        rebalance::rebalance(&target(&cluster), Duration::from_secs(30), |_| {}).await.expect("with the secret");
    assert_eq!(right.moves(), 0, "two nodes holding every room: nothing to move");
}
