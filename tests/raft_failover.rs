//! The leader dies in the middle of a stream of writes: a new leader takes over and every
//! acknowledged write is present exactly once on every surviving member.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{tuning, wait_for, Api, TestCluster};
use serde_json::json;

const WRITES: usize = 300;
const KILL_AFTER: usize = 100;

/// Creates room `name`, retrying across members until it is acknowledged. A `room_exists`
/// after a failed attempt means the earlier attempt committed: that is an ack too.
async fn create_until_acked(api: &Api, urls: &[String], name: &str, next: &AtomicUsize) -> usize {
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 500, "room {name} was never acknowledged");
        let url = &urls[next.load(Ordering::Relaxed) % urls.len()];
        match api.post(&format!("{url}/api/rooms"), json!({"name": name})).await {
            Ok((201, _)) => return attempts,
            Ok((409, body)) if body["code"] == "room_exists" && attempts > 1 => return attempts,
            Ok((status, body)) => assert!(status >= 500, "unexpected answer {status}: {body}"),
            Err(_) => {}
        }
        next.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_leaders_death_exactly_once() {
    let mut cluster = TestCluster::start(3, tuning()).await;
    let old_leader = cluster.wait_ready().await;
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let api = Api::logged_in(&urls[old_leader], "writer").await;
    wait_for("every member to know the writer", Duration::from_secs(10), || async {
        (0..3).all(|i| cluster.catalog(i).user_by_name("writer").is_some()).then_some(())
    })
    .await;

    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (api, urls, acked) = (api.clone(), urls.clone(), acked.clone());
        tokio::spawn(async move {
            let next = AtomicUsize::new(old_leader);
            let mut names = Vec::new();
            for i in 0..WRITES {
                let name = format!("stream-{i}");
                create_until_acked(&api, &urls, &name, &next).await;
                names.push(name);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            names
        })
    };
    wait_for("the first writes to be acked", Duration::from_secs(60), || async {
        (acked.load(Ordering::SeqCst) >= KILL_AFTER).then_some(())
    })
    .await;
    cluster.stop(old_leader).await;
    let acked_names = writer.await.expect("writer task");
    assert_eq!(acked_names.len(), WRITES);

    let new_leader = cluster.wait_ready().await;
    assert_ne!(new_leader, old_leader, "a surviving member leads");
    cluster.wait_converged().await;
    for (i, _) in cluster.running() {
        let catalog = cluster.catalog(i);
        let names: Vec<&str> = catalog.rooms.values().map(|room| room.name.as_str()).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "member {i} holds a room twice");
        for name in &acked_names {
            assert!(unique.contains(name.as_str()), "member {i} lost acked room {name}");
        }
        assert_eq!(names.len(), WRITES, "member {i} holds exactly the acknowledged rooms");
    }
}
