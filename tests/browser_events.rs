//! Message events in the browser (issue 14): real headless Chromium against 3 controls
//! and 2 chat nodes in this process, two people on pages connected to different nodes.
//! Alice writes, Bob sees it and the "No messages yet" line goes; Alice edits her message
//! with the keyboard (Escape cancels, Enter saves) and Bob sees the new text and
//! "(edited)" live; Bob reacts 👍 from the picker, Alice sees the chip counted, Bob's
//! second click takes it back; Bob replies in the thread panel, Alice sees "1 reply · 1
//! new" and the panel lists it; Alice mentions @bob while Bob is on the dashboard, which shows a
//! mention badge (live, and again after a reload, from the `mentions` read) and raises a
//! notification while the tab is hidden; the mentions page lists it and links to the
//! message, which the room page highlights; Alice deletes her message and its text is
//! gone from Bob's page, a tombstone in its place; a refused change says why; a link to a
//! message older than the first page of history pages back to it; on a phone a long press
//! shows a message's actions. Screenshots of the room with a thread open, of the mentions
//! page and of the room with a linked message, desktop and 375 px wide (each checked for
//! sideways scrolling), and of the dashboard with a mention badge, go to
//! `$CARGO_TARGET_DIR/screenshots/`.

mod common;

use common::browser::{
    accept_dialog, connected, create_room, enter, no_sideways_scrolling, open_room, register, screenshot_dir,
    send_message, settle, Browser, Driver, DESKTOP, PASSWORD,
};
use common::chat::{fill_with, token, ChatCluster, WsClient};
use common::Api;
use serde_json::{json, Value};
use thirtyfour::Key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_events_edit_react_reply_mention_delete_across_nodes() {
    let shots = screenshot_dir();
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let driver = Driver::start().await;
    let alice = driver.session("alice-events", DESKTOP).await;
    let bob = driver.session("bob-events", DESKTOP).await;

    register(&alice, &base, "alice").await;
    register(&bob, &base, "bob").await;
    let room = create_room(&alice, &base, "events").await;
    bob.goto(&format!("{base}/app")).await;
    bob.click(&format!("button[data-join=\"{room}\"]")).await;
    bob.wait_js("the joined room", &format!("location.pathname === '/rooms/{room}'")).await;
    let placed = cluster.controls.catalog(0).rooms[&room].clone();
    let (owner, replica) = (placed.owner.expect("an owner"), placed.replica.expect("a replica"));
    open_room(&alice, &base, room, owner).await;
    open_room(&bob, &base, room, replica).await;
    let empty = "document.getElementById('history-state').textContent.includes('No messages yet')";
    bob.wait_js("the empty room's line", empty).await;

    // A message; the "No messages yet" line goes as soon as it shows.
    send_message(&alice, "hello from alice").await;
    let hello = message_seq(&bob, "hello from alice").await;
    assert_eq!(message_seq(&alice, "hello from alice").await, hello);
    for page in [&alice, &bob] {
        page.wait_js("the empty-room line gone", &format!("!({empty})")).await;
    }

    // Alice edits with the keyboard: focus the message, Tab to Edit, Enter; Escape
    // cancels, Enter in the editor saves.
    let li = format!("#m-{hello}");
    keyboard_to_action(&alice, hello, "edit").await;
    press(&alice, Key::Enter.value()).await;
    alice.wait_js("the inline editor", &format!("document.activeElement.matches('{li} .editor textarea')")).await;
    press(&alice, Key::Escape.value()).await;
    alice.wait_js("the editor closed by Escape", &format!("!document.querySelector('{li} .editor')")).await;
    assert_eq!(alice.text(&format!("{li} .text")).await.as_deref(), Some("hello from alice"));
    keyboard_to_action(&alice, hello, "edit").await;
    press(&alice, Key::Enter.value()).await;
    alice.type_into(&format!("{li} .editor textarea"), &format!("hello, edited{}", enter())).await;
    for page in [&bob, &alice] {
        page.wait_js(
            "the edited text and its mark",
            &format!(
                "(li => li.querySelector('.text').textContent === 'hello, edited' \
                 && !li.querySelector('.edited-mark').hidden)(document.querySelector('{li}'))"
            ),
        )
        .await;
    }

    // Bob reacts 👍 from the picker; Alice sees it counted; Bob's click on the chip takes
    // it back.
    show_actions(&bob, hello).await;
    bob.click(&format!("{li} [data-action=\"react\"]")).await;
    bob.click(&format!("{li} .picker button[data-emoji=\"👍\"]")).await;
    let chip = format!("{li} .reactions .chip[data-emoji=\"👍\"]");
    alice
        .wait_js("bob's 👍 counted", &format!("(c => c && c.textContent === '👍 1')(document.querySelector('{chip}'))"))
        .await;
    assert_eq!(
        alice.js(&format!("return document.querySelector('{chip}').getAttribute('aria-pressed')"), vec![]).await,
        json!("false"),
        "not alice's own reaction"
    );
    bob.wait_js(
        "bob's chip pressed",
        &format!("(c => c && c.getAttribute('aria-pressed') === 'true')(document.querySelector('{chip}'))"),
    )
    .await;
    bob.click(&chip).await;
    for page in [&alice, &bob] {
        page.wait_js("the 👍 taken back", &format!("!document.querySelector('{chip}')")).await;
    }

    // Bob replies in the thread panel; Alice sees "1 reply · 1 new" (it arrived while her
    // panel was closed), and the panel lists it.
    show_actions(&bob, hello).await;
    bob.click(&format!("{li} [data-action=\"reply\"]")).await;
    bob.wait_js("the thread panel", "!document.getElementById('thread-panel').hidden").await;
    bob.wait_js("the root in the thread", &format!("document.querySelector('#thread-list li[data-seq=\"{hello}\"]')"))
        .await;
    bob.type_into("#thread-input", &format!("a reply from bob{}", enter())).await;
    let reply = message_seq(&alice, "a reply from bob").await;
    alice
        .wait_js(
            "the reply count",
            &format!(
                "(b => b && !b.hidden && b.textContent === '1 reply · 1 new')(document.querySelector('{li} .replies-link'))"
            ),
        )
        .await;
    alice.click(&format!("{li} .replies-link")).await;
    let listed = format!(
        "JSON.stringify(Array.from(document.querySelectorAll('#thread-list li.msg'), li => li.dataset.seq)) === '{}'",
        json!([hello.to_string(), reply.to_string()])
    );
    alice.wait_js("the thread panel listing root and reply", &listed).await;
    bob.wait_js("bob's thread panel keeps the reply live", &listed).await;
    assert_eq!(
        alice.text(&format!("#thread-list li[data-seq=\"{reply}\"] .text")).await.as_deref(),
        Some("a reply from bob")
    );
    assert_eq!(
        bob.text(&format!("#m-{reply} .quote .quote-text")).await.as_deref(),
        Some("hello, edited"),
        "the reply quotes its root"
    );
    screenshots(&alice, "thread", &shots).await;

    // Alice mentions @bob while Bob is on the dashboard: a mention badge, live and after
    // a reload (from the `mentions` read after Bob's read mark).
    bob.goto(&format!("{base}/app")).await;
    connected(&bob).await;
    let badge = format!("#my-rooms [data-mentions-for=\"{room}\"]");
    bob.wait_js("the room's badges rendered", &format!("document.querySelector('{badge}')")).await;
    // With the tab hidden and notifications allowed (both stubbed: headless Chromium
    // has neither), the mention raises a notification naming the room and the sender.
    bob.js(
        "window.__notes = []; \
         window.Notification = class { \
           constructor(title, options) { window.__notes.push([title, options.body]); } \
           static get permission() { return 'granted'; } }; \
         Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });",
        vec![],
    )
    .await;
    send_message(&alice, "@bob look at this").await;
    let mention = message_seq(&alice, "@bob look at this").await;
    assert!(
        alice
            .js(&format!("return document.getElementById('m-{mention}').classList.contains('mentions-me')"), vec![])
            .await
            == json!(false),
        "alice is not the one mentioned"
    );
    let one = format!(
        "(b => !b.hidden && b.dataset.count === '1' && b.textContent === '@1')(document.querySelector('{badge}'))"
    );
    bob.wait_js("a live mention badge of 1", &one).await;
    bob.screenshot(&shots.join("dashboard-mention-desktop.png")).await;
    bob.wait_js("one notification", "window.__notes.length === 1").await;
    assert_eq!(bob.js("return window.__notes", vec![]).await, json!([["alice in #events", "@bob look at this"]]));
    bob.goto(&format!("{base}/app")).await;
    connected(&bob).await;
    bob.wait_js("the mention badge of 1 after a reload", &one).await;

    // The mentions page lists it and links into the room, which highlights the message.
    bob.click("#nav-mentions").await;
    bob.wait_js("the mentions page", "location.pathname === '/mentions'").await;
    let row = "#mention-list li.mention";
    assert_eq!(bob.text(&format!("{row} .text")).await.as_deref(), Some("@bob look at this"));
    assert_eq!(bob.text(&format!("{row} .sender")).await.as_deref(), Some("alice"));
    assert_eq!(bob.text(&format!("{row} a.room")).await.as_deref(), Some("#events"));
    let href = bob.js(&format!("return document.querySelector('{row} a.room').getAttribute('href')"), vec![]).await;
    assert_eq!(href, json!(format!("/rooms/{room}#m-{mention}")));
    screenshots(&bob, "mentions", &shots).await;
    bob.click(&format!("{row} a.room")).await;
    bob.wait_js(
        "the linked message highlighted",
        &format!("(li => li && li.classList.contains('highlight'))(document.getElementById('m-{mention}'))"),
    )
    .await;
    bob.wait_js(
        "the message mentioning bob marked",
        &format!("document.getElementById('m-{mention}').classList.contains('mentions-me')"),
    )
    .await;
    bob.wait_js(
        "the badge cleared in the open room",
        &format!("document.querySelector('[data-mentions-for=\"{room}\"]').hidden"),
    )
    .await;

    // Alice deletes her first message (after confirming): Bob sees a tombstone, and the
    // text is nowhere in his page, the reply's quote included.
    show_actions(&alice, hello).await;
    alice.click(&format!("{li} [data-action=\"delete\"]")).await;
    accept_dialog(&alice).await;
    for page in [&bob, &alice] {
        page.wait_js(
            "the tombstone",
            &format!(
                "(li => li.classList.contains('deleted') && !li.querySelector('.tombstone').hidden \
                 && li.querySelector('.text').textContent === '')(document.querySelector('{li}'))"
            ),
        )
        .await;
        page.wait_js(
            "the deleted text gone from the page",
            "!document.documentElement.outerHTML.includes('hello, edited') \
             && !document.documentElement.outerHTML.includes('hello from alice')",
        )
        .await;
    }
    assert_eq!(bob.text(&format!("#m-{reply} .quote .quote-text")).await.as_deref(), Some("deleted message"));
    assert!(!bob.text("#history-state").await.unwrap_or_default().contains("No messages yet"));

    // A change the owner refuses shows why: editing the deleted message is `not_found`.
    alice
        .js(&format!("window.districhat.view.change({{type: 'edit', target: {hello}, text: 'too late'}})"), vec![])
        .await;
    alice
        .wait_js(
            "the refusal shown",
            "(e => !e.hidden && e.textContent.includes('not_found'))(document.getElementById('room-error'))",
        )
        .await;

    // A link to a message older than the first page of history pages back to it.
    let mut ws = alice_socket(&base).await;
    fill_with(&mut ws, room, 60, "filler").await;
    // (A new URL: the page is already at /rooms/ROOM#m-MENTION, which would not reload.)
    bob.goto(&format!("{base}/rooms/{room}?node={owner}#m-{mention}")).await;
    bob.wait_js(
        "the older linked message loaded, highlighted and in view",
        &format!(
            "(li => {{ if (!li || !li.classList.contains('highlight')) return false; \
               const box = document.getElementById('messages').getBoundingClientRect(), at = li.getBoundingClientRect(); \
               return at.top >= box.top - 1 && at.bottom <= box.bottom + 1; }})(document.getElementById('m-{mention}'))"
        ),
    )
    .await;

    // On a phone, a long press on a message shows its actions.
    bob.viewport(375, 740, true).await;
    settle(&bob).await;
    let center = bob
        .js(
            &format!(
                "document.activeElement.blur(); const li = document.getElementById('m-{reply}'); \
                 li.scrollIntoView({{block: 'center'}}); const r = li.getBoundingClientRect(); \
                 return [r.left + r.width / 2, r.top + 12];"
            ),
            vec![],
        )
        .await;
    let (x, y) = (center[0].as_f64().expect("x"), center[1].as_f64().expect("y"));
    bob.touch_start(x, y).await;
    bob.wait_js(
        "the actions after a long press",
        &format!(
            "(li => li.classList.contains('show-actions') && !li.querySelector('[data-action=\"edit\"]').hidden \
               && getComputedStyle(li.querySelector('.msg-tools')).display !== 'none')(document.getElementById('m-{reply}'))"
        ),
    )
    .await;
    bob.touch_end().await;

    screenshots(&bob, "room-events", &shots).await;

    alice.close().await;
    bob.close().await;
}

