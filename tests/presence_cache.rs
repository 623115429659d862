//! A node keeps a room's newest presence frame for the sessions that subscribe later; it
//! must forget it with the room's last local follower (else the cache grows with every
//! room ever followed on the node), and a node that starts following a room, or follows
//! it again, must be shown who is there even when nobody came or went.

mod common;

use std::time::Duration;

use common::chat::{token, ChatCluster, WsClient};
use common::{wait_for, Api};
use serde_json::Value;

/// Waits until node `index`'s hub holds (`true`) or lacks a presence frame of `room`.
async fn wait_cached(cluster: &ChatCluster, index: usize, room: u64, cached: bool) {
    let node = cluster.node(index).node.clone();
    let what = if cached { "the node to cache the room's presence" } else { "the node to forget the room's presence" };
    wait_for(what, Duration::from_secs(10), || {
        let holds = node.hub.presence(room).is_some();
        async move { (holds == cached).then_some(()) }
    })
    .await;
}

/// Reads frames until a presence frame that lists `user`; panics after 15 s.
async fn presence_with(ws: &mut WsClient, user: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        let Some(frame) = ws.next(Duration::from_millis(200)).await else { continue };
        if frame["type"] == "presence" && frame["users"].as_array().is_some_and(|users| users.iter().any(|u| u == user))
        {
            return frame;
        }
    }
    panic!("no presence frame listing {user} within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgets_a_rooms_presence_with_its_last_follower() {
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "leaver").await;
    let room = cluster.create_room(&api, "comings", false).await["id"].as_u64().expect("room id");
    let (ws_token, _) = token(&api, &cluster.url()).await;
    for index in 0..2 {
        let mut ws = WsClient::connect(&cluster.node(index).ws_url(), &ws_token).await;
        ws.subscribe(room, Some(0)).await;
        let user = ws.user.clone();
        presence_with(&mut ws, &user).await;
        wait_cached(&cluster, index, room, true).await;
        drop(ws);
        wait_cached(&cluster, index, room, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_starts_or_again_follows_a_room_is_shown_who_is_there() {
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "stayer").await;
    let room = cluster.create_room(&api, "stays", false).await;
    let (room, owner) = (room["id"].as_u64().expect("room id"), room["owner"].as_u64().expect("owner"));
    let (at_owner, other) = (cluster.index_of(owner), 1 - cluster.index_of(owner));
    let (ws_token, _) = token(&api, &cluster.url()).await;
    // The user follows the room at the owner's node, then on the other node too, then
    // leaves the other node only: the room's users stay the same throughout, so the owner
    // sees no change of presence to announce.
    let mut staying = WsClient::connect(&cluster.node(at_owner).ws_url(), &ws_token).await;
    staying.subscribe(room, Some(0)).await;
    let user = staying.user.clone();
    let mut leaving = WsClient::connect(&cluster.node(other).ws_url(), &ws_token).await;
    leaving.subscribe(room, Some(0)).await;
    presence_with(&mut leaving, &user).await;
    drop(leaving);
    let hub_node = cluster.node(other).node.clone();
    wait_for("the other node to have no follower of the room", Duration::from_secs(10), || {
        let followers = hub_node.hub.users(room);
        async move { followers.is_empty().then_some(()) }
    })
    .await;
    // Following there again shows who is in the room.
    let mut back = WsClient::connect(&cluster.node(other).ws_url(), &ws_token).await;
    back.subscribe(room, Some(0)).await;
    presence_with(&mut back, &user).await;
}
