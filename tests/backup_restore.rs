//! Backup and whole-control-plane restore: a checkpoint taken through the HTTP API from
//! one member of a live group, then every member's data replaced by copies of it. The
//! restored group elects a leader, holds exactly what the backup held, and takes writes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::chat::{token, ChatCluster, WsClient};
use common::{tuning, wait_for, Api, TestCluster, SECRET};
use districhat::config::RaftTuning;
use districhat::control;
use districhat::control::secret::SECRET_HEADER;
use districhat::node::log::RoomLog;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Users written before the backup.
const BEFORE: usize = 30;
/// Users written after it (absent from the restored group).
const AFTER: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_restored_from_one_members_backup_holds_exactly_the_backed_up_catalog() {
    // Small snapshots: the backup then holds a snapshot and a purged log, not only rows.
    let tuning = RaftTuning { snapshot_every: 10, keep_logs: 2, ..tuning() };
    let mut cluster = TestCluster::start(3, tuning).await;
    let leader = cluster.wait_ready().await;
    let follower = (leader + 1) % 3;
    let api = Api::new();
    let before = register_users(&api, &cluster.url(leader), "before", BEFORE).await;
    cluster.wait_converged().await;

    let backup_dir = cluster.dir.path().join("backups").join("first");
    let (status, reply) = backup(&api, &cluster.url(follower), Some(SECRET), json!({"dir": backup_dir})).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["member"], json!(follower as u64 + 1));
    assert_eq!(reply["path"], json!(backup_dir.display().to_string()));
    assert_eq!(reply["users"], json!(BEFORE));
    assert!(reply["bytes"].as_u64().is_some_and(|b| b > 0), "{reply}");
    let applied = reply["applied_index"].as_u64().expect("applied index");
    let last_log = reply["last_log_index"].as_u64().expect("last log index");
    assert!(applied > BEFORE as u64 && last_log >= applied, "{reply}");

    let after = register_users(&api, &cluster.url(leader), "after", AFTER).await;
    for i in 0..3 {
        cluster.stop(i).await;
    }

    let restored = restore_from(&cluster, &backup_dir).await;
    let new_leader = restored.wait_ready().await;
    for i in 0..3 {
        let names: BTreeSet<String> = restored.catalog(i).users.values().map(|u| u.username.clone()).collect();
        assert_eq!(names, before, "member {} holds exactly the backed-up users", i + 1);
        assert!(after.iter().all(|name| !names.contains(name)));
    }
    let newcomer = register_users(&api, &restored.url(new_leader), "restored", 1).await;
    wait_for("every restored member to apply the new write", Duration::from_secs(20), || async {
        (0..3)
            .all(|i| {
                let catalog = restored.catalog(i);
                catalog.users.len() == BEFORE + 1 && newcomer.iter().all(|n| catalog.user_by_name(n).is_some())
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_refuse_relative_or_existing_targets_and_callers_without_the_secret() {
    let cluster = TestCluster::start(1, tuning()).await;
    let url = cluster.url(0);
    let api = Api::new();
    let existing = cluster.dir.path().join("c1");
    let fresh = cluster.dir.path().join("fresh");
    let cases = [
        (Some(SECRET), json!({"dir": "backups/relative"}), 400, "backup_path_relative"),
        (Some(SECRET), json!({"dir": existing}), 409, "backup_target_exists"),
        (None, json!({"dir": fresh}), 401, "unauthorized"),
        (Some("wrong-secret"), json!({"dir": fresh}), 401, "unauthorized"),
        (Some(SECRET), json!({"directory": fresh}), 400, "invalid_request"),
    ];
    for (secret, body, status, code) in cases {
        let (got_status, reply) = backup(&api, &url, secret, body.clone()).await;
        assert_eq!((got_status, reply["code"].as_str()), (status, Some(code)), "{body}: {reply}");
    }
    assert!(!fresh.exists(), "nothing was written for a refused request");
    assert!(!Path::new("backups/relative").exists());
    let (status, reply) = backup(&api, &url, Some(SECRET), json!({"dir": fresh})).await;
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = backup(&api, &url, Some(SECRET), json!({"dir": fresh})).await;
    assert_eq!((status, reply["code"].as_str()), (409, Some("backup_target_exists")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_node_backup_holds_every_acked_message_of_its_rooms() {
    const MESSAGES: u64 = 25;
    let cluster = ChatCluster::start(2).await;
    let alice = Api::logged_in(&cluster.url(), "alice").await;
    let room = cluster.create_room(&alice, "general", false).await;
    let (room_id, owner_id) = (room["id"].as_u64().expect("room id"), room["owner"].as_u64().expect("owner"));
    let owner = cluster.node(cluster.index_of(owner_id));
    let (alice_token, _) = token(&alice, &cluster.url()).await;
    let mut socket = WsClient::connect(&owner.ws_url(), &alice_token).await;
    socket.subscribe(room_id, None).await;
    for i in 0..MESSAGES {
        let client_id = format!("m{i}");
        socket.send(json!({"type": "send", "room": room_id, "client_id": client_id, "text": "kept"})).await;
        loop {
            let frame = socket.next(Duration::from_secs(15)).await.expect("an ack");
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "ack" && frame["client_id"] == client_id.as_str() {
                break;
            }
        }
    }

    let node_url = format!("http://{}", owner.addr);
    let api = Api::new();
    let dir = cluster.controls.dir.path().join("node-backup");
    let (status, reply) = backup(&api, &node_url, None, json!({"dir": dir})).await;
    assert_eq!((status, reply["code"].as_str()), (401, Some("unauthorized")));
    let (status, reply) = backup(&api, &node_url, Some(SECRET), json!({"dir": "rel"})).await;
    assert_eq!((status, reply["code"].as_str()), (400, Some("backup_path_relative")));
    let (status, reply) = backup(&api, &node_url, Some(SECRET), json!({"dir": dir})).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["node"], json!(owner_id));
    assert!(reply["bytes"].as_u64().is_some_and(|b| b > 0), "{reply}");
    let (status, reply) = backup(&api, &node_url, Some(SECRET), json!({"dir": dir})).await;
    assert_eq!((status, reply["code"].as_str()), (409, Some("backup_target_exists")));

    let restored_dir = cluster.controls.dir.path().join("node-restored");
    copy_flat_dir(&dir, &restored_dir);
    let restored = RoomLog::open(&restored_dir, false).expect("open the restored copy");
    assert_eq!(restored.last_seq(room_id).expect("last seq"), MESSAGES, "every acked message is in the backup");
}

/// Registers `count` users named `{prefix}-{i}`; each must be acked.
async fn register_users(api: &Api, url: &str, prefix: &str, count: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let (status, body) = api
            .post(&format!("{url}/api/users"), json!({"username": name, "password": "correct horse battery"}))
            .await
            .expect("register");
        assert_eq!(status, 201, "register {name}: {body}");
        names.insert(name);
    }
    names
}

async fn backup(api: &Api, url: &str, secret: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = api.http.post(format!("{url}/api/admin/backup")).json(&body);
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, secret);
    }
    let response = request.send().await.expect("backup request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The documented restore: every member gets a copy of the backup as its data directory
/// and keeps its id and address; no `init` is needed (the copy holds the membership).
async fn restore_from(old: &TestCluster, backup: &Path) -> TestCluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut configs = Vec::new();
    let mut members = Vec::new();
    for old_config in &old.configs {
        let mut config = old_config.clone();
        config.data_dir = dir.path().join(format!("c{}", config.id));
        copy_flat_dir(backup, &config.data_dir);
        let addr = config.advertise.clone().expect("advertised address");
        let listener = wait_for("the old port to be free", Duration::from_secs(10), || async {
            TcpListener::bind(&addr).await.ok()
        })
        .await;
        members.push(Some(control::start(config.clone(), listener).await.expect("start restored member")));
        configs.push(config);
    }
    TestCluster { dir, configs, members }
}

/// `cp -a BACKUP DATA_DIR` for a checkpoint (a flat directory of files).
fn copy_flat_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create data dir");
    for entry in std::fs::read_dir(from).expect("read backup") {
        let entry = entry.expect("backup entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy backup file");
    }
}
