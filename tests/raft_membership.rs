//! Online membership change: a 4th member joins (learner, then voter) and leaves again
//! while the group keeps accepting writes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{member_config, tuning, wait_for, Api, TestCluster, SECRET};
use districhat::control;
use districhat::control::secret::SECRET_HEADER;
use serde_json::json;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_member_is_added_and_removed_under_writes() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let follower_url = cluster.url((leader + 1) % 3);
    let api = Api::logged_in(&cluster.url(leader), "ops").await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (api, url, stop, written) = (api.clone(), cluster.url(leader), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                match api.post(&format!("{url}/api/rooms"), json!({"name": format!("m-{i}")})).await {
                    Ok((201, _)) => {
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.push(format!("{other:?}")),
                }
                i += 1;
            }
            failures
        })
    };

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fourth = control::start(member_config(&cluster.dir, 4, &addr, &tuning(), Vec::new()), listener).await.unwrap();
    let http = reqwest::Client::new();
    let added = http
        .post(format!("{follower_url}/api/admin/members"))
        .header(SECRET_HEADER, SECRET)
        .json(&json!({"id": 4, "addr": addr}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status().as_u16(), 200, "{}", added.text().await.unwrap_or_default());
    wait_for("member 4 to be a voter everywhere", Duration::from_secs(30), || async {
        let voters: Vec<u64> = fourth.raft.metrics().borrow().membership_config.voter_ids().collect();
        (voters.contains(&4) && voters.len() == 4).then_some(())
    })
    .await;
    let before = written.load(Ordering::SeqCst);
    wait_for("writes while 4 members vote", Duration::from_secs(30), || async {
        (written.load(Ordering::SeqCst) > before + 20).then_some(())
    })
    .await;

    let removed =
        http.delete(format!("{follower_url}/api/admin/members/4")).header(SECRET_HEADER, SECRET).send().await.unwrap();
    assert_eq!(removed.status().as_u16(), 200, "{}", removed.text().await.unwrap_or_default());
    let leader_raft = cluster.member(leader).raft.clone();
    wait_for("member 4 to be gone", Duration::from_secs(30), || async {
        let gone = !leader_raft.metrics().borrow().membership_config.nodes().any(|(id, _)| *id == 4);
        gone.then_some(())
    })
    .await;
    let before = written.load(Ordering::SeqCst);
    wait_for("writes after the removal", Duration::from_secs(30), || async {
        (written.load(Ordering::SeqCst) > before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let failures = writer.await.unwrap();
    assert!(failures.is_empty(), "every write succeeded throughout: {failures:?}");
    fourth.shutdown().await;
}