/// Thread unread marks (issue 14): Bob has read the room up to a root message; Alice
/// then posts 2 replies to it. Bob's room page shows "2 replies · 2 new" on the root;
/// opening the thread marks both replies new in the panel (after a "New" separator) and
/// the root's link says no more "new". A reply arriving while the panel is open is not
/// new; one arriving after it closed is ("· 1 new"); after a reload (the room read) the
/// thread shows no "new". Screenshots of the panel with new replies, desktop and 375 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_above_the_read_mark_show_as_new() {
    let shots = screenshot_dir();
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let driver = Driver::start().await;
    let bob = driver.session("bob-threads", DESKTOP).await;

    let alice = Api::logged_in(&base, "alice").await;
    let placed = cluster.create_room(&alice, "threads", false).await;
    let room = placed["id"].as_u64().expect("a room id");
    let replica = placed["replica"].as_u64().expect("a replica");
    register(&bob, &base, "bob").await;
    bob.goto(&format!("{base}/app")).await;
    bob.click(&format!("button[data-join=\"{room}\"]")).await;
    bob.wait_js("the joined room", &format!("location.pathname === '/rooms/{room}'")).await;

    // Bob reads the room up to (and past) the root, then leaves for the dashboard; his
    // read mark reaches the server.
    let root = post(&alice, &base, room, "a root to reply to", None).await;
    let last = post(&alice, &base, room, "and one more", None).await;
    open_room(&bob, &base, room, replica).await;
    assert_eq!(message_seq(&bob, "and one more").await, last);
    bob.goto(&format!("{base}/app")).await;
    connected(&bob).await;
    let bob_api = login(&base, "bob").await;
    common::wait_for("bob's read mark on the server", std::time::Duration::from_secs(15), || async {
        let marks = bob_api.get(&format!("{base}/api/read-marks")).await.ok()?;
        (marks["marks"][room.to_string()].as_u64() == Some(last)).then_some(())
    })
    .await;

    // Two replies while Bob is away: new to him.
    let first = post(&alice, &base, room, "first reply", Some(root)).await;
    let second = post(&alice, &base, room, "second reply", Some(root)).await;
    open_room(&bob, &base, room, replica).await;
    let link = format!("#m-{root} .replies-link");
    let shows = |text: &str, label: &str| {
        format!(
            "(b => b && !b.hidden && b.textContent === {} && b.getAttribute('aria-label') === {})(document.querySelector('{link}'))",
            json!(text),
            json!(label)
        )
    };
    bob.wait_js("the root's link counting 2 new", &shows("2 replies · 2 new", "2 replies, 2 new")).await;
    screenshots(&bob, "thread-link-new", &shots).await;

    // Opening the thread (from the keyboard) marks both replies new in the panel, after a
    // "New" separator; the root's link has no "new" any more.
    bob.js(&format!("document.querySelector('{link}').focus()"), vec![]).await;
    press(&bob, Key::Enter.value()).await;
    let panel = |expected: Value| {
        format!(
            "JSON.stringify(Array.from(document.querySelectorAll('#thread-list > li'), li =>                li.classList.contains('new-separator') ? li.textContent : li.dataset.seq + (li.classList.contains('new') ? ' new' : ''))) === {}",
            json!(expected.to_string())
        )
    };
    bob.wait_js(
        "the two replies marked new after a separator",
        &panel(json!([root.to_string(), "New", format!("{first} new"), format!("{second} new")])),
    )
    .await;
    bob.wait_js("the root's link without new", &shows("2 replies", "2 replies")).await;
    assert_eq!(
        bob.js(
            &format!("return getComputedStyle(document.querySelector('#thread-list li[data-seq=\"{first}\"]')).borderLeftWidth"),
            vec![]
        )
        .await,
        json!("4px"),
        "a new reply is marked with a left border"
    );

    // A reply arriving while the panel is open is seen, not new.
    let third = post(&alice, &base, room, "third reply, live", Some(root)).await;
    bob.wait_js(
        "the live reply in the panel, not new",
        &panel(json!([root.to_string(), "New", format!("{first} new"), format!("{second} new"), third.to_string()])),
    )
    .await;
    bob.wait_js("the root's link counting 3, none new", &shows("3 replies", "3 replies")).await;
    screenshots(&bob, "thread-new", &shots).await;

    // Closed, the marks go; a reply arriving now is new.
    bob.click("#thread-close").await;
    bob.wait_js("the panel closed", "document.getElementById('thread-panel').hidden").await;
    post(&alice, &base, room, "fourth reply, while closed", Some(root)).await;
    bob.wait_js("the root's link counting 1 new", &shows("4 replies · 1 new", "4 replies, 1 new")).await;

    // After a reload the room (and so every reply) is read: no "new".
    open_room(&bob, &base, room, replica).await;
    bob.wait_js("the root's link after a reload", &shows("4 replies", "4 replies")).await;
    bob.click(&link).await;
    bob.wait_js(
        "the thread loaded",
        "document.querySelectorAll('#thread-list li.msg').length === 5 && document.getElementById('thread-state').textContent === ''",
    )
    .await;
    assert_eq!(
        bob.js("return document.querySelectorAll('#thread-list .new, #thread-list .new-separator').length", vec![])
            .await,
        json!(0),
        "nothing new after a reload"
    );

    bob.close().await;
}

