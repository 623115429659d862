//! Group DMs through real controls and nodes: created from usernames, seen by every
//! member and nobody else, members added later read the history only if the creator
//! chose so, and bad member lists get typed 400s.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::chat::{fill, history, token, ChatCluster, WsClient};
use common::{wait_for, Api};
use serde_json::{json, Value};

async fn create(api: &Api, base: &str, body: Value) -> (u16, Value) {
    api.post(&format!("{base}/api/group-dms"), body).await.expect("group-dm request")
}

/// The ids of the rooms `api`'s user sees.
async fn visible(api: &Api, base: &str) -> Vec<u64> {
    let rooms = api.get(&format!("{base}/api/rooms")).await.expect("rooms");
    rooms["rooms"].as_array().expect("rooms").iter().filter_map(|room| room["id"].as_u64()).collect()
}

/// `room`'s chat messages as `api`'s user reads them over REST (waits out a room that is
/// briefly unavailable); the system lines of additions ("carol added dave") left out.
async fn read(api: &Api, base: &str, room: u64) -> BTreeMap<u64, String> {
    let all = wait_for("the history", Duration::from_secs(15), || history(api, base, room)).await;
    all.into_iter().filter(|(_, client_id)| !client_id.starts_with("group-add-")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_dms_are_for_their_members_and_keep_history_as_the_creator_chose() {
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let mut users = BTreeMap::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        users.insert(name, Api::logged_in(&base, name).await);
    }
    let alice = &users["alice"];

    // Validation: typed 400s.
    for (body, code) in [
        (json!({"usernames": ["bob"]}), "group_dm_too_small"),
        (json!({"usernames": ["alice"]}), "dm_with_self"),
        (json!({"usernames": []}), "dm_with_self"),
        (json!({"usernames": ["bob", "bob"]}), "duplicate_member"),
        (json!({"usernames": ["bob", "nobody"]}), "unknown_user"),
        (json!({"usernames": (0..25).map(|i| format!("user{i}")).collect::<Vec<_>>()}), "unknown_user"),
        (json!({"usernames": (0..45).map(|i| format!("user{i}")).collect::<Vec<_>>()}), "group_dm_too_large"),
        (json!({"usernames": ["bob", "carol"], "name": "a\u{1}b"}), "invalid_group_name"),
    ] {
        let (status, answer) = create(alice, &base, body.clone()).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some(code)), "{body}: {answer}");
    }

    // Without shared history.
    let (status, group) =
        create(alice, &base, json!({"usernames": ["bob", "@carol"], "name": "trio", "share_history": false})).await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["group_dm"], true);
    assert_eq!(group["members"], json!(["alice", "bob", "carol"]));
    assert_eq!(group["title"], "trio");
    let room = group["id"].as_u64().expect("id");
    for name in ["alice", "bob", "carol"] {
        assert!(visible(&users[name], &base).await.contains(&room), "{name} sees the group");
    }
    assert!(!visible(&users["dave"], &base).await.contains(&room), "an outsider does not");
    let (status, body) =
        users["dave"].post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
    assert_eq!(status, 404, "an outsider cannot join: {body}");
    let outsider = users["dave"]
        .http
        .get(format!("{base}/api/rooms/{room}/messages"))
        .bearer_auth(users["dave"].token.as_deref().expect("token"))
        .send()
        .await
        .expect("history");
    assert_eq!(outsider.status().as_u16(), 403, "an outsider reads nothing");

    let (bob_token, _) = token(&users["bob"], &base).await;
    let mut bob = WsClient::connect(&cluster.node(0).ws_url(), &bob_token).await;
    let before = fill(&mut bob, room, 3).await;
    let (status, body) = users["carol"]
        .post(&format!("{base}/api/rooms/{room}/members"), json!({"username": "dave"}))
        .await
        .expect("add");
    assert_eq!(status, 204, "any member adds someone: {body}");
    let after: Vec<u64> = {
        let mut seqs = Vec::new();
        for i in 0..2 {
            let client_id = format!("after{i}");
            bob.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "after"})).await;
            seqs.push(common::chat::answer(&mut bob, &client_id).await.expect("acked"));
        }
        seqs
    };
    let dave_sees: Vec<u64> = read(&users["dave"], &base, room).await.into_keys().collect();
    assert_eq!(dave_sees, after, "a member added without history reads only what followed");
    // The nodes hold the WebSocket to the same start (they learn it from the routing table
    // in the same version as the membership).
    let (dave_token, _) = token(&users["dave"], &base).await;
    let mut dave = WsClient::connect(&cluster.node(1).ws_url(), &dave_token).await;
    let (caught_up, _) = dave.subscribe(room, Some(0)).await;
    let last_before = before.keys().max().copied().unwrap_or(0);
    assert!(!caught_up.is_empty(), "dave catches up on what followed his addition");
    assert!(caught_up.iter().all(|m| m["seq"].as_u64().is_some_and(|seq| seq > last_before)), "{caught_up:?}");
    let carol_sees = read(&users["carol"], &base, room).await;
    assert_eq!(carol_sees.len(), before.len() + after.len(), "the others read everything");
    assert!(visible(&users["dave"], &base).await.contains(&room));
    // The room says who added whom, in a system line the newcomer reads too.
    let line = wait_for("the addition's system line", Duration::from_secs(15), || async {
        let page = users["dave"].get(&format!("{base}/api/rooms/{room}/messages")).await.ok()?;
        let messages = page["messages"].as_array()?.clone();
        messages.into_iter().find(|m| m["kind"] == "system")
    })
    .await;
    assert_eq!(line["text"], "carol added dave");

    // With shared history.
    let (status, shared) =
        create(&users["bob"], &base, json!({"usernames": ["alice", "carol"], "share_history": true})).await;
    assert_eq!(status, 201, "{shared}");
    let shared = shared["id"].as_u64().expect("id");
    let sent = fill(&mut bob, shared, 2).await;
    let (status, body) =
        alice.post(&format!("{base}/api/rooms/{shared}/members"), json!({"username": "erin"})).await.expect("add");
    assert_eq!(status, 204, "{body}");
    let erin_sees = read(&users["erin"], &base, shared).await;
    assert_eq!(erin_sees.into_keys().collect::<Vec<_>>(), sent.into_keys().collect::<Vec<_>>(), "all of it");
}
