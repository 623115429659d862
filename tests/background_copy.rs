//! Failover that does not grow with a room's history (issue 11, item 4; docs/REPLICATION.md,
//! "Background copy"): after its owner dies, a room takes sends again as soon as the new
//! owner's new replica holds the newest entry, while the older log reaches that replica in
//! the background; the replica counts as in sync (may be promoted) only once it holds all
//! of it, and a second fault during the copy loses nothing. Real in-process controls and
//! nodes; the copy is slowed down by `replication.backfill_per_sec`, so "before the copy
//! finished" is a matter of the configured rate, not of this machine's speed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::chat::{fill, history, send_acked, token, ChatCluster, WsClient};
use common::{wait_for, Api};
use districhat::control::catalog::{NodeStatus, Room};
use districhat::control::raft::state_machine::read_state;

/// The room's history before the failover: several copy chunks.
const MESSAGES: u64 = 3_000;
/// Older messages copied per second: the copy of [`MESSAGES`] takes at least 9 s.
const BACKFILL_PER_SEC: u32 = 300;

/// Three nodes with a slow background copy, and a room filled with [`MESSAGES`] acked
/// messages through the node that holds no copy of it.
struct Setup {
    cluster: ChatCluster,
    api: Api,
    ws_token: String,
    room: u64,
    /// Node indexes.
    owner: usize,
    replica: usize,
    third: usize,
    writer: WsClient,
    acked: BTreeMap<u64, String>,
}

impl Setup {
    async fn start(user: &str) -> Self {
        let cluster = ChatCluster::start_configured(
            3,
            |_| {},
            |node| {
                node.limits.sends_per_sec = 100_000;
                node.replication.backfill_per_sec = BACKFILL_PER_SEC;
            },
        )
        .await;
        let api = Api::logged_in(&cluster.url(), user).await;
        let room = cluster.create_room(&api, user, false).await;
        let id = |field: &str| room[field].as_u64().expect("placed");
        let (owner, replica) = (cluster.index_of(id("owner")), cluster.index_of(id("replica")));
        let third = (0..3).find(|i| *i != owner && *i != replica).expect("a third node");
        let (ws_token, _) = token(&api, &cluster.url()).await;
        let mut writer = WsClient::connect(&cluster.node(third).ws_url(), &ws_token).await;
        let room = id("id");
        let acked = fill(&mut writer, room, MESSAGES).await;
        Self { cluster, api, ws_token, room, owner, replica, third, writer, acked }
    }

    /// The room as the first control member applied it.
    fn route(&self) -> Room {
        let state = read_state(&self.cluster.controls.member(0).state);
        state.catalog.rooms.get(&self.room).cloned().expect("room in the catalog")
    }

    fn replica_in_sync(&self) -> bool {
        let state = read_state(&self.cluster.controls.member(0).state);
        state.catalog.rooms.get(&self.room).is_some_and(|room| state.catalog.replica_in_sync(room))
    }

    fn node_id(&self, index: usize) -> u64 {
        self.cluster.node(index).id()
    }

    /// Waits until the catalog made `owner` the room's owner and `replica` its replica.
    async fn wait_placement(&self, owner: u64, replica: u64) {
        wait_for("the room's new placement", Duration::from_secs(30), || {
            let room = self.route();
            async move { (room.owner == Some(owner) && room.replica == Some(replica)).then_some(()) }
        })
        .await;
    }

