//! Chat through real nodes: one order for everyone, resume without gaps, private rooms
//! on every path, and bad input answered with codes while the connection lives on.

mod common;

use std::time::Duration;

use common::chat::{token, ChatCluster, WsClient};
use common::Api;
use serde_json::{json, Value};

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["seq"].as_u64().expect("seq")).collect()
}

/// Reads `count` message frames (ignoring acks and others).
async fn read_messages(client: &mut WsClient, count: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    while messages.len() < count {
        let frame = client
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {} of {count} messages", messages.len()));
        if frame["type"] == "message" {
            messages.push(frame);
        }
    }
    messages
}

/// Reads until the ack of `client_id`.
async fn expect_ack(client: &mut WsClient, client_id: &str) -> Value {
    loop {
        let frame = client.next(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no ack for {client_id}"));
        if frame["type"] == "ack" && frame["client_id"] == client_id {
            return frame;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_see_one_sequence() {
    let cluster = ChatCluster::start(2).await;
    let alice = Api::logged_in(&cluster.url(), "alice").await;
    let bob = Api::logged_in(&cluster.url(), "bob").await;
    let room = cluster.create_room(&alice, "general", false).await["id"].as_u64().unwrap();
    let (alice_token, _) = token(&alice, &cluster.url()).await;
    let (bob_token, _) = token(&bob, &cluster.url()).await;
    let mut a = WsClient::connect(&cluster.node(0).ws_url(), &alice_token).await;
    let mut b = WsClient::connect(&cluster.node(1).ws_url(), &bob_token).await;
    a.subscribe(room, None).await;
    b.subscribe(room, None).await;
    for i in 0..20 {
        a.send(json!({"type": "send", "room": room, "client_id": format!("a{i}"), "text": format!("from alice {i}")}))
            .await;
        b.send(json!({"type": "send", "room": room, "client_id": format!("b{i}"), "text": format!("from bob {i}")}))
            .await;
    }
    let seen_a = read_messages(&mut a, 40).await;
    let seen_b = read_messages(&mut b, 40).await;
    assert_eq!(seqs(&seen_a), (1..=40).collect::<Vec<_>>());
    assert_eq!(seen_a, seen_b, "both clients see the same messages in the same order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_with_since_and_gets_exactly_what_it_missed() {
    let cluster = ChatCluster::start(2).await;
    let reader = Api::logged_in(&cluster.url(), "reader").await;
    let writer = Api::logged_in(&cluster.url(), "writer").await;
    let room = cluster.create_room(&reader, "resume", false).await["id"].as_u64().unwrap();
    let (reader_token, _) = token(&reader, &cluster.url()).await;
    let (writer_token, _) = token(&writer, &cluster.url()).await;
    let mut w = WsClient::connect(&cluster.node(1).ws_url(), &writer_token).await;
    w.subscribe(room, None).await;
    let mut r = WsClient::connect(&cluster.node(0).ws_url(), &reader_token).await;
    r.subscribe(room, None).await;
    w.send(json!({"type": "send", "room": room, "client_id": "first", "text": "before the break"})).await;
    expect_ack(&mut w, "first").await;
    let first = read_messages(&mut r, 1).await;
    let last_seen = first[0]["seq"].as_u64().unwrap();
    drop(r);
    for i in 0..50 {
        w.send(json!({"type": "send", "room": room, "client_id": format!("gap{i}"), "text": format!("missed {i}")}))
            .await;
        assert_eq!(w.expect("ack").await["client_id"], format!("gap{i}"));
    }
    let mut r = WsClient::connect(&cluster.node(0).ws_url(), &reader_token).await;
    let (missed, subscribed_at) = r.subscribe(room, Some(last_seen)).await;
    assert_eq!(seqs(&missed), (last_seen + 1..=last_seen + 50).collect::<Vec<_>>());
    assert_eq!(missed[0]["text"], "missed 0");
    assert_eq!(subscribed_at, last_seen + 50);
    w.send(json!({"type": "send", "room": room, "client_id": "live", "text": "live again"})).await;
    let live = read_messages(&mut r, 1).await;
    assert_eq!(live[0]["seq"], last_seen + 51);
    assert_eq!(live[0]["text"], "live again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rooms_refuse_non_members_on_every_path() {
    let cluster = ChatCluster::start(2).await;
    let owner = Api::logged_in(&cluster.url(), "insider").await;
    let outsider = Api::logged_in(&cluster.url(), "outsider").await;
    let room = cluster.create_room(&owner, "secret", true).await["id"].as_u64().unwrap();
    let (owner_token, _) = token(&owner, &cluster.url()).await;
    let mut member = WsClient::connect(&cluster.node(0).ws_url(), &owner_token).await;
    member.subscribe(room, None).await;
    member.send(json!({"type": "send", "room": room, "client_id": "s1", "text": "members only"})).await;
    member.expect("ack").await;

    let (outsider_token, _) = token(&outsider, &cluster.url()).await;
    for node in 0..2 {
        let mut ws = WsClient::connect(&cluster.node(node).ws_url(), &outsider_token).await;
        for frame in [
            json!({"type": "subscribe", "room": room}),
            json!({"type": "send", "room": room, "client_id": "x", "text": "let me in"}),
            json!({"type": "history", "room": room}),
        ] {
            ws.send(frame.clone()).await;
            let error = ws.expect("error").await;
            assert_eq!(error["code"], "forbidden", "{frame} on node {node}: {error}");
        }
    }
    let response = outsider
        .http
        .get(format!("{}/api/rooms/{room}/messages", cluster.url()))
        .bearer_auth(outsider.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "forbidden");
    let response = owner
        .http
        .get(format!("{}/api/rooms/{room}/messages", cluster.url()))
        .bearer_auth(owner.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["messages"][0]["text"], "members only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_codes_and_the_connection_lives_on() {
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "fuzzer").await;
    let room = cluster.create_room(&api, "noise", false).await["id"].as_u64().unwrap();
    let (token, _) = token(&api, &cluster.url()).await;
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &token).await;
    ws.subscribe(room, None).await;

    let cases: Vec<(String, &str)> = vec![
        (
            format!("{{\"type\":\"send\",\"room\":{room},\"client_id\":\"big\",\"text\":\"{}\"}}", "x".repeat(40_000)),
            "frame_too_large",
        ),
        ("{not json".to_string(), "invalid_json"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (json!({"type": "send", "room": room}).to_string(), "bad_frame"),
        (json!({"type": "send", "room": 999_999, "client_id": "u", "text": "hello?"}).to_string(), "unknown_room"),
        (
            json!({"type": "send", "room": room, "client_id": "long", "text": "y".repeat(5_000)}).to_string(),
            "text_too_long",
        ),
    ];
    for (frame, code) in cases {
        ws.send_raw(frame).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], code, "{error}");
    }
    // A flood over the per-connection rate: some sends are refused with rate_limited.
    for i in 0..300 {
        ws.send(json!({"type": "send", "room": room, "client_id": format!("flood{i}"), "text": "flood"})).await;
    }
    let mut limited = 0;
    let mut acked = 0;
    while limited + acked < 300 {
        let frame = ws.next(Duration::from_secs(15)).await.expect("an answer to every flood send");
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(limited > 0 && acked > 0, "limited {limited}, acked {acked}");
    // Still usable after all of that: keep trying until the bucket has refilled.
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(attempt < 200, "the connection never accepted a send again");
        let client_id = format!("after{attempt}");
        ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "still here"})).await;
        let answer = loop {
            let frame = ws.next(Duration::from_secs(15)).await.expect("the connection still answers");
            let answers = (frame["type"] == "ack" && frame["client_id"] == client_id.as_str())
                || (frame["type"] == "error" && frame["ref"] == client_id.as_str());
            if answers {
                break frame;
            }
        };
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "rate_limited", "{answer}");
        // Give the token bucket a moment; this waits on the node's rate, not on our speed.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = reqwest::get(format!("http://{}/healthz", cluster.node(0).node.addr)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// A frame far over the limit (here 70 KB, 1 MB) cannot be read to its end, so the
/// connection cannot go on; but the browser is told why — `frame_too_large` and close
/// code 1009 (message too big) — instead of the socket just dropping (1006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_too_large_to_read_is_refused_with_a_reason() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "huge").await;
    let room = cluster.create_room(&api, "huge", false).await["id"].as_u64().unwrap();
    let (token, _) = token(&api, &cluster.url()).await;
    for size in [70_000, 1_000_000] {
        let (mut socket, _) = tokio_tungstenite::connect_async(cluster.node(0).ws_url()).await.expect("connect");
        socket.send(Message::Text(json!({"type": "hello", "token": token}).to_string().into())).await.unwrap();
        let text = "x".repeat(size);
        let frame = json!({"type": "send", "room": room, "client_id": "huge", "text": text}).to_string();
        // The node may close before it read everything; the write may then fail.
        let _ = socket.send(Message::Text(frame.into())).await;
        let (mut code, mut close) = (None, None);
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            match message {
                Message::Text(text) => {
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "error" {
                        code = frame["code"].as_str().map(str::to_string);
                    }
                }
                Message::Close(frame) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(code.as_deref(), Some("frame_too_large"), "{size} bytes");
        assert_eq!(close, Some(1009), "{size} bytes: closed as message too big");
    }
    // The node serves on.
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &token).await;
    ws.send(json!({"type": "send", "room": room, "client_id": "after", "text": "fine"})).await;
    assert_eq!(ws.expect("ack").await["seq"], 1);
}

/// History and subscribe requests cost the node a read each: a flood of them is refused
/// in part with `rate_limited` (its `ref` names the room), and the connection lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flood_is_rate_limited_and_the_connection_lives_on() {
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "reader").await;
    let room = cluster.create_room(&api, "reads", false).await["id"].as_u64().unwrap();
    let (token, _) = token(&api, &cluster.url()).await;
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &token).await;
    for _ in 0..300 {
        ws.send(json!({"type": "history", "room": room, "limit": 10})).await;
    }
    let (mut limited, mut served) = (0, 0);
    while limited + served < 300 {
        let frame = ws.next(Duration::from_secs(15)).await.expect("an answer to every history request");
        match frame["type"].as_str() {
            Some("history") => served += 1,
            Some("error") => {
                let reference = room.to_string();
                assert_eq!(
                    (frame["code"].as_str(), frame["ref"].as_str()),
                    (Some("rate_limited"), Some(reference.as_str()))
                );
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(limited > 0 && served > 0, "limited {limited}, served {served}");
    ws.send(json!({"type": "send", "room": room, "client_id": "after", "text": "still here"})).await;
    assert_eq!(ws.expect("ack").await["seq"], 1);
}

/// Reads `client`'s frames until the message with `text`; returns how many before it
/// matched `counted`.
async fn count_before_message(client: &mut WsClient, text: &str, counted: impl Fn(&Value) -> bool) -> usize {
    let mut count = 0;
    loop {
        let frame = client.next(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no message {text:?}"));
        if frame["type"] == "message" && frame["text"] == text {
            return count;
        }
        count += usize::from(counted(&frame));
    }
}

/// A client that sends `typing` as fast as it can: the room's other subscribers get at
/// most a few a second of it (a connection's typing is forwarded at a bounded rate, the
/// rest dropped), not one per frame: each forwarded one is a frame to every subscriber of
/// the room on every node. The flooder's next message still goes out and arrives. On the
/// code before this change every one of the 500 reached the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typing_flood_reaches_the_room_at_a_bounded_rate() {
    const FLOOD: usize = 500;
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let flooder_api = Api::logged_in(&base, "flooder").await;
    let created = cluster.create_room(&flooder_api, "typing", false).await;
    let room = created["id"].as_u64().expect("room id");
    let owner = cluster.index_of(created["owner"].as_u64().expect("owner"));
    let watcher_api = Api::logged_in(&base, "watcher").await;
    // The flooder on the owner's node, the watcher on the other: every forwarded typing
    // frame crosses the mesh, in order with the message after it.
    let (flooder_token, _) = token(&flooder_api, &base).await;
    let mut flooder = WsClient::connect(&cluster.node(owner).ws_url(), &flooder_token).await;
    flooder.subscribe(room, None).await;
    let (watcher_token, _) = token(&watcher_api, &base).await;
    let mut watcher = WsClient::connect(&cluster.node(1 - owner).ws_url(), &watcher_token).await;
    watcher.subscribe(room, None).await;

    let started = std::time::Instant::now();
    for _ in 0..FLOOD {
        flooder.send(json!({"type": "typing", "room": room})).await;
    }
    flooder.send(json!({"type": "send", "room": room, "client_id": "after", "text": "after the flood"})).await;
    flooder.expect("ack").await;
    let elapsed = started.elapsed().as_secs_f64();
    let typing = count_before_message(&mut watcher, "after the flood", |frame| {
        frame["type"] == "typing" && frame["user"] == "flooder"
    })
    .await;
    // The burst plus the rate over the flood's length (rounded up), whatever the speed.
    let bound = 4 + 2 * (elapsed.ceil() as usize);
    assert!((1..=bound).contains(&typing), "{typing} typing frames of {FLOOD} in {elapsed:.2} s (bound {bound})");
}

/// A client that subscribes to a room and unsubscribes again, over and over (each pair
/// two presence changes, within its read limit): the room's other subscribers get
/// presence at most about 4 times a second, not a frame of the whole user list per
/// change, and the list they end with is right. On the code before this change the
/// watcher got a presence frame for every change (201 for 100 pairs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_churn_reaches_the_room_as_presence_at_a_bounded_rate() {
    const PAIRS: usize = 60;
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let churner_api = Api::logged_in(&base, "churner").await;
    let room = cluster.create_room(&churner_api, "churn", false).await["id"].as_u64().expect("room id");
    let watcher_api = Api::logged_in(&base, "watcher").await;
    let (watcher_token, _) = token(&watcher_api, &base).await;
    let mut watcher = WsClient::connect(&cluster.node(1).ws_url(), &watcher_token).await;
    watcher.subscribe(room, None).await;
    watcher.presence_until("the watcher alone", Duration::from_secs(10), |users| users == ["watcher"]).await;
    let (churner_token, _) = token(&churner_api, &base).await;
    let mut churner = WsClient::connect(&cluster.node(0).ws_url(), &churner_token).await;

    let started = std::time::Instant::now();
    for _ in 0..PAIRS {
        churner.send(json!({"type": "subscribe", "room": room})).await;
        churner.send(json!({"type": "unsubscribe", "room": room})).await;
    }
    churner.send(json!({"type": "send", "room": room, "client_id": "after", "text": "after the churn"})).await;
    churner.expect("ack").await;
    let presence = count_before_message(&mut watcher, "after the churn", |frame| frame["type"] == "presence").await;
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 2 + 4 * (elapsed.ceil() as usize);
    assert!(presence <= bound, "{presence} presence frames for {PAIRS} pairs in {elapsed:.2} s (bound {bound})");
    // The churner stays: the watcher's list comes to hold both.
    churner.subscribe(room, None).await;
    watcher.presence_until("both users", Duration::from_secs(10), |users| users == ["churner", "watcher"]).await;
}

/// A connection that never says hello is closed once `limits.hello_timeout_ms` (10 s by
/// default) has passed, with `hello_timeout` and close code 4010: else anyone, without a
/// token, could hold every connection slot of a node for good. A connection that said
/// hello and then stays quiet as long is not closed. On the code before this change the
/// silent connection stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "quiet").await;
    let room = cluster.create_room(&api, "quiet", false).await["id"].as_u64().expect("room id");
    let (token, _) = token(&api, &cluster.url()).await;
    let ws_url = cluster.node(0).ws_url();
    let mut said_hello = WsClient::connect(&ws_url, &token).await;
    let (mut silent, _) = tokio_tungstenite::connect_async(&ws_url).await.expect("ws connect");
    let opened = std::time::Instant::now();
    let (mut code, mut reason) = (None, None);
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(20), silent.next()).await {
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                reason = frame["code"].as_str().map(str::to_string);
            }
            Message::Close(close) => {
                code = close.map(|close| close.code);
                break;
            }
            _ => {}
        }
    }
    let waited = opened.elapsed();
    assert_eq!(reason.as_deref(), Some("hello_timeout"), "after {waited:?}");
    assert_eq!(code, Some(CloseCode::from(4010)), "after {waited:?}");
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}, before its 10 s");

    said_hello.send(json!({"type": "send", "room": room, "client_id": "still", "text": "here"})).await;
    assert_eq!(said_hello.expect("ack").await["seq"], 1, "the connection that said hello lives on");
}

