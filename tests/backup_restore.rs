//! Backup and whole-control-plane restore: a checkpoint taken through the HTTP API from
//! one member of a live group, then every member's data replaced by copies of it. The
//! restored group elects a leader, holds exactly what the backup held, and after
//! `after-restore` refuses every old session and hands out no id used before. Backups
//! take only a name inside the configured `backup_dir`, and refuse callers without the
//! secret before reading the body.

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
    let alice = Api::logged_in(&cluster.url(leader), "alice").await;
    create_room(&alice, &cluster.url(leader), "before-room").await;
    cluster.wait_converged().await;

    let (status, reply) = backup(&api, &cluster.url(follower), Some(SECRET), json!({"name": "first"})).await;
    assert_eq!(status, 201, "{reply}");
    // No `backup_dir` configured: `backups` next to the member's data_dir.
    let backup_dir = cluster.dir.path().join("backups").join("first");
    assert_eq!(reply["member"], json!(follower as u64 + 1));
    assert_eq!(reply["path"], json!(backup_dir.display().to_string()));
    // The snapshot is a file beside RocksDB's: the backup has its own link to it.
    let snapshot_files = std::fs::read_dir(&backup_dir)
        .expect("read the backup")
        .filter(|entry| entry.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("catalog-snapshot-")))
        .count();
    assert_eq!(snapshot_files, 1, "the backup holds the member's snapshot file");
    assert_eq!(reply["users"], json!(BEFORE + 1));
    assert!(reply["bytes"].as_u64().is_some_and(|b| b > 0), "{reply}");
    let applied = reply["applied_index"].as_u64().expect("applied index");
    let last_log = reply["last_log_index"].as_u64().expect("last log index");
    assert!(applied > BEFORE as u64 && last_log >= applied, "{reply}");

    let after = register_users(&api, &cluster.url(leader), "after", AFTER).await;
    let bob = Api::logged_in(&cluster.url(leader), "bob").await;
    create_room(&bob, &cluster.url(leader), "after-room").await;
    cluster.wait_converged().await;
    let handed_out = cluster.catalog(leader);
    let max_user_id = *handed_out.users.keys().max().expect("users");
    let max_room_id = *handed_out.rooms.keys().max().expect("rooms");
    assert_eq!((max_user_id, max_room_id), (BEFORE as u64 + AFTER as u64 + 2, 2));
    for i in 0..3 {
        cluster.stop(i).await;
    }

    let restored = restore_from(&cluster, &backup_dir).await;
    let new_leader = restored.wait_ready().await;
    let mut expected = before.clone();
    expected.insert("alice".to_string());
    for i in 0..3 {
        let names: BTreeSet<String> = restored.catalog(i).users.values().map(|u| u.username.clone()).collect();
        assert_eq!(names, expected, "member {} holds exactly the backed-up users", i + 1);
        assert!(after.iter().all(|name| !names.contains(name)) && !names.contains("bob"));
    }
    // The hazard the next step removes: the restored key still accepts old tokens.
    let url = restored.url(new_leader);
    assert_eq!(rooms_status(&alice, &url).await, 200);

    let (status, reply) = after_restore(&api, &url, None).await;
    assert_eq!((status, reply["code"].as_str()), (401, Some("unauthorized")), "{reply}");
    let (status, reply) = after_restore(&api, &url, Some(SECRET)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["signing_key_rotated"], json!(true));
    assert_eq!(reply["next_user_id"], json!(BEFORE as u64 + 1 + control::restore::ID_GAP), "{reply}");
    restored.wait_converged().await;
    for i in 0..3 {
        let member = restored.url(i);
        for (who, old) in [("alice (in the backup)", &alice), ("bob (registered after it)", &bob)] {
            assert_eq!(rooms_status(old, &member).await, 401, "{who}'s old session on member {}", i + 1);
        }
    }

    let alice_again = login(&url, "alice").await;
    assert_eq!(rooms_status(&alice_again, &url).await, 200);
    let newcomer = register_users(&api, &url, "restored", 1).await;
    let room = create_room(&alice_again, &url, "fresh-room").await;
    let new_room_id = room["id"].as_u64().expect("room id");
    assert!(new_room_id > max_room_id, "new room {new_room_id} reuses no id up to {max_room_id}");
    wait_for("every restored member to apply the new writes", Duration::from_secs(20), || async {
        (0..3)
            .all(|i| {
                let catalog = restored.catalog(i);
                catalog.users.len() == BEFORE + 2
                    && newcomer.iter().all(|n| catalog.user_by_name(n).is_some_and(|u| u.id > max_user_id))
                    && catalog.rooms.contains_key(&new_room_id)
            })
            .then_some(())
    })
    .await;

    // A replacement member on an empty disk catches up from the restored group's
    // snapshot (the backup's file or a newer one): the log behind it is purged.
    let mut restored = restored;
    let fresh = restored.add_empty_member().await;
    restored.wait_converged().await;
    let leader = restored.wait_ready().await;
    assert_eq!(restored.catalog(fresh), restored.catalog(leader), "the new member caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_only_a_name_in_backup_dir_and_refuse_callers_without_the_secret_first() {
    let mut cluster = TestCluster::start(1, tuning()).await;
    let url = cluster.url(0);
    let api = Api::new();
    let backup_dir = cluster.dir.path().join("backups");
    std::fs::create_dir_all(backup_dir.join("taken")).expect("an existing backup");
    let too_long = "a".repeat(65);
    let cases = [
        // Without the secret the body is never looked at.
        (None, json!({"name": "fine"}), 401, "unauthorized"),
        (None, json!({"name": "../../etc"}), 401, "unauthorized"),
        (None, json!("not even an object"), 401, "unauthorized"),
        (Some("wrong-secret"), json!({"dir": "/etc"}), 401, "unauthorized"),
        (Some(SECRET), json!({"name": ""}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"name": ".."}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"name": ".hidden"}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"name": "../escape"}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"name": "a/b"}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"name": "/tmp/abs"}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"name": too_long}), 400, "backup_name_invalid"),
        (Some(SECRET), json!({"dir": "/tmp/anywhere"}), 400, "invalid_request"),
        (Some(SECRET), json!({"name": "ok", "dir": "/tmp/anywhere"}), 400, "invalid_request"),
        (Some(SECRET), json!({"name": "taken"}), 409, "backup_target_exists"),
    ];
    for (secret, body, status, code) in &cases {
        let (got_status, reply) = backup(&api, &url, *secret, body.clone()).await;
        assert_eq!((got_status, reply["code"].as_str()), (*status, Some(*code)), "{body}: {reply}");
    }
    let (status, reply) = backup_raw(&api, &url, None, "{garbage").await;
    assert_eq!((status, reply["code"].as_str()), (401, Some("unauthorized")));
    let (status, reply) = backup_raw(&api, &url, Some(SECRET), "{garbage").await;
    assert_eq!((status, reply["code"].as_str()), (400, Some("invalid_json")));
    assert_eq!(entries(&backup_dir), ["taken"], "nothing was written for a refused request");
    assert!(!cluster.dir.path().join("escape").exists(), "a refused name wrote nothing");

    let (status, reply) = backup(&api, &url, Some(SECRET), json!({"name": "c1-2026-11-25T0300Z"})).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["path"], json!(backup_dir.join("c1-2026-11-25T0300Z").display().to_string()));
    let (status, reply) = backup(&api, &url, Some(SECRET), json!({"name": "c1-2026-11-25T0300Z"})).await;
    assert_eq!((status, reply["code"].as_str()), (409, Some("backup_target_exists")));

    // A configured backup_dir that cannot be created (a file is in the way; permission
    // bits would not stop root, who runs CI) is the operator's to fix: a 409, not a 500.
    let blocker = cluster.dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").expect("write the blocker");
    cluster.stop(0).await;
    cluster.configs[0].backup_dir = Some(blocker.join("backups"));
    cluster.restart(0).await;
    cluster.wait_ready().await;
    let (status, reply) = backup(&api, &url, Some(SECRET), json!({"name": "blocked"})).await;
    assert_eq!((status, reply["code"].as_str()), (409, Some("backup_dir_not_writable")), "{reply}");

    // A configured backup_dir is where backups land (created on first use).
    let configured = cluster.dir.path().join("elsewhere").join("backups");
    cluster.stop(0).await;
    cluster.configs[0].backup_dir = Some(configured.clone());
    cluster.restart(0).await;
    cluster.wait_ready().await;
    let (status, reply) = backup(&api, &url, Some(SECRET), json!({"name": "nightly"})).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["path"], json!(configured.join("nightly").display().to_string()));
    assert_eq!(entries(&configured), ["nightly"]);
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
    let dir = owner.node.config.backup_dir().join("n-first");
    let (status, reply) = backup(&api, &node_url, None, json!({"name": "../n-first"})).await;
    assert_eq!((status, reply["code"].as_str()), (401, Some("unauthorized")));
    let (status, reply) = backup(&api, &node_url, Some(SECRET), json!({"name": "../n-first"})).await;
    assert_eq!((status, reply["code"].as_str()), (400, Some("backup_name_invalid")));
    let (status, reply) = backup(&api, &node_url, Some(SECRET), json!({"name": "n-first"})).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["node"], json!(owner_id));
    assert_eq!(reply["path"], json!(dir.display().to_string()));
    assert!(reply["bytes"].as_u64().is_some_and(|b| b > 0), "{reply}");
    let (status, reply) = backup(&api, &node_url, Some(SECRET), json!({"name": "n-first"})).await;
    assert_eq!((status, reply["code"].as_str()), (409, Some("backup_target_exists")));

    let restored_dir = cluster.controls.dir.path().join("node-restored");
    copy_flat_dir(&dir, &restored_dir);
    let restored = RoomLog::open(&restored_dir, false, &Default::default()).expect("open the restored copy");
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
    backup_raw(api, url, secret, &body.to_string()).await
}

