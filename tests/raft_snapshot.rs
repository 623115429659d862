//! A member that was down for thousands of writes catches up through a snapshot, and
//! loads the same catalog (read marks included) from its rows after another restart. A
//! member that joins with an empty data directory (a lost member's replacement) is sent
//! the leader's snapshot file, keeps it as its own file, and serves it after a restart.

mod common;

use std::time::Duration;

use common::{tuning, wait_for, Api, TestCluster};
use districhat::config::RaftTuning;
use serde_json::json;

const WRITES: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_catches_up_through_a_snapshot() {
    // Concurrent writes share log entries (several commands per entry), so 3,000 writes
    // take a few hundred entries: snapshot every 50.
    let tuning = RaftTuning { snapshot_every: 50, keep_logs: 0, ..tuning() };
    // One user writes 3,000 rooms here: no room quota.
    let mut cluster = TestCluster::start_with(3, tuning, |config| config.max_rooms_per_user = 0).await;
    let leader = cluster.wait_ready().await;
    let lagging = (leader + 1) % 3;
    let api = Api::logged_in(&cluster.url(leader), "snap").await;
    cluster.wait_converged().await;
    cluster.stop(lagging).await;
    let stopped_at = cluster.member(leader).raft.metrics().borrow().last_applied.map_or(0, |id| id.index);
    let last_seen = cluster.catalog(leader).rooms.len();
    assert_eq!(last_seen, 0);

    let url = cluster.url(leader);
    let statuses = api.create_rooms(&url, "s", WRITES, 32).await;
    assert!(statuses.iter().all(|s| *s == 201), "every write acked");
    // Read positions travel in the snapshot too (one batched write a second later).
    let (status, body) = api
        .post(&format!("{url}/api/read-marks"), json!({"marks": [{"room": 1, "seq": 7}, {"room": 2, "seq": 3}]}))
        .await
        .expect("marks");
    assert_eq!(status, 202, "{body}");
    wait_for("the read marks to be committed", Duration::from_secs(10), || async {
        (cluster.catalog(leader).read_marks.len() == 2).then_some(())
    })
    .await;
    // So do ended sessions (a logout).
    let logout = api.http.delete(format!("{url}/api/sessions")).bearer_auth(api.token.as_deref().expect("token"));
    assert_eq!(logout.send().await.expect("logout").status().as_u16(), 204);

    let purged = wait_for("the leader to purge its log behind a snapshot", Duration::from_secs(30), || async {
        let metrics = cluster.member(leader).raft.metrics().borrow().clone();
        metrics.purged.filter(|p| p.index > stopped_at + 50).map(|p| p.index)
    })
    .await;
    cluster.restart(lagging).await;
    let applied = cluster.wait_converged().await;
    assert!(applied > purged, "caught up past the purged log ({applied} > {purged})");
    let restarted = cluster.member(lagging).raft.metrics().borrow().clone();
    assert!(
        restarted.snapshot.is_some_and(|s| s.index >= purged),
        "the restarted member holds a snapshot covering the purged log: {:?}",
        restarted.snapshot
    );
    let expected = cluster.catalog(leader);
    assert_eq!(expected.rooms.len(), WRITES);
    assert_eq!(cluster.catalog(lagging), expected, "same catalog after catch-up");
    assert_eq!(expected.read_marks.values().copied().collect::<Vec<_>>(), vec![7, 3]);
    assert_eq!(expected.ended_sessions.len(), 1, "the logout travelled in the snapshot");

    // The installed snapshot was written row by row: a plain restart loads the same catalog.
    cluster.stop(lagging).await;
    cluster.restart(lagging).await;
    cluster.wait_converged().await;
    assert_eq!(cluster.catalog(lagging), expected, "same catalog after a restart from the rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_an_empty_disk_is_sent_the_snapshot_file_and_restarts_from_its_own() {
    let tuning = RaftTuning { snapshot_every: 20, keep_logs: 0, ..tuning() };
    let mut cluster = TestCluster::start_with(3, tuning, |config| config.max_rooms_per_user = 0).await;
    let leader = cluster.wait_ready().await;
    let api = Api::logged_in(&cluster.url(leader), "wipe").await;
    let statuses = api.create_rooms(&cluster.url(leader), "w", 200, 8).await;
    assert!(statuses.iter().all(|s| *s == 201), "every write acked");
    wait_for("the leader to purge its log behind a snapshot", Duration::from_secs(30), || async {
        let metrics = cluster.member(leader).raft.metrics().borrow().clone();
        metrics.purged.filter(|p| p.index > 20).map(|_| ())
    })
    .await;

    // A member on an empty disk (a lost member's replacement): the log it would need is
    // purged, so the leader sends it the snapshot, which it keeps as its own file.
    let fresh = cluster.add_empty_member().await;
    cluster.wait_converged().await;
    let expected = cluster.catalog(leader);
    assert_eq!(expected.rooms.len(), 200);
    assert_eq!(cluster.catalog(fresh), expected, "the installed snapshot holds the catalog");
    let installed = cluster.member(fresh).raft.metrics().borrow().snapshot;
    assert!(installed.is_some(), "the member holds a snapshot");
    let dir = cluster.configs[fresh].data_dir.clone();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the data dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("catalog-snapshot-"))
        .collect();
    assert!(files.len() == 1 && files[0].ends_with(".snap"), "one snapshot file in the data dir: {files:?}");

    cluster.stop(fresh).await;
    cluster.restart(fresh).await;
    cluster.wait_converged().await;
    assert_eq!(cluster.catalog(fresh), expected, "the same catalog after a restart");
    let restarted = cluster.member(fresh).raft.metrics().borrow().snapshot;
    assert!(restarted >= installed, "the snapshot file is served after a restart: {restarted:?}");
}
