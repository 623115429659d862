//! Several waiting commands per Raft entry (`control/proposer.rs`): 64 concurrent writers
//! through the leader and a follower share log entries, and each still gets its own
//! result — its room, or `room_exists` for the loser of a race for one name — readable on
//! the member it wrote through as soon as it is answered; a member that was down during
//! the writes applies the batched entries from the log to the same catalog.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{tuning, Api, TestCluster};
use districhat::control::raft::state_machine::read_state;
use serde_json::json;

const WRITERS: usize = 64;
const WRITES_EACH: usize = 4;

/// One write's outcome: the room name, the HTTP status and the room id (if created).
type Outcome = (String, u16, Option<u64>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_each_with_its_own_result_and_replay_to_the_same_catalog() {
    let mut cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let api = Api::logged_in(&cluster.url(leader), "alice").await;
    let (lagging, follower) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.stop(lagging).await;
    let applied =
        |cluster: &TestCluster| cluster.member(leader).raft.metrics().borrow().last_applied.map(|id| id.index);
    let before = applied(&cluster).unwrap_or(0);

    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let through = if writer % 2 == 0 { leader } else { follower };
        let (api, url, state) = (api.clone(), cluster.url(through), cluster.member(through).state.clone());
        tasks.spawn(async move {
            let mut outcomes: Vec<Outcome> = Vec::new();
            for i in 0..WRITES_EACH {
                // Writers 2k and 2k+1 race for one name with their first write.
                let name = if i == 0 { format!("shared-{}", writer / 2) } else { format!("room-{writer}-{i}") };
                let (status, body) = api.post(&format!("{url}/api/rooms"), json!({"name": name})).await.expect("post");
                let id = body["id"].as_u64();
                if status == 201 {
                    assert_eq!(body["name"], name.as_str(), "its own room back");
                    let id = id.expect("a created room has an id");
                    let here = read_state(&state).catalog.rooms.get(&id).map(|room| room.name.clone());
                    assert_eq!(here.as_deref(), Some(name.as_str()), "read-your-writes on the member written to");
                } else {
                    assert_eq!((status, body["code"].as_str()), (409, Some("room_exists")), "{name}: {body}");
                }
                outcomes.push((name, status, id));
            }
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.extend(done.expect("writer"));
    }

    let mut created: BTreeMap<u64, String> = BTreeMap::new();
    let mut shared_winners: BTreeMap<String, usize> = BTreeMap::new();
    for (name, status, id) in &outcomes {
        if name.starts_with("shared-") {
            *shared_winners.entry(name.clone()).or_default() += usize::from(*status == 201);
        } else {
            assert_eq!(*status, 201, "{name}: nobody else asked for it");
        }
        if let Some(id) = id.filter(|_| *status == 201) {
            assert!(created.insert(id, name.clone()).is_none(), "room id {id} given twice");
        }
    }
    assert_eq!(shared_winners.len(), WRITERS / 2);
    assert!(shared_winners.values().all(|won| *won == 1), "each raced name won exactly once: {shared_winners:?}");

    let after = applied(&cluster).expect("applied");
    let entries = after - before;
    assert!(
        entries < outcomes.len() as u64,
        "{} writes took {entries} entries: some entries carried several commands",
        outcomes.len()
    );

    cluster.restart(lagging).await;
    cluster.wait_converged().await;
    let catalogs: Vec<_> = (0..3).map(|i| cluster.catalog(i)).collect();
    let rooms: BTreeMap<u64, String> =
        catalogs[leader].rooms.values().map(|room| (room.id, room.name.clone())).collect();
    assert_eq!(rooms, created, "the catalog holds exactly the rooms answered 201");
    assert_eq!(catalogs[lagging], catalogs[leader], "the member that was down replayed the batched entries");
    assert_eq!(catalogs[follower], catalogs[leader]);
    let names: BTreeSet<&String> = rooms.values().collect();
    assert_eq!(names.len(), rooms.len(), "no name twice");
}