/// A backup request with `body` sent as is, labelled JSON.
async fn backup_raw(api: &Api, url: &str, secret: Option<&str>, body: &str) -> (u16, Value) {
    let request = api
        .http
        .post(format!("{url}/api/admin/backup"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    send_admin(request, secret).await
}

async fn after_restore(api: &Api, url: &str, secret: Option<&str>) -> (u16, Value) {
    send_admin(api.http.post(format!("{url}/api/admin/after-restore")), secret).await
}

async fn send_admin(mut request: reqwest::RequestBuilder, secret: Option<&str>) -> (u16, Value) {
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, secret);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The status of an authenticated read with `api`'s session token.
async fn rooms_status(api: &Api, url: &str) -> u16 {
    let token = api.token.as_deref().expect("a session token");
    let response = api.http.get(format!("{url}/api/rooms")).bearer_auth(token).send().await.expect("list rooms");
    response.status().as_u16()
}

/// Creates a public room (placed on no node: these tests run controls only).
async fn create_room(api: &Api, url: &str, name: &str) -> Value {
    let (status, room) = api.post(&format!("{url}/api/rooms"), json!({"name": name})).await.expect("create room");
    assert_eq!(status, 201, "create {name}: {room}");
    room
}

/// Logs an existing user in; the returned client carries the new token.
async fn login(url: &str, username: &str) -> Api {
    let mut api = Api::new();
    let credentials = json!({"username": username, "password": "correct horse battery"});
    let (status, body) = api.post(&format!("{url}/api/sessions"), credentials).await.expect("login");
    assert_eq!(status, 200, "login {username}: {body}");
    api.token = Some(body["token"].as_str().expect("token").to_string());
    api
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_restore_running_chat_nodes_take_the_new_key_and_refuse_old_tokens() {
    let cluster = ChatCluster::start(1).await;
    let url = cluster.url();
    let ws_url = cluster.node(0).ws_url();
    let alice = Api::logged_in(&url, "alice").await;
    let (old_token, _) = token(&alice, &url).await;
    assert_eq!(hello(&ws_url, &old_token).await, "welcome");

    let (status, reply) = after_restore(&Api::new(), &url, Some(SECRET)).await;
    assert_eq!(status, 200, "{reply}");
    cluster.controls.wait_converged().await;
    let alice = login(&url, "alice").await;
    let (new_token, _) = token(&alice, &url).await;
    let started = std::time::Instant::now();
    wait_for("the node to accept tokens signed with the new key", Duration::from_secs(15), || async {
        (hello(&ws_url, &new_token).await == "welcome").then_some(())
    })
    .await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "the node took the new key");
    assert_eq!(hello(&ws_url, &old_token).await, "error:unauthorized");
}

/// Opens a WebSocket, says hello with `token`, and returns the answer's type (with the
/// error code for an error frame).
async fn hello(ws_url: &str, token: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("ws connect");
    let hello = json!({"type": "hello", "token": token}).to_string();
    socket.send(Message::Text(hello.into())).await.expect("ws send");
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                return serde_json::from_str::<Value>(&text).ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("an answer to hello");
    match answer["type"].as_str() {
        Some("error") => format!("error:{}", answer["code"].as_str().unwrap_or_default()),
        other => other.unwrap_or_default().to_string(),
    }
}
