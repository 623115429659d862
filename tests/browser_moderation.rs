//! The moderation page and the group-DM form in real headless Chromium (as
//! `tests/browser_chat.rs`): the room's owner bans a member with the keyboard only, sees
//! the ban and the audit line, undoes it with one button; a group DM is started from the
//! dashboard and labelled with its members' names; nothing scrolls sideways at 375 px.
//! Screenshots go to `$CARGO_TARGET_DIR/screenshots/` (`moderation-*.png`).

mod common;

use common::browser::{enter, no_sideways_scrolling, screenshot_dir, settle, Driver, DESKTOP};
use common::chat::ChatCluster;
use common::Api;
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_moderates_from_the_page_and_starts_a_group_dm() {
    let shots = screenshot_dir();
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let _admin = Api::logged_in(&base, "admin").await;
    let carol = Api::logged_in(&base, "carol").await;
    let _dave = Api::logged_in(&base, "dave").await;
    let driver = Driver::start().await;
    let owner = driver.session("owner", DESKTOP).await;

    owner.goto(&format!("{base}/register")).await;
    owner.type_into("#username", "owner").await;
    owner.type_into("#password", PASSWORD).await;
    owner.type_into("#confirm", PASSWORD).await;
    owner.click("#register-form button[type=submit]").await;
    owner.wait_js("the dashboard", "location.pathname === '/app'").await;
    owner.type_into("#room-name", "lobby").await;
    owner.click("#create-room-form button[type=submit]").await;
    owner.wait_js("the new room", "location.pathname.startsWith('/rooms/')").await;
    let path = owner.path().await;
    let room: u64 =
        path.trim_start_matches("/rooms/").split(['?', '/']).next().and_then(|id| id.parse().ok()).expect("id");
    let (status, body) = carol.post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
    assert_eq!(status, 204, "{body}");

    // The dashboard links the room's moderation page.
    owner.goto(&format!("{base}/app")).await;
    owner.click(&format!("a[data-moderate=\"{room}\"]")).await;
    owner.wait_js("the moderation page", &format!("location.pathname === '/rooms/{room}/moderation'")).await;

    // Keyboard only: pick "Ban" in the select by typing, then Enter in the username field.
    owner.find("#mod-action").await.send_keys("Ban").await.expect("choose Ban by typing");
    owner.type_into("#mod-username", &format!("carol{}", enter())).await;
    owner
        .wait_js(
            "the ban's flash",
            "(document.getElementById('flash') || {}).textContent?.includes('owner banned carol')",
        )
        .await;
    let banned = owner.text("#banned").await.unwrap_or_default();
    assert!(banned.contains("carol"), "the ban is listed: {banned:?}");
    let audit = owner.text("#audit").await.unwrap_or_default();
    assert!(audit.contains("owner ban carol"), "and audited: {audit:?}");
    let (status, body) = carol.post(&format!("{base}/api/rooms/{room}/members"), json!({})).await.expect("join");
    assert_eq!((status, body["code"].as_str()), (403, Some("banned")), "{body}");

    owner.viewport(1280, 800, false).await;
    settle(&owner).await;
    owner.screenshot(&shots.join("moderation-desktop.png")).await;
    owner.viewport(375, 740, true).await;
    settle(&owner).await;
    no_sideways_scrolling(&owner, "the moderation page").await;
    owner.screenshot(&shots.join("moderation-375.png")).await;
    owner.js("document.getElementById('audit').scrollIntoView()", vec![]).await;
    settle(&owner).await;
    owner.screenshot(&shots.join("moderation-audit-375.png")).await;

    // One button undoes the ban.
    owner.click("#banned button[type=submit]").await;
    owner
        .wait_js(
            "the unban's flash",
            "(document.getElementById('flash') || {}).textContent?.includes('lifted the ban')",
        )
        .await;
    assert!(owner.text("#banned").await.is_none(), "nobody is banned any more");

    // A group DM from the dashboard, labelled with its members.
    owner.goto(&format!("{base}/app")).await;
    owner.type_into("#group-usernames", "carol, dave").await;
    owner.type_into("#group-name", "trio").await;
    owner.click("#group-dm-form button[type=submit]").await;
    owner.wait_js("the group's page", "location.pathname.startsWith('/rooms/')").await;
    let title = owner.text("#room-title").await.unwrap_or_default();
    assert_eq!(title.trim(), "trio · carol, dave");
    owner.goto(&format!("{base}/app")).await;
    settle(&owner).await;
    no_sideways_scrolling(&owner, "the dashboard").await;
    owner.screenshot(&shots.join("moderation-dashboard-375.png")).await;
    owner.close().await;
}