/// Posts `text` as `api`'s user (a reply to `reply_to` if given); returns its seq.
async fn post(api: &Api, base: &str, room: u64, text: &str, reply_to: Option<u64>) -> u64 {
    let mut body = json!({"client_id": format!("c-{}", text.replace(' ', "-")), "text": text});
    if let Some(root) = reply_to {
        body["reply_to"] = json!(root);
    }
    let (status, answer) = api.post(&format!("{base}/api/rooms/{room}/messages"), body).await.expect("post");
    assert_eq!(status, 201, "post {text:?}: {answer}");
    answer["seq"].as_u64().expect("a seq")
}

/// An API client logged in as `name` (registered already).
async fn login(base: &str, name: &str) -> Api {
    let mut api = Api::new();
    let (status, body) = api
        .post(&format!("{base}/api/sessions"), json!({"username": name, "password": PASSWORD}))
        .await
        .expect("login");
    assert_eq!(status, 200, "{body}");
    api.token = body["token"].as_str().map(str::to_string);
    api
}

/// A WebSocket of Alice's, said hello on the first node.
async fn alice_socket(base: &str) -> WsClient {
    let api = login(base, "alice").await;
    let (connection_token, nodes) = token(&api, base).await;
    WsClient::connect(nodes[0]["ws_url"].as_str().expect("ws url"), &connection_token).await
}

