//! The browser client end to end: real headless Chromium (chromedriver, driven with the
//! `thirtyfour` crate) against 3 controls and 2 chat nodes in this process. Two people
//! register through the forms, join one room from pages connected to different nodes
//! (`?node=ID`), and see each other's messages in one order; markup in a message stays
//! text; the node one page is connected to (the room's owner) is stopped, the page shows
//! it is reconnecting, reconnects to the other node and resends, the conversation goes on,
//! and every message shows exactly once on both pages; a DM is visible to its two members
//! only; read positions are kept per user on the server, so a fresh browser shows read
//! rooms as read; a wrong password and a form without its CSRF token are refused; failed
//! logins are rate limited; nothing scrolls sideways at 375 px. Screenshots of the pages
//! go to `$CARGO_TARGET_DIR/screenshots/`.
//!
//! The nodes run with `replication.min_copies = 1`: with the default 2, a room whose only
//! other node is gone refuses sends (`unavailable`), so with two nodes the conversation
//! could not go on after one stops. Acked then means "on the surviving node's disk".

mod common;

use std::time::{Duration, Instant};

use common::browser::{
    connected, create_room, no_sideways_scrolling, open_room, room_id, screenshot_dir, send_message as send, settle,
    shift_enter, Browser, Driver, DESKTOP, PASSWORD,
};
use common::chat::{token, ChatCluster, WsClient};
use common::Api;
use serde_json::{json, Value};