/// One connection resuming more rooms at once than it may have reads in flight: the
/// catch-ups past `limits.reads_in_flight` wait their turn, and every room still arrives
/// whole, in order, once each, before its `subscribed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_more_rooms_than_reads_in_flight_gets_each_room_whole() {
    const ROOMS: usize = 6;
    const MESSAGES: u64 = 150;
    let cluster = ChatCluster::start_with(2, |node| {
        node.limits.reads_in_flight = 2;
        node.limits.sends_per_sec = 100_000;
    })
    .await;
    let api = Api::logged_in(&cluster.url(), "resumer").await;
    let (ws_token, _) = token(&api, &cluster.url()).await;
    let mut writer = WsClient::connect(&cluster.node(0).ws_url(), &ws_token).await;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        let room = cluster.create_room(&api, &format!("resume-{i}"), false).await["id"].as_u64().unwrap();
        common::chat::fill(&mut writer, room, MESSAGES).await;
        rooms.push(room);
    }

    let mut reader = WsClient::connect(&cluster.node(1).ws_url(), &ws_token).await;
    for room in &rooms {
        reader.send(json!({"type": "subscribe", "room": room, "since": 0})).await;
    }
    let mut seen: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    let mut subscribed = std::collections::BTreeMap::new();
    while subscribed.len() < ROOMS {
        let frame = reader.next(Duration::from_secs(15)).await.expect("the resume goes on");
        let room = frame["room"].as_u64().unwrap_or_default();
        match frame["type"].as_str() {
            Some("message") => {
                assert!(!subscribed.contains_key(&room), "a message after subscribed: {frame}");
                seen.entry(room).or_default().push(frame["seq"].as_u64().unwrap());
            }
            Some("subscribed") => {
                subscribed.insert(room, frame["seq"].as_u64().unwrap());
            }
            Some("error") => panic!("{frame}"),
            _ => {}
        }
    }
    for room in rooms {
        assert_eq!(seen[&room], (1..=MESSAGES).collect::<Vec<_>>(), "room {room}");
        assert_eq!(subscribed[&room], MESSAGES);
    }
}
