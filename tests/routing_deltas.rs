//! Routing-table deltas against the whole table: the control's state machine (RocksDB in
//! a temp dir) applies a series of catalog changes — users, nodes, rooms, private-room
//! membership, DMs and group DMs, moderation acts, failovers, drains, a rebalance, a new
//! token key — and after every entry, the delta from each earlier version, applied to
//! the node's table at that version, must give exactly the whole table of now. After a
//! restart or a snapshot install the control has no deltas for older versions (the node
//! gets the whole table) and deltas start again from there.
//!
//! Then a real node, whose heartbeats may carry no routes, catches up on new rooms beside
//! its heartbeats with the delta, not the whole table (docs/PROTOCOL.md, "Large answers
//! leave the heartbeat").

mod common;

use districhat::control::catalog::{Command, ModAction, NodeStatus, ReadMark};
use districhat::control::raft::open_storage;
use districhat::control::raft::state_machine::{read_state, StateMachineStore};
use districhat::control::raft::types::{Entry, LogId};
use districhat::control::routing::{routing_delta, routing_table, version};
use districhat::node::routing::Routes;
use districhat::protocol::RoutingTable;
use std::time::Duration;

use common::chat::ChatCluster;
use common::{wait_for, Api};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

/// A state machine and every whole table it has had, by version.
struct Machine {
    store: StateMachineStore,
    index: u64,
    tables: Vec<RoutingTable>,
}

impl Machine {
    fn new(store: StateMachineStore) -> Self {
        let state = read_state(&store.state()).applied.last_applied.map_or(0, |log_id| log_id.index);
        Self { store, index: state, tables: Vec::new() }
    }

    async fn apply(&mut self, payload: EntryPayload<districhat::control::raft::types::TypeConfig>) {
        self.index += 1;
        let entry = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index), payload };
        self.store.apply([entry]).await.expect("apply");
    }

    /// Applies `command` (its result may be an error: refusals must not confuse deltas
    /// either), then checks every delta that ends here.
    async fn run(&mut self, command: Command) {
        self.apply(EntryPayload::Normal(command)).await;
        self.check_deltas();
    }

    /// The delta from each earlier version this machine can answer, applied to the
    /// table of that version, equals the whole table now.
    fn check_deltas(&mut self) {
        let shared = self.store.state();
        let state = read_state(&shared);
        let now = routing_table(&state);
        assert_eq!(now.version, self.index);
        for before in &self.tables {
            if before.version == 0 {
                assert!(routing_delta(&state, 0).is_none(), "a node with no table gets it whole");
                continue;
            }
            let Some(mut delta) = routing_delta(&state, before.version) else {
                panic!("no delta from v{} to v{}", before.version, now.version)
            };
            assert_eq!(delta.token_key, now.token_key, "v{} → v{}: the token key", before.version, now.version);
            delta.token_key.clear();
            let patched = Routes::from(before.clone()).with_delta(delta).expect("the delta fits its base");
            assert_eq!(patched, Routes::from(now.clone()), "v{} → v{}", before.version, now.version);
        }
        // At the same version (a node asking whether anything changed): an empty delta.
        if let Some(same) = routing_delta(&state, now.version) {
            assert!(same.rooms.is_empty() && same.nodes.is_empty(), "nothing changed since the same version");
            assert!(same.removed_rooms.is_empty() && same.removed_nodes.is_empty());
            assert_eq!((same.from, same.version), (now.version, now.version));
        } else {
            assert_eq!(now.version, 0, "v{}: an empty delta at the same version", now.version);
        }
        drop(state);
        self.tables.push(now);
    }
}

fn user(name: &str) -> Command {
    Command::CreateUser { username: name.into(), password_hash: "h".into(), at_ms: 1 }
}

fn node(name: &str) -> Command {
    Command::RegisterNode {
        name: name.into(),
        ws_url: format!("ws://{name}:1/ws"),
        mesh_addr: format!("{name}:1"),
        approved: true,
        at_ms: 1,
    }
}

fn moderate(room: u64, by: u64, user: u64, action: ModAction) -> Command {
    Command::Moderate { room, by, user, action, at_ms: 5 }
}