    /// Every acked message at its seq in the final history, and nothing else.
    async fn check_history(&self) {
        let last = *self.acked.keys().next_back().expect("acked");
        let history = wait_for("the whole history to be readable", Duration::from_secs(30), || async {
            history(&self.api, &self.cluster.url(), self.room).await.filter(|h| h.keys().next_back() >= Some(&last))
        })
        .await;
        assert_eq!(history, self.acked, "the history is exactly the acknowledged messages, at their seqs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_takes_sends_before_the_older_log_reached_its_new_replica() {
    let mut setup = Setup::start("backfill").await;
    let (old_owner, new_owner, new_replica) =
        (setup.node_id(setup.owner), setup.node_id(setup.replica), setup.node_id(setup.third));

    setup.cluster.stop_node(setup.owner).await;
    setup.wait_placement(new_owner, new_replica).await;
    let seq = send_acked(&mut setup.writer, setup.room, "after-failover", Duration::from_secs(60)).await;
    assert_eq!(seq, MESSAGES + 1, "the next message follows every acknowledged one");
    setup.acked.insert(seq, "after-failover".into());

    // Acknowledged means on two disks: the new replica has the new message and the one it
    // follows, but not yet the older log, and the catalog does not count it in sync.
    let copy: BTreeMap<u64, String> = setup.cluster.room_log(new_replica, setup.room).await.into_iter().collect();
    assert_eq!(copy.get(&seq), Some(&"after-failover".to_string()), "the ack waited for the new replica");
    assert_eq!(copy.get(&MESSAGES), setup.acked.get(&MESSAGES), "the replica was seeded with the newest entry");
    assert!(
        (copy.len() as u64) < MESSAGES,
        "the room took sends before its older log was copied ({} of {} entries on the new replica)",
        copy.len(),
        MESSAGES + 1
    );
    assert!(!setup.replica_in_sync(), "a replica still receiving the older log is not in sync");

    // The copy finishes in the background; then the replica is in sync and equal.
    wait_for("the new replica to be in sync", Duration::from_secs(120), || {
        let in_sync = setup.replica_in_sync();
        async move { in_sync.then_some(()) }
    })
    .await;
    let owner_log = setup.cluster.room_log(new_owner, setup.room).await;
    assert_eq!(setup.cluster.room_log(new_replica, setup.room).await, owner_log, "replica equals owner");
    assert_eq!(owner_log.into_iter().collect::<BTreeMap<_, _>>(), setup.acked);
    setup.check_history().await;
    assert_ne!(setup.route().owner, Some(old_owner));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_fault_during_the_background_copy_loses_nothing() {
    let mut setup = Setup::start("second-fault").await;
    let (new_owner, new_replica) = (setup.node_id(setup.replica), setup.node_id(setup.third));
    let (second, third) = (setup.replica, setup.third);

    setup.cluster.stop_node(setup.owner).await;
    setup.wait_placement(new_owner, new_replica).await;
    let seq = send_acked(&mut setup.writer, setup.room, "after-failover", Duration::from_secs(60)).await;
    setup.acked.insert(seq, "after-failover".into());

    // The new replica restarts in the middle of the copy: what it still lacks is on its
    // disk, so the copy goes on (it must not be taken for complete). The writer was
    // connected to it; it reconnects to the new owner.
    setup.cluster.stop_node(third).await;
    setup.cluster.restart_node(third).await;
    let mut writer = WsClient::connect(&setup.cluster.node(second).ws_url(), &setup.ws_token).await;
    let seq = send_acked(&mut writer, setup.room, "after-replica-restart", Duration::from_secs(60)).await;
    setup.acked.insert(seq, "after-replica-restart".into());
    let copied = setup.cluster.room_log(new_replica, setup.room).await.len() as u64;
    assert!(copied < MESSAGES, "still copying after the restart ({copied} entries)");
    assert!(!setup.replica_in_sync(), "a restarted replica with a copy to finish is not in sync");

    // Now the new owner dies before the copy finished: its replica must not be promoted
    // (it lacks older messages), so the room waits for the owner.
    setup.cluster.stop_node(second).await;
    wait_for("the new owner to be declared down", Duration::from_secs(30), || {
        let state = read_state(&setup.cluster.controls.member(0).state);
        let down = state.catalog.nodes.get(&new_owner).is_some_and(|node| node.status == NodeStatus::Down);
        async move { down.then_some(()) }
    })
    .await;
    assert_eq!(setup.route().owner, Some(new_owner), "the incomplete replica was not promoted");

    // The owner returns: the copy resumes, the room takes sends at the next seq, nothing
    // acknowledged is missing or doubled, and the replica ends equal to the owner.
    setup.cluster.restart_node(second).await;
    let mut writer = WsClient::connect(&setup.cluster.node(third).ws_url(), &setup.ws_token).await;
    let seq = send_acked(&mut writer, setup.room, "after-owner-restart", Duration::from_secs(60)).await;
    assert_eq!(seq, MESSAGES + 3);
    setup.acked.insert(seq, "after-owner-restart".into());
    wait_for("the replica to be in sync", Duration::from_secs(120), || {
        let in_sync = setup.replica_in_sync();
        async move { in_sync.then_some(()) }
    })
    .await;
    let route = setup.route();
    let (owner, replica) = (route.owner.expect("owner"), route.replica.expect("replica"));
    let owner_log = setup.cluster.room_log(owner, setup.room).await;
    assert_eq!(setup.cluster.room_log(replica, setup.room).await, owner_log, "replica equals owner");
    setup.check_history().await;
}