const MARKUP: &str = "<img src=x onerror=alert(1)>";
/// Failover (detection ~3 s, reassignment, reconnect) on a slow machine.
const FAILOVER_WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_chat_across_nodes_through_a_node_failure() {
    let shots = screenshot_dir();
    for stale in std::fs::read_dir(&shots).into_iter().flatten().flatten() {
        if stale.file_name().to_string_lossy().starts_with("failed-") {
            let _ = std::fs::remove_file(stale.path());
        }
    }
    let mut cluster = ChatCluster::start_with(2, |node| node.replication.min_copies = 1).await;
    let base = cluster.url();
    let driver = Driver::start().await;
    let alice = driver.session("alice", DESKTOP).await;
    let bob = driver.session("bob", DESKTOP).await;

    // (a) Two people register through the form and meet in one room, on different nodes.
    register(&alice, &base, "alice").await;
    register(&bob, &base, "bob").await;
    let room = create_room(&alice, &base, "lobby").await;
    join_room(&bob, &base, room).await;
    let placed = cluster.controls.catalog(0).rooms[&room].clone();
    let (owner, replica) = (placed.owner.expect("room has an owner"), placed.replica.expect("room has a replica"));
    assert_ne!(owner, replica);
    open_room(&alice, &base, room, owner).await;
    open_room(&bob, &base, room, replica).await;

    let mut expected = Vec::new();
    for i in 1..=3 {
        for page in [&alice, &bob] {
            let text = format!("{} says hello #{i}", page.name);
            send(page, &text).await;
            expected.push(text);
        }
    }
    let seen = same_conversation(&alice, &bob, &expected).await;
    for (_, sender, text) in &seen {
        assert!(text.starts_with(sender.as_str()), "{text:?} is shown as sent by {sender}");
    }

    // (b) Markup in a message is shown as text; no element is made from it.
    send(&bob, MARKUP).await;
    expected.push(MARKUP.to_string());
    same_conversation(&alice, &bob, &expected).await;
    for page in [&alice, &bob] {
        let images = page.js("return document.querySelectorAll('img').length", vec![]).await;
        assert_eq!(images, json!(0), "{}: an <img> was created from message text", page.name);
        assert!(!page.alert_open().await, "{}: an alert ran", page.name);
    }

    // Shift+Enter starts a new line (Enter alone sends); a long word wraps at 375 px.
    let two_lines = format!("two lines:\nthe-second-one-is-a-single-word-{}", "x".repeat(60));
    send(&alice, &two_lines.replace('\n', &shift_enter())).await;
    expected.push(two_lines);
    same_conversation(&alice, &bob, &expected).await;

    // (c) The node Alice's page is connected to — the room's owner — stops.
    let lost_before = reconnects(&alice).await;
    // Every state the connection line passes through, however briefly.
    alice
        .js(
            "const s = document.getElementById('conn-state'); window.__states = []; \
             new MutationObserver(() => window.__states.push(s.dataset.state + ' ' + s.textContent)) \
               .observe(s, { attributes: true, childList: true, characterData: true, subtree: true });",
            vec![],
        )
        .await;
    cluster.stop_node(cluster.index_of(owner)).await;
    alice
        .wait_js(
            "the page to notice the lost connection",
            &format!("Number(document.getElementById('conn-state').dataset.reconnects) > {lost_before}"),
        )
        .await;
    let during = "alice writes while reconnecting".to_string();
    send(&alice, &during).await;
    expected.push(during);
    alice
        .wait_js_for(
            &format!("a connection to the other node, {replica}"),
            &format!(
                "(s => s.dataset.state === 'connected' && s.dataset.node === '{replica}')\
                 (document.getElementById('conn-state'))"
            ),
            FAILOVER_WAIT,
        )
        .await;
    wait_delivered(&alice, &expected, FAILOVER_WAIT).await;
    let states = alice.js("return window.__states", vec![]).await;
    let shown = |prefix: &str| {
        states.as_array().is_some_and(|all| all.iter().any(|s| s.as_str().is_some_and(|s| s.starts_with(prefix))))
    };
    assert!(shown("reconnecting Reconnecting"), "the page said it was reconnecting: {states}");
    for i in 1..=2 {
        for page in [&bob, &alice] {
            let text = format!("{} after the failover #{i}", page.name);
            send(page, &text).await;
            expected.push(text);
        }
    }
    let after = same_conversation(&alice, &bob, &expected).await;
    let seqs: Vec<u64> = after.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, (1..=expected.len() as u64).collect::<Vec<_>>(), "one message per seq, no gaps");

    // (f) Screenshots of the room page, desktop and 375 px wide.
    alice.viewport(1280, 800, false).await;
    settle(&alice).await;
    alice.screenshot(&shots.join("room-desktop.png")).await;
    alice.viewport(375, 740, true).await;
    settle(&alice).await;
    no_sideways_scrolling(&alice, "the room page").await;
    alice.screenshot(&shots.join("room-375.png")).await;
    alice.goto(&format!("{base}/app")).await;
    connected(&alice).await;
    no_sideways_scrolling(&alice, "the dashboard").await;
    alice.screenshot(&shots.join("dashboard-375.png")).await;
    alice.viewport(1280, 800, false).await;
    settle(&alice).await;
    alice.screenshot(&shots.join("dashboard-desktop.png")).await;
    alice.goto(&format!("{base}/nodes")).await;
    alice
        .wait_js(
            "the nodes page to refresh itself",
            "Number(document.getElementById('cluster-updated').dataset.refreshes) >= 2",
        )
        .await;
    alice
        .wait_js("the stopped node shown down", "document.querySelector('#nodes-body tr[data-status=\"down\"]')")
        .await;
    alice.screenshot(&shots.join("nodes-desktop.png")).await;
    alice.goto(&format!("{base}/admin")).await;
    alice
        .wait_js("the admin page (alice registered first)", "document.querySelectorAll('#users-body tr').length === 2")
        .await;
    alice.screenshot(&shots.join("admin-desktop.png")).await;

    // (d) A DM is visible to both people and refused to a third.
    alice.goto(&format!("{base}/app")).await;
    alice.type_into("#dm-username", "bob").await;
    alice.click("#dm-form button[type=submit]").await;
    alice.wait_js("the DM page", "location.pathname.startsWith('/rooms/')").await;
    let dm = room_id(&alice.path().await);
    connected(&alice).await;
    let secret = "just between us".to_string();
    send(&alice, &secret).await;
    wait_delivered(&alice, std::slice::from_ref(&secret), Duration::from_secs(15)).await;
    bob.goto(&format!("{base}/app")).await;
    let dm_link = format!("#my-dms a[data-room-id=\"{dm}\"]");
    assert_eq!(bob.text(&format!("{dm_link} .room-name")).await.as_deref(), Some("@alice"));
    bob.wait_js(
        "an unread count on the DM",
        &format!("document.querySelector('{dm_link} .badge').textContent === '1'"),
    )
    .await;
    bob.click(&dm_link).await;
    bob.wait_js("the DM page", &format!("location.pathname === '/rooms/{dm}'")).await;
    wait_delivered(&bob, std::slice::from_ref(&secret), Duration::from_secs(15)).await;
    read_marks_follow_the_user(&cluster, &alice, &base, (room, expected.len() as u64), dm).await;

    bob.click("form[action=\"/logout\"] button").await;
    bob.wait_js("the home page after logging out", "location.pathname === '/'").await;
    let mut carol = bob;
    carol.name = "carol".into();
    carol.goto(&format!("{base}/register")).await;
    carol.type_into("#username", "alice").await;
    carol.type_into("#password", PASSWORD).await;
    carol.type_into("#confirm", PASSWORD).await;
    carol.click("#register-form button[type=submit]").await;
    carol
        .wait_js(
            "the taken-username error",
            "(f => f && f.textContent.includes('is taken'))(document.getElementById('flash'))",
        )
        .await;
    assert_eq!(carol.path().await, "/register");
    register(&carol, &base, "carol").await;
    carol.goto(&format!("{base}/rooms/{dm}")).await;
    assert_eq!(carol.text("#error-code").await.as_deref(), Some("forbidden"));
    assert!(carol.text("h1").await.is_some_and(|h1| h1.starts_with("403")));
    carol.goto(&format!("{base}/admin")).await;
    assert_eq!(carol.text("#error-code").await.as_deref(), Some("forbidden"), "only the first user is admin");
    let carol_api = api_login(&base, "carol").await;
    let history = carol_api.get(format!("{base}/api/rooms/{dm}/messages")).send().await.expect("history");
    assert_eq!(history.status().as_u16(), 403);
    let body: Value = history.json().await.expect("json error");
    assert_eq!(body["code"], "forbidden");

    // (e) A wrong password shows an error; a form without its CSRF token gets 403.
    carol.goto(&format!("{base}/app")).await;
    carol.click("form[action=\"/logout\"] button").await;
    carol.wait_js("the home page after logging out", "location.pathname === '/'").await;
    carol.goto(&format!("{base}/login")).await;
    carol.type_into("#username", "alice").await;
    carol.type_into("#password", "not the password").await;
    carol.click("#login-form button[type=submit]").await;
    carol
        .wait_js(
            "the wrong-password error",
            "(f => f && f.textContent.includes('Wrong username or password'))(document.getElementById('flash'))",
        )
        .await;
    assert_eq!(carol.path().await, "/login");
    carol.viewport(375, 740, true).await;
    settle(&carol).await;
    no_sideways_scrolling(&carol, "the login page").await;
    carol.screenshot(&shots.join("login-error-375.png")).await;
    carol.js("document.querySelector('#login-form input[name=csrf]').remove()", vec![]).await;
    carol.type_into("#username", "alice").await;
    carol.type_into("#password", PASSWORD).await;
    carol.click("#login-form button[type=submit]").await;
    carol
        .wait_js("the CSRF refusal", "(e => e && e.textContent === 'csrf')(document.getElementById('error-code'))")
        .await;
    assert!(carol.text("h1").await.is_some_and(|h1| h1.starts_with("403")));
    csrf_refused_over_http(&base).await;

    // Scrolling up loads older messages page by page, until the first one.
    long_history_scrolls_back(&alice, &cluster, &base).await;

    alice.close().await;
    carol.close().await;

    // Last: it locks 127.0.0.1 out of logins for a minute.
    failed_logins_are_rate_limited(&base).await;
}