/// The seq of the confirmed message whose text is `text`, once the page shows it.
async fn message_seq(page: &Browser, text: &str) -> u64 {
    let found = page
        .wait_js(
            &format!("the message {text:?}"),
            &format!(
                "(li => li && Number(li.dataset.seq))(Array.from(document.querySelectorAll('#message-list li.msg[data-seq]')) \
                 .find(li => li.querySelector('.text').textContent === {}))",
                json!(text)
            ),
        )
        .await;
    found.as_u64().expect("a seq")
}

/// Focuses message `seq` (as Tab would) so its actions show.
async fn show_actions(page: &Browser, seq: u64) {
    page.js(
        &format!("const li = document.getElementById('m-{seq}'); li.scrollIntoView({{block: 'center'}}); li.focus();"),
        vec![],
    )
    .await;
    page.wait_js(
        "the message's actions",
        &format!("getComputedStyle(document.querySelector('#m-{seq} .msg-tools')).display !== 'none'"),
    )
    .await;
}

/// Focuses message `seq`, then presses Tab until the `action` button has the focus.
async fn keyboard_to_action(page: &Browser, seq: u64, action: &str) {
    show_actions(page, seq).await;
    for _ in 0..6 {
        let at = page.js("return document.activeElement.dataset.action || null", vec![]).await;
        if at == json!(action) {
            return;
        }
        press(page, Key::Tab.value()).await;
    }
    panic!("{}: Tab from message {seq} did not reach its {action} button", page.name);
}

/// Presses `key` in the focused element.
async fn press(page: &Browser, key: char) {
    let active =
        page.driver.active_element().await.unwrap_or_else(|e| panic!("{}: no focused element: {e}", page.name));
    active.send_keys(key.to_string()).await.unwrap_or_else(|e| panic!("{}: cannot press a key: {e}", page.name));
}

/// `NAME-desktop.png` and `NAME-375.png` (checking nothing scrolls sideways at 375 px).
async fn screenshots(page: &Browser, name: &str, shots: &std::path::Path) {
    page.viewport(1280, 800, false).await;
    settle(page).await;
    page.screenshot(&shots.join(format!("{name}-desktop.png"))).await;
    page.viewport(375, 740, true).await;
    settle(page).await;
    no_sideways_scrolling(page, name).await;
    page.screenshot(&shots.join(format!("{name}-375.png"))).await;
    page.viewport(1280, 800, false).await;
    settle(page).await;
}