#[tokio::test]
async fn deltas_give_the_whole_table_across_catalog_changes_restarts_and_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, store) = open_storage(dir.path(), false, &Default::default()).expect("open");
    let mut machine = Machine::new(store);
    machine.check_deltas();

    machine.run(Command::SetSigningKey { key: vec![7; 32] }).await;
    for name in ["admin", "alice", "bob", "carol", "dave", "erin"] {
        machine.run(user(name)).await; // users 1..=6; 1 is the admin
    }
    for name in ["n1", "n2", "n3"] {
        machine.run(node(name)).await; // nodes 1..=3
    }
    machine.apply(EntryPayload::Blank).await; // a new leader's blank entry moves the version only
    machine.check_deltas();
    let public = Command::CreateRoom { name: "lobby".into(), private: false, created_by: 2, at_ms: 1 };
    machine.run(public).await; // room 1
    let private = Command::CreateRoom { name: "secret".into(), private: true, created_by: 3, at_ms: 1 };
    machine.run(private).await; // room 2
    machine.run(Command::CreateRoom { name: "lobby".into(), private: false, created_by: 2, at_ms: 1 }).await; // taken
    for user in [3, 4, 5] {
        machine.run(Command::AddMember { room: 1, user }).await;
    }
    machine.run(Command::AddMember { room: 2, user: 4 }).await; // a private room's member list
    machine.run(moderate(1, 2, 3, ModAction::AddModerator)).await;
    machine.run(moderate(1, 2, 4, ModAction::Mute { until_ms: 900 })).await;
    machine.run(moderate(1, 3, 5, ModAction::Ban)).await;
    machine.run(moderate(2, 3, 4, ModAction::Kick)).await; // leaves the private room
    machine.run(moderate(1, 2, 3, ModAction::RemoveModerator)).await;
    machine.run(moderate(1, 2, 4, ModAction::Unmute)).await;
    machine.run(moderate(1, 6, 2, ModAction::Ban)).await; // refused: not a moderator
    machine.run(Command::CreateDm { a: 2, b: 6, at_ms: 2 }).await; // room 3
    let group =
        Command::CreateGroupDm { created_by: 2, members: vec![3, 4], title: None, share_history: false, at_ms: 2 };
    machine.run(group).await; // room 4
    machine.run(Command::AddGroupMember { room: 4, by: 3, user: 5, last_seq: 9, at_ms: 3 }).await;
    let marks = vec![ReadMark { user: 2, room: 1, seq: 4 }];
    machine.run(Command::MarkRead { marks }).await; // not a route: an empty delta

    // Placements: in-sync marks, a failover, a node back, a drain, an assignment.
    let owned: Vec<(u64, Option<u64>, u64)> = {
        let shared = machine.store.state();
        let state = read_state(&shared);
        state.catalog.rooms.values().map(|room| (room.id, room.owner, room.epoch)).collect()
    };
    for (room, owner, epoch) in &owned {
        let Some(owner) = owner else { continue };
        machine.run(Command::ReplicasInSync { node: *owner, rooms: vec![(*room, *epoch)] }).await;
    }
    machine.run(Command::NodeDown { node: 1 }).await;
    machine.run(Command::NodeUp { node: 1 }).await;
    machine.run(Command::DrainNode { node: 2 }).await;
    machine.run(Command::UndrainNode { node: 2 }).await;
    let epoch = read_state(&machine.store.state()).catalog.rooms[&1].epoch;
    machine.run(Command::AssignRoom { room: 1, owner: 2, replica: Some(3), epoch }).await;
    machine.run(Command::AssignRoom { room: 1, owner: 2, replica: Some(3), epoch }).await; // stale epoch
    let placement = read_state(&machine.store.state()).catalog.placement_digest();
    machine.run(Command::Rebalance { max_moves: 10, placement }).await;
    machine.run(Command::SetNodeStatus { node: 3, status: NodeStatus::Down }).await;
    machine.run(node("n4")).await;
    machine.run(Command::RecoverFromRestore { signing_key: vec![9; 32], id_gap: 100 }).await; // a new token key
    machine.run(Command::CreateRoom { name: "after".into(), private: false, created_by: 2, at_ms: 9 }).await;

    // A restart: the change index starts again at the loaded version.
    let before_restart = machine.tables.clone();
    let at_restart = machine.index;
    drop((machine, log));
    let (_log, store) = open_storage(dir.path(), false, &Default::default()).expect("reopen");
    let mut machine = Machine::new(store);
    assert_eq!(machine.index, at_restart, "the rows hold the applied index");
    {
        let shared = machine.store.state();
        let state = read_state(&shared);
        assert_eq!(routing_table(&state), *before_restart.last().expect("tables"), "the same table after a restart");
        for older in &before_restart[..before_restart.len() - 1] {
            assert!(routing_delta(&state, older.version).is_none(), "v{}: the whole table", older.version);
        }
    }
    machine.check_deltas();
    machine.run(Command::AddMember { room: 2, user: 6 }).await;
    machine.run(moderate(1, 2, 5, ModAction::Unban)).await;

    // A snapshot installed on a fresh member: no deltas from before it either.
    let snapshot = machine.store.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    let other = tempfile::tempdir().expect("tempdir");
    let (_other_log, mut fresh) = open_storage(other.path(), false, &Default::default()).expect("open");
    fresh.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
    let mut installed = Machine::new(fresh);
    {
        let shared = installed.store.state();
        let state = read_state(&shared);
        assert_eq!(version(&state), machine.index);
        assert_eq!(routing_table(&state), *machine.tables.last().expect("tables"));
        assert!(routing_delta(&state, machine.tables[0].version).is_none(), "older than the snapshot: whole");
    }
    installed.check_deltas();
    installed.run(Command::CreateRoom { name: "later".into(), private: true, created_by: 4, at_ms: 10 }).await;
    installed.run(Command::NodeDown { node: 2 }).await;
}