/// Read positions are kept per user on the server. Alice and Bob have read the whole
/// lobby (`lobby.1` messages) and the DM: the marks reach every control's catalog (batched
/// Raft writes), the API reports them, and a browser without local state — another
/// device — shows Alice's rooms as read. Marks for a room one is not in are refused.
async fn read_marks_follow_the_user(cluster: &ChatCluster, alice: &Browser, base: &str, lobby: (u64, u64), dm: u64) {
    let catalog = cluster.controls.catalog(0);
    let user = |name: &str| catalog.user_by_name(name).map(|user| user.id).expect("a registered user");
    let (alice_id, bob_id) = (user("alice"), user("bob"));
    for (who, room, seq) in
        [(bob_id, dm, 1), (bob_id, lobby.0, lobby.1), (alice_id, lobby.0, lobby.1), (alice_id, dm, 1)]
    {
        common::wait_for("read marks in every control's catalog", Duration::from_secs(15), || async {
            (0..3).all(|i| cluster.controls.catalog(i).read_marks.get(&(who, room)) == Some(&seq)).then_some(())
        })
        .await;
    }
    let bob_api = api_login(base, "bob").await;
    let marks: Value =
        bob_api.get(format!("{base}/api/read-marks")).send().await.expect("marks").json().await.expect("json");
    assert_eq!(marks, json!({"marks": {lobby.0.to_string(): lobby.1, dm.to_string(): 1}}), "bob has read both");
    let partly = bob_api
        .post(format!("{base}/api/read-marks"))
        .json(&json!({"marks": [{"room": dm + 1000, "seq": 1}, {"room": dm, "seq": 1}]}))
        .send()
        .await
        .expect("report");
    assert_eq!(partly.status().as_u16(), 202);
    let partly: Value = partly.json().await.expect("json");
    assert_eq!(partly, json!({"accepted": 1, "skipped": [dm + 1000]}), "a room bob is not in is skipped, not taken");

    alice.js("localStorage.clear()", vec![]).await;
    alice.goto(&format!("{base}/app")).await;
    connected(alice).await;
    for (list, room) in [("my-rooms", lobby.0), ("my-dms", dm)] {
        alice
            .wait_js(
                &format!("room {room} counted and shown as read on a fresh device"),
                &format!("document.querySelector('#{list} a[data-room-id=\"{room}\"] .badge').textContent === '0'"),
            )
            .await;
    }
}

