//! Room moderation through real controls and nodes: only the owner (or the admin) names
//! moderators; mute, kick and ban are enforced on REST and WebSocket paths with their
//! codes; unban lets a user join again; the audit lists every act in order and only
//! moderators may read it.

mod common;

use std::time::{Duration, Instant};

use common::chat::{answer, token, ChatCluster, WsClient};
use common::{tuning, wait_for, Api, TestCluster};
use serde_json::{json, Value};

/// GETs `url` with `api`'s token: the status and JSON body.
async fn get(api: &Api, url: &str) -> (u16, Value) {
    let response =
        api.http.get(url).bearer_auth(api.token.as_deref().expect("logged in")).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One moderation act through the REST API: the status and body.
async fn act(api: &Api, base: &str, room: u64, action: &str, username: &str, secs: Option<u64>) -> (u16, Value) {
    let mut body = json!({"action": action, "username": username});
    if let Some(secs) = secs {
        body["duration_secs"] = json!(secs);
    }
    api.post(&format!("{base}/api/rooms/{room}/moderation"), body).await.expect("moderation request")
}

/// Asserts an act succeeded (204).
async fn done(api: &Api, base: &str, room: u64, action: &str, username: &str, secs: Option<u64>) {
    let (status, body) = act(api, base, room, action, username, secs).await;
    assert_eq!(status, 204, "{action} {username}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_the_admin_names_moderators_and_the_audit_lists_every_act() {
    let mut cluster = TestCluster::start(3, tuning()).await;
    let base = cluster.url(0);
    let admin = Api::logged_in(&base, "admin").await; // the first account: the admin
    let owner = Api::logged_in(&base, "owner").await;
    let carol = Api::logged_in(&base, "carol").await;
    let dave = Api::logged_in(&base, "dave").await;
    let (status, room) = owner.post(&format!("{base}/api/rooms"), json!({"name": "lobby"})).await.expect("create");
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_u64().expect("room id");
    for member in [&carol, &dave] {
        let (status, body) = member.post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
        assert_eq!(status, 204, "{body}");
    }

    let (status, body) = act(&carol, &base, room, "add_moderator", "dave", None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "a member names nobody: {body}");
    done(&owner, &base, room, "add_moderator", "carol", None).await;
    let (status, body) = act(&carol, &base, room, "add_moderator", "dave", None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "nor does a moderator: {body}");
    let (status, body) = act(&carol, &base, room, "ban", "owner", None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("protected_user")), "{body}");
    let (status, body) = act(&carol, &base, room, "mute", "dave", None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_mute")), "a mute needs a duration: {body}");
    let (status, body) = act(&carol, &base, room, "shout", "dave", None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_action")), "{body}");

    done(&carol, &base, room, "mute", "dave", Some(600)).await;
    done(&carol, &base, room, "unmute", "dave", None).await;
    done(&carol, &base, room, "kick", "dave", None).await;
    done(&carol, &base, room, "ban", "dave", None).await;
    // Every member refuses at once, even one that has not applied the ban yet (a read
    // barrier before the check).
    for member in 0..3 {
        let (status, body) = get(&dave, &format!("{}/api/rooms/{room}/messages", cluster.url(member))).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("banned")), "member {member}: {body}");
    }
    done(&admin, &base, room, "remove_moderator", "carol", None).await;
    let (status, body) = act(&carol, &base, room, "unban", "dave", None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "no longer a moderator: {body}");

    let (status, audit) = get(&owner, &format!("{base}/api/rooms/{room}/audit")).await;
    assert_eq!(status, 200, "{audit}");
    let lines: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| {
            let field = |name: &str| entry[name].as_str().unwrap_or_default().to_string();
            (field("by"), field("action"), field("username"))
        })
        .collect();
    let expected = [
        ("owner", "add_moderator", "carol"),
        ("carol", "mute", "dave"),
        ("carol", "unmute", "dave"),
        ("carol", "kick", "dave"),
        ("carol", "ban", "dave"),
        ("admin", "remove_moderator", "carol"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(lines, expected, "every act, in order, refused ones left out");
    assert!(audit["entries"][1]["until_ms"].as_u64().is_some(), "a mute says until when: {audit}");

    for outsider in [&carol, &dave] {
        let (status, body) = get(outsider, &format!("{base}/api/rooms/{room}/audit")).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    }
    let (status, state) = get(&admin, &format!("{base}/api/rooms/{room}/moderation")).await;
    assert_eq!(status, 200, "the admin moderates every room: {state}");
    assert_eq!(state["banned"], json!(["dave"]));
    assert_eq!(state["owner"], "owner");

    // A member restarted from its disk has the same roles, bans and audit (rows of the
    // `room_policies` and `audit` column families).
    cluster.wait_converged().await;
    let before = cluster.catalog(2);
    assert!(!before.audit.is_empty() && !before.policies.is_empty());
    cluster.stop(2).await;
    cluster.restart(2).await;
    cluster.wait_converged().await;
    let after = cluster.catalog(2);
    assert_eq!((after.policies, after.audit), (before.policies, before.audit), "moderation survives a restart");

    // The moderation page answers the same way.
    let page = owner
        .http
        .get(format!("{base}/rooms/{room}/moderation"))
        .bearer_auth(owner.token.as_deref().expect("token"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("id=\"moderation-form\"") && html.contains("name=\"csrf\""), "a CSRF form");
    assert!(html.contains("Unban dave"), "an undo button per ban");
    let refused = dave
        .http
        .get(format!("{base}/rooms/{room}/moderation"))
        .bearer_auth(dave.token.as_deref().expect("token"))
        .send()
        .await
        .expect("page");
    assert_eq!(refused.status().as_u16(), 403);
}

/// Sends until the node answers with an error of `code` (its routing table follows the
/// catalog within a heartbeat); returns how many sends were acknowledged first.
async fn wait_refused(ws: &mut WsClient, room: u64, code: &str, tag: &str) -> usize {
    let mut acked = 0;
    for attempt in 0..100 {
        let client_id = format!("{tag}-{attempt}");
        ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "hello"})).await;
        match answer(ws, &client_id).await {
            Err(frame) if frame["code"] == code => return acked,
            Err(frame) => assert_eq!(frame["code"], "unavailable", "unexpected refusal: {frame}"),
            Ok(_) => acked += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sends never refused with {code}");
}

/// Sends until one is acknowledged again.
async fn wait_accepted(ws: &mut WsClient, room: u64, tag: &str) {
    for attempt in 0..150 {
        let client_id = format!("{tag}-{attempt}");
        ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "back"})).await;
        if answer(ws, &client_id).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sends never accepted again");
}