/// A real node with `heartbeat_routes = 0`: every heartbeat that finds its table behind
/// says `fetch`, and the node fetches what changed from the leader
/// (`GET /internal/routes/delta`), never the whole table (`GET /internal/routes`), which
/// cost the leader a stall per fetch under fast room creation (docs/BENCHMARKS.md, "The
/// control plane's stalls, attributed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catches_up_beside_its_heartbeats_with_the_delta_not_the_whole_table() {
    let cluster = ChatCluster::start_configured(1, |control| control.heartbeat_routes = 0, |_| {}).await;
    let node = cluster.node(0).node.clone();
    let first_table = || async { (node.routes().version > 0).then_some(()) };
    wait_for("the node's first table", Duration::from_secs(10), first_table).await;
    let before = routes_sent(&cluster.url()).await;
    let api = Api::logged_in(&cluster.url(), "alice").await;
    let mut rooms = Vec::new();
    for i in 0..20 {
        rooms.push(cluster.create_room(&api, &format!("r{i}"), false).await["id"].as_u64().expect("room id"));
    }
    wait_for("the node to know every new room", Duration::from_secs(15), || async {
        let routes = node.routes();
        rooms.iter().all(|room| routes.rooms.contains_key(room)).then_some(())
    })
    .await;
    let after = routes_sent(&cluster.url()).await;
    assert!(after.0 > before.0, "the node fetched deltas: {before:?} -> {after:?}");
    assert_eq!(after.1, before.1, "and no whole table: {before:?} -> {after:?}");
}

/// A client that asks for rooms the node does not know (made-up ids) or may not see (a
/// private room it is not in) gets a typed error each time, and each miss costs the
/// node a look at what changed since its table (a delta, a few hundred bytes when nothing
/// did), never the whole table: with 100,000 rooms that was tens of megabytes built by a
/// control and parsed by the node per subscribe a client chose to miss
/// (docs/PROTOCOL.md, "Routing-table deltas"). On the code before this change every miss
/// fetched the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_for_rooms_the_node_lacks_costs_no_whole_table() {
    let cluster = ChatCluster::start(1).await;
    let node = cluster.node(0).node.clone();
    let base = cluster.url();
    let owner = Api::logged_in(&base, "owner").await;
    let private = cluster.create_room(&owner, "secret", true).await["id"].as_u64().expect("room id");
    wait_for("the node to know the private room", Duration::from_secs(15), || async {
        node.routes().rooms.contains_key(&private).then_some(())
    })
    .await;
    let outsider = Api::logged_in(&base, "outsider").await;
    let (token, nodes) = common::chat::token(&outsider, &base).await;
    let mut ws = common::chat::WsClient::connect(nodes[0]["ws_url"].as_str().expect("ws_url"), &token).await;
    let before = routes_sent(&base).await;
    const MISSES: u64 = 40;
    for i in 0..MISSES {
        let room = if i % 2 == 0 { 1_000_000 + i } else { private };
        ws.send(serde_json::json!({"type": "subscribe", "room": room})).await;
        let answer = loop {
            let frame = ws.next(Duration::from_secs(15)).await.expect("an answer to the subscribe");
            if !matches!(frame["type"].as_str(), Some("presence" | "typing")) {
                break frame;
            }
        };
        assert_eq!(answer["type"], "error", "{answer}");
        let code = answer["code"].as_str().unwrap_or_default();
        assert!(["unknown_room", "forbidden"].contains(&code), "miss {i}: {answer}");
    }
    let after = routes_sent(&base).await;
    assert_eq!(after.1, before.1, "no whole table for {MISSES} misses: {before:?} -> {after:?}");
    assert!(after.0 - before.0 <= MISSES, "at most one delta per miss: {before:?} -> {after:?}");
}

/// `districhat_routes_sent_total` of kinds `delta_fetch` and `table`, from `/metrics` (the
/// controls of this process share one recorder).
async fn routes_sent(base: &str) -> (u64, u64) {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("text");
    let count = |kind: &str| {
        let name = format!("districhat_routes_sent_total{{kind=\"{kind}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&name)).map_or(0, |n| n.trim().parse().expect("a count"))
    };
    (count("delta_fetch"), count("table"))
}