/// 120 messages posted over a plain WebSocket; the room page shows the newest, and
/// scrolling up brings back every older one, in order, once.
async fn long_history_scrolls_back(page: &Browser, cluster: &ChatCluster, base: &str) {
    const COUNT: u64 = 120;
    let mut api = Api::new();
    let session = reqwest::Client::new()
        .post(format!("{base}/api/sessions"))
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    api.token = session.json::<Value>().await.expect("json")["token"].as_str().map(str::to_string);
    let room = cluster.create_room(&api, "archive", false).await["id"].as_u64().expect("room id");
    let (connection_token, nodes) = token(&api, base).await;
    let mut ws = WsClient::connect(nodes[0]["ws_url"].as_str().expect("ws url"), &connection_token).await;
    for i in 1..=COUNT {
        let seq = send_acked(
            &mut ws,
            json!({"type": "send", "room": room, "client_id": format!("h{i}"), "text": format!("archived {i}")}),
        )
        .await;
        assert_eq!(seq, i);
    }
    page.goto(&format!("{base}/rooms/{room}")).await;
    connected(page).await;
    page.wait_js("the newest page of history", "document.querySelectorAll('#message-list li[data-seq]').length >= 50")
        .await;
    let all = format!(
        "(m => {{ m.scrollTop = 0; return document.querySelectorAll('#message-list li[data-seq]').length === {COUNT}; }})\
         (document.getElementById('messages'))"
    );
    page.wait_js("every older page after scrolling up", &all).await;
    let shown = messages(page).await;
    let seqs: Vec<u64> = shown.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, (1..=COUNT).collect::<Vec<_>>());
    assert!(shown.iter().all(|(seq, _, text)| *text == format!("archived {seq}")));
    page.wait_js("the start of the room", "document.getElementById('history-state').textContent.includes('start')")
        .await;
}

/// Sends `frame` until it is acknowledged (a brand-new room is `unknown_room` to a node
/// for up to a heartbeat); returns the seq.
async fn send_acked(ws: &mut WsClient, frame: Value) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        ws.send(frame.clone()).await;
        while let Some(reply) = ws.next(Duration::from_secs(2)).await {
            match reply["type"].as_str() {
                Some("ack") if reply["client_id"] == frame["client_id"] => return reply["seq"].as_u64().expect("seq"),
                Some("error") if reply["ref"] == frame["client_id"] => break,
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "no ack for {frame} within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins a public room with its Join button on the dashboard.
async fn join_room(page: &Browser, base: &str, room: u64) {
    page.goto(&format!("{base}/app")).await;
    page.click(&format!("button[data-join=\"{room}\"]")).await;
    page.wait_js("the joined room's page", &format!("location.pathname === '/rooms/{room}'")).await;
}

/// The confirmed messages on a page, in page order: (seq, sender, text).
async fn messages(page: &Browser) -> Vec<(u64, String, String)> {
    let rows = page
        .js(
            "return Array.from(document.querySelectorAll('#message-list li.msg[data-seq]'), li => \
             [Number(li.dataset.seq), li.querySelector('.sender').textContent, li.querySelector('.text').textContent]);",
            vec![],
        )
        .await;
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row[0].as_u64().expect("seq"),
                row[1].as_str().expect("sender").into(),
                row[2].as_str().expect("text").into(),
            )
        })
        .collect()
}

/// Waits until every text of `expected` is shown confirmed and nothing is pending/failed.
async fn wait_delivered(page: &Browser, expected: &[String], timeout: Duration) {
    let expression = format!(
        "(want => {{ \
         const shown = Array.from(document.querySelectorAll('#message-list li.msg[data-seq] .text'), e => e.textContent); \
         return want.every(t => shown.includes(t)) \
           && !document.querySelector('#message-list li.pending, #message-list li.failed'); }})({})",
        json!(expected)
    );
    page.wait_js_for(&format!("{} messages delivered", expected.len()), &expression, timeout).await;
}

