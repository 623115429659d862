//! Three control members: election, agreement, writes through followers, bad input, and
//! the `status` view, logging a session out.

mod common;

use std::time::Duration;

use common::{tuning, wait_for, Api, TestCluster, SECRET};
use districhat::control::secret::SECRET_HEADER;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_one_leader_and_agree_on_the_catalog() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let leaders: Vec<_> = cluster.running().map(|(_, m)| m.raft.metrics().borrow().current_leader).collect();
    assert!(leaders.iter().all(|l| *l == Some(leader as u64 + 1)), "one leader for all: {leaders:?}");

    let api = Api::logged_in(&cluster.url(leader), "alice").await;
    for i in 0..20 {
        let (status, body) =
            api.post(&format!("{}/api/rooms", cluster.url(i % 3)), json!({"name": format!("room-{i}")})).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    cluster.wait_converged().await;
    let catalogs: Vec<_> = (0..3).map(|i| cluster.catalog(i)).collect();
    assert_eq!(catalogs[0].rooms.len(), 20);
    assert_eq!(catalogs[0], catalogs[1]);
    assert_eq!(catalogs[0], catalogs[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_follower_lands() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let follower = (leader + 1) % 3;
    let api = Api::logged_in(&cluster.url(follower), "bob").await;
    let (status, body) =
        api.post(&format!("{}/api/rooms", cluster.url(follower)), json!({"name": "lobby"})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "lobby");
    cluster.wait_converged().await;
    for i in 0..3 {
        let catalog = cluster.catalog(i);
        assert!(catalog.user_by_name("bob").is_some(), "member {i} has the user");
        assert_eq!(catalog.rooms.values().filter(|r| r.name == "lobby").count(), 1, "member {i} has the room once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_the_member_stays_healthy() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let target = (leader + 1) % 3;
    let base = cluster.url(target);
    let http = reqwest::Client::new();

    Api::logged_in(&base, "carol").await;
    let api = Api::new();
    let (status, body) = api
        .post(&format!("{base}/api/users"), json!({"username": "carol", "password": "another password"}))
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (409, Some("username_taken")), "{body}");

    let (status, body) = api
        .post(&format!("{base}/api/users"), json!({"username": "Bad Name!", "password": "long enough"}))
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_username")), "{body}");

    let check = |response: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(response.status().as_u16(), status);
        let body: serde_json::Value = response.json().await.expect("json error body");
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    let malformed = http
        .post(format!("{base}/api/users"))
        .header("content-type", "application/json")
        .body("{\"username\": \"dave\", ")
        .send()
        .await
        .unwrap();
    check(malformed, 400, "invalid_json").await;
    let missing_field = http.post(format!("{base}/api/users")).json(&json!({"username": "dave"})).send().await.unwrap();
    check(missing_field, 400, "invalid_request").await;
    let huge = format!("{{\"username\": \"{}\", \"password\": \"x\"}}", "a".repeat(200_000));
    let oversized = http
        .post(format!("{base}/api/users"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    check(oversized, 413, "payload_too_large").await;
    let anonymous = http.post(format!("{base}/api/rooms")).json(&json!({"name": "x"})).send().await.unwrap();
    check(anonymous, 401, "unauthorized").await;
    let unknown = http.get(format!("{base}/api/nope")).send().await.unwrap();
    check(unknown, 404, "not_found").await;

    for rpc in ["append", "vote", "snapshot"] {
        let response = http.post(format!("{base}/raft/{rpc}")).body(vec![0u8; 16]).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "raft {rpc} without the secret");
        let wrong = http
            .post(format!("{base}/raft/{rpc}"))
            .header(SECRET_HEADER, "wrong")
            .body(vec![0u8; 16])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "raft {rpc} with a wrong secret");
    }
    let forwarded = http.post(format!("{base}/internal/write")).body(vec![1u8; 8]).send().await.unwrap();
    assert_eq!(forwarded.status().as_u16(), 401);
    let read_index = http.get(format!("{base}/internal/read-index")).send().await.unwrap();
    assert_eq!(read_index.status().as_u16(), 401, "the read index needs the secret");
    let garbage =
        http.post(format!("{base}/raft/vote")).header(SECRET_HEADER, SECRET).body(vec![0xff; 3]).send().await.unwrap();
    assert_eq!(garbage.status().as_u16(), 400, "undecodable raft request");

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let api = Api::logged_in(&base, "erin").await;
    let (status, _) = api.post(&format!("{base}/api/rooms"), json!({"name": "still-works"})).await.unwrap();
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_three_members_and_one_leader() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let status = wait_for("every member reachable in status", Duration::from_secs(10), || async {
        let status = districhat::cli::status::fetch(&cluster.url((leader + 2) % 3)).await.ok()?;
        status.members.iter().all(|m| m.reachable && m.healthy == Some(true)).then_some(status)
    })
    .await;
    assert_eq!(status.leader, Some(leader as u64 + 1));
    assert_eq!(status.members.len(), 3);
    assert_eq!(status.members.iter().filter(|m| m.role == "leader").count(), 1);
    let table = districhat::cli::status::render(&status);
    assert!(table.contains("leader") && table.contains("follower"), "{table}");

    let metrics = reqwest::get(format!("{}/metrics", cluster.url(leader))).await.unwrap().text().await.unwrap();
    for name in ["districhat_raft_term", "districhat_raft_applied_index", "districhat_raft_commit_seconds"] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logins_are_rate_limited_after_repeated_wrong_passwords() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let base = cluster.url(leader);
    Api::logged_in(&base, "target").await;
    let api = Api::new();
    for _ in 0..5 {
        let (status, body) = api
            .post(&format!("{base}/api/sessions"), json!({"username": "target", "password": "wrong guess"}))
            .await
            .unwrap();
        assert_eq!((status, body["code"].as_str()), (401, Some("invalid_credentials")), "{body}");
    }
    let right = json!({"username": "target", "password": "correct horse battery"});
    let (status, body) = api.post(&format!("{base}/api/sessions"), right).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_token_is_refused_by_every_member_and_other_sessions_live_on() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let base = cluster.url((leader + 1) % 3);
    let first = Api::logged_in(&base, "dora").await;
    // A second session of the same user (tokens differ by their expiry, in milliseconds).
    let credentials = json!({"username": "dora", "password": "correct horse battery"});
    let second = wait_for("a second, different session", Duration::from_secs(10), || async {
        let (status, body) = first.post(&format!("{base}/api/sessions"), credentials.clone()).await.ok()?;
        let token = body["token"].as_str()?.to_string();
        (status == 200 && Some(&token) != first.token.as_ref()).then_some(token)
    })
    .await;
    let rooms_status = |url: String, token: String| async move {
        let response = reqwest::Client::new().get(format!("{url}/api/rooms")).bearer_auth(token).send().await;
        response.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    let first_token = first.token.clone().expect("token");
    assert_eq!(rooms_status(base.clone(), first_token.clone()).await, 200);

    let logout = first.http.delete(format!("{base}/api/sessions")).bearer_auth(&first_token).send().await.unwrap();
    assert_eq!(logout.status().as_u16(), 204);
    for member in 0..3 {
        let url = cluster.url(member);
        wait_for("the ended session to be refused on every member", Duration::from_secs(10), || {
            let (url, token) = (url.clone(), first_token.clone());
            async move { (rooms_status(url, token).await == 401).then_some(()) }
        })
        .await;
        assert_eq!(rooms_status(url, second.clone()).await, 200, "the other session of the same user lives on");
    }
    let again = first.http.delete(format!("{base}/api/sessions")).bearer_auth(&first_token).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 401, "an ended session cannot log out twice");
    let anonymous = first.http.delete(format!("{base}/api/sessions")).send().await.unwrap();
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
}

/// Issue 10: a member answers a write only once its own catalog applied it, so a client
/// talking to one follower reads its own writes at once (before, a login right after
/// registering through a follower could answer `invalid_credentials`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_its_own_writes_at_once() {
    let cluster = TestCluster::start(3, tuning()).await;
    let leader = cluster.wait_ready().await;
    let follower = cluster.url((leader + 1) % 3);
    let anonymous = Api::new();
    for i in 0..200 {
        let credentials = json!({"username": format!("reader{i}"), "password": "correct horse battery"});
        let (status, body) = anonymous.post(&format!("{follower}/api/users"), credentials.clone()).await.unwrap();
        assert_eq!(status, 201, "register {i}: {body}");
        let (status, body) = anonymous.post(&format!("{follower}/api/sessions"), credentials).await.unwrap();
        assert_eq!(status, 200, "log in at once after registering, round {i}: {body}");
    }
    let mut api = Api::new();
    let credentials = json!({"username": "reader0", "password": "correct horse battery"});
    let (_, session) = api.post(&format!("{follower}/api/sessions"), credentials).await.unwrap();
    api.token = session["token"].as_str().map(str::to_string);
    for i in 0..200 {
        let name = format!("ryw-{i}");
        let (status, body) = api.post(&format!("{follower}/api/rooms"), json!({"name": name})).await.unwrap();
        assert_eq!(status, 201, "create {name}: {body}");
        let listed = api.get(&format!("{follower}/api/rooms")).await.unwrap();
        let rooms = listed["rooms"].as_array().expect("room list");
        assert!(rooms.iter().any(|room| room["name"] == name.as_str()), "round {i}: {name} not listed at once");
    }
}