/// Subscribes until the node answers with an error (its code), or `None` when subscribed.
async fn subscribe_answer(ws: &mut WsClient, room: u64) -> Option<String> {
    ws.send(json!({"type": "subscribe", "room": room})).await;
    loop {
        let frame = ws.next(Duration::from_secs(15)).await.expect("an answer to subscribe");
        match frame["type"].as_str() {
            Some("subscribed") => return None,
            Some("error") if frame["ref"].as_str().and_then(|r| r.parse::<u64>().ok()) == Some(room) => {
                return frame["code"].as_str().map(str::to_string)
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_kick_and_ban_are_refused_on_every_path_with_their_codes() {
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let _admin = Api::logged_in(&base, "admin").await;
    let owner = Api::logged_in(&base, "owner").await;
    let carol = Api::logged_in(&base, "carol").await;
    let dave = Api::logged_in(&base, "dave").await;
    let lobby = cluster.create_room(&owner, "lobby", false).await["id"].as_u64().expect("id");
    let inner = cluster.create_room(&owner, "inner", true).await["id"].as_u64().expect("id");
    for (room, api) in [(lobby, &carol), (lobby, &dave)] {
        let (status, body) = api.post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
        assert_eq!(status, 204, "{body}");
    }
    let (status, body) =
        owner.post(&format!("{base}/api/rooms/{inner}/members"), json!({"username": "carol"})).await.expect("add");
    assert_eq!(status, 204, "{body}");

    let (carol_token, _) = token(&carol, &base).await;
    let mut carol_ws = WsClient::connect(&cluster.node(0).ws_url(), &carol_token).await;
    assert_eq!(subscribe_answer(&mut carol_ws, inner).await, None);

    // Mute: refused with `muted`, accepted again once the short mute ends by itself.
    done(&owner, &base, lobby, "mute", "carol", Some(2)).await;
    wait_refused(&mut carol_ws, lobby, "muted", "short").await;
    wait_accepted(&mut carol_ws, lobby, "expired").await;
    // A long mute ends with an unmute.
    done(&owner, &base, lobby, "mute", "carol", Some(600)).await;
    wait_refused(&mut carol_ws, lobby, "muted", "long").await;
    done(&owner, &base, lobby, "unmute", "carol", None).await;
    wait_accepted(&mut carol_ws, lobby, "unmuted").await;

    // Kick from a private room: history and subscribe refused like any non-member.
    done(&owner, &base, inner, "kick", "carol", None).await;
    let (status, body) = get(&carol, &format!("{base}/api/rooms/{inner}/messages")).await;
    assert!(matches!(status, 403 | 404), "a kicked user reads nothing: {status} {body}");
    let mut fresh = WsClient::connect(&cluster.node(1).ws_url(), &carol_token).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(code) = subscribe_answer(&mut fresh, inner).await {
            break code;
        }
        assert!(Instant::now() < deadline, "the kick never reached the nodes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, "forbidden");

    // Ban from the public room: every path says `banned`.
    done(&owner, &base, lobby, "ban", "dave", None).await;
    let (status, body) = get(&dave, &format!("{base}/api/rooms/{lobby}/messages")).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("banned")), "history: {body}");
    let (status, body) = dave.post(&format!("{base}/api/rooms/{lobby}/members"), json!({})).await.expect("join");
    assert_eq!((status, body["code"].as_str()), (403, Some("banned")), "join: {body}");
    let (dave_token, _) = token(&dave, &base).await;
    let mut dave_ws = WsClient::connect(&cluster.node(0).ws_url(), &dave_token).await;
    wait_refused(&mut dave_ws, lobby, "banned", "banned").await;
    assert_eq!(subscribe_answer(&mut dave_ws, lobby).await.as_deref(), Some("banned"), "subscribe");
    let page = dave
        .http
        .get(format!("{base}/rooms/{lobby}"))
        .bearer_auth(dave.token.as_deref().expect("token"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 403, "the room page");

    // Each act shows in the room as a system line.
    let lines = wait_for("the ban's system line", Duration::from_secs(15), || async {
        let page = owner.get(&format!("{base}/api/rooms/{lobby}/messages?limit=200")).await.ok()?;
        let texts: Vec<String> = page["messages"]
            .as_array()?
            .iter()
            .filter(|m| m["kind"] == "system")
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .collect();
        texts.iter().any(|text| text == "owner banned dave").then_some(texts)
    })
    .await;
    assert!(lines.iter().any(|text| text == "owner muted carol for 2 s"), "{lines:?}");
    assert!(lines.iter().any(|text| text == "owner unmuted carol"), "{lines:?}");

    // Unban: joins again (and the nodes let them back in).
    done(&owner, &base, lobby, "unban", "dave", None).await;
    let (status, body) = dave.post(&format!("{base}/api/rooms/{lobby}/members"), json!({})).await.expect("join");
    assert_eq!(status, 204, "joins again: {body}");
    wait_accepted(&mut dave_ws, lobby, "unbanned").await;
}

/// A logged-in browser: its session cookie and the CSRF token of its pages.
struct Browser {
    http: reqwest::Client,
    cookie: String,
}

impl Browser {
    fn of(api: &Api) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { http, cookie: format!("districhat_session={}", api.token.as_deref().expect("logged in")) }
    }

    /// The page at `url`: its status and HTML.
    async fn page(&self, url: &str) -> (u16, String) {
        let response = self.http.get(url).header("cookie", &self.cookie).send().await.expect("page");
        (response.status().as_u16(), response.text().await.expect("html"))
    }

    /// Posts a form (`fields` url-encoded, the CSRF token of `page` added): the status and
    /// the redirect target.
    async fn post(&self, page: &str, url: &str, fields: &str) -> (u16, String) {
        let (_, html) = self.page(page).await;
        let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("csrf");
        let response = self
            .http
            .post(url)
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("{fields}&csrf={csrf}"))
            .send()
            .await
            .expect("post");
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
        (response.status().as_u16(), location.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moderation_and_group_dm_forms_act_with_csrf() {
    let cluster = TestCluster::start(3, tuning()).await;
    let base = cluster.url(0);
    let _admin = Api::logged_in(&base, "admin").await;
    let owner = Api::logged_in(&base, "owner").await;
    let carol = Api::logged_in(&base, "carol").await;
    let _dave = Api::logged_in(&base, "dave").await;
    let (status, room) = owner.post(&format!("{base}/api/rooms"), json!({"name": "lobby"})).await.expect("create");
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_u64().expect("room id");
    let (status, _) = carol.post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
    assert_eq!(status, 204);

    let browser = Browser::of(&owner);
    let page = format!("{base}/rooms/{room}/moderation");
    let (status, location) = browser.post(&page, &page, "action=mute&username=carol&minutes=5").await;
    assert_eq!((status, location.as_str()), (303, page.trim_start_matches(&base)), "back to the page");
    let (_, html) = browser.page(&page).await;
    assert!(html.contains("Unmute carol"), "the mute is listed with its undo button");
    assert!(html.contains("owner</strong> mute <strong>carol"), "and in the audit");

    // Without the token: refused, nothing done.
    let refused = browser
        .http
        .post(&page)
        .header("cookie", &browser.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=ban&username=carol")
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status().as_u16(), 403);
    let (_, audit) = get(&owner, &format!("{base}/api/rooms/{room}/audit")).await;
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(1), "{audit}");

    // A member who does not moderate cannot post the form either.
    let member = Browser::of(&carol);
    let (status, _) = member.post(&format!("{base}/app"), &page, "action=unmute&username=carol").await;
    assert_eq!(status, 403);

    // The dashboard starts a group DM, listed with its members' names.
    let dashboard = format!("{base}/app");
    let (status, location) =
        browser.post(&dashboard, &format!("{base}/group-dms"), "usernames=carol%2C+dave&name=").await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/rooms/"), "to the new conversation: {location}");
    let (_, html) = Browser::of(&carol).page(&dashboard).await;
    assert!(html.contains("dave, owner") || html.contains("owner, dave"), "labelled by its members");
}

/// Reads frames until an error about `room` (its code), or `None` after `within`; the
/// messages of `room` read meanwhile are returned too.
async fn revoked(ws: &mut WsClient, room: u64, within: Duration) -> (Option<String>, Vec<Value>) {
    let deadline = Instant::now() + within;
    let mut messages = Vec::new();
    while Instant::now() < deadline {
        let Some(frame) = ws.next(Duration::from_millis(200)).await else { continue };
        match frame["type"].as_str() {
            Some("error") if frame["ref"].as_str() == Some(room.to_string().as_str()) => {
                return (frame["code"].as_str().map(str::to_string), messages)
            }
            Some("message") if frame["room"] == room => messages.push(frame),
            _ => {}
        }
    }
    (None, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_or_a_kick_ends_the_users_live_subscriptions() {
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let owner = Api::logged_in(&base, "owner").await;
    let carol = Api::logged_in(&base, "carol").await;
    let dave = Api::logged_in(&base, "dave").await;
    let lobby = cluster.create_room(&owner, "lobby", false).await["id"].as_u64().expect("id");
    let inner = cluster.create_room(&owner, "inner", true).await["id"].as_u64().expect("id");
    let (status, body) = carol.post(&format!("{base}/api/rooms/{lobby}/members"), json!({})).await.expect("join");
    assert_eq!(status, 204, "{body}");
    let (status, body) =
        owner.post(&format!("{base}/api/rooms/{inner}/members"), json!({"username": "dave"})).await.expect("add");
    assert_eq!(status, 204, "{body}");
    let (owner_token, _) = token(&owner, &base).await;
    let (carol_token, _) = token(&carol, &base).await;
    let (dave_token, _) = token(&dave, &base).await;
    let mut owner_ws = WsClient::connect(&cluster.node(0).ws_url(), &owner_token).await;
    let mut carol_ws = WsClient::connect(&cluster.node(1).ws_url(), &carol_token).await;
    let mut dave_ws = WsClient::connect(&cluster.node(1).ws_url(), &dave_token).await;
    carol_ws.subscribe(lobby, None).await;
    dave_ws.subscribe(inner, None).await;

    done(&owner, &base, lobby, "ban", "carol", None).await;
    done(&owner, &base, inner, "kick", "dave", None).await;
    let (code, _) = revoked(&mut carol_ws, lobby, Duration::from_secs(15)).await;
    assert_eq!(code.as_deref(), Some("banned"), "the banned user's subscription ends with its code");
    let (code, _) = revoked(&mut dave_ws, inner, Duration::from_secs(15)).await;
    assert_eq!(code.as_deref(), Some("forbidden"), "the kicked member's subscription ends");
    // What is said afterwards does not reach them.
    for (room, client_id) in [(lobby, "after-ban"), (inner, "after-kick")] {
        owner_ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "not for them"})).await;
        answer(&mut owner_ws, client_id).await.expect("the owner still sends");
    }
    for (ws, room) in [(&mut carol_ws, lobby), (&mut dave_ws, inner)] {
        let (_, messages) = revoked(ws, room, Duration::from_secs(2)).await;
        assert!(
            messages.iter().all(|m| m["text"] != "not for them"),
            "nothing after the act reaches room {room}: {messages:?}"
        );
    }
}

/// A REST call with `api`'s token: the status and JSON body.
async fn call(api: &Api, method: reqwest::Method, url: String, body: Value) -> (u16, Value) {
    let request = api.http.request(method, url).bearer_auth(api.token.as_deref().expect("logged in")).json(&body);
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_and_the_admin_delete_others_messages() {
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let admin = Api::logged_in(&base, "admin").await; // the first account: the admin
    let owner = Api::logged_in(&base, "owner").await;
    let carol = Api::logged_in(&base, "carol").await;
    let dave = Api::logged_in(&base, "dave").await;
    let room = cluster.create_room(&owner, "lobby", false).await["id"].as_u64().expect("id");
    for member in [&carol, &dave] {
        let (status, body) = member.post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
        assert_eq!(status, 204, "{body}");
    }
    let mut said = Vec::new();
    for i in 0..3 {
        let body = json!({"client_id": format!("carol-{i}"), "text": format!("carol says {i}")});
        let (status, posted) =
            call(&carol, reqwest::Method::POST, format!("{base}/api/rooms/{room}/messages"), body).await;
        assert_eq!(status, 201, "{posted}");
        said.push(posted["seq"].as_u64().expect("seq"));
    }
    let delete = |api: &Api, seq: u64, client_id: &str| {
        let url = format!("{base}/api/rooms/{room}/messages/{seq}");
        let (api, body) = (api.clone(), json!({"client_id": client_id}));
        async move { call(&api, reqwest::Method::DELETE, url, body).await }
    };
    let (status, body) = delete(&dave, said[0], "dave-1").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "a member deletes only their own: {body}");
    let (status, body) = delete(&owner, said[0], "owner-1").await;
    assert_eq!(status, 201, "the room's owner moderates it: {body}");
    // A moderator the owner names may delete once the nodes have the new routing table.
    done(&owner, &base, room, "add_moderator", "dave", None).await;
    wait_for("the node to let the new moderator delete", Duration::from_secs(15), || async {
        (delete(&dave, said[1], "dave-2").await.0 == 201).then_some(())
    })
    .await;
    let (status, body) = delete(&admin, said[2], "admin-1").await;
    assert_eq!(status, 201, "the cluster's admin moderates every room: {body}");
    let page = get(&carol, &format!("{base}/api/rooms/{room}/messages")).await.1;
    let deleted: Vec<u64> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["deleted"] == true && m["text"] == "")
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(deleted.len(), 3, "all three are tombstones: {page}");
}