/// Waits until both pages show exactly `expected` (each once), and checks that they show
/// it in the same order, sorted by seq. Returns the conversation.
async fn same_conversation(a: &Browser, b: &Browser, expected: &[String]) -> Vec<(u64, String, String)> {
    for page in [a, b] {
        wait_delivered(page, expected, Duration::from_secs(20)).await;
    }
    let (left, right) = (messages(a).await, messages(b).await);
    assert_eq!(left, right, "both pages show the same messages in the same order");
    assert_eq!(left.len(), expected.len(), "each message exactly once: {left:?}");
    assert!(left.windows(2).all(|pair| pair[0].0 < pair[1].0), "shown in seq order: {left:?}");
    let mut texts: Vec<&str> = left.iter().map(|(_, _, text)| text.as_str()).collect();
    texts.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(texts, want);
    left
}

async fn reconnects(page: &Browser) -> u64 {
    let value = page.js("return Number(document.getElementById('conn-state').dataset.reconnects)", vec![]).await;
    value.as_u64().expect("a reconnect count")
}

/// An HTTP client logged in as `name` through the JSON API (Bearer token).
async fn api_login(base: &str, name: &str) -> reqwest::Client {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/sessions"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("session json");
    let token = body["token"].as_str().expect("token");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    reqwest::Client::builder().default_headers(headers).build().expect("client")
}

/// A logged-in form POST without the token: 403 `csrf`, as a page or as JSON. (The JSON
/// login behind a TLS proxy sets a `Secure`, HttpOnly, SameSite=Lax cookie.)
async fn csrf_refused_over_http(base: &str) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/sessions"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    let cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    for flag in ["HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.split("; ").any(|part| part == flag), "the JSON login's cookie lacks {flag}: {cookie}");
    }
    let token = response.json::<Value>().await.expect("json")["token"].as_str().expect("token").to_string();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let post = |accept: &'static str| {
        http.post(format!("{base}/rooms"))
            .header("cookie", format!("districhat_session={token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", accept)
            .body("name=forged")
    };
    let page = post("text/html").send().await.expect("post");
    assert_eq!(page.status().as_u16(), 403);
    assert!(page.text().await.expect("body").contains("csrf"));
    let api = post("application/json").send().await.expect("post");
    assert_eq!(api.status().as_u16(), 403);
    assert_eq!(api.json::<Value>().await.expect("json")["code"], "csrf");
    let forged = post("text/html").body("name=forged&csrf=AAAA").send().await.expect("post");
    assert_eq!(forged.status().as_u16(), 403, "a wrong token is no better");
}

/// Failed logins from one address are cut off at 5 a minute with 429, even for a
/// correct password; cookies get `Secure` behind a TLS proxy.
async fn failed_logins_are_rate_limited(base: &str) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let login_page =
        http.get(format!("{base}/login")).header("x-forwarded-proto", "https").send().await.expect("login page");
    let cookie = login_page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("districhat_csrf="))
        .expect("an anonymous csrf cookie")
        .to_string();
    assert!(cookie.contains("; Secure"), "over TLS cookies are Secure: {cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let binding = cookie.split(';').next().expect("cookie pair").to_string();
    let html = login_page.text().await.expect("html");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("csrf field");
    let attempt = |username: &str, password: &str| {
        http.post(format!("{base}/login"))
            .header("cookie", binding.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("username={username}&password={}&csrf={csrf}", password.replace(' ', "+")))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let status = attempt("mallory", "guess").await.expect("login").status().as_u16();
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(statuses.first(), Some(&401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "locked after at most 5 failures: {statuses:?}");
    let locked = attempt("alice", PASSWORD).await.expect("login");
    assert_eq!(locked.status().as_u16(), 429, "the address stays locked, even with the right password");
    assert!(locked.headers().contains_key("retry-after"));
    assert!(locked.text().await.expect("html").contains("Too many failed logins"));
}

/// Registers `name` through the form and checks the welcome on the dashboard.
async fn register(page: &Browser, base: &str, name: &str) {
    common::browser::register(page, base, name).await;
    let flash = page.text("#flash").await.unwrap_or_default();
    assert!(flash.contains(&format!("Welcome, {name}")), "{name}: {flash:?}");
}
